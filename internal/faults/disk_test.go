package faults

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handoff-go/handoff/internal/testutil"
)

// Successor builds as wrapper scripts around the one kvd binary.
var (
	scriptV2  = `exec $KVD --build-id v2 "$@"`
	scriptBad = `exec $KVD --build-id bad --fail-before-ready "$@"` // exits after Begin, holding the lock
)

// checkRefused checks a refused write: status code and a body naming
// every one of want.
func checkRefused(t *testing.T, what string, code int, body string, wantCode int, want ...string) {
	t.Helper()
	if code != wantCode {
		t.Fatalf("%s: PUT = %d %s, want %d", what, code, body, wantCode)
	}
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Fatalf("%s: PUT = %d %s, which does not say %q", what, code, body, w)
		}
	}
}

// checkDegraded checks that kvd serves every acknowledged write, and
// that /healthz and /stats say writes fail, naming want.
func (c *cluster) checkDegraded(want string) {
	c.t.Helper()
	c.checkReads()
	code, body, err := c.do("GET", "/healthz", "")
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
		c.t.Fatalf("GET /healthz = %d %s, %v; want 503 naming %q", code, body, err, want)
	}
	if st := c.stats(); st.Writable || !strings.Contains(st.WriteError, want) {
		c.t.Fatalf("/stats = %+v; want not writable, naming %q", st, want)
	}
}

// TestDataDirFull is issue 12's "disk full turns degraded into down":
// kvd's data directory on a full filesystem serves every acknowledged
// write and refuses writes with 507 naming ENOSPC; a handoff that fails
// leaves the incumbent serving, one that can commit commits; freeing space
// makes writes work again by themselves; a daemon killed on the full disk
// is restarted by the supervisor and serves reads; nothing acknowledged is
// lost, live or in kvd --dump.
func TestDataDirFull(t *testing.T) {
	binaries(t)
	dir := testutil.ShortDir(t)
	data := filepath.Join(dir, "data")
	mountTmpfs(t, data, "size=1m,mode=0700")
	c := newCluster(t, dir, options{data: data, scripts: map[string]string{"kvd-v2": scriptV2, "kvd-bad": scriptBad}})
	c.putOK(initialWrites)

	filler := fill(t, data)
	code, body, more := c.putUntilRefused(100)
	checkRefused(t, "full disk", code, body, http.StatusInsufficientStorage, "no space left on device")
	t.Logf("disk full: %d writes acknowledged before, %d more into the last page, then %d %s", initialWrites, more, code, strings.TrimSpace(body))
	c.checkDegraded("no space left on device")
	incumbent := c.stats().PID

	// A handoff that fails after the seal: the incumbent retakes the lock
	// and reopens its store on the full disk, and serves on.
	c.mustAbort(c.scripts["kvd-bad"])
	code, body = c.put()
	checkRefused(t, "full disk, after the rollback", code, body, http.StatusInsufficientStorage, "no space left on device")
	c.checkDegraded("no space left on device")

	// The disk lets a successor open the log: the handoff commits, and
	// the successor serves as the incumbent did.
	c.mustCommit(c.scripts["kvd-v2"])
	c.checkReads()
	code, body = c.put()
	checkRefused(t, "full disk, after the commit", code, body, http.StatusInsufficientStorage, "no space left on device")

	// Space again: the next write works, without a restart.
	testutil.Must(t, os.Remove(filler))
	c.putOK(5)
	if st := c.stats(); !st.Writable {
		t.Fatalf("after freeing space and a good write, /stats = %+v", st)
	}
	t.Logf("space freed: writes work again by themselves (pid %d, was %d before the commit)", c.stats().PID, incumbent)

	// Killed on a full disk: the supervisor restarts the known-good binary,
	// which opens the store on the full disk and serves reads.
	filler = fill(t, data)
	c.putUntilRefused(100)
	st := c.kill()
	if st.BuildID != "v2" {
		t.Errorf("the restarted daemon is build %q, want the known-good v2", st.BuildID)
	}
	c.checkReads()
	code, body = c.put()
	checkRefused(t, "full disk, after a restart", code, body, http.StatusInsufficientStorage, "no space left on device")
	c.checkDegraded("no space left on device")
	t.Logf("restarted on the full disk as pid %d: %d acknowledged writes served", st.PID, len(c.acked))

	testutil.Must(t, os.Remove(filler))
	c.putOK(5)
	c.stop()
	c.checkDump(data)
}
