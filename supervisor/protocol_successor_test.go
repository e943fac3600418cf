package supervisor

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// A successor that breaks the protocol aborts the handoff with
// ErrProtocol and a reason in words; the incumbent keeps serving with its
// lock, and the next handoff commits. The successor speaks raw frames
// (rawSuccessor); the incumbent's drain holds until the handoff rolls back
// (TD_DRAIN_HOLD), so a bad frame sent right after HelloAck arrives while
// the supervisor waits for Drained, whatever the machine's load. The
// "ready" case is also the regression test for the supervisor reading the
// successor's connection before the negotiated version was set: run it
// with -race.
func TestSuccessorProtocolViolations(t *testing.T) {
	tests := []struct {
		mode       string
		wantReason string
	}{
		{"pid", "but the spawned child is pid"},
		{"hello-id", `hello carries handoff id "made-up"`},
		{"id", `heartbeat for handoff "not-`},
		{"commit", "unexpected commit while waiting for the incumbent"},
		{"ready", "unexpected ready while waiting for the incumbent"},
		{"warm-commit", "unexpected commit (waiting for [ready_to_begin abort])"},
	}
	for _, tc := range tests {
		t.Run(tc.mode, func(t *testing.T) {
			checkLeaks(t)
			hold := filepath.Join(t.TempDir(), "release-drain")
			c := newCluster(t, Config{OnEvent: releaseAtRollback(hold)}, "TD_DRAIN_HOLD="+hold)
			l := startLoad(t, c.addr)
			before := c.servingPID()
			out := c.handoff("TD_RAW=" + tc.mode)
			if out.Committed {
				t.Fatal("committed, want a rollback")
			}
			if !strings.Contains(out.AbortReason, "protocol violation by the successor") || !strings.Contains(out.AbortReason, tc.wantReason) {
				t.Fatalf("abort reason %q, want a protocol violation mentioning %q", out.AbortReason, tc.wantReason)
			}
			if !errors.Is(out.Err, ErrProtocol) || !errors.Is(out.Err, ErrSuccessorFailed) {
				t.Fatalf("outcome error %v, want ErrProtocol and ErrSuccessorFailed", out.Err)
			}
			if pid := c.servingPID(); pid != before {
				t.Fatalf("pid %d serves, want the incumbent %d", pid, before)
			}
			if err := holdsLockPID(c.dir, before); err != nil {
				t.Fatal(err)
			}
			if out := c.handoff(); !out.Committed {
				t.Fatalf("handoff after the violation: %s", out.AbortReason)
			}
			c.verify(l)
		})
	}
}
