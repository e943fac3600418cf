package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSoakShort runs a real soak of 5 handoffs (builds, supervisor, load,
// checks, plots) and checks the report's shape and that nothing was lost.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and runs the supervisor: skipped with -short")
	}
	plots := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := []string{"-handoffs", "5", "-every", "250ms", "-warmup", "500ms",
		"-fresh-rate", "20", "-keepalive", "4", "-keepalive-rate", "5",
		"-dir", filepath.Join(t.TempDir(), "work"), "-plot", plots, "-json", "-q"}
	// The binaries come from the last commit when there is one, so that
	// edits in progress elsewhere in the tree do not break this test.
	if exec.Command("git", "rev-parse", "--verify", "HEAD").Run() == nil {
		args = append(args, "-rev", "HEAD")
	}
	var stdout, stderr bytes.Buffer
	err := run(ctx, args, &stdout, &stderr)
	t.Logf("stderr:\n%s", stderr.String())
	var rep report
	if jerr := json.Unmarshal(stdout.Bytes(), &rep); jerr != nil {
		t.Fatalf("run: %v; report is not JSON: %v\n%s", err, jerr, stdout.String())
	}
	if err != nil {
		// A loaded machine may fail a check (a slow request, say); that is
		// for the report to say. Losing a write never is.
		t.Logf("run: %v; problems: %q", err, rep.Problems)
	}
	h := rep.Handoffs
	if h.Planned != 5 || h.Performed != 5 || h.Committed+h.RolledBack+h.Errors != 5 {
		t.Errorf("handoffs = %+v, want 5 planned and performed", h)
	}
	if h.Committed != 5 {
		t.Errorf("%d of 5 handoffs committed: %v %q", h.Committed, h.AbortReasons, h.ErrorExamples)
	}
	if h.AcceptGapMS.N != h.Committed || h.AcceptGapMS.P50 <= 0 || h.AcceptGapMS.P99 < h.AcceptGapMS.P50 {
		t.Errorf("accept gap = %+v, want one per committed handoff, 0 < p50 <= p99", h.AcceptGapMS)
	}
	w := rep.Writes
	if w.Acked == 0 || w.Live.Checked != w.Acked || w.Disk.Checked != w.Acked {
		t.Errorf("writes: %d acked, %d checked live, %d checked on disk", w.Acked, w.Live.Checked, w.Disk.Checked)
	}
	if w.Live.LostN != 0 || w.Disk.LostN != 0 || w.Disk.Error != "" {
		t.Errorf("lost writes: live %d %v, disk %d %v %s", w.Live.LostN, w.Live.Lost, w.Disk.LostN, w.Disk.Lost, w.Disk.Error)
	}
	if rep.Load.Total == 0 || len(rep.Load.Requests) != int(numOps) || rep.Load.KeepAliveClients != 4 {
		t.Errorf("load = %d requests of %d kinds, %d keep-alive clients", rep.Load.Total, len(rep.Load.Requests), rep.Load.KeepAliveClients)
	}
	if rep.RestSamples != 6 || rep.Samples < rep.RestSamples {
		t.Errorf("%d samples, %d at rest; want 6 at rest (before each handoff and after the last)", rep.Samples, rep.RestSamples)
	}
	for name, s := range map[string]series{"fds": rep.Supervisor.FDs, "rss": rep.Supervisor.RSS, "goroutines": rep.Supervisor.Goroutines} {
		if s.Start <= 0 || s.End <= 0 || s.Max < s.End || s.Max < s.Start || s.Drift != "not judged" {
			t.Errorf("supervisor %s = %+v: want positive start and end, max above both, drift not judged for 5 handoffs", name, s)
		}
	}
	if rep.KVD.AtEnd != 1 || rep.KVD.AfterStop != 0 {
		t.Errorf("kvd processes = %+v, want 1 at the end and 0 after the stop", rep.KVD)
	}
	if rep.Source.Commit == "" || rep.Date == "" || rep.Machine.CPUs == 0 || !strings.Contains(rep.Command, "-handoffs 5") {
		t.Errorf("report header = %q %q %+v %q", rep.Source.Commit, rep.Date, rep.Machine, rep.Command)
	}
	for _, name := range []string{"soak-supervisor.svg", "soak-supervisor.png", "soak-daemon.svg", "soak-daemon.png"} {
		if fi, err := os.Stat(filepath.Join(plots, name)); err != nil || fi.Size() == 0 {
			t.Errorf("plot %s: %v", name, err)
		}
	}
}

