package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Established connections across handoffs (protocol version 3): the test
// daemon is a handoff.ConnPasser (see testDrainable). A pool of persistent
// client connections is opened before a handoff; afterwards every one of
// them must answer on the same TCP connection, served by whichever daemon
// owns it: the successor after a commit, the incumbent after an abort.

// clientConn is one persistent client connection of a pool.
type clientConn struct {
	c    net.Conn
	r    *bufio.Reader
	kind string // "idle" (answered a line, then waits), "half" (a "w" in flight without its newline), "fresh" (never sent a line)
	// inFlight: the "w" of a half connection was sent, its newline not.
	inFlight bool
}

// connPool is the persistent connections of a test.
type connPool struct {
	t     *testing.T
	port  int // the listener's
	conns []*clientConn
}

// connIO bounds every read and write of a pool's connection.
const connIO = 30 * time.Second

// openPool dials idle+half+fresh connections to addr. The idle and half
// ones ask "r" first, which pid want must answer; a half one then sends a
// "w" without its newline, which arrives at the daemon before the handoff
// (it reads it into its buffer) and is completed after it.
func openPool(t *testing.T, addr string, idle, half, fresh, want int) *connPool {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &connPool{t: t, port: atoiT(t, port)}
	t.Cleanup(p.close)
	kinds := map[string]int{"idle": idle, "half": half, "fresh": fresh}
	for _, kind := range []string{"idle", "half", "fresh"} {
		for range kinds[kind] {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			cc := &clientConn{c: c, r: bufio.NewReader(c), kind: kind}
			p.conns = append(p.conns, cc)
			if kind == "fresh" {
				continue
			}
			if _, pid, err := cc.ask("r"); err != nil || pid != want {
				t.Fatalf("%s connection %s: answered by pid %d (%v), want %d", kind, cc.name(), pid, err, want)
			}
		}
	}
	p.arm()
	return p
}

func (p *connPool) len() int { return len(p.conns) }

// arm sends the half-written "w" of every half connection.
func (p *connPool) arm() {
	p.t.Helper()
	for _, cc := range p.conns {
		if cc.kind != "half" || cc.inFlight {
			continue
		}
		cc.c.SetWriteDeadline(time.Now().Add(connIO))
		if _, err := cc.c.Write([]byte("w")); err != nil {
			p.t.Fatalf("half connection %s: %v", cc.name(), err)
		}
		cc.inFlight = true
	}
}

func (p *connPool) close() {
	for _, cc := range p.conns {
		cc.c.Close()
	}
}

// name is the client's end of the connection: the same through every
// handoff, since no connection is ever dialled again.
func (cc *clientConn) name() string { return cc.c.LocalAddr().String() }

// send writes s and reads one "ok <rev> <pid>" reply.
func (cc *clientConn) send(s string) (rev uint64, pid int, err error) {
	cc.c.SetDeadline(time.Now().Add(connIO))
	if _, err := cc.c.Write([]byte(s)); err != nil {
		return 0, 0, err
	}
	resp, err := cc.r.ReadString('\n')
	if err != nil {
		return 0, 0, fmt.Errorf("reading the reply to %q: %w", s, err)
	}
	if _, err := fmt.Sscanf(resp, "ok %d %d", &rev, &pid); err != nil {
		return 0, 0, fmt.Errorf("reply %q to %q: %w", resp, s, err)
	}
	return rev, pid, nil
}

func (cc *clientConn) ask(line string) (uint64, int, error) { return cc.send(line + "\n") }

