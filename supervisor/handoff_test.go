package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/proc"
	"github.com/handoff-go/handoff/internal/testutil"
	"github.com/handoff-go/handoff/internal/wire"
)

func TestHandoffCommitsAndKeepsWrites(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, Config{})
	before := c.servingPID()
	fdsBefore := countFDs(t)
	l := startLoad(t, c.addr)
	const n = 20
	builds := map[string]int{}
	for i := range n {
		out := c.handoff()
		if !out.Committed {
			t.Fatalf("handoff %d: not committed: %s", i, out.AbortReason)
		}
		if out.PID == 0 || out.BuildID != c.buildID() {
			t.Fatalf("handoff %d: pid %d build %q, want build %s", i, out.PID, out.BuildID, c.buildID())
		}
		builds[out.BuildID]++
		if pid := c.servingPID(); pid != out.PID {
			t.Fatalf("handoff %d: pid %d serves, want the successor %d", i, pid, out.PID)
		}
		if out.Phases.AcceptGap <= 0 || out.Phases.LibraryOverhead > out.Phases.AcceptGap {
			t.Fatalf("handoff %d: phases %+v", i, out.Phases)
		}
	}
	if c.servingPID() == before {
		t.Fatal("the first daemon still serves")
	}
	if builds["v1"] != n/2 || builds["v2"] != n/2 {
		t.Fatalf("build ids of the handoffs %v, want v1 and v2 alternating", builds)
	}
	// Old incumbents exit by themselves after the commit; the supervisor
	// reaps them. Its own descriptors are back where they were (the load,
	// which opens a connection per request, is stopped first).
	l.check(t)
	waitFor(t, "fd count back to its value before the handoffs", func() bool { return countFDs(t) == fdsBefore })
	c.verify(l)
	st := c.sup.Status()
	if st.Handoffs != n || st.Phase != PhaseIdle || st.IncumbentBuildID != c.buildID() {
		t.Fatalf("status %+v", st)
	}
}

// Status is called concurrently with handoffs (the reference supervisor's
// status command does); under -race this checks that what a handoff
// updates is read under the supervisor's mutex.
func TestStatusDuringHandoffs(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, Config{})
	l := startLoad(t, c.addr)
	stop := make(chan struct{})
	polled := make(chan int)
	go func() {
		n := 0
		tick := time.NewTicker(time.Millisecond) // not a busy loop: the box has 2 cores
		defer tick.Stop()
		for {
			select {
			case <-stop:
				polled <- n
				return
			case <-tick.C:
			}
			st := c.sup.Status()
			_ = st.IncumbentBuildID + st.SuccessorBuildID
			n++
		}
	}()
	for i, env := range [][]string{nil, {"TD_FAIL_AT=after-begin"}, nil, nil} {
		out := c.handoff(env...)
		if out.Committed != (env == nil) {
			t.Fatalf("handoff %d: committed=%v (%s)", i, out.Committed, out.AbortReason)
		}
	}
	close(stop)
	if n := <-polled; n == 0 {
		t.Fatal("Status was never polled")
	}
	c.verify(l)
}

var waitFor = testutil.WaitFor

