package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SIGUSR2 re-executes the supervisor in place: same PID (so systemd and
// the daemon, still our child, see no change), same listening sockets
// (their descriptors survive the exec, so none is closed at any moment),
// and the new image adopts the running daemon instead of starting one.
// The old image hands over through two environment variables, which the
// new image reads and clears at once:
const (
	// envReexecFDs lists the daemon's listeners as name=fd,name=fd,...
	// (listener names cannot hold ',' or '=').
	envReexecFDs = "HANDOFF_SUPERVISOR_FDS"
	// envReexecState is a JSON reexecState.
	envReexecState = "HANDOFF_SUPERVISOR_REEXEC"
)

// reexecState is what a re-executed supervisor needs besides listeners.
type reexecState struct {
	// ChildPID is the serving daemon (still our child), 0 if none ran.
	ChildPID int `json:"child_pid"`
	// KnownGood is the canonical path of the known-good binary, and
	// PinFD the descriptor holding that file open (-1 when none is).
	KnownGood string `json:"known_good"`
	PinFD     int    `json:"pin_fd"`
	// TriggerFD and MetricsFD are the trigger and metrics listeners, -1
	// when absent.
	TriggerFD   int    `json:"trigger_fd"`
	TriggerPath string `json:"trigger_path"`
	// TriggerIno is the inode of the socket file at TriggerPath: the new
	// image reuses the passed socket only while that file is still its.
	TriggerIno  uint64 `json:"trigger_ino"`
	MetricsFD   int    `json:"metrics_fd"`
	MetricsAddr string `json:"metrics_addr"`
	// Started is when the first image of this supervisor started.
	Started time.Time `json:"started"`
	// Backoff is the restart backoff's current delay.
	Backoff time.Duration `json:"backoff"`
	// ConfigPath and ConfigDoc are the configuration the previous image
	// ran with: the new image falls back to it if the file fails to load.
	ConfigPath string `json:"config_path"`
	ConfigDoc  string `json:"config_doc"`
}

// inheritedState is what takeReexecState recovered.
type inheritedState struct {
	reexecState
	listeners map[string]inheritedFile
	trigger   *os.File // nil if not passed
	metrics   *os.File // nil if not passed
	pin       *os.File // the known-good binary; nil if not passed
}

// takeReexecState reads and clears the re-exec environment. It returns
// nil when this process was not started by a re-exec. Every descriptor it
// adopts is made close-on-exec again, so no daemon inherits it.
func takeReexecState() (*inheritedState, error) {
	fdList, hasFDs := os.LookupEnv(envReexecFDs)
	raw, hasState := os.LookupEnv(envReexecState)
	os.Unsetenv(envReexecFDs)
	os.Unsetenv(envReexecState)
	if !hasState {
		if hasFDs {
			return nil, fmt.Errorf("%s is set without %s", envReexecFDs, envReexecState)
		}
		return nil, nil
	}
	st := &inheritedState{listeners: map[string]inheritedFile{}}
	if err := json.Unmarshal([]byte(raw), &st.reexecState); err != nil {
		return nil, fmt.Errorf("%s: %w", envReexecState, err)
	}
	var errs []error
	adopt := func(what string, fd int) *os.File {
		if fd < 3 {
			// None passed (-1), or a field an older image did not set (0).
			return nil
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			errs = append(errs, fmt.Errorf("re-exec: %s at fd %d: %w", what, fd, err))
			return nil
		}
		unix.CloseOnExec(fd)
		return os.NewFile(uintptr(fd), what)
	}
	if fdList != "" {
		for _, item := range strings.Split(fdList, ",") {
			name, num, ok := strings.Cut(item, "=")
			fd, err := strconv.Atoi(num)
			if !ok || err != nil || fd < 3 {
				errs = append(errs, fmt.Errorf("%s: bad entry %q", envReexecFDs, item))
				continue
			}
			if f := adopt("listener "+name, fd); f != nil {
				st.listeners[name] = inheritedFile{f, "re-exec"}
			}
		}
	}
	st.trigger = adopt("trigger socket", st.TriggerFD)
	st.metrics = adopt("metrics listener", st.MetricsFD)
	st.pin = adopt("known-good binary", st.PinFD)
	if len(errs) > 0 {
		st.close()
		return nil, errors.Join(errs...)
	}
	return st, nil
}

// close closes every descriptor still held.
func (st *inheritedState) close() {
	closeInherited(st.listeners)
	for _, f := range []*os.File{st.trigger, st.metrics, st.pin} {
		if f != nil {
			f.Close()
		}
	}
}

// triggerListener returns the passed trigger socket if it still is the
// one at path, nil otherwise. It takes st.trigger.
func (st *inheritedState) triggerListener(path string) *net.UnixListener {
	f := st.trigger
	st.trigger = nil
	if f == nil {
		return nil
	}
	defer f.Close()
	if st.TriggerPath != path || st.TriggerIno == 0 || st.TriggerIno != socketInode(path) {
		return nil
	}
	ln, err := net.FileListener(f)
	if err != nil {
		return nil
	}
	ul, ok := ln.(*net.UnixListener)
	if !ok {
		ln.Close()
		return nil
	}
	ul.SetUnlinkOnClose(false)
	return ul
}

// pinned returns the passed known-good binary, nil if none was passed or
// it cannot be used. It takes st.pin.
func (st *inheritedState) pinned() *pinnedBinary {
	f := st.pin
	st.pin = nil
	if f == nil {
		return nil
	}
	p, err := newPinned(st.KnownGood, f)
	if err != nil {
		f.Close()
		return nil
	}
	return p
}

// config returns the configuration the previous image ran with.
func (st *inheritedState) config() (*Config, error) {
	if st.ConfigDoc == "" {
		return nil, errors.New("the previous image passed no configuration")
	}
	return parseConfig(st.ConfigPath, []byte(st.ConfigDoc))
}

// metricsListener returns the passed metrics listener if it was bound for
// addr, nil otherwise. It takes st.metrics.
func (st *inheritedState) metricsListener(addr string) *net.TCPListener {
	f := st.metrics
	st.metrics = nil
	if f == nil {
		return nil
	}
	defer f.Close()
	if st.MetricsAddr != addr {
		return nil
	}
	ln, err := net.FileListener(f)
	if err != nil {
		return nil
	}
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		ln.Close()
		return nil
	}
	return tl
}

