package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/examples/kvd/store"
	"github.com/handoff-go/handoff/httphandoff"
)

// stopDrainGrace bounds the in-flight requests on SIGTERM.
const stopDrainGrace = 25 * time.Second

// daemon connects the store to the HTTP adapter: its methods are the
// adapter's hooks, and it is the handoff.Service that Run drives: the
// adapter's Drain, Seal and ResumeAfterAbort, with Shutdown and Readiness
// of its own.
type daemon struct {
	*httphandoff.Server
	cfg   config
	log   *slog.Logger
	store *store.Store
	// writesFailing is set while writes fail (see noteWrite), so that the
	// log says when they start and stop failing rather than at each one.
	writesFailing atomic.Bool
}

// open makes the warmed-up store writable and puts the HTTP adapter on
// the listener "http"; Run starts it. In a successor it runs inside the
// pause, so it only catches up with what the incumbent wrote since w was
// prepared.
func open(cfg config, log *slog.Logger, ls *handoff.InheritedListeners, w *store.Warm) (*daemon, error) {
	ln, err := ls.Listener("http")
	if err != nil {
		if w != nil {
			w.Close()
		}
		return nil, fmt.Errorf("listener: %w", err)
	}
	st, err := openStore(cfg, log, w)
	if err != nil {
		ln.Close()
		return nil, err
	}
	d := &daemon{cfg: cfg, log: log, store: st}
	d.Server, err = httphandoff.New(httphandoff.Config{
		NewServer: d.newHTTPServer,
		Sync:      d.sync,
		Seal:      d.seal,
		Reopen:    d.reopen,
		Logger:    log,
	}, ln)
	if err != nil {
		ln.Close()
		st.Close()
		return nil, err
	}
	log.Info("serving soon", "addr", ln.Addr(), "revision", st.Revision())
	return d, nil
}

// Readiness is what a successor announces: healthy if the store takes
// writes, and its revision, which must be at least the sealed one.
func (d *daemon) Readiness() handoff.ReadinessSnapshot {
	if d.cfg.failBeforeReady {
		// Simulates a crash: no cleanup, the kernel drops the lock.
		d.log.Error("successor: --fail-before-ready: exiting before Ready")
		os.Exit(1)
	}
	return handoff.ReadinessSnapshot{HealthzOK: d.store.Check() == nil, AdvertisedRevisionPerShard: d.store.Revisions()}
}

// Shutdown ends the process's service. After a committed handoff the store
// is sealed already: finish the in-flight requests and close. On a stop
// signal it is the same drain and seal as a handoff's first, so the next
// start finds a sealed store.
func (d *daemon) Shutdown(ctx context.Context) error {
	if d.store.Sealed() {
		d.log.Info("handoff committed: finishing in-flight requests, then exiting")
		return errors.Join(d.Server.Shutdown(ctx), d.store.Close())
	}
	d.log.Info("stopping: drain, seal, then exit")
	dctx, cancel := context.WithTimeout(ctx, stopDrainGrace)
	rep, err := d.Drain(dctx)
	cancel()
	if errors.Is(err, store.ErrFailed) || errors.Is(err, store.ErrWriteFailed) {
		// Writes were refused already; every acknowledged one is durable.
		d.log.Warn("stopping a store that refuses writes; the next start recovers from disk", "reason", err)
		return errors.Join(d.Server.Shutdown(ctx), d.store.Close())
	}
	if err != nil {
		return errors.Join(fmt.Errorf("drain: %w", err), d.Server.Shutdown(ctx), d.store.Close())
	}
	if _, err := d.seal(ctx); err != nil {
		// The next start replays the log.
		return errors.Join(fmt.Errorf("seal: %w", err), d.Server.Shutdown(ctx), d.store.Close())
	}
	d.log.Info("stopped", "revision", d.store.Revision(), "open_conns_left", rep.OpenConnsRemaining)
	return errors.Join(d.Server.Shutdown(ctx), d.store.Close())
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
	t0 := time.Now()
	if err := d.store.Seal(); err != nil {
		return handoff.SealReport{}, err
	}
	rep := handoff.SealReport{LastRevisionPerShard: d.store.Revisions(), DataDirFingerprint: d.store.Fingerprint()}
	d.log.Info("sealed", "revision", rep.LastRevisionPerShard, "fingerprint", rep.DataDirFingerprint, "took", time.Since(t0))
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
	rc := d.store.Recovery()
	d.log.Info("resumed after an aborted handoff", "revision", d.store.Revision(),
		"caught_up_records", rc.CaughtUpRecords, "caught_up_bytes", rc.CaughtUpBytes, "took", rc.CatchUpDuration)
	if rc.FullLoad {
		d.log.Warn("store: the log did not continue from our seal; loaded it in full", "reason", rc.FullLoadReason)
	}
	if err := d.store.Check(); err != nil {
		// A failed store is not reopened (it was never sealed: it holds
		// every acknowledged write); a log that cannot be opened for
		// writing is tried again by each write. Reads are served either way.
		d.log.Error("resumed serving reads; the store refuses writes", "reason", err)
	}
	return nil
}

// noteWrite logs when writes start failing and when they work again.
func (d *daemon) noteWrite(err error) {
	failing := errors.Is(err, store.ErrFailed) || errors.Is(err, store.ErrWriteFailed)
	if err != nil && !failing {
		return // the request's fault, or a handoff
	}
	if d.writesFailing.Swap(failing) == failing {
		return
	}
	if failing {
		d.log.Error("store: writes fail; reads are still served", "reason", err)
	} else {
		d.log.Info("store: writes work again")
	}
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
