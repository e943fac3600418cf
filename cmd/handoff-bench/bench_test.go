package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"
)

// The test binary doubles as the supervisor and the daemons: the bench
// re-executes its own binary with HANDOFF_BENCH_ROLE set.
func TestMain(m *testing.M) {
	if role, ok := os.LookupEnv(envRole); ok {
		os.Exit(runRole(role))
	}
	os.Exit(m.Run())
}

// TestBenchShort runs the whole bench with tiny counts: real processes,
// real handoffs and restarts under load. It checks what must hold on any
// machine (every handoff committed, no failed request in handoff mode)
// and nothing about time.
func TestBenchShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and runs load")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	err := run(ctx, []string{"-handoffs", "5", "-rate", "200", "-clients", "4", "-every", "50ms", "-idle", "100ms", "-json"}, &out, &errb)
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, errb.String())
	}
	var res result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("bench output is not JSON: %v\n%s", err, out.String())
	}
	t.Logf("%s", out.String())
	if len(res.Modes) != 3 {
		t.Fatalf("%d modes, want 3", len(res.Modes))
	}
	for _, m := range res.Modes {
		if m.Restarts != 5 {
			t.Errorf("%s: %d restarts, want 5", m.Mode, m.Restarts)
		}
		if m.RequestsOK == 0 {
			t.Errorf("%s: no request succeeded", m.Mode)
		}
	}
	h := res.mode(modeHandoff)
	if h == nil {
		t.Fatal("no handoff mode in the result")
	}
	if h.Committed != 5 {
		t.Errorf("handoff: %d of 5 committed: %v", h.Committed, h.AbortReasons)
	}
	if h.RequestsFailed != 0 {
		t.Errorf("handoff: %d failed requests %v, e.g. %q", h.RequestsFailed, h.Failures, h.FailureExamples)
	}
	if h.Breakdown == nil || h.Breakdown.DaemonSeenGap.N != 5 {
		t.Errorf("handoff: daemon timings missing: %+v", h.Breakdown)
	}
	if res.Supervisor.Peak.HWM <= 0 {
		t.Errorf("supervisor VmHWM not measured: %+v", res.Supervisor)
	}
}

func TestFlagsRejectBadValues(t *testing.T) {
	for _, args := range [][]string{
		{"-handoffs", "0"}, {"-rate", "0"}, {"-clients", "0"}, {"-every", "1ms"}, {"-idle", "-1s"}, {"extra"},
	} {
		if _, err := parseFlags(args, &bytes.Buffer{}); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
	o, err := parseFlags(nil, &bytes.Buffer{})
	if err != nil || o.handoffs != 100 {
		t.Errorf("defaults: %+v, %v", o, err)
	}
}

func TestDist(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	d := newDist(ds)
	if d.N != 100 || d.Median != 51*time.Millisecond || d.P90 != 90*time.Millisecond || d.Max != 100*time.Millisecond {
		t.Errorf("%+v", d)
	}
	if z := newDist(nil); z != (dist{}) {
		t.Errorf("empty: %+v", z)
	}
}

func TestReadProcStats(t *testing.T) {
	st, err := readProcStats(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.RSS <= 0 || st.HWM < st.RSS || st.Switches <= 0 {
		t.Errorf("%+v", st)
	}
}
