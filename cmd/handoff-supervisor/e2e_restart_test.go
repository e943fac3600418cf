package main

import (
	"fmt"
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
