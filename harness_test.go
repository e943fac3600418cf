package handoff

import (
	"bufio"
	"context"
	"errors"
	"fmt"
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

	"go.uber.org/goleak"
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
}

// shortDir returns a directory whose paths fit in a unix socket address.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ho")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() || os.Getenv("HANDOFF_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

func newCluster(t *testing.T, cfg SupervisorConfig, coldEnv ...string) *cluster {
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
	sup, err := NewSupervisor(cfg)
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
	return c
}

// spec is a SpawnSpec for the test daemon with a fresh build id and env.
func (c *cluster) spec(env ...string) SpawnSpec {
	c.build++
	return SpawnSpec{
		Binary:     os.Args[0],
		Args:       []string{"-test.run=^$"},
		Env:        append(append([]string{"TD_BUILD=v" + strconv.Itoa(c.build)}, c.base...), env...),
		DrainGrace: 10 * time.Second,
		Deadline:   30 * time.Second,
	}
}

func (c *cluster) handoff(env ...string) HandoffOutcome {
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
	stop  chan struct{}
	done  chan struct{}
	ok    atomic.Int64
	mu    sync.Mutex
	fails []error
	acked []uint64 // acknowledged write revisions
	pids  map[int]bool
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
	if len(l.fails) > 0 {
		t.Errorf("%d of %d requests failed; first: %v", len(l.fails), int(l.ok.Load())+len(l.fails), l.fails[0])
		for _, err := range l.fails {
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
// the data, and no two processes ever held the lock at once.
func (c *cluster) verify(l *load) {
	c.t.Helper()
	if l != nil {
		l.check(c.t)
	}
	b, err := os.ReadFile(filepath.Join(c.dir, "violations"))
	if err == nil {
		c.t.Errorf("lock probe saw two holders:\n%s", b)
	}
	data, _ := os.ReadFile(filepath.Join(c.dir, "revisions"))
	have := map[uint64]bool{}
	for _, f := range strings.Fields(string(data)) {
		v, _ := strconv.ParseUint(f, 10, 64)
		have[v] = true
	}
	if l != nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, rev := range l.acked {
			if !have[rev] {
				c.t.Errorf("acknowledged write %d is lost", rev)
				return
			}
		}
	}
	// The daemon serving now holds the lock.
	if _, err := AcquireDataDirLock(c.dir); !errors.Is(err, ErrLockHeld) {
		c.t.Errorf("after the test nobody holds the lock (AcquireDataDirLock: %v)", err)
	}
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

// checkLeaks checks for leaked goroutines after every other cleanup of
// the test has run (cleanups run last-registered first).
func checkLeaks(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
