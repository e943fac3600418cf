package plot

import (
	"bytes"
	"fmt"
	"html"
	"image/color"
	"io"
)

// SVG is a canvas that writes an SVG document.
type SVG struct {
	w, h float64
	b    bytes.Buffer
}

// NewSVG returns an empty SVG canvas of w×h units.
func NewSVG(w, h float64) *SVG { return &SVG{w: w, h: h} }

func svgColour(c color.RGBA) string {
	if c.A == 0 {
		return "none"
	}
	return fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B)
}

// Rect implements Canvas.
func (s *SVG) Rect(x, y, w, h float64, fill, stroke color.RGBA) {
	fmt.Fprintf(&s.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" stroke="%s"/>`+"\n",
		x, y, w, h, svgColour(fill), svgColour(stroke))
}

// Polyline implements Canvas.
func (s *SVG) Polyline(pts []Point, st Stroke) {
	if len(pts) == 0 {
		return
	}
	s.b.WriteString(`<polyline fill="none" stroke-linejoin="round" points="`)
	for i, p := range pts {
		if i > 0 {
			s.b.WriteByte(' ')
		}
		fmt.Fprintf(&s.b, "%.1f,%.1f", p.X, p.Y)
	}
	dash := ""
	if st.Dashed {
		dash = ` stroke-dasharray="6,3"`
	}
	fmt.Fprintf(&s.b, `" stroke="%s" stroke-width="%g"%s/>`+"\n", svgColour(st.Colour), st.Width, dash)
}

// Dot implements Canvas.
func (s *SVG) Dot(x, y, r float64, c color.RGBA) {
	fmt.Fprintf(&s.b, `<circle cx="%.1f" cy="%.1f" r="%.1f" fill="%s"/>`+"\n", x, y, r, svgColour(c))
}

// Text implements Canvas.
func (s *SVG) Text(x, y float64, str string, f Font) {
	a := [...]string{"start", "middle", "end"}[f.Anchor]
	pos := fmt.Sprintf(`x="%.1f" y="%.1f"`, x, y)
	if f.Vertical {
		pos = fmt.Sprintf(`transform="translate(%.1f %.1f) rotate(-90)"`, x, y)
	}
	fmt.Fprintf(&s.b, `<text %s text-anchor="%s" font-size="%g" fill="%s">%s</text>`+"\n",
		pos, a, f.Size, svgColour(f.Colour), html.EscapeString(str))
}

// WriteTo writes the SVG document to w.
func (s *SVG) WriteTo(w io.Writer) (int64, error) {
	var doc bytes.Buffer
	fmt.Fprintf(&doc, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif">`+"\n",
		s.w, s.h, s.w, s.h)
	doc.Write(s.b.Bytes())
	doc.WriteString("</svg>\n")
	return doc.WriteTo(w)
}
