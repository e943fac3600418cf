package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

type options struct {
	handoffs int
	rate     int
	clients  int
	every    time.Duration
	idle     time.Duration
	json     bool

	// The kvd mode.
	kvd        bool
	sizes      []int
	valueSize  int
	writeRate  int
	probeEvery time.Duration
	plotDir    string
	kvdRev     string

	// The keep-alive mode: the pool size (0: off) and the numbers of
	// idle connections held through the handoffs.
	keepalive int
	idleConns []int
	idleWait  time.Duration // rest after the handoffs before the idle connections are checked
}

// Defaults that differ in the kvd mode.
const (
	kvdDefaultHandoffs = 10
	kvdDefaultEvery    = 500 * time.Millisecond
	kvdDefaultSizes    = "1000,10000,100000,1000000"
)

// Defaults that differ in the keep-alive mode.
const (
	kaDefaultHandoffs  = 20
	kaDefaultIdleConns = "0,100,1000,10000"
)

// flagsOf lists which flags belong to one mode only.
var (
	pingOnlyFlags = []string{"rate", "clients", "idle"}
	kvdOnlyFlags  = []string{"sizes", "value-size", "write-rate", "probe-every", "plot", "kvd-rev"}
	kaOnlyFlags   = []string{"idle-conns", "idle-wait"}
	// kaNotFlags: the ping mode's flags the keep-alive mode has no use for
	// (-keepalive is its number of clients).
	kaNotFlags = []string{"clients", "idle"}
)

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("handoff-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.handoffs, "handoffs", 100, fmt.Sprintf("handoffs, and restarts of each baseline, to perform (with -kvd: per size, %d unless set)", kvdDefaultHandoffs))
	fs.IntVar(&o.rate, "rate", 1000, "requests per second across all clients, each on a fresh connection")
	fs.IntVar(&o.clients, "clients", 8, "concurrent client goroutines")
	fs.DurationVar(&o.every, "every", 200*time.Millisecond, fmt.Sprintf("time from the start of one handoff or restart to the start of the next (with -kvd: the rest before each, %v unless set)", kvdDefaultEvery))
	fs.DurationVar(&o.idle, "idle", 5*time.Second, "how long the supervisor's CPU time is measured while idle")
	fs.BoolVar(&o.json, "json", false, "print the results as JSON")
	fs.BoolVar(&o.kvd, "kvd", false, "measure examples/kvd instead: handoff and stop-then-start for each data size")
	sizes := fs.String("sizes", kvdDefaultSizes, "-kvd: data sizes, in keys, comma-separated (1k and 1M allowed)")
	fs.IntVar(&o.valueSize, "value-size", 1024, "-kvd: bytes per value")
	fs.IntVar(&o.writeRate, "write-rate", 100, "-kvd: PUTs per second, each on a fresh connection, checked afterwards")
	fs.DurationVar(&o.probeEvery, "probe-every", time.Millisecond, "-kvd: time between two probes (GET /healthz, each on a fresh connection)")
	fs.StringVar(&o.plotDir, "plot", "", "-kvd: write kvd-gap-vs-size.svg and .png into this `directory`")
	fs.StringVar(&o.kvdRev, "kvd-rev", "", "-kvd: build kvd from this `commit` (git archive) instead of the working tree")
	fs.IntVar(&o.keepalive, "keepalive", 0, fmt.Sprintf("measure persistent connections instead: a pool of this many keep-alive HTTP/1.1 connections at -rate under the same three strategies, then handoffs with -idle-conns idle ones held open (0: off; %d handoffs unless set)", kaDefaultHandoffs))
	idleConns := fs.String("idle-conns", kaDefaultIdleConns, "-keepalive: numbers of idle keep-alive connections held open through the handoffs, comma-separated (1k allowed; 0, the base of the ratios, is always measured)")
	fs.DurationVar(&o.idleWait, "idle-wait", 0, "-keepalive: rest after the handoffs before one request is sent on each idle connection")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	wrong := slices.Concat(kvdOnlyFlags, kaOnlyFlags)
	modeFlag := ""
	switch {
	case o.kvd && set["keepalive"]:
		return o, errors.New("-keepalive and -kvd are two modes: choose one")
	case o.keepalive < 0 || o.keepalive > 1024:
		return o, fmt.Errorf("-keepalive %d: must be between 1 and 1024 connections (0: off)", o.keepalive)
	case o.keepalive > 0:
		wrong, modeFlag = slices.Concat(kvdOnlyFlags, kaNotFlags), "-keepalive"
		if !set["handoffs"] {
			o.handoffs = kaDefaultHandoffs
		}
		var err error
		if o.idleConns, err = parseIdleConns(*idleConns); err != nil {
			return o, fmt.Errorf("-idle-conns %q: %w", *idleConns, err)
		}
	}
	if o.kvd {
		wrong, modeFlag = slices.Concat(pingOnlyFlags, kaOnlyFlags), "-kvd"
		if !set["handoffs"] {
			o.handoffs = kvdDefaultHandoffs
		}
		if !set["every"] {
			o.every = kvdDefaultEvery
		}
		var err error
		if o.sizes, err = parseSizes(*sizes); err != nil {
			return o, fmt.Errorf("-sizes %q: %w", *sizes, err)
		}
	}
	for _, name := range wrong {
		if set[name] {
			if modeFlag == "" {
				mode := "-kvd"
				if slices.Contains(kaOnlyFlags, name) {
					mode = "-keepalive"
				}
				return o, fmt.Errorf("-%s does not apply without %s", name, mode)
			}
			return o, fmt.Errorf("-%s does not apply with %s", name, modeFlag)
		}
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.valueSize < 1 || o.valueSize > maxValueSize:
		return o, fmt.Errorf("-value-size %d: must be between 1 and %d", o.valueSize, maxValueSize)
	case o.writeRate < 1 || o.writeRate > 1000:
		return o, fmt.Errorf("-write-rate %d: must be between 1 and 1000 PUTs per second", o.writeRate)
	case o.probeEvery < 100*time.Microsecond || o.probeEvery > time.Second:
		return o, fmt.Errorf("-probe-every %v: must be between 100µs and 1s", o.probeEvery)
	case o.handoffs < 1 || o.handoffs > 10000:
		return o, fmt.Errorf("-handoffs %d: must be between 1 and 10000", o.handoffs)
	case o.rate < 1 || o.rate > 50000:
		return o, fmt.Errorf("-rate %d: must be between 1 and 50000 requests per second", o.rate)
	case o.clients < 1 || o.clients > 1024:
		return o, fmt.Errorf("-clients %d: must be between 1 and 1024", o.clients)
	case o.every < 10*time.Millisecond || o.every > time.Minute:
		return o, fmt.Errorf("-every %v: must be between 10ms and 1m", o.every)
	case o.idle < 0 || o.idle > time.Minute:
		return o, fmt.Errorf("-idle %v: must be between 0 and 1m", o.idle)
	case o.idleWait < 0 || o.idleWait > 5*time.Minute:
		return o, fmt.Errorf("-idle-wait %v: must be between 0 and 5m", o.idleWait)
	}
	return o, nil
}

