package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemoShort runs the whole demo briefly: real builds, the real
// supervisor binary, real handoffs under load, one rollback. It checks the
// final report, not the progress lines, and the plot.
func TestDemoShort(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and runs the demo")
	}
	plot := filepath.Join(t.TempDir(), "latency.svg")
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err := run(ctx, []string{"-duration", "6s", "-handoffs", "3", "-rate", "150", "-plot", plot}, &out, &errb)
	t.Log(out.String())
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, errb.String())
	}
	report := out.String()
	positive := func(re string) {
		t.Helper()
		m := regexp.MustCompile(`(?m)` + re).FindStringSubmatch(report)
		if m == nil {
			t.Errorf("report has no line matching %s", re)
			return
		}
		if n, _ := strconv.Atoi(m[1]); n <= 0 {
			t.Errorf("report line %q: want a count above 0", m[0])
		}
	}
	positive(`^  handoffs +committed (3), rolled back 1 \(planned 3 and 1\)$`)
	positive(`^  requests +ok (\d+), failed 0$`)
	positive(`^  during handoffs +(\d+) requests in flight`)
	positive(`^  acknowledged writes +checked (\d+), lost 0 `)
	positive(`^  in the data directory +checked (\d+), lost 0 `)
	positive(`^  wall time +\S+ \(build (\d)`)
	if !regexp.MustCompile(`(?m)^PASS: `).MatchString(report) {
		t.Error("report has no PASS verdict")
	}
	// Every handoff row shows requests in flight during it (the probe).
	// Every commit passes the keep-alive workers' connections.
	rows := regexp.MustCompile(`(?m)^  (\d+) +(v1|v2|broken) +(committed|rolled back) +\S+ ms +(\S+ ms|-) +(\S+ ms|-) +(\d+|-) +(\d+) `).FindAllStringSubmatch(report, -1)
	if len(rows) != 4 {
		t.Fatalf("report has %d handoff rows, want 4", len(rows))
	}
	for _, row := range rows {
		if n, _ := strconv.Atoi(row[7]); n == 0 {
			t.Errorf("handoff row %q: no request in flight during it", row[0])
		}
		if n, _ := strconv.Atoi(row[6]); row[3] == "committed" && n == 0 {
			t.Errorf("handoff row %q: no keep-alive connection passed", row[0])
		}
		if rolled := row[3] == "rolled back"; rolled != (row[2] == "broken") || (rolled && row[4] != "-") {
			t.Errorf("handoff row %q: wrong outcome or accept gap", row[0])
		}
	}

	b, err := os.ReadFile(plot)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		XMLName xml.Name
	}
	if err := xml.Unmarshal(b, &doc); err != nil || doc.XMLName.Local != "svg" {
		t.Fatalf("plot is not an SVG document: %v (%q)", err, doc.XMLName.Local)
	}
	svg := string(b)
	for _, legend := range []string{"handoff (committed)", "handoff (rolled back)", "request"} {
		if !strings.Contains(svg, ">"+legend+"<") {
			t.Errorf("plot has no legend entry %q", legend)
		}
	}
	if n := strings.Count(svg, `class="handoff"`); n != len(rows) {
		t.Errorf("plot has %d handoff markers, want %d", n, len(rows))
	}
}

// TestReportFailsWhenNothingWasChecked: a run that checked nothing, or
// whose handoffs did not go as planned, must not pass.
func TestReportFailsWhenNothingWasChecked(t *testing.T) {
	committed := handoffRecord{n: 1, to: "v2", expectOK: true, res: triggerResult{committed: true}}
	rolled := handoffRecord{n: 2, to: "broken", res: triggerResult{reason: "the successor exited"}}
	good := func() *report {
		return &report{planned: 1, handoffs: []handoffRecord{committed, rolled}, ok: 10, checked: 5}
	}
	tests := []struct {
		name   string
		change func(*report)
		want   string // in the problems; "" for none
	}{
		{"as planned", func(*report) {}, ""},
		{"no request succeeded", func(r *report) { r.ok = 0 }, "no request succeeded"},
		{"nothing read back", func(r *report) { r.checked = 0 }, "no acknowledged write was read back"},
		{"missing rollback", func(r *report) { r.handoffs = r.handoffs[:1] }, "planned 1 and 1"},
		{"too few commits", func(r *report) { r.planned = 2 }, "planned 2 and 1"},
		{"supervisor exit", func(r *report) { r.supErr = errors.New("exit status 1") }, "exit status 1"},
		{"lost in the data directory", func(r *report) { r.dumpLost = []string{"k"} }, "in the data directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := good()
			tt.change(r)
			p := strings.Join(r.problems(), "; ")
			if (tt.want == "") != (p == "") || !strings.Contains(p, tt.want) {
				t.Errorf("problems = %q, want %q", p, tt.want)
			}
			var out bytes.Buffer
			r.print(&out)
			if pass := strings.Contains(out.String(), "\nPASS: "); pass != (tt.want == "") {
				t.Errorf("verdict PASS=%t, want %t:\n%s", pass, tt.want == "", out.String())
			}
		})
	}
}

func TestParseAnswer(t *testing.T) {
	r, err := parseAnswer("ok: id=ab12 committed=false accept_gap=1.5ms reason=the successor exited: exit status 1")
	if err != nil || r.committed || r.id != "ab12" || r.reason != "the successor exited: exit status 1" || r.fields["accept_gap"] != "1.5ms" {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := parseAnswer("err: binary not allowed"); err == nil {
		t.Fatal("err: line accepted")
	}
	if _, err := parseAnswer("ok: id=x"); err == nil {
		t.Fatal("answer without committed= accepted")
	}
}

func TestFlagsRejectBadValues(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-dir", "p.svg")
	for _, args := range [][]string{
		{"-duration", "1ms"}, {"-handoffs", "0"}, {"-rate", "0"}, {"-workers", "1"}, {"extra"},
		{"-plot", filepath.Join(t.TempDir(), "p.png")}, {"-plot", missing},
	} {
		if _, err := parseFlags(args, &bytes.Buffer{}); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	// A plot path that works is accepted and nothing is left behind.
	dir := t.TempDir()
	if _, err := parseFlags([]string{"-plot", filepath.Join(dir, "p.svg")}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("checking the plot path left %v", left)
	}
}

// TestPlot: the plot is a well-formed SVG document with a marker per
// handoff and the legend; other formats are refused.
func TestPlot(t *testing.T) {
	r := &report{
		samples: []sample{
			{start: time.Second, latency: 2 * time.Millisecond, ok: true},
			{start: 3 * time.Second, latency: 40 * time.Millisecond, err: "refused <&>"},
		},
		handoffs: []handoffRecord{
			{n: 1, to: "v2", start: 2 * time.Second, res: triggerResult{committed: true}},
			{n: 2, to: "broken", start: 4 * time.Second},
		},
	}
	path := filepath.Join(t.TempDir(), "p.svg")
	if err := writePlot(path, r); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(b))
	for {
		if _, err := dec.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("plot is not well-formed XML: %v", err)
		}
	}
	svg := string(b)
	if n := strings.Count(svg, `class="handoff"`); n != 2 {
		t.Errorf("%d handoff markers, want 2", n)
	}
	for _, want := range []string{">handoff (committed)<", ">handoff (rolled back)<", ">failed request<", "<circle"} {
		if !strings.Contains(svg, want) {
			t.Errorf("plot lacks %q", want)
		}
	}
	if err := writePlot(filepath.Join(t.TempDir(), "p.png"), r); err == nil {
		t.Error("a .png plot was accepted")
	}
}