// check makes every connection answer on its own TCP connection, served by
// pid want: a half connection completes its "w" (the daemon that serves it
// now got the "w" as the state of the passed connection, or still has it
// buffered), every connection then reads and writes. Each write must have
// a revision above the last. The half-written lines are sent again, for
// the next handoff. It returns the first failure.
func (p *connPool) check(want int) error {
	p.t.Helper()
	var last uint64
	next := func(cc *clientConn, what string, rev uint64, pid int, err error, write bool) error {
		switch {
		case err != nil:
			return fmt.Errorf("%s connection %s, %s: %w", cc.kind, cc.name(), what, err)
		case pid != want:
			return fmt.Errorf("%s connection %s, %s: served by pid %d, want %d", cc.kind, cc.name(), what, pid, want)
		case write && rev <= last:
			return fmt.Errorf("%s connection %s, %s: revision %d after %d", cc.kind, cc.name(), what, rev, last)
		}
		if write {
			last = rev
		}
		return nil
	}
	for _, cc := range p.conns {
		if cc.inFlight {
			rev, pid, err := cc.send("\n")
			if err := next(cc, "completing its half-written w", rev, pid, err, true); err != nil {
				return err
			}
			cc.inFlight = false
		}
		rev, pid, err := cc.ask("r")
		if err := next(cc, "r", rev, pid, err, false); err != nil {
			return err
		}
		rev, pid, err = cc.ask("w")
		if err := next(cc, "w", rev, pid, err, true); err != nil {
			return err
		}
	}
	p.arm()
	return nil
}

// daemonFDs counts pid's open descriptors (-1 if it is gone).
func daemonFDs(pid int) int {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// serverEnds maps the socket inode of every TCP connection whose local
// port is port (the server ends of the listener's connections, in any
// state but LISTEN) to its peer, as the client names its own end.
func serverEnds(port int) (map[uint64]string, error) {
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return nil, err
	}
	ends := map[uint64]string{}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] == "0A" {
			continue
		}
		local, peer, ok := hexAddr(f[1])
		if !ok || peer != port {
			continue
		}
		_ = local
		rip, rport, ok := hexAddr(f[2])
		if !ok {
			continue
		}
		ino, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			continue
		}
		ends[ino] = net.JoinHostPort(rip, strconv.Itoa(rport))
	}
	return ends, nil
}

// hexAddr decodes an IPv4 address of /proc/net/tcp ("0100007F:A5B3").
func hexAddr(s string) (ip string, port int, ok bool) {
	h, p, found := strings.Cut(s, ":")
	a, err1 := strconv.ParseUint(h, 16, 32)
	pp, err2 := strconv.ParseUint(p, 16, 16)
	if !found || err1 != nil || err2 != nil {
		return "", 0, false
	}
	return fmt.Sprintf("%d.%d.%d.%d", a&0xff, a>>8&0xff, a>>16&0xff, a>>24), int(pp), true
}

// connFDs returns, for process pid, how many of its descriptors are the
// server end of each connection in ends (by peer), and how many other
// descriptors it has (not counting the test daemon's event logs, open
// only while a line is appended). A gone process has none (others is -1).
func connFDs(pid int, ends map[uint64]string) (byPeer map[string]int, others int) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, -1
	}
	byPeer = map[string]int{}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if b := filepath.Base(l); b == "events" || b == "violations" || strings.HasPrefix(b, "fired-") {
			continue // the test daemon's logs, open for a moment (appendLine)
		}
		var ino uint64
		if _, err := fmt.Sscanf(l, "socket:[%d]", &ino); err == nil {
			if peer, ok := ends[ino]; ok {
				byPeer[peer]++
				continue
			}
		}
		others++
	}
	return byPeer, others
}

// owned checks the ownership invariant for the pool: the server end of
// every connection is open in exactly one descriptor of owner and in none
// of others (the supervisor, other daemons; gone ones hold none), and
// owner has base descriptors besides (-1: not checked). It returns what
// is wrong, or "".
func (p *connPool) owned(owner, base int, others ...int) string {
	ends, err := serverEnds(p.port)
	if err != nil {
		return err.Error()
	}
	mine, rest := connFDs(owner, ends)
	if rest < 0 {
		return fmt.Sprintf("the owner (pid %d) is gone", owner)
	}
	for _, cc := range p.conns {
		if n := mine[cc.name()]; n != 1 {
			return fmt.Sprintf("pid %d holds %d descriptors of %s connection %s, want 1", owner, n, cc.kind, cc.name())
		}
	}
	if len(mine) != len(p.conns) {
		return fmt.Sprintf("pid %d holds descriptors of %d connections, the pool has %d", owner, len(mine), len(p.conns))
	}
	if base >= 0 && rest != base {
		return fmt.Sprintf("pid %d holds %d descriptors besides the connections, want %d", owner, rest, base)
	}
	for _, pid := range others {
		theirs, _ := connFDs(pid, ends)
		for peer, n := range theirs {
			return fmt.Sprintf("pid %d (not the owner %d) holds %d descriptors of the connection from %s", pid, owner, n, peer)
		}
	}
	return ""
}

