package main

import (
	"bytes"
	"context"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDemoShort runs the whole demo briefly: real builds, the real
// supervisor binary, real handoffs under load, one rollback.
func TestDemoShort(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and runs the demo")
	}
	plot := filepath.Join(t.TempDir(), "latency.svg")
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err := run(ctx, []string{"-duration", "8s", "-handoffs", "3", "-rate", "150", "-plot", plot}, &out, &errb)
	t.Log(out.String())
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, errb.String())
	}
	for _, want := range []string{"committed 3, rolled back 1", "failed 0", "lost 0", "PASS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
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
	for _, args := range [][]string{{"-duration", "1ms"}, {"-handoffs", "0"}, {"-rate", "0"}, {"-workers", "1"}, {"extra"}} {
		if _, err := parseFlags(args, &bytes.Buffer{}); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
