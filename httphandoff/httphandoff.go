// Package httphandoff makes a net/http server hand-off capable: its Server
// implements handoff.Service (and so handoff.Drainable) for an HTTP/1.1
// server: return it from handoff.Config.Open and handoff.Run drives it.
//
// Drain stops accepting, lets every connection already accepted finish the
// request it carries, stops each connection at its request boundary (an
// idle one at once) keeping it open, and then calls the Sync hook so every
// accepted write is durable. The Server is a handoff.ConnPasser: the
// stopped connections are passed to the successor (PassConns) and served
// there after the commit (AdoptConns), or served again here after an
// abort. Only connections with nothing buffered are stopped; TLS,
// hijacked and HTTP/2 connections are not passed and close at a request
// boundary as before. Seal and ResumeAfterAbort call the daemon's
// hooks; on resume the adapter serves again with a fresh http.Server from
// Config, since an http.Server that stopped cannot be restarted.
//
// # Why Drain does not use http.Server.Shutdown
//
// Shutdown first marks the server as shutting down, and from then on
// net/http closes a connection that reads a request without answering it
// (conn.serve checks for shutdown after each request it reads). A client
// that connected just before the drain, whose request was still on the
// wire, would get its connection closed instead of an answer: during a
// handoff that is a failed request, the very thing handoff exists to
// avoid. TestShutdownDropsRequestReadAfterItBegins shows it with a plain
// http.Server.
//
// Instead Drain ends Accept (the socket stays open, see below), disables
// keep-alives, which closes idle connections and makes busy ones close
// after their response, and waits for the connections to close. A
// connection accepted before the drain is answered when its request
// arrives within the drain grace
// (TestDrainServesAcceptedConnectionWithoutRequestYet).
//
// One race remains, as with any HTTP/1.1 server that closes an idle
// keep-alive connection: a client may have just sent a request on it. Go's
// http.Client resends such a request on a new connection when it is
// idempotent (GET, HEAD, or any method with an Idempotency-Key header);
// other clients have similar rules. Requests on fresh connections never
// see this.
//
// # Listeners stay open
//
// During a handoff the listening socket must stay open: connections that
// arrive while nobody accepts wait in the kernel's accept queue, and an
// aborted handoff serves them from the same socket. So the adapter hands
// Serve a wrapper whose Close only ends Accept (through an accept
// deadline) and leaves the socket open. The listeners must therefore be
// *net.TCPListener or *net.UnixListener (or anything else with
// SetDeadline), as returned by net.Listen and by handoff's
// InheritedListeners. Only Shutdown, when the daemon exits, closes them.
package httphandoff

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoff-go/handoff"
)

// ErrClosed is returned by the methods of a Server after Shutdown.
var ErrClosed = errors.New("httphandoff: server shut down")

// DefaultReadHeaderTimeout is the ReadHeaderTimeout of the http.Server
// built for Config.Handler when Config.NewServer is nil.
const DefaultReadHeaderTimeout = 10 * time.Second

// Config says what to serve and how to reach the daemon's state. Only
// Handler or NewServer is required; nil hooks do nothing.
type Config struct {
	// Handler serves the requests when NewServer is nil; the server then
	// has ReadHeaderTimeout set to DefaultReadHeaderTimeout.
	Handler http.Handler

	// NewServer returns a fresh, unstarted http.Server (handler, timeouts,
	// ErrorLog...; Addr is ignored). It is called by Start and by every
	// resume. The adapter sets ConnState, calling the one NewServer set.
	// Leave Protocols at its default: draining relies on HTTP/1.1
	// keep-alive control, which unencrypted HTTP/2 does not have.
	NewServer func() *http.Server

	// Sync runs in Drain once the accepted connections are done (or the
	// drain grace expired): make every accepted write durable (fsync). If
	// the grace expired, ctx is already done, yet Sync should still make
	// the writes durable.
	Sync func(ctx context.Context) error

	// Seal flushes and closes writer state for the successor.
	Seal func(ctx context.Context) (handoff.SealReport, error)

	// Reopen reopens writer state from disk. ResumeAfterAbort calls it
	// every time, before serving again, so it must be idempotent: a no-op
	// when the state is open and healthy.
	Reopen func(ctx context.Context) error

	// Close runs at the end of Shutdown, once the connections are done
	// and the listeners closed: close the daemon's state. After a
	// committed handoff the state is sealed already; after a stop signal
	// Close must make every accepted write durable.
	Close func(ctx context.Context) error

	// Logger receives unexpected Serve errors. Nil discards them.
	Logger *slog.Logger
}

