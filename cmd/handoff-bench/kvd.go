package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/internal/gobuild"
	"github.com/handoff-go/handoff/internal/proc"
	"golang.org/x/sys/unix"
)

// Bounds of the kvd mode's steps.
const (
	kvdBuildTimeout = 5 * time.Minute
	// kvdStartTimeout bounds a kvd start (a restart loads everything).
	kvdStartTimeout = 3 * time.Minute
	// kvdStopTimeout bounds a kvd stop (it drains and seals).
	kvdStopTimeout = 3 * time.Minute
	kvdBuildID     = "handoff-bench"
	kvdListener    = "http" // kvd takes its listener by this name
)

// kvdBench is one run of the kvd mode: for each data size, a fresh data
// directory, then kvd handed off again and again under an embedded
// supervisor, then the same kvd on the same data stopped and started again.
type kvdBench struct {
	o      options
	self   string // this binary: the supervisor process
	kvd    string // the kvd binary built for the run
	dir    string
	log    *os.File // the children's stderr
	stderr io.Writer
}

// runKVDMode runs the kvd mode in the work directory dir and prints its
// results (and plots them, if asked).
func runKVDMode(ctx context.Context, o options, self, dir string, logf *os.File, stdout, stderr io.Writer) error {
	if o.plotDir != "" {
		if err := checkPlotDir(o.plotDir); err != nil {
			return err
		}
	}
	b := &kvdBench{o: o, self: self, dir: dir, log: logf, stderr: stderr}
	res, err := b.run(ctx)
	if err != nil {
		return errors.Join(err, logTail(logf))
	}
	if o.plotDir != "" {
		if err := writePlots(o.plotDir, res); err != nil {
			return err
		}
	}
	if o.json {
		return res.writeJSON(stdout)
	}
	res.print(stdout)
	return nil
}

func (b *kvdBench) say(format string, args ...any) {
	fmt.Fprintf(b.stderr, "handoff-bench -kvd: "+format+"\n", args...)
}

func (b *kvdBench) run(ctx context.Context) (*kvdResult, error) {
	res := &kvdResult{
		Date: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.NumCPU(),
		OS: runtime.GOOS + "/" + runtime.GOARCH, Go: runtime.Version(),
		Handoffs: b.o.handoffs, Every: b.o.every, ValueSize: b.o.valueSize,
		ProbeEvery: b.o.probeEvery, WriteRate: b.o.writeRate,
	}
	b.say("building examples/kvd ...")
	rev, err := b.build(ctx)
	if err != nil {
		return nil, err
	}
	res.KVD = rev
	for _, n := range b.o.sizes {
		sr, err := b.runSize(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("%d keys: %w", n, err)
		}
		res.Sizes = append(res.Sizes, sr)
	}
	res.setRatios()
	return res, nil
}

// build compiles examples/kvd into the work directory, from the working
// tree or, with -kvd-rev, from that commit, and returns the revision it was
// built from.
func (b *kvdBench) build(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, kvdBuildTimeout)
	defer cancel()
	src, err := gobuild.ModuleRoot(ctx, "")
	if errors.Is(err, gobuild.ErrNoModule) {
		return "", errors.New("-kvd builds examples/kvd: run it from inside the handoff module")
	}
	if err != nil {
		return "", err
	}
	rev := ""
	if b.o.kvdRev != "" {
		tree := filepath.Join(b.dir, "src")
		if rev, err = gobuild.Extract(ctx, src, b.o.kvdRev, tree); err != nil {
			return "", fmt.Errorf("-kvd-rev %s: %w", b.o.kvdRev, err)
		}
		src = tree
	}
	b.kvd = filepath.Join(b.dir, "kvd")
	if err := gobuild.Build(ctx, src, b.kvd, "", "./examples/kvd"); err != nil {
		return "", err
	}
	if rev != "" {
		return rev, nil
	}
	rev, modified, err := gobuild.Revision(b.kvd)
	if err != nil {
		return "", fmt.Errorf("kvd %w", err)
	}
	if modified {
		rev += " (with uncommitted changes in the tree)"
	}
	return rev, nil
}

// sizeTimeout bounds one size: population, both modes, their checks.
func (b *kvdBench) sizeTimeout() time.Duration {
	ops := time.Duration(b.o.handoffs) * (b.o.every + handoffTimeout + kvdStopTimeout + kvdStartTimeout)
	return populateTimeout + 2*ops + 4*(kvdStartTimeout+kvdStopTimeout+dumpTimeout)
}