func TestHandoffAbortsRollBack(t *testing.T) {
	// Liveness 3s: the daemons beat every 750ms, so a stall of up to
	// 2.25s on a busy machine cannot change the abort reason.
	short := Config{Liveness: 3 * time.Second}
	tests := []struct {
		name       string
		coldEnv    []string // knobs of the incumbent (the failures fire once)
		env        []string // knobs of the successor
		cfg        Config
		deadline   time.Duration // of the handoff, if not the default
		wantReason string
		wantErr    error
	}{
		{"successor exits before handshake", nil, []string{"TD_FAIL_AT=before-hello"}, Config{}, 0, "successor (pid", ErrSuccessorFailed},
		{"successor exits after handshake", nil, []string{"TD_FAIL_AT=after-hello"}, Config{}, 0, "successor (pid", ErrSuccessorFailed},
		{"successor exits during warm-up", nil, []string{"TD_FAIL_AT=warm-up"}, Config{}, 0, "successor (pid", ErrSuccessorFailed},
		{"successor exits after begin", nil, []string{"TD_FAIL_AT=after-begin"}, Config{}, 0, "successor (pid", ErrSuccessorFailed},
		// Silent successors: nothing arrives, the liveness timer aborts.
		{"successor hangs silently in its warm-up", nil, []string{"TD_HANG_AT=after-hello"}, short, 0, "(liveness timeout) while the supervisor waited for [ready_to_begin abort]", ErrTimeout},
		// A warm-up that heartbeats but never ends: the deadline aborts.
		{"successor warms up past the deadline", nil, []string{"TD_HANG_AT=warm-up"}, short, 5 * time.Second, "did not send [ready_to_begin abort]: the handoff deadline passed", ErrTimeout},
		{"successor hangs silently after begin", nil, []string{"TD_HANG_AT=after-begin"}, short, 0, "(liveness timeout) while the supervisor waited for [ready abort]", ErrTimeout},
		// A successor that holds the lock and heartbeats but never sends
		// Ready: the overall deadline aborts; it is killed and the
		// incumbent retakes the lock. The deadline leaves seconds for
		// everything before Ready.
		{"successor heartbeats but never sends ready", nil, []string{"TD_HANG_AT=before-ready"}, short, 10 * time.Second, "did not send [ready abort]: the handoff deadline passed", ErrTimeout},
		{"ready unhealthy", nil, []string{"TD_UNHEALTHY=1"}, Config{}, 0, "unhealthy", ErrReadyRejected},
		{"ready with stale revisions", nil, []string{"TD_STALE=1"}, Config{}, 0, "stale", ErrReadyRejected},
		{"seal fails", []string{"TD_SEAL_FAIL=1"}, nil, Config{}, 0, "seal failed: test knob", ErrSealFailed},
		{"drain fails", []string{"TD_DRAIN_FAIL=1"}, nil, Config{}, 0, "drain failed: test knob", ErrDrainFailed},
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
			spec := c.spec(tc.env...)
			if tc.deadline > 0 {
				spec.Deadline, spec.DrainGrace = tc.deadline, tc.deadline/4
			}
			out, err := c.sup.PerformHandoff(context.Background(), spec)
			if err != nil {
				t.Fatalf("PerformHandoff: %v", err)
			}
			if out.Committed {
				t.Fatalf("committed, want a rollback")
			}
			if !strings.Contains(out.AbortReason, tc.wantReason) {
				t.Fatalf("abort reason %q does not mention %q", out.AbortReason, tc.wantReason)
			}
			if !errors.Is(out.Err, ErrAborted) || !errors.Is(out.Err, tc.wantErr) {
				t.Fatalf("outcome error %v does not match ErrAborted and %v", out.Err, tc.wantErr)
			}
			// The phase that failed is timed too (metrics observe it).
			if errors.Is(out.Err, ErrDrainFailed) && out.Phases.Drain <= 0 ||
				errors.Is(out.Err, ErrSealFailed) && (out.Phases.Drain <= 0 || out.Phases.Seal <= 0) {
				t.Fatalf("phases of a failed drain or seal not timed: %+v", out.Phases)
			}
			if pid := c.servingPID(); pid != before {
				t.Fatalf("pid %d serves after the rollback, want the incumbent %d", pid, before)
			}
			// A handoff that failed before the warm-up ended never asked
			// the incumbent to drain.
			drained := slices.Contains(events(t, c.dir), fmt.Sprintf("drain %d", before))
			if early := out.Phases.Drain == 0; drained == early {
				t.Fatalf("the incumbent drained: %v, but the phases say drained: %v (%+v)", drained, !early, out.Phases)
			}
			untouched := slices.ContainsFunc(tc.env, func(e string) bool {
				return slices.Contains([]string{"TD_FAIL_AT=before-hello", "TD_FAIL_AT=after-hello", "TD_FAIL_AT=warm-up", "TD_HANG_AT=after-hello", "TD_HANG_AT=warm-up"}, e)
			})
			if (out.Phases.AcceptGap > 0) != drained {
				t.Fatalf("accept gap %v of a rollback in which the incumbent drained: %v", out.Phases.AcceptGap, drained)
			}
			if untouched && drained {
				t.Fatalf("the incumbent was asked to drain although the successor failed before its warm-up ended")
			}
			if err := holdsLockPID(c.dir, before); err != nil {
				t.Fatal(err)
			}
			if st := c.sup.Status(); st.SuccessorPID != 0 || st.Phase != PhaseIdle {
				t.Fatalf("status after rollback: %+v", st)
			}
			// The rolled-back incumbent can still hand off.
			if out := c.handoff(); !out.Committed {
				t.Fatalf("handoff after rollback: %s", out.AbortReason)
			}
			c.verify(l)
		})
	}
}

