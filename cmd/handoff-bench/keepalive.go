package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// Bounds of the keep-alive mode's steps besides the handoffs.
const (
	// idleOpenTimeout bounds opening (and answering once) every idle
	// connection of one size; idleCheckTimeout the request on each
	// afterwards.
	idleOpenTimeout  = 2 * time.Minute
	idleCheckTimeout = 2 * time.Minute
	// idleWorkers open and check the idle connections concurrently.
	idleWorkers = 64
	// fdReserve is what each process needs besides the connections: the
	// supervisor keeps 256 free before it takes passed ones
	// (supervisor/conns.go), so do the daemons; the bench its pipes.
	fdReserve = 512
)

// kaBench is one run of the keep-alive mode: the pool under handoff,
// stop-then-start and SO_REUSEPORT, then handoffs with idle connections.
type kaBench struct {
	*bench
	nofile syscall.Rlimit // RLIMIT_NOFILE of this process, inherited by the others
}

// runKeepAliveMode runs the keep-alive mode in the work directory dir and
// prints its results.
func runKeepAliveMode(ctx context.Context, o options, self, dir string, logf *os.File, stdout, stderr io.Writer) error {
	lim, err := raiseNoFile()
	if err != nil {
		return err
	}
	b := &kaBench{bench: &bench{o: o, self: self, dir: dir, log: logf, stderr: stderr}, nofile: lim}
	res, err := b.run(ctx)
	if err != nil {
		return errors.Join(err, logTail(logf))
	}
	if o.json {
		return res.writeJSON(stdout)
	}
	res.print(stdout)
	return nil
}

// raiseNoFile raises the soft RLIMIT_NOFILE to the hard one (through
// syscall.Setrlimit, so that the supervisor and the daemons, started by
// this process, inherit it) and returns it.
func raiseNoFile() (syscall.Rlimit, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return lim, fmt.Errorf("RLIMIT_NOFILE: %w", err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return lim, fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", lim.Max, err)
	}
	err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	return lim, err
}

func (b *kaBench) say(format string, args ...any) {
	fmt.Fprintf(b.stderr, "handoff-bench -keepalive: "+format+"\n", args...)
}

func (b *kaBench) run(ctx context.Context) (*kaResult, error) {
	res := &kaResult{
		Date: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.NumCPU(),
		OS: runtime.GOOS + "/" + runtime.GOARCH, Go: runtime.Version(),
		Handoffs: b.o.handoffs, Rate: b.o.rate, Pool: b.o.keepalive, Every: b.o.every, IdleWait: b.o.idleWait,
		NoFile: b.nofile.Cur, NoFileMax: b.nofile.Max,
	}
	for _, m := range []struct {
		name string
		fn   func(context.Context) (kaModeResult, error)
	}{
		{modeHandoff, b.runHandoff},
		{modeRestart, b.runRestart},
		{modeReusePort, b.runReusePort},
	} {
		b.say("%s: %d %s under %d req/s on %d keep-alive connections ...", m.name, b.o.handoffs,
			map[bool]string{true: "handoffs", false: "restarts"}[m.name == modeHandoff], b.o.rate, b.o.keepalive)
		mr, err := m.fn(ctx)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.name, err)
		}
		res.Modes = append(res.Modes, mr)
	}
	for _, n := range b.o.idleConns {
		ir, err := b.runIdle(ctx, n)
		if err != nil {
			return nil, fmt.Errorf("%d idle connections: %w", n, err)
		}
		res.Idle = append(res.Idle, ir)
	}
	res.setRatios()
	return res, nil
}

// startSupervisor starts a supervisor process for the HTTP daemon in a
// fresh directory under the work directory.
func (b *kaBench) startSupervisor(name string) (*supervisorProc, supReady, error) {
	dir := filepath.Join(b.dir, name)
	if err := os.MkdirAll(filepath.Join(dir, dataDirName), 0o755); err != nil {
		return nil, supReady{}, err
	}
	spawn := &spawnConfig{Binary: b.self, Listener: listenerName, Env: []string{envRole + "=" + roleHTTPDaemon, envDir + "=" + dir}}
	return startSupervisorProc(b.self, dir, spawn, b.log)
}

