package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestTenThousandIdleConnsThroughTenHandoffs sizes.
const (
	manyIdleConns    = 10000
	manyIdleHandoffs = 10
	// minIdleConns: below this the test says nothing the leak test does
	// not; it skips.
	minIdleConns = 1000
)

// TestTenThousandIdleConnsThroughTenHandoffs: 10,000 idle keep-alive
// connections, each answered once, are passed at each of 10 consecutive
// handoffs and afterwards all answer on the same TCP connection (the same
// client port), served by the last successor.
func TestTenThousandIdleConnsThroughTenHandoffs(t *testing.T) {
	needBinaries(t)
	perProcess, lim := raiseNoFile(t)
	n := manyIdleConns
	if perProcess < n {
		if perProcess < minIdleConns {
			t.Skipf("needs about %d descriptors in each of the test, the supervisor, the incumbent and the successor; RLIMIT_NOFILE is %d (hard %d), or the system's file or local port limits are lower: room for %d connections, fewer than %d",
				n+fdBudget, lim.Cur, lim.Max, perProcess, minIdleConns)
		}
		t.Logf("scaled down from %d to %d idle connections: RLIMIT_NOFILE is %d (hard %d), and each process needs about %d besides them (or the system's file or local port limits are lower)",
			n, perProcess, lim.Cur, lim.Max, fdBudget)
		n = perProcess
	}
	s := startSupervisor(t, supOptions{})
	// The same handoffs with no connection to pass, for comparison
	// (issue 11 asks that passing 10,000 add at most 20 ms to the median
	// accept gap; reported, not asserted, on shared machines).
	var bare []time.Duration
	for h := range manyIdleHandoffs {
		o := s.mustCommit(fmt.Sprintf("handoff %d without connections", h+1))
		if p := s.passedConns(o.id); p != 0 {
			t.Fatalf("handoff %s passed %d connections, none was open", o.id, p)
		}
		bare = append(bare, o.acceptGap)
	}
	t.Logf("without connections: accept gap %s", summarize(bare))
	start := time.Now()
	conns := openIdle(t, s.addr, n)
	t.Logf("%d idle connections opened (one GET each) in %v", n, time.Since(start).Round(time.Millisecond))

	var gaps, overheads []time.Duration
	var last outcome
	for h := range manyIdleHandoffs {
		o := s.mustCommit(fmt.Sprintf("handoff %d", h+1))
		passed := s.passedConns(o.id)
		st := s.status()
		rep := st.LastOutcomes[len(st.LastOutcomes)-1]
		t.Logf("handoff %d (%s): %d passed, accept gap %v, library overhead %v, drain %.1fms, seal %.1fms, begin→ready %.1fms, total %.1fms",
			h+1, o.id, passed, o.acceptGap, o.overhead, rep.DrainMS, rep.SealMS, rep.BeginToReadyMS, rep.TotalMS)
		if passed != n {
			t.Errorf("handoff %d passed %d connections, want all %d", h+1, passed, n)
		}
		gaps, overheads = append(gaps, o.acceptGap), append(overheads, o.overhead)
		last = o
	}
	t.Logf("with %d connections: accept gap %s; library overhead %s", n, summarize(gaps), summarize(overheads))
	t.Logf("passing %d connections adds %v to the median accept gap", n, (median(gaps) - median(bare)).Round(10*time.Microsecond))
	start = time.Now()
	checkSameConns(t, conns, last.pid)
	t.Logf("all %d answered on the same connection, by the last successor (pid %d), in %v", n, last.pid, time.Since(start).Round(time.Millisecond))
	for _, k := range conns {
		k.close()
	}
	s.mustStop()
}
