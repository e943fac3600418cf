package plot

import (
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
)

// capHeight is the height of the font's capitals in font sizes: near a
// sans-serif capital's, so that the PNG's text is about as large as the
// SVG's.
const capHeight = 0.675

// PNG is a canvas that rasterises the figure, without anti-aliasing,
// supersample times larger than the image it encodes; the image averages
// each supersample square down into one pixel, which smooths the edges.
type PNG struct {
	img         *image.RGBA
	w, h        int     // of the image encoded
	k           float64 // pixels of img per unit
	supersample int
}

// NewPNG returns a canvas of w×h units, white, for an image of scale
// pixels per unit drawn at supersample (at least 1) times that.
func NewPNG(w, h float64, scale, supersample int) *PNG {
	supersample = max(supersample, 1)
	p := &PNG{
		w: int(math.Round(w * float64(scale))), h: int(math.Round(h * float64(scale))),
		k: float64(scale * supersample), supersample: supersample,
	}
	p.img = image.NewRGBA(image.Rect(0, 0, p.w*supersample, p.h*supersample))
	draw.Draw(p.img, p.img.Rect, image.White, image.Point{}, draw.Src)
	return p
}

func (p *PNG) set(x, y int, c color.RGBA) {
	if x < 0 || y < 0 || x >= p.img.Rect.Max.X || y >= p.img.Rect.Max.Y {
		return
	}
	i := y*p.img.Stride + 4*x
	p.img.Pix[i], p.img.Pix[i+1], p.img.Pix[i+2], p.img.Pix[i+3] = c.R, c.G, c.B, c.A
}

// fill paints r, in pixels of the large image.
func (p *PNG) fill(r image.Rectangle, c color.RGBA) {
	draw.Draw(p.img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

// disc fills the pixels within r of (cx, cy), in the large image's pixels.
func (p *PNG) disc(cx, cy, r float64, c color.RGBA) {
	for y := int(math.Floor(cy - r)); y <= int(math.Ceil(cy+r)); y++ {
		for x := int(math.Floor(cx - r)); x <= int(math.Ceil(cx+r)); x++ {
			dx, dy := float64(x)+0.5-cx, float64(y)+0.5-cy
			if dx*dx+dy*dy <= r*r {
				p.set(x, y, c)
			}
		}
	}
}

func (p *PNG) px(v float64) int { return int(math.Round(v * p.k)) }

// Rect implements Canvas.
func (p *PNG) Rect(x, y, w, h float64, fill, stroke color.RGBA) {
	x0, y0, x1, y1 := p.px(x), p.px(y), p.px(x+w), p.px(y+h)
	if stroke.A == 0 {
		p.fill(image.Rect(x0, y0, x1, y1), fill)
		return
	}
	b := max(1, p.px(1))
	p.fill(image.Rect(x0, y0, x1, y1), stroke)
	p.fill(image.Rect(x0+b, y0+b, x1-b, y1-b), fill)
}

// Polyline implements Canvas.
func (p *PNG) Polyline(pts []Point, s Stroke) {
	r := max(s.Width*p.k/2, 0.75)
	if len(pts) == 1 {
		p.disc(pts[0].X*p.k, pts[0].Y*p.k, r, s.Colour)
		return
	}
	along := 0.0 // units from the start, for the dashes
	for i := 1; i < len(pts); i++ {
		along = p.segment(pts[i-1], pts[i], r, s, along)
	}
}

// segment draws the line from a to b with a round brush of radius r,
// the dashes continuing from along units into the line; it returns the
// units along the line at b.
func (p *PNG) segment(a, b Point, r float64, s Stroke, along float64) float64 {
	x1, y1, x2, y2 := a.X*p.k, a.Y*p.k, b.X*p.k, b.Y*p.k
	length := math.Hypot(x2-x1, y2-y1)
	if !s.Dashed && (x1 == x2 || y1 == y2) {
		// Axis-aligned (grids, axes, ticks): a rectangle.
		p.fill(image.Rect(int(math.Round(min(x1, x2)-r)), int(math.Round(min(y1, y2)-r)),
			int(math.Round(max(x1, x2)+r)), int(math.Round(max(y1, y2)+r))), s.Colour)
		return along + length/p.k
	}
	steps := int(math.Ceil(length * 2))
	for i := 0; i <= steps; i++ {
		t := 0.0
		if steps > 0 {
			t = float64(i) / float64(steps)
		}
		// The SVG's dashes: 6 units drawn, 3 not.
		if s.Dashed && math.Mod(along+t*length/p.k, 9) >= 6 {
			continue
		}
		p.disc(x1+t*(x2-x1), y1+t*(y2-y1), r, s.Colour)
	}
	return along + length/p.k
}

// Dot implements Canvas.
func (p *PNG) Dot(x, y, r float64, c color.RGBA) {
	p.disc(x*p.k, y*p.k, r*p.k, c)
}

// Text implements Canvas.
func (p *PNG) Text(x, y float64, s string, f Font) {
	// A font pixel is a square of scale pixels.
	scale := max(1, int(math.Round(f.Size*capHeight*p.k/glyphH)))
	runes := []rune(s)
	width := (len(runes)*glyphAdvance - 1) * scale
	ox, oy := p.px(x), p.px(y)
	shift := 0
	switch f.Anchor {
	case Middle:
		shift = width / 2
	case End:
		shift = width
	}
	for i, r := range runes {
		g := glyph(r)
		for col := range glyphW {
			for row := range glyphH + 2 {
				if g[col]>>row&1 == 0 {
					continue
				}
				// (u, v): along the text from its anchor, and down from
				// the top of the glyphs (the baseline is at v = 0).
				u := (i*glyphAdvance+col)*scale - shift
				v := (row - glyphH) * scale
				for a := range scale {
					for b := range scale {
						if f.Vertical { // rotated a quarter turn anticlockwise
							p.set(ox+v+b, oy-u-a, f.Colour)
						} else {
							p.set(ox+u+a, oy+v+b, f.Colour)
						}
					}
				}
			}
		}
	}
}

// Image returns the figure drawn so far, averaged down to its size.
func (p *PNG) Image() *image.RGBA {
	k := p.supersample
	if k == 1 {
		return p.img
	}
	out := image.NewRGBA(image.Rect(0, 0, p.w, p.h))
	in := p.img.Pix
	for y := range p.h {
		for x := range p.w {
			var sum [4]int
			for dy := range k {
				row := (y*k+dy)*p.img.Stride + 4*x*k
				for i, v := range in[row : row+4*k] {
					sum[i%4] += int(v)
				}
			}
			o := y*out.Stride + 4*x
			for i := range sum {
				out.Pix[o+i] = uint8(sum[i] / (k * k))
			}
		}
	}
	return out
}

// Encode writes the image as a PNG to w.
func (p *PNG) Encode(w io.Writer) error { return png.Encode(w, p.Image()) }
