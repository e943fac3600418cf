package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoff-go/handoff"
)

// respServer serves RESP on one listener, over the daemon's store, and
// takes part in handoffs: its drain stops every connection at a command
// boundary and keeps it open, with its state, to be passed.
//
// A connection is served by one goroutine, in a loop: run every complete
// command buffered, write the replies, then read. The boundary is the
// moment before the read: every complete command is answered and what is
// buffered is at most an incomplete one. A drain marks each connection and
// sets its read deadline in the past, which wakes a read in progress (or
// makes the next one return at once) without taking any byte from the
// socket; the goroutine then leaves the connection, open, to the server
// (stopped) and ends. A connection whose incomplete command is bigger
// than a state can carry (maxUnparsed) reads on until the command is
// complete and answered, and stops then.
type respServer struct {
	d     *daemon
	log   *slog.Logger
	ln    net.Listener
	addr  string // ln.Addr().String(): PassedConn.Listener
	hooks respHooks

	accepted atomic.Int64 // connections accepted by this process
	adopted  atomic.Int64 // connections passed to this process, or given back after an abort
	nextID   atomic.Uint64

	mu         sync.Mutex
	acceptStop chan struct{}          // closed to end the accept loop
	acceptDone chan struct{}          // closed when the accept loop ended; nil: not accepting
	conns      map[*respConn]struct{} // served by a goroutine
	settled    chan struct{}          // closed when conns is empty; nil when nobody waits
	draining   bool                   // connections stop at their next boundary
	passed     bool                   // PassConns ran: a connection stopping now is closed
	stopped    []*respConn            // stopped by the drain, open, not passed yet
	closed     bool
	wg         sync.WaitGroup // the accept loop and the connection goroutines
}

// respHooks are seams for tests; nil fields do nothing.
type respHooks struct {
	afterRead func(c *respConn, n int) // a read of n bytes returned
}

// respConn is one client connection and its protocol state. The serving
// goroutine owns db, name and buf; mu guards stop.
type respConn struct {
	s    *respServer
	nc   net.Conn
	id   uint64
	db   int
	name string
	buf  []byte // read, not parsed yet (from off)
	off  int

	mu   sync.Mutex
	stop bool // stop at the next boundary
}

// readChunk is how much room a read gets at least.
const readChunk = 16 << 10

// maxReplyBuffer is how many reply bytes are written at once, at most:
// beyond it the replies to the commands run so far are written before the
// next one runs.
const maxReplyBuffer = 64 << 10

func newRESPServer(d *daemon, ln net.Listener) *respServer {
	s := &respServer{d: d, log: d.log, ln: ln, addr: ln.Addr().String(), conns: map[*respConn]struct{}{}}
	// Ids are unique across the processes a handoff chain runs as long as
	// no process takes more than one connection a microsecond on average:
	// each starts above the time it started at, and above every id passed
	// to it.
	s.nextID.Store(uint64(time.Now().UnixMicro()))
	return s
}

// start accepts connections.
func (s *respServer) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startLocked()
}

func (s *respServer) startLocked() error {
	if s.acceptDone != nil {
		return nil
	}
	if err := s.ln.(deadliner).SetDeadline(time.Time{}); err != nil {
		return err
	}
	stop, done := make(chan struct{}), make(chan struct{})
	s.acceptStop, s.acceptDone = stop, done
	s.wg.Go(func() {
		defer close(done)
		s.acceptLoop(stop)
	})
	return nil
}

// deadliner is what the server needs of a listener to stop Accept without
// closing the socket (connections arriving during a handoff wait in its
// queue).
type deadliner interface {
	SetDeadline(time.Time) error
}

func (s *respServer) acceptLoop(stop <-chan struct{}) {
	var backoff time.Duration
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
				return // stopped
			}
			// Out of descriptors, say: try again, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("resp: accept", "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-stop:
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		s.accepted.Add(1)
		s.serve(&respConn{s: s, nc: nc, id: s.nextID.Add(1)})
	}
}

// serve runs c's loop in a goroutine, unless the server is stopping: then
// c is stopped at once (it has read nothing).
func (s *respServer) serve(c *respConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.nc.Close()
		return
	}
	if s.draining {
		s.parkLocked(c)
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Go(c.loop)
}

