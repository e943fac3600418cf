package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/examples/kvd/store"
	"github.com/handoff-go/handoff/httphandoff"
)

// Bounds of the shutdown paths.
const (
	stopDrainGrace = 25 * time.Second // in-flight requests on SIGTERM
	exitGrace      = 30 * time.Second // stragglers after a commit or stop
)

// daemon connects the store to the HTTP adapter: its methods are the
// adapter's hooks, and through it the library drains, seals and resumes.
type daemon struct {
	cfg   config
	log   *slog.Logger
	store *store.Store
}

// serve runs the incumbent: HTTP on ln and the control socket, until a
// handoff commits (exit 0 once in-flight requests are done), a signal
// stops it (drain, seal, release the lock, exit 0) or resuming after an
// aborted handoff fails (exit non-zero; the supervisor restarts us).
func serve(ctx context.Context, cfg config, log *slog.Logger, st *store.Store, ln net.Listener, inc *handoff.Incumbent) error {
	d := &daemon{cfg: cfg, log: log, store: st}
	srv, err := httphandoff.New(httphandoff.Config{
		NewServer: d.newHTTPServer,
		Sync:      d.sync,
		Seal:      d.seal,
		Reopen:    d.reopen,
		State:     d.state,
		Logger:    log,
	}, ln)
	if err == nil {
		err = srv.Start()
	}
	if err != nil {
		inc.Close()
		st.Close()
		return err // exiting releases the lock
	}

	err = inc.Serve(ctx, srv)
	// Cleanup runs even though ctx may be cancelled.
	cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), exitGrace)
	defer cancel()
	defer inc.Close()
	switch {
	case err == nil:
		log.Info("handoff committed: finishing in-flight requests, then exiting")
		return errors.Join(srv.Shutdown(cleanup), st.Close())
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		log.Info("stopping: drain, seal, release the lock")
		return d.stop(cleanup, srv, inc.Lock())
	default:
		log.Error("cannot serve on", "err", err)
		return errors.Join(err, srv.Shutdown(cleanup), st.Close())
	}
}

// stop is a graceful shutdown outside a handoff: the same drain and seal,
// then the lock goes; the next start finds a sealed store.
func (d *daemon) stop(ctx context.Context, srv *httphandoff.Server, lock *handoff.DataDirLock) error {
	dctx, cancel := context.WithTimeout(ctx, stopDrainGrace)
	rep, err := srv.Drain(dctx)
	cancel()
	if err != nil {
		return errors.Join(fmt.Errorf("drain: %w", err), srv.Shutdown(ctx), d.store.Close())
	}
	if _, err := d.seal(ctx); err != nil {
		// Exiting releases the lock anyway; the next start replays the log.
		return errors.Join(fmt.Errorf("seal: %w", err), srv.Shutdown(ctx), d.store.Close())
	}
	lerr := lock.Release()
	d.log.Info("stopped", "revision", d.store.Revision(), "open_conns_left", rep.OpenConnsRemaining)
	return errors.Join(lerr, srv.Shutdown(ctx), d.store.Close())
}

func (d *daemon) newHTTPServer() *http.Server {
	return &http.Server{
		Handler:           d.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
}

// sync is the adapter's Sync hook: HTTP has stopped; make sure every write
// it accepted is durable.
func (d *daemon) sync(ctx context.Context) error {
	if err := pause(ctx, d.cfg.slowDrain); err != nil {
		return fmt.Errorf("--slow-drain: %w", err)
	}
	return d.store.Sync()
}

// seal is the adapter's Seal hook.
func (d *daemon) seal(ctx context.Context) (handoff.SealReport, error) {
	if err := pause(ctx, d.cfg.slowSeal); err != nil {
		return handoff.SealReport{}, fmt.Errorf("--slow-seal: %w", err)
	}
	if err := d.store.Seal(); err != nil {
		return handoff.SealReport{}, err
	}
	rep := handoff.SealReport{LastRevisionPerShard: d.store.Revisions(), DataDirFingerprint: d.store.Fingerprint()}
	d.log.Info("sealed", "revision", rep.LastRevisionPerShard, "fingerprint", rep.DataDirFingerprint)
	return rep, nil
}

// reopen is the adapter's Reopen hook: the handoff was aborted. A
// successor may have written after our seal, so the store reads the disk
// again (a no-op if it was never sealed).
func (d *daemon) reopen(context.Context) error {
	before := d.store.Revision()
	if err := d.store.Reopen(); err != nil {
		return err
	}
	if after := d.store.Revision(); after != before {
		d.log.Info("resumed: a successor wrote after our seal", "revision", after, "sealed_at", before)
	}
	d.log.Info("resumed after an aborted handoff", "revision", d.store.Revision())
	return nil
}

// state is the adapter's State hook.
func (d *daemon) state() handoff.StateSnapshot {
	return handoff.StateSnapshot{ShardCount: 1, LastRevisionPerShard: d.store.Revisions()}
}

// pause waits for the duration of a test knob, or until ctx ends.
func pause(ctx context.Context, dur time.Duration) error {
	if dur <= 0 {
		return nil
	}
	t := time.NewTimer(dur)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
