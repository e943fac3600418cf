package main

import (
	"fmt"
	"image/color"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// writePlot draws request latency over time with a vertical line at each
// handoff (green: committed, red: rolled back). The file name's extension
// picks the format (.svg, .png, .pdf).
func writePlot(path string, r *report) error {
	ext := strings.ToLower(strings.TrimPrefix(filepath.Ext(path), "."))
	switch ext {
	case "svg", "png", "pdf":
	default:
		return fmt.Errorf("%s: use a .svg, .png or .pdf file name", path)
	}
	p := plot.New()
	p.Title.Text = "handoff demo: request latency over time"
	p.X.Label.Text = "time since the load began (s)"
	p.Y.Label.Text = "latency (ms)"
	var ok, bad plotter.XYs
	maxY := 1.0
	for _, s := range r.samples {
		pt := plotter.XY{X: s.start.Seconds(), Y: float64(s.latency.Microseconds()) / 1000}
		if s.ok {
			ok = append(ok, pt)
		} else {
			bad = append(bad, pt)
		}
		maxY = max(maxY, pt.Y)
	}
	add := func(xys plotter.XYs, c color.Color, name string) error {
		if len(xys) == 0 {
			return nil
		}
		sc, err := plotter.NewScatter(xys)
		if err != nil {
			return err
		}
		sc.GlyphStyle.Color = c
		sc.GlyphStyle.Radius = vg.Points(1)
		sc.GlyphStyle.Shape = draw.CircleGlyph{}
		p.Add(sc)
		p.Legend.Add(name, sc)
		return nil
	}
	if err := add(ok, color.RGBA{B: 200, A: 255}, "request"); err != nil {
		return err
	}
	if err := add(bad, color.RGBA{R: 220, A: 255}, "failed request"); err != nil {
		return err
	}
	for i, h := range r.handoffs {
		x := h.start.Seconds()
		line, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: maxY}})
		if err != nil {
			return err
		}
		line.Color = color.RGBA{G: 160, A: 255}
		name := "handoff (committed)"
		if !h.res.committed {
			line.Color = color.RGBA{R: 220, G: 60, A: 255}
			name = "handoff (rolled back)"
		}
		line.Dashes = []vg.Length{vg.Points(3), vg.Points(2)}
		p.Add(line)
		if i == 0 || !h.res.committed {
			p.Legend.Add(name, line)
		}
	}
	p.Legend.Top = true
	return p.Save(10*vg.Inch, 5*vg.Inch, path)
}
