package httphandoff

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoff-go/handoff"
)

// idleReadSize is the size of net/http's per-connection read buffer: a
// Read of exactly this many bytes right after the connection went idle
// (or was accepted) means nothing is buffered, so the connection stands
// at a request boundary and can be passed with no state.
const idleReadSize = 4 << 10

// errDetached ends net/http's read of a connection Drain stopped at a
// request boundary; the adapter keeps the socket. It is a timeout to
// net/http, which then drops the connection without writing an error
// response (as for an idle timeout).
var errDetached error = detachedError{}

type detachedError struct{}

func (detachedError) Error() string   { return "httphandoff: connection detached for a handoff" }
func (detachedError) Timeout() bool   { return true }
func (detachedError) Temporary() bool { return true }

// passConn is every connection the adapter serves: it lets Drain stop the
// connection at a request boundary and keep it open.
//
// On Linux a connection at a request boundary waits for its next request
// without reading it: the descriptor's readiness is awaited through its
// syscall.RawConn, and the request is read only if no Drain stopped the
// connection meanwhile. So a Drain stops an idle connection by marking it,
// without waking its goroutine (it is "parked": the descriptor can be
// passed while the goroutine still waits, and whatever the client sends
// stays in the socket for whoever serves the connection next). Waking
// each goroutine costs a few microseconds, which for ten thousand idle
// connections would lengthen the accept gap by tens of milliseconds; the
// parked goroutines end after the handoff, when the descriptor is closed
// (the commit) or handed back (an abort).
type passConn struct {
	net.Conn
	lnAddr string
	raw    syscall.RawConn // nil: no readiness wait here (the boundary read wakes by deadline)
	// lastIdle is when the connection last went idle (UnixNano):
	// PassConns passes the recently used ones first.
	lastIdle atomic.Int64

	mu       sync.Mutex
	boundary bool       // net/http went idle (or accepted it): its next read starts a request
	reading  bool       // a boundary read waits in the socket
	col      *collector // set by requestDetach: stop at the next boundary
	parked   bool       // collected while its goroutine still waits at the boundary
	detached bool       // stopped and kept: Close leaves the socket open
	// handback: the connection is served again in this process; the old
	// goroutine ends, and its Close gives the connection to this injector.
	handback *injector

	// An adopted connection (passed, or kept through an aborted handoff)
	// was idle between requests, but net/http takes it for a new one and
	// arms its header (and write) deadline before the first read. Until
	// the first bytes come the connection waits as an idle keep-alive one
	// does (the server's IdleTimeout), and the deadlines net/http asks for
	// meanwhile are armed when they come, for as long as net/http meant.
	awaitFirst      bool
	idle            time.Duration // the idle wait; 0: none
	readDL, writeDL time.Duration // deferred deadlines, from the first bytes; -1: none
}

func wrapConn(c net.Conn, lnAddr string) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c // no descriptor to pass (a TLS connection, say): closed at a boundary as before
	}
	return &passConn{Conn: c, lnAddr: lnAddr, raw: boundaryRawConn(sc)}
}

// adoptedConn wraps a connection that was idle at a request boundary in
// this or the previous process, to be served by srv.
func adoptedConn(c net.Conn, lnAddr string, srv *http.Server) *passConn {
	idle := srv.IdleTimeout
	if idle == 0 {
		idle = srv.ReadTimeout // net/http waits for the next request as long
	}
	c.SetDeadline(time.Time{}) // a drain or a hand-back may have left one
	pc := &passConn{Conn: c, lnAddr: lnAddr, awaitFirst: true, idle: idle, readDL: -1, writeDL: -1}
	if sc, ok := c.(syscall.Conn); ok {
		pc.raw = boundaryRawConn(sc)
	}
	return pc
}

// deferDeadline turns t into the time left from now (-1 for none).
func deferDeadline(t time.Time) time.Duration {
	if t.IsZero() {
		return -1
	}
	return max(time.Until(t), 0)
}

func (c *passConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.awaitFirst {
		c.readDL, c.writeDL = deferDeadline(t), deferDeadline(t)
		return nil
	}
	return c.Conn.SetDeadline(t)
}

