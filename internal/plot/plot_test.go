package plot

import (
	"bytes"
	"encoding/xml"
	"errors"
	"image/color"
	"image/png"
	"io"
	"testing"
)

var (
	black = color.RGBA{0, 0, 0, 0xff}
	red   = color.RGBA{0xc8, 0x2a, 0x2a, 0xff}
)

// drawAll puts every primitive on c, text with the characters XML escapes.
func drawAll(c Canvas) {
	c.Rect(0, 0, 200, 100, color.RGBA{0xff, 0xff, 0xff, 0xff}, None)
	c.Rect(10, 10, 50, 30, color.RGBA{0xff, 0xff, 0xff, 0xff}, black)
	Line(c, 10, 90, 190, 90, Stroke{Colour: black, Width: 1})
	c.Polyline([]Point{{10, 80}, {50, 20}, {90, 60}}, Stroke{Colour: red, Width: 2, Dashed: true})
	c.Polyline([]Point{{100, 50}}, Stroke{Colour: red, Width: 3})
	c.Polyline(nil, Stroke{Colour: red, Width: 3})
	c.Dot(120, 40, 3.5, red)
	c.Text(100, 20, `a < b & "c" > 'd'`, Font{Size: 11, Anchor: Middle, Colour: black})
	c.Text(15, 50, "upwards", Font{Size: 12, Anchor: Middle, Vertical: true, Colour: black})
	c.Text(190, 70, "µs × 2 → ☃", Font{Size: 11, Anchor: End, Colour: red})
}

func TestSVGIsWellFormed(t *testing.T) {
	s := NewSVG(200, 100)
	drawAll(s)
	var b bytes.Buffer
	if _, err := s.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(b.Bytes()))
	elements := map[string]int{}
	var text string
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%v\n%s", err, b.Bytes())
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			elements[tok.Name.Local]++
		case xml.CharData:
			text += string(tok)
		}
	}
	want := map[string]int{"svg": 1, "rect": 2, "polyline": 3, "circle": 1, "text": 3}
	for name, n := range want {
		if elements[name] != n {
			t.Errorf("%d <%s>, want %d", elements[name], name, n)
		}
	}
	if !bytes.Contains([]byte(text), []byte(`a < b & "c" > 'd'`)) {
		t.Errorf("text %q lost its characters", text)
	}
	for _, attr := range []string{`stroke-dasharray="6,3"`, `rotate(-90)`, `stroke="none"`, `width="200" height="100"`} {
		if !bytes.Contains(b.Bytes(), []byte(attr)) {
			t.Errorf("SVG lacks %s", attr)
		}
	}
}

func TestPNGSize(t *testing.T) {
	for _, tc := range []struct {
		name               string
		scale, supersample int
		w, h               int
	}{
		{"supersampled", 1, 3, 200, 100},
		{"scaled", 2, 1, 400, 200},
		{"both", 2, 2, 400, 200},
		{"no supersample", 1, 0, 200, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := NewPNG(200, 100, tc.scale, tc.supersample)
			drawAll(p)
			var b bytes.Buffer
			if err := p.Encode(&b); err != nil {
				t.Fatal(err)
			}
			img, err := png.Decode(&b)
			if err != nil {
				t.Fatal(err)
			}
			if got := img.Bounds().Size(); got.X != tc.w || got.Y != tc.h {
				t.Errorf("size %v, want %dx%d", got, tc.w, tc.h)
			}
			// The red dot is drawn, the corner is white.
			if c := color.RGBAModel.Convert(img.At(120*tc.scale, 40*tc.scale)).(color.RGBA); c != red {
				t.Errorf("dot centre %v, want %v", c, red)
			}
			if c := color.RGBAModel.Convert(img.At(tc.w-1, 0)).(color.RGBA); c != (color.RGBA{0xff, 0xff, 0xff, 0xff}) {
				t.Errorf("corner %v, want white", c)
			}
		})
	}
}

// inked counts the pixels of p that are not white.
func inked(p *PNG) int {
	n := 0
	img := p.Image()
	for i := 0; i < len(img.Pix); i += 4 {
		if img.Pix[i] != 0xff || img.Pix[i+1] != 0xff || img.Pix[i+2] != 0xff {
			n++
		}
	}
	return n
}

func TestTextInksEveryPrintableCharacter(t *testing.T) {
	for r := rune(0x21); r <= 0x7e; r++ {
		for _, vertical := range []bool{false, true} {
			p := NewPNG(40, 40, 1, 3)
			p.Text(20, 25, string(r), Font{Size: 11, Anchor: Middle, Vertical: vertical, Colour: black})
			if inked(p) == 0 {
				t.Errorf("%q (vertical %v) draws nothing", r, vertical)
			}
		}
	}
	p := NewPNG(40, 40, 1, 3)
	p.Text(20, 25, " ", Font{Size: 11, Colour: black})
	if n := inked(p); n != 0 {
		t.Errorf("a space inks %d pixels", n)
	}
}

func TestTextAnchors(t *testing.T) {
	// The same text anchored at its start, middle and end lies right
	// of, around and left of its point.
	for _, tc := range []struct {
		anchor      Anchor
		left, right bool
	}{{Start, false, true}, {Middle, true, true}, {End, true, false}} {
		p := NewPNG(100, 20, 1, 1)
		p.Text(50, 15, "MMMM", Font{Size: 11, Anchor: tc.anchor, Colour: black})
		img := p.Image()
		var left, right bool
		for y := range 20 {
			for x := range 100 {
				if img.RGBAAt(x, y).R == 0 {
					left, right = left || x < 49, right || x > 51
				}
			}
		}
		if left != tc.left || right != tc.right {
			t.Errorf("anchor %d: ink left %v, right %v; want %v, %v", tc.anchor, left, right, tc.left, tc.right)
		}
	}
}
