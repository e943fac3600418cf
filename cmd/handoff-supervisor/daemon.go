package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"time"

	"github.com/handoff-go/handoff/internal/proc"
	"github.com/handoff-go/handoff/supervisor"
	"golang.org/x/sys/unix"
)

// errShuttingDown and errReexecuting tell trigger clients why they were
// cut off.
var (
	errShuttingDown = errors.New("the supervisor is shutting down")
	errReexecuting  = errors.New("the supervisor is re-executing itself; retry in a moment")
)

// daemon is the run command: it owns the Supervisor, the trigger and
// metrics servers, and one loop goroutine (loop.go) that owns all
// decisions. Handoffs and cold starts run one at a time on an op goroutine
// that reports back to the loop.
type daemon struct {
	cfg        *Config
	log        *slog.Logger
	sup        *supervisor.Supervisor
	notify     *notifier
	metrics    *metrics
	metricsSrv *metricsServer // nil without metrics_addr
	trigger    *triggerServer
	exe        string    // what SIGUSR2 executes
	started    time.Time // when the first image of this supervisor started

	requests chan request   // trigger commands for the loop
	results  chan opResult  // the op goroutine's result (one op at a time)
	stopping chan struct{}  // closed when shutdown begins
	opWG     sync.WaitGroup // the op goroutine

	// Owned by the loop goroutine.
	knownGood     string        // canonical path of the binary to restart
	pin           *pinnedBinary // that binary held open; nil if it could not be
	op            *opState
	backoff       backoff
	restart       *restartStatus // set while a restart is scheduled
	restartTimer  *time.Timer
	restartDue    bool // the restart timer fired while an op ran
	reexecPending bool
}

// hooks are seams for this package's tests, which set them in TestMain
// for a supervisor run as a process of its own; the binary leaves them
// nil.
var hooks struct {
	// adopt stands in for Supervisor.Adopt after a re-exec.
	adopt func(ctx context.Context, pid int, spec supervisor.SpawnSpec) error
	// beforeReady runs once start-up is done, before READY=1; reexec
	// tells whether this image was started by a re-exec.
	beforeReady func(reexec bool)
}

// runDaemon is the run command.
func runDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("run")
	config := fs.String("config", "", "configuration `file` (required)")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	// Catch signals before anything starts: their default action would kill
	// the supervisor and leave the daemon without one.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, handledSignals...)
	defer signal.Stop(sigs)

	inherited, err := takeReexecState()
	if err != nil {
		return err
	}
	cfg, cfgErr := loadConfigFlag(*config)
	changed := ""
	if inherited != nil {
		// The previous image checked the file before the exec. If it
		// changed since to one that does not load, or that changes what
		// lives on across the exec, dying or binding anew would orphan
		// the daemon: carry on as before.
		prev, err := inherited.config()
		switch {
		case cfgErr != nil && err != nil:
			inherited.close()
			return errors.Join(cfgErr, err)
		case cfgErr != nil:
			cfg = prev
		case err == nil:
			if changed = prev.reexecChange(cfg); changed != "" {
				cfg = prev
			}
		}
	} else if cfgErr != nil {
		return cfgErr
	}
	if inherited == nil {
		if err := cfg.preflight(); err != nil {
			return err
		}
	}
	log := newLogger(cfg.LogFormat, stderr)
	if cfgErr != nil {
		log.Error("re-exec: the configuration no longer loads; carrying on with the one the previous image ran with", "config", cfg.path, "err", cfgErr)
	}
	if changed != "" {
		log.Error("re-exec: the configuration changed since the previous image checked it; carrying on with the one it ran with", "config", cfg.path, "why", changed)
	}
	d, err := startDaemon(ctx, cfg, inherited, log, stdout, stderr)
	if err != nil {
		return err
	}
	return d.loop(ctx, sigs)
}

// newLogger logs to w in format ("text" or "json").
func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// startDaemon sets everything up and brings the daemon up: adopted after a
// re-exec, resumed from the journal after a supervisor restart, or
// cold-started. On error it leaves nothing open.
func startDaemon(ctx context.Context, cfg *Config, inherited *inheritedState, log *slog.Logger, stdout, stderr io.Writer) (_ *daemon, err error) {
	st := &startup{d: newDaemon(cfg, log), inherited: inherited}
	defer func() {
		if err != nil {
			st.undo()
		}
	}()
	files, err := st.takeInherited()
	if err != nil {
		return nil, err
	}
	if err := st.openMetrics(); err != nil {
		return nil, err
	}
	if err := st.openTrigger(); err != nil {
		return nil, err
	}
	if err := st.newSupervisor(stdout, stderr); err != nil {
		return nil, err
	}
	if err := st.bringUp(ctx, files); err != nil {
		return nil, err
	}
	st.finish()
	return st.d, nil
}

