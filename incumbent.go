//go:build linux

package handoff

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/handoff-go/handoff/internal/crash"
	"github.com/handoff-go/handoff/internal/peercred"
	"github.com/handoff-go/handoff/internal/wire"
	"golang.org/x/sys/unix"
)

// Incumbent is the serving daemon's end of the control socket. Serve answers
// the supervisor: it drains and seals on request, releases the lock after a
// good seal, and either returns nil on Commit (exit then) or resumes.
type Incumbent struct {
	path    string
	lock    *DataDirLock
	mu      sync.Mutex
	ln      *net.UnixListener
	ino     uint64
	buildID string
	logger  *slog.Logger

	closeOnce sync.Once
	closed    chan struct{}
}

// BindColdStart makes a cold-started daemon the incumbent: it takes over
// controlSocket (atomically, mode 0600) and keeps lock, which must be held.
// An empty controlSocket means the path the supervisor passed in the
// environment (read by DetectRole).
func BindColdStart(controlSocket string, lock *DataDirLock) (*Incumbent, error) {
	if lock == nil || lock.released() {
		return nil, errors.New("handoff: BindColdStart needs the held data-directory lock")
	}
	path, err := controlSocketPath(controlSocket)
	if err != nil {
		return nil, err
	}
	return newIncumbent(path, lock, defaultBuildID())
}

func newIncumbent(path string, lock *DataDirLock, buildID string) (*Incumbent, error) {
	ln, ino, err := bindControlSocket(path)
	if err != nil {
		return nil, err
	}
	return incumbentOn(path, ln, ino, lock, buildID), nil
}

func incumbentOn(path string, ln *net.UnixListener, ino uint64, lock *DataDirLock, buildID string) *Incumbent {
	return &Incumbent{path: path, lock: lock, ln: ln, ino: ino, buildID: buildID,
		logger: slog.New(slog.DiscardHandler), closed: make(chan struct{})}
}

func defaultBuildID() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			return s.Value
		}
	}
	return bi.Main.Version
}

// SetBuildID sets the build id this incumbent announces in Hello.
func (i *Incumbent) SetBuildID(id string) {
	i.mu.Lock()
	i.buildID = id
	i.mu.Unlock()
}

// SetLogger routes the incumbent's logs to l (they are discarded by default).
func (i *Incumbent) SetLogger(l *slog.Logger) {
	if l == nil {
		l = slog.New(slog.DiscardHandler)
	}
	i.mu.Lock()
	i.logger = l
	i.mu.Unlock()
}

// Lock returns the data-directory lock the incumbent manages. It is
// released during a handoff and retaken on abort; release it on shutdown.
func (i *Incumbent) Lock() *DataDirLock { return i.lock }

// Close stops listening on the control socket (the path is left in place:
// it may already belong to a successor). Idempotent.
func (i *Incumbent) Close() error {
	var err error
	i.closeOnce.Do(func() {
		// Under mu, so reclaimPath cannot bind a new socket after Close.
		i.mu.Lock()
		close(i.closed)
		err = i.ln.Close()
		i.mu.Unlock()
	})
	return err
}

// errCommitted ends Serve with nil.
var errCommitted = errors.New("committed")

// Serve answers supervisor sessions on the control socket until a handoff
// commits (it returns nil: finish in-flight work and exit), ctx ends, Close
// is called, or resuming after an abort fails (the daemon cannot safely
// serve any more: exit non-zero). Sessions are served one at a time.
func (i *Incumbent) Serve(ctx context.Context, d Drainable) error {
	stop := context.AfterFunc(ctx, func() {
		i.mu.Lock()
		i.ln.SetDeadline(time.Now())
		i.mu.Unlock()
	})
	defer stop()
	var backoff time.Duration // after accept failed for want of descriptors or memory
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		i.mu.Lock()
		ln := i.ln
		i.mu.Unlock()
		c, err := ln.AcceptUnix()
		if err != nil {
			select {
			case <-i.closed:
				return ErrClosed
			default:
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if acceptCanRecover(err) {
				// Out of descriptors (or memory) for now: the daemon
				// serves on, the supervisor's connection waits in the
				// backlog (its hello timeout bounds the handoff), and
				// accept is tried again, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				i.log().Warn("handoff: control socket accept failed; retrying", "err", err, "in", backoff)
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-i.closed:
				case <-ctx.Done():
				}
				t.Stop()
				continue
			}
			return fmt.Errorf("handoff: control socket accept: %w", err)
		}
		backoff = 0
		if _, err := peercred.CheckSameUser(c); err != nil {
			i.log().Warn("handoff: control peer refused", "err", err)
			c.Close()
			continue
		}
		err = i.session(ctx, wire.NewConn(c), d)
		switch {
		case errors.Is(err, errCommitted):
			// The path belongs to the successor now (or will in a
			// moment); stop answering on our socket.
			i.Close()
			return nil
		case errors.Is(err, errResumeFailed):
			return err
		case err != nil:
			i.log().Warn("handoff: control session ended", "err", err)
		}
	}
}