// maxValueSize is the largest value kvd takes.
const maxValueSize = 1 << 20

// maxSizeKeys bounds one -sizes entry: 10M keys of 1 KiB are 10 GiB in
// each of two processes.
const maxSizeKeys = 10_000_000

// parseSizes reads "1000,10k,1M": ascending, without repeats, at most ten.
func parseSizes(s string) ([]int, error) {
	var sizes []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		mult := 1
		switch {
		case strings.HasSuffix(f, "k"):
			f, mult = strings.TrimSuffix(f, "k"), 1000
		case strings.HasSuffix(f, "M"):
			f, mult = strings.TrimSuffix(f, "M"), 1_000_000
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("not a number of keys: %w", err)
		}
		if n < 1 || n > maxSizeKeys/mult {
			return nil, fmt.Errorf("%d×%d keys: must be between 1 and %d", n, mult, maxSizeKeys)
		}
		sizes = append(sizes, n*mult)
	}
	slices.Sort(sizes)
	sizes = slices.Compact(sizes)
	if len(sizes) > 10 {
		return nil, fmt.Errorf("%d sizes: at most 10", len(sizes))
	}
	return sizes, nil
}

// maxIdleConns bounds one -idle-conns entry; what RLIMIT_NOFILE cannot
// hold is skipped at run time.
const maxIdleConns = 1_000_000

