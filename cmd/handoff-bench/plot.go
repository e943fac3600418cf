package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"html"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// plotName is the plot's file name in -plot DIR, without the extension.
const plotName = "kvd-gap-vs-size"

// Plot geometry, in SVG user units (pixels of the PNG).
const (
	figW, figH             = 960, 540
	figLeft, figRight      = 80, 30
	figTop, figBottom      = 70, 60
	pngSupersample         = 3 // the PNG is drawn this much larger, then averaged down
	targetGap              = 20 * time.Millisecond
	anchorStart, anchorMid = 0, 1
	anchorEnd              = 2
)

// Colours of the series.
var (
	colourGap     = color.RGBA{0x1f, 0x4f, 0xbf, 0xff}
	colourPause   = color.RGBA{0x00, 0x90, 0x00, 0xff}
	colourRestart = color.RGBA{0xdc, 0x1e, 0x1e, 0xff}
	colourTarget  = color.RGBA{0xc0, 0x80, 0x00, 0xff}
	colourIdle    = color.RGBA{0x80, 0x80, 0x80, 0xff}
	colourGrid    = color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
	colourBlack   = color.RGBA{0x00, 0x00, 0x00, 0xff}
	colourWhite   = color.RGBA{0xff, 0xff, 0xff, 0xff}
)

// canvas is what the plot is drawn on; svgCanvas and pngCanvas draw the
// same figure, in the same coordinates.
type canvas interface {
	line(x1, y1, x2, y2, width float64, c color.RGBA, dashed bool)
	dot(x, y, r float64, c color.RGBA)
	rect(x, y, w, h float64, fill, stroke color.RGBA)
	// text draws s with its baseline at y, anchored at x; vertical text
	// reads upwards and is anchored at its middle.
	text(x, y float64, s string, size float64, anchor int, vertical bool)
}

// plotPoint is one size of one series: the median, and the p99 (drawn
// as a bar above the median) or 0 for none.
type plotPoint struct{ keys, median, p99 float64 }

type plotSeries struct {
	label  string
	colour color.RGBA
	dashed bool
	// barShift moves the p99 bars sideways (in pixels), so that the bars
	// of series at the same size do not hide one another.
	barShift float64
	points   []plotPoint
}

// gapSeries returns the plot's series: the accept gap, the pause the
// probes saw, and stop-then-start, in milliseconds.
func gapSeries(r *kvdResult) []plotSeries {
	msf := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	gap := plotSeries{label: "handoff: accept gap (Outcome.Phases.AcceptGap)", colour: colourGap, barShift: -5}
	pause := plotSeries{label: "handoff: longest wait of a client probing every ms", colour: colourPause, dashed: true, barShift: 5}
	idle := plotSeries{label: "the same probes between handoffs: the machine's noise", colour: colourIdle, dashed: true}
	restart := plotSeries{label: "stop-then-start: SIGTERM to the first /healthz 200", colour: colourRestart}
	for _, s := range r.Sizes {
		k := float64(s.Keys)
		if d := s.Handoff.AcceptGap; d != nil && d.N > 0 {
			gap.points = append(gap.points, plotPoint{k, msf(d.Median), msf(d.P99)})
		}
		if d := s.Handoff.Pause; d.N > 0 {
			pause.points = append(pause.points, plotPoint{k, msf(d.Median), msf(d.P99)})
		}
		if d := s.Handoff.IdlePause; d.N > 0 {
			idle.points = append(idle.points, plotPoint{k, msf(d.Median), 0})
		}
		if d := s.Restart.StopToHealthy; d != nil && d.N > 0 {
			restart.points = append(restart.points, plotPoint{k, msf(d.Median), msf(d.P99)})
		}
	}
	return []plotSeries{restart, gap, pause, idle}
}

// logRange returns whole decades around the positive values vs.
func logRange(vs []float64) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, v := range vs {
		if v > 0 {
			lo, hi = min(lo, math.Log10(v)), max(hi, math.Log10(v))
		}
	}
	if math.IsInf(lo, 1) {
		return 0, 1
	}
	lo, hi = math.Floor(lo), math.Ceil(hi)
	if hi <= lo {
		hi = lo + 1
	}
	return lo, hi
}