// stopAccepting ends the accept loop, leaving the socket open, and waits
// for it. Called with mu held.
func (s *respServer) stopAcceptingLocked() {
	done := s.acceptDone
	if done == nil {
		return
	}
	s.acceptDone = nil
	close(s.acceptStop)
	s.ln.(deadliner).SetDeadline(aLongTimeAgo)
	s.mu.Unlock() // the loop may be handing a connection to serve
	<-done
	s.mu.Lock()
}

// aLongTimeAgo is a deadline that has always passed.
var aLongTimeAgo = time.Unix(1, 0)

// beginDrain stops accepting and asks every connection to stop at its
// next boundary; waitDrained waits for them.
func (s *respServer) beginDrain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.draining, s.passed = true, false
	s.stopAcceptingLocked()
	for c := range s.conns {
		c.requestStop()
	}
}

// waitDrained waits until no connection is served any more (each stopped
// or closed) or ctx ends, and returns how many are still served.
func (s *respServer) waitDrained(ctx context.Context) int {
	s.mu.Lock()
	if len(s.conns) == 0 {
		s.mu.Unlock()
		return 0
	}
	if s.settled == nil {
		s.settled = make(chan struct{})
	}
	settled := s.settled
	s.mu.Unlock()
	select {
	case <-settled:
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// leave is the end of c's goroutine: c stopped at a boundary (keep) or is
// done (closed). It reports false if c is to be served on after all: the
// handoff was aborted meanwhile (resume ran between the stop and here).
func (s *respServer) leave(c *respConn, keep bool) (left bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if keep && !s.draining && !s.closed {
		return false
	}
	delete(s.conns, c)
	if keep {
		s.parkLocked(c)
	} else {
		c.nc.Close()
	}
	if len(s.conns) == 0 && s.settled != nil {
		close(s.settled)
		s.settled = nil
	}
	return true
}

// parkLocked keeps a stopped connection for PassConns, or closes it when
// it can no longer be passed.
func (s *respServer) parkLocked(c *respConn) {
	if s.closed || s.passed {
		c.nc.Close()
		return
	}
	s.stopped = append(s.stopped, c)
}

// passConns returns at most max of the stopped connections with their
// state and closes the others. Connections that stop from now on are
// closed.
func (s *respServer) passConns(limit int) []handoff.PassedConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.passed = true
	stopped := s.stopped
	s.stopped = nil
	out := make([]handoff.PassedConn, 0, min(len(stopped), max(limit, 0)))
	for _, c := range stopped {
		state := c.state().encode()
		if len(out) >= limit || len(state) > handoff.MaxConnState {
			c.nc.Close()
			continue
		}
		out = append(out, handoff.PassedConn{Listener: s.addr, Conn: c.nc, State: state})
	}
	return out
}

// adopt serves connections passed to this process (or given back after an
// aborted handoff) with their state. Those whose state does not decode
// are closed.
func (s *respServer) adopt(conns []handoff.PassedConn) {
	for _, pc := range conns {
		st, err := decodeRESPState(pc.State)
		if err != nil {
			s.log.Warn("resp: closing a passed connection", "remote", pc.Conn.RemoteAddr(), "err", err)
			pc.Conn.Close()
			continue
		}
		for {
			cur := s.nextID.Load()
			if st.ID < cur || s.nextID.CompareAndSwap(cur, st.ID) {
				break
			}
		}
		pc.Conn.SetDeadline(time.Time{}) // the drain left one in the past
		s.adopted.Add(1)
		c := &respConn{s: s, nc: pc.Conn, id: st.ID, db: st.DB, name: st.Name, buf: st.Unparsed}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			pc.Conn.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Go(c.loop)
		s.mu.Unlock()
	}
}

// resume serves again after an aborted handoff: it accepts again, lets the
// connections still served go on, and serves again the ones the drain
// stopped that were not passed (those passed come back through adopt).
func (s *respServer) resume() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.draining, s.passed = false, false
	for c := range s.conns {
		c.cancelStop()
	}
	for _, c := range s.stopped {
		c.nc.SetDeadline(time.Time{})
		s.conns[c] = struct{}{}
		s.wg.Go(c.loop)
	}
	s.stopped = nil
	return s.startLocked()
}

// shutdown ends the service: it stops accepting, stops every connection
// at its boundary (all complete commands answered) and closes it, waiting
// until ctx ends, then closes what is left and the listener.
func (s *respServer) shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.draining = true
	s.stopAcceptingLocked()
	s.closed = true // from now on a stopping connection is closed
	for _, c := range s.stopped {
		c.nc.Close()
	}
	s.stopped = nil
	for c := range s.conns {
		c.requestStop()
	}
	s.mu.Unlock()
	var err error
	if left := s.waitDrained(ctx); left > 0 {
		err = ctx.Err()
		s.mu.Lock()
		for c := range s.conns {
			c.nc.Close() // its goroutine ends on the error
		}
		s.mu.Unlock()
	}
	s.ln.Close()
	s.wg.Wait()
	return err
}

