//go:build linux

package handoff

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/handoff-go/handoff/internal/fdutil"
	"github.com/handoff-go/handoff/internal/wire"
)

// The successor's steps are typestates: each consumes the previous value,
// so calling them out of order is a compile error or, on reuse of a
// consumed value, an error.
//
//	Successor --Handshake--> HandshookSuccessor --WaitForBegin--> BegunSuccessor --AnnounceAndBind--> Incumbent
//
// Between Handshake and WaitForBegin is the warm-up: the incumbent still
// serves (it has not been asked to drain), and the successor may prepare
// whatever it can without the lock, read-only: load the last snapshot,
// build indexes. WaitForBegin tells the supervisor the warm-up is over
// (ReadyToBegin); only then does the incumbent drain. A warm-up longer
// than the supervisor's liveness timeout needs StartHeartbeats.

// HandshookSuccessor has exchanged Hello/HelloAck with the supervisor; it
// may warm up, then waits for Begin.
type HandshookSuccessor struct {
	inherited  *InheritedListeners
	conn       *wire.Conn
	id         string
	buildID    string
	deadline   time.Time
	beat       time.Duration // heartbeat interval for the supervisor's liveness
	handshaken time.Time
	// control is the control socket path AnnounceAndBind will be given,
	// when the caller knows it (Run does): then a failure to bind it
	// before Begin aborts at once. Empty: the supervisor's path, bound if
	// it can be.
	control string
	// takeConns says the successor takes passed connections (TakeConns).
	takeConns bool
	// expectConns: about how many the supervisor said may come (HelloAck).
	expectConns int

	mu    sync.Mutex
	guard *HeartbeatGuard
}

// BegunSuccessor may take the data-directory lock and open its data.
type BegunSuccessor struct {
	inherited *InheritedListeners
	conn      *wire.Conn
	id        string
	buildID   string
	deadline  time.Time
	beat      time.Duration
	begun     time.Time
	// pre is the control socket bound at its temporary name before
	// Begin, at the supervisor's path; nil if there was none to bind.
	pre *preparedSocket
	// acceptsConns: this successor said it takes passed connections.
	acceptsConns bool
	// conns are the connections the incumbent passed: they arrive on the
	// session after the Commit (set by AnnounceAndBind).
	conns *connStream

	mu    sync.Mutex
	guard *HeartbeatGuard
	used  bool
}

// HeartbeatGuard keeps the supervisor's liveness timer fed while the
// successor opens its data. Stop it (or call AnnounceAndBind, which stops it).
type HeartbeatGuard struct{ h *heartbeater }

// Stop ends the heartbeats. Idempotent; safe on a nil guard.
func (g *HeartbeatGuard) Stop() {
	if g != nil {
		g.h.Stop()
	}
}

var errConsumed = errors.New("handoff: this step was already taken (typestate values are single-use)")

// Handshake sends Hello with buildID and waits for HelloAck (bounded by
// wire.DefaultHelloTimeout). It consumes s.
func (s *Successor) Handshake(buildID string) (*HandshookSuccessor, error) {
	if s == nil || s.conn == nil {
		return nil, errConsumed
	}
	conn := s.conn
	s.conn = nil
	if err := conn.Send(hello(wire.RoleSuccessor, buildID), "", wire.WriteTimeout); err != nil {
		conn.Close()
		return nil, fmt.Errorf("handoff: successor hello: %w", err)
	}
	f, err := conn.Recv(wire.DefaultHelloTimeout)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("handoff: waiting for HelloAck: %w", err)
	}
	switch m := f.Msg.(type) {
	case wire.HelloAck:
		if _, err := wire.Negotiate(wire.MinVersion, wire.MaxVersion, m.Version, m.Version); err != nil {
			conn.Close()
			return nil, fmt.Errorf("handoff: supervisor chose version %d: %w", m.Version, err)
		}
		if f.ID == "" {
			conn.Close()
			return nil, wire.Violation("HelloAck without a handoff id")
		}
		conn.SetVersion(m.Version)
		deadline := time.Now().Add(wire.DefaultDeadline)
		if m.DeadlineMS > 0 {
			deadline = time.Now().Add(time.Duration(m.DeadlineMS) * time.Millisecond)
		}
		beat := wire.HeartbeatInterval(time.Duration(m.LivenessMS) * time.Millisecond)
		return &HandshookSuccessor{inherited: s.inherited, conn: conn, id: f.ID, buildID: buildID, deadline: deadline, beat: beat, handshaken: time.Now(), expectConns: m.ExpectConns}, nil
	case wire.Abort:
		conn.Close()
		return nil, fmt.Errorf("%w: %s", ErrAborted, m.Reason)
	case wire.Error:
		conn.Close()
		return nil, fmt.Errorf("%w: supervisor refused the handshake: %s", ErrAborted, m.Reason)
	default:
		conn.Close()
		return nil, wire.Violation("expected hello_ack, got %s", f.Msg.Type())
	}
}