// runHandoff: the HTTP daemon handed off under an embedded supervisor
// (in its own process), the pool's connections passed at each handoff.
func (b *kaBench) runHandoff(ctx context.Context) (kaModeResult, error) {
	sup, ready, err := b.startSupervisor("ka-handoff")
	if err != nil {
		return kaModeResult{}, err
	}
	ld := newKALoad(connTimeout)
	samples, err := b.driveWith(ctx, ready.Addr, ld, b.o.keepalive, handoffStep(sup))
	_, serr := sup.stop()
	if err = errors.Join(err, serr); err != nil {
		return kaModeResult{}, err
	}
	return newKAModeResult(modeHandoff, samples, ld), nil
}

// runRestart: the same HTTP server without the library, stopped
// (http.Server.Shutdown closes the idle connections) and started again.
func (b *kaBench) runRestart(ctx context.Context) (kaModeResult, error) {
	return b.runBaseline(ctx, modeRestart, false)
}

// runReusePort: a new process binds the port with SO_REUSEPORT, then the
// old one shuts down, closing its connections.
func (b *kaBench) runReusePort(ctx context.Context) (kaModeResult, error) {
	return b.runBaseline(ctx, modeReusePort, true)
}

func (b *kaBench) runBaseline(ctx context.Context, mode string, reusePort bool) (kaModeResult, error) {
	addr, step, stop, err := b.baseline(roleHTTPPlain, reusePort)
	if err != nil {
		return kaModeResult{}, err
	}
	ld := newKALoad(connTimeout)
	samples, err := b.driveWith(ctx, addr, ld, b.o.keepalive, step)
	if err = errors.Join(err, stop()); err != nil {
		return kaModeResult{}, err
	}
	return newKAModeResult(mode, samples, ld), nil
}

// runIdle holds n idle keep-alive connections (each answered once, so that
// it stands idle at a request boundary) through the handoffs, measured by
// the pool as probes, then sends one request on each.
func (b *kaBench) runIdle(ctx context.Context, n int) (kaIdleResult, error) {
	ir := kaIdleResult{Idle: n}
	// The bench holds the client ends; the supervisor (its own process)
	// holds its copies of the passed ones while a handoff runs; each
	// daemon the server ends. Each needs them under its own limit.
	if need := n + b.o.keepalive + fdReserve; uint64(need) > b.nofile.Cur {
		ir.Skipped = fmt.Sprintf("needs about %d descriptors in the bench, in the supervisor and in each daemon; RLIMIT_NOFILE is %d (hard %d)", need, b.nofile.Cur, b.nofile.Max)
		b.say("%d idle connections: skipped: %s", n, ir.Skipped)
		return ir, nil
	}
	b.say("%d idle connections: opening them, then %d handoffs under %d req/s on %d probe connections ...", n, b.o.handoffs, b.o.rate, b.o.keepalive)
	sup, ready, err := b.startSupervisor(fmt.Sprintf("ka-idle-%d", n))
	if err != nil {
		return ir, err
	}
	idle, err := b.runIdleWith(ctx, sup, ready.Addr, &ir)
	for _, kc := range idle {
		kc.close()
	}
	_, serr := sup.stop()
	return ir, errors.Join(err, serr)
}

