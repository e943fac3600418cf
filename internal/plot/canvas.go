// Package plot draws simple figures twice from one drawing function: as
// SVG and as PNG, in the same coordinates (SVG user units), with nothing
// beyond the standard library. The PNG draws its text with a 5×7 bitmap
// font.
package plot

import "image/color"

// Anchor is where text sits relative to its point, along the text.
type Anchor int

// The anchors of text.
const (
	Start Anchor = iota
	Middle
	End
)

// Point is a point in SVG user units, y downwards.
type Point struct{ X, Y float64 }

// Stroke is how a line is drawn.
type Stroke struct {
	Colour color.RGBA
	Width  float64
	// Dashed lines are drawn 6 units on, 3 off.
	Dashed bool
}

// Font is how text is drawn.
type Font struct {
	Size   float64
	Anchor Anchor
	// Vertical text reads upwards; its anchor is then along the
	// vertical.
	Vertical bool
	Colour   color.RGBA
}

// None as a colour draws nothing: a rectangle's stroke.
var None color.RGBA

// Canvas is what a figure is drawn on: *SVG and *PNG.
type Canvas interface {
	// Rect fills the rectangle and strokes its edge with a 1-unit line,
	// unless stroke is None.
	Rect(x, y, w, h float64, fill, stroke color.RGBA)
	// Polyline joins pts with straight lines.
	Polyline(pts []Point, s Stroke)
	// Dot fills a disc of radius r around (x, y).
	Dot(x, y, r float64, c color.RGBA)
	// Text draws s with its baseline at y, anchored at x.
	Text(x, y float64, s string, f Font)
}

// Line draws a straight line on c.
func Line(c Canvas, x1, y1, x2, y2 float64, s Stroke) {
	c.Polyline([]Point{{x1, y1}, {x2, y2}}, s)
}
