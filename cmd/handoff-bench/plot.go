package main

import (
	"bytes"
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/handoff-go/handoff/internal/atomicfile"

	"github.com/handoff-go/handoff/internal/plot"
)

// plotName is the plot's file name in -plot DIR, without the extension.
const plotName = "kvd-gap-vs-size"

// Plot geometry, in SVG user units (pixels of the PNG).
const (
	figW, figH        = 960, 540
	figLeft, figRight = 80, 30
	figTop, figBottom = 70, 60
	pngSupersample    = 3 // the PNG is drawn this much larger, then averaged down
	targetGap         = 20 * time.Millisecond
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
func drawGapPlot(cv plot.Canvas, r *kvdResult) {
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

	cv.Rect(0, 0, figW, figH, colourWhite, colourWhite)
	cv.Text(figW/2, 24, fmt.Sprintf("examples/kvd: pause of a handoff vs stop-then-start, by data size (%d-byte values)", r.ValueSize), font(15, plot.Middle))
	cv.Text(figW/2, 44, fmt.Sprintf("%s, %s, %d CPUs; %d handoffs and %d restarts per size; kvd %s", r.Date[:min(10, len(r.Date))], r.OS, r.CPUs, r.Handoffs, r.Handoffs, shortRev(r.KVD)), font(11, plot.Middle))
	cv.Text(figW/2, figH-14, "keys in the store (log scale)", font(12, plot.Middle))
	cv.Text(22, top+innerH/2, "milliseconds (log scale)", plot.Font{Size: 12, Anchor: plot.Middle, Vertical: true, Colour: colourBlack})

	// Grid, ticks and labels: decades, with minor lines at 2..9.
	for e := math.Floor(ylo); e <= yhi; e++ {
		for m := 1.0; m < 10; m++ {
			v := m * math.Pow(10, e)
			if math.Log10(v) < ylo-1e-9 || math.Log10(v) > yhi+1e-9 {
				continue
			}
			y := py(v)
			if m == 1 {
				plot.Line(cv, left, y, right, y, thin(colourGrid))
				plot.Line(cv, left-5, y, left, y, thin(colourBlack))
				cv.Text(left-8, y+4, trimMS(v), font(11, plot.End))
			} else {
				plot.Line(cv, left-3, y, left, y, thin(colourBlack))
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
				plot.Line(cv, x, top, x, bottom, thin(colourGrid))
				plot.Line(cv, x, bottom, x, bottom+5, thin(colourBlack))
				cv.Text(x, bottom+19, keysLabel(int(math.Round(v))), font(11, plot.Middle))
			} else {
				plot.Line(cv, x, bottom, x, bottom+3, thin(colourBlack))
			}
		}
	}
	plot.Line(cv, left, top, left, bottom, thin(colourBlack))
	plot.Line(cv, left, bottom, right, bottom, thin(colourBlack))

	// The target of issue 10: at most 20 ms (named in the legend).
	ty := py(float64(targetGap) / float64(time.Millisecond))
	plot.Line(cv, left, ty, right, ty, plot.Stroke{Colour: colourTarget, Width: 1, Dashed: true})

	for _, s := range series {
		for i, p := range s.points {
			x, y := px(p.keys), py(p.median)
			if i > 0 {
				q := s.points[i-1]
				plot.Line(cv, px(q.keys), py(q.median), x, y, plot.Stroke{Colour: s.colour, Width: 2, Dashed: s.dashed})
			}
			if p.p99 > p.median {
				bx := x + s.barShift
				plot.Line(cv, bx, y, bx, py(p.p99), plot.Stroke{Colour: s.colour, Width: 1.5})
				plot.Line(cv, bx-4, py(p.p99), bx+4, py(p.p99), plot.Stroke{Colour: s.colour, Width: 1.5})
			}
			cv.Dot(x, y, 3.5, s.colour)
		}
	}

	// Legend, top left inside the axes.
	lx, ly := left+12, top+12
	n := float64(len(series))
	cv.Rect(lx-6, ly-6, 400, n*18+44, colourWhite, colourGrid)
	for i, s := range series {
		y := ly + float64(i)*18 + 6
		plot.Line(cv, lx, y, lx+24, y, plot.Stroke{Colour: s.colour, Width: 2, Dashed: s.dashed})
		cv.Dot(lx+12, y, 3.5, s.colour)
		cv.Text(lx+32, y+4, s.label, font(11, plot.Start))
	}
	plot.Line(cv, lx, ly+n*18+6, lx+24, ly+n*18+6, plot.Stroke{Colour: colourTarget, Width: 1, Dashed: true})
	cv.Text(lx+32, ly+n*18+10, "20 ms: the target for the accept gap", font(11, plot.Start))
	cv.Text(lx, ly+n*18+28, "dots: medians; bars: up to the p99", font(11, plot.Start))
}

// font is the plot's text: black, of size points, anchored at a.
func font(size float64, a plot.Anchor) plot.Font {
	return plot.Font{Size: size, Anchor: a, Colour: colourBlack}
}

// thin is the stroke of the grid, the axes and the ticks.
func thin(c color.RGBA) plot.Stroke { return plot.Stroke{Colour: c, Width: 1} }

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

func renderSVG(w io.Writer, r *kvdResult) error {
	s := plot.NewSVG(figW, figH)
	drawGapPlot(s, r)
	_, err := s.WriteTo(w)
	return err
}

func renderPNG(w io.Writer, r *kvdResult) error {
	p := plot.NewPNG(figW, figH, 1, pngSupersample)
	drawGapPlot(p, r)
	return p.Encode(w)
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

// writeFileAtomic renders into memory, then writes path through a
// temporary file (internal/atomicfile), so a failed write leaves no
// half-written plot.
func writeFileAtomic(path string, render func(io.Writer) error) error {
	var b bytes.Buffer
	if err := render(&b); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return atomicfile.WriteFile(path, b.Bytes(), 0o644)
}
