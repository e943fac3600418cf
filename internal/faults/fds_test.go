package faults

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testutil"
)

// maxPoints bounds how many descriptor limits a subtest tries before the
// handoff must commit.
const maxPoints = 16

// handoffAt lowers pid's descriptor limit to n, hands off to binary, and
// puts the limit back. A handoff that rolls back must name the missing
// descriptors (when want is set) and leave the incumbent serving, the
// supervisor holding the descriptors and children it held before.
func (c *cluster) handoffAt(pid, n int, binary, want string) (committed bool, line string) {
	c.t.Helper()
	before := c.stats().PID
	fds, kids, incFDs := c.supervisorFDs(), c.children(), countFDs(c.t, before)
	restore := prlimit(c.t, pid, n)
	line, committed = c.upgrade(binary)
	restore()
	if committed {
		st := c.stats()
		if st.PID == before {
			c.t.Fatalf("handoff committed (%s) but pid %d still serves", line, before)
		}
		c.awaitOnlyChild(st.PID)
		return true, line
	}
	if want != "" && !strings.Contains(line, want) {
		c.t.Fatalf("limit %d: handoff rolled back without saying %q: %s", n, want, line)
	}
	if st := c.stats(); st.PID != before {
		c.t.Fatalf("limit %d: pid %d serves after the rollback, not the incumbent %d: %s", n, st.PID, before, line)
	}
	if got := c.children(); fmt.Sprint(got) != fmt.Sprint(kids) {
		c.t.Fatalf("limit %d: the supervisor's children were %v, now %v", n, kids, got)
	}
	c.checkFDs(fds)
	c.checkIncumbentFDs(before, incFDs)
	c.checkReads()
	c.putOK(1)
	return false, line
}

