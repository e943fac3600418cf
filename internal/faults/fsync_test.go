package faults

import (
	"net/http"
	"testing"

	"github.com/handoff-go/handoff/internal/testutil"
)

// TestFsyncFailure: the incumbent's fsync of its log fails in the drain
// or in the seal (kvd --fail-fsync-at, which fails it with EIO as a
// failing disk would). The handoff aborts, the supervisor's reason naming
// the failed fsync, and never commits (a second try aborts too); the
// incumbent keeps the lock and serves every acknowledged write, and
// refuses writes with 500 saying why, for good: after a failed fsync the
// kernel may have dropped what it could not write, so the store never
// retries one. Killing it is the way back: the supervisor restarts it,
// it recovers from disk and takes writes. kvd --dump has every
// acknowledged write.
func TestFsyncFailure(t *testing.T) {
	binaries(t)
	for _, phase := range []string{"drain", "seal"} {
		t.Run(phase, func(t *testing.T) {
			c := newCluster(t, testutil.ShortDir(t), options{args: []string{"--fail-fsync-at", phase},
				scripts: map[string]string{"kvd-v2": scriptV2}})
			c.putOK(initialWrites)
			injected := "fsync failure injected by --fail-fsync-at " + phase
			c.mustAbort(c.scripts["kvd-v2"], injected, "input/output error")
			c.checkReads()
			code, body := c.put()
			checkRefused(t, "after the failed fsync", code, body, http.StatusInternalServerError, "store: failed", injected)
			c.checkDegraded(injected)
			c.mustAbort(c.scripts["kvd-v2"], injected)
			c.checkReads()

			st := c.kill()
			t.Logf("killed the failed incumbent: pid %d recovered from disk, %d keys at revision %d", st.PID, st.Keys, st.Revision)
			c.checkReads()
			c.putOK(3)
			c.stop()
			c.checkDump(c.data)
		})
	}
}