// Server serves HTTP on a set of listeners and implements
// handoff.Drainable. Create it with New and call Start.
type Server struct {
	cfg       Config
	listeners []net.Listener
	conns     atomic.Int64 // open connections, across generations
	parked    atomic.Int64 // of conns, those a drain stopped while they waited (see passConn)
	hooks     testHooks

	mu       sync.Mutex // serialises Start, Drain, ResumeAfterAbort, Shutdown
	cur      *generation
	draining []*generation // stopped, with connections maybe still open
	col      *collector    // the connections the last Drain stopped, until PassConns
	kept     []*passConn   // passed by PassConns: AdoptConns may give them back
	closed   bool

	errMu     sync.Mutex // Serve goroutines take it while mu may be held
	serveErrs []error
}

// testHooks are seams for tests; nil fields do nothing.
type testHooks struct {
	drainWaiting func() // Drain stopped accepting and waits for connections
}

var _ handoff.Service = (*Server)(nil)

// generation is one http.Server serving every listener.
type generation struct {
	srv    *http.Server
	lns    []*keepOpen
	inject *injector      // serves passed connections
	wg     sync.WaitGroup // one Serve goroutine per listener, and the injector's

	mu     sync.Mutex
	live   map[*passConn]struct{}
	conns  int
	parked int           // of conns, collected by a Drain while their goroutine waits (see passConn)
	idle   chan struct{} // closed when every connection is closed or parked; nil when nobody waits
}

// deadliner is what the adapter needs of a listener to stop Accept
// without closing the socket.
type deadliner interface {
	SetDeadline(time.Time) error
}

// New returns a Server for cfg on listeners. It does not serve yet.
func New(cfg Config, listeners ...net.Listener) (*Server, error) {
	if cfg.Handler == nil && cfg.NewServer == nil {
		return nil, errors.New("httphandoff: Config needs Handler or NewServer")
	}
	if len(listeners) == 0 {
		return nil, errors.New("httphandoff: no listener")
	}
	for _, l := range listeners {
		if _, ok := l.(deadliner); !ok {
			return nil, fmt.Errorf("httphandoff: listener %s (%T) has no SetDeadline; pass a *net.TCPListener or *net.UnixListener", l.Addr(), l)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, listeners: listeners}, nil
}

// Addrs returns the addresses of the listeners.
func (s *Server) Addrs() []net.Addr {
	addrs := make([]net.Addr, len(s.listeners))
	for i, l := range s.listeners {
		addrs[i] = l.Addr()
	}
	return addrs
}

// Start serves on every listener, each in a goroutine the Server owns.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.cur != nil {
		return errors.New("httphandoff: already serving")
	}
	return s.startLocked()
}

func (s *Server) startLocked() error {
	for _, l := range s.listeners {
		if err := l.(deadliner).SetDeadline(time.Time{}); err != nil {
			return fmt.Errorf("httphandoff: clear the accept deadline of %s: %w", l.Addr(), err)
		}
	}
	g := &generation{live: map[*passConn]struct{}{}}
	g.srv = s.newServer(g)
	g.inject = newInjector(s.listeners[0].Addr(), g.srv)
	g.wg.Go(func() { g.srv.Serve(g.inject) })
	for _, l := range s.listeners {
		k := &keepOpen{Listener: l, addr: l.Addr().String()}
		g.lns = append(g.lns, k)
		g.wg.Go(func() {
			err := g.srv.Serve(k)
			if k.closed.Load() {
				return // stopped by the adapter
			}
			s.cfg.Logger.Error("httphandoff: serve", "addr", l.Addr(), "err", err)
			s.errMu.Lock()
			s.serveErrs = append(s.serveErrs, fmt.Errorf("httphandoff: serve %s: %w", l.Addr(), err))
			s.errMu.Unlock()
		})
	}
	s.cur = g
	return nil
}

