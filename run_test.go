//go:build linux

package handoff

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testutil"
	"github.com/handoff-go/handoff/supervisor"
)

// runDaemon is the test binary as a daemon on the front door
// (HANDOFF_TEST_ROLE=run): a line server on the listener "line" that
// answers every line with "ok <pid>". RUN_DIR is its data directory;
// RUN_LISTEN, if set, is the address Run binds when "line" was not
// inherited; RUN_CONTROL, if set, is its Config.ControlSocket.
// RUN_FAIL_PREPARE makes Prepare fail, RUN_FAIL_OPEN makes
// Open fail, RUN_UNHEALTHY makes Readiness report unhealthy. It appends
// "<event> <pid>" lines to RUN_DIR/events; Prepare's event says whether
// another process held the data-directory lock meanwhile.
func runDaemon() int {
	dir := os.Getenv("RUN_DIR")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	prepared := false
	cfg := Config{
		DataDir: dir,
		Logger:  testutil.Logger(),
		Prepare: func(context.Context) error {
			if os.Getenv("RUN_FAIL_PREPARE") != "" {
				return errors.New("RUN_FAIL_PREPARE")
			}
			ev := "prepared-lock-free"
			if l, err := AcquireDataDirLock(dir); errors.Is(err, ErrLockHeld) {
				ev = "prepared-lock-held"
			} else if err == nil {
				l.Release()
			}
			runEvent(dir, ev)
			prepared = true
			return nil
		},
		Open: func(_ context.Context, ls *InheritedListeners) (Service, error) {
			if !prepared {
				return nil, errors.New("Open before Prepare")
			}
			if os.Getenv("RUN_FAIL_OPEN") != "" {
				return nil, errors.New("RUN_FAIL_OPEN")
			}
			ln, err := ls.Listener("line")
			if err != nil {
				return nil, err
			}
			return &lineService{ln: ln.(*net.TCPListener), dir: dir, unhealthy: os.Getenv("RUN_UNHEALTHY") != ""}, nil
		},
	}
	if addr := os.Getenv("RUN_LISTEN"); addr != "" {
		cfg.Listen = map[string]string{"line": addr}
	}
	cfg.ControlSocket = os.Getenv("RUN_CONTROL")
	err := Run(ctx, cfg)
	runEvent(dir, "exit")
	if err != nil {
		fmt.Fprintln(os.Stderr, "run daemon:", err)
		return 1
	}
	return 0
}

func runEvent(dir, what string) {
	f, err := os.OpenFile(filepath.Join(dir, "events"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	fmt.Fprintf(f, "%s %d\n", what, os.Getpid())
	f.Sync()
	f.Close()
}

// lineService is the Service of runDaemon.
type lineService struct {
	ln        *net.TCPListener
	dir       string
	unhealthy bool
	accepting sync.WaitGroup // the accept loop
	conns     sync.WaitGroup // connections being served
}

func (s *lineService) Start() error {
	runEvent(s.dir, "start")
	s.accept()
	return nil
}

func (s *lineService) accept() {
	s.ln.SetDeadline(time.Time{})
	s.accepting.Add(1)
	go func() {
		defer s.accepting.Done()
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			go s.serve(c)
		}
	}()
}

func (s *lineService) serve(c net.Conn) {
	defer s.conns.Done()
	defer c.Close()
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if _, err := fmt.Fprintf(c, "ok %d\n", os.Getpid()); err != nil {
			return
		}
	}
}

// Drain ends accept (the socket stays open) and waits for the connections.
func (s *lineService) Drain(ctx context.Context) (DrainReport, error) {
	s.ln.SetDeadline(time.Now())
	s.accepting.Wait()
	s.conns.Wait()
	runEvent(s.dir, "drained")
	return DrainReport{AcceptClosed: true}, nil
}

func (s *lineService) Seal(context.Context) (SealReport, error) {
	runEvent(s.dir, "sealed")
	return SealReport{}, nil
}

func (s *lineService) ResumeAfterAbort(context.Context) error {
	runEvent(s.dir, "resumed")
	s.accept()
	return nil
}

