//go:build linux

package handoff

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"time"
)

// Run is the front door: it detects this process's role and does the whole
// handoff dance for it, returning when the process should exit.
//
//   - Cold start (started by hand, or cold-started by the supervisor): the
//     listeners are inherited or, for names not inherited, bound from
//     Config.Listen; Config.Prepare runs; the data-directory lock is taken
//     (a stale one left by a crash is broken); Config.Open opens the
//     state; the control socket is bound; the service starts.
//   - Successor (spawned by the supervisor for a handoff): handshake,
//     Config.Prepare (the warm-up, while the incumbent still serves), wait
//     for Begin, take the lock, Open with heartbeats running, announce
//     Ready; the service starts only once the supervisor accepted it.
//
// Then Run answers the supervisor on the control socket until a handoff
// commits (the successor serves already: Run shuts the service down and
// returns nil) or ctx ends (Run shuts the service down, releases the lock
// and returns nil). A daemon started by hand runs the same code: nothing
// talks to its control socket, so it serves until ctx ends.
//
// A successor the supervisor turned down gets an error matching
// ErrAborted; the state Open returned is left as it is, neither started nor
// shut down (it holds no lock any more, so it must not write): exit at once,
// non-zero. Any other error means the daemon cannot serve safely (for
// example resuming after an aborted handoff failed): exit non-zero.
func Run(ctx context.Context, cfg Config) error {
	r, err := cfg.runner()
	if err != nil {
		return err
	}
	role, err := DetectRole()
	if err != nil {
		return err
	}
	switch role := role.(type) {
	case *ColdStart:
		conns, err := role.Conns()
		if err != nil {
			r.log.Warn("handoff: not all the connections the supervisor held arrived", "err", err, "arrived", len(conns))
		}
		return r.coldStart(ctx, role.Inherited, conns)
	case *Successor:
		return r.succeed(ctx, role)
	default:
		return fmt.Errorf("handoff: unknown role %T", role)
	}
}

// runner is one Run call.
type runner struct {
	cfg Config
	log *slog.Logger
}