// events returns the lines of the test daemons' event log in dir.
func events(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "events"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// holdsLockPID checks in /proc/locks that pid, alone, holds dir's lock.
func holdsLockPID(dir string, pid int) error {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, wire.LockFileName), &st); err != nil {
		return err
	}
	if h := lockHolders(st.Ino); len(h) != 1 || h[0] != pid {
		return fmt.Errorf("lock holders %v, want only pid %d", h, pid)
	}
	return nil
}

// A handoff.Drainable that ignores its context and returns success after the
// grace: the supervisor has given up and rolls back, so the incumbent must
// not seal (nor release the lock) for the SealRequest queued behind. The
// drain returns only once the rollback has begun (TD_DRAIN_HOLD), so past
// the supervisor's wait of grace plus slack whatever the machine's load.
func TestDrainTimesOut(t *testing.T) {
	checkLeaks(t)
	hold := filepath.Join(t.TempDir(), "release-drain")
	c := newCluster(t, Config{OnEvent: releaseAtRollback(hold)}, "TD_DRAIN_HOLD="+hold)
	l := startLoad(t, c.addr)
	before := c.servingPID()
	spec := c.spec()
	spec.DrainGrace = time.Second
	out, err := c.sup.PerformHandoff(context.Background(), spec)
	if err != nil || out.Committed {
		t.Fatalf("outcome %+v, err %v; want a rollback", out, err)
	}
	if !strings.Contains(out.AbortReason, "did not send [drained drain_failed]: its time ran out") || !errors.Is(out.Err, ErrTimeout) {
		t.Fatalf("abort reason %q (%v)", out.AbortReason, out.Err)
	}
	if pid := c.servingPID(); pid != before {
		t.Fatalf("pid %d serves, want %d", pid, before)
	}
	if err := holdsLockPID(c.dir, before); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(c.dir, "events")); strings.Contains(string(b), "seal "+strconv.Itoa(before)) {
		t.Fatalf("the incumbent sealed after the supervisor gave up:\n%s", b)
	}
	if out := c.handoff(); !out.Committed {
		t.Fatalf("handoff after the rollback: %s", out.AbortReason)
	}
	c.verify(l)
}

// Drain, seal and the successor's start-up each take 2.5 times the
// liveness timeout; heartbeats, at the interval the liveness in HelloAck
// asks for, keep the handoff alive and it commits.
func TestLongDrainAndSealCommitWithHeartbeats(t *testing.T) {
	// Liveness 2s: beats every 500ms leave 1.5s of slack per gap.
	checkLeaks(t)
	var mu sync.Mutex
	beats := 0
	const liveness, work = 2 * time.Second, 5 * time.Second
	cfg := Config{Liveness: liveness, OnEvent: func(e Event) {
		if e.Kind == EventHeartbeat {
			mu.Lock()
			beats++
			mu.Unlock()
		}
	}}
	c := newCluster(t, cfg, "TD_SLOW_DRAIN="+work.String(), "TD_SLOW_SEAL="+work.String())
	l := startLoad(t, c.addr)
	out := c.handoff("TD_SLOW_OPEN=" + work.String())
	if !out.Committed {
		t.Fatalf("not committed: %s", out.AbortReason)
	}
	// Each phase outlasted the liveness twice over, so only heartbeats kept
	// it alive. (The supervisor times Seal from Drained's arrival; the
	// incumbent starts sealing as soon as it sent Drained, so Seal as seen
	// by the supervisor may be a little shorter than the work itself.)
	if out.Phases.Drain < 2*liveness || out.Phases.Seal < 2*liveness || out.Phases.BeginToReady < 2*liveness {
		t.Fatalf("a phase shorter than twice the liveness %v: %+v", liveness, out.Phases)
	}
	if out.Phases.DaemonWork < 3*work {
		t.Fatalf("daemons report %v of work, want at least %v: %+v", out.Phases.DaemonWork, 3*work, out.Phases)
	}
	// At liveness/4 = 500ms, 15s of work gives about 30 beats.
	mu.Lock()
	if beats < 20 {
		t.Errorf("saw %d heartbeats, want at least 20", beats)
	}
	mu.Unlock()
	c.verify(l)
}

