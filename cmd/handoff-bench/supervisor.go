package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/internal/proc"
	"github.com/handoff-go/handoff/supervisor"
	"golang.org/x/sys/unix"
)

// The supervisor process answers one JSON line per command line on stdin:
// "handoff", "stats" or "stop". It first sends supReady.
const (
	cmdHandoff = "handoff"
	// Planned aborts, kvd only: a successor that exits in its warm-up
	// (--fail-prepare) or after Begin, holding the lock (--fail-before-ready).
	cmdAbortWarmUp     = "abort-warm-up"
	cmdAbortAfterBegin = "abort-after-begin"
	cmdStats           = "stats"
	cmdStop            = "stop"

	handoffTimeout = 2 * time.Minute // bounds one PerformHandoff (its own deadline is 60 s)
	stopTimeout    = 30 * time.Second
)

// supReady is the supervisor's first line.
type supReady struct {
	Addr  string `json:"addr"`
	PID   int    `json:"pid"` // the cold-started daemon
	Error string `json:"error,omitempty"`
}

// supOutcome answers "handoff".
type supOutcome struct {
	Committed   bool                    `json:"committed"`
	AbortReason string                  `json:"abort_reason,omitempty"`
	OldPID      int                     `json:"old_pid"` // serving daemon before
	PID         int                     `json:"pid"`     // serving daemon afterwards
	Phases      supervisor.PhaseTimings `json:"phases"`
	PassedConns int                     `json:"passed_conns"` // established connections the incumbent passed
	Error       string                  `json:"error,omitempty"`
}

// supStats answers "stats" and "stop".
type supStats struct {
	Supervisor procStats `json:"supervisor"`
	Daemon     procStats `json:"daemon"`
	Error      string    `json:"error,omitempty"`
}

// spawnConfig tells the supervisor process to start another daemon than
// this binary's own (the kvd mode starts kvd). It travels as JSON in
// envSpawn.
type spawnConfig struct {
	Binary   string   `json:"binary"`
	Args     []string `json:"args"`
	Listener string   `json:"listener"` // the name the daemon takes its listener by
	Env      []string `json:"env,omitempty"`
}

// runSupervisor holds a loopback TCP listener in an embedded
// supervisor.Supervisor, cold-starts the daemon (this binary, or what
// spawn, if not empty, says) and performs a handoff for each "handoff" line
// on in. End of input or "stop" stops the daemon and returns.
func runSupervisor(ctx context.Context, dir, spawn string, in io.Reader, out io.Writer) error {
	enc := json.NewEncoder(out)
	s, addr, pid, spec, err := startSupervised(ctx, dir, spawn)
	if err != nil {
		return errors.Join(err, enc.Encode(supReady{Error: err.Error()}))
	}
	defer s.Close()
	stop := func() error {
		sctx, cancel := context.WithTimeout(ctx, stopTimeout)
		defer cancel()
		return s.Stop(sctx)
	}
	if err := enc.Encode(supReady{Addr: addr, PID: pid}); err != nil {
		return errors.Join(err, stop())
	}
	var replaced exitWatch
	defer replaced.close()
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		var reply any
		switch sc.Text() {
		case cmdHandoff:
			reply = handoffOnce(ctx, s, spec, &replaced)
		case cmdAbortWarmUp:
			reply = handoffOnce(ctx, s, withArgs(spec, "--fail-prepare"), &replaced)
		case cmdAbortAfterBegin:
			reply = handoffOnce(ctx, s, withArgs(spec, "--fail-before-ready"), &replaced)
		case cmdStats:
			reply = stats(s)
		case cmdStop:
			// The replaced daemons exit by themselves after their
			// commit; wait for them too, so their timings are written.
			err := errors.Join(stop(), replaced.wait(stopTimeout))
			st := stats(s)
			if err != nil {
				st.Error = err.Error()
			}
			return errors.Join(err, enc.Encode(st))
		default:
			reply = supStats{Error: fmt.Sprintf("unknown command %q", sc.Text())}
		}
		if err := enc.Encode(reply); err != nil {
			return errors.Join(err, stop())
		}
	}
	return errors.Join(sc.Err(), stop())
}

