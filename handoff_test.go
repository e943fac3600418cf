package handoff

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestHandoffCommitsAndKeepsWrites(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, SupervisorConfig{})
	l := startLoad(t, c.addr)
	before := c.servingPID()
	fdsBefore := countFDs(t)
	const n = 20
	for i := range n {
		out := c.handoff()
		if !out.Committed {
			t.Fatalf("handoff %d: not committed: %s", i, out.AbortReason)
		}
		if out.Child == nil || out.BuildID != "v"+itoa(c.build) {
			t.Fatalf("handoff %d: child %v build %q, want build v%d", i, out.Child, out.BuildID, c.build)
		}
		if pid := c.servingPID(); pid != out.Child.Pid {
			t.Fatalf("handoff %d: pid %d serves, want the successor %d", i, pid, out.Child.Pid)
		}
		if out.Phases.AcceptGap <= 0 || out.Phases.LibraryOverhead > out.Phases.AcceptGap {
			t.Fatalf("handoff %d: phases %+v", i, out.Phases)
		}
	}
	if c.servingPID() == before {
		t.Fatal("the first daemon still serves")
	}
	c.verify(l)
	// Old incumbents exit by themselves after the commit; the supervisor
	// reaps them. Its own descriptors are back where they were.
	waitFor(t, "fd count back to its value before the handoffs", func() bool { return countFDs(t) <= fdsBefore })
	st := c.sup.Status()
	if st.Handoffs != n || st.Phase != PhaseIdle || st.IncumbentBuildID != "v"+itoa(c.build) {
		t.Fatalf("status %+v", st)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// waitFor polls cond with a bounded wait (for effects with no message to
// wait on, such as the kernel closing a reaped child's descriptors).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestHandoffAbortsRollBack(t *testing.T) {
	tests := []struct {
		name       string
		coldEnv    []string // knobs of the incumbent
		env        []string // knobs of the successor
		cfg        SupervisorConfig
		wantReason string
		wantErr    error
	}{
		{"successor exits before handshake", nil, []string{"TD_FAIL_AT=before-hello"}, SupervisorConfig{}, "successor", ErrSuccessorFailed},
		{"successor exits after handshake", nil, []string{"TD_FAIL_AT=after-hello"}, SupervisorConfig{}, "successor", ErrSuccessorFailed},
		{"successor exits after begin", nil, []string{"TD_FAIL_AT=after-begin"}, SupervisorConfig{}, "successor", ErrSuccessorFailed},
		{"successor hangs after begin", nil, []string{"TD_HANG_AT=after-begin"}, SupervisorConfig{Liveness: time.Second}, "liveness", ErrTimeout},
		{"successor hangs before begin", nil, []string{"TD_HANG_AT=after-hello", "TD_SLOW_DRAIN=1500ms"}, SupervisorConfig{Liveness: time.Second}, "", ErrAborted},
		{"ready unhealthy", nil, []string{"TD_UNHEALTHY=1"}, SupervisorConfig{}, "unhealthy", ErrReadyRejected},
		{"ready with stale revisions", nil, []string{"TD_STALE=1"}, SupervisorConfig{}, "stale", ErrReadyRejected},
		{"seal fails", []string{"TD_SEAL_FAIL=1"}, nil, SupervisorConfig{}, "seal failed", ErrSealFailed},
		{"drain fails", []string{"TD_DRAIN_FAIL=1"}, nil, SupervisorConfig{}, "drain failed", ErrDrainFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			c := newCluster(t, tc.cfg, tc.coldEnv...)
			l := startLoad(t, c.addr)
			if _, _, err := request(c.addr, "w"); err != nil {
				t.Fatal(err)
			}
			before := c.servingPID()
			out := c.handoff(tc.env...)
			if out.Committed {
				t.Fatalf("committed, want a rollback")
			}
			if !strings.Contains(out.AbortReason, tc.wantReason) {
				t.Fatalf("abort reason %q does not mention %q", out.AbortReason, tc.wantReason)
			}
			if !errors.Is(out.Err, ErrAborted) || !errors.Is(out.Err, tc.wantErr) {
				t.Fatalf("outcome error %v does not match ErrAborted and %v", out.Err, tc.wantErr)
			}
			if pid := c.servingPID(); pid != before {
				t.Fatalf("pid %d serves after the rollback, want the incumbent %d", pid, before)
			}
			if st := c.sup.Status(); st.SuccessorPID != 0 || st.Phase != PhaseIdle {
				t.Fatalf("status after rollback: %+v", st)
			}
			// The rolled-back incumbent can still hand off.
			if tc.coldEnv == nil {
				if out := c.handoff(); !out.Committed {
					t.Fatalf("handoff after rollback: %s", out.AbortReason)
				}
			}
			c.verify(l)
		})
	}
}

