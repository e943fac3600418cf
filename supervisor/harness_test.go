package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testutil"
	"github.com/handoff-go/handoff/internal/wire"
)

// cluster is a supervisor embedded in the test process with a test daemon
// (the re-executed test binary) on a loopback TCP listener.
type cluster struct {
	t     *testing.T
	dir   string // data directory
	sock  string // control socket
	addr  string // TCP listener address
	ln    net.Listener
	sup   *Supervisor
	base  []string // environment of every daemon
	build int
	probe *lockProber
}

func newCluster(t *testing.T, cfg Config, coldEnv ...string) *cluster {
	t.Helper()
	root := shortDir(t)
	c := &cluster{t: t, dir: filepath.Join(root, "data"), sock: filepath.Join(root, "ctl.sock")}
	if err := os.Mkdir(c.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.ln, c.addr = ln, ln.Addr().String()
	cfg.ControlSocket = c.sock
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	sup, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.sup = sup
	if err := sup.AddListener("tcp", ln); err != nil {
		t.Fatal(err)
	}
	c.base = []string{"HANDOFF_TEST_ROLE=daemon", "TD_DATA=" + c.dir, "TD_CONTROL=" + c.sock}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := sup.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
		sup.Close()
		ln.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := sup.ColdStart(ctx, c.spec(coldEnv...)); err != nil {
		t.Fatal(err)
	}
	c.probe = startLockProber(t, c.dir)
	return c
}

// spec is a SpawnSpec for the test daemon with the next build id and env.
// Build ids alternate between v1 and v2, as a package manager swapping
// two versions would.
func (c *cluster) spec(env ...string) SpawnSpec {
	c.build++
	return SpawnSpec{
		Binary:     os.Args[0],
		Args:       []string{"-test.run=^$"},
		Env:        append(append([]string{"TD_BUILD=" + c.buildID()}, c.base...), env...),
		DrainGrace: 10 * time.Second,
		Deadline:   30 * time.Second,
	}
}

// buildID is the build id of the last spec.
func (c *cluster) buildID() string { return "v" + strconv.Itoa(2-c.build%2) }

func (c *cluster) handoff(env ...string) Outcome {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := c.sup.PerformHandoff(ctx, c.spec(env...))
	if err != nil {
		c.t.Fatalf("PerformHandoff: %v (outcome %+v)", err, out)
	}
	return out
}

// request sends one line on a fresh connection and returns the revision
// and the pid that served it.
func request(addr, line string) (rev uint64, pid int, err error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		return 0, 0, err
	}
	resp, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, 0, fmt.Errorf("reading the reply to %q: %w", line, err)
	}
	if _, err := fmt.Sscanf(resp, "ok %d %d", &rev, &pid); err != nil {
		return 0, 0, fmt.Errorf("reply %q: %w", resp, err)
	}
	return rev, pid, nil
}

// load dials the listener in a loop (fresh connection per request,
// alternating writes and reads) until stopped, bounded in count and time.
type load struct {
	stop    chan struct{}
	done    chan struct{}
	checked bool
	kills   int // daemons the test kills while they serve (see check)
	ok      atomic.Int64
	mu      sync.Mutex
	fails   []error
	acked   []uint64 // acknowledged write revisions
	pids    map[int]bool
}

func startLoad(t *testing.T, addr string) *load {
	l := &load{stop: make(chan struct{}), done: make(chan struct{}), pids: map[int]bool{}}
	go func() {
		defer close(l.done)
		deadline := time.Now().Add(3 * time.Minute)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < 200000 && time.Now().Before(deadline); i++ {
			select {
			case <-l.stop:
				return
			case <-tick.C:
			}
			line := "r"
			if i%2 == 0 {
				line = "w"
			}
			rev, pid, err := request(addr, line)
			l.mu.Lock()
			if err != nil {
				l.fails = append(l.fails, err)
			} else {
				l.ok.Add(1)
				l.pids[pid] = true
				if line == "w" {
					l.acked = append(l.acked, rev)
				}
			}
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { l.finish() })
	return l
}

func (l *load) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

// check stops the load and fails the test on any failed request.
func (l *load) check(t *testing.T) {
	t.Helper()
	l.finish()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.checked {
		return
	}
	l.checked = true
	fails := l.fails
	// A killed daemon resets the one connection it may have accepted (the
	// load has one in flight at a time); nothing else may fail.
	for i := 0; i < l.kills && len(fails) > 0; {
		err := fails[0]
		if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) {
			break
		}
		t.Logf("allowed: a connection accepted by a killed daemon: %v", err)
		fails = fails[1:]
		i++
	}
	if len(fails) > 0 {
		t.Errorf("%d of %d requests failed; first: %v", len(fails), int(l.ok.Load())+len(l.fails), fails[0])
		for _, err := range fails {
			if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("refused or reset: %v", err)
				break
			}
		}
	}
	if l.ok.Load() == 0 {
		t.Errorf("the load made no successful request")
	}
}