// parseIdleConns reads "0,100,1k": ascending, without repeats, at most ten,
// with 0 added if missing.
func parseIdleConns(s string) ([]int, error) {
	ns := []int{0}
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		mult := 1
		if strings.HasSuffix(f, "k") {
			f, mult = strings.TrimSuffix(f, "k"), 1000
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("not a number of connections: %w", err)
		}
		if n < 0 || n > maxIdleConns/mult {
			return nil, fmt.Errorf("%d×%d connections: must be between 0 and %d", n, mult, maxIdleConns)
		}
		ns = append(ns, n*mult)
	}
	slices.Sort(ns)
	ns = slices.Compact(ns)
	if len(ns) > 10 {
		return nil, fmt.Errorf("%d numbers: at most 10", len(ns))
	}
	return ns, nil
}

// bench is one run: its options, its work directory and this binary.
type bench struct {
	o      options
	self   string
	dir    string
	log    *os.File // the children's stderr
	stderr io.Writer
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	dir, err := os.MkdirTemp("", "handoff-bench-")
	if err != nil {
		return fmt.Errorf("work directory: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := os.Mkdir(filepath.Join(dir, dataDirName), 0o755); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	logf, err := os.Create(filepath.Join(dir, "children.log"))
	if err != nil {
		return fmt.Errorf("log: %w", err)
	}
	defer logf.Close()
	if o.kvd {
		return runKVDMode(ctx, o, self, dir, logf, stdout, stderr)
	}
	if o.keepalive > 0 {
		return runKeepAliveMode(ctx, o, self, dir, logf, stdout, stderr)
	}
	b := &bench{o: o, self: self, dir: dir, log: logf, stderr: stderr}
	res, err := b.run(ctx)
	if err != nil {
		return errors.Join(err, logTail(b.log))
	}
	if o.json {
		return res.writeJSON(stdout)
	}
	res.print(stdout)
	return nil
}

// logTail returns the end of the children's log as an error, if not empty.
func logTail(logf *os.File) error {
	data, err := os.ReadFile(logf.Name())
	if err != nil || len(data) == 0 {
		return nil
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return fmt.Errorf("children's log (last lines):\n%s", strings.Join(lines, "\n"))
}

func (b *bench) say(format string, args ...any) {
	fmt.Fprintf(b.stderr, format+"\n", args...)
}

func (b *bench) run(ctx context.Context) (*result, error) {
	res := &result{
		Date: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.NumCPU(),
		OS: runtime.GOOS + "/" + runtime.GOARCH, Go: runtime.Version(),
		Handoffs: b.o.handoffs, Rate: b.o.rate, Clients: b.o.clients, Every: b.o.every,
	}
	for _, m := range []struct {
		name string
		fn   func(context.Context, *result) (modeResult, error)
	}{
		{modeHandoff, b.runHandoff},
		{modeRestart, b.runRestart},
		{modeReusePort, b.runReusePort},
	} {
		b.say("handoff-bench: %s: %d %s under %d req/s ...", m.name, b.o.handoffs, map[bool]string{true: "handoffs", false: "restarts"}[m.name == modeHandoff], b.o.rate)
		mr, err := m.fn(ctx, res)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.name, err)
		}
		res.Modes = append(res.Modes, mr)
	}
	return res, nil
}

// opSample is one handoff or restart as the bench saw it.
type opSample struct {
	took      time.Duration // the whole handoff or restart
	gap       time.Duration // handoff: accept gap; restart: refused window
	lib, work time.Duration // handoff: the library's share of the gap and the daemons' work
	failed    string        // a handoff that did not commit: why
	handoff   supOutcome    // handoff: as the supervisor reported it
	// start and end: when the bench began and ended the step, set by
	// drive (the keep-alive mode finds the pauses around it).
	start, end time.Time
}

// modeTimeout bounds one mode: its restarts and its load.
func (b *bench) modeTimeout() time.Duration {
	return time.Duration(b.o.handoffs+1)*(b.o.every+5*time.Second) + time.Minute
}

// drive runs the load against addr and calls restart once every
// b.o.every, b.o.handoffs times, then lets the load run one more period.
// Both the load and the restarts are bounded by modeTimeout.
func (b *bench) drive(ctx context.Context, addr string, restart func() (opSample, error)) ([]opSample, *load, error) {
	ld := newLoad()
	samples, err := b.driveWith(ctx, addr, ld, b.o.clients, restart)
	return samples, ld, err
}

// loader is a client load: the fresh-connection one, or the keep-alive one.
type loader interface {
	// run sends requests to addr from clients goroutines, at rate in
	// all, until ctx ends or each has sent maxPerClient.
	run(ctx context.Context, addr string, clients, rate, maxPerClient int)
}

// driveWith is drive with the load ld of clients clients.
func (b *bench) driveWith(ctx context.Context, addr string, ld loader, clients int, restart func() (opSample, error)) ([]opSample, error) {
	mctx, cancel := context.WithTimeout(ctx, b.modeTimeout())
	defer cancel()
	lctx, stopLoad := context.WithCancel(mctx)
	defer stopLoad()
	maxPerClient := int(math.Ceil(float64(b.o.rate) * b.modeTimeout().Seconds() / float64(clients)))
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		ld.run(lctx, addr, clients, b.o.rate, maxPerClient)
	}()
	defer func() { stopLoad(); <-loadDone }()

	tick := time.NewTicker(b.o.every)
	defer tick.Stop()
	var samples []opSample
	for len(samples) < b.o.handoffs {
		select {
		case <-mctx.Done():
			return samples, fmt.Errorf("after %d of %d: %w", len(samples), b.o.handoffs, mctx.Err())
		case <-tick.C:
		}
		start := time.Now()
		s, err := restart()
		if err != nil {
			return samples, fmt.Errorf("after %d of %d: %w", len(samples), b.o.handoffs, err)
		}
		s.start, s.end = start, time.Now()
		samples = append(samples, s)
	}
	select {
	case <-mctx.Done():
		return samples, mctx.Err()
	case <-tick.C:
	}
	stopLoad()
	<-loadDone
	return samples, nil
}