// controlFD runs fn on the raw descriptor of c without Fd(), which would
// make a shared socket blocking.
func controlFD(c syscall.Conn, fn func(fd int) error) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var fnErr error
	if err := rc.Control(func(fd uintptr) { fnErr = fn(int(fd)) }); err != nil {
		return err
	}
	return fnErr
}

// dupInheritable returns a duplicate of c's descriptor that survives exec
// (no close-on-exec), numbered 3 or above.
func dupInheritable(c syscall.Conn) (int, error) {
	nfd := -1
	err := controlFD(c, func(fd int) error {
		var err error
		nfd, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD, 3)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("dup for re-exec: %w", err)
	}
	return nfd, nil
}

// reexecEnv is the environment for the new image: ours without stale
// re-exec variables, plus the hand-over.
func reexecEnv(fds string, st reexecState) ([]string, error) {
	raw, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("re-exec state: %w", err)
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k != envReexecFDs && k != envReexecState {
			env = append(env, kv)
		}
	}
	return append(env, envReexecFDs+"="+fds, envReexecState+"="+string(raw)), nil
}

// reexecCheck refuses a re-exec that the new image could not carry
// through: a configuration file that no longer loads (the new image reads
// it), or one that changes what lives on across the exec (listeners,
// control socket), or a missing supervisor or daemon binary, or paths the
// preflight refuses.
func (d *daemon) reexecCheck() error {
	if d.exe != "/proc/self/exe" {
		if _, err := canonicalBinary(d.exe); err != nil {
			return fmt.Errorf("the supervisor binary: %w", err)
		}
	}
	cfg, err := loadConfig(d.cfg.path)
	if err != nil {
		return fmt.Errorf("the configuration no longer loads: %w", err)
	}
	if err := cfg.preflight(); err != nil {
		return err
	}
	if why := d.cfg.reexecChange(cfg); why != "" {
		return errors.New(why)
	}
	return nil
}