func (c *passConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.awaitFirst {
		c.readDL = deferDeadline(t)
		return nil
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *passConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.awaitFirst {
		c.writeDL = deferDeadline(t)
		return nil
	}
	return c.Conn.SetWriteDeadline(t)
}

// armDeferredLocked ends the idle wait of an adopted connection: the
// deadlines net/http asked for start now.
func (c *passConn) armDeferredLocked() {
	c.awaitFirst = false
	now := time.Now()
	at := func(d time.Duration) time.Time {
		if d < 0 {
			return time.Time{}
		}
		return now.Add(d)
	}
	c.Conn.SetReadDeadline(at(c.readDL))
	c.Conn.SetWriteDeadline(at(c.writeDL))
}

func (c *passConn) markBoundary() {
	c.mu.Lock()
	c.boundary = true
	adopted := c.awaitFirst
	c.mu.Unlock()
	if !adopted {
		// An adopted connection counts as idle since long ago until it
		// serves a request here: a drain soon after the adoption passes
		// the ones in use first.
		c.lastIdle.Store(time.Now().UnixNano())
	}
}

// requestDetach makes the connection stop at its next request boundary
// and go to col. A connection waiting at the boundary without reading
// (raw) is collected at once and left parked: it reports true. One
// waiting in a plain Read is woken by a deadline in the past.
func (c *passConn) requestDetach(col *collector) (parked bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.col = col
	if !c.reading {
		return false
	}
	if c.raw != nil {
		c.parked = true // the caller adds it to col (collector.addAll)
		return true
	}
	c.Conn.SetReadDeadline(aLongTimeAgo)
	return false
}

// detachLocked hands the connection to its collector; false if the
// collector no longer takes any (the connection is then closed for real).
func (c *passConn) detachLocked() bool {
	if c.parked {
		c.detached = true // collected already
		return true
	}
	if c.col != nil && c.col.add(c) {
		c.detached = true
		return true
	}
	return false
}

func (c *passConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	atBoundary := c.boundary && len(p) == idleReadSize
	if atBoundary && c.col != nil {
		c.detachLocked()
		c.mu.Unlock()
		return 0, errDetached
	}
	c.reading = atBoundary
	idleWait := c.awaitFirst
	if idleWait {
		var dl time.Time
		if c.idle > 0 {
			dl = time.Now().Add(c.idle)
		}
		c.Conn.SetReadDeadline(dl)
	}
	c.mu.Unlock()
	var n int
	var err error
	stopped := false
	if atBoundary && c.raw != nil {
		n, err, stopped = c.boundaryRead(p)
	} else {
		n, err = c.Conn.Read(p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reading = false
	if idleWait && c.awaitFirst && (n > 0 || c.col == nil) {
		c.armDeferredLocked()
	}
	if n > 0 {
		c.boundary = false
		return n, err
	}
	if atBoundary && c.col != nil && (stopped || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed)) {
		c.detachLocked()
		return 0, errDetached
	}
	return n, err
}

// boundaryRead reads the next request's first bytes once the socket is
// readable, unless a Drain stopped the connection meanwhile (stopped):
// then nothing is read, and the bytes stay in the socket.
func (c *passConn) boundaryRead(p []byte) (n int, err error, stopped bool) {
	var rerr error
	werr := c.raw.Read(func(fd uintptr) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.col != nil {
			stopped = true
			return true
		}
		n, rerr = readFD(fd, p)
		if rerr == syscall.EAGAIN {
			n, rerr = 0, nil
			return false
		}
		c.reading = false // the request is read: a Drain waits for its answer
		return true
	})
	switch {
	case stopped:
		return 0, nil, true
	case werr != nil:
		return 0, c.opError(werr), false
	case rerr != nil:
		return 0, c.opError(os.NewSyscallError("read", rerr)), false
	case n <= 0:
		return 0, io.EOF, false
	}
	return n, nil, false
}

func (c *passConn) opError(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return err
	}
	return &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// Close closes the socket unless the connection was detached: then net/http
// is done with it, and the adapter holds it (or gives it back to be served
// again). A parked connection stays open too: net/http closes idle
// connections when keep-alives are disabled, but its descriptor is passed.
func (c *passConn) Close() error {
	c.mu.Lock()
	detached, parked, back := c.detached, c.parked, c.handback
	if detached {
		c.handback = nil
	}
	c.mu.Unlock()
	if detached && back != nil {
		if !back.give(adoptedConn(c.Conn, c.lnAddr, back.srv)) {
			c.Conn.Close()
		}
		return nil
	}
	if detached || parked {
		return nil
	}
	return c.Conn.Close()
}

// giveBack serves the connection again in this process through in: at once
// if its goroutine has ended, else once the parked goroutine, woken here,
// has let go of it (Close).
func (c *passConn) giveBack(in *injector) {
	c.mu.Lock()
	if c.detached {
		c.mu.Unlock()
		if !in.give(adoptedConn(c.Conn, c.lnAddr, in.srv)) {
			c.Conn.Close()
		}
		return
	}
	c.handback = in
	c.Conn.SetReadDeadline(aLongTimeAgo) // wakes the parked goroutine: it ends (errDetached)
	c.mu.Unlock()
}

// collector gathers the connections one Drain stopped.
type collector struct {
	mu     sync.Mutex
	conns  []*passConn
	closed bool
}

func (k *collector) add(c *passConn) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return false
	}
	k.conns = append(k.conns, c)
	return true
}