func (s *lineService) Readiness() ReadinessSnapshot {
	return ReadinessSnapshot{HealthzOK: !s.unhealthy}
}

func (s *lineService) Shutdown(context.Context) error {
	s.ln.SetDeadline(time.Now())
	s.accepting.Wait()
	s.conns.Wait()
	runEvent(s.dir, "shutdown")
	return s.ln.Close()
}

// ask sends one line on a fresh connection and returns the answering pid.
func ask(t *testing.T, network, addr string) int {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("answer from %s: %v", addr, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "ok ")))
	if err != nil {
		t.Fatalf("answer %q", line)
	}
	return pid
}

func events(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "events"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func hasEvent(t *testing.T, dir, ev string, pid int) bool {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(dir, "events"))
	return strings.Contains("\n"+string(b), fmt.Sprintf("\n%s %d\n", ev, pid))
}

// A daemon started by hand runs the same code: it binds what it was not
// given, takes the lock, binds its control socket in the data directory,
// serves, and on SIGTERM shuts down and releases the lock.
func TestRunByHand(t *testing.T) {
	dir := shortDir(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "HANDOFF_TEST_ROLE=run", "RUN_DIR="+dir, "RUN_LISTEN="+addr)
	cmd.Stderr = os.Stderr
	must(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid := cmd.Process.Pid
	waitFor(t, "the daemon to start", func() bool { return hasEvent(t, dir, "start", pid) })
	if got := ask(t, "tcp", addr); got != pid {
		t.Fatalf("answered by %d, want %d", got, pid)
	}
	if fi, err := os.Stat(filepath.Join(dir, ".handoff.sock")); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("control socket in the data directory: %v %v", fi, err)
	}
	if _, err := AcquireDataDirLock(dir); !errors.Is(err, ErrLockHeld) {
		t.Fatalf("lock while the daemon runs: %v, want ErrLockHeld", err)
	}
	must(t, cmd.Process.Signal(syscall.SIGTERM))
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v (events %v)", err, events(t, dir))
	}
	if !hasEvent(t, dir, "shutdown", pid) {
		t.Fatalf("no shutdown before exit: %v", events(t, dir))
	}
	lock, err := AcquireDataDirLock(dir)
	if err != nil {
		t.Fatalf("lock after the daemon exited: %v", err)
	}
	lock.Release()
}

