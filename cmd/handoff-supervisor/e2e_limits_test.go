package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testutil"
)

// needFDs makes sure this process may open n more descriptors, raising
// the soft RLIMIT_NOFILE to the hard limit if needed, and skips the test
// when even the hard limit is too low.
func needFDs(t *testing.T, n int) {
	t.Helper()
	var lim syscall.Rlimit
	testutil.Must(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	want := uint64(testutil.CountFDs(t) + n)
	if lim.Cur >= want {
		return
	}
	if lim.Max < want {
		t.Skipf("needs %d descriptors; RLIMIT_NOFILE is %d (hard %d)", want, lim.Cur, lim.Max)
	}
	old := lim
	lim.Cur = lim.Max
	testutil.Must(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim))
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

// fdCount returns the number of descriptors pid holds.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	testutil.Must(t, err)
	return len(ents)
}

// TestStatusPastIdleTriggerConnections holds 1,000 connections open on
// the trigger socket of a supervisor process, none of them sending a
// byte: status still answers at once, and each idle connection is cut off
// with an err: line after the line timeout, its descriptor closed.
func TestStatusPastIdleTriggerConnections(t *testing.T) {
	const idle = 1000
	needFDs(t, idle+100)
	f := newFixture(t)
	sup := f.startSupervisor(t, nil)
	pid := sup.cmd.Process.Pid
	trigger := filepath.Join(f.dir, "trigger.sock")
	before := fdCount(t, pid)
	conns := make([]net.Conn, 0, idle)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	dialed := time.Now()
	for range idle {
		c, err := net.DialTimeout("unix", trigger, 5*time.Second)
		if err != nil {
			t.Fatalf("idle connection %d: %v", len(conns)+1, err)
		}
		conns = append(conns, c)
	}
	// The supervisor holds them all until the first reaches its line
	// timeout: check that it does (give or take the few descriptors of
	// its own it opens and closes meanwhile), unless dialing alone took so
	// long (a loaded machine) that the first may be cut off already.
	const slack = 3
	if took := time.Since(dialed); took < lineTimeout/2 {
		for n := fdCount(t, pid); n < before+idle-slack; n = fdCount(t, pid) {
			if time.Since(dialed) > lineTimeout*9/10 {
				t.Fatalf("the supervisor holds %d descriptors, %d before the %d idle connections", n, before, idle)
			}
			time.Sleep(5 * time.Millisecond)
		}
	} else {
		t.Logf("dialing %d connections took %v: not checking that the supervisor holds them all", idle, took)
	}

	start := time.Now()
	reply, err := exchangeErr(trigger, "status\n")
	took := time.Since(start)
	if err != nil || !strings.HasPrefix(reply, "ok: {") {
		t.Fatalf("status with %d idle connections open: %q, %v (after %v)", idle, reply, err, took)
	}
	t.Logf("status round trip with %d idle trigger connections open: %v", idle, took)
	if took > 2*time.Second {
		t.Errorf("status took %v with %d idle connections open", took, idle)
	}
	if st := f.status(t); st.Incumbent == nil {
		t.Fatalf("status command: %+v", st)
	}

	c := conns[0]
	c.SetReadDeadline(time.Now().Add(lineTimeout + 10*time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "err: no command line within") {
		t.Fatalf("an idle connection got %q, %v", line, err)
	}
	// Every idle connection is let go of: the supervisor is back to the
	// descriptors it held before.
	testutil.WaitFor(t, "the supervisor to close the idle connections", func() bool {
		return fdCount(t, pid) <= before+slack
	})
}

// TestLowFDLimitWarning starts a supervisor process under RLIMIT_NOFILE
// 20 (soft and hard, as ulimit -n 20 sets them), under which a handoff
// cannot run: it starts, and says at start what the limit is and what a
// handoff needs; the handoff then indeed fails. Under the usual limit it
// says nothing of the kind.
func TestLowFDLimitWarning(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skipf("needs prlimit (util-linux) to start the supervisor under a low RLIMIT_NOFILE: %v", err)
	}
	for _, tc := range []struct {
		name    string
		wrapper []string
		warn    bool
	}{
		{"ulimit -n 20", []string{prlimit, "--nofile=20:20", "--"}, true},
		{"usual limit", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			sup, records := f.startSupervisorLoggedVia(t, tc.wrapper)
			_, pid := f.hello(t)
			defer f.stopAndCheck(t, sup, pid)
			// "supervisor ready" follows the check in the log.
			testutil.WaitFor(t, "the ready log line", func() bool {
				n, _ := count(records(), func(r logRecord) bool { return r.msg() == "supervisor ready" })
				return n == 1
			})
			var warning logRecord
			n, which := count(records(), func(r logRecord) bool {
				if r.msg() == lowFDLimitMsg {
					warning = r
					return true
				}
				return false
			})
			if !tc.warn {
				if n != 0 {
					t.Fatalf("warned under the usual limit:%s", which)
				}
				return
			}
			if n != 1 || warning.int("soft_limit") != 20 || warning.int("hard_limit") != 20 ||
				warning.int("handoff_opens") != handoffFDs || warning.int("open") < 10 ||
				!strings.Contains(warning.str("advice"), fmt.Sprintf("raise the hard limit (now 20) to at least %d", warning.int("open")+handoffFDs+1)) {
				t.Fatalf("want one warning naming the limit (20) and what a handoff needs, got %d:%s", n, which)
			}
			t.Logf("%s: %s", warning.msg(), warning.str("advice"))
			out, _, code := f.cli(t, "upgrade", "--config", f.cfg)
			if code != exitFailure || !strings.Contains(out, "too many open files") {
				t.Fatalf("upgrade under the low limit: exit %d, %q", code, out)
			}
			// The incumbent was never contacted: it serves on, and nobody
			// says it failed to resume or will be restarted.
			if strings.Contains(out, "resume") || strings.Contains(out, "restarted") {
				t.Fatalf("upgrade under the low limit says the incumbent failed to resume: %q", out)
			}
			if _, again := f.hello(t); again != pid {
				t.Fatalf("pid %d answers after the failed handoff, want the incumbent %d", again, pid)
			}
		})
	}
}
