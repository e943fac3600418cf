package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/supervisor"
)

// serveMetrics serves m on 127.0.0.1:0 and returns the server.
func serveMetrics(t *testing.T, m *metrics) *metricsServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newMetricsServer(ln.(*net.TCPListener), m, testLogger(t))
	s.start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.close(ctx)
	})
	return s
}

// scrape fetches /metrics from addr and returns its samples by name and
// labels.
func scrape(t *testing.T, addr string) map[string]string {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		out[line[:i]] = line[i+1:]
	}
	return out
}

func wantSamples(t *testing.T, got map[string]string, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

func TestMetricsScrape(t *testing.T) {
	m := newMetrics()
	s := serveMetrics(t, m)
	wantSamples(t, scrape(t, s.ln.Addr().String()), map[string]string{
		`handoff_handoffs_total{outcome="committed"}`:   "0",
		`handoff_handoffs_total{outcome="rolled_back"}`: "0",
		`handoff_rollbacks_total`:                       "0",
		`handoff_seal_failures_total`:                   "0",
		`handoff_daemon_restarts_total`:                 "0",
		`handoff_daemon_start_failures_total`:           "0",
		`handoff_in_progress`:                           "0",
	})

	m.onEvent(supervisor.Event{Kind: supervisor.EventHandoffStarted})
	wantSamples(t, scrape(t, s.ln.Addr().String()), map[string]string{`handoff_in_progress`: "1"})

	m.onEvent(supervisor.Event{Kind: supervisor.EventHandoffFinished, Outcome: &supervisor.Outcome{
		Committed: true,
		Phases: supervisor.PhaseTimings{
			Total: 2 * time.Second, WarmUp: 700 * time.Millisecond, Drain: 500 * time.Millisecond, Seal: 100 * time.Millisecond,
			BeginToReady: 300 * time.Millisecond, AcceptGap: 2 * time.Millisecond,
		},
	}})
	got := scrape(t, s.ln.Addr().String())
	wantSamples(t, got, map[string]string{
		`handoff_handoffs_total{outcome="committed"}`:         "1",
		`handoff_handoffs_total{outcome="rolled_back"}`:       "0",
		`handoff_in_progress`:                                 "0",
		`handoff_duration_seconds_count{outcome="committed"}`: "1",
		`handoff_duration_seconds_sum{outcome="committed"}`:   "2",
		`handoff_drain_duration_seconds_sum`:                  "0.5",
		`handoff_seal_duration_seconds_sum`:                   "0.1",
		`handoff_begin_to_ready_seconds_sum`:                  "0.3",
		`handoff_warm_up_seconds_sum`:                         "0.7",
		`handoff_accept_gap_seconds_count`:                    "1",
	})

	// A rollback at the seal: no begin-to-ready observed, no accept gap.
	m.onEvent(supervisor.Event{Kind: supervisor.EventHandoffFinished, Outcome: &supervisor.Outcome{
		AbortReason: "the incumbent's seal failed: fsync: input/output error",
		Err:         fmt.Errorf("%w: %w", supervisor.ErrAborted, supervisor.ErrSealFailed),
		Phases:      supervisor.PhaseTimings{Total: time.Second, Drain: 200 * time.Millisecond, Seal: 50 * time.Millisecond},
	}})
	// A rollback elsewhere.
	m.onEvent(supervisor.Event{Kind: supervisor.EventHandoffFinished, Outcome: &supervisor.Outcome{
		AbortReason: "the successor (pid 9) exited: exit status 3",
		Err:         fmt.Errorf("%w: %w", supervisor.ErrAborted, supervisor.ErrSuccessorFailed),
		Phases:      supervisor.PhaseTimings{Total: time.Second},
	}})
	m.restarts.Inc()
	got = scrape(t, s.ln.Addr().String())
	wantSamples(t, got, map[string]string{
		`handoff_handoffs_total{outcome="committed"}`:           "1",
		`handoff_handoffs_total{outcome="rolled_back"}`:         "2",
		`handoff_rollbacks_total`:                               "2",
		`handoff_seal_failures_total`:                           "1",
		`handoff_daemon_restarts_total`:                         "1",
		`handoff_duration_seconds_count{outcome="rolled_back"}`: "2",
		`handoff_drain_duration_seconds_count`:                  "2",
		`handoff_seal_duration_seconds_count`:                   "2",
		`handoff_begin_to_ready_seconds_count`:                  "1",
		`handoff_warm_up_seconds_count`:                         "1",
		`handoff_accept_gap_seconds_count`:                      "1",
	})
	if _, ok := got["process_resident_memory_bytes"]; !ok {
		t.Error("no process metrics")
	}
}

func TestIsSealFailure(t *testing.T) {
	seal := fmt.Errorf("%w: %w", supervisor.ErrAborted, supervisor.ErrSealFailed)
	other := fmt.Errorf("%w: %w", supervisor.ErrAborted, supervisor.ErrSuccessorFailed)
	for _, tc := range []struct {
		o    supervisor.Outcome
		want bool
	}{
		{supervisor.Outcome{Err: seal, AbortReason: "the incumbent's seal failed: disk full"}, true},
		{supervisor.Outcome{Err: other, AbortReason: "the successor exited after the seal"}, false},
		{supervisor.Outcome{Committed: true}, false},
	} {
		if got := isSealFailure(tc.o); got != tc.want {
			t.Errorf("isSealFailure(%v) = %t, want %t", tc.o.Err, got, tc.want)
		}
	}
}

// TestMetricsPauseKeepsListener: pausing (as a re-exec does) keeps the
// socket open, and a request made meanwhile is answered after start.
func TestMetricsPauseKeepsListener(t *testing.T) {
	m := newMetrics()
	s := serveMetrics(t, m)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.pause(ctx)
	c, err := net.Dial("tcp", s.ln.Addr().String())
	if err != nil {
		t.Fatalf("dial while paused: %v", err)
	}
	c.Close()
	s.start()
	wantSamples(t, scrape(t, s.ln.Addr().String()), map[string]string{`handoff_rollbacks_total`: "0"})
}
