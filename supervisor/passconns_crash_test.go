//go:build handoff_crashpoints

package supervisor

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Crash points in the phases that pass established connections, with the
// ownership invariant checked: at every instant each passed connection is
// owned by exactly one process that will serve it, a crash of one process
// loses no connection it did not own, and the connections the supervisor
// holds go to whichever daemon serves next. After each crash every
// connection of the pool either answers on its own TCP connection (served
// by the process that owns it now, which alone holds its descriptor, once)
// or, if the process that died owned it, ends for its client (no process
// keeps a descriptor of it). No daemon holds a descriptor it should not.

// The incumbent dies right after it sent its connections (after its seal):
// the handoff goes on without it and the successor gets every one.
func TestConnsCrashIncumbentAfterConns(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, Config{}, "HANDOFF_CRASH_AT=incumbent-after-conns")
	inc := c.sup.Status().IncumbentPID
	p, base := poolFor(t, c, inc)
	sup := supFDs(fdLinks())
	out := c.handoff("HANDOFF_CRASH_AT=")
	if !out.Committed || out.PassedConns != p.len() {
		t.Fatalf("committed=%v (%s), %d connections passed; want a commit passing %d", out.Committed, out.AbortReason, out.PassedConns, p.len())
	}
	waitFor(t, "the incumbent to be gone", func() bool { return isZombie(inc) })
	p.waitOwned(t, out.PID, base, os.Getpid())
	if err := p.check(out.PID); err != nil {
		t.Fatal(err)
	}
	sup.wait(t)
	closeAndSettle(t, p, out.PID, base)
	c.verify(nil)
}

