//go:build handoff_crashpoints

package handoff

import (
	"context"
	"testing"
	"time"
)

// Crash points kill a daemon at a chosen step (HANDOFF_CRASH_AT); the
// supervisor must leave a serving system behind by itself or with one cold
// start of the known-good binary, and no queued connection may be refused.
func TestIncumbentCrashPoints(t *testing.T) {
	tests := []struct {
		point      string
		wantCommit bool
	}{
		{"incumbent-before-drain", false},
		{"incumbent-after-drain", false},
		{"incumbent-before-seal", false},
		{"incumbent-after-seal", false},
		{"incumbent-on-commit", true},
	}
	for _, tc := range tests {
		t.Run(tc.point, func(t *testing.T) {
			checkLeaks(t)
			c := newCluster(t, SupervisorConfig{}, "HANDOFF_CRASH_AT="+tc.point)
			l := startLoad(t, c.addr)
			if _, _, err := request(c.addr, "w"); err != nil {
				t.Fatal(err)
			}
			out := c.handoff("HANDOFF_CRASH_AT=")
			if out.Committed != tc.wantCommit {
				t.Fatalf("committed=%v (%s), want %v", out.Committed, out.AbortReason, tc.wantCommit)
			}
			if !tc.wantCommit {
				// The incumbent died: the supervisor reports it, and a cold
				// start of the known-good binary serves the queued connections.
				select {
				case ex := <-c.sup.IncumbentExits():
					if ex.State != nil && ex.State.Success() {
						t.Fatalf("exit %v, want a kill", ex.State)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("no IncumbentExits notification")
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if _, err := c.sup.ColdStart(ctx, c.spec()); err != nil {
					t.Fatal(err)
				}
			}
			if out := c.handoff(); !out.Committed {
				t.Fatalf("handoff after recovery: %s", out.AbortReason)
			}
			c.verify(l)
		})
	}
}