func TestParseHandoffReply(t *testing.T) {
	r, err := parseHandoffReply(`ok: id=ab12 committed=true pid=42 build_id="soak-v2" accept_gap=1.5ms library_overhead=250µs reason=""`)
	if err != nil {
		t.Fatal(err)
	}
	want := handoffReply{ID: "ab12", Committed: true, PID: 42, BuildID: "soak-v2", AcceptGap: 1500 * time.Microsecond, LibraryOverhead: 250 * time.Microsecond}
	if r != want {
		t.Errorf("got %+v, want %+v", r, want)
	}
	r, err = parseHandoffReply(`ok: id=cd committed=false pid=7 build_id="soak-v1" accept_gap=0s library_overhead=0s reason="successor exited: status 1"`)
	if err != nil || r.Committed || r.Reason != "successor exited: status 1" {
		t.Errorf("rollback: %+v, %v", r, err)
	}
	for _, bad := range []string{"err: handoff in progress", "ok: id=x committed=maybe pid=1 accept_gap=1ms library_overhead=1ms", `ok: id="x`} {
		if _, err := parseHandoffReply(bad); err == nil {
			t.Errorf("parseHandoffReply(%q) = nil error", bad)
		}
	}
}

func TestParseStat(t *testing.T) {
	st, err := parseStat(12, []byte("12 (kvd (v1) x) Z 34 12 12 0 -1 4194560"))
	if err != nil || st.comm != "kvd (v1) x" || st.state != 'Z' || st.ppid != 34 {
		t.Errorf("got %+v, %v", st, err)
	}
	if _, err := parseStat(1, []byte("1 (x")); err == nil {
		t.Error("a stat without ')' parsed")
	}
}

func TestSeriesDrift(t *testing.T) {
	const n = 100
	flat := make([]sample, n+1)
	leak := make([]sample, n+1)
	for i := range flat {
		flat[i] = sample{SupFDs: 16 + i%2} // noise of one descriptor
		leak[i] = sample{SupFDs: 16 + i/20}
	}
	val := func(s sample) float64 { return float64(s.SupFDs) }
	if s := seriesOf(flat, flat, n, fdDriftLimit, val); s.Drift != "no" {
		t.Errorf("flat with noise: %+v", s)
	}
	if s := seriesOf(leak, leak, n, fdDriftLimit, val); s.Drift != "yes" || s.SlopePer100 < 4 || s.EndMinus10 != 5 {
		t.Errorf("leak of one per 20 handoffs: %+v", s)
	}
	if s := seriesOf(leak[:11], leak[:11], 10, fdDriftLimit, val); s.Drift != "not judged" {
		t.Errorf("10 handoffs: %+v", s)
	}
}

func TestFlagsRefused(t *testing.T) {
	for _, args := range [][]string{{"-handoffs", "0"}, {"-every", "-1s"}, {"-sample", "1ms"}, {"-keepalive", "5000"}, {"extra"}, {"-nope"}} {
		var stderr bytes.Buffer
		if _, err := parseFlags(args, &stderr); err == nil {
			t.Errorf("parseFlags(%q) = nil error", args)
		}
	}
	o, err := parseFlags(nil, &bytes.Buffer{})
	if err != nil || o.handoffs != 1000 {
		t.Errorf("defaults: %+v, %v", o, err)
	}
}

func TestPlotsRender(t *testing.T) {
	base := time.Now()
	var all, rest []sample
	for i := range 30 {
		s := sample{At: base.Add(time.Duration(i) * time.Second), Handoffs: i, SupFDs: 16, SupRSS: 14 << 20, Goroutines: 11,
			DaemonFDs: 30, DaemonRSS: 10 << 20, KVD: 1}
		rest = append(rest, s)
		all = append(all, s)
		s.At, s.SupFDs, s.KVD, s.Zombies = s.At.Add(300*time.Millisecond), 22, 2, []int{99}
		all = append(all, s)
	}
	rep := &report{Date: base.UTC().Format(time.RFC3339), Source: source{Commit: "0123456789abcdef"}}
	rep.Handoffs.Performed = 29
	dir := t.TempDir()
	if err := writePlots(dir, rep, all, rest); err != nil {
		t.Fatal(err)
	}
	svg, err := os.ReadFile(filepath.Join(dir, "soak-supervisor.svg"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "supervisor RSS", "<polyline", "handoffs performed", "</svg>"} {
		if !bytes.Contains(svg, []byte(want)) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	png, err := os.ReadFile(filepath.Join(dir, "soak-daemon.png"))
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("PNG: %v, %q", err, png[:min(8, len(png))])
	}
}
