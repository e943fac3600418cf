package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/proc"
)

// TestReexecRefusedConfig: SIGUSR2 with a config that no longer loads, or
// that changes the listeners or the control socket, is refused by the
// running image (it logs why, and tells systemd RELOADING=1 then READY=1
// with the reason); the supervisor, its pid and the daemon stay. Once the
// file is right again, SIGUSR2 re-executes.
func TestReexecRefusedConfig(t *testing.T) {
	f := newFixture(t)
	sup := f.startSupervisor(t, nil)
	_, pid := f.hello(t)
	orig, err := os.ReadFile(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, old, new, why string
	}{
		{"unknown key", "journal ", "bogus_key = 1\njournal ", "no longer loads"},
		{"listeners", "web.sock", "web2.sock", "[[listeners]] changed"},
		{"control socket", "control.sock", "control2.sock", "control_socket changed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.editConfig(t, tc.old, tc.new)
			sup.signal(t, syscall.SIGUSR2)
			f.await(t, "RELOADING=1", "re-exec refused", tc.why)
			f.await(t, "READY=1", "re-exec refused", tc.why)
			// The status command reads the file too.
			if err := os.WriteFile(f.cfg, orig, 0o644); err != nil {
				t.Fatal(err)
			}
			st := f.status(t)
			if st.Supervisor.PID != sup.cmd.Process.Pid || st.Incumbent == nil || st.Incumbent.PID != pid {
				t.Fatalf("after the refused re-exec: %+v, want daemon pid %d", st, pid)
			}
		})
	}
	sup.signal(t, syscall.SIGUSR2)
	f.await(t, "RELOADING=1", "re-executing")
	f.await(t, "READY=1")
	if st := f.status(t); st.Incumbent == nil || st.Incumbent.PID != pid {
		t.Fatalf("after the re-exec: %+v, want daemon pid %d", st, pid)
	}
}

// TestReexecConfigFallback: when the file breaks after the old image
// checked it (between its check and the new image's load), the new image
// carries on with the configuration it was passed instead of exiting.
func TestReexecConfigFallback(t *testing.T) {
	f := newFixture(t)
	sup := f.startSupervisor(t, []string{envTestBreakOnReexec + "=" + f.cfg})
	_, pid := f.hello(t)
	sup.signal(t, syscall.SIGUSR2)
	f.await(t, "RELOADING=1", "re-executing")
	f.await(t, "READY=1")
	select {
	case <-sup.exited:
		t.Fatalf("the re-executed supervisor exited: %v", sup.waitErr)
	default:
	}
	if raw, _ := os.ReadFile(f.cfg); !bytes.Contains(raw, []byte("bogus_key")) {
		t.Fatal("the config was not spoilt: the test did not test the fallback")
	}
	// The status command reads the (broken) file too: repair it.
	f.editConfig(t, "bogus_key = 1", "")
	if st := f.status(t); st.Supervisor.PID != sup.cmd.Process.Pid || st.Incumbent == nil || st.Incumbent.PID != pid {
		t.Fatalf("after the re-exec with a broken config: %+v, want daemon pid %d", st, pid)
	}
	if build, p := f.hello(t); build != "daemon-v1" || p != pid {
		t.Fatalf("serving %s pid %d, want daemon-v1 pid %d", build, p, pid)
	}
}

// procState returns the state letter of pid ("Z" for a zombie), or "" when
// no such process exists.
func procState(pid int) string {
	st, err := proc.ReadStat(pid)
	if err != nil {
		return ""
	}
	return string(st.State)
}