func (s *Server) newServer(g *generation) *http.Server {
	var srv *http.Server
	if s.cfg.NewServer != nil {
		srv = s.cfg.NewServer()
	} else {
		srv = &http.Server{Handler: s.cfg.Handler, ReadHeaderTimeout: DefaultReadHeaderTimeout}
	}
	next := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		pc, _ := c.(*passConn)
		switch st {
		case http.StateNew:
			s.conns.Add(1)
			g.connDelta(1, pc, true)
		case http.StateIdle:
			if pc != nil {
				pc.markBoundary()
			}
		case http.StateClosed, http.StateHijacked:
			s.conns.Add(-1)
			if g.connDelta(-1, pc, false) {
				s.parked.Add(-1)
			}
		}
		if next != nil {
			next(c, st)
		}
	}
	return srv
}

// connDelta counts a connection in or out; out, it reports whether it was
// a parked one.
func (g *generation) connDelta(d int, pc *passConn, add bool) (wasParked bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if pc != nil {
		if add {
			pc.markBoundary()
			g.live[pc] = struct{}{}
		} else {
			delete(g.live, pc)
			pc.mu.Lock()
			wasParked = pc.parked
			pc.mu.Unlock()
			if wasParked {
				g.parked--
			}
		}
	}
	g.conns += d
	g.settledLocked()
	return wasParked
}

// settledLocked wakes waitIdle once every connection is closed or parked.
func (g *generation) settledLocked() {
	if g.conns-g.parked == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// stop ends accepting and keep-alives: Serve returns, idle connections
// close now, busy ones after their response. Every connection Serve
// accepted is counted by the time stop returns.
func (g *generation) stop(col *collector) int {
	for _, k := range g.lns {
		k.Close()
	}
	g.inject.Close()
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	parked := make([]*passConn, 0, len(g.live))
	for pc := range g.live {
		if pc.requestDetach(col) {
			parked = append(parked, pc)
		}
	}
	col.addAll(parked)
	g.parked += len(parked)
	g.settledLocked()
	return len(parked)
}

func (g *generation) parkedNow() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.parked
}

// unsettled counts the connections still open and not parked.
func (g *generation) unsettled() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.conns - g.parked
}

// waitIdle waits until the generation has no connection or ctx ends.
func (g *generation) waitIdle(ctx context.Context) error {
	g.mu.Lock()
	if g.conns-g.parked == 0 {
		g.mu.Unlock()
		return nil
	}
	if g.idle == nil {
		g.idle = make(chan struct{})
	}
	idle := g.idle
	g.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stopLocked stops the current generation, if any, and waits until ctx
// ends for the connections of every stopped generation to finish.
func (s *Server) stopLocked(ctx context.Context) error {
	if g := s.cur; g != nil {
		s.cur = nil
		if s.col == nil {
			s.col = &collector{}
		}
		s.parked.Add(int64(g.stop(s.col)))
		s.draining = append(s.draining, g)
	}
	if s.hooks.drainWaiting != nil {
		s.hooks.drainWaiting()
	}
	var busy []*generation
	var err error
	for _, g := range s.draining {
		if werr := g.waitIdle(ctx); werr != nil {
			busy, err = append(busy, g), werr
			continue
		}
		if g.parkedNow() == 0 {
			g.srv.Close() // nothing left to close; marks the server done
		}
		// Else the parked connections end on their own (passConn), and
		// Close would only walk them all inside the accept gap.
	}
	s.draining = busy
	return err
}

// OpenConns returns the number of client connections being served: those a
// Drain stopped and keeps (to be passed, or served again after an abort)
// are not counted.
func (s *Server) OpenConns() int { return int(s.conns.Load() - s.parked.Load()) }

// Drain stops accepting (the listening sockets stay open, so new
// connections wait in the accept queue), waits until ctx's deadline for
// the accepted connections to finish their requests, and calls the Sync
// hook. Connections still open at the deadline are reported in
// OpenConnsRemaining, not as an error: they finish their request on their
// own and close.
func (s *Server) Drain(ctx context.Context) (handoff.DrainReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return handoff.DrainReport{}, ErrClosed
	}
	s.stopLocked(ctx) // an expired grace shows in OpenConnsRemaining
	if s.cfg.Sync != nil {
		if err := s.cfg.Sync(ctx); err != nil {
			return handoff.DrainReport{}, fmt.Errorf("httphandoff: sync: %w", err)
		}
	}
	open := 0
	for _, g := range s.draining {
		open += g.unsettled() // parked ones are stopped, to be passed
	}
	return handoff.DrainReport{AcceptClosed: true, OpenConnsRemaining: open}, nil
}