func (i *Incumbent) log() *slog.Logger {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.logger
}

// acceptCanRecover says whether an accept error is the process or the
// system running short of descriptors or memory, which passes, rather
// than the listener being broken.
func acceptCanRecover(err error) bool {
	for _, e := range []error{unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

var errResumeFailed = errors.New("handoff: could not resume after an aborted handoff")

type incState int

const (
	stIdle        incState = iota // serving, holding the lock
	stDrained                     // drained, lock held
	stDrainFailed                 // drain failed, lock held
	stSealFailed                  // seal failed, lock held
	stSealed                      // sealed, lock released
)

// incSession is one supervisor session on the incumbent's side: the terms
// the handshake set, and where the handoff it runs stands (state).
type incSession struct {
	i        *Incumbent
	ctx      context.Context
	conn     *wire.Conn
	d        Drainable
	id       string        // the handoff id, from HelloAck
	liveness time.Duration // the supervisor's liveness timeout
	beat     time.Duration // heartbeat interval during Drain and Seal
	idleWait time.Duration // how long to wait for a frame in stIdle
	state    incState
	deadline time.Time // of the running handoff
	// passed are the connections sent to the supervisor for this
	// handoff. Until the commit they are ours (we serve them again on
	// an abort); we close them only once the successor owns them.
	passed []PassedConn
	// sending is closed once sendPassed's goroutine is done with passed.
	sending chan struct{}
}

// session runs one supervisor session. Whatever way it ends, the daemon is
// either committed (errCommitted) or serving and holding its lock again.
func (i *Incumbent) session(ctx context.Context, conn *wire.Conn, d Drainable) (err error) {
	defer conn.Close()
	s := &incSession{i: i, ctx: ctx, conn: conn, d: d, state: stIdle}
	if probe, err := s.handshake(); probe || err != nil {
		return err
	}
	// Whatever ends the session before a commit, the daemon serves again.
	defer func() {
		if s.state == stIdle || errors.Is(err, errCommitted) {
			return
		}
		if rerr := i.resume(ctx, d, s.deadline, s.takePassed()); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}()
	for {
		f, err := conn.Recv(s.wait())
		if err != nil {
			if s.state == stIdle && errors.Is(err, ErrSessionLost) {
				return nil
			}
			return fmt.Errorf("handoff: supervisor session lost: %w", err)
		}
		if err := s.handle(f); err != nil {
			return err
		}
	}
}

// handshake sends our Hello and takes the supervisor's HelloAck, which
// sets the handoff id, the protocol version and the session's timings.
// probe says the supervisor hung up after our Hello: it only wanted that.
func (s *incSession) handshake() (probe bool, err error) {
	s.i.mu.Lock()
	buildID := s.i.buildID
	s.i.mu.Unlock()
	if err := s.conn.Send(hello(wire.RoleIncumbent, buildID), "", wire.WriteTimeout); err != nil {
		return false, err
	}
	f, err := s.conn.Recv(wire.DefaultHelloTimeout)
	if errors.Is(err, ErrSessionLost) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	ack, ok := f.Msg.(wire.HelloAck)
	if !ok || f.ID == "" {
		s.conn.Send(wire.Error{Reason: "expected hello_ack with a handoff id"}, f.ID, wire.WriteTimeout)
		return false, wire.Violation("expected hello_ack with a handoff id, got %s", f.Msg.Type())
	}
	if _, err := wire.Negotiate(wire.MinVersion, wire.MaxVersion, ack.Version, ack.Version); err != nil {
		s.conn.Send(wire.Error{Reason: err.Error()}, f.ID, wire.WriteTimeout)
		return false, err
	}
	s.conn.SetVersion(ack.Version)
	s.id = f.ID
	s.liveness = wire.DefaultLiveness
	if ack.LivenessMS > 0 {
		s.liveness = time.Duration(ack.LivenessMS) * time.Millisecond
	}
	s.beat = wire.HeartbeatInterval(s.liveness)
	// Before PrepareHandoff the supervisor may still be starting the
	// successor: wait for the handoff's deadline, not just the liveness.
	s.idleWait = s.liveness
	if ack.DeadlineMS > 0 {
		s.idleWait = max(s.idleWait, time.Duration(ack.DeadlineMS)*time.Millisecond+wire.ReplySlack)
	}
	return false, nil
}

// wait is how long to wait for the supervisor's next frame.
func (s *incSession) wait() time.Duration {
	if s.state == stIdle {
		return s.idleWait
	}
	return max(time.Until(s.deadline)+wire.ReplySlack, s.liveness)
}

// handle answers one frame from the supervisor. An error ends the session.
func (s *incSession) handle(f wire.Frame) error {
	if f.ID != s.id {
		s.refuse("wrong handoff id")
		return wire.Violation("frame for handoff %q in session %q", f.ID, s.id)
	}
	switch m := f.Msg.(type) {
	case wire.Heartbeat:
		return nil
	case wire.ListenersRequest:
		return s.i.sendListeners(s.conn, s.id)
	case wire.PrepareHandoff:
		return s.prepareHandoff(m)
	case wire.SealRequest:
		return s.sealRequest()
	case wire.Commit:
		return s.commit()
	case wire.ResumeAfterAbort:
		return s.resumeAfterAbort()
	default:
		s.refuse(fmt.Sprintf("unexpected %s", f.Msg.Type()))
		return wire.Violation("unexpected %s from the supervisor", f.Msg.Type())
	}
}

func (s *incSession) send(m wire.Message) error {
	return s.conn.Send(m, s.id, wire.WriteTimeout)
}

// refuse tells the supervisor why the session is about to end. Best
// effort: the session ends either way.
func (s *incSession) refuse(reason string) {
	s.send(wire.Error{Reason: reason})
}

// prepareHandoff drains the daemon within the drain grace and answers
// Drained or DrainFailed. A failed drain does not end the session: the
// SealRequest pipelined behind it is answered SealFailed.
func (s *incSession) prepareHandoff(m wire.PrepareHandoff) error {
	if s.state != stIdle {
		s.refuse("prepare_handoff during a handoff")
		return wire.Violation("prepare_handoff during a handoff")
	}
	s.deadline = time.Now().Add(time.Duration(m.DeadlineMS) * time.Millisecond)
	grace := time.Duration(m.DrainGraceMS) * time.Millisecond
	if m.DeadlineMS <= 0 || grace <= 0 {
		s.refuse("prepare_handoff needs a positive deadline and drain grace")
		return wire.Violation("prepare_handoff with deadline %dms, drain grace %dms", m.DeadlineMS, m.DrainGraceMS)
	}
	s.state = stDrainFailed // until Drain succeeds: resume on any exit
	crash.Point("incumbent-before-drain")
	rep, took, derr := s.i.withHeartbeats(s.conn, s.id, s.beat, func() (any, error) {
		return s.drain(grace)
	})
	crash.Point("incumbent-after-drain")
	if derr != nil {
		return s.send(wire.DrainFailed{Reason: derr.Error()})
	}
	dr := rep.(DrainReport)
	s.state = stDrained
	n := s.takeStopped(m.MaxConns)
	// The Conns frames follow the SealComplete (sendPassed), not to
	// hold it up behind them.
	return s.send(wire.Drained{OpenConnsRemaining: dr.OpenConnsRemaining, AcceptClosed: dr.AcceptClosed, TookNS: int64(took), PassedConns: n})
}

// takeStopped asks a ConnPasser for the connections its drain stopped
// serving, at most limit (0 before protocol version 3), and keeps them in
// s.passed: they stay ours until the commit. It returns how many.
func (s *incSession) takeStopped(limit int) int {
	cp, ok := s.d.(ConnPasser)
	if !ok {
		return 0
	}
	if s.conn.Version() < wire.ConnsVersion || limit < 0 {
		limit = 0
	}
	conns := cp.PassConns(limit)
	if len(conns) > limit {
		s.i.log().Warn("handoff: PassConns returned more connections than asked; closing the rest", "asked", limit, "got", len(conns))
		closeConns(conns[limit:])
		conns = conns[:limit]
	}
	s.passed = validConns(conns, s.i.log())
	return len(s.passed)
}

// sendPassed sends the kept connections to the supervisor in Conns frames
// behind SealComplete, on a goroutine: the handoff goes on meanwhile (the
// successor's start, the commit), so that their number does not lengthen
// the accept gap. takePassed waits for it.
func (s *incSession) sendPassed() {
	if len(s.passed) == 0 {
		return
	}
	done := make(chan struct{})
	s.sending = done
	passed := s.passed
	go func() {
		defer close(done)
		if n, err := sendConns(s.conn, s.id, passed); err != nil {
			// The session is broken: it ends, and what follows (a resume,
			// or the end after a commit) decides.
			s.i.log().Warn("handoff: passing the connections to the supervisor failed", "sent", n, "of", len(passed), "err", err)
			return
		}
		crash.Point("incumbent-after-conns")
	}()
}

// takePassed returns the passed connections, once they are all sent, and
// forgets them.
func (s *incSession) takePassed() []PassedConn {
	if s.sending != nil {
		<-s.sending
		s.sending = nil
	}
	c := s.passed
	s.passed = nil
	return c
}

// drain runs the daemon's Drain with grace as its time.
func (s *incSession) drain(grace time.Duration) (DrainReport, error) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), grace)
	defer cancel()
	start := time.Now()
	rep, err := s.d.Drain(dctx)
	// A drain may use its whole grace and report what is left open
	// (DrainReport.OpenConnsRemaining): the supervisor waits
	// grace+wire.ReplySlack for the answer. A Drain that ignored its
	// context and came back later than half that slack may find the
	// supervisor gone and rolling back: it counts as failed, so the
	// SealRequest queued behind does not seal.
	if took := time.Since(start); err == nil && took > grace+wire.ReplySlack/2 {
		err = fmt.Errorf("drain took %v, past its grace of %v: the supervisor may have stopped waiting", took.Round(time.Millisecond), grace)
	}
	return rep, err
}

