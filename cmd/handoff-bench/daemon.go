package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/handoff-go/handoff"
)

// Names inside the work directory and of the listener.
const (
	listenerName  = "tcp"
	dataDirName   = "data"
	stateFileName = "served" // in the data directory: requests served, sealed
	controlName   = "control.sock"
	timingsName   = "timings.jsonl" // the daemons' own timings, one JSON line per daemon
	buildID       = "handoff-bench"
)

// runDaemon is the daemon the supervisor hands off: it answers requests on
// the inherited listener and implements handoff.Drainable. Its state is
// one counter (requests served) in the data directory, written and
// fsync'd by Seal and read back by the successor, which advertises it.
func runDaemon(ctx context.Context, dir string) error {
	if dir == "" {
		return fmt.Errorf("%s is not set", envDir)
	}
	data, sock := filepath.Join(dir, dataDirName), filepath.Join(dir, controlName)
	role, err := handoff.DetectRole()
	if err != nil {
		return err
	}
	d := &daemon{data: data}
	var inc *handoff.Incumbent
	switch r := role.(type) {
	case *handoff.ColdStart:
		lock, err := handoff.AcquireDataDirLockOrBreakStale(data)
		if err != nil {
			return err
		}
		if err := d.open(r.Inherited); err != nil {
			return errors.Join(err, lock.Release())
		}
		if inc, err = handoff.BindColdStart(sock, lock); err != nil {
			return errors.Join(err, d.closeState(), lock.Release())
		}
		inc.SetBuildID(buildID)
	case *handoff.Successor:
		h, err := r.Handshake(buildID)
		if err != nil {
			return err
		}
		b, err := h.WaitForBegin(ctx)
		if err != nil {
			return err
		}
		begun := time.Now()
		lock, err := handoff.AcquireDataDirLock(data)
		if err != nil {
			return err
		}
		d.t.Lock = time.Since(begun)
		if err := d.open(b.Listeners()); err != nil {
			return errors.Join(err, lock.Release())
		}
		d.t.Open = time.Since(begun)
		ready := handoff.ReadinessSnapshot{
			ListeningOn:                []string{listenerName},
			HealthzOK:                  true,
			AdvertisedRevisionPerShard: []uint64{d.srv.served.Load()},
		}
		if inc, err = b.AnnounceAndBind(ready, sock, lock); err != nil {
			return errors.Join(err, d.closeState()) // the lock is released
		}
	default:
		return fmt.Errorf("unexpected role %T", role)
	}
	defer inc.Close()
	if err := d.resumeAccepting(); err != nil {
		return err
	}
	d.t.Accepting = time.Now().UnixNano()
	err = inc.Serve(ctx, d)
	switch {
	case err == nil:
		// Committed: drained and sealed already; the successor serves.
		d.srv.wait()
		return d.writeTimings(dir)
	case ctx.Err() != nil:
		// SIGTERM (Supervisor.Stop): drain, seal, let go of the lock.
		if err := d.writeTimings(dir); err != nil {
			return err
		}
		if _, err := d.Drain(context.WithoutCancel(ctx)); err != nil {
			return err
		}
		_, err := d.Seal(context.WithoutCancel(ctx))
		return errors.Join(err, inc.Lock().Release())
	default:
		err = errors.Join(err, d.srv.stopAccepting())
		d.srv.wait()
		return err
	}
}

// daemon is the library daemon's state; the library calls its Drainable
// methods one at a time.
type daemon struct {
	data string // the data directory
	srv  server
	il   *handoff.InheritedListeners

	mu    sync.Mutex
	state *os.File // the counter file while it is open (nil once sealed)

	t daemonTimings
}