func TestConcurrentHandoffIsRefused(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, Config{}, "TD_SLOW_DRAIN=2s")
	l := startLoad(t, c.addr)
	started := make(chan struct{})
	c.sup.cfg.OnEvent = func(e Event) {
		if e.Kind == EventPhase && e.Phase == PhaseDraining {
			close(started)
		}
	}
	done := make(chan Outcome)
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

// Close during a handoff cancels it and returns only after the rollback,
// so no listener descriptor is closed while a spawn may pass it on. The
// incumbent serves with its lock; a new supervisor adopts it and hands off.
func TestCloseDuringHandoffRollsBack(t *testing.T) {
	checkLeaks(t)
	draining := make(chan struct{})
	var once sync.Once
	var finished atomic.Bool // EventHandoffFinished comes before Close may return
	c := newCluster(t, Config{OnEvent: func(e Event) {
		switch {
		case e.Kind == EventPhase && e.Phase == PhaseDraining:
			once.Do(func() { close(draining) })
		case e.Kind == EventHandoffFinished:
			finished.Store(true)
		}
	}}, "TD_SLOW_DRAIN=2s")
	l := startLoad(t, c.addr)
	before := c.servingPID()
	done := make(chan Outcome, 1)
	spec := c.spec()
	go func() {
		out, _ := c.sup.PerformHandoff(context.Background(), spec)
		done <- out
	}()
	select {
	case <-draining:
	case <-time.After(30 * time.Second):
		t.Fatal("the handoff did not start draining")
	}
	must(t, c.sup.Close())
	if !finished.Load() {
		t.Fatal("Close returned before the handoff ended")
	}
	// PerformHandoff returns right after; only its send is left.
	var out Outcome
	select {
	case out = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("PerformHandoff did not return after Close")
	}
	if out.Committed || !strings.Contains(out.AbortReason, "cancelled") {
		t.Fatalf("outcome %+v, want a cancelled handoff", out)
	}
	if pid := c.servingPID(); pid != before {
		t.Fatalf("pid %d serves, want %d", pid, before)
	}
	if err := holdsLockPID(c.dir, before); err != nil {
		t.Fatal(err)
	}
	sup2, err := New(Config{ControlSocket: c.sock, Logger: testLogger(t)})
	must(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		sup2.Stop(ctx)
		sup2.Close()
	})
	must(t, sup2.AddListener("tcp", c.ln))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	adoptAt := time.Now()
	must(t, sup2.Adopt(ctx, before, c.spec()))
	// The adopted daemon's uptime counts from its own start.
	if since := sup2.Status().IncumbentSince; !since.Before(adoptAt) {
		t.Fatalf("status says the adopted daemon runs since %v, not before its adoption at %v", since, adoptAt)
	}
	if out, err := sup2.PerformHandoff(ctx, c.spec()); err != nil || !out.Committed {
		t.Fatalf("handoff by the new supervisor: %v %+v", err, out)
	}
	c.verify(l)
}

// releaseAtRollback returns an OnEvent handler that creates the file
// hold (a test daemon's TD_DRAIN_HOLD) when a handoff starts rolling back.
func releaseAtRollback(hold string) func(Event) {
	return func(e Event) {
		if e.Kind == EventPhase && e.Phase == PhaseRollingBack {
			if err := os.WriteFile(hold, nil, 0o644); err != nil {
				panic(err)
			}
		}
	}
}

