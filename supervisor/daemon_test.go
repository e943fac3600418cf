package supervisor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/internal/wire"
)

// The test binary doubles as the daemon: TestMain runs testDaemon when
// HANDOFF_TEST_ROLE=daemon. The daemon keeps a write counter in its data
// directory (an append-only, fsync'd log of "<revision> <pid>" records) and
// serves a line protocol on the inherited listener "tcp": "w" appends a
// record and answers "ok <rev> <pid>" after fsync; "r" answers
// "ok <rev> <pid>". Before every write it checks in /proc/locks that it
// holds the data-directory lock; if not it refuses the write and records a
// violation. A connection is served line after line until its client
// closes it; the daemon is a handoff.ConnPasser (TD_PASS_CONNS=0 turns
// that off): Drain stops each connection at a line boundary, and the
// connections travel with their unparsed bytes as their state (see
// testDrainable). Knobs come from the environment (TD_*), so each test picks
// its failure; the failure knobs of drain and seal fire once per data
// directory, so the handoff after the failed one can commit.

func TestMain(m *testing.M) {
	switch os.Getenv("HANDOFF_TEST_ROLE") {
	case "daemon":
		os.Exit(testDaemon())
	case "child":
		os.Exit(testChild())
	case "supervisor":
		os.Exit(testSupervisor())
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
	raw                 string // a successor that speaks raw frames (rawSuccessor)
	// drainHold: a path; Drain ignores its context and waits until the
	// test creates that file (the test does so once the supervisor has
	// given up on the drain or broken off the handoff), then succeeds.
	drainHold string
	// drainToGrace: Drain uses its whole grace (it returns when its
	// context expires) and succeeds with a connection left open.
	drainToGrace bool
	// pass: the daemon is a handoff.ConnPasser (TD_PASS_CONNS=0 turns it
	// off: Drain then closes its connections at a line boundary).
	pass bool
}

func readKnobs() knobs {
	d := func(k string) time.Duration { v, _ := time.ParseDuration(os.Getenv(k)); return v }
	return knobs{
		dir: os.Getenv("TD_DATA"), sock: os.Getenv("TD_CONTROL"), build: os.Getenv("TD_BUILD"),
		failAt: os.Getenv("TD_FAIL_AT"), hangAt: os.Getenv("TD_HANG_AT"),
		unhealthy: os.Getenv("TD_UNHEALTHY") != "", stale: os.Getenv("TD_STALE") != "",
		sealFail: os.Getenv("TD_SEAL_FAIL") != "", drainFail: os.Getenv("TD_DRAIN_FAIL") != "",
		slowDrain: d("TD_SLOW_DRAIN"), slowSeal: d("TD_SLOW_SEAL"), slowOpen: d("TD_SLOW_OPEN"),
		raw: os.Getenv("TD_RAW"), drainHold: os.Getenv("TD_DRAIN_HOLD"), drainToGrace: os.Getenv("TD_DRAIN_TO_GRACE") != "",
		pass: os.Getenv("TD_PASS_CONNS") != "0",
	}
}

func dlog(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "testdaemon[%d]: "+format+"\n", append([]any{os.Getpid()}, args...)...)
}

