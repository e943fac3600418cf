package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/supervisor"
)

func TestStatusReport(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	st := supervisor.Status{
		Phase: supervisor.PhaseIdle, IncumbentPID: 42, IncumbentBinary: "/usr/bin/d", IncumbentBuildID: "v2",
		IncumbentSince: now.Add(-90 * time.Second), Listeners: []string{"http", "dns"}, Handoffs: 2,
		LastOutcomes: []supervisor.Outcome{
			{ID: "a1", Committed: true, PID: 42, BuildID: "v2", Started: now.Add(-time.Minute),
				Phases: supervisor.PhaseTimings{Total: 1500 * time.Millisecond, Drain: time.Second, AcceptGap: 1200 * time.Microsecond}},
			{ID: "b2", AbortReason: "the successor exited", BuildID: "v2", Started: now.Add(-time.Second)},
		},
	}
	r := buildStatus(st, loopStatus{pid: 7, started: now.Add(-time.Hour), knownGood: "/usr/bin/d"}, now)
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back statusReport
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if back.Incumbent == nil || back.Incumbent.PID != 42 || back.Incumbent.BuildID != "v2" || back.Incumbent.UptimeSecs != 90 {
		t.Errorf("incumbent %+v", back.Incumbent)
	}
	if back.Supervisor.PID != 7 || back.Supervisor.UptimeSecs != 3600 || len(back.LastOutcomes) != 2 {
		t.Errorf("status %+v", back)
	}
	if o := back.LastOutcomes[0]; !o.Committed || o.TotalMS != 1500 || o.DrainMS != 1000 || o.AcceptGapMS != 1.2 {
		t.Errorf("outcome %+v", o)
	}

	var buf bytes.Buffer
	if err := writeStatus(&buf, back); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"pid 7, up 1h0m0s", "phase:", "idle", "pid 42, build v2, up 1m30s, /usr/bin/d", "http, dns", "2 since start", "a1", "committed", "b2", "rolled_back", "the successor exited"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}

func TestStatusReportNoDaemon(t *testing.T) {
	now := time.Now()
	r := buildStatus(supervisor.Status{Phase: supervisor.PhaseIdle}, loopStatus{started: now, restart: &restartStatus{At: now, Reason: "daemon pid 3 exited"}, reexec: true}, now)
	if r.Incumbent != nil || r.Listeners == nil || r.LastOutcomes == nil || !r.ReexecPending {
		t.Fatalf("report %+v", r)
	}
	var buf bytes.Buffer
	writeStatus(&buf, r)
	if !strings.Contains(strings.Join(strings.Fields(buf.String()), " "), "incumbent: none") || !strings.Contains(buf.String(), "daemon pid 3 exited") ||
		!strings.Contains(strings.Join(strings.Fields(buf.String()), " "), "re-exec: pending") {
		t.Errorf("output:\n%s", buf.String())
	}
}
