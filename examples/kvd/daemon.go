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

// daemon connects the store to its two protocols: HTTP through the
// adapter, whose hooks are its methods, and RESP (the Redis protocol) on a
// second listener when there is one. It is the handoff.Service (and
// handoff.ConnPasser) that Run drives: Drain stops both, and the
// connections of both are passed to the successor.
type daemon struct {
	web   *httphandoff.Server
	resp  *respServer // nil without a listener "resp"
	cfg   config
	log   *slog.Logger
	store *store.Store
	// writesFailing is set while writes fail (see noteWrite), so that the
	// log says when they start and stop failing rather than at each one.
	writesFailing atomic.Bool
}

var _ interface {
	handoff.Service
	handoff.ConnPasser
} = (*daemon)(nil)

// open makes the warmed-up store writable, puts the HTTP adapter on the
// listener "http" and the RESP server on "resp" if it was passed (or
// bound: --resp); Run starts them. In a successor it runs inside the
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
	rln, err := ls.Listener("resp")
	if errors.Is(err, handoff.ErrNotInherited) {
		rln, err = nil, nil // no RESP
	}
	if err != nil {
		ln.Close()
		if w != nil {
			w.Close()
		}
		return nil, fmt.Errorf("listener: %w", err)
	}
	closeListeners := func() {
		ln.Close()
		if rln != nil {
			rln.Close()
		}
	}
	st, err := openStore(cfg, log, w)
	if err != nil {
		closeListeners()
		return nil, err
	}
	d := &daemon{cfg: cfg, log: log, store: st}
	d.web, err = httphandoff.New(httphandoff.Config{
		NewServer: d.newHTTPServer,
		Sync:      d.sync,
		Seal:      d.seal,
		Reopen:    d.reopen,
		Logger:    log,
	}, ln)
	if err != nil {
		closeListeners()
		st.Close()
		return nil, err
	}
	if rln != nil {
		if _, ok := rln.(deadliner); !ok {
			closeListeners()
			st.Close()
			return nil, fmt.Errorf("listener \"resp\" (%T) has no SetDeadline", rln)
		}
		d.resp = newRESPServer(d, rln)
		log.Info("serving RESP soon", "addr", rln.Addr())
	}
	log.Info("serving soon", "addr", ln.Addr(), "revision", st.Revision())
	return d, nil
}

// Start serves HTTP and RESP.
func (d *daemon) Start() error {
	if err := d.web.Start(); err != nil {
		return err
	}
	if d.resp != nil {
		if err := d.resp.start(); err != nil {
			return fmt.Errorf("resp: %w", err)
		}
	}
	return nil
}

// Drain stops both protocols at once: RESP stops accepting and asks each
// connection to stop at its next command boundary, then the adapter drains
// HTTP, and its Sync hook (sync) waits for RESP to have stopped before the
// fsync. Connections still busy at the deadline are counted in
// OpenConnsRemaining.
func (d *daemon) Drain(ctx context.Context) (handoff.DrainReport, error) {
	if d.resp != nil {
		d.resp.beginDrain()
	}
	rep, err := d.web.Drain(ctx)
	if d.resp != nil {
		rep.OpenConnsRemaining += d.resp.waitDrained(ctx)
	}
	return rep, err
}

// Seal is the adapter's: it calls seal.
func (d *daemon) Seal(ctx context.Context) (handoff.SealReport, error) { return d.web.Seal(ctx) }

// ResumeAfterAbort reopens the store (the adapter's Reopen hook), serves
// HTTP again, then RESP: it accepts again and serves the connections its
// drain stopped that were not passed.
func (d *daemon) ResumeAfterAbort(ctx context.Context) error {
	if err := d.web.ResumeAfterAbort(ctx); err != nil {
		return err
	}
	if d.resp != nil {
		if err := d.resp.resume(); err != nil {
			return fmt.Errorf("resp: %w", err)
		}
	}
	return nil
}

// PassConns returns the HTTP connections the drain stopped, then the RESP
// ones, at most max together; the others are closed.
func (d *daemon) PassConns(max int) []handoff.PassedConn {
	conns := d.web.PassConns(max)
	if d.resp != nil {
		conns = append(conns, d.resp.passConns(max-len(conns))...)
	}
	return conns
}

// AdoptConns serves passed connections by the listener that accepted
// them: RESP ones with their state, the others by the adapter (which
// closes those it does not know).
func (d *daemon) AdoptConns(conns []handoff.PassedConn) {
	var web, resp []handoff.PassedConn
	for _, pc := range conns {
		if d.resp != nil && pc.Listener == d.resp.addr {
			resp = append(resp, pc)
		} else {
			web = append(web, pc)
		}
	}
	if len(web) > 0 {
		d.web.AdoptConns(web)
	}
	if len(resp) > 0 {
		d.resp.adopt(resp)
	}
}

// stopServing ends both protocols for good (see httphandoff's Shutdown):
// RESP connections are closed at their next boundary, or when ctx ends.
func (d *daemon) stopServing(ctx context.Context) error {
	var err error
	if d.resp != nil {
		if rerr := d.resp.shutdown(ctx); rerr != nil {
			err = fmt.Errorf("resp: %w", rerr)
		}
	}
	return errors.Join(err, d.web.Shutdown(ctx))
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
		return errors.Join(d.stopServing(ctx), d.store.Close())
	}
	d.log.Info("stopping: drain, seal, then exit")
	dctx, cancel := context.WithTimeout(ctx, stopDrainGrace)
	rep, err := d.Drain(dctx)
	cancel()
	if errors.Is(err, store.ErrFailed) || errors.Is(err, store.ErrWriteFailed) {
		// Writes were refused already; every acknowledged one is durable.
		d.log.Warn("stopping a store that refuses writes; the next start recovers from disk", "reason", err)
		return errors.Join(d.stopServing(ctx), d.store.Close())
	}
	if err != nil {
		return errors.Join(fmt.Errorf("drain: %w", err), d.stopServing(ctx), d.store.Close())
	}
	if _, err := d.seal(ctx); err != nil {
		// The next start replays the log.
		return errors.Join(fmt.Errorf("seal: %w", err), d.stopServing(ctx), d.store.Close())
	}
	d.log.Info("stopped", "revision", d.store.Revision(), "open_conns_left", rep.OpenConnsRemaining)
	return errors.Join(d.stopServing(ctx), d.store.Close())
}

func (d *daemon) newHTTPServer() *http.Server {
	return &http.Server{
		Handler:           d.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
}

// sync is the adapter's Sync hook: HTTP has stopped; wait for RESP to
// stop too (until ctx ends, as for HTTP), then make sure every write they
// accepted is durable.
func (d *daemon) sync(ctx context.Context) error {
	if d.resp != nil {
		d.resp.waitDrained(ctx)
	}
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
