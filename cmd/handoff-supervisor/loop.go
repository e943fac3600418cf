package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/supervisor"
)

// handledSignals: SIGHUP hands off to the configured binary, SIGUSR2
// re-executes the supervisor, SIGTERM and SIGINT stop.
var handledSignals = []os.Signal{syscall.SIGHUP, syscall.SIGUSR2, syscall.SIGTERM, syscall.SIGINT}

// Restart backoff after the daemon exits outside a handoff: the first
// restart comes after restartMinDelay, each quick failure doubles the
// delay up to restartMaxDelay, and a daemon that ran restartStableAfter
// starts the sequence over.
const (
	restartMinDelay    = 100 * time.Millisecond
	restartMaxDelay    = 10 * time.Second
	restartStableAfter = 30 * time.Second
)

// backoff is a capped exponential delay that resets after a stable run.
type backoff struct {
	min, max, stable time.Duration
	cur              time.Duration
}

// next returns the delay before the next start of a process that ran for
// ran before it exited (0 for a failed start).
func (b *backoff) next(ran time.Duration) time.Duration {
	if b.cur == 0 || ran >= b.stable {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	return b.cur
}

// request is a trigger command for the loop; reply is buffered and gets
// exactly one line.
type request struct {
	cmd   command
	reply chan string
}

type opKind int

const (
	opHandoff opKind = iota + 1
	opColdStart
)

func (k opKind) String() string {
	if k == opHandoff {
		return "handoff"
	}
	return "start of the daemon"
}

// opState is the running op, owned by the loop.
type opState struct {
	kind   opKind
	cancel context.CancelFunc
}

// opResult is what the op goroutine reports.
type opResult struct {
	kind    opKind
	binary  string
	why     string      // what asked for it, for logs
	reply   chan string // nil when a signal or the loop asked
	outcome supervisor.Outcome
	pid     int
	err     error
	// pin is binary opened right before the spawn, for the loop to keep
	// if the daemon proves good (or close); pinErr is why it is nil.
	pin    *pinnedBinary
	pinErr error
}

// loop owns every decision until a stop signal or ctx ends it.
func (d *daemon) loop(ctx context.Context, sigs <-chan os.Signal) error {
	for {
		select {
		case <-ctx.Done():
			return d.shutdown("context: "+ctx.Err().Error(), sigs)
		case s := <-sigs:
			switch s {
			case syscall.SIGHUP:
				d.log.Info("SIGHUP: handing off to the configured binary")
				if msg := d.startHandoff("", nil, "SIGHUP"); msg != "" {
					d.log.Warn("SIGHUP ignored", "why", msg)
					// systemctl reload waits for RELOADING=1 and READY=1.
					d.notify.reloading("handoff refused: "+msg, 0)
					d.notify.ready("handoff refused: " + msg)
				}
			case syscall.SIGUSR2:
				d.log.Info("SIGUSR2: re-executing the supervisor", "exe", d.exe)
				d.reexecPending = true
				d.maybeReexec()
			default:
				return d.shutdown(s.String(), sigs)
			}
		case req := <-d.requests:
			d.handleRequest(req)
		case res := <-d.results:
			d.finishOp(res)
			d.afterOp()
		case ex := <-d.sup.IncumbentExits():
			d.incumbentExited(ex)
		case <-d.restartC():
			d.restartTimer = nil
			if d.op != nil {
				d.restartDue = true
				continue
			}
			d.startColdStart("restart")
		}
	}
}

// handleTrigger is the trigger server's handler: it passes cmd to the loop
// and waits for the reply.
func (d *daemon) handleTrigger(ctx context.Context, cmd command) string {
	req := request{cmd: cmd, reply: make(chan string, 1)}
	select {
	case d.requests <- req:
	case <-ctx.Done():
		return errReply(context.Cause(ctx))
	case <-d.stopping:
		return errReply(errShuttingDown)
	}
	select {
	case r := <-req.reply:
		return r
	case <-ctx.Done():
		return errReply(context.Cause(ctx))
	}
}

func (d *daemon) handleRequest(req request) {
	switch req.cmd.verb {
	case "status":
		raw, err := json.Marshal(d.statusReport())
		if err != nil {
			req.reply <- errReply(err)
			return
		}
		req.reply <- "ok: " + string(raw)
	case "handoff":
		if msg := d.startHandoff(req.cmd.binary, req.reply, "trigger"); msg != "" {
			d.log.Warn("handoff refused", "binary", req.cmd.binary, "from", "trigger", "why", msg)
			req.reply <- "err: " + msg
		}
	default:
		req.reply <- "err: unknown command " + req.cmd.verb
	}
}

func (d *daemon) statusReport() statusReport {
	ls := loopStatus{pid: os.Getpid(), started: d.started, knownGood: d.knownGood, restart: d.restart, reexec: d.reexecPending}
	ls.replaced = d.pin != nil && d.pin.replaced()
	return buildStatus(d.sup.Status(), ls, time.Now())
}

// startHandoff starts a handoff to binary (empty: the configured one).
// It returns why it cannot (for the caller to log), or "" once the
// handoff runs; reply then gets the outcome.
func (d *daemon) startHandoff(binary string, reply chan string, why string) string {
	switch {
	case d.reexecPending:
		return errReexecuting.Error()
	case d.op != nil && d.op.kind == opHandoff:
		return supervisor.ErrHandoffInProgress.Error()
	case d.op != nil:
		return "the daemon is being started; retry when it serves"
	case d.restart != nil:
		return fmt.Sprintf("no daemon is serving (%s; restart at %s)", d.restart.Reason, d.restart.At.Format(time.RFC3339Nano))
	}
	path, err := d.cfg.allowedBinary(binary)
	if err != nil {
		return err.Error()
	}
	spec := d.cfg.spawnSpec(path)
	d.notify.reloading(fmt.Sprintf("handoff to %s (%s)", path, why), d.notify.extend)
	d.startOp(opHandoff, path, why, reply, func(ctx context.Context, r *opResult) {
		r.pin, r.pinErr = openPin(path)
		r.outcome, r.err = d.sup.PerformHandoff(ctx, spec)
	})
	return ""
}

// startColdStart starts the known-good binary.
func (d *daemon) startColdStart(why string) {
	d.restart = nil
	d.restartDue = false
	exe := d.knownGood
	if d.pin != nil {
		exe = d.pin.exe()
	}
	if exe != d.knownGood {
		d.log.Warn("starting the daemon: the file at the known-good path was replaced since it proved good, so the pinned known-good binary is started instead",
			"binary", d.knownGood, "exe", exe, "inode", d.pin.ino, "why", why)
	} else {
		d.log.Info("starting the daemon", "binary", d.knownGood, "exe", exe, "why", why)
	}
	spec := d.cfg.spawnSpec(exe)
	pinned := d.pin != nil
	d.startOp(opColdStart, d.knownGood, why, nil, func(ctx context.Context, r *opResult) {
		if !pinned {
			r.pin, r.pinErr = openPin(spec.Binary)
		}
		p, err := d.sup.ColdStart(ctx, spec)
		r.pid = p
		r.err = err
	})
}

// startOp runs fn on the op goroutine; its result comes back to the loop
// on d.results.
func (d *daemon) startOp(kind opKind, binary, why string, reply chan string, fn func(context.Context, *opResult)) {
	ctx, cancel := context.WithCancel(context.Background())
	d.op = &opState{kind: kind, cancel: cancel}
	d.opWG.Add(1)
	go func() {
		defer d.opWG.Done()
		r := opResult{kind: kind, binary: binary, why: why, reply: reply}
		fn(ctx, &r)
		d.results <- r
	}()
}

// finishOp records an op's result and answers whoever asked. The library
// logs how a handoff ended and that a daemon started: not logged again
// here.
func (d *daemon) finishOp(r opResult) {
	d.op.cancel()
	d.op = nil
	defer func() { r.pin.close() }() // unless kept
	answer := func(line string) {
		if r.reply != nil {
			r.reply <- line
		}
	}
	switch r.kind {
	case opHandoff:
		o := r.outcome
		if r.err != nil && o.ID == "" {
			d.log.Warn("handoff did not start", "binary", r.binary, "from", r.why, "err", r.err)
			st := d.sup.Status()
			d.notify.ready(fmt.Sprintf("serving: pid %d, build %s (handoff did not start: %v)", st.IncumbentPID, st.IncumbentBuildID, r.err))
			answer(errReply(r.err))
			return
		}
		if r.err != nil {
			o = withResumeFailure(o, r.err)
		}
		if o.Committed {
			d.setKnownGood(r.binary, r.pin, r.pinErr)
			r.pin = nil
		}
		d.notify.ready(outcomeStatus(o, d.sup.Status()))
		answer(handoffReply(o))
	case opColdStart:
		if r.err != nil {
			d.metrics.startFails.Inc()
			delay := d.backoff.next(0)
			d.log.Error("the daemon did not start; retrying", "binary", r.binary, "err", r.err, "in", delay)
			d.scheduleRestart(delay, "the last start failed: "+r.err.Error())
			return
		}
		d.metrics.restarts.Inc()
		if r.pin != nil || r.pinErr != nil { // nothing was pinned before the start
			d.setKnownGood(d.knownGood, r.pin, r.pinErr)
			r.pin = nil
		}
		st := d.sup.Status()
		d.notify.ready(fmt.Sprintf("serving: pid %d, build %s (restarted)", r.pid, st.IncumbentBuildID))
	}
}

// withResumeFailure adds to a rolled-back outcome's reason that the
// incumbent did not resume (err; the library logged both): it exits, and
// the loop restarts the known-good binary. Whoever asked is told so.
func withResumeFailure(o supervisor.Outcome, err error) supervisor.Outcome {
	o.AbortReason += "; the old daemon did not resume (" + err.Error() + ") and will be restarted"
	return o
}

// afterOp starts what waited for the op to end.
func (d *daemon) afterOp() {
	if d.restartDue {
		d.startColdStart("restart")
		return
	}
	d.maybeReexec()
}

// incumbentExited schedules a restart of the known-good binary. The
// library has logged the exit.
func (d *daemon) incumbentExited(ex supervisor.IncumbentExit) {
	delay := d.backoff.next(ex.Running)
	why := fmt.Sprintf("daemon pid %d (%s) %s", ex.PID, ex.Binary, exitDescription(&ex))
	if d.op != nil && d.op.kind == opHandoff {
		// A successor that died right after its commit: the handoff's
		// result, which makes it the known-good binary, is still on its
		// way. The restart's own log line names what it starts.
		d.log.Info("restart of the known-good binary scheduled, once the handoff in progress has ended", "in", delay, "after_pid", ex.PID)
	} else {
		d.log.Info("restart of the known-good binary scheduled", "binary", d.knownGood, "in", delay, "after_pid", ex.PID)
	}
	d.scheduleRestart(delay, why)
}

func (d *daemon) scheduleRestart(delay time.Duration, reason string) {
	d.cancelRestart()
	d.restart = &restartStatus{At: time.Now().Add(delay), Reason: reason}
	d.restartTimer = time.NewTimer(delay)
}

func (d *daemon) cancelRestart() {
	if d.restartTimer != nil {
		d.restartTimer.Stop()
		d.restartTimer = nil
	}
}

// restartC is the restart timer's channel, nil (never ready) without one.
func (d *daemon) restartC() <-chan time.Time {
	if d.restartTimer == nil {
		return nil
	}
	return d.restartTimer.C
}

// maybeReexec re-executes when one is pending and no op runs.
func (d *daemon) maybeReexec() {
	if !d.reexecPending || d.op != nil {
		return
	}
	d.reexecPending = false
	if err := d.reexec(); err != nil {
		d.log.Error("re-exec failed; carrying on in this image", "exe", d.exe, "err", err)
	}
}
