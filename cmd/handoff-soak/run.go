package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// handoffRecord is one triggered handoff as the soak saw it.
type handoffRecord struct {
	N       int
	Binary  string
	Want    string // the build id the successor must announce
	Started time.Time
	Took    time.Duration // trigger line to reply line
	Reply   handoffReply
	Err     string // the trigger exchange failed or answered err:
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if o.plotDir != "" {
		if err := os.MkdirAll(o.plotDir, 0o755); err != nil {
			return fmt.Errorf("-plot: %w", err)
		}
	}
	s := &soak{o: o, stdout: stdout, stderr: stderr, args: args, began: time.Now()}
	if err := s.setUp(ctx); err != nil {
		// Keep the supervisor's log, if it got that far.
		s.tearDown(s.sup != nil)
		return err
	}
	rep := s.run(ctx)
	if o.plotDir != "" {
		if err := writePlots(o.plotDir, rep, s.all, s.rest); err != nil {
			rep.problem("plots: %v", err)
		}
	}
	failed := len(rep.Problems) > 0
	kept := failed || o.keep || !s.tmp
	s.tearDown(kept)
	if kept {
		rep.WorkDir = s.work
	}
	if o.json {
		if err := rep.writeJSON(stdout); err != nil {
			return err
		}
	} else {
		rep.writeText(stdout)
	}
	if failed {
		return fmt.Errorf("%d checks failed (working directory kept: %s)", len(rep.Problems), s.work)
	}
	return nil
}

// soak owns the working directory, the binaries, the supervisor, the load
// and the sampler of one run.
type soak struct {
	o              options
	stdout, stderr io.Writer
	args           []string
	began          time.Time
	work           string
	tmp            bool
	src            source
	bins           binaries
	sup            *supervisor
	// what the run collected, for the report and the plots
	all, rest  []sample
	zombieLife map[int]time.Duration
}

func (s *soak) say(format string, a ...any) {
	if !s.o.quiet {
		fmt.Fprintf(s.stderr, "handoff-soak: "+format+"\n", a...)
	}
}

func (s *soak) setUp(ctx context.Context) error {
	if s.o.dir != "" {
		if err := os.MkdirAll(s.o.dir, 0o755); err != nil {
			return fmt.Errorf("-dir: %w", err)
		}
		s.work = s.o.dir
	} else {
		dir, err := os.MkdirTemp("", "handoff-soak-")
		if err != nil {
			return err
		}
		s.work, s.tmp = dir, true
	}
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	src, info, err := prepareSource(ctx, root, s.o.rev, s.work)
	if err != nil {
		return err
	}
	s.src = info
	s.say("building the supervisor and kvd %s, %s (%s, commit %s)", buildIDs[0], buildIDs[1], info.Tree, shortCommit(info.Commit))
	if s.bins, err = build(ctx, src, filepath.Join(s.work, "bin")); err != nil {
		return err
	}
	if s.sup, err = writeConfig(s.work, s.bins); err != nil {
		return err
	}
	return s.sup.start(ctx)
}

// tearDown stops what still runs and removes a temporary working
// directory unless keep.
func (s *soak) tearDown(keep bool) {
	if s.sup != nil {
		s.sup.stop() // already stopped unless the run failed early
	}
	if s.tmp && !keep && !s.o.keep {
		os.RemoveAll(s.work)
	}
}

func shortCommit(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	return c
}