// waitOwned waits (bounded) until owned reports nothing wrong.
func (p *connPool) waitOwned(t *testing.T, owner, base int, others ...int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		bad := p.owned(owner, base, others...)
		if bad == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ownership of the passed connections: %s", bad)
		}
		<-tick.C
	}
}

// baseFDs is how many descriptors pid holds besides the pool's
// connections, once it owns them all (waited for).
func (p *connPool) baseFDs(t *testing.T, pid int) int {
	t.Helper()
	p.waitOwned(t, pid, -1)
	ends, err := serverEnds(p.port)
	if err != nil {
		t.Fatal(err)
	}
	_, rest := connFDs(pid, ends)
	return rest
}

// fdLinks lists the targets of this process's descriptors, but for the
// lock prober's reads of /proc/locks (open for a moment) and the pidfds
// of the daemons the supervisor watches (one per live daemon).
func fdLinks() map[string]string {
	ents, _ := os.ReadDir("/proc/self/fd")
	out := map[string]string{}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && l != "/proc/locks" && l != "anon_inode:[pidfd]" {
			out[e.Name()] = l
		}
	}
	return out
}

// supFDs is the test process's (the supervisor's) descriptors at a point
// of a test; wait waits (bounded) until their number is back to it, and
// says which differ if it is not.
type supFDs map[string]string

func (before supFDs) wait(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		now := fdLinks()
		if len(now) == len(before) {
			return
		}
		if time.Now().After(deadline) {
			var diff []string
			for fd, l := range now {
				if before[fd] != l {
					diff = append(diff, "+"+fd+"="+l)
				}
			}
			for fd, l := range before {
				if now[fd] != l {
					diff = append(diff, "-"+fd+"="+l)
				}
			}
			t.Fatalf("the supervisor holds %d descriptors, %d before the handoff: %v", len(now), len(before), diff)
		}
		<-tick.C
	}
}

// daemonEvents counts the lines "<what> <pid> <n>" of the daemons' event
// log and sums their n.
func daemonEvents(t *testing.T, dir, what string, pid int) (lines, total int) {
	t.Helper()
	prefix := fmt.Sprintf("%s %d ", what, pid)
	for _, e := range events(t, dir) {
		if rest, ok := strings.CutPrefix(e, prefix); ok {
			n, err := strconv.Atoi(rest)
			if err != nil {
				t.Fatalf("event %q: %v", e, err)
			}
			lines++
			total += n
		}
	}
	return lines, total
}

// waitArmed waits (bounded) until daemon pid has read want half-written
// lines in all (its "partial" events): they are in its buffers, and a
// handoff passes them as the connections' state.
func waitArmed(t *testing.T, dir string, pid, want int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("pid %d to read %d half-written lines", pid, want), func() bool {
		n, _ := daemonEvents(t, dir, "partial", pid)
		return n >= want
	})
}

// The pool of a test: idle ones, ones with a half-written line in flight
// at the drain, and fresh ones that never sent anything before the
// handoff.
const poolIdle, poolHalf, poolFresh = 8, 8, 4

