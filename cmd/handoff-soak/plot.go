package main

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/handoff-go/handoff/internal/plot"
)

// The plots: quantities over handoff number, one panel each. The dark
// line is the sample at rest before each handoff (x = handoffs done), the
// light one the highest of every sample taken until the next one (during
// the handoff and the rest after it).

const (
	plotW      = 1000.0
	panelH     = 250.0
	plotTop    = 70.0
	plotLeft   = 80.0
	plotRight  = 30.0
	panelGap   = 60.0
	plotBottom = 50.0
	pngScale   = 2 // pixels of the PNG a unit
)

var (
	colBlack = color.RGBA{0x22, 0x22, 0x22, 0xff}
	colGrid  = color.RGBA{0xdd, 0xdd, 0xdd, 0xff}
	colRest  = color.RGBA{0x1f, 0x5f, 0xb4, 0xff}
	colMax   = color.RGBA{0x9e, 0xc5, 0xf0, 0xff}
	colRed   = color.RGBA{0xc8, 0x2a, 0x2a, 0xff}
	colWhite = color.RGBA{0xff, 0xff, 0xff, 0xff}
)

// plotSeries is one line of a panel.
type plotSeries struct {
	label string
	c     color.RGBA
	width float64
	pts   []plot.Point
}

// panel is one quantity over handoff number.
type panel struct {
	title   string
	integer bool // a count: ticks at whole numbers
	series  []plotSeries
}

// figure is a titled stack of panels sharing the x axis.
type figure struct {
	title, subtitle string
	xmax            float64
	panels          []panel
}

func (f figure) height() float64 {
	return plotTop + float64(len(f.panels))*(panelH+panelGap) - panelGap + plotBottom
}

// draw lays the figure out on c.
func (f figure) draw(c plot.Canvas) {
	c.Rect(0, 0, plotW, f.height(), colWhite, plot.None)
	c.Text(plotLeft, 28, f.title, plot.Font{Size: 16, Anchor: plot.Start, Colour: colBlack})
	c.Text(plotLeft, 50, f.subtitle, plot.Font{Size: 12, Anchor: plot.Start, Colour: colBlack})
	for i, p := range f.panels {
		top := plotTop + float64(i)*(panelH+panelGap)
		f.drawPanel(c, p, top, i == len(f.panels)-1)
	}
}

func (f figure) drawPanel(c plot.Canvas, p panel, top float64, last bool) {
	x0, x1 := plotLeft, plotW-plotRight
	y0, y1 := top+40, top+panelH // plot area, y1 at the bottom
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range p.series {
		for _, q := range s.pts {
			lo, hi = math.Min(lo, q.Y), math.Max(hi, q.Y)
		}
	}
	if math.IsInf(lo, 0) {
		lo, hi = 0, 1
	}
	// From zero when that keeps the detail visible; else around the data.
	if lo >= 0 && lo < (hi-lo)*2 {
		lo = 0
	}
	if hi-lo < 1e-9 {
		hi = lo + 1
	}
	step := niceStep((hi - lo) / 4)
	if p.integer {
		step = math.Max(step, 1)
	}
	lo = math.Floor(lo/step) * step
	hi = math.Ceil(hi/step) * step
	if hi == lo {
		hi = lo + step
	}
	xmax := math.Max(f.xmax, 1)
	sx := func(x float64) float64 { return x0 + x/xmax*(x1-x0) }
	sy := func(y float64) float64 { return y1 - (y-lo)/(hi-lo)*(y1-y0) }

	c.Text(x0, top+10, p.title, plot.Font{Size: 13, Anchor: plot.Start, Colour: colBlack})
	for y := lo; y <= hi+step/2; y += step {
		plot.Line(c, x0, sy(y), x1, sy(y), plot.Stroke{Colour: colGrid, Width: 1})
		c.Text(x0-6, sy(y)+4, tickLabel(y, step), plot.Font{Size: 11, Anchor: plot.End, Colour: colBlack})
	}
	xstep := niceStep(xmax / 8)
	for x := 0.0; x <= xmax+xstep/2; x += xstep {
		plot.Line(c, sx(x), y1, sx(x), y1+4, plot.Stroke{Colour: colBlack, Width: 1})
		c.Text(sx(x), y1+17, tickLabel(x, xstep), plot.Font{Size: 11, Anchor: plot.Middle, Colour: colBlack})
	}
	c.Polyline([]plot.Point{{X: x0, Y: y0}, {X: x0, Y: y1}, {X: x1, Y: y1}}, plot.Stroke{Colour: colBlack, Width: 1})
	if last {
		c.Text((x0+x1)/2, y1+38, "handoffs performed", plot.Font{Size: 12, Anchor: plot.Middle, Colour: colBlack})
	}
	lx := x1
	for i := len(p.series) - 1; i >= 0; i-- {
		s := p.series[i]
		pts := make([]plot.Point, len(s.pts))
		for j, q := range s.pts {
			pts[j] = plot.Point{X: sx(q.X), Y: sy(q.Y)}
		}
		c.Polyline(pts, plot.Stroke{Colour: s.c, Width: s.width})
		// Legend, right-aligned under the title.
		c.Text(lx, top+28, s.label, plot.Font{Size: 11, Anchor: plot.End, Colour: s.c})
		lx -= float64(len(s.label))*6.5 + 30
		plot.Line(c, lx+4, top+24, lx+22, top+24, plot.Stroke{Colour: s.c, Width: 3})
		lx -= 24
	}
}