// sealRequest seals the daemon after a good drain and, only once the seal
// succeeded, releases the data-directory lock; it answers SealComplete or
// SealFailed (the session goes on either way).
func (s *incSession) sealRequest() error {
	if s.state == stDrainFailed {
		// Pipelined behind a drain that failed: nothing is sealed.
		return s.send(wire.SealFailed{Reason: "not sealed: the drain failed"})
	}
	if s.state != stDrained {
		s.refuse("seal_request before drained")
		return wire.Violation("seal_request in state %d", s.state)
	}
	crash.Point("incumbent-before-seal")
	rep, took, serr := s.i.withHeartbeats(s.conn, s.id, s.beat, func() (any, error) {
		sctx, cancel := context.WithDeadline(context.WithoutCancel(s.ctx), s.deadline)
		defer cancel()
		return s.d.Seal(sctx)
	})
	if serr != nil {
		s.state = stSealFailed
		return s.send(wire.SealFailed{Reason: serr.Error()})
	}
	// The seal succeeded: only now may the lock go. If releasing it
	// failed, whether it is still held is unknown: let no successor in.
	if err := s.i.lock.release(false); err != nil {
		s.i.log().Error("handoff: releasing the lock after seal", "err", err)
		s.state = stSealFailed
		return s.send(wire.SealFailed{Reason: "releasing the data-directory lock failed: " + err.Error()})
	}
	s.state = stSealed
	crash.Point("incumbent-after-seal")
	sr := rep.(SealReport)
	if err := s.send(wire.SealComplete{LastRevisionPerShard: sr.LastRevisionPerShard, DataDirFingerprint: sr.DataDirFingerprint, TookNS: int64(took)}); err != nil {
		return err
	}
	s.sendPassed()
	return nil
}

