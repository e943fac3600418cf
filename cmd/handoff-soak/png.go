package main

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"math"
	"strings"
	"unicode"
)

// pngScale is how many pixels a PNG has per SVG unit.
const pngScale = 2

// palette holds every colour the plots use: the PNG is paletted, one
// byte a pixel.
var palette = color.Palette{colWhite, colBlack, colGrid, colRest, colMax, colRed}

// pngCanvas draws into an image, with square brushes and a 5×7 bitmap
// font (glyphs, font.go): no antialiasing, standard library only.
type pngCanvas struct{ img *image.Paletted }

func (p *pngCanvas) fill(x0, y0, x1, y1 int, c color.RGBA) {
	idx := uint8(palette.Index(c))
	r := image.Rect(x0, y0, x1, y1).Intersect(p.img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		row := p.img.Pix[p.img.PixOffset(r.Min.X, y):p.img.PixOffset(r.Max.X, y)]
		for i := range row {
			row[i] = idx
		}
	}
}

func (p *pngCanvas) rect(x, y, w, h float64, c color.RGBA) {
	p.fill(px(x), px(y), px(x+w), px(y+h), c)
}

func px(v float64) int { return int(math.Round(v * pngScale)) }

func (p *pngCanvas) polyline(pts []pt, c color.RGBA, width float64) {
	b := max(1, int(math.Round(width*pngScale)))
	for i := 1; i < len(pts); i++ {
		p.segment(px(pts[i-1].x), px(pts[i-1].y), px(pts[i].x), px(pts[i].y), b, c)
	}
	if len(pts) == 1 {
		p.segment(px(pts[0].x), px(pts[0].y), px(pts[0].x), px(pts[0].y), b, c)
	}
}

// segment draws a line with Bresenham's algorithm and a b×b brush.
func (p *pngCanvas) segment(x0, y0, x1, y1, b int, c color.RGBA) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	off := b / 2
	for {
		p.fill(x0-off, y0-off, x0-off+b, y0-off+b, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		if e2 := 2 * e; e2 >= dy {
			e += dy
			x0 += sx
		} else {
			e += dx
			y0 += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}

func (p *pngCanvas) text(x, y float64, a anchor, size float64, s string, c color.RGBA) {
	k := max(1, int(math.Round(size*pngScale*0.72/glyphH)))
	s = strings.ToUpper(s)
	n := len([]rune(s))
	w := n*(glyphW+1)*k - k
	x0, base := px(x), px(y)
	switch a {
	case anchorMiddle:
		x0 -= w / 2
	case anchorEnd:
		x0 -= w
	}
	top := base - glyphH*k
	for _, r := range s {
		g := glyph(r)
		for row := range glyphH {
			for col := range glyphW {
				if g[row][col] == '#' {
					p.fill(x0+col*k, top+row*k, x0+(col+1)*k, top+(row+1)*k, c)
				}
			}
		}
		x0 += (glyphW + 1) * k
	}
}

// glyph returns r's bitmap; letters are drawn upper-case, runes without
// a glyph as a question mark.
func glyph(r rune) [glyphH]string {
	if g, ok := font[unicode.ToUpper(r)]; ok {
		return g
	}
	return font['?']
}

// renderPNG draws f as a PNG image.
func renderPNG(f figure) ([]byte, error) {
	p := &pngCanvas{img: image.NewPaletted(image.Rect(0, 0, px(plotW), px(f.height())), palette)}
	f.draw(p)
	var buf bytes.Buffer
	if err := png.Encode(&buf, p.img); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
