package faults

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

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

// journal is what these tests read of the supervisor's journal.
type journal struct {
	Phase        string `json:"phase"`
	IncumbentPID int    `json:"incumbent_pid"`
	SuccessorPID int    `json:"successor_pid"`
}

func readJournal(t *testing.T, path string) (journal, []byte) {
	t.Helper()
	raw, err := os.ReadFile(path)
	testutil.Must(t, err)
	var j journal
	if err := json.Unmarshal(raw, &j); err != nil {
		t.Fatalf("the journal %s does not decode (half-written?): %v\n%s", path, err, raw)
	}
	return j, raw
}

// checkOnly checks that dir holds exactly names: no temporary file left.
func checkOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	testutil.Must(t, err)
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	slices.Sort(got)
	slices.Sort(names)
	if !slices.Equal(got, names) {
		t.Fatalf("%s holds %q, want %q", dir, got, names)
	}
}

// TestJournalDirFull: the supervisor's journal on a full filesystem. The
// supervisor keeps serving; a handoff whose journal record cannot be
// written aborts (the record names the successor, which a restarted
// supervisor must find and kill: without it the successor could not be
// told from the incumbent), whether it is the first record, before the
// incumbent drained, or the committing one, after the seal, when the
// incumbent takes its lock back. The journal is left a complete record, no
// temporary file beside it, and with space again the next handoff commits
// and records the new incumbent.
func TestJournalDirFull(t *testing.T) {
	binaries(t)
	dir := testutil.ShortDir(t)
	jdir := filepath.Join(dir, "journal-dir")
	mountTmpfs(t, jdir, "size=64k")
	// A successor that waits at a FIFO before it starts kvd: the
	// supervisor has written its first record (spawning) by then.
	gatePath := filepath.Join(dir, "gate")
	testutil.Must(t, syscall.Mkfifo(gatePath, 0o600))
	gate, err := os.OpenFile(gatePath, os.O_RDWR, 0) // never blocks; keeps what is written until read
	testutil.Must(t, err)
	t.Cleanup(func() { gate.Close() })
	c := newCluster(t, dir, options{journalDir: jdir, scripts: map[string]string{
		"kvd-v2":       scriptV2,
		"kvd-v2-gated": fmt.Sprintf(`read go < %q; exec $KVD --build-id v2 "$@"`, gatePath),
	}})
	c.putOK(initialWrites)
	j, before := readJournal(t, c.journal)
	if j.Phase != "idle" || j.IncumbentPID != c.stats().PID {
		t.Fatalf("journal before the handoff: %+v, want idle with pid %d", j, c.stats().PID)
	}

	t.Run("first record", func(t *testing.T) {
		filler := fill(t, jdir)
		defer os.Remove(filler)
		c.mustAbort(c.scripts["kvd-v2"], "could not write its journal", "no space left on device")
		c.checkNotDrained()
		c.checkReads()
		c.putOK(3)
		if _, after := readJournal(t, c.journal); !bytes.Equal(after, before) {
			t.Errorf("the journal changed although no write could succeed:\n%s", after)
		}
		checkOnly(t, jdir, "journal", "filler")
	})

	t.Run("committing record", func(t *testing.T) {
		// The journal fills once its first record (spawning) is written,
		// while the successor waits at the gate: before the committing
		// record.
		res := make(chan string, 1)
		incumbent := c.stats().PID
		fds, kids := c.supervisorFDs(), c.children()
		go func() {
			line, ok := c.upgrade(c.scripts["kvd-v2-gated"])
			if ok {
				line = "committed: " + line
			}
			res <- line
		}()
		deadline := time.Now().Add(startTimeout)
		for {
			if j, _ := readJournal(t, c.journal); j.Phase == "spawning" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no spawning record within %v", startTimeout)
			}
			time.Sleep(pollInterval)
		}
		filler := fill(t, jdir)
		defer os.Remove(filler)
		_, err := gate.WriteString("go\n")
		testutil.Must(t, err)
		var line string
		select {
		case line = <-res:
		case <-time.After(cliTimeout):
			t.Fatal("the handoff did not end")
		}
		if !strings.Contains(line, "rolled back") || !strings.Contains(line, "could not write its journal") {
			t.Fatalf("handoff with the journal filling up: %s; want a rollback naming the journal", line)
		}
		t.Logf("handoff with the journal filling after its first record: %s", line)
		if o := c.lastOutcome(); o.SealMS == 0 {
			t.Errorf("the handoff did not get to the seal (outcome %+v): the committing record was not the one that failed", o)
		}
		if st := c.stats(); st.PID != incumbent {
			t.Fatalf("pid %d serves after the rollback, not the incumbent %d", st.PID, incumbent)
		}
		if got := c.children(); !slices.Equal(got, kids) {
			t.Fatalf("children %v before, %v after", kids, got)
		}
		c.checkFDs(fds)
		c.checkReads()
		c.putOK(3)
		j, _ := readJournal(t, c.journal)
		t.Logf("journal left as its last complete record: phase %s, incumbent %d, successor %d", j.Phase, j.IncumbentPID, j.SuccessorPID)
		checkOnly(t, jdir, "journal", "filler")
	})

	c.mustCommit(c.scripts["kvd-v2"])
	if j, _ := readJournal(t, c.journal); j.Phase != "idle" || j.IncumbentPID != c.stats().PID {
		t.Errorf("journal after the commit: %+v, want idle with pid %d", j, c.stats().PID)
	}
	checkOnly(t, jdir, "journal")
	c.putOK(3)
	c.stop()
	c.checkDump(c.data)
}

// TestControlSocketDirFull: the control socket's directory has no inode
// left (a tmpfs with nr_inodes), so a successor cannot bind its control
// socket: the handoff aborts, the incumbent serves on, and with an inode
// free the next handoff commits.
//
// The successor binds at its temporary name before it says it is ready
// to begin, but the library ignores a failure there and tries again after
// the seal (AnnounceAndBind), where the successor exits without telling
// the supervisor why: so the incumbent is drained and sealed for nothing
// and the reason is only "the successor exited". The test logs both.
func TestControlSocketDirFull(t *testing.T) {
	binaries(t)
	dir := testutil.ShortDir(t)
	cdir := filepath.Join(dir, "run")
	mountTmpfs(t, cdir, "size=64k,nr_inodes=16")
	c := newCluster(t, dir, options{controlDir: cdir, scripts: map[string]string{"kvd-v2": scriptV2}})
	c.putOK(initialWrites)
	var fillers []string
	for i := 0; ; i++ {
		p := filepath.Join(cdir, fmt.Sprintf("filler-%d", i))
		f, err := os.Create(p)
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		testutil.Must(t, err)
		f.Close()
		fillers = append(fillers, p)
	}
	c.mustAbort(c.scripts["kvd-v2"])
	o := c.lastOutcome()
	t.Logf("successor without an inode for its control socket: drained %.1f ms, accept gap %.1f ms, reason %q (the successor logged: %s)",
		o.DrainMS, o.AcceptGapMS, o.AbortReason, lastLine(c.log(), "bind: no space left on device"))
	c.checkReads()
	c.putOK(3)
	for _, p := range fillers {
		testutil.Must(t, os.Remove(p))
	}
	c.mustCommit(c.scripts["kvd-v2"])
	c.putOK(3)
	c.stop()
	c.checkDump(c.data)
}

// lastLine returns the last line of log that contains want, or "(none)".
func lastLine(log, want string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], want) {
			return strings.TrimSpace(lines[i])
		}
	}
	return "(none)"
}