// addAll adds the connections requestDetach parked. The collector is
// open: only take closes it, and Drain (which parks) and take's callers
// all hold the Server's lock.
func (k *collector) addAll(cs []*passConn) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.conns = append(k.conns, cs...)
}

// take closes the collector and returns what it gathered.
func (k *collector) take() []*passConn {
	if k == nil {
		return nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closed = true
	c := k.conns
	k.conns = nil
	return c
}

// injector is a listener whose Accept returns the connections AdoptConns
// hands it, served by the current generation's http.Server.
type injector struct {
	addr net.Addr
	srv  *http.Server // the generation's, whose timeouts an adopted connection takes
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

func newInjector(addr net.Addr, srv *http.Server) *injector {
	return &injector{addr: addr, srv: srv, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (in *injector) Accept() (net.Conn, error) {
	select {
	case c := <-in.ch:
		return c, nil
	case <-in.done:
		return nil, net.ErrClosed
	}
}

func (in *injector) Close() error {
	in.once.Do(func() { close(in.done) })
	return nil
}

func (in *injector) Addr() net.Addr { return in.addr }

// give serves c; false if the injector is closed.
func (in *injector) give(c net.Conn) bool {
	select {
	case in.ch <- c:
		return true
	case <-in.done:
		return false
	}
}

// PassConns returns at most max of the connections the last Drain stopped
// at a request boundary, with no state (only connections with nothing
// buffered are stopped), and closes the others. Connections still busy
// close after their response, as without passing. See handoff.ConnPasser.
func (s *Server) PassConns(max int) []handoff.PassedConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	col := s.col
	s.col = nil
	for _, g := range s.draining {
		if g.unsettled() > 0 {
			g.srv.SetKeepAlivesEnabled(false) // the ones still busy close after their response
		}
	}
	conns := recentFirst(col.take(), time.Now().Add(-recentUse))
	out := make([]handoff.PassedConn, 0, min(len(conns), max))
	for _, c := range conns {
		if len(out) < max {
			out = append(out, handoff.PassedConn{Listener: c.lnAddr, Conn: c.Conn})
			s.kept = append(s.kept, c)
			continue
		}
		c.Conn.Close()
	}
	return out
}

// recentUse: a connection that went idle this recently is passed (and
// served by the successor) before the ones idle longer, so that clients in
// the middle of their work wait least; if not all can be passed, the ones
// idle longest are closed.
const recentUse = time.Second

// recentFirst puts the connections idle since after cutoff first, in
// place, keeping the order otherwise.
func recentFirst(cs []*passConn, cutoff time.Time) []*passConn {
	at := cutoff.UnixNano()
	older := make([]*passConn, 0, len(cs))
	n := 0
	for _, c := range cs {
		if c.lastIdle.Load() >= at {
			cs[n] = c
			n++
			continue
		}
		older = append(older, c)
	}
	copy(cs[n:], older)
	return cs
}

// AdoptConns serves conns (passed by the previous process, or given back
// after an aborted handoff) with the current http.Server, as if just
// accepted. Connections whose listener is not one of this Server's, or
// that arrive when it does not serve, are closed.
func (s *Server) AdoptConns(conns []handoff.PassedConn) {
	s.mu.Lock()
	g := s.cur
	var back []*passConn
	fresh := conns
	if len(s.kept) > 0 { // an aborted handoff gives back what PassConns passed
		kept := make(map[net.Conn]*passConn, len(s.kept))
		for _, c := range s.kept {
			kept[c.Conn] = c
		}
		fresh = nil
		for _, pc := range conns {
			if kp, ok := kept[pc.Conn]; ok {
				delete(kept, pc.Conn)
				back = append(back, kp)
				continue
			}
			fresh = append(fresh, pc)
		}
		s.kept = s.kept[:0]
		for _, c := range kept {
			s.kept = append(s.kept, c)
		}
	}
	s.mu.Unlock()
	if g == nil || g.inject == nil {
		for _, kp := range back {
			kp.Conn.Close()
		}
		closeAll(fresh)
		return
	}
	for _, kp := range back {
		kp.giveBack(g.inject)
	}
	for _, pc := range fresh {
		if !s.hasListener(pc.Listener) || !g.inject.give(adoptedConn(pc.Conn, pc.Listener, g.srv)) {
			pc.Conn.Close()
		}
	}
}

func closeAll(conns []handoff.PassedConn) {
	for _, pc := range conns {
		pc.Conn.Close()
	}
}

func (s *Server) hasListener(addr string) bool {
	for _, l := range s.listeners {
		if l.Addr().String() == addr {
			return true
		}
	}
	return false
}

var _ handoff.ConnPasser = (*Server)(nil)