// openConns counts the connections served or held.
func (s *respServer) openConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns) + len(s.stopped)
}

func (c *respConn) requestStop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stop = true
	c.nc.SetReadDeadline(aLongTimeAgo)
}

func (c *respConn) cancelStop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stop = false
	c.nc.SetReadDeadline(time.Time{})
}

// atBoundary reports whether the goroutine should stop before its next
// read. When it reads on, the read deadline is cleared (a stop that had
// to wait for an incomplete command left one in the past).
func (c *respConn) atBoundary() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.stop {
		return false
	}
	if len(c.buf)-c.off <= maxUnparsed {
		return true
	}
	c.nc.SetReadDeadline(time.Time{})
	return false
}

func (c *respConn) state() respState {
	return respState{DB: c.db, ID: c.id, Name: c.name, Unparsed: c.buf[c.off:]}
}

// loop serves c until the client leaves, a protocol error, or a stop.
func (c *respConn) loop() {
	var out []byte
	for {
		var quit bool
		out, quit = c.runBuffered(out[:0])
		if len(out) > 0 {
			if _, err := c.nc.Write(out); err != nil {
				c.s.leave(c, false)
				return
			}
			if cap(out) > 4*maxReplyBuffer {
				out = nil // a big reply: do not keep its buffer
			}
		}
		if quit {
			c.s.leave(c, false)
			return
		}
		if c.atBoundary() {
			c.compact()
			if c.s.leave(c, true) {
				return
			}
		}
		if !c.grow() {
			c.nc.Write(appendError(out[:0], "ERR "+protoError("command too big").Error()))
			c.s.leave(c, false)
			return
		}
		n, err := c.nc.Read(c.buf[len(c.buf):cap(c.buf)])
		c.buf = c.buf[:len(c.buf)+n]
		if h := c.s.hooks.afterRead; h != nil {
			h(c, n)
		}
		if err != nil && !(errors.Is(err, os.ErrDeadlineExceeded) && n == 0) {
			c.s.leave(c, false) // EOF, or the connection failed
			return
		}
		// A deadline in the past: a stop, seen at the top of the loop.
	}
}

// runBuffered runs the complete commands buffered and appends their
// replies to out, writing them out when they grow past maxReplyBuffer.
// quit: the connection is to be closed once out is written (QUIT, a
// protocol error, or a failed write).
func (c *respConn) runBuffered(out []byte) (_ []byte, quit bool) {
	for {
		args, n, err := parseCommand(c.buf[c.off:])
		if err != nil {
			return appendError(out, "ERR "+err.Error()), true
		}
		if n == 0 {
			return out, false
		}
		c.off += n
		if len(args) == 0 {
			continue
		}
		out, quit = c.run(out, args)
		if quit {
			return out, true
		}
		if len(out) > maxReplyBuffer {
			if _, err := c.nc.Write(out); err != nil {
				return out[:0], true
			}
			out = out[:0]
		}
	}
}

// compact moves the unparsed bytes to the front of the buffer.
func (c *respConn) compact() {
	if c.off == 0 {
		return
	}
	n := copy(c.buf, c.buf[c.off:])
	c.buf, c.off = c.buf[:n], 0
}

// maxBuffer bounds a connection's input buffer: the biggest command the
// parser takes, with its framing (at most 36 bytes an argument), fits.
const maxBuffer = maxCommandLen + 64<<10

// grow makes room for a read: readChunk bytes, or what is left up to
// maxBuffer; false if the buffer is full (the parser takes no command
// this big, so it cannot be). A big buffer whose command is done shrinks
// back.
func (c *respConn) grow() bool {
	c.compact()
	if len(c.buf) == 0 && cap(c.buf) > 4*readChunk {
		c.buf = nil
	}
	if cap(c.buf)-len(c.buf) >= readChunk {
		return true
	}
	size := min(max(2*cap(c.buf), len(c.buf)+readChunk), maxBuffer)
	if size <= len(c.buf) {
		return false
	}
	nb := make([]byte, len(c.buf), size)
	copy(nb, c.buf)
	c.buf = nb
	return true
}