// A Drain that uses its whole grace and then succeeds, with a connection
// still open, is a drain like any other: the handoff commits.
func TestDrainUsingItsWholeGraceCommits(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, Config{}, "TD_DRAIN_TO_GRACE=1")
	l := startLoad(t, c.addr)
	before := c.servingPID()
	spec := c.spec()
	spec.DrainGrace = 2 * time.Second
	out, err := c.sup.PerformHandoff(context.Background(), spec)
	if err != nil || !out.Committed {
		t.Fatalf("outcome %+v, err %v; want a commit", out, err)
	}
	if out.Phases.Drain < spec.DrainGrace {
		t.Fatalf("drain took %v, want the whole grace of %v", out.Phases.Drain, spec.DrainGrace)
	}
	if pid := c.servingPID(); pid == before || pid != out.PID {
		t.Fatalf("pid %d serves, want the successor %d", pid, out.PID)
	}
	c.verify(l)
}

// The incumbent dying while the successor starts ends the handoff at once,
// not when the successor's Hello wait runs out: the successor never says
// Hello and HelloTimeout is a minute, so only the incumbent's exit can
// give this abort reason.
func TestIncumbentDeathDuringSuccessorStartAborts(t *testing.T) {
	checkLeaks(t)
	var incPID atomic.Int64
	c := newCluster(t, Config{HelloTimeout: time.Minute, OnEvent: func(e Event) {
		if e.Kind == EventPhase && e.Phase == PhaseSpawning {
			syscall.Kill(int(incPID.Load()), syscall.SIGKILL)
		}
	}})
	before := c.servingPID()
	incPID.Store(int64(before))
	out := c.handoff("TD_HANG_AT=before-hello")
	if out.Committed {
		t.Fatal("committed, want a rollback")
	}
	if !errors.Is(out.Err, ErrIncumbentFailed) || !strings.Contains(out.AbortReason, "incumbent (pid "+strconv.Itoa(before)+")") {
		t.Fatalf("abort %q (%v), want the incumbent pid %d failing", out.AbortReason, out.Err, before)
	}
	select {
	case ex := <-c.sup.IncumbentExits():
		if ex.PID != before {
			t.Fatalf("exit of pid %d reported, want %d", ex.PID, before)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the incumbent's exit was not reported")
	}
	if st := c.sup.Status(); st.SuccessorPID != 0 || st.IncumbentPID != 0 {
		t.Fatalf("status after the incumbent died: %+v", st)
	}
}

// Close during a cold start (the daemon started but has not answered
// Hello yet) returns ErrClosed from ColdStart; the daemon keeps running and
// the journal names it as the incumbent.
func TestCloseDuringColdStartLeavesTheDaemonRunning(t *testing.T) {
	checkLeaks(t)
	dir := shortDir(t)
	marker, journal := filepath.Join(dir, "started"), filepath.Join(dir, "journal")
	sup, err := New(Config{ControlSocket: filepath.Join(dir, "ctl"), Journal: journal, Logger: testLogger(t)})
	must(t, err)
	done := make(chan error, 1)
	go func() {
		// A daemon that never answers on the control socket.
		_, err := sup.ColdStart(context.Background(), SpawnSpec{Binary: "/bin/sh", Args: []string{"-c", `echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec sleep 60`, marker}})
		done <- err
	}()
	var pid int
	waitFor(t, "the daemon's start marker", func() bool {
		b, err := os.ReadFile(marker)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	})
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) }) // the supervisor's waiter reaps it
	must(t, sup.Close())
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("ColdStart did not return after Close")
	}
	if !errors.Is(err, ErrClosed) || errors.Is(err, ErrTimeout) {
		t.Fatalf("ColdStart: %v, want ErrClosed (and not ErrTimeout)", err)
	}
	if !proc.Alive(pid) {
		t.Fatalf("the daemon (pid %d) was stopped by Close", pid)
	}
	if rec, ok, err := readJournal(journal); err != nil || !ok || rec.IncumbentPID != pid || rec.Phase != PhaseIdle {
		t.Fatalf("journal %+v (%v, %v), want idle with incumbent pid %d", rec, ok, err, pid)
	}
}