// commit ends the session with errCommitted, once sealed.
func (s *incSession) commit() error {
	if s.state != stSealed {
		s.refuse("commit before seal_complete")
		return wire.Violation("commit before seal_complete")
	}
	crash.Point("incumbent-on-commit")
	// The successor owns the passed connections now: close our
	// descriptors (never shut the sockets down).
	closeConns(s.takePassed())
	return errCommitted
}

// resumeAfterAbort resumes serving and answers Resumed, with the error if
// resuming failed (which ends the session with it).
func (s *incSession) resumeAfterAbort() error {
	if s.state == stIdle {
		// Idempotent: already serving. Make sure of it anyway.
		return s.send(wire.Resumed{})
	}
	rerr := s.i.resume(s.ctx, s.d, s.deadline, s.takePassed())
	s.state = stIdle
	msg := wire.Resumed{}
	if rerr != nil {
		msg.Error = rerr.Error()
	}
	if err := s.send(msg); err != nil && rerr == nil {
		return err
	}
	return rerr
}

// withHeartbeats runs fn while sending heartbeats, and times it.
func (i *Incumbent) withHeartbeats(conn *wire.Conn, id string, interval time.Duration, fn func() (any, error)) (any, time.Duration, error) {
	h := startHeartbeats(conn, id, interval)
	start := time.Now()
	v, err := fn()
	took := time.Since(start)
	h.Stop()
	return v, took, err
}