// run performs the soak and the checks and returns the report.
func (s *soak) run(ctx context.Context) *report {
	o := s.o
	rep := newReport(s)
	httpAddr, metricsAddr, daemonPID, err := s.sup.addrs()
	if err != nil {
		rep.problem("%v", err)
		return rep
	}
	mc := newMetricsClient(metricsAddr)
	smp := newSampler(s.sup.pid(), s.bins.kvd[:], mc, daemonPID)
	sctx, stopSampling := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	go func() {
		smp.run(sctx, o.sample)
		close(sampled)
	}()
	defer func() {
		stopSampling()
		<-sampled
	}()

	l := newLoader(httpAddr, o.requestTimeout, o.idempotentPuts)
	stopLoad := make(chan struct{})
	loadStarted := time.Now()
	l.start(stopLoad, o.freshWorkers, o.freshRate, o.keepAlive, o.keepAliveRate)
	s.say("supervisor pid %d, kvd on %s; load running; %d handoffs, one every %v", s.sup.pid(), httpAddr, o.handoffs, o.every)
	sleepCtx(ctx, o.warmup)

	lctx, cancel := context.WithTimeout(ctx, o.timeout)
	recs := s.handoffs(lctx, smp, l, rep)
	cancel()

	sleepCtx(context.Background(), o.warmup)
	smp.takeRest(context.Background())
	close(stopLoad)
	l.wait()
	rep.LoadSeconds = time.Since(loadStarted).Seconds()
	rep.Load = l.report()

	// The supervisor's view before the checks.
	bg := context.Background()
	if m, err := mc.scrape(bg, `handoff_handoffs_total{outcome="committed"}`, `handoff_handoffs_total{outcome="rolled_back"}`,
		"handoff_daemon_restarts_total", "handoff_daemon_start_failures_total"); err != nil {
		rep.problem("scrape /metrics at the end: %v", err)
	} else {
		rep.Handoffs.MetricCommitted = int(m[`handoff_handoffs_total{outcome="committed"}`])
		rep.Handoffs.MetricRolledBack = int(m[`handoff_handoffs_total{outcome="rolled_back"}`])
		rep.Handoffs.Restarts = int(m["handoff_daemon_restarts_total"])
		rep.Handoffs.StartFailures = int(m["handoff_daemon_start_failures_total"])
	}
	if st, err := s.sup.status(bg); err != nil {
		rep.problem("status at the end: %v", err)
	} else {
		rep.FinalPhase = st.Phase
		if st.Incumbent != nil {
			rep.FinalBuild = st.Incumbent.BuildID
		}
	}

	acked := l.ackedWrites()
	s.say("checking %d acknowledged writes on the live daemon", len(acked))
	rep.Writes.Live = checkLive(bg, httpAddr, acked, o.requestTimeout)
	stopSampling()
	<-sampled
	s.all, s.rest, s.zombieLife = smp.snapshot()

	s.say("stopping the supervisor (SIGTERM)")
	supPID := s.sup.pid()
	if err := s.sup.stop(); err != nil {
		rep.problem("%v", err)
	}
	s.sup.waitLog(5 * time.Second)
	rep.Log = s.sup.logSummary()
	if ps, err := scanProcs(supPID, s.bins.kvd[:]); err == nil {
		rep.KVD.AfterStop = ps.kvd
		rep.KVD.AfterStopPIDs = ps.kvdPIDs
	}
	s.say("checking them in the data directory (kvd --dump)")
	dctx, dcancel := context.WithTimeout(bg, time.Minute)
	data, rev, err := s.sup.dump(dctx)
	dcancel()
	if err != nil {
		rep.Writes.Disk.Error = err.Error()
	} else {
		rep.Writes.Disk = checkDisk(data, rev, acked)
	}
	rep.finish(recs, s.all, s.rest, s.zombieLife, time.Since(s.began))
	return rep
}

// handoffs performs the handoffs, one every o.every, alternating the two
// kvd binaries, with a sample at rest and a status check before each.
func (s *soak) handoffs(ctx context.Context, smp *sampler, l *loader, rep *report) []handoffRecord {
	o := s.o
	recs := make([]handoffRecord, 0, o.handoffs)
	progressEvery := max(1, o.handoffs/20)
	start := time.Now()
	committed, rolledBack := 0, 0
	var ended time.Time // the previous handoff's reply
	for i := 1; i <= o.handoffs; i++ {
		next := start.Add(time.Duration(i-1) * o.every)
		if rest := ended.Add(o.minRest); rest.After(next) {
			next = rest
		}
		if !sleepUntil(ctx, next) {
			rep.problem("stopped after %d of %d handoffs: %v", i-1, o.handoffs, context.Cause(ctx))
			break
		}
		rest := smp.takeRest(ctx)
		if st, err := s.sup.status(ctx); err != nil {
			rep.Handoffs.StatusErrors++
		} else if st.Incumbent != nil && st.Incumbent.PID != int(smp.daemonPID.Load()) {
			rep.Handoffs.PIDChanges++
			smp.daemonPID.Store(int64(st.Incumbent.PID))
		}
		bin := s.bins.kvd[i%2]
		rec := handoffRecord{N: i, Binary: bin, Want: buildIDs[i%2], Started: time.Now()}
		line, err := s.sup.ask(ctx, "handoff "+bin, replyTimeout)
		ended = time.Now()
		rec.Took = ended.Sub(rec.Started)
		if err == nil {
			rec.Reply, err = parseHandoffReply(line)
		}
		if err != nil {
			rec.Err = err.Error()
		} else if rec.Reply.Committed {
			committed++
			smp.daemonPID.Store(int64(rec.Reply.PID))
		} else {
			rolledBack++
		}
		smp.handoffs.Add(1)
		recs = append(recs, rec)
		if i%progressEvery == 0 || i == o.handoffs {
			done, failed := l.totals()
			s.say("%d/%d handoffs: %d committed, %d rolled back; %d requests, %d failed; supervisor %d fds, %.1f MiB, %d goroutines; %d kvd alive",
				i, o.handoffs, committed, rolledBack, done, failed, rest.SupFDs, mib(rest.SupRSS), rest.Goroutines, rest.KVD)
		}
	}
	return recs
}

// sleepUntil waits until t; false if ctx ended first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	return sleepCtx(ctx, d)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// commandLine is how the run was invoked, for the report.
func commandLine(args []string) string {
	return strings.TrimSpace("go run ./cmd/handoff-soak " + strings.Join(args, " "))
}
