package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestKVDShort runs the kvd mode with two tiny sizes and two handoffs and
// restarts each: it builds examples/kvd, starts real processes and checks
// the report's shape, that every handoff committed with no failed request,
// that no acknowledged write was lost in either mode, and that the plots
// were written. It asserts nothing about time.
func TestKVDShort(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kvd, starts processes and runs load")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	plots := t.TempDir()
	args := []string{"-kvd", "-sizes", "100,1k", "-handoffs", "2", "-every", "100ms", "-json", "-plot", plots}
	// kvd from the last commit, if there is one: others' edits in
	// progress in the working tree must not break this test.
	if exec.Command("git", "rev-parse", "--verify", "HEAD").Run() == nil {
		args = append(args, "-kvd-rev", "HEAD")
	}
	var out, errb bytes.Buffer
	err := run(ctx, args, &out, &errb)
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, errb.String())
	}
	var res kvdResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("bench output is not JSON: %v\n%s", err, out.String())
	}
	t.Logf("%s", out.String())
	if got := len(res.Sizes); got != 2 || res.Sizes[0].Keys != 100 || res.Sizes[1].Keys != 1000 {
		t.Fatalf("sizes: %+v, want 100 and 1000 keys", res.Sizes)
	}
	for _, s := range res.Sizes {
		h, r := s.Handoff, s.Restart
		if h.Done != 2 || h.Attempts != 2 {
			t.Errorf("%d keys: %d of %d handoffs committed, want 2: %v", s.Keys, h.Done, h.Attempts, h.AbortReasons)
		}
		if r.Done != 2 {
			t.Errorf("%d keys: %d restarts, want 2", s.Keys, r.Done)
		}
		// One planned abort of each kind, each rolled back with the
		// incumbent serving; only the one after Begin had drained it.
		if len(h.Aborts) != 2 || !h.Aborts[0].RolledBack || !h.Aborts[1].RolledBack ||
			h.Aborts[0].AcceptGap != 0 || h.Aborts[1].AcceptGap <= 0 {
			t.Errorf("%d keys: planned aborts %+v, want two rollbacks (warm-up: no accept gap; after begin: one)", s.Keys, h.Aborts)
		}
		for name, d := range map[string]*dist{
			"accept gap": h.AcceptGap, "drain": h.Drain, "seal": h.Seal, "begin to ready": h.BeginToReady,
			"warm-up": h.WarmUp, "pause": &h.Pause, "pause in gap": h.GapPause, "restart": r.StopToHealthy, "restart pause": &r.Pause,
		} {
			if d == nil || d.N != 2 {
				t.Errorf("%d keys: %s: %+v, want 2 samples", s.Keys, name, d)
			}
		}
		if h.AcceptGap != nil && h.AcceptGap.Median <= 0 {
			t.Errorf("%d keys: accept gap %v", s.Keys, h.AcceptGap.Median)
		}
		if h.Probes.OK == 0 || h.Acked == 0 || r.Probes.OK == 0 || r.Acked == 0 {
			t.Errorf("%d keys: no load: handoff %+v, %d acked; restart %+v, %d acked", s.Keys, h.Probes, h.Acked, r.Probes, r.Acked)
		}
		// No connection of the handoff mode may be refused, reset or time
		// out, and no write fail. A probe may get a 503 from kvd's own
		// health check, which races the store's writer (see README), at
		// any time: that is logged, not failed.
		for _, k := range []string{failRefused, failReset, failTimeout, failOther} {
			if h.Probes.Failures[k] != 0 {
				t.Errorf("%d keys: handoff: %d probes %s: %q", s.Keys, h.Probes.Failures[k], k, h.Probes.Examples)
			}
		}
		if h.Writes.Failed != 0 {
			t.Errorf("%d keys: handoff: %d failed writes: %q", s.Keys, h.Writes.Failed, h.Writes.Examples)
		}
		if n := h.Probes.Failures[failBad]; n != 0 {
			t.Logf("%d keys: handoff: %d probes answered other than 200: %q", s.Keys, n, h.Probes.Examples)
		}
		for mode, m := range map[string]kvdModeResult{"handoff": h, "restart": r} {
			if m.lost() != 0 || m.Disk.PopulatedBad != 0 {
				t.Errorf("%d keys: %s: lost live %q, on disk %q, %d populated keys bad", s.Keys, mode, m.LostLive, m.Disk.Lost, m.Disk.PopulatedBad)
			}
			if m.Disk.Keys < s.Keys+m.Acked {
				t.Errorf("%d keys: %s: %d keys on disk, want at least %d", s.Keys, mode, m.Disk.Keys, s.Keys+m.Acked)
			}
		}
	}
	if res.Sizes[0].GapVsSmallest != 1 || res.Sizes[1].RestartVsGap <= 0 {
		t.Errorf("ratios: %+v", res.Sizes)
	}
	svg, err := os.ReadFile(filepath.Join(plots, plotName+".svg"))
	if err != nil || !bytes.HasPrefix(svg, []byte("<svg ")) || !bytes.HasSuffix(svg, []byte("</svg>\n")) {
		t.Errorf("SVG plot: %v, %.40q", err, svg)
	}
	f, err := os.Open(filepath.Join(plots, plotName+".png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("PNG plot: %v", err)
	}
	if b := img.Bounds(); b.Dx() != figW || b.Dy() != figH {
		t.Errorf("PNG plot is %v, want %dx%d", b, figW, figH)
	}
}

func TestKVDFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-kvd", "-rate", "10"}, {"-kvd", "-clients", "2"}, {"-kvd", "-idle", "1s"},
		{"-sizes", "1k"}, {"-plot", "x"}, {"-write-rate", "5"},
		{"-kvd", "-sizes", "0"}, {"-kvd", "-sizes", "20M"}, {"-kvd", "-sizes", "1k,x"}, {"-kvd", "-sizes", ""},
		{"-kvd", "-value-size", "0"}, {"-kvd", "-write-rate", "0"}, {"-kvd", "-probe-every", "1us"},
	} {
		if _, err := parseFlags(args, &bytes.Buffer{}); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	o, err := parseFlags([]string{"-kvd"}, &bytes.Buffer{})
	if err != nil || o.handoffs != kvdDefaultHandoffs || o.every != kvdDefaultEvery || !slices.Equal(o.sizes, []int{1000, 10000, 100000, 1000000}) {
		t.Errorf("kvd defaults: %+v, %v", o, err)
	}
	o, err = parseFlags([]string{"-kvd", "-sizes", "1M,100,1k,100", "-handoffs", "3"}, &bytes.Buffer{})
	if err != nil || o.handoffs != 3 || !slices.Equal(o.sizes, []int{100, 1000, 1000000}) {
		t.Errorf("sorted sizes without repeats: %+v, %v", o, err)
	}
}

func TestPauses(t *testing.T) {
	const ms = time.Millisecond
	base := time.Unix(1000, 0)
	at := func(ms ...int) []time.Time {
		var ts []time.Time
		for _, m := range ms {
			ts = append(ts, base.Add(time.Duration(m)*time.Millisecond))
		}
		return ts
	}
	w := func(from, to int) [2]time.Time {
		return [2]time.Time{base.Add(time.Duration(from) * time.Millisecond), base.Add(time.Duration(to) * time.Millisecond)}
	}
	okAt := at(0, 1, 2, 3, 10, 11, 12, 50, 51, 52)
	for _, tc := range []struct {
		name string
		win  [2]time.Time
		want pause
	}{
		{"pause inside", w(4, 9), pause{7 * ms, -1 * ms}}, // 3 → 10
		{"pause outlasts the window", w(4, 5), pause{7 * ms, -1 * ms}},
		{"two pauses, the longest", w(2, 20), pause{38 * ms, 10 * ms}}, // 12 → 50
		{"nothing after the window", w(51, 80), pause{28 * ms, 1 * ms}},
		{"nothing before", w(-5, 0), pause{5 * ms, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := pauses(okAt, [][2]time.Time{tc.win}); len(got) != 1 || got[0] != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestReadDump(t *testing.T) {
	const size = 16
	data := map[string][]byte{"w1": []byte("one"), "w2": []byte("other")}
	for i := range 5 {
		data[popKey(i)] = popValue(i, size)
	}
	data[popKey(3)] = []byte("wrong")
	delete(data, popKey(4))
	b, err := json.Marshal(struct {
		Revision uint64            `json:"revision"`
		Data     map[string][]byte `json:"data"`
	}{42, data})
	if err != nil {
		t.Fatal(err)
	}
	dc, err := readDump(bytes.NewReader(b), 5, size, map[string]string{"w1": "one", "w2": "two", "w3": "three"})
	if err != nil {
		t.Fatal(err)
	}
	if dc.Revision != 42 || dc.Keys != 6 || dc.PopulatedBad != 2 || !slices.Equal(dc.Lost, []string{"w2", "w3"}) {
		t.Errorf("%+v", dc)
	}
	if _, err := readDump(strings.NewReader(`{"data": {"pop-00000000": "%%"}}`), 1, size, nil); err == nil {
		t.Error("a value that is not base64 passed")
	}
	if _, err := readDump(strings.NewReader(`{"data": {`), 1, size, nil); err == nil {
		t.Error("a truncated dump passed")
	}
}

func TestPlotWithoutSamples(t *testing.T) {
	// Sizes whose modes have no samples still draw (no points).
	r := &kvdResult{Date: "2026-12-02T00:00:00Z", Sizes: []sizeResult{{Keys: 10}}}
	var svg, pngb bytes.Buffer
	if err := renderSVG(&svg, r); err != nil {
		t.Fatal(err)
	}
	if err := renderPNG(&pngb, r); err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(&pngb); err != nil {
		t.Fatal(err)
	}
}
