package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

// envTestSupervisor makes the test binary run main: the supervisor as a
// process of its own, for what cannot run in-process (a re-exec).
const envTestSupervisor = "HS_TEST_SUPERVISOR"

// envTestListenPID makes that supervisor set LISTEN_PID to its own pid.
const envTestListenPID = "HS_TEST_LISTEN_PID"

func TestMain(m *testing.M) {
	// The daemon check comes first: daemons inherit the supervisor's
	// environment.
	if os.Getenv(envTestRole) == "daemon" {
		os.Exit(testDaemon())
	}
	if os.Getenv(envTestSupervisor) != "" {
		if os.Getenv(envTestListenPID) != "" {
			// What systemd does between fork and exec.
			os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
		}
		main()
	}
	testscript.Main(m, map[string]func(){"handoff-supervisor": main})
}

// installBuild places a copy of the test binary at dir/name: a distinct
// build of the test daemon.
func installBuild(t *testing.T, dir, name string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, name)
	if err := os.Link(exe, dst); err == nil {
		return dst
	}
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, src); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// fixture is a supervisor run in-process on a config in a fresh directory.
type fixture struct {
	dir, cfg, web, metrics string
	v1, v2, bad            string
	notes                  func() string // next sd_notify message
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := shortDir(t)
	f := &fixture{dir: dir, web: filepath.Join(dir, "web.sock"), metrics: freePort(t), notes: notifySocket(t)}
	bin := filepath.Join(dir, "bin")
	data := filepath.Join(dir, "data")
	for _, d := range []string{bin, data} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f.v1, f.v2, f.bad = installBuild(t, bin, "daemon-v1"), installBuild(t, bin, "daemon-v2"), installBuild(t, bin, "daemon-bad")
	control := filepath.Join(dir, "control.sock")
	f.cfg = filepath.Join(dir, "handoff.toml")
	doc := fmt.Sprintf(`control_socket   = %q
trigger_socket   = %q
binary           = %q
allowed_binaries = [%q, %q]
env              = [%q, %q, %q]
drain_grace_secs = 5
deadline_secs    = 20
journal          = %q
metrics_addr     = %q

[[listeners]]
name = "web"
addr = "unix:%s"
`, control, filepath.Join(dir, "trigger.sock"), f.v1, f.v2, f.bad,
		envTestRole+"=daemon", envTestData+"="+data, envTestControl+"="+control,
		filepath.Join(dir, "journal"), f.metrics, f.web)
	if err := os.WriteFile(f.cfg, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// start runs the supervisor until the test ends and waits for READY=1.
func (f *fixture) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"--config", f.cfg}, os.Stdout, tWriter{t}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the supervisor did not stop")
		}
	})
	f.await(t, "READY=1")
}

// await reads sd_notify messages until one contains want.
func (f *fixture) await(t *testing.T, want ...string) string {
	t.Helper()
	for {
		msg := f.notes()
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(msg, w)
		}
		if ok {
			return msg
		}
	}
}

// hello connects to the daemon's listener and returns its line.
func (f *fixture) hello(t *testing.T) (build string, pid int) {
	t.Helper()
	c, err := net.Dial("unix", f.web)
	if err != nil {
		t.Fatalf("dial the daemon: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from the daemon: %v", err)
	}
	if _, err := fmt.Sscanf(line, "%s %d", &build, &pid); err != nil {
		t.Fatalf("daemon said %q", line)
	}
	return build, pid
}

func (f *fixture) status(t *testing.T) statusReport {
	t.Helper()
	out, stderr, code := runCmd(t, "status", "--config", f.cfg, "--json")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	var r statusReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("status --json: %v: %q", err, out)
	}
	return r
}