func TestDrainTimesOut(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, SupervisorConfig{}, "TD_SLOW_DRAIN=3s")
	l := startLoad(t, c.addr)
	before := c.servingPID()
	spec := c.spec()
	spec.DrainGrace = time.Second
	out, err := c.sup.PerformHandoff(context.Background(), spec)
	if err != nil || out.Committed {
		t.Fatalf("outcome %+v, err %v; want a rollback", out, err)
	}
	if !strings.Contains(out.AbortReason, "did not send") {
		t.Fatalf("abort reason %q", out.AbortReason)
	}
	if pid := c.servingPID(); pid != before {
		t.Fatalf("pid %d serves, want %d", pid, before)
	}
	c.verify(l)
}

// Drain and seal each take longer than the liveness timeout; heartbeats
// keep the handoff alive and it commits.
func TestLongDrainAndSealCommitWithHeartbeats(t *testing.T) {
	checkLeaks(t)
	var mu sync.Mutex
	beats := 0
	cfg := SupervisorConfig{Liveness: 1500 * time.Millisecond, OnEvent: func(e Event) {
		if e.Kind == EventHeartbeat {
			mu.Lock()
			beats++
			mu.Unlock()
		}
	}}
	c := newCluster(t, cfg, "TD_SLOW_DRAIN=3s", "TD_SLOW_SEAL=3s")
	// Heartbeats come every DefaultHeartbeatInterval (2s); with a 1.5s
	// liveness they would be too rare, so this checks the daemon's beat
	// interval against a liveness just above it.
	c.sup.cfg.Liveness = DefaultHeartbeatInterval + 500*time.Millisecond
	l := startLoad(t, c.addr)
	out := c.handoff("TD_SLOW_OPEN=3s")
	if !out.Committed {
		t.Fatalf("not committed: %s", out.AbortReason)
	}
	if out.Phases.Drain < 3*time.Second || out.Phases.Seal < 3*time.Second || out.Phases.BeginToReady < 3*time.Second {
		t.Fatalf("phases shorter than the daemon's work: %+v", out.Phases)
	}
	mu.Lock()
	if beats < 3 {
		t.Errorf("saw %d heartbeats, want at least 3", beats)
	}
	mu.Unlock()
	c.verify(l)
}

func TestConcurrentHandoffIsRefused(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, SupervisorConfig{}, "TD_SLOW_DRAIN=2s")
	l := startLoad(t, c.addr)
	started := make(chan struct{})
	c.sup.cfg.OnEvent = func(e Event) {
		if e.Kind == EventPhase && e.Phase == PhaseDraining {
			close(started)
		}
	}
	done := make(chan HandoffOutcome)
	spec := c.spec()
	go func() {
		out, _ := c.sup.PerformHandoff(context.Background(), spec)
		done <- out
	}()
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("first handoff did not start draining")
	}
	_, err := c.sup.PerformHandoff(context.Background(), c.spec())
	if !errors.Is(err, ErrHandoffInProgress) {
		t.Fatalf("second PerformHandoff: %v, want ErrHandoffInProgress", err)
	}
	if out := <-done; !out.Committed {
		t.Fatalf("first handoff: %s", out.AbortReason)
	}
	c.sup.cfg.OnEvent = nil
	c.verify(l)
}