// Seal calls the Seal hook.
func (s *Server) Seal(ctx context.Context) (handoff.SealReport, error) {
	if s.cfg.Seal == nil {
		return handoff.SealReport{}, nil
	}
	return s.cfg.Seal(ctx)
}

// ResumeAfterAbort calls the Reopen hook and, unless it is already
// serving, serves again on the same listeners with a fresh http.Server:
// the connections that queued meanwhile are accepted first. It is
// idempotent.
func (s *Server) ResumeAfterAbort(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.cfg.Reopen != nil {
		if err := s.cfg.Reopen(ctx); err != nil {
			return fmt.Errorf("httphandoff: reopen: %w", err)
		}
	}
	if s.cur != nil {
		return nil
	}
	if err := s.startLocked(); err != nil {
		return err
	}
	// Connections a drain stopped that were not passed: serve them again.
	if kept := s.col.take(); len(kept) > 0 {
		s.col = nil
		g := s.cur
		go func() {
			for _, c := range kept {
				c.giveBack(g.inject)
			}
		}()
	}
	s.col = nil
	return nil
}

// Shutdown is for the end of the process (after a committed handoff or on
// a stop signal): it stops serving if it still does, waits until ctx ends
// for every connection to finish, including those a Drain left open,
// closes what is left, closes the listeners and then runs the Close hook.
// It returns ctx's error if connections had to be cut, and the errors
// Serve and Close failed with, if any.
// The Server cannot serve again.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	errs := []error{s.stopLocked(ctx)}
	for _, c := range s.col.take() {
		c.Conn.Close()
	}
	s.col = nil
	s.kept = nil // passed: the library closes or gives back what it holds
	for _, g := range s.draining {
		g.srv.Close()
	}
	s.draining = nil
	for _, l := range s.listeners {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("httphandoff: close %s: %w", l.Addr(), err))
		}
	}
	s.errMu.Lock()
	errs = append(errs, s.serveErrs...)
	s.errMu.Unlock()
	if s.cfg.Close != nil {
		if err := s.cfg.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("httphandoff: close: %w", err))
		}
	}
	return errors.Join(errs...)
}

// keepOpen is the listener an http.Server serves. Its Close ends Accept
// (by setting an accept deadline in the past) but leaves the socket open.
type keepOpen struct {
	net.Listener
	addr   string
	once   sync.Once
	closed atomic.Bool
}

// aLongTimeAgo is a deadline that has always passed.
var aLongTimeAgo = time.Unix(1, 0)

// Accept returns the next connection. A connection the kernel handed over
// as Close ran is still returned: http.Server counts it (ConnState) before
// it calls Accept again, so stop waits for it.
func (k *keepOpen) Accept() (net.Conn, error) {
	if k.closed.Load() {
		return nil, net.ErrClosed
	}
	c, err := k.Listener.Accept()
	if err != nil && k.closed.Load() {
		return nil, net.ErrClosed
	}
	if err != nil {
		return nil, err
	}
	return wrapConn(c, k.addr), nil
}

// Close stops Accept, now and for good, without closing the socket.
func (k *keepOpen) Close() error {
	var err error
	k.once.Do(func() {
		k.closed.Store(true)
		err = k.Listener.(deadliner).SetDeadline(aLongTimeAgo)
	})
	return err
}