func (b *kvdBench) runSize(ctx context.Context, n int) (sizeResult, error) {
	ctx, cancel := context.WithTimeout(ctx, b.sizeTimeout())
	defer cancel()
	sr := sizeResult{Keys: n, ValueSize: b.o.valueSize}
	work := filepath.Join(b.dir, fmt.Sprintf("kvd-%d", n))
	data := filepath.Join(work, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return sr, fmt.Errorf("data directory: %w", err)
	}
	defer os.RemoveAll(work)
	b.say("%d keys: populating ...", n)
	pop, err := populate(ctx, b.kvd, data, n, b.o.valueSize, b.log)
	if err != nil {
		return sr, err
	}
	sr.DiskBytes, sr.Populate = pop.DiskBytes, pop.Took
	b.say("%d keys: %.0f MiB populated in %v; %d handoffs ...", n, float64(pop.DiskBytes)/(1<<20), pop.Took.Round(time.Millisecond), b.o.handoffs)
	if sr.Handoff, err = b.runHandoffs(ctx, work, data, n); err != nil {
		return sr, fmt.Errorf("handoff: %w", err)
	}
	b.say("%d keys: %d restarts ...", n, b.o.handoffs)
	if sr.Restart, err = b.runRestarts(ctx, data, n); err != nil {
		return sr, fmt.Errorf("restart: %w", err)
	}
	return sr, nil
}

// paced calls op b.o.handoffs times, with b.o.every of rest before each
// call and after the last: the load runs undisturbed in between. It
// returns the middle half of each rest, where the pauses the probes see
// are the machine's, not a handoff's or a restart's.
func (b *kvdBench) paced(ctx context.Context, op func() error) ([][2]time.Time, error) {
	var idle [][2]time.Time
	rest := func() error {
		start := time.Now()
		t := time.NewTimer(b.o.every)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			idle = append(idle, [2]time.Time{start.Add(b.o.every / 4), start.Add(3 * b.o.every / 4)})
			return nil
		}
	}
	for i := range b.o.handoffs {
		if err := rest(); err != nil {
			return idle, fmt.Errorf("after %d of %d: %w", i, b.o.handoffs, err)
		}
		if err := op(); err != nil {
			return idle, fmt.Errorf("after %d of %d: %w", i, b.o.handoffs, err)
		}
	}
	return idle, rest()
}

// runHandoffs cold-starts kvd under an embedded supervisor (in its own
// process) and hands it off b.o.handoffs times under the load; then it
// reads every acknowledged write back from the serving kvd, stops it and
// checks the data directory.
func (b *kvdBench) runHandoffs(ctx context.Context, work, data string, n int) (kvdModeResult, error) {
	spawn := &spawnConfig{Binary: b.kvd, Args: []string{"--data", data, "--build-id", kvdBuildID}, Listener: kvdListener}
	start := time.Now()
	sup, ready, err := startSupervisorProc(b.self, work, spawn, b.log)
	if err != nil {
		return kvdModeResult{}, err
	}
	mr := kvdModeResult{ColdStart: time.Since(start)}
	ld := newKVDLoad(ready.Addr, "h", b.o.probeEvery, b.o.writeRate)
	ld.start(ctx)
	var outcomes []supOutcome
	var windows [][2]time.Time
	idle, err := b.paced(ctx, func() error {
		t0 := time.Now()
		o, err := sup.handoff()
		windows = append(windows, [2]time.Time{t0, time.Now()})
		outcomes = append(outcomes, o)
		return err
	})
	// Then one abort of each kind under the same load: every write
	// acknowledged meanwhile is checked with the others.
	for _, cmd := range []string{cmdAbortWarmUp, cmdAbortAfterBegin} {
		if err != nil {
			break
		}
		var o supOutcome
		o, err = sup.abort(cmd)
		mr.Aborts = append(mr.Aborts, abortRecord{Kind: cmd, RolledBack: err == nil, Reason: o.AbortReason, AcceptGap: o.Phases.AcceptGap})
	}
	ld.stop()
	if err != nil {
		_, serr := sup.stop()
		return mr, errors.Join(err, serr)
	}
	probes, writes, okAt, acked := ld.snapshot()
	mr.setLoad(probes, writes, windows, pauses(okAt, windows), pauses(okAt, idle), len(acked))
	// Where each accept gap lay, by the supervisor's phase timings (its
	// clock starts a request's round trip after t0: a fraction of a
	// millisecond).
	var gaps [][2]time.Time
	for i, o := range outcomes {
		from := windows[i][0].Add(o.Phases.Spawn + o.Phases.IncumbentHello + o.Phases.WarmUp)
		gaps = append(gaps, [2]time.Time{from, from.Add(o.Phases.AcceptGap)})
	}
	mr.setHandoffs(outcomes, pauses(okAt, gaps))
	mr.LostLive, err = checkLive(ctx, ready.Addr, acked)
	if err != nil {
		_, serr := sup.stop()
		return mr, errors.Join(err, serr)
	}
	if _, err := sup.stop(); err != nil {
		return mr, err
	}
	mr.Disk, err = checkDisk(ctx, b.kvd, data, n, b.o.valueSize, acked, b.log)
	return mr, err
}