func testDaemon() int {
	k := readKnobs()
	if k.raw != "" {
		return rawSuccessor(k.raw)
	}
	role, err := handoff.DetectRole()
	if err != nil {
		dlog("detect role: %v", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	var il *handoff.InheritedListeners
	var lock *handoff.DataDirLock
	var inc *handoff.Incumbent
	d := &testDrainable{k: k}
	// adopt are the connections this process serves once it accepts:
	// held by the supervisor for a cold start, passed by the predecessor
	// for a successor (which receives them after its commit).
	var adopt func() []handoff.PassedConn
	switch r := role.(type) {
	case *handoff.ColdStart:
		il = r.Inherited
		conns, err := r.Conns()
		if err != nil {
			dlog("cold start: not all the held connections arrived: %v", err)
		}
		adopt = func() []handoff.PassedConn { return conns }
		if lock, err = coldLock(k.dir); err != nil {
			dlog("lock: %v", err)
			return 2
		}
		if err := d.open(il); err != nil {
			dlog("open: %v", err)
			return 2
		}
		if inc, err = handoff.BindColdStart(k.sock, lock); err != nil {
			dlog("bind: %v", err)
			return 2
		}
		inc.SetBuildID(k.build)
	case *handoff.Successor:
		if k.failAt == "before-hello" {
			return 3
		}
		if k.hangAt == "before-hello" {
			select {}
		}
		h, err := r.Handshake(k.build)
		if err != nil {
			dlog("handshake: %v", err)
			return 2
		}
		if k.pass {
			h.TakeConns()
		}
		if k.failAt == "after-hello" {
			return 3
		}
		if k.hangAt == "after-hello" {
			select {} // silent: no heartbeats
		}
		if k.failAt == "warm-up" || k.hangAt == "warm-up" {
			h.StartHeartbeats() // WaitForBegin would stop them
			appendEvent(k.dir, "warm-up %d", os.Getpid())
			if k.failAt == "warm-up" {
				return 3
			}
			select {} // heartbeats go on; ReadyToBegin never comes
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
		// The test's lock prober may hold the lock for a moment.
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		lock, err = handoff.AcquireDataDirLockWait(lctx, k.dir)
		cancel()
		if err != nil {
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
		if k.hangAt == "before-ready" {
			select {} // heartbeats go on; Ready never comes
		}
		g.Stop()
		rev := d.revision()
		if k.stale {
			rev--
		}
		inc, err = b.AnnounceAndBind(handoff.ReadinessSnapshot{ListeningOn: []string{"tcp"}, HealthzOK: !k.unhealthy, AdvertisedRevisionPerShard: []uint64{rev}}, k.sock, lock)
		if err != nil {
			dlog("announce: %v", err)
			d.close()
			return 5
		}
		adopt = b.Conns
	}
	d.startAccepting()
	if conns := adopt(); len(conns) > 0 {
		if k.pass {
			d.AdoptConns(conns)
		} else {
			recordViolation(k.dir, "pid %d got %d connections although it takes none", os.Getpid(), len(conns))
			for _, pc := range conns {
				pc.Conn.Close()
			}
		}
	}
	var svc handoff.Drainable = d
	if k.pass {
		svc = connPasser{d}
	}
	err = inc.Serve(ctx, svc)
	inc.Close()
	switch {
	case err == nil: // committed: finish in-flight work (drained already) and exit
		d.wait()
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
//
// Each client connection is served by a goroutine of its own, line after
// line, until the client closes it. Drain stops every connection at a line
// boundary: a past read deadline wakes a goroutine blocked in Read (no
// byte is lost: what was read and is not a whole line yet stays in the
// connection's buffer) and the goroutine parks the connection in kept. As
// a handoff.ConnPasser (connPasser) the kept connections are passed, with
// their unparsed bytes as the state; ResumeAfterAbort serves the ones
// still kept again, AdoptConns the ones given back or passed in.
type testDrainable struct {
	k      knobs
	il     *handoff.InheritedListeners
	mu     sync.Mutex
	log    *os.File
	rev    uint64
	ln     net.Listener
	lnAddr string         // the listener's address (PassedConn.Listener)
	wg     sync.WaitGroup // the accept loops

	cmu      sync.Mutex // guards what follows
	draining bool
	live     map[*tconn]bool // served by a goroutine
	kept     []*tconn        // stopped by Drain at a line boundary
	quiet    chan struct{}   // closed when live becomes empty (if waited for)
}

// tconn is one client connection: buf holds the bytes read from it that
// are not a whole line yet; fresh says no line was answered yet.
type tconn struct {
	c     net.Conn
	buf   []byte
	fresh bool
}

// connPasser makes the test daemon a handoff.ConnPasser (TD_PASS_CONNS
// unset or not 0).
type connPasser struct{ *testDrainable }

func (d *testDrainable) open(il *handoff.InheritedListeners) error {
	d.il = il
	if err := holdsLock(d.k.dir); err != nil {
		recordViolation(d.k.dir, "pid %d opened its data without the lock: %v", os.Getpid(), err)
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
	d.ln, d.lnAddr = ln, ln.Addr().String()
	d.mu.Unlock()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d.serve(&tconn{c: c, fresh: true})
		}
	}()
}

// serve starts tc's goroutine.
func (d *testDrainable) serve(tc *tconn) {
	d.cmu.Lock()
	if d.live == nil {
		d.live = map[*tconn]bool{}
	}
	d.live[tc] = true
	d.cmu.Unlock()
	go d.handle(tc)
}

// handle answers tc's lines until the client closes it or a Drain stops
// it (it is kept then).
func (d *testDrainable) handle(tc *tconn) {
	buf := make([]byte, 4096)
	for {
		for {
			i := bytes.IndexByte(tc.buf, '\n')
			if i < 0 {
				break
			}
			line := string(tc.buf[:i])
			tc.buf = tc.buf[i+1:]
			if err := d.answer(tc.c, line); err != nil {
				d.done(tc, false)
				return
			}
			tc.fresh = false
		}
		// A line boundary: stop here if a Drain asks.
		d.cmu.Lock()
		if d.draining {
			d.cmu.Unlock()
			d.done(tc, true)
			return
		}
		d.cmu.Unlock()
		n, err := tc.c.Read(buf)
		tc.buf = append(tc.buf, buf[:n]...)
		if n > 0 && bytes.IndexByte(tc.buf, '\n') < 0 {
			// A test waits for this before it hands off: the
			// half-written line is read, so it travels as state.
			appendEvent(d.k.dir, "partial %d %d", os.Getpid(), len(tc.buf))
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// Woken by a Drain (it is draining, or a resume
				// undid it before we looked): never an idle timeout.
				d.cmu.Lock()
				if !d.draining {
					tc.c.SetReadDeadline(time.Time{})
				}
				d.cmu.Unlock()
				continue
			}
			d.done(tc, false)
			return
		}
	}
}

// done ends tc's goroutine: kept for the next server, or closed.
func (d *testDrainable) done(tc *tconn, keep bool) {
	d.cmu.Lock()
	defer d.cmu.Unlock()
	delete(d.live, tc)
	if keep {
		tc.c.SetReadDeadline(time.Time{})
		d.kept = append(d.kept, tc)
	} else {
		tc.c.Close()
	}
	if len(d.live) == 0 && d.quiet != nil {
		close(d.quiet)
		d.quiet = nil
	}
}

// answer serves one line: "w" appends a record (fsync'd) and "r" reads;
// both answer "ok <rev> <pid>". Anything else is ignored.
func (d *testDrainable) answer(c net.Conn, line string) error {
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	d.mu.Lock()
	defer d.mu.Unlock()
	var err error
	switch strings.TrimSpace(line) {
	case "w":
		if d.log == nil {
			_, err = fmt.Fprintf(c, "err: not writable\n")
			return err
		}
		if lerr := holdsLock(d.k.dir); lerr != nil {
			recordViolation(d.k.dir, "pid %d was about to write without the lock: %v", os.Getpid(), lerr)
			_, err = fmt.Fprintf(c, "err: %v\n", lerr)
			return err
		}
		next := d.rev + 1
		if _, werr := fmt.Fprintf(d.log, "%d %d\n", next, os.Getpid()); werr != nil {
			_, err = fmt.Fprintf(c, "err: %v\n", werr)
			return err
		}
		if serr := d.log.Sync(); serr != nil {
			_, err = fmt.Fprintf(c, "err: %v\n", serr)
			return err
		}
		d.rev = next
		_, err = fmt.Fprintf(c, "ok %d %d\n", next, os.Getpid())
	case "r":
		_, err = fmt.Fprintf(c, "ok %d %d\n", d.rev, os.Getpid())
	}
	return err
}

// stopConns makes every connection stop at its next line boundary and
// waits until all have (or ctx ends).
func (d *testDrainable) stopConns(ctx context.Context) error {
	d.cmu.Lock()
	d.draining = true
	past := time.Unix(1, 0)
	for tc := range d.live {
		tc.c.SetReadDeadline(past)
	}
	var quiet chan struct{}
	if len(d.live) > 0 {
		if d.quiet == nil {
			d.quiet = make(chan struct{})
		}
		quiet = d.quiet
	}
	d.cmu.Unlock()
	if quiet == nil {
		return nil
	}
	select {
	case <-quiet:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("drain: connections still busy: %w", ctx.Err())
	}
}

// restartConns undoes stopConns: the kept connections are served again,
// and the ones not stopped yet go on.
func (d *testDrainable) restartConns() {
	d.cmu.Lock()
	d.draining = false
	kept := d.kept
	d.kept = nil
	for tc := range d.live {
		tc.c.SetReadDeadline(time.Time{})
	}
	d.cmu.Unlock()
	for _, tc := range kept {
		d.serve(tc)
	}
	if len(kept) > 0 {
		appendEvent(d.k.dir, "kept %d %d", os.Getpid(), len(kept))
	}
}

// closeConns closes connections a Drain stopped that are not passed. As
// net/http does on Shutdown, a fresh one (accepted, never answered) is
// served up to its first line boundary first, bounded: its client has
// most likely sent its line already, and closing the connection with it
// unread would reset it.
func (d *testDrainable) closeConns(tcs []*tconn) {
	var wg sync.WaitGroup
	for _, tc := range tcs {
		if !tc.fresh {
			tc.c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer tc.c.Close()
			tc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 4096)
			for !bytes.Contains(tc.buf, []byte("\n")) {
				n, err := tc.c.Read(buf)
				tc.buf = append(tc.buf, buf[:n]...)
				if err != nil {
					break
				}
			}
			for {
				i := bytes.IndexByte(tc.buf, '\n')
				if i < 0 {
					return
				}
				line := string(tc.buf[:i])
				tc.buf = tc.buf[i+1:]
				if d.answer(tc.c, line) != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
}

// takeKept returns the kept connections and forgets them.
func (d *testDrainable) takeKept() []*tconn {
	d.cmu.Lock()
	defer d.cmu.Unlock()
	kept := d.kept
	d.kept = nil
	return kept
}

// wait waits for the accept loop and, bounded, for the connections being
// served (after a commit a Drain stopped them all).
func (d *testDrainable) wait() {
	d.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.stopConns(ctx); err != nil {
		dlog("after the commit: %v", err)
	}
}

func (d *testDrainable) Drain(ctx context.Context) (handoff.DrainReport, error) {
	appendEvent(d.k.dir, "drain %d", os.Getpid())
	if d.k.slowDrain > 0 && fireOnce(d.k.dir, "slow-drain") {
		// A long drain that ignores ctx and succeeds even after its grace.
		time.Sleep(d.k.slowDrain)
		ctx = context.WithoutCancel(ctx)
	}
	if d.k.drainHold != "" {
		// Ordered by the test, not by time: bounded only in case the
		// test never releases it.
		tick := time.NewTicker(5 * time.Millisecond)
		for limit := time.Now().Add(time.Minute); time.Now().Before(limit); <-tick.C {
			if _, err := os.Stat(d.k.drainHold); err == nil {
				break
			}
		}
		tick.Stop()
		ctx = context.WithoutCancel(ctx)
	}
	if d.k.drainFail && fireOnce(d.k.dir, "drain-fail") {
		return handoff.DrainReport{}, errors.New("test knob: drain fails")
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
		return handoff.DrainReport{}, fmt.Errorf("drain: %w", ctx.Err())
	}
	if err := d.stopConns(ctx); err != nil {
		return handoff.DrainReport{}, err
	}
	d.cmu.Lock()
	stopped := len(d.kept)
	d.cmu.Unlock()
	// What this process holds from here on without serving it: a test
	// that kills it now expects exactly these connections to be reset.
	appendEvent(d.k.dir, "stopped %d %d", os.Getpid(), stopped)
	if !d.k.pass {
		// Not a ConnPasser: connections close at a line boundary.
		d.closeConns(d.takeKept())
	}
	left := 0
	if d.k.drainToGrace && fireOnce(d.k.dir, "drain-to-grace") {
		<-ctx.Done()
		left = 1
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.log != nil {
		if err := d.log.Sync(); err != nil {
			return handoff.DrainReport{}, err
		}
	}
	return handoff.DrainReport{AcceptClosed: true, OpenConnsRemaining: left}, nil
}

func (d *testDrainable) Seal(ctx context.Context) (handoff.SealReport, error) {
	if d.k.slowSeal > 0 && fireOnce(d.k.dir, "slow-seal") {
		time.Sleep(d.k.slowSeal) // simulated long seal
	}
	if d.k.sealFail && fireOnce(d.k.dir, "seal-fail") {
		return handoff.SealReport{}, errors.New("test knob: seal fails")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	rev := d.rev
	if d.log != nil {
		if err := d.log.Sync(); err != nil {
			return handoff.SealReport{}, err
		}
		d.log.Close()
		d.log = nil
	}
	appendEvent(d.k.dir, "seal %d", os.Getpid())
	return handoff.SealReport{LastRevisionPerShard: []uint64{rev}, DataDirFingerprint: strconv.FormatUint(rev, 10)}, nil
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
	d.restartConns()
	return nil
}

// PassConns gives away at most max of the kept connections, with their
// unparsed bytes as the state, and closes the others.
func (p connPasser) PassConns(max int) []handoff.PassedConn {
	d := p.testDrainable
	d.mu.Lock()
	addr := d.lnAddr
	d.mu.Unlock()
	var out []handoff.PassedConn
	var closing []*tconn
	for _, tc := range d.takeKept() {
		if len(out) >= max {
			closing = append(closing, tc)
			continue
		}
		out = append(out, handoff.PassedConn{Listener: addr, Conn: tc.c, State: tc.buf})
	}
	d.closeConns(closing)
	state := 0
	for _, pc := range out {
		state += len(pc.State)
	}
	appendEvent(d.k.dir, "passed %d %d", os.Getpid(), len(out))
	appendEvent(d.k.dir, "passed-state %d %d", os.Getpid(), state)
	return out
}

// AdoptConns serves conns, each from its unparsed bytes on.
func (p connPasser) AdoptConns(conns []handoff.PassedConn) { p.testDrainable.AdoptConns(conns) }

func (d *testDrainable) AdoptConns(conns []handoff.PassedConn) {
	d.mu.Lock()
	addr := d.lnAddr
	d.mu.Unlock()
	n, state := 0, 0
	for _, pc := range conns {
		if pc.Listener != addr {
			recordViolation(d.k.dir, "pid %d was given a connection of listener %q, it listens on %q", os.Getpid(), pc.Listener, addr)
			pc.Conn.Close()
			continue
		}
		d.serve(&tconn{c: pc.Conn, buf: slices.Clone(pc.State)})
		n++
		state += len(pc.State)
	}
	appendEvent(d.k.dir, "adopted %d %d", os.Getpid(), n)
	appendEvent(d.k.dir, "adopted-state %d %d", os.Getpid(), state)
}

// recordViolation appends a line to <dir>/violations, which the test checks.
func recordViolation(dir, format string, args ...any) {
	appendLine(filepath.Join(dir, "violations"), format, args...)
	dlog(format, args...)
}

// appendEvent appends a line to <dir>/events (seals, for the tests that
// must show one did not happen).
func appendEvent(dir, format string, args ...any) {
	appendLine(filepath.Join(dir, "events"), format, args...)
}

func appendLine(path, format string, args ...any) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		dlog("%s: %v", path, err)
		return
	}
	fmt.Fprintf(f, format+"\n", args...)
	f.Sync()
	f.Close()
}

// fireOnce reports whether the one-shot knob name fires: only for the
// first process that asks in this data directory.
func fireOnce(dir, name string) bool {
	f, err := os.OpenFile(filepath.Join(dir, "fired-"+name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// coldLock takes the lock for a cold start; the test's lock prober may
// hold it for a moment.
func coldLock(dir string) (*handoff.DataDirLock, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return handoff.AcquireDataDirLockWait(ctx, dir)
}

// holdsLock checks in /proc/locks that this process holds the flock on
// dir's lock file.
func holdsLock(dir string) error {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, wire.LockFileName), &st); err != nil {
		return err
	}
	for _, pid := range lockHolders(st.Ino) {
		if pid == os.Getpid() {
			return nil
		}
	}
	return fmt.Errorf("/proc/locks shows holders %v of inode %d, not pid %d", lockHolders(st.Ino), st.Ino, os.Getpid())
}

// lockHolders returns the pids holding (not waiting for) a flock on inode
// ino, from /proc/locks ("1: FLOCK  ADVISORY  WRITE 123 fe:00:456 0 EOF").
//
// Each pid is listed once: /proc/locks is produced as it is read, and a
// read split over several calls can repeat an entry, so it is read with
// one large buffer and duplicates are dropped.
func lockHolders(ino uint64) []int {
	f, err := os.Open("/proc/locks")
	if err != nil {
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return nil
	}
	var pids []int
	suffix := ":" + strconv.FormatUint(ino, 10)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" || !strings.HasSuffix(f[5], suffix) {
			continue // also skips blocked waiters ("1: -> FLOCK ...")
		}
		if pid, err := strconv.Atoi(f[4]); err == nil && !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// rawSuccessor is a successor that breaks the protocol on purpose, sending
// raw frames; mode picks the violation:
//
//	pid      Hello with a pid that is not the spawned child's
//	hello-id Hello carrying a handoff id
//	id       after HelloAck, a heartbeat with another handoff id
//	commit   after HelloAck, a Commit (only the supervisor sends it)
//	ready    right after HelloAck, heartbeats and a Ready before Begin
//
// It then reads until the supervisor hangs up, and exits.
// It takes its end of the control socketpair from HANDOFF_SOCK_FD itself,
// as a daemon in another language would.
func rawSuccessor(mode string) int {
	fd, err := strconv.Atoi(os.Getenv(wire.EnvSockFD))
	if err != nil {
		dlog("raw: %s: %v", wire.EnvSockFD, err)
		return 2
	}
	sock := os.NewFile(uintptr(fd), "control")
	nc, err := net.FileConn(sock)
	sock.Close()
	if err != nil {
		dlog("raw: control socket: %v", err)
		return 2
	}
	conn := wire.NewConn(nc.(*net.UnixConn))
	defer conn.Close()
	h := wire.Hello{Role: wire.RoleSuccessor, PID: os.Getpid(), BuildID: "raw", MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion}
	helloID := ""
	switch mode {
	case "pid":
		h.PID = os.Getppid()
	case "hello-id":
		helloID = "made-up"
	}
	if err := conn.Send(h, helloID, time.Second); err != nil {
		dlog("raw hello: %v", err)
		return 2
	}
	if mode == "pid" || mode == "hello-id" {
		return drainUntilClosed(conn)
	}
	f, err := conn.Recv(10 * time.Second)
	if err != nil {
		dlog("raw hello_ack: %v", err)
		return 2
	}
	ack, ok := f.Msg.(wire.HelloAck)
	if !ok {
		dlog("raw: got %s, want hello_ack", f.Msg.Type())
		return 2
	}
	conn.SetVersion(ack.Version)
	var frames []wire.Message
	id := f.ID
	warm := ack.Version >= wire.WarmUpVersion
	switch mode {
	case "id":
		id = "not-" + f.ID
		frames = []wire.Message{wire.Heartbeat{}}
	case "commit":
		frames = []wire.Message{wire.Commit{}}
	case "ready":
		frames = []wire.Message{wire.Heartbeat{}, wire.Heartbeat{}, wire.Heartbeat{}, wire.Ready{HealthzOK: true}}
	case "warm-commit": // Commit during the warm-up
		frames = []wire.Message{wire.Heartbeat{}, wire.Commit{}}
		warm = false
	default:
		dlog("raw: unknown mode %q", mode)
		return 2
	}
	if warm {
		// End the warm-up at once, so that the frames break a later phase.
		// TD_RAW_ROOM: the room for passed connections it states, so
		// that the incumbent passes some before the violation shows.
		room, _ := strconv.Atoi(os.Getenv("TD_RAW_ROOM"))
		if err := conn.Send(wire.ReadyToBegin{ConnRoom: room}, f.ID, time.Second); err != nil {
			dlog("raw send ready_to_begin: %v", err)
			return 2
		}
	}
	for _, m := range frames {
		if err := conn.Send(m, id, time.Second); err != nil {
			dlog("raw send %s: %v", m.Type(), err)
			return 2
		}
	}
	return drainUntilClosed(conn)
}

func drainUntilClosed(conn *wire.Conn) int {
	for {
		f, err := conn.Recv(30 * time.Second)
		if err != nil {
			return 3
		}
		closeFDs(f.FDs)
	}
}

// testSupervisor is a supervisor process (HANDOFF_TEST_ROLE=supervisor)
// for tests that kill the supervisor itself. Its directory TS_DIR holds the
// control socket, the journal and the data directory "data". TS_MODE=start
// binds a loopback listener, cold-starts the test daemon and answers
// "ready <addr> <pid>"; TS_MODE=resume runs ResumeFromJournal and answers
// "resumed <pid> <listener names>" or "error <text>". Then it takes
// commands on stdin, one per line:
//
//	handoff <build id> [K=V ...]   → "outcome <committed> <serving pid> <abort reason>"
//	                                 (K=V: knobs of the successor)
//	stop                 → stops the daemon and exits
//
// The daemons' stdout goes to stderr, so stdout carries only answers.
func testSupervisor() int {
	dir := os.Getenv("TS_DIR")
	say := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sup, err := New(Config{
		ControlSocket: filepath.Join(dir, "ctl.sock"),
		Journal:       filepath.Join(dir, "journal"),
		Logger:        logger,
		Stdout:        os.Stderr,
	})
	if err != nil {
		say("error %v", err)
		return 2
	}
	defer sup.Close()
	spec := func(build string, knobs ...string) SpawnSpec {
		return SpawnSpec{
			Binary: os.Args[0],
			Args:   []string{"-test.run=^$"},
			Env: append([]string{"HANDOFF_TEST_ROLE=daemon", "HANDOFF_CRASH_AT=", "TD_BUILD=" + build,
				"TD_DATA=" + filepath.Join(dir, "data"), "TD_CONTROL=" + filepath.Join(dir, "ctl.sock")}, knobs...),
			DrainGrace: 10 * time.Second,
			Deadline:   30 * time.Second,
		}
	}
	ctx := context.Background()
	switch os.Getenv("TS_MODE") {
	case "start":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			say("error %v", err)
			return 2
		}
		if err := sup.AddListener("tcp", ln); err != nil {
			say("error %v", err)
			return 2
		}
		ln.Close() // the supervisor keeps its duplicate
		p, err := sup.ColdStart(ctx, spec("v1"))
		if err != nil {
			say("error %v", err)
			return 2
		}
		say("ready %s %d", ln.Addr(), p)
	case "resume":
		if err := sup.ResumeFromJournal(ctx); err != nil {
			say("error %v", err)
			return 2
		}
		st := sup.Status()
		say("resumed %d %s", st.IncumbentPID, strings.Join(st.Listeners, ","))
	default:
		say("error TS_MODE=%q", os.Getenv("TS_MODE"))
		return 2
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		args := strings.Fields(in.Text())
		if len(args) == 0 {
			continue
		}
		switch args[0] {
		case "handoff":
			if len(args) < 2 {
				say("error handoff needs a build id")
				continue
			}
			out, err := sup.PerformHandoff(ctx, spec(args[1], args[2:]...))
			if err != nil {
				say("error %v", err)
				continue
			}
			pid := sup.Status().IncumbentPID
			say("outcome %v %d %s", out.Committed, pid, out.AbortReason)
		case "stop":
			sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			err := sup.Stop(sctx)
			cancel()
			if err != nil {
				say("error %v", err)
				return 2
			}
			return 0
		}
	}
	return 0
}