// Close during ResumeFromJournal, while it waits for a daemon's Hello,
// ends the resume at once with context.Canceled and leaves the journal as
// it was. The "daemon" accepts on the control socket and never answers.
func TestCloseDuringResumeFromJournal(t *testing.T) {
	checkLeaks(t)
	dir := shortDir(t)
	sock, journal := filepath.Join(dir, "ctl"), filepath.Join(dir, "journal")
	ln, err := net.Listen("unix", sock)
	must(t, err)
	defer ln.Close()
	inc := exec.Command("sleep", "60") // the journal's live incumbent
	must(t, inc.Start())
	t.Cleanup(func() { inc.Process.Kill(); inc.Wait() })
	rec := journalRecord{Phase: PhaseDraining, HandoffID: "h-test", IncumbentPID: inc.Process.Pid, IncumbentStart: proc.StartTime(inc.Process.Pid),
		DeadlineUnixMS: time.Now().Add(time.Minute).UnixMilli()}
	must(t, writeJournal(journal, rec))
	sup, err := New(Config{ControlSocket: sock, Journal: journal, Logger: testLogger(t)})
	must(t, err)
	done := make(chan error, 1)
	go func() { done <- sup.ResumeFromJournal(context.Background()) }()
	conn, err := ln.Accept() // the supervisor is connected and waits for Hello
	must(t, err)
	defer conn.Close()
	must(t, sup.Close())
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("ResumeFromJournal did not return after Close")
	}
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrNoIncumbent) {
		t.Fatalf("ResumeFromJournal: %v, want context.Canceled", err)
	}
	if got, ok, err := readJournal(journal); err != nil || !ok || got.Phase != PhaseDraining || got.IncumbentPID != rec.IncumbentPID {
		t.Fatalf("journal after Close %+v (%v, %v), want it unchanged", got, ok, err)
	}
}

// The abort error carries its cause: a successor binary that does not
// exist rolls back with an error matching ErrSuccessorFailed and
// fs.ErrNotExist, and the incumbent serves on.
func TestAbortErrorCarriesItsCause(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, Config{})
	before := c.servingPID()
	spec := c.spec()
	spec.Binary = filepath.Join(t.TempDir(), "no-such-daemon")
	out, err := c.sup.PerformHandoff(context.Background(), spec)
	if err != nil {
		t.Fatalf("PerformHandoff: %v", err)
	}
	if out.Committed || !errors.Is(out.Err, ErrSuccessorFailed) || !errors.Is(out.Err, fs.ErrNotExist) {
		t.Fatalf("outcome %+v (err %v), want a rollback matching ErrSuccessorFailed and fs.ErrNotExist", out, out.Err)
	}
	if !strings.Contains(out.AbortReason, "no-such-daemon") {
		t.Fatalf("abort reason %q does not name the binary", out.AbortReason)
	}
	if pid := c.servingPID(); pid != before {
		t.Fatalf("pid %d serves, want %d", pid, before)
	}
}

// An incumbent that cannot be reached (here its control socket is moved
// aside; in the field, the supervisor out of descriptors) was never asked
// for anything: the handoff aborts without an error about resuming, and
// the incumbent serves on.
func TestUnreachableIncumbentIsNotResumed(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, Config{HelloTimeout: time.Second})
	l := startLoad(t, c.addr)
	before := c.servingPID()
	must(t, os.Rename(c.sock, c.sock+".aside"))
	out, err := c.sup.PerformHandoff(context.Background(), c.spec())
	if err != nil {
		t.Fatalf("PerformHandoff: %v, want a plain rollback (the incumbent was never contacted)", err)
	}
	if out.Committed || !strings.Contains(out.AbortReason, "did not answer on its control socket") || out.Phases.AcceptGap != 0 {
		t.Fatalf("outcome %+v, want an abort naming the control socket and no accept gap", out)
	}
	if pid := c.servingPID(); pid != before {
		t.Fatalf("pid %d serves, want the incumbent %d", pid, before)
	}
	must(t, os.Rename(c.sock+".aside", c.sock))
	if out := c.handoff(); !out.Committed {
		t.Fatalf("handoff once the socket is back: %s", out.AbortReason)
	}
	c.verify(l)
}
