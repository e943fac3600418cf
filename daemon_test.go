package handoff

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as the daemon: TestMain runs testDaemon when
// HANDOFF_TEST_ROLE=daemon. The daemon keeps a write counter in its data
// directory (an append-only, fsync'd log of revisions) and serves a line
// protocol on the inherited listener "tcp": "w" appends a revision and
// answers "ok <rev>" after fsync; "r" answers "ok <rev>". Knobs come from
// the environment (TD_*), so each test picks its failure.

func TestMain(m *testing.M) {
	switch os.Getenv("HANDOFF_TEST_ROLE") {
	case "daemon":
		os.Exit(testDaemon())
	case "child":
		os.Exit(testChild())
	}
	os.Exit(m.Run())
}

type knobs struct {
	dir, sock, build    string
	failAt, hangAt      string
	unhealthy, stale    bool
	sealFail, drainFail bool
	slowDrain, slowSeal time.Duration
	slowOpen            time.Duration
}

func readKnobs() knobs {
	d := func(k string) time.Duration { v, _ := time.ParseDuration(os.Getenv(k)); return v }
	return knobs{
		dir: os.Getenv("TD_DATA"), sock: os.Getenv("TD_CONTROL"), build: os.Getenv("TD_BUILD"),
		failAt: os.Getenv("TD_FAIL_AT"), hangAt: os.Getenv("TD_HANG_AT"),
		unhealthy: os.Getenv("TD_UNHEALTHY") != "", stale: os.Getenv("TD_STALE") != "",
		sealFail: os.Getenv("TD_SEAL_FAIL") != "", drainFail: os.Getenv("TD_DRAIN_FAIL") != "",
		slowDrain: d("TD_SLOW_DRAIN"), slowSeal: d("TD_SLOW_SEAL"), slowOpen: d("TD_SLOW_OPEN"),
	}
}

func dlog(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "testdaemon[%d]: "+format+"\n", append([]any{os.Getpid()}, args...)...)
}

func testDaemon() int {
	k := readKnobs()
	role, err := DetectRole()
	if err != nil {
		dlog("detect role: %v", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	var il *InheritedListeners
	var lock *DataDirLock
	var inc *Incumbent
	d := &testDrainable{k: k}
	switch r := role.(type) {
	case *ColdStart:
		il = r.Inherited
		if lock, err = AcquireDataDirLockOrBreakStale(k.dir); err != nil {
			dlog("lock: %v", err)
			return 2
		}
		if err := d.open(il); err != nil {
			dlog("open: %v", err)
			return 2
		}
		if inc, err = BindColdStart(k.sock, lock); err != nil {
			dlog("bind: %v", err)
			return 2
		}
		inc.SetBuildID(k.build)
	case *Successor:
		if k.failAt == "before-hello" {
			return 3
		}
		h, err := r.Handshake(k.build)
		if err != nil {
			dlog("handshake: %v", err)
			return 2
		}
		if k.failAt == "after-hello" {
			return 3
		}
		if k.hangAt == "after-hello" {
			select {}
		}
		b, err := h.WaitForBegin(ctx)
		if err != nil {
			dlog("wait for begin: %v", err)
			return 4
		}
		if k.failAt == "after-begin" {
			return 3
		}
		if k.hangAt == "after-begin" {
			select {}
		}
		g := b.StartHeartbeats()
		if lock, err = AcquireDataDirLock(k.dir); err != nil {
			dlog("lock after begin: %v", err)
			return 2
		}
		il = b.Listeners()
		if k.slowOpen > 0 {
			time.Sleep(k.slowOpen) // simulated work: opening a large data set
		}
		if err := d.open(il); err != nil {
			dlog("open: %v", err)
			return 2
		}
		g.Stop()
		rev := d.revision()
		if k.stale {
			rev--
		}
		inc, err = b.AnnounceAndBind(ReadinessSnapshot{ListeningOn: []string{"tcp"}, HealthzOK: !k.unhealthy, AdvertisedRevisionPerShard: []uint64{rev}}, k.sock, lock)
		if err != nil {
			dlog("announce: %v", err)
			d.close()
			return 5
		}
	}
	d.startAccepting()
	err = inc.Serve(ctx, d)
	inc.Close()
	switch {
	case err == nil: // committed: finish in-flight work (drained already) and exit
		d.wg.Wait()
		return 0
	case ctx.Err() != nil: // SIGTERM: drain, seal, release, exit
		d.Drain(context.Background())
		d.Seal(context.Background())
		inc.Lock().Release()
		return 0
	default:
		dlog("serve: %v", err)
		return 6
	}
}

// testDrainable is the test daemon's state.
type testDrainable struct {
	k   knobs
	il  *InheritedListeners
	mu  sync.Mutex
	log *os.File
	rev uint64
	ln  net.Listener
	wg  sync.WaitGroup // in-flight connections and the accept loop
}

func (d *testDrainable) open(il *InheritedListeners) error {
	d.il = il
	if err := markHolder(d.k.dir); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(d.k.dir, "revisions"), os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		f.Close()
		return err
	}
	d.mu.Lock()
	d.log, d.rev = f, uint64(strings.Count(string(b), "\n"))
	d.mu.Unlock()
	return nil
}

func (d *testDrainable) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.log != nil {
		d.log.Close()
		d.log = nil
	}
}