// TestReexecReapsOldIncumbent: an old incumbent still finishing after a
// commit when SIGUSR2 comes is a child only the old image knew about; the
// new image reaps it when it exits, leaving no zombie.
func TestReexecReapsOldIncumbent(t *testing.T) {
	f := newFixture(t)
	sup := f.startSupervisor(t, nil)
	supPID := sup.cmd.Process.Pid
	_, pid1 := f.hello(t)
	linger := fifo(t, f.linger)

	out, _, code := f.cli(t, "upgrade", "--config", f.cfg, "--binary", f.v2)
	if code != 0 {
		t.Fatalf("upgrade: exit %d, %q", code, out)
	}
	if ev := f.awaitEvent(t, "linger"); ev.pid != pid1 {
		t.Fatalf("lingering: %+v, want pid %d", ev, pid1)
	}
	if !childrenOf(t, supPID)[pid1] {
		t.Fatalf("the old incumbent pid %d is not a child of the supervisor", pid1)
	}
	if err := os.Remove(f.linger); err != nil { // the new incumbent must not linger
		t.Fatal(err)
	}
	sup.signal(t, syscall.SIGUSR2)
	f.await(t, "RELOADING=1", "re-executing")
	f.await(t, "READY=1")
	if _, err := linger.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(pollTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for procState(pid1) != "" {
		if time.Now().After(deadline) {
			t.Fatalf("the old incumbent pid %d is still there (state %s) %v after it was let go", pid1, procState(pid1), pollTimeout)
		}
		<-tick.C
	}
	if build, _ := f.hello(t); build != "daemon-v2" {
		t.Fatalf("serving %s, want daemon-v2", build)
	}
}

// TestRestartPinnedKnownGood: the known-good binary is the file that
// proved good, not whatever is at its path later. With daemon-v2 known
// good (not the configured binary), a killed daemon restarts as v2; then
// a broken build is renamed over v2's path and a handoff to it rolls
// back; a killed daemon still restarts as the v2 that proved good.
func TestRestartPinnedKnownGood(t *testing.T) {
	f := newFixture(t)
	f.startSupervisor(t, nil)
	if out, _, code := f.cli(t, "upgrade", "--config", f.cfg, "--binary", f.v2); code != 0 {
		t.Fatalf("upgrade to v2: exit %d, %q", code, out)
	}
	f.await(t, "READY=1", "committed")
	kill := func(want string) int {
		t.Helper()
		_, pid := f.hello(t)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		f.await(t, "READY=1", "restarted")
		build, npid := f.hello(t)
		if build != want || npid == pid {
			t.Fatalf("after killing pid %d: %s pid %d serves, want %s", pid, build, npid, want)
		}
		return npid
	}
	kill("daemon-v2")
	if st := f.status(t); st.KnownGood != f.v2 || st.KnownGoodReplaced {
		t.Fatalf("status: known good %s (replaced %v), want %s as it is on disk", st.KnownGood, st.KnownGoodReplaced, f.v2)
	}

	broken := filepath.Join(filepath.Dir(f.v2), ".daemon-v2.new")
	script := fmt.Sprintf("#!/bin/sh\necho \"start broken $$\" >> %s\nexit 3\n", f.daemonLog)
	if err := os.WriteFile(broken, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(broken, f.v2); err != nil {
		t.Fatal(err)
	}
	out, _, code := f.cli(t, "upgrade", "--config", f.cfg, "--binary", f.v2)
	if code != 1 || !strings.HasPrefix(out, "rolled back: ") {
		t.Fatalf("upgrade to the broken file: exit %d, %q", code, out)
	}
	f.await(t, "READY=1", "rolled back")
	pid := kill("daemon-v2")
	var broke int
	for _, s := range f.spawned(t) {
		if s.build == "broken" {
			broke++
		}
	}
	if broke != 1 {
		t.Fatalf("the broken file was started %d times, want once (the handoff)", broke)
	}
	if st := f.status(t); st.Incumbent == nil || st.Incumbent.PID != pid || st.Incumbent.BuildID != "daemon-v2" || st.KnownGood != f.v2 || !st.KnownGoodReplaced {
		t.Fatalf("status: %+v, want daemon-v2 pid %d", st, pid)
	}
}

// TestRestartWrapperScript: a configured binary that is a #!/bin/sh
// wrapper exec'ing the daemon is what is known good, not the program it
// execs: status does not call it replaced, and a killed daemon restarts
// through the wrapper. Once another script is renamed over the wrapper's
// path, a killed daemon restarts through the pinned wrapper (its
// /proc/<supervisor>/fd/<n> path handed to the interpreter), and status
// says the path was replaced.
func TestRestartWrapperScript(t *testing.T) {
	f := newFixture(t)
	wrapper := filepath.Join(filepath.Dir(f.v1), "daemon-wrapper")
	script := fmt.Sprintf("#!/bin/sh\necho \"wrap sh $$\" >> %s\nexec %s \"$@\"\n", f.daemonLog, f.v1)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	f.editConfig(t, fmt.Sprintf("binary           = %q", f.v1), fmt.Sprintf("binary           = %q", wrapper))
	f.startSupervisor(t, nil)
	wrapped := func(pid int) {
		t.Helper()
		evs := f.daemonEvents(t, "wrap")
		if len(evs) == 0 || evs[len(evs)-1].pid != pid {
			t.Fatalf("the wrapper ran as %v, want last as pid %d", evs, pid)
		}
	}
	build, pid := f.hello(t)
	if build != "daemon-v1" {
		t.Fatalf("serving %s, want daemon-v1 through the wrapper", build)
	}
	wrapped(pid)
	if st := f.status(t); st.KnownGood != wrapper || st.KnownGoodReplaced {
		t.Fatalf("status: known good %s (replaced %v), want %s as it is on disk", st.KnownGood, st.KnownGoodReplaced, wrapper)
	}
	restart := func() int {
		t.Helper()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		f.await(t, "READY=1", "restarted")
		build, npid := f.hello(t)
		if build != "daemon-v1" || npid == pid {
			t.Fatalf("after killing pid %d: %s pid %d serves, want daemon-v1 anew", pid, build, npid)
		}
		wrapped(npid)
		return npid
	}
	pid = restart()
	if st := f.status(t); st.Incumbent == nil || st.Incumbent.PID != pid || st.KnownGood != wrapper || st.KnownGoodReplaced {
		t.Fatalf("status after the restart: %+v, want pid %d, %s not replaced", st, pid, wrapper)
	}

	broken := filepath.Join(filepath.Dir(wrapper), ".daemon-wrapper.new")
	if err := os.WriteFile(broken, []byte(fmt.Sprintf("#!/bin/sh\necho \"start broken $$\" >> %s\nexit 3\n", f.daemonLog)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(broken, wrapper); err != nil {
		t.Fatal(err)
	}
	pid = restart()
	for _, s := range f.spawned(t) {
		if s.build == "broken" {
			t.Fatalf("the script renamed over the known-good path was started (pid %d)", s.pid)
		}
	}
	if st := f.status(t); st.Incumbent == nil || st.Incumbent.PID != pid || !st.KnownGoodReplaced {
		t.Fatalf("status after the replacement: %+v, want pid %d, the path replaced", st, pid)
	}
}

// TestReexecDropsMetrics: a re-exec with metrics_addr removed from the
// file closes the metrics listener it was passed, so the port is free
// again rather than bound with nobody accepting.
func TestReexecDropsMetrics(t *testing.T) {
	f := newFixture(t)
	sup := f.startSupervisor(t, nil)
	if ln, err := net.Listen("tcp", f.metrics); err == nil {
		ln.Close()
		t.Fatal("the metrics port is free while the supervisor serves metrics")
	}
	f.editConfig(t, fmt.Sprintf("metrics_addr     = %q", f.metrics), "")
	sup.signal(t, syscall.SIGUSR2)
	f.await(t, "RELOADING=1", "re-executing")
	f.await(t, "READY=1")
	ln, err := net.Listen("tcp", f.metrics)
	if err != nil {
		t.Fatalf("the metrics port after a re-exec without metrics_addr: %v", err)
	}
	ln.Close()
}

// TestReexecAdoptFails: when the re-executed supervisor cannot adopt the
// daemon, it kills and reaps it (it would otherwise keep the data
// directory's lock and stay a zombie) before starting a new one.
func TestReexecAdoptFails(t *testing.T) {
	f := newFixture(t)
	sup := f.startSupervisor(t, []string{envTestFailAdopt + "=1"})
	_, pid := f.hello(t)
	sup.signal(t, syscall.SIGUSR2)
	f.await(t, "RELOADING=1", "re-executing")
	f.await(t, "READY=1", "restarted")
	build, npid := f.hello(t)
	if build != "daemon-v1" || npid == pid {
		t.Fatalf("serving %s pid %d, want daemon-v1 anew (pid %d was not adopted)", build, npid, pid)
	}
	if s := procState(pid); s != "" {
		t.Fatalf("the daemon that was not adopted, pid %d, is still there (state %s)", pid, s)
	}
	if s := f.spawned(t); len(s) != 2 {
		t.Fatalf("daemons started: %v, want the first and one after the re-exec", s)
	}
	if st := f.status(t); st.Supervisor.PID != sup.cmd.Process.Pid || st.Incumbent == nil || st.Incumbent.PID != npid {
		t.Fatalf("status: %+v, want daemon pid %d", st, npid)
	}
}

// TestReexecConfigChanged: when the file changes after the old image
// checked it to one that loads but changes [[listeners]] (which live on
// across the exec), the new image carries on with the configuration it
// was passed: it binds no new listener and keeps the daemon.
func TestReexecConfigChanged(t *testing.T) {
	f := newFixture(t)
	extra := filepath.Join(f.dir, "extra.sock")
	sup := f.startSupervisor(t, []string{
		envTestBreakOnReexec + "=" + f.cfg,
		envTestBreakWith + "=" + fmt.Sprintf("[[listeners]]\nname = \"extra\"\naddr = \"unix:%s\"", extra),
	})
	_, pid := f.hello(t)
	sup.signal(t, syscall.SIGUSR2)
	f.await(t, "RELOADING=1", "re-executing")
	f.await(t, "READY=1")
	if raw, _ := os.ReadFile(f.cfg); !bytes.Contains(raw, []byte("extra.sock")) {
		t.Fatal("the config was not changed: the test did not test the fallback")
	}
	if _, err := os.Stat(extra); !os.IsNotExist(err) {
		t.Fatalf("the listener added after the check was bound: %v", err)
	}
	if st := f.status(t); st.Supervisor.PID != sup.cmd.Process.Pid || st.Incumbent == nil || st.Incumbent.PID != pid {
		t.Fatalf("after the re-exec with a changed config: %+v, want daemon pid %d", st, pid)
	}
	if build, p := f.hello(t); build != "daemon-v1" || p != pid {
		t.Fatalf("serving %s pid %d, want daemon-v1 pid %d", build, p, pid)
	}
}
