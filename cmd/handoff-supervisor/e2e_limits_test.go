package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
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
// with an err: line after the line timeout.
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
	for range idle {
		c, err := net.DialTimeout("unix", trigger, 5*time.Second)
		if err != nil {
			t.Fatalf("idle connection %d: %v", len(conns)+1, err)
		}
		conns = append(conns, c)
	}
	testutil.WaitFor(t, "the supervisor to hold the idle connections", func() bool {
		return fdCount(t, pid) >= before+idle
	})

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
}
