package e2e

import (
	"testing"
	"time"
)

// Drain grace of TestIdleLongerThanDrainGraceIsPassed, and how long its
// client stays idle: before the handoff, longer than the grace; after it,
// longer than kvd's http.Server.ReadHeaderTimeout (10 s; its IdleTimeout
// is 2 min), which must not start when the successor adopts an idle
// connection.
const (
	shortGrace       = 1.0 // drain_grace_secs
	idleBeforeGrace  = 1500 * time.Millisecond
	idleAfterHandoff = 12 * time.Second
)

// TestIdleLongerThanDrainGraceIsPassed: clients idle for longer than the
// drain grace are passed to the successor, not cut, and the drain does not
// wait for them. One answers right after the handoff on the same
// connection; the other stays idle in the successor past kvd's
// ReadHeaderTimeout, sending nothing since its adoption (a request would
// end the adopted connection's first wait and hide a header deadline
// armed at the adoption), and then answers on the same connection.
func TestIdleLongerThanDrainGraceIsPassed(t *testing.T) {
	s := startSupervisor(t, supOptions{drainGrace: shortGrace})
	grace := time.Duration(shortGrace * float64(time.Second))
	conns := openIdle(t, s.addr, 2)
	early, late := conns[0], conns[1]
	// Both were opened before this wait, and stay idle through it.
	if err := early.idleFor(idleBeforeGrace); err != nil {
		t.Fatalf("before the handoff: %v", err)
	}

	o := s.mustCommit("the handoff")
	passed := s.passedConns(o.id)
	st := s.status()
	last := st.LastOutcomes[len(st.LastOutcomes)-1]
	if last.ID != o.id {
		t.Fatalf("status: last outcome is handoff %s, want %s", last.ID, o.id)
	}
	drain := time.Duration(last.DrainMS * float64(time.Millisecond))
	t.Logf("handoff %s: %d connections passed, drain %v (grace %v), accept gap %v, total %.1fms",
		o.id, passed, drain, grace, o.acceptGap, last.TotalMS)
	if passed != len(conns) {
		t.Errorf("the handoff passed %d connections, want the %d idle ones", passed, len(conns))
	}
	// An idle connection is stopped at once: the drain must not wait
	// for it until the grace runs out.
	if drain >= grace/2 {
		t.Errorf("the drain took %v with idle connections only: it waited for them (grace %v)", drain, grace)
	}
	if pid, err := early.servedBy(); err != nil || pid != o.pid {
		t.Fatalf("after the handoff: served by pid %d, want the successor %d: %v", pid, o.pid, err)
	}

	// The other one, idle since before the handoff, past the
	// successor's ReadHeaderTimeout counted from the adoption.
	if err := late.idleFor(idleAfterHandoff); err != nil {
		t.Fatalf("idle in the successor since the handoff: %v", err)
	}
	if pid, err := late.servedBy(); err != nil || pid != o.pid {
		t.Fatalf("after %v idle in the successor: served by pid %d, want %d: %v", idleAfterHandoff, pid, o.pid, err)
	}
	if pid, err := early.servedBy(); err != nil || pid != o.pid {
		t.Fatalf("the first connection at the end: served by pid %d, want %d: %v", pid, o.pid, err)
	}
	for _, k := range conns {
		k.close()
	}
	s.mustStop()
}