// TestEndToEnd drives a supervisor (in-process) and real daemon processes
// through commits, a rollback, a refused binary, SIGHUP, a crash of the
// daemon and the stop, checking sd_notify, status and metrics on the way.
func TestEndToEnd(t *testing.T) {
	f := newFixture(t)
	f.start(t)

	build, pid1 := f.hello(t)
	if build != "daemon-v1" {
		t.Fatalf("serving %s, want daemon-v1", build)
	}

	// upgrade --binary v2 commits.
	out, stderr, code := runCmd(t, "upgrade", "--config", f.cfg, "--binary", f.v2)
	if code != 0 || !strings.HasPrefix(out, "ok: ") || !strings.Contains(out, "committed=true") {
		t.Fatalf("upgrade to v2: exit %d, %q %q", code, out, stderr)
	}
	f.await(t, "RELOADING=1", "MONOTONIC_USEC=")
	f.await(t, "READY=1", "committed")
	build, pid2 := f.hello(t)
	if build != "daemon-v2" || pid2 == pid1 {
		t.Fatalf("after the commit: %s pid %d (was pid %d)", build, pid2, pid1)
	}
	st := f.status(t)
	if st.Incumbent == nil || st.Incumbent.PID != pid2 || st.Incumbent.BuildID != "daemon-v2" || st.KnownGood != f.v2 {
		t.Fatalf("status after the commit: %+v", st)
	}

	// A successor that dies rolls back; v2 keeps serving.
	out, _, code = runCmd(t, "upgrade", "--config", f.cfg, "--binary", f.bad)
	if code != 1 || !strings.Contains(out, "committed=false") {
		t.Fatalf("upgrade to the bad build: exit %d, %q", code, out)
	}
	f.await(t, "READY=1", "rolled back")
	if build, pid := f.hello(t); build != "daemon-v2" || pid != pid2 {
		t.Fatalf("after the rollback: %s pid %d, want daemon-v2 pid %d", build, pid, pid2)
	}

	// A binary outside the allowlist is refused and nothing is spawned.
	out, _, code = runCmd(t, "upgrade", "--config", f.cfg, "--binary", "/bin/sh")
	if code != 1 || !strings.HasPrefix(out, "err: ") || !strings.Contains(out, "/bin/sh") {
		t.Fatalf("upgrade to /bin/sh: exit %d, %q", code, out)
	}
	if st := f.status(t); st.Handoffs != 2 {
		t.Fatalf("a refused binary counted as a handoff: %d", st.Handoffs)
	}

	// Metrics moved for the commit and for the rollback.
	m := scrape(t, f.metrics)
	wantSamples(t, m, map[string]string{
		`handoff_handoffs_total{outcome="committed"}`:   "1",
		`handoff_handoffs_total{outcome="rolled_back"}`: "1",
		`handoff_rollbacks_total`:                       "1",
	})

	// SIGHUP hands off to the configured binary (v1).
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	f.await(t, "READY=1", "committed")
	build, pid3 := f.hello(t)
	if build != "daemon-v1" || pid3 == pid2 {
		t.Fatalf("after SIGHUP: %s pid %d", build, pid3)
	}

	// SIGKILL of the daemon: a connection made while it is down waits in
	// the accept queue and is served by the restarted known-good binary.
	if err := syscall.Kill(pid3, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	f.await(t, "daemon pid", "exited")
	build, pid4 := f.hello(t)
	if build != "daemon-v1" || pid4 == pid3 {
		t.Fatalf("after the crash: %s pid %d", build, pid4)
	}
	f.await(t, "READY=1", "restarted")
	m = scrape(t, f.metrics)
	wantSamples(t, m, map[string]string{`handoff_daemon_restarts_total`: "1"})
}

// TestReexec: SIGUSR2 re-executes the supervisor (a process of its own
// here) in place: same pid, the daemon adopted rather than restarted, the
// listeners kept (a client dialling in a loop sees no failure, and a
// handoff afterwards passes them on), then SIGTERM stops everything with
// exit status 0.
func TestReexec(t *testing.T) {
	f := newFixture(t)
	cmd, exited, waitErr := f.startSupervisor(t, nil)
	_, daemonPID := f.hello(t)

	stop := make(chan struct{})
	type dialResult struct {
		ok   int
		errs []error
	}
	dials := make(chan dialResult, 1)
	go func() {
		var r dialResult
		defer func() { dials <- r }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, err := net.DialTimeout("unix", f.web, 5*time.Second)
			if err != nil {
				r.errs = append(r.errs, err)
				continue
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
				r.errs = append(r.errs, err)
			} else {
				r.ok++
			}
			c.Close()
		}
	}()

	if err := cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	f.await(t, "RELOADING=1", "re-executing")
	f.await(t, "READY=1")
	st := f.status(t)
	close(stop)
	r := <-dials
	if len(r.errs) > 0 || r.ok == 0 {
		t.Fatalf("clients across the re-exec: %d served, errors %v", r.ok, r.errs)
	}
	if st.Supervisor.PID != cmd.Process.Pid {
		t.Fatalf("supervisor pid %d after the re-exec, want %d", st.Supervisor.PID, cmd.Process.Pid)
	}
	if st.Incumbent == nil || st.Incumbent.PID != daemonPID {
		t.Fatalf("daemon after the re-exec: %+v, want pid %d", st.Incumbent, daemonPID)
	}

	out, _, code := runCmd(t, "upgrade", "--config", f.cfg, "--binary", f.v2)
	if code != 0 {
		t.Fatalf("upgrade after the re-exec: exit %d, %q", code, out)
	}
	build, pid2 := f.hello(t)
	if build != "daemon-v2" {
		t.Fatalf("after the upgrade: %s", build)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	f.await(t, "STOPPING=1")
	select {
	case <-exited:
		if *waitErr != nil {
			t.Errorf("supervisor exit: %v", *waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the supervisor did not exit after SIGTERM")
	}
	if err := syscall.Kill(pid2, 0); err != syscall.ESRCH {
		t.Errorf("daemon pid %d still there after the supervisor stopped: %v", pid2, err)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "trigger.sock")); !os.IsNotExist(err) {
		t.Errorf("trigger socket left behind: %v", err)
	}
	if _, err := os.Stat(f.web); err != nil {
		t.Errorf("the listener's socket file was removed: %v", err)
	}
}

// TestSecondUserCannotTrigger runs upgrade as another user (nobody, via
// setpriv): the 0600 trigger socket keeps it out, and with the file mode
// opened up the SO_PEERCRED check still does; nothing is spawned.
func TestSecondUserCannotTrigger(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("running a command as another user needs root")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not found: cannot run a command as another user")
	}
	f := newFixture(t)
	if err := os.Chmod(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f.start(t)
	_, pid := f.hello(t)
	asNobody := func() (string, error) {
		cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", f.v1, "upgrade", "--config", f.cfg)
		cmd.Env = append(os.Environ(), envTestSupervisor+"=1")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	out, err := asNobody()
	if err == nil || !strings.Contains(out, "permission denied") {
		t.Fatalf("nobody through the 0600 socket: %v, %q", err, out)
	}

	if err := os.Chmod(filepath.Join(f.dir, "trigger.sock"), 0o666); err != nil {
		t.Fatal(err)
	}
	out, err = asNobody()
	if err == nil || !strings.Contains(out, "err: permission denied") {
		t.Fatalf("nobody past the file mode: %v, %q", err, out)
	}
	if st := f.status(t); st.Handoffs != 0 || st.Incumbent == nil || st.Incumbent.PID != pid {
		t.Fatalf("after the refused triggers: %+v", st)
	}
}

// startSupervisor runs the test binary as a supervisor process with extra
// environment and descriptors (fd 3, 4, ...), and waits for READY=1.
func (f *fixture) startSupervisor(t *testing.T, env []string, files ...*os.File) (*exec.Cmd, <-chan struct{}, *error) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "--config", f.cfg)
	cmd.Env = append(append(os.Environ(), envTestSupervisor+"=1"), env...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	f.await(t, "READY=1")
	return cmd, exited, &waitErr
}

// TestSocketActivation passes the listener as systemd does (fd 3,
// LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID): the supervisor uses it instead
// of binding (binding would fail: the path is live), and the daemon serves
// on it.
func TestSocketActivation(t *testing.T) {
	f := newFixture(t)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: f.web, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	cmd, exited, waitErr := f.startSupervisor(t, []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=web", envTestListenPID + "=1"}, lf)
	if build, _ := f.hello(t); build != "daemon-v1" {
		t.Fatalf("serving %s", build)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if *waitErr != nil {
			t.Fatalf("supervisor exit: %v", *waitErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the supervisor did not exit after SIGTERM")
	}
}