// HandoffID returns the id the supervisor gave this handoff.
func (s *HandshookSuccessor) HandoffID() string { return s.id }

// Deadline is when the supervisor gives up on this handoff: a warm-up
// must end well before it.
func (s *HandshookSuccessor) Deadline() time.Time { return s.deadline }

// StartHeartbeats keeps the supervisor's liveness timer fed during the
// warm-up, as BegunSuccessor.StartHeartbeats does while opening. The
// heartbeats stop with the guard or when WaitForBegin is called; calling
// it again returns the running guard.
func (s *HandshookSuccessor) StartHeartbeats() *HeartbeatGuard {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.guard == nil && s.conn != nil {
		s.guard = &HeartbeatGuard{h: startHeartbeats(s.conn, s.id, s.beat)}
	}
	return s.guard
}

// TakeConns makes this successor take the established connections the
// incumbent passes: WaitForBegin tells the supervisor how many fit in its
// descriptor limit, and BegunSuccessor.Conns returns the ones that came.
// Without it none are passed (the incumbent closes them at a request
// boundary). Run calls it.
func (s *HandshookSuccessor) TakeConns() {
	s.mu.Lock()
	s.takeConns = true
	s.mu.Unlock()
}

// giveUp tells the supervisor the warm-up failed, so that it aborts with
// reason instead of waiting for the process to exit. It consumes s.
func (s *HandshookSuccessor) giveUp(reason string) {
	s.mu.Lock()
	conn, g := s.conn, s.guard
	s.conn = nil
	s.mu.Unlock()
	g.Stop()
	if conn == nil {
		return
	}
	conn.Send(wire.Abort{Reason: reason}, s.id, wire.WriteTimeout)
	conn.Close()
}

// WaitForBegin ends the warm-up and blocks until the supervisor sends
// Begin, which it does only after the incumbent has drained, sealed and
// released the lock. It stops the warm-up's heartbeats and, from protocol
// version 2 on, sends ReadyToBegin first: the incumbent is asked to drain
// only then. It returns an error matching ErrAborted if the handoff was
// aborted or the supervisor went away; the successor must then exit
// without serving. It consumes s.
func (s *HandshookSuccessor) WaitForBegin(ctx context.Context) (*BegunSuccessor, error) {
	if s == nil {
		return nil, errConsumed
	}
	s.mu.Lock()
	conn, g, takeConns := s.conn, s.guard, s.takeConns
	s.conn = nil
	s.mu.Unlock()
	if conn == nil {
		return nil, errConsumed
	}
	g.Stop()
	// Bind the control socket at its temporary name now, off the accept
	// gap (AnnounceAndBind uses it if it is given the same path).
	var pre *preparedSocket
	if s.control != "" {
		var err error
		if pre, err = prepareControlSocket(s.control); err != nil {
			// It would fail again after the incumbent sealed for nothing.
			reason := "the successor cannot bind its control socket: " + err.Error()
			if conn.Version() >= wire.WarmUpVersion {
				conn.Send(wire.Abort{Reason: reason}, s.id, wire.WriteTimeout)
			}
			conn.Close()
			return nil, fmt.Errorf("%w: the successor cannot bind its control socket: %w", ErrAborted, err)
		}
	} else if path, err := controlSocketPath(""); err == nil {
		pre, _ = prepareControlSocket(path) // on error AnnounceAndBind tries again and says why
	}
	fail := func(err error) (*BegunSuccessor, error) {
		if pre != nil {
			pre.discard()
		}
		conn.Close()
		return nil, err
	}
	if conn.Version() >= wire.WarmUpVersion {
		rtb := wire.ReadyToBegin{WarmUpNS: int64(time.Since(s.handshaken))}
		if takeConns && conn.Version() >= wire.ConnsVersion {
			rtb.ConnRoom = connRoom()
			// Receiving them must not grow the descriptor table inside
			// the accept gap (see fdutil.GrowTable).
			fdutil.GrowTable(min(s.expectConns, rtb.ConnRoom))
		}
		if err := conn.Send(rtb, s.id, wire.WriteTimeout); err != nil {
			return fail(fmt.Errorf("%w: sending ReadyToBegin: %w", ErrAborted, err))
		}
	}
	stop := context.AfterFunc(ctx, func() { conn.UnixConn().SetReadDeadline(time.Now()) })
	defer stop()
	for {
		wait := time.Until(s.deadline) + wire.ReplySlack
		f, err := conn.Recv(max(wait, time.Millisecond))
		if err != nil {
			if ctx.Err() != nil {
				return fail(fmt.Errorf("handoff: waiting for Begin: %w", ctx.Err()))
			}
			if errors.Is(err, ErrSessionLost) {
				return fail(fmt.Errorf("%w: supervisor closed the session before Begin: %w", ErrAborted, err))
			}
			return fail(fmt.Errorf("%w: waiting for Begin: %w", ErrAborted, err))
		}
		if f.ID != s.id {
			return fail(wire.Violation("frame for handoff %q during handoff %q", f.ID, s.id))
		}
		switch m := f.Msg.(type) {
		case wire.Heartbeat:
			continue
		case wire.Begin:
			return &BegunSuccessor{inherited: s.inherited, conn: conn, id: s.id, buildID: s.buildID, deadline: s.deadline, beat: s.beat, begun: time.Now(), pre: pre, acceptsConns: takeConns && conn.Version() >= wire.ConnsVersion}, nil
		case wire.Abort:
			return fail(fmt.Errorf("%w: %s", ErrAborted, m.Reason))
		default:
			return fail(wire.Violation("expected begin, got %s", f.Msg.Type()))
		}
	}
}