// startup is one startDaemon: the daemon being built and what to undo if
// a step fails, in reverse order.
type startup struct {
	d         *daemon
	inherited *inheritedState // nil unless re-executed
	cleanups  []func()
}

func (st *startup) onFailure(f func()) { st.cleanups = append(st.cleanups, f) }

func (st *startup) undo() {
	for i := len(st.cleanups) - 1; i >= 0; i-- {
		st.cleanups[i]()
	}
}

func newDaemon(cfg *Config, log *slog.Logger) *daemon {
	d := &daemon{
		cfg:      cfg,
		log:      log,
		metrics:  newMetrics(),
		notify:   newNotifier(log, supervisor.DefaultLiveness+5*time.Second),
		started:  time.Now(),
		requests: make(chan request),
		results:  make(chan opResult, 1),
		stopping: make(chan struct{}),
		backoff:  backoff{min: restartMinDelay, max: restartMaxDelay, stable: restartStableAfter},
	}
	var err error
	if d.exe, err = os.Executable(); err != nil {
		d.exe = "/proc/self/exe"
	}
	return d
}

// takeInherited takes over what the previous image passed (after a
// re-exec) or what systemd passed, and returns the listener files.
func (st *startup) takeInherited() (map[string]inheritedFile, error) {
	d, in := st.d, st.inherited
	files := map[string]inheritedFile{}
	if in != nil {
		st.onFailure(in.close)
		reapLeftovers(in.ChildPID, d.log)
		files = in.listeners
		d.started = in.Started
		d.backoff.cur = in.Backoff
		d.log.Info("re-executed: taking over from the previous image", "daemon_pid", in.ChildPID, "binary", in.KnownGood)
	} else {
		var err error
		if files, err = systemdFiles(); err != nil {
			return nil, err
		}
	}
	st.onFailure(func() { closeInherited(files) })
	return files, nil
}

// openMetrics binds (or takes over) metrics_addr, if set.
func (st *startup) openMetrics() error {
	d := st.d
	if d.cfg.MetricsAddr == "" {
		return nil
	}
	var ln *net.TCPListener
	if st.inherited != nil {
		ln = st.inherited.metricsListener(d.cfg.MetricsAddr)
	}
	if ln == nil {
		l, err := net.Listen("tcp", d.cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("metrics_addr: %w", err)
		}
		ln = l.(*net.TCPListener)
	}
	d.metricsSrv = newMetricsServer(ln, d.metrics, d.log)
	st.onFailure(func() { d.metricsSrv.close(context.Background()) })
	return nil
}

// openTrigger binds (or takes over) the trigger socket.
func (st *startup) openTrigger() error {
	d, cfg := st.d, st.d.cfg
	var tln *net.UnixListener
	if st.inherited != nil {
		if tln = st.inherited.triggerListener(cfg.TriggerSocket); tln != nil {
			// allowed_uids may have changed with the re-exec; failing now
			// would leave the daemon without a supervisor.
			if err := setTriggerACL(cfg.TriggerSocket, cfg.TriggerSocket, cfg.AllowedUIDs); err != nil {
				d.log.Error("re-exec: the trigger socket keeps its previous access", "err", err)
			}
		}
	}
	if tln == nil {
		var err error
		if tln, err = listenTrigger(cfg.TriggerSocket, cfg.AllowedUIDs); err != nil {
			return err
		}
	}
	self := uint32(os.Getuid())
	d.trigger = newTriggerServer(tln, cfg.TriggerSocket, peerPolicy{self: self, allowed: cfg.AllowedUIDs}, d.handleTrigger, d.log)
	st.onFailure(func() { d.trigger.close(errShuttingDown) })
	return nil
}

// newSupervisor creates the library's Supervisor, its events feeding
// systemd notifications and metrics.
func (st *startup) newSupervisor(stdout, stderr io.Writer) error {
	d := st.d
	scfg := supervisor.Config{
		ControlSocket: d.cfg.ControlSocket,
		Journal:       d.cfg.Journal,
		Logger:        d.log,
		OnEvent: func(e supervisor.Event) {
			d.notify.onEvent(e)
			d.metrics.onEvent(e)
		},
	}
	scfg.Stdout, _ = stdout.(*os.File)
	scfg.Stderr, _ = stderr.(*os.File)
	var err error
	if d.sup, err = supervisor.New(scfg); err != nil {
		return err
	}
	st.onFailure(func() { d.sup.Close() })
	return nil
}