// daemonTimings are what one daemon measured of its own work; the bench
// splits the library's share of the accept gap with them.
type daemonTimings struct {
	PID int `json:"pid"`
	// As a successor: Lock is the time from Begin to holding the lock
	// (AcquireDataDirLock: flock and an fsync'd pid file), Open to the
	// state being open, Accepting when it began to accept (unix ns).
	Lock      time.Duration `json:"lock_ns"`
	Open      time.Duration `json:"open_ns"`
	Accepting int64         `json:"accepting_unix_ns"`
	// As the incumbent of the last handoff: its Drain and Seal, and when
	// Drain closed its listener (unix ns).
	Drain   time.Duration `json:"drain_ns"`
	Seal    time.Duration `json:"seal_ns"`
	Stopped int64         `json:"stopped_unix_ns"`
}

// writeTimings appends d's timings to the work directory's timings file
// (one short line: an atomic append), after the handoff it measured.
func (d *daemon) writeTimings(dir string) error {
	d.t.PID = os.Getpid()
	b, err := json.Marshal(d.t)
	if err != nil {
		return fmt.Errorf("timings: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, timingsName), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("timings: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("timings: %w", err)
	}
	return nil
}

var _ handoff.Drainable = (*daemon)(nil)

// open opens the counter file and reads the sealed count.
func (d *daemon) open(il *handoff.InheritedListeners) error {
	d.il = il
	f, err := os.OpenFile(filepath.Join(d.data, stateFileName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open state: %w", err)
	}
	var b [8]byte
	if _, err := f.ReadAt(b[:], 0); err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return fmt.Errorf("read state: %w", err)
	}
	d.srv.served.Store(binary.LittleEndian.Uint64(b[:]))
	d.mu.Lock()
	d.state = f
	d.mu.Unlock()
	return nil
}

func (d *daemon) closeState() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state == nil {
		return nil
	}
	err := d.state.Close()
	d.state = nil
	return err
}

func (d *daemon) resumeAccepting() error {
	if d.srv.accepting() {
		return nil
	}
	ln, err := d.il.Listener(listenerName)
	if err != nil {
		return err
	}
	d.srv.start(ln)
	return nil
}

// Drain stops accepting and waits for the accepted connections (each is
// bounded by connTimeout, well inside the drain grace). Nothing is written
// per request, so there is nothing to fsync.
func (d *daemon) Drain(context.Context) (handoff.DrainReport, error) {
	start := time.Now()
	if err := d.srv.stopAccepting(); err != nil {
		return handoff.DrainReport{}, err
	}
	d.t.Stopped = time.Now().UnixNano()
	d.srv.wait()
	d.t.Drain = time.Since(start)
	return handoff.DrainReport{AcceptClosed: true}, nil
}

// Seal writes the counter, fsyncs and closes the file.
func (d *daemon) Seal(context.Context) (handoff.SealReport, error) {
	start := time.Now()
	defer func() { d.t.Seal = time.Since(start) }()
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.srv.served.Load()
	if d.state == nil {
		return handoff.SealReport{}, errors.New("seal: state is not open")
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], n)
	if _, err := d.state.WriteAt(b[:], 0); err != nil {
		return handoff.SealReport{}, fmt.Errorf("seal: %w", err)
	}
	if err := d.state.Sync(); err != nil {
		return handoff.SealReport{}, fmt.Errorf("seal: fsync: %w", err)
	}
	err := d.state.Close()
	d.state = nil
	if err != nil {
		return handoff.SealReport{}, fmt.Errorf("seal: %w", err)
	}
	return handoff.SealReport{LastRevisionPerShard: []uint64{n}, DataDirFingerprint: "served-" + strconv.FormatUint(n, 10)}, nil
}

// ResumeAfterAbort reopens the counter from disk (if sealed) and accepts
// again. Idempotent.
func (d *daemon) ResumeAfterAbort(context.Context) error {
	d.mu.Lock()
	sealed := d.state == nil
	d.mu.Unlock()
	if sealed {
		if err := d.open(d.il); err != nil {
			return err
		}
	}
	return d.resumeAccepting()
}