func (c Config) runner() (*runner, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	if c.BuildID == "" {
		c.BuildID = defaultBuildID()
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &runner{cfg: c, log: log}, nil
}

// coldStart binds what was not inherited, locks, opens, binds the control
// socket and serves.
func (r *runner) coldStart(ctx context.Context, il *InheritedListeners, conns []PassedConn) (err error) {
	defer func() {
		if err != nil {
			il.Close()
			closeConns(conns)
		}
	}()
	if err := r.bindMissing(il); err != nil {
		return err
	}
	if err := r.prepare(ctx); err != nil {
		return err
	}
	lock, err := AcquireDataDirLockOrBreakStale(r.cfg.DataDir)
	if err != nil {
		return err
	}
	svc, err := r.open(ctx, il)
	if err != nil {
		lock.Release()
		return err
	}
	sock, err := r.controlSocket()
	if err != nil {
		lock.Release()
		return err
	}
	inc, err := BindColdStart(sock, lock)
	if err != nil {
		lock.Release()
		return err
	}
	r.log.Info("handoff: cold start", "control_socket", sock, "listeners", il.Names(), "build_id", r.cfg.BuildID, "passed_conns", len(conns))
	return r.serve(ctx, inc, svc, readyConns(conns))
}

// bindMissing binds every Config.Listen name that was not inherited.
func (r *runner) bindMissing(il *InheritedListeners) error {
	have := map[string]bool{}
	for _, n := range il.Names() {
		have[n] = true
	}
	for _, name := range slices.Sorted(maps.Keys(r.cfg.Listen)) {
		if have[name] {
			continue
		}
		addr := r.cfg.Listen[name]
		if err := il.bind(name, addr); err != nil {
			return err
		}
		r.log.Info("handoff: bound a listener that was not inherited", "name", name, "addr", addr)
	}
	return nil
}

// succeed runs the successor's steps, then serves.
func (r *runner) succeed(ctx context.Context, s *Successor) error {
	h, err := s.Handshake(r.cfg.BuildID)
	if err != nil {
		return err
	}
	if err := r.warmUp(ctx, h); err != nil {
		return err
	}
	sock, err := r.controlSocket()
	if err != nil {
		h.giveUp(err.Error())
		return fmt.Errorf("%w: %w", ErrAborted, err)
	}
	h.control = sock
	h.TakeConns()
	b, err := h.WaitForBegin(ctx)
	if err != nil {
		return err
	}
	r.log.Info("handoff: successor may begin", "handoff", b.HandoffID())
	guard := b.StartHeartbeats()
	lock, err := AcquireDataDirLock(r.cfg.DataDir)
	if err != nil {
		b.giveUp("the successor could not take the data-directory lock: " + err.Error())
		return fmt.Errorf("%w: %w", ErrAborted, err)
	}
	svc, err := r.open(ctx, b.Listeners())
	guard.Stop()
	if err != nil {
		lock.Release()
		b.giveUp("the successor could not open its data: " + err.Error())
		return fmt.Errorf("%w: %w", ErrAborted, err)
	}
	inc, err := b.AnnounceAndBind(r.readiness(svc, b.Listeners()), sock, lock)
	if err != nil {
		return err
	}
	conns := b.takeConns()
	r.log.Info("handoff: successor committed, serving", "handoff", b.HandoffID(), "passed_conns", conns.count())
	return r.serve(ctx, inc, svc, conns)
}

// prepare runs Config.Prepare, if set.
func (r *runner) prepare(ctx context.Context) error {
	if r.cfg.Prepare == nil {
		return nil
	}
	t0 := time.Now()
	if err := r.cfg.Prepare(ctx); err != nil {
		return fmt.Errorf("handoff: prepare: %w", err)
	}
	r.log.Info("handoff: prepared", "took", time.Since(t0))
	return nil
}

// warmUp runs Config.Prepare in a successor: after the handshake, before
// the incumbent is asked to drain, with heartbeats running and bounded by
// the handoff's deadline. If it fails the supervisor is told why, and the
// handoff aborts without the incumbent having stopped for it.
func (r *runner) warmUp(ctx context.Context, h *HandshookSuccessor) error {
	if r.cfg.Prepare == nil {
		return nil
	}
	guard := h.StartHeartbeats()
	wctx, cancel := context.WithDeadline(ctx, h.Deadline())
	err := r.prepare(wctx)
	cancel()
	guard.Stop()
	if err != nil {
		h.giveUp("the successor's warm-up failed: " + err.Error())
		return fmt.Errorf("%w: %w", ErrAborted, err)
	}
	return nil
}

func (r *runner) open(ctx context.Context, il *InheritedListeners) (Service, error) {
	svc, err := r.cfg.Open(ctx, il)
	if err != nil {
		return nil, fmt.Errorf("handoff: open: %w", err)
	}
	if svc == nil {
		return nil, errors.New("handoff: Config.Open returned a nil Service and no error")
	}
	return svc, nil
}

// readiness is what the service reports, or healthy with nothing to
// compare; ListeningOn is filled in from the listeners when empty.
func (r *runner) readiness(svc Service, il *InheritedListeners) ReadinessSnapshot {
	var rs ReadinessSnapshot
	if rr, ok := svc.(interface{ Readiness() ReadinessSnapshot }); ok {
		rs = rr.Readiness()
	} else {
		rs.HealthzOK = true
	}
	if len(rs.ListeningOn) == 0 {
		rs.ListeningOn = il.Names()
	}
	return rs
}

// controlSocket is Config.ControlSocket, else the supervisor's path, else
// the default inside the data directory.
func (r *runner) controlSocket() (string, error) {
	if r.cfg.ControlSocket != "" {
		return r.cfg.ControlSocket, nil
	}
	if p, err := controlSocketPath(""); err == nil {
		return p, nil
	}
	return defaultControlSocket(r.cfg.DataDir), nil
}

// serve starts the service, gives it the connections passed to this
// process, and answers the supervisor until a commit or the end of ctx,
// then shuts the service down.
func (r *runner) serve(ctx context.Context, inc *Incumbent, svc Service, conns pendingConns) error {
	inc.SetBuildID(r.cfg.BuildID)
	inc.SetLogger(r.log)
	defer inc.Close()
	if err := svc.Start(); err != nil {
		conns.close()
		inc.Lock().Release()
		return fmt.Errorf("handoff: start: %w", err)
	}
	// Accepting first: the passed connections follow (see rawConns).
	conns.adoptInto(svc, r.log)
	err := inc.Serve(ctx, svc)
	switch {
	case err == nil:
		r.log.Info("handoff: handed off; shutting down")
	case ctx.Err() != nil:
		r.log.Info("handoff: stopping", "cause", context.Cause(ctx))
		err = nil
	default:
		r.log.Error("handoff: cannot serve any more", "err", err)
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.ShutdownTimeout)
	defer cancel()
	if serr := svc.Shutdown(sctx); serr != nil {
		err = errors.Join(err, fmt.Errorf("handoff: shutdown: %w", serr))
	}
	// After a commit the lock is already gone; otherwise it goes now that
	// the service wrote its last.
	if rerr := inc.Lock().Release(); rerr != nil {
		err = errors.Join(err, rerr)
	}
	return err
}

func defaultControlSocket(dataDir string) string {
	return filepath.Join(dataDir, ".handoff.sock")
}