// bringUp hands the listeners to the Supervisor and gets a daemon serving:
// adopted, resumed from the journal, or cold-started.
func (st *startup) bringUp(ctx context.Context, files map[string]inheritedFile) error {
	d, cfg := st.d, st.d.cfg
	// Listeners passed to us (systemd, re-exec) first; the journal may then
	// recover the rest from a live daemon; whatever is still missing is
	// bound here.
	ls, err := openListeners(cfg, nil, files, false, d.log)
	if err != nil {
		return err
	}
	if err := handOver(d.sup, ls, d.log); err != nil {
		return err
	}
	st.onFailure(func() { d.pin.close() })
	serving := false
	if st.inherited != nil {
		serving = st.adopt(ctx)
	} else if cfg.Journal != "" {
		serving = d.resume(ctx)
	}
	if d.knownGood == "" {
		if d.knownGood, err = canonicalBinary(cfg.Binary); err != nil {
			return err
		}
	}
	if ls, err = openListeners(cfg, d.sup.Status().Listeners, nil, true, d.log); err != nil {
		return err
	}
	if err := handOver(d.sup, ls, d.log); err != nil {
		return err
	}
	switch {
	case !serving && st.inherited != nil:
		// After a re-exec a failed start must not end the supervisor (its
		// pid is the service's): the loop starts the daemon, with backoff.
		d.scheduleRestart(0, "no daemon was running at the re-exec")
	case !serving:
		pin, pinErr := openPin(d.knownGood)
		// The library logs the start ("handoff: daemon started").
		if _, err := d.sup.ColdStart(ctx, cfg.spawnSpec(d.knownGood)); err != nil {
			pin.close()
			return fmt.Errorf("start the daemon: %w", err)
		}
		d.setKnownGood(d.knownGood, pin, pinErr)
	}
	if d.pin == nil && serving {
		pin, pinErr := pinRunning(d.knownGood, d.sup.Status().IncumbentPID)
		d.setKnownGood(d.knownGood, pin, pinErr)
	}
	return nil
}

// adopt takes over the daemon the previous image ran, if any, and reports
// whether it serves.
func (st *startup) adopt(ctx context.Context) bool {
	d, in := st.d, st.inherited
	d.knownGood = in.KnownGood
	d.pin = in.pinned()
	pid := in.ChildPID
	if pid == 0 {
		return false
	}
	adopt := d.sup.Adopt
	if hooks.adopt != nil {
		adopt = hooks.adopt
	}
	err := adopt(ctx, pid, d.cfg.spawnSpec(d.knownGood))
	switch {
	case err == nil:
		return true
	case d.sup.Status().IncumbentPID == pid:
		// Adopted and watched; only its journal record failed.
		d.log.Error("re-exec: adopted the daemon, but could not record it", "pid", pid, "err", err)
		return true
	default:
		// Unwatched, it would keep its lock (a new daemon could not
		// start) and stay a zombie once it exits.
		d.log.Error("re-exec: could not adopt the daemon; killing it to start it anew", "pid", pid, "err", err)
		killAndReap(pid, killAfterStop, d.log)
		return false
	}
}

// finish closes what the previous image passed and nobody took, starts
// the trigger and metrics servers and tells systemd the service is ready.
func (st *startup) finish() {
	d, in := st.d, st.inherited
	if in != nil {
		if in.metrics != nil {
			d.log.Info("re-exec: metrics_addr is no longer set; closing the metrics listener", "addr", in.MetricsAddr)
		}
		in.close() // whatever was passed and not taken
	}
	if l, err := currentFDLimit(); err != nil {
		d.log.Warn("cannot check RLIMIT_NOFILE", "err", err)
	} else {
		if advice := l.advice(); advice != "" {
			d.log.Warn(lowFDLimitMsg, "soft_limit", l.soft, "hard_limit", l.hard, "open", l.open, "handoff_opens", handoffFDs, "advice", advice)
		}
		d.trigger.limitConns(l.triggerConns())
	}
	d.trigger.start()
	if d.metricsSrv != nil {
		d.metricsSrv.start()
		d.log.Info("serving metrics", "addr", d.metricsSrv.ln.Addr().String())
	}
	if hooks.beforeReady != nil {
		hooks.beforeReady(in != nil)
	}
	status := d.sup.Status()
	d.notify.ready(fmt.Sprintf("serving: pid %d, build %s", status.IncumbentPID, status.IncumbentBuildID))
	d.log.Info("supervisor ready", "daemon_pid", status.IncumbentPID, "build_id", status.IncumbentBuildID, "trigger_socket", d.cfg.TriggerSocket)
}