// startSupervised binds the listener, builds the supervisor and cold-starts
// the daemon.
func startSupervised(ctx context.Context, dir, spawn string) (*supervisor.Supervisor, string, int, supervisor.SpawnSpec, error) {
	var spec supervisor.SpawnSpec
	if dir == "" {
		return nil, "", 0, spec, fmt.Errorf("%s is not set", envDir)
	}
	name := listenerName
	if spawn != "" {
		var sc spawnConfig
		if err := json.Unmarshal([]byte(spawn), &sc); err != nil {
			return nil, "", 0, spec, fmt.Errorf("%s: %w", envSpawn, err)
		}
		spec, name = supervisor.SpawnSpec{Binary: sc.Binary, Args: sc.Args, Env: sc.Env}, sc.Listener
	} else {
		self, err := os.Executable()
		if err != nil {
			return nil, "", 0, spec, fmt.Errorf("find own binary: %w", err)
		}
		spec = supervisor.SpawnSpec{Binary: self, Env: []string{envRole + "=" + roleDaemon, envDir + "=" + dir}}
	}
	s, err := supervisor.New(supervisor.Config{
		ControlSocket: filepath.Join(dir, controlName),
		Logger:        slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Stdout:        os.Stderr, // stdout is the bench's reply channel
	})
	if err != nil {
		return nil, "", 0, spec, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.Close()
		return nil, "", 0, spec, fmt.Errorf("listen: %w", err)
	}
	addr := ln.Addr().String()
	err = s.AddListener(name, ln)
	ln.Close() // the supervisor keeps its own duplicate
	if err != nil {
		s.Close()
		return nil, "", 0, spec, err
	}
	p, err := s.ColdStart(ctx, spec)
	if err != nil {
		s.Close()
		return nil, "", 0, spec, err
	}
	return s, addr, p, spec, nil
}

// withArgs is spec with more arguments for the successor.
func withArgs(spec supervisor.SpawnSpec, args ...string) supervisor.SpawnSpec {
	spec.Args = append(slices.Clip(spec.Args), args...)
	return spec
}

func handoffOnce(ctx context.Context, s *supervisor.Supervisor, spec supervisor.SpawnSpec, replaced *exitWatch) supOutcome {
	hctx, cancel := context.WithTimeout(ctx, handoffTimeout)
	defer cancel()
	old := s.Status().IncumbentPID
	// A pidfd taken while the daemon serves refers to that process even
	// after the library has reaped it.
	pidfd, perr := unix.PidfdOpen(old, 0)
	o, err := s.PerformHandoff(hctx, spec)
	r := supOutcome{Committed: o.Committed, AbortReason: o.AbortReason, Phases: o.Phases, OldPID: old, PID: s.Status().IncumbentPID, PassedConns: o.PassedConns}
	err = errors.Join(err, perr)
	if perr == nil {
		if o.Committed {
			replaced.fds = append(replaced.fds, pidfd)
		} else {
			unix.Close(pidfd)
		}
	}
	if err != nil {
		r.Error = err.Error()
	}
	return r
}

// exitWatch holds pidfds of daemons that were handed off and exit by
// themselves.
type exitWatch struct{ fds []int }

// wait returns once every watched process has exited, or fails after timeout.
func (w *exitWatch) wait(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for len(w.fds) > 0 {
		ms := int(time.Until(deadline).Milliseconds())
		if ms <= 0 {
			return fmt.Errorf("%d replaced daemons did not exit within %v", len(w.fds), timeout)
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(w.fds[0]), Events: unix.POLLIN}}, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll pidfd: %w", err)
		}
		if n > 0 { // readable: the process has exited
			unix.Close(w.fds[0])
			w.fds = w.fds[1:]
		}
	}
	return nil
}

func (w *exitWatch) close() {
	for _, fd := range w.fds {
		unix.Close(fd)
	}
	w.fds = nil
}

func stats(s *supervisor.Supervisor) supStats {
	var st supStats
	var errs []error
	var err error
	st.Supervisor, err = readProcStats(os.Getpid())
	errs = append(errs, err)
	if pid := s.Status().IncumbentPID; pid > 0 {
		st.Daemon, err = readProcStats(pid)
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		st.Error = err.Error()
	}
	return st
}

// supervisorProc is the supervisor process, seen from the bench.
type supervisorProc struct {
	cmd       *exec.Cmd
	in        *os.File // write end of its stdin
	out       *os.File // read end of its stdout
	br        *bufio.Reader
	done      chan struct{} // closed when Wait returned
	err       error         // Wait's result, set before done closes
	daemonPID int           // last known serving daemon, killed if the supervisor must be
}