// drawGapPlot draws the accept gap and the restart time against the data
// size, both axes logarithmic.
func drawGapPlot(cv canvas, r *kvdResult) {
	series := gapSeries(r)
	var xs, ys []float64
	for _, s := range series {
		for _, p := range s.points {
			xs, ys = append(xs, p.keys), append(ys, p.median, p.p99)
		}
	}
	ys = append(ys, float64(targetGap)/float64(time.Millisecond))
	ylo, yhi := logRange(ys)
	// A quarter of a decade of air on either side of the sizes.
	xlo, xhi := -0.25, 1.25
	if len(xs) > 0 {
		xlo, xhi = math.Log10(slices.Min(xs))-0.25, math.Log10(slices.Max(xs))+0.25
	}
	innerW, innerH := float64(figW-figLeft-figRight), float64(figH-figTop-figBottom)
	px := func(keys float64) float64 { return figLeft + (math.Log10(keys)-xlo)/(xhi-xlo)*innerW }
	py := func(ms float64) float64 { return figTop + innerH - (math.Log10(ms)-ylo)/(yhi-ylo)*innerH }
	left, right, top, bottom := float64(figLeft), float64(figLeft)+innerW, float64(figTop), float64(figTop)+innerH

	cv.rect(0, 0, figW, figH, colourWhite, colourWhite)
	cv.text(figW/2, 24, fmt.Sprintf("examples/kvd: pause of a handoff vs stop-then-start, by data size (%d-byte values)", r.ValueSize), 15, anchorMid, false)
	cv.text(figW/2, 44, fmt.Sprintf("%s, %s, %d CPUs; %d handoffs and %d restarts per size; kvd %s", r.Date[:min(10, len(r.Date))], r.OS, r.CPUs, r.Handoffs, r.Handoffs, shortRev(r.KVD)), 11, anchorMid, false)
	cv.text(figW/2, figH-14, "keys in the store (log scale)", 12, anchorMid, false)
	cv.text(22, top+innerH/2, "milliseconds (log scale)", 12, anchorMid, true)

	// Grid, ticks and labels: decades, with minor lines at 2..9.
	for e := math.Floor(ylo); e <= yhi; e++ {
		for m := 1.0; m < 10; m++ {
			v := m * math.Pow(10, e)
			if math.Log10(v) < ylo-1e-9 || math.Log10(v) > yhi+1e-9 {
				continue
			}
			y := py(v)
			if m == 1 {
				cv.line(left, y, right, y, 1, colourGrid, false)
				cv.line(left-5, y, left, y, 1, colourBlack, false)
				cv.text(left-8, y+4, trimMS(v), 11, anchorEnd, false)
			} else {
				cv.line(left-3, y, left, y, 1, colourBlack, false)
			}
		}
	}
	for e := math.Floor(xlo); e <= xhi; e++ {
		for m := 1.0; m < 10; m++ {
			v := m * math.Pow(10, e)
			if math.Log10(v) < xlo || math.Log10(v) > xhi {
				continue
			}
			x := px(v)
			if m == 1 {
				cv.line(x, top, x, bottom, 1, colourGrid, false)
				cv.line(x, bottom, x, bottom+5, 1, colourBlack, false)
				cv.text(x, bottom+19, keysLabel(int(math.Round(v))), 11, anchorMid, false)
			} else {
				cv.line(x, bottom, x, bottom+3, 1, colourBlack, false)
			}
		}
	}
	cv.line(left, top, left, bottom, 1, colourBlack, false)
	cv.line(left, bottom, right, bottom, 1, colourBlack, false)

	// The target of issue 10: at most 20 ms (named in the legend).
	ty := py(float64(targetGap) / float64(time.Millisecond))
	cv.line(left, ty, right, ty, 1, colourTarget, true)

	for _, s := range series {
		for i, p := range s.points {
			x, y := px(p.keys), py(p.median)
			if i > 0 {
				q := s.points[i-1]
				cv.line(px(q.keys), py(q.median), x, y, 2, s.colour, s.dashed)
			}
			if p.p99 > p.median {
				bx := x + s.barShift
				cv.line(bx, y, bx, py(p.p99), 1.5, s.colour, false)
				cv.line(bx-4, py(p.p99), bx+4, py(p.p99), 1.5, s.colour, false)
			}
			cv.dot(x, y, 3.5, s.colour)
		}
	}

	// Legend, top left inside the axes.
	lx, ly := left+12, top+12
	n := float64(len(series))
	cv.rect(lx-6, ly-6, 400, n*18+44, colourWhite, colourGrid)
	for i, s := range series {
		y := ly + float64(i)*18 + 6
		cv.line(lx, y, lx+24, y, 2, s.colour, s.dashed)
		cv.dot(lx+12, y, 3.5, s.colour)
		cv.text(lx+32, y+4, s.label, 11, anchorStart, false)
	}
	cv.line(lx, ly+n*18+6, lx+24, ly+n*18+6, 1, colourTarget, true)
	cv.text(lx+32, ly+n*18+10, "20 ms: the target for the accept gap", 11, anchorStart, false)
	cv.text(lx, ly+n*18+28, "dots: medians; bars: up to the p99", 11, anchorStart, false)
}