// poolFor opens the pool on c's listener, served by the incumbent inc,
// and waits until inc accepted every connection (it holds the server end
// of each), so that every one of them is in flight at the drain. It
// returns how many other descriptors inc holds. A first write makes the
// revision non-zero (a stale successor advertises one less).
func poolFor(t *testing.T, c *cluster, inc int) (*connPool, int) {
	t.Helper()
	if _, _, err := request(c.addr, "w"); err != nil {
		t.Fatal(err)
	}
	p := openPool(t, c.addr, poolIdle, poolHalf, poolFresh, inc)
	waitArmed(t, c.dir, inc, poolHalf)
	return p, p.baseFDs(t, inc)
}

func atoiT(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Committed handoffs pass every connection: each answers afterwards on the
// same TCP connection, served by the new incumbent, and a half-written
// line sent before the handoff is completed after it. No process keeps a
// descriptor it should not: each daemon holds its base count plus one per
// connection, the supervisor exactly what it held before.
func TestPassedConnsFollowCommittedHandoffs(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, Config{})
	inc := c.sup.Status().IncumbentPID
	p, base := poolFor(t, c, inc)
	sup := supFDs(fdLinks())
	for i := range 3 {
		out := c.handoff()
		if !out.Committed {
			t.Fatalf("handoff %d: not committed: %s", i, out.AbortReason)
		}
		if out.PassedConns != p.len() {
			t.Fatalf("handoff %d: %d connections passed, want %d", i, out.PassedConns, p.len())
		}
		if _, n := daemonEvents(t, c.dir, "passed", inc); n != p.len() {
			t.Fatalf("handoff %d: the incumbent %d says it passed %d, want %d", i, inc, n, p.len())
		}
		if _, n := daemonEvents(t, c.dir, "adopted", out.PID); n != p.len() {
			t.Fatalf("handoff %d: the successor %d says it adopted %d, want %d", i, out.PID, n, p.len())
		}
		// Each half-written "w" travelled as its connection's state.
		_, sent := daemonEvents(t, c.dir, "passed-state", inc)
		_, got := daemonEvents(t, c.dir, "adopted-state", out.PID)
		if sent != poolHalf || got != poolHalf {
			t.Fatalf("handoff %d: %d bytes of state passed, %d adopted, want %d", i, sent, got, poolHalf)
		}
		// Only the new incumbent holds them, once each; the old one
		// closed its copies (it exits), the supervisor its own.
		p.waitOwned(t, out.PID, base, inc, os.Getpid())
		if err := p.check(out.PID); err != nil {
			t.Fatalf("handoff %d: %v", i, err)
		}
		sup.wait(t)
		inc = out.PID
		waitArmed(t, c.dir, inc, poolHalf)
	}
	p.close()
	waitFor(t, "the incumbent's descriptors back to its base once the clients closed", func() bool { return daemonFDs(inc) == base })
	c.verify(nil)
}

// A daemon that is no ConnPasser (TD_PASS_CONNS=0) closes its connections
// at a line boundary, as before: a client sees its connection end, never
// a reply from a wrong daemon, and a fresh connection is still served.
func TestConnsClosedWithoutPassing(t *testing.T) {
	checkLeaks(t)
	c := newCluster(t, Config{}, "TD_PASS_CONNS=0")
	c.base = append(c.base, "TD_PASS_CONNS=0")
	inc := c.sup.Status().IncumbentPID
	p, _ := poolFor(t, c, inc)
	out := c.handoff()
	if !out.Committed || out.PassedConns != 0 {
		t.Fatalf("outcome %+v, want a commit passing none", out)
	}
	for _, cc := range p.conns {
		if cc.kind == "fresh" {
			// Accepted, never answered: served to its first line first.
			continue
		}
		cc.c.SetReadDeadline(time.Now().Add(connIO))
		if b, err := cc.r.ReadString('\n'); err == nil {
			t.Fatalf("%s connection %s: got %q after the handoff, want its end", cc.kind, cc.name(), b)
		}
	}
	if pid := c.servingPID(); pid != out.PID {
		t.Fatalf("pid %d serves, want %d", pid, out.PID)
	}
	c.verify(nil)
}