// runRestarts starts kvd by itself on the data runHandoffs left, then
// stops it (SIGTERM: it drains, seals and exits) and starts it again
// b.o.handoffs times under the load, each time until /healthz answers;
// then the same checks.
func (b *kvdBench) runRestarts(ctx context.Context, data string, n int) (kvdModeResult, error) {
	addr, err := freeAddr()
	if err != nil {
		return kvdModeResult{}, err
	}
	start := time.Now()
	p, err := startKVD(ctx, b.kvd, data, addr, b.log)
	if err != nil {
		return kvdModeResult{}, err
	}
	defer func() {
		if p != nil {
			p.kill()
		}
	}()
	mr := kvdModeResult{ColdStart: time.Since(start)}
	ld := newKVDLoad(addr, "r", b.o.probeEvery, b.o.writeRate)
	ld.start(ctx)
	var took []time.Duration
	var windows [][2]time.Time
	idle, err := b.paced(ctx, func() error {
		t0 := time.Now()
		err := p.stop()
		p = nil
		if err != nil {
			return err
		}
		if p, err = startKVD(ctx, b.kvd, data, addr, b.log); err != nil {
			return err
		}
		took = append(took, time.Since(t0))
		windows = append(windows, [2]time.Time{t0, time.Now()})
		return nil
	})
	ld.stop()
	if err != nil {
		return mr, err
	}
	probes, writes, okAt, acked := ld.snapshot()
	mr.setLoad(probes, writes, windows, pauses(okAt, windows), pauses(okAt, idle), len(acked))
	mr.setRestarts(took)
	if mr.LostLive, err = checkLive(ctx, addr, acked); err != nil {
		return mr, err
	}
	err = p.stop()
	p = nil
	if err != nil {
		return mr, err
	}
	mr.Disk, err = checkDisk(ctx, b.kvd, data, n, b.o.valueSize, acked, b.log)
	return mr, err
}

// freeAddr picks a free loopback port.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("pick a port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// kvdProc is kvd started by hand (no supervisor), seen from the bench.
type kvdProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when Wait returned
	err  error         // Wait's result, set before done closes
}

// startKVD starts kvd on data, listening on addr, and returns once its
// /healthz answers (it binds first, then loads the store: connections
// wait in the accept queue meanwhile).
func startKVD(ctx context.Context, bin, data, addr string, logf *os.File) (*kvdProc, error) {
	cmd := exec.Command(bin, "--data", data, "--listen", addr, "--build-id", kvdBuildID)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a terminal's Ctrl-C reaches only the bench
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start kvd: %w", err)
	}
	p := &kvdProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.done: // died while starting: stop waiting for it
			cancel()
		case <-hctx.Done():
		}
	}()
	if _, err := waitHealthy(hctx, addr, time.Millisecond, kvdStartTimeout); err != nil {
		p.kill()
		return nil, fmt.Errorf("kvd pid %d did not start (%v): %w", cmd.Process.Pid, p.cmd.ProcessState, err)
	}
	return p, nil
}

// stop sends SIGTERM and waits for kvd to drain, seal and exit with status 0.
func (p *kvdProc) stop() error {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.kill()
		return fmt.Errorf("kvd pid %d: %w", p.cmd.Process.Pid, err)
	}
	t := time.NewTimer(kvdStopTimeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.kill()
		return fmt.Errorf("kvd pid %d did not exit within %v of SIGTERM: killed", p.cmd.Process.Pid, kvdStopTimeout)
	}
	if p.err != nil {
		return fmt.Errorf("kvd pid %d: %w", p.cmd.Process.Pid, p.err)
	}
	return nil
}

// kill kills kvd's process group and reaps it.
func (p *kvdProc) kill() {
	proc.KillGroup(p.cmd.Process.Pid, unix.SIGKILL)
	<-p.done
}
