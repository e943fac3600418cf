package main

import (
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/handoff-go/handoff/internal/proc"
	"golang.org/x/sys/unix"
)

// After a re-exec the new image inherits every child of the old one, but
// only the serving daemon is adopted by the Supervisor, which waits for
// it. Any other child (an old incumbent still finishing after a commit,
// say) would stay a zombie once it exits: reapLeftovers waits for each of
// them by pid, so it never takes the exit of a process the Supervisor
// waits for, nor of one it starts later.

// reapLeftovers waits, each on a goroutine of its own that ends with the
// child, for every child of this process but keep (the adopted daemon).
// It must run before this image starts any process.
func reapLeftovers(keep int, log *slog.Logger) {
	pids, err := proc.Children(os.Getpid())
	if err != nil {
		log.Error("re-exec: cannot list the children left by the previous image", "err", err)
		return
	}
	for _, pid := range pids {
		if pid != keep {
			log.Info("re-exec: will reap a child left by the previous image", "pid", pid)
			reap(pid, log)
		}
	}
}

// reap waits for the child pid on a goroutine of its own and returns a
// channel closed once it is gone.
func reap(pid int, log *slog.Logger) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ws unix.WaitStatus
		for {
			_, err := unix.Wait4(pid, &ws, 0, nil)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				log.Warn("re-exec: could not reap a child left by the previous image", "pid", pid, "err", err)
				return
			}
			log.Info("reaped a child left by the previous image", "pid", pid, "status", waitDescription(ws))
			return
		}
	}()
	return done
}

// killAndReap kills the child pid with its process group and waits, at
// most within, until it is reaped.
func killAndReap(pid int, within time.Duration, log *slog.Logger) {
	proc.KillGroup(pid, unix.SIGKILL)
	t := time.NewTimer(within)
	defer t.Stop()
	select {
	case <-reap(pid, log):
	case <-t.C:
		log.Error("a killed child was not reaped in time; carrying on", "pid", pid, "within", within)
	}
}

func waitDescription(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return "exit status " + strconv.Itoa(ws.ExitStatus())
}
