package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/handoff-go/handoff"
)

// The test binary doubles as the supervised daemon: TestMain runs
// testDaemon when HS_TEST_ROLE=daemon (the supervisor passes it through
// the config's env). The daemon answers every connection on its listener
// "web" with one line, "<build> <pid>", and closes it. Its build id is the
// base name it was started as, so copies of the test binary named
// daemon-v1, daemon-v2 are distinct builds; a build whose name holds
// "bad" exits as a successor before its Hello, which must roll back, and
// one whose name holds "dies" exits as a successor right after its commit.
//
// Every daemon appends "start <build> <pid>" to the file named by
// HS_TEST_LOG first thing, so a test sees each process the supervisor
// started, even one that exits at once; one stopped by SIGTERM appends
// "stopped <build> <pid>" once it has drained. A cold-started daemon
// finding a FIFO at HS_TEST_GATE waits for one byte (or EOF) on it before
// it serves: the test holds a restart there while it dials. Likewise a
// FIFO at HS_TEST_DRAIN_GATE holds every drain (logged "draining" first)
// and one at HS_TEST_LINGER holds a committed incumbent before it exits
// (logged "linger"). A daemon finding a file at HS_TEST_IGNORE_TERM
// ignores SIGTERM.
//
// A daemon started through a descriptor (/proc/<pid>/fd/<n>: the
// supervisor's pinned known-good binary) takes its build id from the path
// it runs, /proc/self/exe, whose file may have been replaced since.
//
// When the daemon holds a listener "admin", it answers there with the
// LISTEN_* variables left in its environment after DetectRole and the
// names of its listeners: "env=<k=v,...> names=<a,b>".
const (
	envTestRole       = "HS_TEST_ROLE"
	envTestData       = "HS_TEST_DATA"
	envTestControl    = "HS_TEST_CONTROL"
	envTestLog        = "HS_TEST_LOG"
	envTestGate       = "HS_TEST_GATE"
	envTestDrainGate  = "HS_TEST_DRAIN_GATE"
	envTestLinger     = "HS_TEST_LINGER"
	envTestIgnoreTerm = "HS_TEST_IGNORE_TERM"
)

func dlog(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "testdaemon[%d]: "+format+"\n", append([]any{os.Getpid()}, args...)...)
}

