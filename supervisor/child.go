package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdutil"
	"github.com/handoff-go/handoff/internal/proc"
	"github.com/handoff-go/handoff/internal/wire"
)

// child is a daemon process the supervisor started or adopted. One waiter
// goroutine per child reaps it and closes done.
type child struct {
	pid     int
	proc    *os.Process
	spec    SpawnSpec
	started time.Time
	buildID string

	done  chan struct{}
	state *os.ProcessState // set before done closes (nil if not our child)
	stop  chan struct{}    // closed by the supervisor to abandon a non-child wait
	once  sync.Once
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// kill sends sig to the child's process group (spawned children lead their
// own group) and to the child itself.
func (c *child) kill(sig syscall.Signal) {
	if c.exited() {
		return
	}
	proc.KillGroup(c.pid, sig)
}

// killAndReap kills the child and waits (bounded) for the waiter to reap it.
func (c *child) killAndReap(grace time.Duration) error {
	if grace > 0 {
		select {
		case <-c.done:
			return nil
		case <-time.After(grace):
		}
	}
	c.kill(syscall.SIGKILL)
	select {
	case <-c.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("handoff: pid %d did not die after SIGKILL", c.pid)
	}
}

// watch starts the waiter goroutine. onExit runs after done is closed.
func (c *child) watch(onExit func(*child)) {
	go func() {
		st, err := c.proc.Wait()
		if err != nil && errors.Is(err, syscall.ECHILD) {
			// Not our child (adopted after a supervisor restart): watch it
			// through a pidfd instead. The failed Wait left the Process
			// its own pidfd; release it now rather than at garbage
			// collection (an adopted child's Process never leaves the
			// supervisor, and nothing uses it after this).
			c.proc.Release()
			waitPidfd(c.pid, c.stop)
		}
		c.state = st
		close(c.done)
		onExit(c)
	}()
}

// waitPidfd blocks until pid exits or stop is closed.
func waitPidfd(pid int, stop <-chan struct{}) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return // already gone
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-stop:
			f.SetReadDeadline(time.Now())
		case <-done:
		}
	}()
	rc.Read(func(fd uintptr) bool {
		n, _ := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
		return n > 0
	})
}

// spawnEnv is the supervisor's environment without handoff, activation and
// notify variables, with extra ("K=V") added or replacing the same keys.
func spawnEnv(extra ...string) []string {
	override := map[string]bool{}
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		override[k] = true
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case override[k], strings.HasPrefix(k, "HANDOFF_SUPERVISOR_"):
			continue
		}
		switch k {
		case wire.EnvListenFDs, wire.EnvListenFDNames, wire.EnvListenPID, wire.EnvRole, wire.EnvSockFD, wire.EnvControlSocket, wire.EnvConnsFD, "NOTIFY_SOCKET":
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// spawn starts spec's binary with the listeners at fd 3.. and, if sockFD >=
// 0, the control socketpair end after them.
func (s *Supervisor) spawn(spec SpawnSpec, names []string, fds []int, sockFD int) (*child, error) {
	return s.spawnWith(spec, names, fds, sockFD, -1)
}

// spawnWith is spawn with, if connsFD >= 0, the socket on which held
// connections follow (HANDOFF_CONNS_FD) after everything else.
func (s *Supervisor) spawnWith(spec SpawnSpec, names []string, fds []int, sockFD, connsFD int) (*child, error) {
	path := spec.Binary
	if !strings.Contains(path, "/") {
		p, err := exec.LookPath(path)
		if err != nil {
			return nil, fmt.Errorf("handoff: binary %q: %w", spec.Binary, err)
		}
		path = p
	}
	extra := append([]int(nil), fds...)
	// The control socket's path goes with every daemon, so that it is
	// configured once, here (a daemon's explicit setting still wins).
	env := append(spawnEnv(spec.Env...), wire.EnvControlSocket+"="+s.cfg.ControlSocket)
	if len(fds) > 0 {
		env = append(env, wire.EnvListenFDs+"="+strconv.Itoa(len(fds)), wire.EnvListenFDNames+"="+strings.Join(names, ":"))
	}
	if sockFD >= 0 {
		env = append(env, wire.EnvRole+"="+wire.RoleSuccessorEnv, wire.EnvSockFD+"="+strconv.Itoa(wire.FirstListenFD+len(fds)))
		extra = append(extra, sockFD)
	}
	if connsFD >= 0 {
		env = append(env, connsEnv(wire.FirstListenFD+len(extra)))
		extra = append(extra, connsFD)
	}
	// The configured outputs are duplicated through SyscallConn: Fd would
	// switch a pipe or socket that others share to blocking mode.
	stdio := [3]int{-1, 1, 2}
	for i, f := range []*os.File{1: s.cfg.Stdout, 2: s.cfg.Stderr} {
		if f == nil {
			continue
		}
		fd, err := fdutil.Dup(f)
		if err != nil {
			return nil, fmt.Errorf("handoff: daemon output %d: %w", i, err)
		}
		defer unix.Close(fd)
		stdio[i] = fd
	}
	p, err := fdutil.Spawn(fdutil.SpawnAttr{
		Path:    path,
		Argv:    append([]string{spec.Binary}, spec.Args...),
		Env:     env,
		Stdio:   stdio,
		Extra:   extra,
		Setpgid: true,
	})
	if err != nil {
		return nil, err
	}
	return &child{pid: p.Pid, proc: p, spec: spec, started: time.Now(), done: make(chan struct{}), stop: make(chan struct{})}, nil
}

// killOrphan kills a process that is not (or no longer) our child, and
// its process group.
func killOrphan(pid int) {
	proc.KillGroup(pid, unix.SIGKILL)
}