// The incumbent dies right after it sent its connections, then the
// handoff aborts (the successor's Ready is unhealthy): nobody serves them
// but the supervisor, which holds them. The cold start of the known-good
// binary gets them over HANDOFF_CONNS_FD and serves every one; a later
// handoff passes them on.
func TestConnsCrashIncumbentAfterConnsThenAbort(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, Config{}, "HANDOFF_CRASH_AT=incumbent-after-conns")
	inc := c.sup.Status().IncumbentPID
	p, base := poolFor(t, c, inc)
	sup := supFDs(fdLinks())
	out := c.handoff("HANDOFF_CRASH_AT=", "TD_UNHEALTHY=1")
	// The abort is for the unhealthy Ready or, if the supervisor saw
	// the incumbent's exit before its SealComplete, for the incumbent:
	// either way its connections are in the supervisor's hands.
	if out.Committed || !errors.Is(out.Err, ErrReadyRejected) && !errors.Is(out.Err, ErrIncumbentFailed) {
		t.Fatalf("committed=%v (%s, %v), want an abort", out.Committed, out.AbortReason, out.Err)
	}
	select {
	case ex := <-c.sup.IncumbentExits():
		if ex.PID != inc {
			t.Fatalf("exit of pid %d reported, want the incumbent %d", ex.PID, inc)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no IncumbentExits notification")
	}
	// The supervisor holds them now, once each; no daemon does.
	if n := c.sup.heldCount(); n != p.len() {
		t.Fatalf("the supervisor holds %d connections, want %d", n, p.len())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cold, err := c.sup.ColdStart(ctx, c.spec())
	if err != nil {
		t.Fatal(err)
	}
	if _, n := daemonEvents(t, c.dir, "adopted", cold); n != p.len() {
		t.Fatalf("the cold start (pid %d) adopted %d connections, want %d", cold, n, p.len())
	}
	p.waitOwned(t, cold, base, os.Getpid(), inc)
	if err := p.check(cold); err != nil {
		t.Fatalf("after the cold start: %v", err)
	}
	sup.wait(t)
	waitArmed(t, c.dir, cold, poolHalf)
	out = c.handoff()
	if !out.Committed || out.PassedConns != p.len() {
		t.Fatalf("handoff after the cold start: committed=%v (%s), %d passed, want %d", out.Committed, out.AbortReason, out.PassedConns, p.len())
	}
	p.waitOwned(t, out.PID, base, os.Getpid(), cold)
	if err := p.check(out.PID); err != nil {
		t.Fatal(err)
	}
	closeAndSettle(t, p, out.PID, base)
	c.verify(nil)
}

// The handoff aborts first (the successor dies while the incumbent seals),
// and the incumbent dies right after it sent its connections, before it
// could resume and serve them: the supervisor held copies (the frames
// came while it waited for the incumbent to resume), so the cold start of
// the known-good binary gets every one.
func TestConnsCrashIncumbentAfterConnsWhileResuming(t *testing.T) {
	checkLeaks(t)
	var sup atomic.Pointer[Supervisor]
	cfg := Config{OnEvent: func(e Event) {
		if s := sup.Load(); s != nil && e.Kind == EventPhase && e.Phase == PhaseSealing {
			if pid := s.Status().SuccessorPID; pid > 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}}
	c := newCluster(t, cfg, "HANDOFF_CRASH_AT=incumbent-after-conns", "TD_SLOW_SEAL=2s")
	sup.Store(c.sup)
	inc := c.sup.Status().IncumbentPID
	p, base := poolFor(t, c, inc)
	fds := supFDs(fdLinks())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := c.sup.PerformHandoff(ctx, c.spec("HANDOFF_CRASH_AT="))
	sup.Store(nil)
	if out.Committed || !errors.Is(out.Err, ErrSuccessorFailed) {
		t.Fatalf("committed=%v (%s, %v), want an abort for the killed successor", out.Committed, out.AbortReason, out.Err)
	}
	t.Logf("abort: %s; resume: %v", out.AbortReason, err)
	select {
	case ex := <-c.sup.IncumbentExits():
		if ex.PID != inc {
			t.Fatalf("exit of pid %d reported, want the incumbent %d", ex.PID, inc)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no IncumbentExits notification")
	}
	if n := c.sup.heldCount(); n != p.len() {
		t.Fatalf("the supervisor holds %d connections, want %d", n, p.len())
	}
	cold, err := c.sup.ColdStart(ctx, c.spec())
	if err != nil {
		t.Fatal(err)
	}
	p.waitOwned(t, cold, base, os.Getpid(), inc)
	if err := p.check(cold); err != nil {
		t.Fatalf("after the cold start: %v", err)
	}
	fds.wait(t)
	closeAndSettle(t, p, cold, base)
	c.verify(nil)
}

// The successor dies right after it received the connections, after its
// commit: it owned them, and they are lost with it, as every connection
// it served. Nobody else may keep them half alive: the old incumbent
// closed its copies at its commit, the supervisor its own once sent, so
// each client sees its connection end. The known-good binary, cold
// started, gets none and serves new connections.
func TestConnsCrashSuccessorAfterConns(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, Config{})
	inc := c.sup.Status().IncumbentPID
	p, _ := poolFor(t, c, inc)
	sup := supFDs(fdLinks())
	out := c.handoff("HANDOFF_CRASH_AT=successor-after-conns")
	if !out.Committed || out.PassedConns != p.len() {
		t.Fatalf("committed=%v (%s), %d passed; want a commit passing %d", out.Committed, out.AbortReason, out.PassedConns, p.len())
	}
	select {
	case ex := <-c.sup.IncumbentExits():
		if ex.PID != out.PID || ex.State == nil || ex.State.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("exit %+v reported, want the successor %d killed", ex, out.PID)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no IncumbentExits notification for the successor")
	}
	waitFor(t, "the old incumbent to exit", func() bool { return isZombie(inc) })
	for _, cc := range p.conns {
		cc.inFlight = false
		cc.c.SetReadDeadline(time.Now().Add(connIO))
		if b, err := cc.r.ReadString('\n'); err == nil {
			t.Fatalf("%s connection %s: got %q, want its end", cc.kind, cc.name(), b)
		}
	}
	sup.wait(t)
	if n := c.sup.heldCount(); n != 0 {
		t.Fatalf("the supervisor holds %d connections of a successor that owned them", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cold, err := c.sup.ColdStart(ctx, c.spec())
	if err != nil {
		t.Fatal(err)
	}
	if lines, _ := daemonEvents(t, c.dir, "adopted", cold); lines != 0 {
		t.Fatalf("the cold start adopted connections: the supervisor kept some")
	}
	if ends, err := serverEnds(p.port); err != nil {
		t.Fatal(err)
	} else {
		for _, pid := range []int{os.Getpid(), cold} {
			if theirs, _ := connFDs(pid, ends); len(theirs) > 0 {
				t.Fatalf("pid %d holds descriptors of lost connections: %v", pid, theirs)
			}
		}
	}
	if pid := c.servingPID(); pid != cold {
		t.Fatalf("pid %d serves, want the cold start %d", pid, cold)
	}
	c.verify(nil)
}

// The supervisor process dies holding the connections: the incumbent still
// owns its copies. A new supervisor resumes it from the journal, the
// successor is gone, and every connection answers, served by the
// incumbent; the next handoff passes them all.
func TestConnsCrashSupervisorHoldingConns(t *testing.T) {
	checkLeaks(t)
	dir := shortDir(t)
	data := filepath.Join(dir, "data")
	must(t, os.Mkdir(data, 0o755))
	t.Cleanup(func() {
		for _, pid := range daemonsOf(data) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	sup1 := startTestSupervisor(t, dir, "start", "HANDOFF_CRASH_AT=supervisor-holding-conns")
	f := sup1.answer("ready")
	addr, inc := f[1], atoi(t, f[2])
	c := &cluster{t: t, dir: data, addr: addr}
	p, base := poolFor(t, c, inc)
	sup1.tell("handoff v2")
	err := sup1.cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the supervisor ended with %v, want SIGKILL at supervisor-holding-conns", err)
	}
	if lines, n := daemonEvents(t, data, "passed", inc); lines != 1 || n != p.len() {
		t.Fatalf("the incumbent passed %d connections in %d handoffs, want %d in 1", n, lines, p.len())
	}
	sup2 := startTestSupervisor(t, dir, "resume")
	f = sup2.answer("resumed")
	if pid := atoi(t, f[1]); pid != inc {
		t.Fatalf("resumed with %v, want the incumbent %d", f, inc)
	}
	if pids := daemonsOf(data); len(pids) != 1 || pids[0] != inc {
		t.Fatalf("daemons alive after the resume: %v, want only %d", pids, inc)
	}
	p.waitOwned(t, inc, base, sup2.cmd.Process.Pid)
	if err := p.check(inc); err != nil {
		t.Fatalf("after the resume: %v", err)
	}
	waitArmed(t, data, inc, 2*poolHalf)
	sup2.tell("handoff v2")
	f = sup2.answer("outcome")
	if f[1] != "true" {
		t.Fatalf("handoff after the resume: %v", f)
	}
	next := atoi(t, f[2])
	if _, n := daemonEvents(t, data, "adopted", next); n != p.len() {
		t.Fatalf("the successor adopted %d connections, want %d", n, p.len())
	}
	p.waitOwned(t, next, base, sup2.cmd.Process.Pid, inc)
	if err := p.check(next); err != nil {
		t.Fatalf("after the handoff that followed the resume: %v", err)
	}
	closeAndSettle(t, p, next, base)
	verifyData(t, data, nil, nil)
	sup2.tell("stop")
	if err := sup2.cmd.Wait(); err != nil {
		t.Fatalf("supervisor stop: %v", err)
	}
}

// closeAndSettle closes the pool's client ends and waits until the daemon
// serving them is back to its base descriptors: it kept none of them.
func closeAndSettle(t *testing.T, p *connPool, pid, base int) {
	t.Helper()
	p.close()
	waitFor(t, "the daemon's descriptors back to their base once the clients closed", func() bool { return daemonFDs(pid) == base })
}

// heldCount is how many connections the supervisor holds for the next
// cold start.
func (s *Supervisor) heldCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held.count()
}
