package main

import (
	"fmt"
	"html"
	"image/color"
	"strings"
)

// svgCanvas writes SVG elements.
type svgCanvas struct{ b strings.Builder }

func hexColor(c color.RGBA) string { return fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B) }

func (s *svgCanvas) rect(x, y, w, h float64, fill color.RGBA) {
	fmt.Fprintf(&s.b, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", x, y, w, h, hexColor(fill))
}

func (s *svgCanvas) polyline(pts []pt, c color.RGBA, width float64) {
	if len(pts) == 0 {
		return
	}
	s.b.WriteString("<polyline fill=\"none\" stroke-linejoin=\"round\" points=\"")
	for i, p := range pts {
		if i > 0 {
			s.b.WriteByte(' ')
		}
		fmt.Fprintf(&s.b, "%.1f,%.1f", p.x, p.y)
	}
	fmt.Fprintf(&s.b, "\" stroke=\"%s\" stroke-width=\"%g\"/>\n", hexColor(c), width)
}

func (s *svgCanvas) text(x, y float64, a anchor, size float64, str string, c color.RGBA) {
	anchors := [...]string{"start", "middle", "end"}
	fmt.Fprintf(&s.b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\" font-size=\"%g\" fill=\"%s\">%s</text>\n",
		x, y, anchors[a], size, hexColor(c), html.EscapeString(str))
}

// renderSVG draws f as an SVG document.
func renderSVG(f figure) []byte {
	var s svgCanvas
	h := f.height()
	fmt.Fprintf(&s.b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n",
		plotW, h, plotW, h)
	f.draw(&s)
	s.b.WriteString("</svg>\n")
	return []byte(s.b.String())
}
