package main

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/handoff-go/handoff/internal/testutil"
)

// A successor that dies right after its commit is the known-good binary
// by then: the restart starts it again, and every log line about the
// restart names that binary, not the one before it.
func TestRestartAfterSuccessorDiesNamesTheRightBinary(t *testing.T) {
	f := newFixture(t)
	sup, records := f.startSupervisorLogged(t)
	_, pid1 := f.hello(t)
	out, _, code := f.cli(t, "upgrade", "--config", f.cfg, "--binary", f.dies)
	if code != exitOK || !strings.Contains(out, "committed") {
		t.Fatalf("upgrade to a build that dies after its commit: exit %d, %q", code, out)
	}
	var build string
	var pid int
	testutil.WaitFor(t, "the restarted daemon", func() bool {
		build, pid = f.hello(t)
		return pid != pid1 && strings.Contains(build, "dies") && countStarts(t, f, "daemon-v3-dies") == 2
	})
	defer f.stopAndCheck(t, sup, pid)
	var lines []string
	for _, r := range records() {
		switch r.msg() {
		case "restart of the known-good binary scheduled", "restart of the known-good binary scheduled, once the handoff in progress has ended", "starting the daemon":
			if b := r.str("binary"); b != "" && b != f.dies {
				t.Errorf("%q names binary %s, but %s is the one that committed and is restarted", r.msg(), b, f.dies)
			}
			lines = append(lines, fmt.Sprint(r))
		}
	}
	if len(lines) < 2 {
		t.Fatalf("want the restart scheduled and started in the log, got %q", lines)
	}
}

// countStarts counts the daemons of build that started.
func countStarts(t *testing.T, f *fixture, build string) int {
	t.Helper()
	n := 0
	for _, e := range f.daemonEvents(t, "start") {
		if e.build == build {
			n++
		}
	}
	return n
}

// A listener address that another process holds (typically a daemon left
// by a supervisor that died without a journal) is refused with the holder
// named, for a unix path and for a TCP port.
func TestBindErrorNamesTheHolder(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			f := newFixture(t)
			addr := f.web
			if network == "tcp" {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				testutil.Must(t, err)
				addr = l.Addr().String()
				l.Close()
				f.editConfig(t, "unix:"+f.web, addr)
			}
			holder, err := net.Listen(network, addr)
			testutil.Must(t, err)
			defer holder.Close()
			stderr := f.runRefused(t)
			want := fmt.Sprintf("it is held by pid %d (", os.Getpid())
			if !strings.Contains(stderr, want) || !strings.Contains(stderr, "key journal") {
				t.Fatalf("stderr lacks %q and the advice about the journal:\n%s", want, stderr)
			}
		})
	}
}