// startSupervisorProc starts the supervisor process and waits for its
// daemon to serve. spawn, if not nil, says which daemon it starts.
func startSupervisorProc(self, dir string, spawn *spawnConfig, logf *os.File) (*supervisorProc, supReady, error) {
	env := append(os.Environ(), envRole+"="+roleSupervisor, envDir+"="+dir)
	if spawn != nil {
		b, err := json.Marshal(spawn)
		if err != nil {
			return nil, supReady{}, fmt.Errorf("spawn config: %w", err)
		}
		env = append(env, envSpawn+"="+string(b))
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, supReady{}, fmt.Errorf("pipe: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, supReady{}, fmt.Errorf("pipe: %w", err)
	}
	cmd := exec.Command(self)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, supReady{}, fmt.Errorf("start supervisor: %w", err)
	}
	p := &supervisorProc{cmd: cmd, in: inW, out: outR, br: bufio.NewReader(outR), done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	var r supReady
	err = p.recv(&r, supervisor.DefaultStartTimeout+10*time.Second)
	if err == nil && r.Error != "" {
		err = errors.New(r.Error)
	}
	if err != nil {
		return nil, r, errors.Join(fmt.Errorf("supervisor: %w", err), p.close())
	}
	p.daemonPID = r.PID
	return p, r, nil
}

// call sends cmd and decodes the reply into v.
func (p *supervisorProc) call(cmd string, v any, timeout time.Duration) error {
	if _, err := io.WriteString(p.in, cmd+"\n"); err != nil {
		return fmt.Errorf("supervisor %s: %w", cmd, err)
	}
	if err := p.recv(v, timeout); err != nil {
		return fmt.Errorf("supervisor %s: %w", cmd, err)
	}
	return nil
}

func (p *supervisorProc) recv(v any, timeout time.Duration) error {
	if err := p.out.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	line, err := p.br.ReadBytes('\n')
	if err != nil {
		return fmt.Errorf("no reply: %w", err)
	}
	if err := json.Unmarshal(line, v); err != nil {
		return fmt.Errorf("reply %q: %w", line, err)
	}
	return nil
}

// handoff asks for one handoff.
func (p *supervisorProc) handoff() (supOutcome, error) {
	var o supOutcome
	if err := p.call(cmdHandoff, &o, handoffTimeout+10*time.Second); err != nil {
		return o, err
	}
	if o.PID > 0 {
		p.daemonPID = o.PID
	}
	if o.Error != "" {
		return o, fmt.Errorf("handoff: %s", o.Error)
	}
	return o, nil
}

// abort asks for a handoff to a successor that fails as cmd says; it must
// roll back with the same daemon serving.
func (p *supervisorProc) abort(cmd string) (supOutcome, error) {
	var o supOutcome
	if err := p.call(cmd, &o, handoffTimeout+10*time.Second); err != nil {
		return o, err
	}
	switch {
	case o.Error != "":
		return o, fmt.Errorf("%s: %s", cmd, o.Error)
	case o.Committed:
		return o, fmt.Errorf("%s: committed, want a rollback", cmd)
	case o.PID != o.OldPID:
		return o, fmt.Errorf("%s: pid %d serves after the rollback, want %d", cmd, o.PID, o.OldPID)
	}
	return o, nil
}

// stats asks for the supervisor's and the daemon's process figures.
func (p *supervisorProc) stats() (supStats, error) {
	var st supStats
	if err := p.call(cmdStats, &st, 10*time.Second); err != nil {
		return st, err
	}
	if st.Error != "" {
		return st, fmt.Errorf("stats: %s", st.Error)
	}
	return st, nil
}

// stop stops the daemon and the supervisor and returns the supervisor's
// last figures.
func (p *supervisorProc) stop() (supStats, error) {
	var st supStats
	err := p.call(cmdStop, &st, stopTimeout+10*time.Second)
	if err == nil && st.Error != "" {
		err = errors.New(st.Error)
	}
	return st, errors.Join(err, p.close())
}

// close ends the supervisor's input (it stops the daemon and exits) and
// reaps it; if it does not exit in time, it and its daemon are killed.
func (p *supervisorProc) close() error {
	p.in.Close()
	defer p.out.Close()
	t := time.NewTimer(stopTimeout + 10*time.Second)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.cmd.Process.Kill()
		if p.daemonPID > 0 {
			// The daemon outlives its supervisor by design; this
			// one must not outlive the bench.
			proc.KillGroup(p.daemonPID, unix.SIGKILL)
		}
		<-p.done
		return fmt.Errorf("supervisor pid %d did not exit in time: killed", p.cmd.Process.Pid)
	}
	if p.err != nil {
		return fmt.Errorf("supervisor pid %d: %w", p.cmd.Process.Pid, p.err)
	}
	return nil
}