// giveUp tells the supervisor why this successor cannot go on after
// Begin (it could not take the lock or open its data), so that the abort
// says so rather than only that the process exited; the caller exits
// then. It consumes s.
func (s *BegunSuccessor) giveUp(reason string) {
	s.mu.Lock()
	used := s.used
	s.used = true
	g := s.guard
	s.mu.Unlock()
	g.Stop()
	s.discardPrebound()
	if used {
		return
	}
	if s.conn.Version() >= wire.WarmUpVersion {
		s.conn.Send(wire.Abort{Reason: reason}, s.id, wire.WriteTimeout)
	}
	s.conn.Close()
}

// discardPrebound closes the control socket bound before Begin, for a
// successor that gives up before AnnounceAndBind used it. (One that exits
// without it leaves a temporary name that the next bind removes.)
func (s *BegunSuccessor) discardPrebound() {
	if s.pre != nil {
		s.pre.discard()
		s.pre = nil
	}
}

// Listeners returns the listeners the supervisor passed.
func (s *BegunSuccessor) Listeners() *InheritedListeners { return s.inherited }

// Conns returns the established connections the incumbent passed (see
// HandshookSuccessor.TakeConns), once AnnounceAndBind returned nil: the
// supervisor sends them after the commit, and Conns waits for them. Serve
// them (ConnPasser.AdoptConns). Run instead starts serving first and
// adopts them as they arrive, in batches. A descriptor that cannot be made
// a net.Conn is closed and left out. Later calls return none.
func (s *BegunSuccessor) Conns() []PassedConn {
	var out []PassedConn
	s.takeConns().each(func(batch []PassedConn) { out = append(out, batch...) }, nil)
	return out
}

// takeConns hands the connections that follow the Commit over.
func (s *BegunSuccessor) takeConns() *connStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.conns
	s.conns = nil
	return c
}

// HandoffID returns the id of this handoff.
func (s *BegunSuccessor) HandoffID() string { return s.id }

// StartHeartbeats sends a heartbeat every min(DefaultHeartbeatInterval,
// liveness/4), the liveness being the one the supervisor announced in
// HelloAck, until the guard is stopped or AnnounceAndBind runs. Calling it
// again returns the running guard.
func (s *BegunSuccessor) StartHeartbeats() *HeartbeatGuard {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.guard == nil && !s.used {
		s.guard = &HeartbeatGuard{h: startHeartbeats(s.conn, s.id, s.beat)}
	}
	return s.guard
}