// reexecNotifyBound is how long systemd should give a re-exec.
const reexecNotifyBound = 30 * time.Second

// reexec replaces this image with d.exe, passing the listeners, the
// trigger and metrics sockets and the daemon. It returns only on failure,
// after resuming service in this image.
func (d *daemon) reexec() error {
	if err := d.reexecCheck(); err != nil {
		st := d.sup.Status()
		d.notify.reloading("re-exec refused: "+err.Error(), 0)
		d.notify.ready(fmt.Sprintf("serving: pid %d, build %s (re-exec refused: %s)", st.IncumbentPID, st.IncumbentBuildID, err))
		return fmt.Errorf("re-exec refused: %w", err)
	}
	d.notify.reloading("re-executing the supervisor", reexecNotifyBound)
	d.trigger.pause(errReexecuting)
	if d.metricsSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		d.metricsSrv.pause(ctx)
		cancel()
	}
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	err := func() error {
		files, err := d.sup.ListenerFiles()
		if err != nil {
			return err
		}
		defer func() {
			for _, nf := range files {
				nf.File.Close()
			}
		}()
		var list []string
		for _, nf := range files {
			fd, err := dupInheritable(nf.File)
			if err != nil {
				return fmt.Errorf("listener %q: %w", nf.Name, err)
			}
			fds = append(fds, fd)
			list = append(list, nf.Name+"="+strconv.Itoa(fd))
		}
		st := d.sup.Status()
		state := reexecState{
			ChildPID: st.IncumbentPID, KnownGood: d.knownGood, Started: d.started,
			TriggerFD: -1, TriggerPath: d.trigger.path, TriggerIno: d.trigger.ino, MetricsFD: -1, PinFD: -1,
			Backoff: d.backoff.cur, ConfigPath: d.cfg.path, ConfigDoc: string(d.cfg.doc),
		}
		if d.pin != nil {
			if state.PinFD, err = dupInheritable(d.pin.f); err != nil {
				return fmt.Errorf("known-good binary: %w", err)
			}
			fds = append(fds, state.PinFD)
		}
		if state.TriggerFD, err = dupInheritable(d.trigger.ln); err != nil {
			return fmt.Errorf("trigger socket: %w", err)
		}
		fds = append(fds, state.TriggerFD)
		if d.metricsSrv != nil {
			if state.MetricsFD, err = dupInheritable(d.metricsSrv.ln); err != nil {
				return fmt.Errorf("metrics listener: %w", err)
			}
			fds = append(fds, state.MetricsFD)
			state.MetricsAddr = d.cfg.MetricsAddr
		}
		env, err := reexecEnv(strings.Join(list, ","), state)
		if err != nil {
			return err
		}
		d.log.Info("re-executing", "exe", d.exe, "daemon_pid", state.ChildPID, "listeners", list)
		err = syscall.Exec(d.exe, os.Args, env)
		if errors.Is(err, syscall.ENOENT) && d.exe != "/proc/self/exe" {
			d.log.Warn("the supervisor binary is gone; re-executing the running image", "exe", d.exe)
			err = syscall.Exec("/proc/self/exe", os.Args, env)
		}
		return fmt.Errorf("exec %s: %w", d.exe, err)
	}()
	d.trigger.start()
	if d.metricsSrv != nil {
		d.metricsSrv.start()
	}
	st := d.sup.Status()
	d.notify.ready(fmt.Sprintf("serving: pid %d, build %s (re-exec failed)", st.IncumbentPID, st.IncumbentBuildID))
	return err
}