// Under the supervisor, Run takes the control socket path from the
// environment, hands off, rolls back a successor whose Open fails or which
// reports itself unhealthy, and shuts the old process down after a commit.
func TestRunUnderSupervisor(t *testing.T) {
	checkLeaks(t)
	fdsBefore := testutil.CountFDs(t)
	dir := shortDir(t)
	data := filepath.Join(dir, "data")
	must(t, os.Mkdir(data, 0o700))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	addr := ln.Addr().String()
	sup, err := supervisor.New(supervisor.Config{ControlSocket: filepath.Join(dir, "ctl"), Logger: testutil.Logger()})
	must(t, err)
	t.Cleanup(func() { sup.Close() })
	must(t, sup.AddListener("line", ln))
	ln.Close()
	spec := func(env ...string) supervisor.SpawnSpec {
		return supervisor.SpawnSpec{Binary: os.Args[0], Args: []string{"-test.run=^$"},
			Env: append([]string{"HANDOFF_TEST_ROLE=run", "RUN_DIR=" + data}, env...), DrainGrace: 5 * time.Second, Deadline: 20 * time.Second}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pid, err := sup.ColdStart(ctx, spec())
	must(t, err)
	if !hasEvent(t, data, "prepared-lock-free", pid) {
		t.Fatalf("cold start: Prepare did not run before the lock was taken: %v", events(t, data))
	}
	if got := ask(t, "tcp", addr); got != pid {
		t.Fatalf("cold start: answered by %d, want %d", got, pid)
	}
	for i := range 3 {
		out, err := sup.PerformHandoff(ctx, spec())
		if err != nil || !out.Committed {
			t.Fatalf("handoff %d: %v %+v", i, err, out)
		}
		if got := ask(t, "tcp", addr); got != out.PID {
			t.Fatalf("handoff %d: answered by %d, want the successor %d", i, got, out.PID)
		}
		// The successor warmed up while the incumbent held the lock: before
		// the drain.
		if !hasEvent(t, data, "prepared-lock-held", out.PID) {
			t.Fatalf("handoff %d: the successor did not prepare while the incumbent held the lock: %v", i, events(t, data))
		}
		if out.Phases.WarmUp <= 0 {
			t.Fatalf("handoff %d: no warm-up phase timed: %+v", i, out.Phases)
		}
		old := pid
		waitFor(t, "the old daemon to exit", func() bool { return hasEvent(t, data, "exit", old) })
		if !hasEvent(t, data, "shutdown", old) || !hasEvent(t, data, "sealed", old) {
			t.Fatalf("handoff %d: the old daemon exited without seal and shutdown: %v", i, events(t, data))
		}
		pid = out.PID
	}
	// A warm-up that fails aborts before the incumbent was asked to drain.
	out, err := sup.PerformHandoff(ctx, spec("RUN_FAIL_PREPARE=1"))
	if err != nil || out.Committed || !strings.Contains(out.AbortReason, "warm-up failed: handoff: prepare: RUN_FAIL_PREPARE") {
		t.Fatalf("failing warm-up: %v %+v, want a rollback naming the warm-up's error", err, out)
	}
	if hasEvent(t, data, "drained", pid) || hasEvent(t, data, "resumed", pid) || out.Phases.Drain != 0 {
		t.Fatalf("failing warm-up: the incumbent was drained: %v %+v", events(t, data), out.Phases)
	}
	if got := ask(t, "tcp", addr); got != pid {
		t.Fatalf("failing warm-up: answered by %d, want the incumbent %d", got, pid)
	}
	// A successor that cannot bind its control socket says so before the
	// incumbent drains for nothing.
	out, err = sup.PerformHandoff(ctx, spec("RUN_CONTROL="+filepath.Join(dir, "missing", "ctl")))
	if err != nil || out.Committed || !strings.Contains(out.AbortReason, "gave up during its warm-up: the successor cannot bind its control socket") {
		t.Fatalf("unbindable control socket: %v %+v, want a rollback naming the control socket", err, out)
	}
	if hasEvent(t, data, "drained", pid) || out.Phases.Drain != 0 {
		t.Fatalf("unbindable control socket: the incumbent was drained: %v %+v", events(t, data), out.Phases)
	}
	for knob, reason := range map[string]string{
		"RUN_FAIL_OPEN=1": "gave up after Begin: the successor could not open its data: handoff: open: RUN_FAIL_OPEN",
		"RUN_UNHEALTHY=1": "the successor reported itself unhealthy",
	} {
		out, err := sup.PerformHandoff(ctx, spec(knob))
		if err != nil || out.Committed || !strings.Contains(out.AbortReason, reason) {
			t.Fatalf("%s: %v %+v, want a rollback saying %q", knob, err, out, reason)
		}
		if !hasEvent(t, data, "resumed", pid) {
			t.Fatalf("%s: the incumbent did not resume: %v", knob, events(t, data))
		}
		if got := ask(t, "tcp", addr); got != pid {
			t.Fatalf("%s: answered by %d, want the incumbent %d", knob, got, pid)
		}
	}
	// The successor of RUN_UNHEALTHY opened the service but never started it.
	if n := strings.Count(strings.Join(events(t, data), " "), "start"); n != 4 {
		t.Fatalf("%d starts, want 4 (cold start and three commits): %v", n, events(t, data))
	}
	// Successors bind the control socket at a temporary name before
	// Begin; those that were turned down removed theirs.
	if tmps, _ := filepath.Glob(filepath.Join(dir, ".ctl.tmp-*")); len(tmps) != 0 {
		t.Fatalf("temporary control sockets left behind: %v", tmps)
	}
	must(t, sup.Stop(ctx))
	waitFor(t, "the last daemon to exit", func() bool { return hasEvent(t, data, "exit", pid) })
	must(t, sup.Close())
	if n := testutil.CountFDs(t); n != fdsBefore {
		t.Fatalf("%d descriptors open after Close, %d before", n, fdsBefore)
	}
}
