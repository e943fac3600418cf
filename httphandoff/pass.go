package httphandoff

import (
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
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
type passConn struct {
	net.Conn
	lnAddr string

	mu       sync.Mutex
	boundary bool       // net/http went idle (or accepted it): its next read starts a request
	reading  bool       // a boundary read is blocked in the socket
	col      *collector // set by requestDetach: stop at the next boundary
	detached bool       // stopped and kept: Close leaves the socket open

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
	if _, ok := c.(syscall.Conn); !ok {
		return c // no descriptor to pass (a TLS connection, say): closed at a boundary as before
	}
	return &passConn{Conn: c, lnAddr: lnAddr}
}

// adoptedConn wraps a connection that was idle at a request boundary in
// this or the previous process, to be served by srv.
func adoptedConn(c net.Conn, lnAddr string, srv *http.Server) *passConn {
	idle := srv.IdleTimeout
	if idle == 0 {
		idle = srv.ReadTimeout // net/http waits for the next request as long
	}
	c.SetDeadline(time.Time{}) // a drain may have left one
	return &passConn{Conn: c, lnAddr: lnAddr, awaitFirst: true, idle: idle, readDL: -1, writeDL: -1}
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
	c.mu.Unlock()
}

// requestDetach makes the connection stop at its next request boundary
// (at once if it waits for a request) and go to col.
func (c *passConn) requestDetach(col *collector) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.col = col
	if c.reading {
		c.Conn.SetReadDeadline(aLongTimeAgo)
	}
}

// detachLocked hands the connection to its collector; false if the
// collector no longer takes any (the connection is then closed for real).
func (c *passConn) detachLocked() bool {
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
	n, err := c.Conn.Read(p)
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
	if atBoundary && c.col != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		c.detachLocked()
		return 0, errDetached
	}
	return n, err
}

// Close closes the socket unless the connection was detached: then net/http
// is done with it, and the adapter holds it.
func (c *passConn) Close() error {
	c.mu.Lock()
	detached := c.detached
	c.mu.Unlock()
	if detached {
		return nil
	}
	return c.Conn.Close()
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
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

func newInjector(addr net.Addr) *injector {
	return &injector{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
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
	col := s.col
	s.col = nil
	for _, g := range s.draining {
		g.srv.SetKeepAlivesEnabled(false) // the ones still busy close after their response
	}
	s.mu.Unlock()
	var out []handoff.PassedConn
	for _, c := range col.take() {
		if len(out) < max {
			out = append(out, handoff.PassedConn{Listener: c.lnAddr, Conn: c.Conn})
			continue
		}
		c.Conn.Close()
	}
	return out
}

// AdoptConns serves conns (passed by the previous process, or given back
// after an aborted handoff) with the current http.Server, as if just
// accepted. Connections whose listener is not one of this Server's, or
// that arrive when it does not serve, are closed.
func (s *Server) AdoptConns(conns []handoff.PassedConn) {
	s.mu.Lock()
	g := s.cur
	s.mu.Unlock()
	for _, pc := range conns {
		if g == nil || g.inject == nil || !s.hasListener(pc.Listener) {
			pc.Conn.Close()
			continue
		}
		if !g.inject.give(adoptedConn(pc.Conn, pc.Listener, g.srv)) {
			pc.Conn.Close()
		}
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
