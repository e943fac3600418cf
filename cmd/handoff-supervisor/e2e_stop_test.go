package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cliResult is how a client command ended.
type cliResult struct {
	out  string
	code int
	err  error
}

// cliAsync starts handoff-supervisor ARGS as a process; its result comes
// on the channel. It is killed when the test ends.
func (f *fixture) cliAsync(t *testing.T, args ...string) <-chan cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	cmd := supervisorCmd(ctx, t, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	res := make(chan cliResult, 1)
	go func() {
		defer cancel()
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = nil
		}
		res <- cliResult{out.String(), cmd.ProcessState.ExitCode(), err}
	}()
	t.Cleanup(func() { cancel() })
	return res
}

// setBounds sets drain_grace_secs and deadline_secs in the fixture's config.
func (f *fixture) setBounds(t *testing.T, drain, deadline string) {
	t.Helper()
	f.editConfig(t, "drain_grace_secs = 5", "drain_grace_secs = "+drain)
	f.editConfig(t, "deadline_secs    = 20", "deadline_secs    = "+deadline)
}

// TestLongDrain: while the old daemon drains (held by the test), systemd's
// timeout is extended on every heartbeat, and a SIGUSR2 is deferred until
// the handoff has ended (status shows it pending, and a trigger is refused
// meanwhile): the re-exec comes after the handoff's READY=1.
func TestLongDrain(t *testing.T) {
	f := newFixture(t)
	gate := fifo(t, f.drainGate)
	sup := f.startSupervisor(t, nil)
	_, pid1 := f.hello(t)

	upgrade := f.cliAsync(t, "upgrade", "--config", f.cfg, "--binary", f.v2)
	f.await(t, "RELOADING=1", "MONOTONIC_USEC=")
	f.await(t, "STATUS=handoff", ": draining")
	if ev := f.awaitEvent(t, "draining"); ev.pid != pid1 {
		t.Fatalf("draining: %+v, want pid %d", ev, pid1)
	}
	// A heartbeat during the drain (every 2s) extends systemd's timeout.
	for msg := f.notes(); !strings.HasPrefix(msg, "EXTEND_TIMEOUT_USEC="); msg = f.notes() {
	}

	sup.signal(t, syscall.SIGUSR2)
	// The loop takes the signal and a trigger request in either order:
	// the upgrade below is refused only once the re-exec is pending.
	f.awaitStatus(t, "a pending re-exec", func(st statusReport) bool { return st.ReexecPending })
	out, _, code := f.cli(t, "upgrade", "--config", f.cfg)
	if code != 1 || !strings.Contains(out, "re-executing") {
		t.Fatalf("upgrade while a re-exec waits: exit %d, %q", code, out)
	}
	if err := os.Remove(f.drainGate); err != nil { // later drains pass
		t.Fatal(err)
	}
	if _, err := gate.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if r := <-upgrade; r.err != nil || r.code != 0 || !strings.Contains(r.out, "committed: handoff ") {
		t.Fatalf("the held upgrade: %+v", r)
	}
	// In this order: await skips what does not match.
	f.await(t, "READY=1", "committed")
	f.await(t, "RELOADING=1", "re-executing")
	f.await(t, "READY=1")
	build, pid2 := f.hello(t)
	if st := f.status(t); build != "daemon-v2" || st.Supervisor.PID != sup.cmd.Process.Pid || st.Incumbent == nil || st.Incumbent.PID != pid2 {
		t.Fatalf("after the re-exec: %s pid %d serves, status %+v", build, pid2, st)
	}
}

// TestStopBound: SIGTERM stops within deadline_secs even when the daemon
// ignores SIGTERM (it is killed), a second SIGTERM kills at once, and a
// handoff running at SIGTERM counts against the same bound (it is
// cancelled; its daemons are killed when the bound passes). After
// STOPPING=1 no READY=1 is sent.
func TestStopBound(t *testing.T) {
	const slack = 3 * time.Second
	for _, tc := range []struct {
		name     string
		deadline time.Duration
		ignore   bool // the daemon ignores SIGTERM
		handoff  bool // a handoff is held in its drain at SIGTERM
		twice    bool // a second SIGTERM follows STOPPING=1
		within   time.Duration
	}{
		{name: "daemon ignores SIGTERM", deadline: 3 * time.Second, ignore: true, within: 3*time.Second + slack},
		{name: "second SIGTERM", deadline: 20 * time.Second, ignore: true, twice: true, within: slack},
		{name: "during a handoff", deadline: 5 * time.Second, handoff: true, within: 5*time.Second + slack},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			secs := strings.TrimSuffix(tc.deadline.String(), "s")
			f.setBounds(t, "1", secs)
			if tc.ignore {
				if err := os.WriteFile(f.ignoreTerm, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			var gate *os.File
			if tc.handoff {
				gate = fifo(t, f.drainGate)
			}
			sup := f.startSupervisor(t, nil)
			_, pid := f.hello(t)
			pids := []int{pid}
			if tc.handoff {
				f.cliAsync(t, "upgrade", "--config", f.cfg, "--binary", f.v2)
				f.await(t, "STATUS=handoff", ": draining")
				f.awaitEvent(t, "draining")
				if st := f.status(t); st.Successor != nil {
					pids = append(pids, st.Successor.PID)
				}
			}
			start := time.Now()
			sup.signal(t, syscall.SIGTERM)
			msg := f.await(t, "STOPPING=1")
			if want := fmt.Sprintf("EXTEND_TIMEOUT_USEC=%d\n", (tc.deadline + stopSlack).Microseconds()); !strings.Contains(msg, want) {
				t.Errorf("STOPPING=1 message %q lacks %s", msg, want)
			}
			if tc.twice {
				start = time.Now()
				sup.signal(t, syscall.SIGTERM)
			}
			sup.wait(t, "after SIGTERM")
			if took := time.Since(start); took > tc.within {
				t.Errorf("the stop took %v, want at most %v", took, tc.within)
			}
			for _, p := range pids {
				if err := syscall.Kill(p, 0); err != syscall.ESRCH {
					t.Errorf("daemon pid %d still there after the supervisor stopped: %v", p, err)
				}
			}
			for _, m := range f.lastNotes() {
				if strings.Contains(m, "READY=1") || strings.Contains(m, "RELOADING=1") {
					t.Errorf("after STOPPING=1: %q", m)
				}
			}
			if gate != nil {
				gate.Close()
			}
		})
	}
}