func testDaemon() int {
	build := filepath.Base(os.Args[0])
	if strings.HasPrefix(os.Args[0], "/proc/") {
		exe, err := os.Readlink("/proc/self/exe")
		if err != nil {
			dlog("read /proc/self/exe: %v", err)
			return 2
		}
		build = filepath.Base(strings.TrimSuffix(exe, " (deleted)"))
	}
	dir, sock := os.Getenv(envTestData), os.Getenv(envTestControl)
	if err := logEvent("start", build); err != nil {
		dlog("log the start: %v", err)
		return 2
	}
	role, err := handoff.DetectRole()
	if err != nil {
		dlog("detect role: %v", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	if p := os.Getenv(envTestIgnoreTerm); p != "" {
		if _, err := os.Stat(p); err == nil {
			stop()
			ctx, stop = context.WithCancel(context.Background())
			signal.Ignore(syscall.SIGTERM)
			dlog("ignoring SIGTERM")
		}
	}
	defer stop()
	d := &lineServer{build: build}
	var inc *handoff.Incumbent
	switch r := role.(type) {
	case *handoff.ColdStart:
		passGate(os.Getenv(envTestGate))
		lock, err := handoff.AcquireDataDirLockOrBreakStale(dir)
		if err != nil {
			dlog("lock: %v", err)
			return 2
		}
		d.il = r.Inherited
		if inc, err = handoff.BindColdStart(sock, lock); err != nil {
			dlog("bind: %v", err)
			return 2
		}
		inc.SetBuildID(build)
	case *handoff.Successor:
		if strings.Contains(build, "bad") {
			dlog("a bad build: exiting before hello")
			return 3
		}
		h, err := r.Handshake(build)
		if err != nil {
			dlog("handshake: %v", err)
			return 2
		}
		b, err := h.WaitForBegin(ctx)
		if err != nil {
			dlog("wait for begin: %v", err)
			return 4
		}
		lock, err := handoff.AcquireDataDirLock(dir)
		if err != nil {
			dlog("lock after begin: %v", err)
			return 2
		}
		d.il = b.Listeners()
		inc, err = b.AnnounceAndBind(handoff.ReadinessSnapshot{ListeningOn: d.il.Names(), HealthzOK: true}, sock, lock)
		if err != nil {
			dlog("announce: %v", err)
			return 5
		}
		if strings.Contains(build, "dies") {
			dlog("a build that dies: exiting right after the commit")
			return 6
		}
	}
	if err := d.start(); err != nil {
		dlog("serve: %v", err)
		return 2
	}
	err = inc.Serve(ctx, d)
	switch {
	case err == nil: // committed: drained already
		inc.Close()
		if p := os.Getenv(envTestLinger); fifoAt(p) {
			if err := logEvent("linger", build); err != nil {
				dlog("log the linger: %v", err)
			}
			passGate(p)
		}
		return 0
	case ctx.Err() != nil: // SIGTERM: drain and exit
		d.Drain(context.Background())
		inc.Lock().Release()
		inc.Close()
		if err := logEvent("stopped", build); err != nil {
			dlog("log the stop: %v", err)
			return 2
		}
		return 0
	default:
		dlog("serve: %v", err)
		return 6
	}
}

// logEvent appends "<event> <build> <pid>" to the file named by
// HS_TEST_LOG (nothing without one) in one write.
func logEvent(event, build string) error {
	path := os.Getenv(envTestLog)
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%s %s %d\n", event, build, os.Getpid())
	return errors.Join(err, f.Close())
}

// fifoAt reports whether a FIFO is at path.
func fifoAt(path string) bool {
	if path == "" {
		return false
	}
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().Type() == os.ModeNamedPipe
}

// passGate waits for one byte or EOF on the FIFO at path, if there is one.
func passGate(path string) {
	if !fifoAt(path) {
		return
	}
	g, err := os.Open(path)
	if err != nil {
		return
	}
	defer g.Close()
	dlog("waiting at the gate %s", path)
	g.Read(make([]byte, 1))
}

// lineServer is the test daemon's Drainable.
type lineServer struct {
	build string
	il    *handoff.InheritedListeners
	mu    sync.Mutex
	ln    net.Listener
	wg    sync.WaitGroup
}

func (s *lineServer) start() error {
	ln, err := s.il.Listener("web")
	if err != nil {
		return err
	}
	if admin, err := s.il.Listener("admin"); err == nil {
		var env []string
		for _, kv := range os.Environ() {
			if strings.HasPrefix(kv, "LISTEN_") {
				env = append(env, kv)
			}
		}
		line := fmt.Sprintf("env=%s names=%s\n", strings.Join(env, ","), strings.Join(s.il.Names(), ","))
		go func() {
			for {
				c, err := admin.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, line)
				c.Close()
			}
		}()
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %d\n", s.build, os.Getpid())
			c.Close()
		}
	}()
	return nil
}

func (s *lineServer) Drain(ctx context.Context) (handoff.DrainReport, error) {
	s.mu.Lock()
	ln := s.ln
	s.ln = nil
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	s.wg.Wait()
	if p := os.Getenv(envTestDrainGate); fifoAt(p) {
		if err := logEvent("draining", s.build); err != nil {
			dlog("log the drain: %v", err)
		}
		passGate(p)
	}
	return handoff.DrainReport{AcceptClosed: true}, nil
}

func (s *lineServer) Seal(ctx context.Context) (handoff.SealReport, error) {
	return handoff.SealReport{}, nil
}

func (s *lineServer) ResumeAfterAbort(ctx context.Context) error {
	s.mu.Lock()
	running := s.ln != nil
	s.mu.Unlock()
	if running {
		return nil
	}
	if err := s.start(); err != nil && !errors.Is(err, handoff.ErrNotInherited) {
		return err
	}
	return nil
}