// AnnounceAndBind sends Ready and waits for the supervisor's verdict. If it
// accepts (the commit point), AnnounceAndBind takes over the control socket
// path (bind a temporary name, rename over: the path is never missing) and
// returns the Incumbent this process now is; serve from then on. If the
// supervisor rejects Ready or goes away, it releases lock and returns an
// error matching ErrAborted: exit without serving. An empty controlSocket
// means the path the supervisor passed in the environment.
func (s *BegunSuccessor) AnnounceAndBind(r ReadinessSnapshot, controlSocket string, lock *DataDirLock) (*Incumbent, error) {
	s.mu.Lock()
	if s.used {
		s.mu.Unlock()
		return nil, errConsumed
	}
	s.used = true
	g := s.guard
	s.mu.Unlock()
	g.Stop()
	conn := s.conn
	keepConn := false // the passed connections follow the Commit on it
	defer func() {
		if !keepConn {
			conn.Close()
		}
	}()
	abort := func(err error) (*Incumbent, error) {
		if lock != nil {
			lock.Release()
		}
		return nil, err
	}
	// giveUp is abort before Ready was sent: the supervisor is told why.
	giveUp := func(err error) (*Incumbent, error) {
		if conn.Version() >= wire.WarmUpVersion {
			conn.Send(wire.Abort{Reason: "the successor cannot announce Ready: " + err.Error()}, s.id, wire.WriteTimeout)
		}
		return abort(err)
	}
	if lock == nil || lock.released() {
		s.discardPrebound()
		return giveUp(errors.New("handoff: AnnounceAndBind needs the held data-directory lock"))
	}
	// The daemon's own start-up ends here; what follows is the library's.
	openTook := time.Since(s.begun)
	// Bind the control socket at its temporary name now, so that after
	// the commit only a rename stands between us and serving.
	controlSocket, err := controlSocketPath(controlSocket)
	if err != nil {
		s.discardPrebound()
		return giveUp(fmt.Errorf("%w: %w", ErrAborted, err))
	}
	sock := s.pre
	s.pre = nil
	if sock == nil || sock.path != controlSocket {
		if sock != nil {
			sock.discard()
		}
		if sock, err = prepareControlSocket(controlSocket); err != nil {
			return giveUp(fmt.Errorf("%w: %w", ErrAborted, err))
		}
	}
	published := false
	defer func() {
		if !published {
			sock.discard()
		}
	}()
	ready := wire.Ready{
		ListeningOn:                r.ListeningOn,
		HealthzOK:                  r.HealthzOK,
		AdvertisedRevisionPerShard: r.AdvertisedRevisionPerShard,
		OpenTookNS:                 int64(openTook),
	}
	if err := conn.Send(ready, s.id, wire.WriteTimeout); err != nil {
		return abort(fmt.Errorf("%w: sending Ready: %w", ErrAborted, err))
	}
	for {
		f, err := conn.Recv(wire.DefaultLiveness)
		if err != nil {
			return abort(fmt.Errorf("%w: no verdict on Ready: %w", ErrAborted, err))
		}
		if f.ID != s.id {
			return abort(fmt.Errorf("%w: %w", ErrAborted, wire.Violation("frame for handoff %q during handoff %q", f.ID, s.id)))
		}
		switch m := f.Msg.(type) {
		case wire.Heartbeat:
			continue
		case wire.Commit:
			published = true
			if err := sock.publish(); err != nil {
				// Committed, but the control socket could not be taken:
				// keep serving; the supervisor can no longer hand this
				// process off until it restarts it.
				return nil, fmt.Errorf("handoff: committed, but taking over the control socket failed: %w", err)
			}
			// (One that takes none closes the session: the supervisor's
			// sends fail, and it closes its copies.)
			if m.Conns > 0 && s.acceptsConns {
				keepConn = true
				s.mu.Lock()
				s.conns = &connStream{conn: conn, id: s.id, want: m.Conns}
				s.mu.Unlock()
			}
			return incumbentOn(controlSocket, sock.ln, sock.ino, lock, s.buildID), nil
		case wire.Abort:
			return abort(fmt.Errorf("%w: %s", ErrAborted, m.Reason))
		default:
			return abort(fmt.Errorf("%w: %w", ErrAborted, wire.Violation("expected commit or abort, got %s", f.Msg.Type())))
		}
	}
}