// resume retakes the lock (waiting for a successor that is going away),
// reopens the daemon's state, serves the connections it had passed again
// and makes sure the control socket path is ours.
func (i *Incumbent) resume(ctx context.Context, d Drainable, deadline time.Time, passed []PassedConn) error {
	wait := max(time.Until(deadline)+wire.ReplySlack, wire.DefaultLiveness)
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wait)
	defer cancel()
	if err := i.lock.reacquire(rctx); err != nil {
		closeConns(passed)
		return fmt.Errorf("%w: retaking the data-directory lock: %w", errResumeFailed, err)
	}
	if err := d.ResumeAfterAbort(rctx); err != nil {
		closeConns(passed)
		return fmt.Errorf("%w: %w", errResumeFailed, err)
	}
	if len(passed) > 0 {
		d.(ConnPasser).AdoptConns(passed)
		i.log().Info("handoff: serving the passed connections again", "conns", len(passed))
	}
	if err := i.reclaimPath(ctx); err != nil {
		i.log().Error("handoff: cannot take back the control socket", "path", i.path, "err", err)
	}
	return nil
}

// reclaimPath rebinds the control socket if its path no longer leads to
// us. It holds mu throughout, so it and Close exclude each other: after
// Close nothing is bound again. A cancelled ctx applies to the new
// listener as it did to the old one.
func (i *Incumbent) reclaimPath(ctx context.Context) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	select {
	case <-i.closed:
		return nil
	default:
	}
	if ownsPath(i.path, i.ino) {
		return nil
	}
	ln, ino, err := bindControlSocket(i.path)
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		ln.SetDeadline(time.Now())
	}
	old := i.ln
	i.ln, i.ino = ln, ino
	old.Close()
	return nil
}

func (i *Incumbent) sendListeners(conn *wire.Conn, id string) error {
	il := adoptedListeners()
	var names []string
	var fds []int
	if il != nil {
		var err error
		if names, fds, err = il.dupFDs(); err != nil {
			conn.Send(wire.Error{Reason: err.Error()}, id, wire.WriteTimeout)
			return err
		}
	}
	defer func() {
		for _, fd := range fds {
			closeFD(fd)
		}
	}()
	return conn.Send(wire.Listeners{Names: names}, id, wire.WriteTimeout, fds...)
}