// verify checks the invariants after a test: every acknowledged write is in
// the data, no two processes ever wrote (or held the lock) at once, and the
// daemon serving now holds the lock.
func (c *cluster) verify(l *load) {
	c.t.Helper()
	verifyData(c.t, c.dir, l, c.probe)
}

// verifyData stops the load and the lock prober and checks the data
// directory: no violation recorded by a daemon or by the prober; records
// numbered 1, 2, 3, ... whose writer pids never interleave (once another
// pid wrote, an earlier writer never writes again); every acknowledged
// write present; and exactly one process holding the lock.
func verifyData(t *testing.T, dir string, l *load, p *lockProber) {
	t.Helper()
	if l != nil {
		l.check(t)
	}
	if p != nil {
		p.check(t)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "violations")); err == nil {
		t.Errorf("a daemon recorded violations:\n%s", b)
	}
	recs := readRecords(t, dir)
	have := map[uint64]bool{}
	done := map[int]bool{} // writers whose run has ended
	for i, r := range recs {
		if r.rev != uint64(i+1) {
			t.Errorf("record %d has revision %d: two writers or a lost record", i+1, r.rev)
			break
		}
		if i > 0 && recs[i-1].pid != r.pid {
			done[recs[i-1].pid] = true
		}
		if done[r.pid] {
			t.Errorf("revision %d written by pid %d after pid %d had taken over", r.rev, r.pid, recs[i-1].pid)
			break
		}
		have[r.rev] = true
	}
	if l != nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, rev := range l.acked {
			if !have[rev] {
				t.Errorf("acknowledged write %d is lost", rev)
				return
			}
		}
	}
	// The daemon serving now holds the lock, alone.
	if h := lockHolders(lockFileInode(t, dir)); len(h) != 1 {
		t.Errorf("after the test the lock holders are %v, want exactly one", h)
	}
}

type record struct {
	rev uint64
	pid int
}

// readRecords reads the test daemon's "<rev> <pid>" records.
func readRecords(t *testing.T, dir string) []record {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "revisions"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var recs []record
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		var r record
		if _, err := fmt.Sscanf(line, "%d %d", &r.rev, &r.pid); err != nil {
			t.Fatalf("record %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	return recs
}

// lockProber checks the lock from outside the daemons for a whole test: it
// keeps its own descriptor of the lock file and, again and again, tries
// flock(LOCK_EX|LOCK_NB). Each time it gets the lock (a moment in a
// handoff's gap when no daemon holds it) it keeps it for a millisecond and
// checks that the records did not grow meanwhile: nobody writes without
// the lock. Each round it also checks /proc/locks for more than one holder.
type lockProber struct {
	stop, done chan struct{}
	mu         sync.Mutex
	violations []string
	rounds     int
	held       int
}

func startLockProber(t *testing.T, dir string) *lockProber {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, wire.LockFileName), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	ino := lockFileInode(t, dir)
	recs := filepath.Join(dir, "revisions")
	size := func() int64 {
		st, err := os.Stat(recs)
		if err != nil {
			return 0
		}
		return st.Size()
	}
	p := &lockProber{stop: make(chan struct{}), done: make(chan struct{})}
	fd := int(f.Fd())
	go func() {
		defer close(p.done)
		defer f.Close()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			var bad []string
			if h := lockHolders(ino); len(h) > 1 {
				bad = append(bad, fmt.Sprintf("/proc/locks shows %d holders: %v", len(h), h))
			}
			held := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB) == nil
			if held {
				before := size()
				time.Sleep(time.Millisecond) // the window in which nobody may write
				if after := size(); after != before {
					bad = append(bad, fmt.Sprintf("the records grew from %d to %d bytes while the prober held the lock", before, after))
				}
				syscall.Flock(fd, syscall.LOCK_UN)
			}
			p.mu.Lock()
			p.rounds++
			if held {
				p.held++
			}
			p.violations = append(p.violations, bad...)
			p.mu.Unlock()
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(p.finish)
	return p
}

func (p *lockProber) finish() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// check stops the prober and fails the test on any violation it saw.
func (p *lockProber) check(t *testing.T) {
	t.Helper()
	p.finish()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, v := range p.violations {
		t.Errorf("lock prober: %s", v)
	}
	if p.rounds == 0 {
		t.Errorf("the lock prober never ran")
	}
	t.Logf("lock prober: %d rounds, lock free in %d", p.rounds, p.held)
}

// servingPID asks the listener who serves.
func (c *cluster) servingPID() int {
	c.t.Helper()
	_, pid, err := request(c.addr, "r")
	if err != nil {
		c.t.Fatalf("request: %v", err)
	}
	return pid
}

// lockFileInode returns the inode of dir's lock file.
func lockFileInode(t *testing.T, dir string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, wire.LockFileName), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

var (
	shortDir   = testutil.ShortDir
	checkLeaks = testutil.CheckLeaks
	countFDs   = testutil.CountFDs
)

func testLogger(*testing.T) *slog.Logger { return testutil.Logger() }