func (d *testDrainable) revision() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.rev
}

func (d *testDrainable) startAccepting() {
	ln, err := d.il.Listener("tcp")
	if err != nil {
		dlog("listener: %v", err)
		os.Exit(7)
	}
	d.mu.Lock()
	d.ln = ln
	d.mu.Unlock()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d.wg.Add(1)
			go d.handle(c)
		}
	}()
}

func (d *testDrainable) handle(c net.Conn) {
	defer d.wg.Done()
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch strings.TrimSpace(line) {
	case "w":
		if d.log == nil {
			fmt.Fprintf(c, "err: not writable\n")
			return
		}
		next := d.rev + 1
		if _, err := fmt.Fprintf(d.log, "%d\n", next); err != nil {
			fmt.Fprintf(c, "err: %v\n", err)
			return
		}
		if err := d.log.Sync(); err != nil {
			fmt.Fprintf(c, "err: %v\n", err)
			return
		}
		d.rev = next
		fmt.Fprintf(c, "ok %d %d\n", next, os.Getpid())
	case "r":
		fmt.Fprintf(c, "ok %d %d\n", d.rev, os.Getpid())
	}
}

func (d *testDrainable) Drain(ctx context.Context) (DrainReport, error) {
	if d.k.slowDrain > 0 {
		time.Sleep(d.k.slowDrain) // simulated long drain
	}
	if d.k.drainFail {
		return DrainReport{}, errors.New("test knob: drain fails")
	}
	d.mu.Lock()
	ln := d.ln
	d.ln = nil
	d.mu.Unlock()
	if ln != nil {
		ln.Close() // our duplicate only: the socket stays open in the supervisor
	}
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return DrainReport{}, fmt.Errorf("drain: %w", ctx.Err())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.log != nil {
		if err := d.log.Sync(); err != nil {
			return DrainReport{}, err
		}
	}
	return DrainReport{AcceptClosed: true}, nil
}

func (d *testDrainable) Seal(ctx context.Context) (SealReport, error) {
	if d.k.slowSeal > 0 {
		time.Sleep(d.k.slowSeal) // simulated long seal
	}
	if d.k.sealFail {
		return SealReport{}, errors.New("test knob: seal fails")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	rev := d.rev
	if d.log != nil {
		if err := d.log.Sync(); err != nil {
			return SealReport{}, err
		}
		d.log.Close()
		d.log = nil
	}
	if err := unmarkHolder(d.k.dir); err != nil {
		return SealReport{}, err
	}
	return SealReport{LastRevisionPerShard: []uint64{rev}, DataDirFingerprint: strconv.FormatUint(rev, 10)}, nil
}

func (d *testDrainable) ResumeAfterAbort(ctx context.Context) error {
	d.mu.Lock()
	reopen := d.log == nil
	d.mu.Unlock()
	if reopen {
		if err := d.open(d.il); err != nil {
			return err
		}
	}
	d.mu.Lock()
	running := d.ln != nil
	d.mu.Unlock()
	if !running {
		d.startAccepting()
	}
	return nil
}

func (d *testDrainable) SnapshotState() StateSnapshot {
	return StateSnapshot{ShardCount: 1, LastRevisionPerShard: []uint64{d.revision()}}
}

// markHolder records this process as the lock holder in <dir>/holder. Only
// a lock holder calls it, so finding another live holder there means two
// processes held the lock at once: that is written to <dir>/violations.
func markHolder(dir string) error {
	p := filepath.Join(dir, "holder")
	if b, err := os.ReadFile(p); err == nil {
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 && pid != os.Getpid() && pidAlive(pid) && !isZombie(pid) {
			f, _ := os.OpenFile(filepath.Join(dir, "violations"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
			fmt.Fprintf(f, "pid %d took the lock while pid %d held it\n", os.Getpid(), pid)
			f.Sync()
			f.Close()
		}
	}
	return writeFileAtomic(p, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
}

func unmarkHolder(dir string) error {
	err := os.Remove(filepath.Join(dir, "holder"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}