// shortRev shortens a full VCS revision at the start of rev to 12 digits.
func shortRev(rev string) string {
	if len(rev) >= 40 && strings.Trim(rev[:40], "0123456789abcdef") == "" {
		return rev[:12] + rev[40:]
	}
	return rev
}

// trimMS labels a decade of milliseconds.
func trimMS(v float64) string {
	if v >= 1 {
		return fmt.Sprintf("%.0f", v)
	}
	return strings.TrimRight(fmt.Sprintf("%.4f", v), "0")
}

// svgCanvas writes SVG elements.
type svgCanvas struct{ b bytes.Buffer }

func svgColour(c color.RGBA) string { return fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B) }

func (s *svgCanvas) line(x1, y1, x2, y2, width float64, c color.RGBA, dashed bool) {
	dash := ""
	if dashed {
		dash = ` stroke-dasharray="6,3"`
	}
	fmt.Fprintf(&s.b, `<path d="M%.1f %.1f L%.1f %.1f" stroke="%s" stroke-width="%.1f"%s fill="none"/>`+"\n", x1, y1, x2, y2, svgColour(c), width, dash)
}

func (s *svgCanvas) dot(x, y, r float64, c color.RGBA) {
	fmt.Fprintf(&s.b, `<circle cx="%.1f" cy="%.1f" r="%.1f" fill="%s"/>`+"\n", x, y, r, svgColour(c))
}