// runHandoff measures the library: a supervisor process hands the daemon
// off under load, then sits idle while its CPU time is measured.
func (b *bench) runHandoff(ctx context.Context, res *result) (modeResult, error) {
	sup, ready, err := startSupervisorProc(b.self, b.dir, nil, b.log)
	if err != nil {
		return modeResult{}, err
	}
	samples, ld, err := b.drive(ctx, ready.Addr, handoffStep(sup))
	if err != nil {
		_, serr := sup.stop()
		return modeResult{}, errors.Join(err, serr)
	}
	idle, err := b.measureIdle(ctx, sup)
	final, serr := sup.stop()
	if err = errors.Join(err, serr); err != nil {
		return modeResult{}, err
	}
	idle.Peak = final.Supervisor
	res.Supervisor = idle
	mr := newModeResult(modeHandoff, samples, ld)
	timings, err := readTimings(filepath.Join(b.dir, timingsName))
	if err != nil {
		return modeResult{}, err
	}
	mr.Breakdown = newBreakdown(samples, timings)
	return mr, nil
}

// handoffStep performs one handoff through sup.
func handoffStep(sup *supervisorProc) func() (opSample, error) {
	return func() (opSample, error) {
		o, err := sup.handoff()
		if err != nil {
			return opSample{}, err
		}
		s := opSample{took: o.Phases.Total, gap: o.Phases.AcceptGap, lib: o.Phases.LibraryOverhead, work: o.Phases.DaemonWork, handoff: o}
		if !o.Committed {
			s.failed = o.AbortReason
		}
		return s, nil
	}
}

func readTimings(path string) (map[int]daemonTimings, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("daemon timings: %w", err)
	}
	m := map[int]daemonTimings{}
	for line := range strings.Lines(string(data)) {
		var t daemonTimings
		if err := json.Unmarshal([]byte(line), &t); err != nil {
			return nil, fmt.Errorf("daemon timings %q: %w", line, err)
		}
		m[t.PID] = t
	}
	return m, nil
}