// passAbort is an aborted handoff with connections in flight.
type passAbort struct {
	name     string
	coldEnv  []string // knobs of the incumbent (the failures fire once)
	env      []string // knobs of the successor
	cfg      Config
	deadline time.Duration // of the handoff, if not the default
	grace    time.Duration // drain grace, if not the default (deadline/4 with a deadline)
	// hold: the incumbent's drain waits until the rollback began
	// (TD_DRAIN_HOLD), for a failure that must come while it drains.
	hold bool
	// cancelAt: the handoff's context is cancelled when it enters this
	// phase.
	cancelAt   Phase
	wantReason string
	wantErr    error
}

// passAborts are the abort kinds of the protocol tests (TestHandoffAbortsRollBack,
// TestDrainTimesOut, TestSuccessorProtocolViolations, a cancelled
// handoff), and a seal that outlasts the deadline. The raw successors
// state room for connections, so that some are in flight when they break
// the protocol.
func passAborts() []passAbort {
	short := Config{Liveness: 3 * time.Second}
	return []passAbort{
		{name: "successor exits before handshake", env: []string{"TD_FAIL_AT=before-hello"}, wantReason: "successor (pid", wantErr: ErrSuccessorFailed},
		{name: "successor exits after handshake", env: []string{"TD_FAIL_AT=after-hello"}, wantReason: "successor (pid", wantErr: ErrSuccessorFailed},
		{name: "successor exits during warm-up", env: []string{"TD_FAIL_AT=warm-up"}, wantReason: "successor (pid", wantErr: ErrSuccessorFailed},
		{name: "successor exits after begin", env: []string{"TD_FAIL_AT=after-begin"}, wantReason: "successor (pid", wantErr: ErrSuccessorFailed},
		{name: "successor hangs silently in its warm-up", env: []string{"TD_HANG_AT=after-hello"}, cfg: short, wantReason: "(liveness timeout) while the supervisor waited for [ready_to_begin abort]", wantErr: ErrTimeout},
		{name: "successor warms up past the deadline", env: []string{"TD_HANG_AT=warm-up"}, cfg: short, deadline: 5 * time.Second, wantReason: "did not send [ready_to_begin abort]: the handoff deadline passed", wantErr: ErrTimeout},
		{name: "successor hangs silently after begin", env: []string{"TD_HANG_AT=after-begin"}, cfg: short, wantReason: "(liveness timeout) while the supervisor waited for [ready abort]", wantErr: ErrTimeout},
		{name: "successor heartbeats but never sends ready", env: []string{"TD_HANG_AT=before-ready"}, cfg: short, deadline: 10 * time.Second, wantReason: "did not send [ready abort]: the handoff deadline passed", wantErr: ErrTimeout},
		{name: "ready unhealthy", env: []string{"TD_UNHEALTHY=1"}, wantReason: "unhealthy", wantErr: ErrReadyRejected},
		{name: "ready with stale revisions", env: []string{"TD_STALE=1"}, wantReason: "stale", wantErr: ErrReadyRejected},
		{name: "seal fails", coldEnv: []string{"TD_SEAL_FAIL=1"}, wantReason: "seal failed: test knob", wantErr: ErrSealFailed},
		{name: "drain fails", coldEnv: []string{"TD_DRAIN_FAIL=1"}, wantReason: "drain failed: test knob", wantErr: ErrDrainFailed},
		{name: "drain outlasts its grace", hold: true, grace: time.Second, wantReason: "did not send [drained drain_failed]: its time ran out", wantErr: ErrTimeout},
		// The seal ignores its context and takes longer than the whole
		// handoff (heartbeats keep the liveness fed): the deadline aborts
		// while the supervisor holds the connections.
		{name: "seal outlasts the deadline", coldEnv: []string{"TD_SLOW_SEAL=7s"}, cfg: Config{Liveness: 5 * time.Second}, deadline: 6 * time.Second, grace: 2 * time.Second, wantReason: "the handoff deadline passed", wantErr: ErrTimeout},
		{name: "handoff cancelled while draining", coldEnv: []string{"TD_SLOW_DRAIN=2s"}, cancelAt: PhaseDraining, wantReason: "cancelled", wantErr: context.Canceled},
		{name: "successor sends a frame of another handoff", env: []string{"TD_RAW=id", "TD_RAW_ROOM=1000"}, hold: true, wantReason: "protocol violation by the successor", wantErr: ErrProtocol},
		{name: "successor sends ready before begin", env: []string{"TD_RAW=ready", "TD_RAW_ROOM=1000"}, hold: true, wantReason: "protocol violation by the successor", wantErr: ErrProtocol},
		{name: "successor sends commit", env: []string{"TD_RAW=commit", "TD_RAW_ROOM=1000"}, hold: true, wantReason: "protocol violation by the successor", wantErr: ErrProtocol},
	}
}