func (s *svgCanvas) rect(x, y, w, h float64, fill, stroke color.RGBA) {
	fmt.Fprintf(&s.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" stroke="%s"/>`+"\n", x, y, w, h, svgColour(fill), svgColour(stroke))
}

func (s *svgCanvas) text(x, y float64, str string, size float64, anchor int, vertical bool) {
	a := [...]string{"start", "middle", "end"}[anchor]
	if vertical {
		fmt.Fprintf(&s.b, `<text transform="translate(%.1f %.1f) rotate(-90)" text-anchor="middle" font-size="%.0f">%s</text>`+"\n", x, y, size, html.EscapeString(str))
		return
	}
	fmt.Fprintf(&s.b, `<text x="%.1f" y="%.1f" text-anchor="%s" font-size="%.0f">%s</text>`+"\n", x, y, a, size, html.EscapeString(str))
}

func renderSVG(w io.Writer, r *kvdResult) error {
	var s svgCanvas
	fmt.Fprintf(&s.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif">`+"\n", figW, figH, figW, figH)
	drawGapPlot(&s, r)
	s.b.WriteString("</svg>\n")
	_, err := w.Write(s.b.Bytes())
	return err
}

// pngCanvas rasterises the figure pngSupersample times larger than the
// PNG, without anti-aliasing; shrink averages it down, which smooths the
// edges.
type pngCanvas struct{ img *image.RGBA }

func newPNGCanvas() *pngCanvas {
	return &pngCanvas{img: image.NewRGBA(image.Rect(0, 0, figW*pngSupersample, figH*pngSupersample))}
}

func (p *pngCanvas) set(x, y int, c color.RGBA) {
	if x < 0 || y < 0 || x >= p.img.Rect.Max.X || y >= p.img.Rect.Max.Y {
		return
	}
	i := y*p.img.Stride + 4*x
	p.img.Pix[i], p.img.Pix[i+1], p.img.Pix[i+2], p.img.Pix[i+3] = c.R, c.G, c.B, c.A
}

// fill paints the rectangle r of the large image.
func (p *pngCanvas) fill(r image.Rectangle, c color.RGBA) {
	draw.Draw(p.img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

// disc fills the pixels within r of (cx, cy), in the large image's pixels.
func (p *pngCanvas) disc(cx, cy, r float64, c color.RGBA) {
	for y := int(math.Floor(cy - r)); y <= int(math.Ceil(cy+r)); y++ {
		for x := int(math.Floor(cx - r)); x <= int(math.Ceil(cx+r)); x++ {
			dx, dy := float64(x)+0.5-cx, float64(y)+0.5-cy
			if dx*dx+dy*dy <= r*r {
				p.set(x, y, c)
			}
		}
	}
}

func (p *pngCanvas) line(x1, y1, x2, y2, width float64, c color.RGBA, dashed bool) {
	const k = pngSupersample
	x1, y1, x2, y2 = x1*k, y1*k, x2*k, y2*k
	r := max(width*k/2, 0.75)
	if !dashed && (x1 == x2 || y1 == y2) {
		// Axis-aligned (the grid, the axes, the ticks): a rectangle.
		p.fill(image.Rect(int(math.Round(min(x1, x2)-r)), int(math.Round(min(y1, y2)-r)),
			int(math.Round(max(x1, x2)+r)), int(math.Round(max(y1, y2)+r))), c)
		return
	}
	length := math.Hypot(x2-x1, y2-y1)
	steps := int(math.Ceil(length * 2))
	for i := 0; i <= steps; i++ {
		t := 0.0
		if steps > 0 {
			t = float64(i) / float64(steps)
		}
		// The SVG's dashes: 6 units drawn, 3 not.
		if dashed && math.Mod(t*length/k, 9) >= 6 {
			continue
		}
		p.disc(x1+t*(x2-x1), y1+t*(y2-y1), r, c)
	}
}

func (p *pngCanvas) dot(x, y, r float64, c color.RGBA) {
	p.disc(x*pngSupersample, y*pngSupersample, r*pngSupersample, c)
}

func (p *pngCanvas) rect(x, y, w, h float64, fill, stroke color.RGBA) {
	const k = pngSupersample
	x0, y0, x1, y1 := int(x*k), int(y*k), int((x+w)*k), int((y+h)*k)
	p.fill(image.Rect(x0, y0, x1, y1), stroke)
	p.fill(image.Rect(x0+k, y0+k, x1-k, y1-k), fill)
}

func (p *pngCanvas) text(x, y float64, s string, size float64, anchor int, vertical bool) {
	// A font pixel is a square of scale pixels: the glyph's height is
	// about 0.6 of the font size, as a sans-serif capital's.
	scale := max(1, int(math.Round(size*0.6*pngSupersample/glyphH)))
	runes := []rune(s)
	width := (len(runes)*glyphAdvance - 1) * scale
	ox, oy := int(x*pngSupersample), int(y*pngSupersample)
	shift := 0
	switch {
	case vertical, anchor == anchorMid:
		shift = width / 2
	case anchor == anchorEnd:
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
						if vertical { // rotated a quarter turn anticlockwise
							p.set(ox+v+b, oy-u-a, colourBlack)
						} else {
							p.set(ox+u+a, oy+v+b, colourBlack)
						}
					}
				}
			}
		}
	}
}

// shrink averages each pngSupersample square into one pixel.
func (p *pngCanvas) shrink() *image.RGBA {
	const k = pngSupersample
	out := image.NewRGBA(image.Rect(0, 0, figW, figH))
	in := p.img.Pix
	for y := range figH {
		for x := range figW {
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

func renderPNG(w io.Writer, r *kvdResult) error {
	p := newPNGCanvas()
	drawGapPlot(p, r)
	return png.Encode(w, p.shrink())
}

// checkPlotDir tells before the run whether the plots can be written to dir.
func checkPlotDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("-plot: %w", err)
	}
	f, err := os.CreateTemp(dir, ".handoff-bench-plot-*")
	if err != nil {
		return fmt.Errorf("-plot: cannot create a file in %s: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// writePlots writes the plot as SVG and PNG into dir.
func writePlots(dir string, r *kvdResult) error {
	return errors.Join(
		writeFileAtomic(filepath.Join(dir, plotName+".svg"), func(w io.Writer) error { return renderSVG(w, r) }),
		writeFileAtomic(filepath.Join(dir, plotName+".png"), func(w io.Writer) error { return renderPNG(w, r) }),
	)
}

// writeFileAtomic writes path under a temporary name and renames it into
// place, so a failed write leaves no half-written file.
func writeFileAtomic(path string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	w := bufio.NewWriter(f)
	err = write(w)
	if err == nil {
		err = w.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}
