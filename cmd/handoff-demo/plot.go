package main

import (
	"bytes"
	"errors"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/handoff-go/handoff/internal/atomicfile"
)

// Plot geometry, in SVG user units (pixels).
const (
	plotW, plotH           = 960, 480
	marginL, marginR       = 70, 20
	marginTop, marginBelow = 40, 50
)

// Colours of the plot's elements.
const (
	colourRequest   = "#1f4fbf"
	colourFailed    = "#dc1e1e"
	colourCommitted = "#00a000"
	colourRolled    = "#dc6400"
)

// checkPlotPath tells before the run whether a plot can be written to
// path: a .svg name in a directory where a file can be created.
func checkPlotPath(path string) error {
	if ext := strings.ToLower(filepath.Ext(path)); ext != ".svg" {
		return errors.New("the plot is SVG: use a .svg file name")
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("cannot create a file in %s: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// writePlot draws request latency over time as an SVG file, with a dashed
// vertical line at each handoff's trigger (green: committed, orange:
// rolled back). It is drawn by hand, without a plotting library, so that
// go run ./cmd/handoff-demo compiles quickly. The file is written under a
// temporary name and renamed into place (internal/atomicfile), so a
// failed write leaves no half-written plot.
func writePlot(path string, r *report) error {
	if err := checkPlotPath(path); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var b bytes.Buffer
	drawPlot(&b, r)
	return atomicfile.WriteFile(path, b.Bytes(), 0o644)
}

func drawPlot(w io.Writer, r *report) {
	maxX, maxY := 1.0, 1.0
	for _, s := range r.samples {
		maxX = max(maxX, s.start.Seconds())
		maxY = max(maxY, float64(s.latency.Microseconds())/1000)
	}
	for _, h := range r.handoffs {
		maxX = max(maxX, h.start.Seconds())
	}
	stepX, stepY := tickStep(maxX), tickStep(maxY)
	maxX, maxY = math.Ceil(maxX/stepX)*stepX, math.Ceil(maxY/stepY)*stepY
	innerW, innerH := float64(plotW-marginL-marginR), float64(plotH-marginTop-marginBelow)
	px := func(x float64) float64 { return marginL + x/maxX*innerW }
	py := func(y float64) float64 { return marginTop + innerH - y/maxY*innerH }

	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", plotW, plotH, plotW, plotH)
	fmt.Fprintf(w, `<rect width="%d" height="%d" fill="white"/>`+"\n", plotW, plotH)
	text(w, plotW/2, 20, "middle", "handoff demo: request latency over time", 15)
	text(w, plotW/2, plotH-10, "middle", "time since the load began (s)", 12)
	fmt.Fprintf(w, `<text transform="translate(18 %d) rotate(-90)" text-anchor="middle">latency (ms)</text>`+"\n", marginTop+int(innerH)/2)

	// Axes and ticks.
	fmt.Fprintf(w, `<path d="M%.1f %.1f V%.1f H%.1f" fill="none" stroke="black"/>`+"\n", px(0), py(maxY), py(0), px(maxX))
	for x := 0.0; x <= maxX+stepX/2; x += stepX {
		fmt.Fprintf(w, `<path d="M%.1f %.1f v5" stroke="black"/>`+"\n", px(x), py(0))
		text(w, px(x), py(0)+18, "middle", trimFloat(x), 12)
	}
	for y := 0.0; y <= maxY+stepY/2; y += stepY {
		fmt.Fprintf(w, `<path d="M%.1f %.1f h-5" stroke="black"/>`+"\n", px(0), py(y))
		fmt.Fprintf(w, `<path d="M%.1f %.1f H%.1f" stroke="#e0e0e0"/>`+"\n", px(0), py(y), px(maxX))
		text(w, px(0)-8, py(y)+4, "end", trimFloat(y), 12)
	}

	// Requests, failed ones last so they stay visible.
	for _, failed := range []bool{false, true} {
		colour := colourRequest
		if failed {
			colour = colourFailed
		}
		fmt.Fprintf(w, `<g fill="%s">`+"\n", colour)
		for _, s := range r.samples {
			if s.ok == failed {
				continue
			}
			fmt.Fprintf(w, `<circle cx="%.1f" cy="%.1f" r="1.5"/>`+"\n", px(s.start.Seconds()), py(float64(s.latency.Microseconds())/1000))
		}
		fmt.Fprintln(w, "</g>")
	}

	// Handoff markers.
	for _, h := range r.handoffs {
		colour := colourCommitted
		if !h.res.committed {
			colour = colourRolled
		}
		fmt.Fprintf(w, `<path class="handoff" d="M%.1f %.1f V%.1f" stroke="%s" stroke-dasharray="6,3"><title>handoff %d to %s</title></path>`+"\n",
			px(h.start.Seconds()), py(0), py(maxY), colour, h.n, html.EscapeString(h.to))
	}

	// Legend, top right.
	lx, ly := float64(plotW-marginR-170), float64(marginTop+10)
	fmt.Fprintf(w, `<rect x="%.1f" y="%.1f" width="165" height="74" fill="white" stroke="#999"/>`+"\n", lx-5, ly-5)
	entries := []struct{ colour, label string }{
		{colourRequest, "request"}, {colourFailed, "failed request"},
		{colourCommitted, "handoff (committed)"}, {colourRolled, "handoff (rolled back)"},
	}
	for i, e := range entries {
		y := ly + float64(i)*17 + 6
		if i < 2 {
			fmt.Fprintf(w, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", lx+10, y, e.colour)
		} else {
			fmt.Fprintf(w, `<path d="M%.1f %.1f h20" stroke="%s" stroke-dasharray="6,3"/>`+"\n", lx, y, e.colour)
		}
		text(w, lx+28, y+4, "start", e.label, 12)
	}
	fmt.Fprintln(w, "</svg>")
}

func text(w io.Writer, x, y float64, anchor, s string, size int) {
	fmt.Fprintf(w, `<text x="%.1f" y="%.1f" text-anchor="%s" font-size="%d">%s</text>`+"\n", x, y, anchor, size, html.EscapeString(s))
}

// tickStep picks 1, 2 or 5 times a power of ten so that about five ticks
// cover 0..span.
func tickStep(span float64) float64 {
	raw := span / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5} {
		if raw <= m*mag {
			return m * mag
		}
	}
	return 10 * mag
}

func trimFloat(v float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".")
}