// TestDescriptorsRunOut: RLIMIT_NOFILE too low in the supervisor, the
// incumbent or the successor, at every limit from "nothing left" up to
// the first that lets a handoff commit. Each handoff rolls back with the
// incumbent serving and nothing leaked, or commits; with the limit raised
// again the next handoff commits. Every acknowledged write survives.
func TestDescriptorsRunOut(t *testing.T) {
	binaries(t)
	t.Run("supervisor", func(t *testing.T) {
		c := newCluster(t, testutil.ShortDir(t), options{scripts: map[string]string{"kvd-v2": scriptV2}})
		c.putOK(initialWrites)
		sup := c.sup.Process.Pid
		base := countFDs(t, sup)

		// Not even the trigger connection can be accepted: it waits in the
		// backlog, the supervisor saying why, until the limit is raised.
		mark := len(c.log())
		restore := prlimit(t, sup, base-3)
		res := make(chan string, 1)
		go func() {
			line, ok := c.upgrade(c.scripts["kvd-v2"])
			res <- fmt.Sprintf("%v %s", ok, line)
		}()
		deadline := time.Now().Add(startTimeout)
		for !strings.Contains(c.log()[mark:], "trigger socket: accept failed") {
			if time.Now().After(deadline) {
				restore()
				t.Fatalf("the supervisor did not say within %v that it cannot accept the trigger", startTimeout)
			}
			time.Sleep(pollInterval)
		}
		c.checkReads() // the daemon is not short of anything
		restore()
		select {
		case r := <-res:
			if !strings.HasPrefix(r, "true ") {
				t.Fatalf("the handoff waiting for the supervisor's descriptors: %s", r)
			}
			c.awaitOnlyChild(c.stats().PID)
			t.Logf("limit %d (%d open): the trigger waited in the backlog; once raised: %s", base-3, base, r)
		case <-time.After(cliTimeout):
			t.Fatal("the waiting handoff did not end once the limit was raised")
		}

		for n := base; ; n++ {
			committed, line := c.handoffAt(sup, n, c.scripts["kvd-v2"], "too many open files")
			t.Logf("limit %d (%d open): %s", n, base, line)
			if committed {
				break
			}
			if n == base+maxPoints {
				t.Fatalf("no handoff committed with %d descriptors to spare", maxPoints)
			}
		}
		c.mustCommit(c.scripts["kvd-v2"])
		// Journal writes failed with EMFILE on the way: none left a
		// temporary file.
		if tmps, _ := filepath.Glob(c.journal + ".tmp-*"); len(tmps) > 0 {
			t.Errorf("temporary journal files left: %v", tmps)
		}
		c.stop()
		c.checkDump(c.data)
	})

	t.Run("incumbent", func(t *testing.T) {
		c := newCluster(t, testutil.ShortDir(t), options{scripts: map[string]string{"kvd-v2": scriptV2}})
		c.putOK(initialWrites)
		inc := c.stats().PID
		base := countFDs(t, inc)
		// At the limit the incumbent cannot accept the supervisor's
		// connection: the supervisor gives up after its hello timeout,
		// and the incumbent, told nothing, serves on. (The count may hold
		// the connection of the last request, about to close: two below
		// it is at the limit for sure.)
		committed, line := c.handoffAt(inc, base-2, c.scripts["kvd-v2"], "did not answer on its control socket")
		if committed {
			t.Fatalf("limit %d (%d open): committed: %s", base-2, base, line)
		}
		t.Logf("limit %d (%d open): %s", base-2, base, line)
		for n := base - 1; ; n++ {
			committed, line := c.handoffAt(c.stats().PID, n, c.scripts["kvd-v2"], "")
			if !committed && !strings.Contains(line, "too many open files") && !strings.Contains(line, "did not answer on its control socket") {
				t.Fatalf("limit %d: handoff rolled back without naming the descriptors: %s", n, line)
			}
			t.Logf("limit %d (%d open): %s", n, base, line)
			if committed {
				break
			}
			if n == base+maxPoints {
				t.Fatalf("no handoff committed with %d descriptors to spare", maxPoints)
			}
		}
		c.mustCommit(c.scripts["kvd-v2"])
		c.stop()
		c.checkDump(c.data)
	})

	t.Run("successor", func(t *testing.T) {
		scripts := map[string]string{"kvd-v2": scriptV2}
		// The successor starts with stdin, stdout, stderr, the listener
		// and its end of the control socketpair: 5 descriptors.
		const first = 5
		for n := first; n <= first+maxPoints; n++ {
			scripts[fmt.Sprintf("kvd-v2-nofile-%d", n)] = fmt.Sprintf(`ulimit -n %d || exit 99
exec $KVD --build-id v2 "$@"`, n)
		}
		c := newCluster(t, testutil.ShortDir(t), options{scripts: scripts})
		c.putOK(initialWrites)
		for n := first; ; n++ {
			committed, line := c.handoffAtScript(c.scripts[fmt.Sprintf("kvd-v2-nofile-%d", n)])
			if committed {
				t.Logf("successor limit %d: %s", n, line)
				break
			}
			t.Logf("successor limit %d: %s (the successor said: %s)", n, line, lastLine(c.log(), "kvd: "))
			if n == first+maxPoints {
				t.Fatalf("no handoff committed with a successor limit up to %d", n)
			}
		}
		c.mustCommit(c.scripts["kvd-v2"])
		c.stop()
		c.checkDump(c.data)
	})
}

// handoffAtScript hands off to a wrapper script that lowers its own limit:
// it rolls back with the incumbent serving and nothing leaked, or commits.
func (c *cluster) handoffAtScript(script string) (committed bool, line string) {
	c.t.Helper()
	before := c.stats().PID
	fds, kids, incFDs := c.supervisorFDs(), c.children(), countFDs(c.t, before)
	line, committed = c.upgrade(script)
	if committed {
		c.awaitOnlyChild(c.stats().PID)
		return true, line
	}
	if st := c.stats(); st.PID != before {
		c.t.Fatalf("pid %d serves after the rollback, not the incumbent %d: %s", st.PID, before, line)
	}
	if got := c.children(); fmt.Sprint(got) != fmt.Sprint(kids) {
		c.t.Fatalf("the supervisor's children were %v, now %v", kids, got)
	}
	c.checkFDs(fds)
	c.checkIncumbentFDs(before, incFDs)
	c.checkReads()
	c.putOK(1)
	return false, line
}