// runIdleWith is runIdle with the supervisor running; it returns the idle
// connections it opened, for the caller to close.
func (b *kaBench) runIdleWith(ctx context.Context, sup *supervisorProc, addr string, ir *kaIdleResult) ([]*kaConn, error) {
	start := time.Now()
	idle, ports, failed, err := openIdle(ctx, addr, ir.Idle)
	ir.Open = time.Since(start)
	ir.OpenFailed = failed.n
	ir.OpenErrors = failed.examples
	if err != nil {
		return idle, err
	}
	ld := newKALoad(connTimeout)
	samples, err := b.driveWith(ctx, addr, ld, b.o.keepalive, handoffStep(sup))
	if err != nil {
		return idle, err
	}
	if b.o.idleWait > 0 {
		t := time.NewTimer(b.o.idleWait)
		select {
		case <-ctx.Done():
			t.Stop()
			return idle, ctx.Err()
		case <-t.C:
		}
	}
	checkIdle(ctx, idle, ports, ir)
	mr := newKAModeResult(modeHandoff, samples, ld)
	ir.Restarts, ir.Committed, ir.AbortReasons = mr.Restarts, mr.Committed, mr.AbortReasons
	ir.AcceptGap, ir.LibraryOverhead, ir.PassedConns = mr.AcceptGap, mr.LibraryOverhead, mr.PassedConns
	ir.Probes = probeFigures{
		Requests: mr.Requests, Failed: mr.RequestsFailed, Reconnects: mr.Reconnects,
		Gap: mr.Gap, FailureExamples: mr.FailureExamples,
	}
	return idle, nil
}

// errSample counts errors and keeps the first few.
type errSample struct {
	mu       sync.Mutex
	n        int
	examples []string
}

func (e *errSample) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if len(e.examples) < 5 {
		e.examples = append(e.examples, err.Error())
	}
}

// openIdle opens n keep-alive connections to addr, idleWorkers at a time,
// and has each answer one request, so that the server has accepted it and
// it stands idle at a request boundary. It returns those that answered
// and their local ports; an error only when the time ran out.
func openIdle(ctx context.Context, addr string, n int) ([]*kaConn, []int, *errSample, error) {
	ctx, cancel := context.WithTimeout(ctx, idleOpenTimeout)
	defer cancel()
	failed := &errSample{}
	conns := make([]*kaConn, n)
	forEach(ctx, n, func(i int) {
		kc := newKAConn(addr, connTimeout)
		if r := kc.do(); r.err != nil {
			kc.close()
			failed.add(r.err)
			return
		}
		conns[i] = kc
	})
	var open []*kaConn
	var ports []int
	for _, kc := range conns {
		if kc != nil {
			open, ports = append(open, kc), append(ports, kc.port)
		}
	}
	if err := ctx.Err(); err != nil {
		return open, ports, failed, fmt.Errorf("opening %d idle connections: %d open after %v: %w", n, len(open), idleOpenTimeout, err)
	}
	return open, ports, failed, nil
}

// checkIdle sends one request on each idle connection and counts those
// answered on the same connection (no re-dial, the same local port).
func checkIdle(ctx context.Context, idle []*kaConn, ports []int, ir *kaIdleResult) {
	ctx, cancel := context.WithTimeout(ctx, idleCheckTimeout)
	defer cancel()
	var mu sync.Mutex
	failed := &errSample{}
	var lat []time.Duration
	checked := forEach(ctx, len(idle), func(i int) {
		r := idle[i].do()
		if r.err != nil {
			failed.add(r.err)
		}
		mu.Lock()
		defer mu.Unlock()
		lat = append(lat, r.end.Sub(r.start))
		switch {
		case r.err == nil && !r.redialed && r.port == ports[i]:
			ir.SameConn++
		case r.redialed:
			ir.Redialed++
		}
	})
	ir.Checked = checked
	ir.CheckFailed, ir.CheckErrors = failed.n, failed.examples
	ir.CheckLatency = newDist(lat)
}

// forEach calls fn(0) … fn(n-1), idleWorkers at a time, until ctx ends;
// it returns how many calls were made.
func forEach(ctx context.Context, n int, fn func(int)) int {
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	calls := 0
	for range min(idleWorkers, n) {
		wg.Go(func() {
			for i := range next {
				fn(i)
				mu.Lock()
				calls++
				mu.Unlock()
			}
		})
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return calls
}