// niceStep rounds a step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func tickLabel(v, step float64) string {
	if step >= 1 {
		return fmt.Sprintf("%.0f", v)
	}
	digits := int(math.Ceil(-math.Log10(step)))
	return fmt.Sprintf("%.*f", digits, v)
}

// restAndMax turns samples into the two lines of a panel: the value at
// rest after each handoff, and the highest value of any sample from that
// one until the next rest sample. v < 0 means not read.
func restAndMax(all, rest []sample, scale float64, v func(sample) float64) (restPts, maxPts []plot.Point) {
	for i, r := range rest {
		if y := v(r); y >= 0 {
			restPts = append(restPts, plot.Point{X: float64(i), Y: y / scale})
		}
	}
	if len(rest) < 2 {
		return restPts, nil
	}
	hi := make([]float64, len(rest)-1)
	for i := range hi {
		hi[i] = -1
	}
	for _, smp := range all {
		// The interval that holds smp: after rest[i], before rest[i+1].
		i := sort.Search(len(rest), func(k int) bool { return rest[k].At.After(smp.At) }) - 1
		if i < 0 || i >= len(hi) {
			continue
		}
		hi[i] = math.Max(hi[i], v(smp))
	}
	for i, y := range hi {
		if y >= 0 {
			maxPts = append(maxPts, plot.Point{X: float64(i), Y: y / scale})
		}
	}
	return restPts, maxPts
}

func twoLines(all, rest []sample, title string, scale float64, v func(sample) float64) panel {
	r, m := restAndMax(all, rest, scale, v)
	return panel{title: title, integer: scale == 1, series: []plotSeries{
		{label: "max until the next handoff", c: colMax, width: 1, pts: m},
		{label: "at rest, before the next handoff", c: colRest, width: 1.5, pts: r},
	}}
}

// figures builds the supervisor and the daemon figure.
func figures(rep *report, all, rest []sample) (sup, daemon figure) {
	n := float64(max(len(rest)-1, 1))
	sub := fmt.Sprintf("%d handoffs of examples/kvd under load, %s, commit %s, %s; %d failed requests, %d lost writes",
		rep.Handoffs.Performed, dateOnly(rep.Date), shortCommit(rep.Source.Commit), machineLine(rep.Machine),
		rep.Load.Failed, rep.Writes.Live.LostN+rep.Writes.Disk.LostN)
	sup = figure{
		title:    fmt.Sprintf("handoff-supervisor across %d handoffs: RSS, descriptors, goroutines", rep.Handoffs.Performed),
		subtitle: sub,
		xmax:     n,
		panels: []panel{
			twoLines(all, rest, "supervisor RSS (MiB, VmRSS)", 1<<20, func(s sample) float64 { return float64(s.SupRSS) }),
			twoLines(all, rest, "supervisor open descriptors (/proc/PID/fd)", 1, func(s sample) float64 { return float64(s.SupFDs) }),
			twoLines(all, rest, "supervisor goroutines (go_goroutines)", 1, func(s sample) float64 { return float64(s.Goroutines) }),
		},
	}
	kvdR, kvdM := restAndMax(all, rest, 1, func(s sample) float64 { return float64(s.KVD) })
	_, zM := restAndMax(all, rest, 1, func(s sample) float64 { return float64(len(s.Zombies)) })
	daemon = figure{
		title:    "the serving kvd (a new process after every handoff), and processes",
		subtitle: sub,
		xmax:     n,
		panels: []panel{
			twoLines(all, rest, "serving daemon RSS (MiB, VmRSS)", 1<<20, func(s sample) float64 { return float64(s.DaemonRSS) }),
			twoLines(all, rest, "serving daemon open descriptors", 1, func(s sample) float64 { return float64(s.DaemonFDs) }),
			{title: "kvd processes alive, zombie children of the supervisor", integer: true, series: []plotSeries{
				{label: "zombies, max until the next handoff", c: colRed, width: 1.5, pts: zM},
				{label: "kvd alive, max until the next handoff", c: colMax, width: 1, pts: kvdM},
				{label: "kvd alive at rest", c: colRest, width: 1.5, pts: kvdR},
			}},
		},
	}
	return sup, daemon
}

func dateOnly(rfc3339 string) string {
	d, _, _ := strings.Cut(rfc3339, "T")
	return d
}

func machineLine(m machine) string {
	return fmt.Sprintf("%d CPUs, Linux %s", m.CPUs, m.Kernel)
}

// renderSVG draws f as an SVG document.
func renderSVG(f figure) ([]byte, error) {
	s := plot.NewSVG(plotW, f.height())
	f.draw(s)
	var b bytes.Buffer
	_, err := s.WriteTo(&b)
	return b.Bytes(), err
}

// renderPNG draws f as a PNG image, pngScale pixels a unit.
func renderPNG(f figure) ([]byte, error) {
	p := plot.NewPNG(plotW, f.height(), pngScale, 1)
	f.draw(p)
	var b bytes.Buffer
	err := p.Encode(&b)
	return b.Bytes(), err
}

// writePlots writes soak-supervisor and soak-daemon as SVG and PNG to dir.
func writePlots(dir string, rep *report, all, rest []sample) error {
	if len(rest) < 2 {
		return fmt.Errorf("fewer than two samples at rest: nothing to plot")
	}
	sup, daemon := figures(rep, all, rest)
	for name, f := range map[string]figure{"soak-supervisor": sup, "soak-daemon": daemon} {
		svg, err := renderSVG(f)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name+".svg"), svg, 0o644); err != nil {
			return err
		}
		png, err := renderPNG(f)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
			return err
		}
	}
	return nil
}