// newBreakdown splits each committed handoff's accept gap with the
// daemons' own timings: the old daemon's drain and seal, the new one's
// lock and open.
func newBreakdown(samples []opSample, timings map[int]daemonTimings) *breakdown {
	var gap, drain, seal, begin, between, lock []time.Duration
	for _, s := range samples {
		o := s.handoff
		inc, ok1 := timings[o.OldPID]
		succ, ok2 := timings[o.PID]
		if s.failed != "" || !ok1 || !ok2 || inc.Stopped == 0 || succ.Accepting == 0 {
			continue
		}
		p := o.Phases
		gap = append(gap, time.Duration(succ.Accepting-inc.Stopped))
		drain = append(drain, p.Drain-inc.Drain)
		seal = append(seal, p.Seal-inc.Seal)
		begin = append(begin, p.BeginToReady-succ.Open)
		between = append(between, p.AcceptGap-p.Drain-p.Seal-p.BeginToReady)
		lock = append(lock, succ.Lock)
	}
	return &breakdown{
		DaemonSeenGap: newDist(gap), DrainHop: newDist(drain), SealHop: newDist(seal),
		BeginHop: newDist(begin), BetweenHops: newDist(between), Lock: newDist(lock),
	}
}

// measureIdle reads the supervisor's and the daemon's CPU time before and
// after b.o.idle without load.
func (b *bench) measureIdle(ctx context.Context, sup *supervisorProc) (supervisorResult, error) {
	before, err := sup.stats()
	if err != nil {
		return supervisorResult{}, err
	}
	t := time.NewTimer(b.o.idle)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return supervisorResult{}, ctx.Err()
	case <-t.C:
	}
	after, err := sup.stats()
	if err != nil {
		return supervisorResult{}, err
	}
	r := supervisorResult{
		Idle:    b.o.idle,
		CPU:     after.Supervisor.CPU - before.Supervisor.CPU,
		Wakeups: after.Supervisor.Switches - before.Supervisor.Switches,
		Daemon:  after.Daemon,
	}
	if after.Daemon.PID == before.Daemon.PID {
		r.DaemonCPU = after.Daemon.CPU - before.Daemon.CPU
		r.DaemonWakeups = after.Daemon.Switches - before.Daemon.Switches
	}
	return r, nil
}

// runRestart measures the stop-then-start baseline.
func (b *bench) runRestart(ctx context.Context, _ *result) (modeResult, error) {
	addr, step, stop, err := b.baseline(rolePlain, false)
	if err != nil {
		return modeResult{}, err
	}
	samples, ld, err := b.drive(ctx, addr, step)
	if err = errors.Join(err, stop()); err != nil {
		return modeResult{}, err
	}
	return newModeResult(modeRestart, samples, ld), nil
}

// runReusePort measures the SO_REUSEPORT overlap baseline.
func (b *bench) runReusePort(ctx context.Context, _ *result) (modeResult, error) {
	addr, step, stop, err := b.baseline(rolePlain, true)
	if err != nil {
		return modeResult{}, err
	}
	samples, ld, err := b.drive(ctx, addr, step)
	if err = errors.Join(err, stop()); err != nil {
		return modeResult{}, err
	}
	return newModeResult(modeReusePort, samples, ld), nil
}

// baseline starts a baseline daemon in role and returns its address, the
// step that replaces it without the library, and the stop of the one that
// serves at the end. Without reusePort the step is stop-then-start (SIGTERM,
// then a new process binds the port); with it the overlap (a new process
// binds the port with SO_REUSEPORT, then the old one stops).
func (b *bench) baseline(role string, reusePort bool) (string, func() (opSample, error), func() error, error) {
	cur, addr, _, err := startPlainRole(b.self, role, "127.0.0.1:0", reusePort, b.log)
	if err != nil {
		return "", nil, nil, err
	}
	stop := func() error {
		if cur == nil {
			return nil
		}
		_, err := cur.stop()
		cur = nil
		return err
	}
	if reusePort {
		return addr, func() (opSample, error) {
			start := time.Now()
			next, _, _, err := startPlainRole(b.self, role, addr, true, b.log)
			if err != nil {
				return opSample{}, err
			}
			old := cur
			cur = next
			if _, err := old.stop(); err != nil {
				return opSample{}, err
			}
			return opSample{took: time.Since(start)}, nil
		}, stop, nil
	}
	return addr, func() (opSample, error) {
		start := time.Now()
		closed, err := cur.stop()
		if err != nil {
			cur = nil
			return opSample{}, err
		}
		next, _, bound, err := startPlainRole(b.self, role, addr, false, b.log)
		cur = next
		if err != nil {
			return opSample{}, err
		}
		return opSample{took: time.Since(start), gap: bound.Sub(closed)}, nil
	}, stop, nil
}