// resume recovers a daemon that outlived a previous supervisor, from the
// journal. It reports whether a daemon now serves under this supervisor.
func (d *daemon) resume(ctx context.Context) bool {
	err := d.sup.ResumeFromJournal(ctx)
	st := d.sup.Status()
	switch {
	case err == nil && st.IncumbentPID != 0:
		if b, cerr := canonicalBinary(st.IncumbentBinary); cerr == nil {
			d.knownGood = b
		}
		d.log.Info("resumed the daemon left by a previous supervisor", "pid", st.IncumbentPID, "binary", st.IncumbentBinary)
		return true
	case err == nil, errors.Is(err, supervisor.ErrNoIncumbent):
		return false
	default:
		d.log.Error("could not resume from the journal; starting the daemon anew", "journal", d.cfg.Journal, "err", err)
		return false
	}
}

// setKnownGood makes path the known-good binary, held open by p (see
// openPin and pinRunning); err is why p could not be opened.
func (d *daemon) setKnownGood(path string, p *pinnedBinary, err error) {
	d.knownGood = path
	d.pin.close()
	d.pin = p
	if err != nil {
		d.log.Error("cannot hold the known-good binary open: a restart will start whatever file is at its path then", "binary", path, "err", err)
		return
	}
	d.log.Info("known-good binary", "binary", path, "inode", p.ino)
}

// killAfterStop bounds the wait for a handoff to return once its daemons
// have been killed at the end of the stop bound; stopSlack is what systemd
// is told to allow beyond deadline_secs for that and for reaping.
const (
	killAfterStop = 10 * time.Second
	stopSlack     = 20 * time.Second
)

// shutdown stops the daemon and releases everything, within one bound,
// deadline_secs from the signal: a running handoff is cancelled (it rolls
// back), then the daemon is asked to stop (it drains itself). When the
// bound passes, or at a second signal, every daemon is killed. It runs on
// the loop goroutine, which exits after it.
func (d *daemon) shutdown(why string, sigs <-chan os.Signal) error {
	close(d.stopping)
	bound := d.cfg.deadline()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	d.log.Info("stopping", "reason", why, "bound", bound)
	d.notify.stopping("stopping: "+why, bound+stopSlack)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case s := <-sigs:
			d.log.Warn("second signal while stopping: killing the daemon", "signal", s.String())
			cancel()
		case <-done:
		}
	}()
	defer func() {
		close(done)
		wg.Wait()
	}()

	d.cancelRestart()
	d.trigger.close(errShuttingDown)
	if d.op != nil {
		d.op.cancel()
		select {
		case r := <-d.results:
			d.finishOp(r)
		case <-ctx.Done():
			d.killAll("the stop bound passed during a " + d.op.kind.String())
			select {
			case r := <-d.results:
				d.finishOp(r)
			case <-time.After(killAfterStop):
				d.log.Error("the running operation did not return after its daemons were killed; exiting anyway")
			}
		}
	}
	if d.op == nil {
		d.opWG.Wait()
	}

	err := d.sup.Stop(ctx)
	if err != nil {
		d.log.Error("the daemon did not stop in time and was killed", "err", err)
	} else {
		d.log.Info("daemon stopped")
	}
	if d.metricsSrv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), time.Second)
		d.metricsSrv.close(sctx)
		scancel()
	}
	d.pin.close()
	// Close waits for a running operation; one that did not return after
	// its daemons were killed must not keep the supervisor from exiting.
	closed := make(chan error, 1)
	go func() { closed <- d.sup.Close() }()
	t := time.NewTimer(killAfterStop)
	defer t.Stop()
	select {
	case err := <-closed:
		return err
	case <-t.C:
		d.log.Error("closing the supervisor waits for an operation that does not return; exiting without it", "waited", killAfterStop)
		return errors.New("stop: an operation did not return; exited without it")
	}
}

// killAll kills the serving daemon and a successor, with their process
// groups.
func (d *daemon) killAll(why string) {
	st := d.sup.Status()
	for _, pid := range []int{st.IncumbentPID, st.SuccessorPID} {
		if pid > 0 {
			d.log.Warn("killing", "pid", pid, "why", why)
			proc.KillGroup(pid, unix.SIGKILL)
		}
	}
}