// Every abort kind with connections in flight: afterwards the incumbent
// serves every connection again, on the same TCP connection (a
// half-written line is completed), holding one descriptor per connection
// and no more; the supervisor closed its copies; and the next handoff
// commits and passes them all.
func TestPassedConnsServedAgainAfterAborts(t *testing.T) {
	for _, tc := range passAborts() {
		t.Run(tc.name, func(t *testing.T) {
			checkLeaks(t)
			cfg := tc.cfg
			hold := filepath.Join(t.TempDir(), "release-drain")
			coldEnv := tc.coldEnv
			if tc.hold {
				cfg.OnEvent = releaseAtRollback(hold)
				coldEnv = append(coldEnv, "TD_DRAIN_HOLD="+hold)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancelAt != "" {
				cfg.OnEvent = func(e Event) {
					if e.Kind == EventPhase && e.Phase == tc.cancelAt {
						cancel()
					}
				}
			}
			c := newCluster(t, cfg, coldEnv...)
			inc := c.sup.Status().IncumbentPID
			p, base := poolFor(t, c, inc)
			sup := supFDs(fdLinks())
			spec := c.spec(tc.env...)
			if tc.deadline > 0 {
				spec.Deadline, spec.DrainGrace = tc.deadline, tc.deadline/4
			}
			if tc.grace > 0 {
				spec.DrainGrace = tc.grace
			}
			out, err := c.sup.PerformHandoff(ctx, spec)
			if err != nil {
				t.Fatalf("PerformHandoff: %v", err)
			}
			if out.Committed {
				t.Fatal("committed, want a rollback")
			}
			if !strings.Contains(out.AbortReason, tc.wantReason) || !errors.Is(out.Err, ErrAborted) || !errors.Is(out.Err, tc.wantErr) {
				t.Fatalf("abort %q (%v), want a reason with %q matching %v", out.AbortReason, out.Err, tc.wantReason, tc.wantErr)
			}
			passed, _ := daemonEvents(t, c.dir, "passed", inc)
			t.Logf("aborted after %v (drain %v); the incumbent passed connections %d times; outcome says %d passed", out.Phases.Total, out.Phases.Drain, passed, out.PassedConns)
			// The incumbent alone holds them again, once each (the
			// successor is gone, the supervisor closed its copies).
			p.waitOwned(t, inc, base, os.Getpid())
			if err := p.check(inc); err != nil {
				t.Fatalf("after the abort: %v", err)
			}
			waitArmed(t, c.dir, inc, 2*poolHalf)
			sup.wait(t)
			if err := holdsLockPID(c.dir, inc); err != nil {
				t.Fatal(err)
			}
			out = c.handoff()
			if !out.Committed || out.PassedConns != p.len() {
				t.Fatalf("handoff after the abort: committed=%v (%s), %d connections passed, want %d", out.Committed, out.AbortReason, out.PassedConns, p.len())
			}
			p.waitOwned(t, out.PID, base, inc, os.Getpid())
			if err := p.check(out.PID); err != nil {
				t.Fatalf("after the handoff that followed the abort: %v", err)
			}
			c.verify(nil)
		})
	}
}
