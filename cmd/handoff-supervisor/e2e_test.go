package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
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

	"github.com/handoff-go/handoff/internal/proc"
	"github.com/handoff-go/handoff/internal/testutil"
	"github.com/handoff-go/handoff/supervisor"
	"github.com/rogpeppe/go-internal/testscript"
)

// envTestSupervisor makes the test binary run main: the supervisor as a
// process of its own, for what cannot run in-process (a re-exec).
const envTestSupervisor = "HS_TEST_SUPERVISOR"

// envTestListenPID makes that supervisor set LISTEN_PID to its own pid.
const envTestListenPID = "HS_TEST_LISTEN_PID"

// envTestBreakOnReexec names a config file that a re-executed supervisor
// spoils (appends an unknown key to, or what envTestBreakWith holds)
// before main reads it: a file changed between the old image's check and
// the new image's load.
const (
	envTestBreakOnReexec = "HS_TEST_BREAK_ON_REEXEC"
	envTestBreakWith     = "HS_TEST_BREAK_WITH"
)

// envTestFailAdopt makes a re-executed supervisor fail to adopt the
// daemon it was passed, which is left running.
const envTestFailAdopt = "HS_TEST_FAIL_ADOPT"

// envTestReexecGate names a FIFO at which a re-executed supervisor waits,
// once it has taken over and before READY=1, for one byte (or EOF).
const envTestReexecGate = "HS_TEST_REEXEC_GATE"

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
		if p := os.Getenv(envTestBreakOnReexec); p != "" && os.Getenv(envReexecState) != "" {
			if f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0); err == nil {
				text, ok := os.LookupEnv(envTestBreakWith)
				if !ok {
					text = "bogus_key = 1"
				}
				f.WriteString("\n" + text + "\n")
				f.Close()
			}
		}
		if os.Getenv(envTestFailAdopt) != "" {
			hooks.adopt = func(context.Context, int, supervisor.SpawnSpec) error {
				return errors.New("adoption refused by the test")
			}
		}
		if p := os.Getenv(envTestReexecGate); p != "" {
			hooks.beforeReady = func(reexec bool) {
				if reexec {
					passGate(p)
				}
			}
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

// fixture is a configuration in a fresh directory for a supervisor run as
// a process of its own: the test binary re-executed with
// HS_TEST_SUPERVISOR set, whose TestMain calls main as the real binary
// does. The client commands (upgrade, status) run the same way.
type fixture struct {
	dir, cfg, web, metrics string
	daemonLog, gate        string
	drainGate, linger      string // FIFOs: see testDaemon
	ignoreTerm             string // a file there: daemons ignore SIGTERM
	v1, v2, bad, rogue     string
	dies                   string        // a build that exits right after its commit
	notes                  func() string // next sd_notify message
	// lastNotes returns the messages already queued, for after the
	// supervisor exited.
	lastNotes func() []string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := shortDir(t)
	f := &fixture{
		dir: dir, web: filepath.Join(dir, "web.sock"), metrics: freePort(t),
		daemonLog: filepath.Join(dir, "daemons.log"), gate: filepath.Join(dir, "gate"),
		drainGate: filepath.Join(dir, "drain-gate"), linger: filepath.Join(dir, "linger"), ignoreTerm: filepath.Join(dir, "ignore-term"),
	}
	f.notes, f.lastNotes = notifySocketQueue(t)
	bin := filepath.Join(dir, "bin")
	data := filepath.Join(dir, "data")
	for _, d := range []string{bin, data} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f.v1, f.v2, f.bad = installBuild(t, bin, "daemon-v1"), installBuild(t, bin, "daemon-v2"), installBuild(t, bin, "daemon-bad")
	// A working daemon build that is not allowed: it would log its start
	// if it were ever started.
	f.rogue = installBuild(t, bin, "daemon-rogue")
	f.dies = installBuild(t, bin, "daemon-v3-dies")
	control := filepath.Join(dir, "control.sock")
	f.cfg = filepath.Join(dir, "handoff.toml")
	doc := fmt.Sprintf(`control_socket   = %q
trigger_socket   = %q
binary           = %q
allowed_binaries = [%q, %q, %q]
env              = [%q, %q, %q, %q, %q, %q, %q, %q]
drain_grace_secs = 5
deadline_secs    = 20
journal          = %q
metrics_addr     = %q

[[listeners]]
name = "web"
addr = "unix:%s"
`, control, filepath.Join(dir, "trigger.sock"), f.v1, f.v2, f.bad, f.dies,
		envTestRole+"=daemon", envTestData+"="+data, envTestControl+"="+control,
		envTestLog+"="+f.daemonLog, envTestGate+"="+f.gate,
		envTestDrainGate+"="+f.drainGate, envTestLinger+"="+f.linger, envTestIgnoreTerm+"="+f.ignoreTerm,
		filepath.Join(dir, "journal"), f.metrics, f.web)
	if err := os.WriteFile(f.cfg, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// editConfig replaces old (which must occur) by new in the config file.
func (f *fixture) editConfig(t *testing.T, old, new string) {
	t.Helper()
	raw, err := os.ReadFile(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), old) {
		t.Fatalf("the config holds no %q", old)
	}
	if err := os.WriteFile(f.cfg, []byte(strings.Replace(string(raw), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fifo makes a FIFO at path and returns it opened read-write (so opening
// never blocks and readers never see EOF until the test writes).
func fifo(t *testing.T, path string) *os.File {
	t.Helper()
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// awaitEvent polls the daemons' log until a line for event appears, for
// at most pollTimeout, and returns it.
func (f *fixture) awaitEvent(t *testing.T, event string) daemonEvent {
	t.Helper()
	deadline := time.Now().Add(pollTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if evs := f.daemonEvents(t, event); len(evs) > 0 {
			return evs[len(evs)-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the daemons' log within %v", event, pollTimeout)
		}
		<-tick.C
	}
}

// supervisorEnv is the environment of the test binary in the supervisor
// role. The daemons inherit it. Under the race detector a process that
// exits 0 sleeps a second first (GORACE atexit_sleep_ms): turned off, as
// every upgrade and status command and every replaced daemon would pay it.
func supervisorEnv() []string {
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	return append(os.Environ(), envTestSupervisor+"=1", "GORACE="+gorace)
}

// supervisorCmd is a command line for the test binary in the supervisor
// role: handoff-supervisor ARGS.
func supervisorCmd(ctx context.Context, t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = supervisorEnv()
	return cmd
}

// cliTimeout bounds one client command (upgrade, status).
const cliTimeout = 60 * time.Second

// cli runs handoff-supervisor ARGS as a process and returns its output
// and exit status.
func (f *fixture) cli(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := supervisorCmd(ctx, t, args...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("handoff-supervisor %q did not finish within %v: %s", args, cliTimeout, errOut.String())
	case err != nil && !errors.As(err, &ee):
		t.Fatalf("handoff-supervisor %q: %v", args, err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
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
	c, err := net.DialTimeout("unix", f.web, 10*time.Second)
	if err != nil {
		t.Fatalf("dial the daemon: %v", err)
	}
	defer c.Close()
	return readHello(t, c)
}

// readHello reads the daemon's line from c.
func readHello(t *testing.T, c net.Conn) (build string, pid int) {
	t.Helper()
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

// status runs status --json.
func (f *fixture) status(t *testing.T) statusReport {
	t.Helper()
	out, stderr, code := f.cli(t, "status", "--config", f.cfg, "--json")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	var r statusReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("status --json: %v: %q", err, out)
	}
	return r
}

// statusText runs status and returns its incumbent line.
func (f *fixture) statusText(t *testing.T) string {
	t.Helper()
	out, stderr, code := f.cli(t, "status", "--config", f.cfg)
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "incumbent:") {
			return line
		}
	}
	t.Fatalf("status without an incumbent line: %q", out)
	return ""
}

// pollTimeout bounds a wait for the supervisor to reach a state.
const pollTimeout = 20 * time.Second

// awaitStatus polls status until ok accepts it, for at most pollTimeout.
func (f *fixture) awaitStatus(t *testing.T, what string, ok func(statusReport) bool) statusReport {
	t.Helper()
	deadline := time.Now().Add(pollTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		st := f.status(t)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v; status %+v", what, pollTimeout, st)
		}
		<-tick.C
	}
}

// daemonEvent is one line of the daemons' log (see testDaemon).
type daemonEvent struct {
	event, build string
	pid          int
}

// daemonEvents returns the lines of the daemons' log for event, in order.
func (f *fixture) daemonEvents(t *testing.T, event string) []daemonEvent {
	t.Helper()
	raw, err := os.ReadFile(f.daemonLog)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []daemonEvent
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		if line == "" {
			continue
		}
		var e daemonEvent
		if _, err := fmt.Sscanf(line, "%s %s %d", &e.event, &e.build, &e.pid); err != nil {
			t.Fatalf("daemon log line %q: %v", line, err)
		}
		if e.event == event {
			out = append(out, e)
		}
	}
	return out
}

// spawned returns the daemon processes the supervisor started, in order.
func (f *fixture) spawned(t *testing.T) []daemonEvent {
	t.Helper()
	return f.daemonEvents(t, "start")
}

// killDaemons kills whatever daemons of this fixture outlived their
// supervisor (a test that failed half way), with their process groups.
func (f *fixture) killDaemons(t *testing.T) {
	t.Helper()
	for _, s := range f.spawned(t) {
		// The pid is ours only while its command line names our copy.
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", s.pid))
		if err != nil || !strings.HasPrefix(string(cmdline), f.dir+"/") {
			continue
		}
		t.Errorf("daemon %s pid %d outlived the supervisor; killing it", s.build, s.pid)
		proc.KillGroup(s.pid, syscall.SIGKILL)
	}
}

// childrenOf returns the pids whose parent is pid, from /proc.
func childrenOf(t *testing.T, pid int) map[int]bool {
	t.Helper()
	pids, err := proc.Children(pid)
	testutil.Must(t, err)
	out := make(map[int]bool, len(pids))
	for _, p := range pids {
		out[p] = true
	}
	return out
}

// socketInodes returns the inodes of the sockets pid holds (socket:[ino]
// in /proc/<pid>/fd).
func socketInodes(t *testing.T, pid int) map[uint64]bool {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		var ino uint64
		if err == nil {
			if _, err := fmt.Sscanf(link, "socket:[%d]", &ino); err == nil {
				out[ino] = true
			}
		}
	}
	return out
}

// listeningInode returns the inode of the listening unix socket bound at
// path, from /proc/net/unix.
func listeningInode(t *testing.T, path string) uint64 {
	t.Helper()
	raw, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	// Num RefCount Protocol Flags Type St Inode Path
	for _, line := range strings.Split(string(raw), "\n")[1:] {
		fs := strings.Fields(line)
		if len(fs) == 8 && fs[7] == path && fs[3] == "00010000" {
			ino, err := strconv.ParseUint(fs[6], 10, 64)
			if err != nil {
				t.Fatalf("/proc/net/unix: %q", line)
			}
			return ino
		}
	}
	t.Fatalf("no listening socket at %s in /proc/net/unix", path)
	return 0
}

// supervisorProc is a supervisor process.
type supervisorProc struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error // set when exited is closed
}

// signal sends sig to the supervisor.
func (s *supervisorProc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal the supervisor: %v", err)
	}
}

// wait waits (bounded) for the supervisor to exit and returns how.
func (s *supervisorProc) wait(t *testing.T, why string) error {
	t.Helper()
	select {
	case <-s.exited:
		return s.waitErr
	case <-time.After(30 * time.Second):
		t.Fatalf("the supervisor did not exit %s", why)
		return nil
	}
}

// startSupervisor runs the supervisor as a process with extra environment
// and descriptors (fd 3, 4, ...), and waits for READY=1. When the test
// ends it is stopped (SIGTERM, then SIGKILL) and reaped, and any daemon
// that outlived it is killed.
func (f *fixture) startSupervisor(t *testing.T, env []string, files ...*os.File) *supervisorProc {
	t.Helper()
	cmd := supervisorCmd(context.Background(), t, "--config", f.cfg)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = files
	return f.launch(t, cmd)
}

// launch starts the supervisor command cmd, stops it (and kills the
// daemons) when the test ends, and waits for its READY=1.
func (f *fixture) launch(t *testing.T, cmd *exec.Cmd) *supervisorProc {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &supervisorProc{cmd: cmd, exited: make(chan struct{})}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.exited:
			case <-time.After(15 * time.Second):
				cmd.Process.Kill()
				<-s.exited
			}
		}
		f.killDaemons(t)
	})
	f.await(t, "READY=1")
	return s
}

// stopAndCheck sends SIGTERM to the supervisor, waits for STOPPING=1 and
// its clean exit, and checks that the daemon pid is gone with it.
func (f *fixture) stopAndCheck(t *testing.T, sup *supervisorProc, daemon int) {
	t.Helper()
	sup.signal(t, syscall.SIGTERM)
	f.await(t, "STOPPING=1")
	if err := sup.wait(t, "after SIGTERM"); err != nil {
		t.Fatalf("supervisor exit after SIGTERM: %v", err)
	}
	if err := syscall.Kill(daemon, 0); err != syscall.ESRCH {
		t.Errorf("daemon pid %d still there after the supervisor stopped: %v", daemon, err)
	}
}

// TestEndToEnd drives a supervisor process and real daemon processes the
// way an operator would: upgrade and status commands run as processes,
// real signals to the supervisor and the daemon, sd_notify on a unixgram
// NOTIFY_SOCKET, /metrics over HTTP.
func TestEndToEnd(t *testing.T) {
	f := newFixture(t)
	sup := f.startSupervisor(t, nil)
	supPID := sup.cmd.Process.Pid

	build, pid1 := f.hello(t)
	if build != "daemon-v1" {
		t.Fatalf("serving %s, want daemon-v1", build)
	}
	wantSamples(t, scrape(t, f.metrics), map[string]string{
		`handoff_handoffs_total{outcome="committed"}`:   "0",
		`handoff_handoffs_total{outcome="rolled_back"}`: "0",
		`handoff_rollbacks_total`:                       "0",
		`handoff_daemon_restarts_total`:                 "0",
	})

	// upgrade hands off to the configured binary and commits: a new
	// process of the same build.
	out, stderr, code := f.cli(t, "upgrade", "--config", f.cfg)
	if code != 0 || !strings.HasPrefix(out, "committed: handoff ") {
		t.Fatalf("upgrade: exit %d, %q %q", code, out, stderr)
	}
	f.await(t, "RELOADING=1", "MONOTONIC_USEC=")
	f.await(t, "READY=1", "committed")
	st := f.status(t)
	if st.Supervisor.PID != supPID || st.Incumbent == nil || st.Incumbent.PID == pid1 || st.Incumbent.BuildID != "daemon-v1" {
		t.Fatalf("status after upgrade: %+v (daemon was pid %d)", st, pid1)
	}
	if build, pid := f.hello(t); build != "daemon-v1" || pid != st.Incumbent.PID {
		t.Fatalf("serving %s pid %d, status says daemon-v1 pid %d", build, pid, st.Incumbent.PID)
	}
	wantSamples(t, scrape(t, f.metrics), map[string]string{`handoff_handoffs_total{outcome="committed"}`: "1"})

	// upgrade --binary to another allowed build: status (text and JSON)
	// shows its pid and build id.
	out, stderr, code = f.cli(t, "upgrade", "--config", f.cfg, "--binary", f.v2)
	if code != 0 || !strings.HasPrefix(out, "committed: handoff ") {
		t.Fatalf("upgrade to v2: exit %d, %q %q", code, out, stderr)
	}
	f.await(t, "RELOADING=1", "MONOTONIC_USEC=")
	f.await(t, "READY=1", "committed")
	build, pid2 := f.hello(t)
	if build != "daemon-v2" {
		t.Fatalf("after the upgrade to v2: serving %s", build)
	}
	st = f.status(t)
	if st.Incumbent == nil || st.Incumbent.PID != pid2 || st.Incumbent.BuildID != "daemon-v2" || st.KnownGood != f.v2 {
		t.Fatalf("status after the upgrade to v2: %+v, want daemon-v2 pid %d", st, pid2)
	}
	if line, want := f.statusText(t), fmt.Sprintf("pid %d, build daemon-v2,", pid2); !strings.Contains(line, want) {
		t.Fatalf("status: %q, want %q", line, want)
	}

	// A successor that crashes rolls back: upgrade fails, v2 serves on.
	out, _, code = f.cli(t, "upgrade", "--config", f.cfg, "--binary", f.bad)
	if code != 1 || !strings.HasPrefix(out, "rolled back: ") {
		t.Fatalf("upgrade to the bad build: exit %d, %q", code, out)
	}
	f.await(t, "RELOADING=1")
	f.await(t, "READY=1", "rolled back")
	if build, pid := f.hello(t); build != "daemon-v2" || pid != pid2 {
		t.Fatalf("after the rollback: %s pid %d, want daemon-v2 pid %d", build, pid, pid2)
	}
	st = f.status(t)
	if st.Incumbent == nil || st.Incumbent.PID != pid2 || st.KnownGood != f.v2 ||
		len(st.LastOutcomes) == 0 || st.LastOutcomes[len(st.LastOutcomes)-1].Committed {
		t.Fatalf("status after the rollback: %+v", st)
	}
	wantSamples(t, scrape(t, f.metrics), map[string]string{
		`handoff_handoffs_total{outcome="committed"}`:   "2",
		`handoff_handoffs_total{outcome="rolled_back"}`: "1",
		`handoff_rollbacks_total`:                       "1",
	})

	// A binary outside the allowlist is refused and nothing is spawned:
	// no start in the daemons' log (the rogue build would log one), no
	// new child of the supervisor, the same daemon.
	spawns, kids := len(f.spawned(t)), childrenOf(t, supPID)
	if !kids[pid2] {
		t.Fatalf("the daemon pid %d is not among the supervisor's children %v", pid2, kids)
	}
	for _, bin := range []string{f.rogue, "/bin/sh"} {
		out, _, code := f.cli(t, "upgrade", "--config", f.cfg, "--binary", bin)
		if code != 1 || !strings.HasPrefix(out, "err: ") || !strings.Contains(out, bin) {
			t.Fatalf("upgrade to %s: exit %d, %q", bin, code, out)
		}
	}
	if s := f.spawned(t); len(s) != spawns {
		t.Fatalf("a refused binary was started: %v", s[spawns:])
	}
	for pid := range childrenOf(t, supPID) {
		if !kids[pid] {
			t.Fatalf("a new child pid %d of the supervisor after refused upgrades (children were %v)", pid, kids)
		}
	}
	if st := f.status(t); st.Handoffs != 3 || st.Incumbent == nil || st.Incumbent.PID != pid2 {
		t.Fatalf("after the refused upgrades: %+v, want 3 handoffs and pid %d", st, pid2)
	}

	// SIGHUP hands off to the configured binary (v1).
	sup.signal(t, syscall.SIGHUP)
	f.await(t, "RELOADING=1", "MONOTONIC_USEC=")
	f.await(t, "READY=1", "committed")
	st = f.awaitStatus(t, "handoff to daemon-v1 after SIGHUP", func(st statusReport) bool {
		return st.Incumbent != nil && st.Incumbent.PID != pid2 && st.Incumbent.BuildID == "daemon-v1"
	})
	pid3 := st.Incumbent.PID
	if st.KnownGood != f.v1 {
		t.Fatalf("known good after SIGHUP: %s, want %s", st.KnownGood, f.v1)
	}
	if build, pid := f.hello(t); build != "daemon-v1" || pid != pid3 {
		t.Fatalf("after SIGHUP: serving %s pid %d, status says daemon-v1 pid %d", build, pid, pid3)
	}

	// SIGKILL of the daemon. The restart is held at the gate until a
	// connection has been dialled: it waits in the accept queue of the
	// listener the supervisor kept and is served by the restarted daemon.
	if err := syscall.Mkfifo(f.gate, 0o600); err != nil {
		t.Fatal(err)
	}
	gate, err := os.OpenFile(f.gate, os.O_RDWR, 0) // never blocks, keeps the FIFO open
	if err != nil {
		t.Fatal(err)
	}
	defer gate.Close()
	spawns = len(f.spawned(t))
	if err := syscall.Kill(pid3, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	f.await(t, fmt.Sprintf("daemon pid %d exited", pid3))
	c, err := net.DialTimeout("unix", f.web, 10*time.Second)
	if err != nil {
		t.Fatalf("dial while the daemon is down: %v", err)
	}
	defer c.Close()
	if _, err := gate.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	build, pid4 := readHello(t, c)
	if err := os.Remove(f.gate); err != nil {
		t.Fatal(err)
	}
	if build != "daemon-v1" || pid4 == pid3 {
		t.Fatalf("the queued connection: served by %s pid %d (killed pid %d)", build, pid4, pid3)
	}
	if s := f.spawned(t); len(s) != spawns+1 || s[spawns].pid != pid4 {
		t.Fatalf("spawned after the kill: %v, want only pid %d", s[spawns:], pid4)
	}
	f.await(t, "READY=1", "restarted")
	if st := f.status(t); st.Incumbent == nil || st.Incumbent.PID != pid4 || st.Restart != nil {
		t.Fatalf("status after the restart: %+v, want pid %d", st, pid4)
	}
	wantSamples(t, scrape(t, f.metrics), map[string]string{
		`handoff_daemon_restarts_total`:               "1",
		`handoff_handoffs_total{outcome="committed"}`: "3",
	})

	// SIGTERM stops the daemon (it drains and logs its stop) and the
	// supervisor exits 0, having reaped it.
	f.stopAndCheck(t, sup, pid4)
	if stopped := f.daemonEvents(t, "stopped"); len(stopped) != 1 || stopped[0].pid != pid4 {
		t.Errorf("daemons stopped by SIGTERM: %v, want only pid %d", stopped, pid4)
	}
	if _, err := os.Stat(filepath.Join(f.dir, "trigger.sock")); !os.IsNotExist(err) {
		t.Errorf("trigger socket left behind: %v", err)
	}
	if _, err := os.Stat(f.web); err != nil {
		t.Errorf("the listener's socket file was removed: %v", err)
	}
}

// TestReexec: SIGUSR2 re-executes the supervisor (a process of its own
// here) in place: same pid, the daemon adopted rather than restarted, the
// listeners kept (a client dialling in a loop sees no failure, and a
// handoff afterwards passes them on), then SIGTERM stops everything with
// exit status 0. The new image is held before READY=1 until a client
// that dialled after RELOADING=1 was served, so one surely was while the
// supervisor re-executed.
func TestReexec(t *testing.T) {
	f := newFixture(t)
	gatePath := filepath.Join(f.dir, "reexec-gate")
	gate := fifo(t, gatePath)
	sup := f.startSupervisor(t, []string{envTestReexecGate + "=" + gatePath})
	supPID := sup.cmd.Process.Pid
	_, daemonPID := f.hello(t)
	listener := listeningInode(t, f.web)
	if !socketInodes(t, supPID)[listener] {
		t.Fatalf("the supervisor does not hold the listening socket %d", listener)
	}

	stop := make(chan struct{})
	type dial struct{ start, end time.Time }
	type dialResult struct {
		ok   []dial
		errs []error
	}
	dials := make(chan dialResult, 1)
	served := make(chan dial, 1) // the latest success, when there is room
	go func() {
		var r dialResult
		defer func() { dials <- r }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			c, err := net.DialTimeout("unix", f.web, 5*time.Second)
			if err != nil {
				r.errs = append(r.errs, err)
				continue
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
				r.errs = append(r.errs, err)
			} else {
				d := dial{start, time.Now()}
				r.ok = append(r.ok, d)
				select {
				case served <- d:
				default:
				}
			}
			c.Close()
		}
	}()

	sup.signal(t, syscall.SIGUSR2)
	f.await(t, "RELOADING=1", "re-executing")
	execStart := time.Now()
	timeout := time.NewTimer(pollTimeout)
	defer timeout.Stop()
	for waiting := true; waiting; {
		select {
		case d := <-served:
			waiting = d.start.Before(execStart)
		case <-timeout.C:
			t.Fatalf("no client served within %v while the new image was held before READY=1", pollTimeout)
		}
	}
	if _, err := gate.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	f.await(t, "READY=1")
	execEnd := time.Now()
	st := f.status(t)
	close(stop)
	r := <-dials
	if len(r.errs) > 0 || len(r.ok) == 0 {
		t.Fatalf("clients across the re-exec: %d served, errors %v", len(r.ok), r.errs)
	}
	during := 0
	for _, d := range r.ok {
		if !d.start.Before(execStart) && !d.end.After(execEnd) {
			during++
		}
	}
	if during == 0 {
		t.Errorf("no client was served while the supervisor re-executed (%d in all)", len(r.ok))
	}
	if got := listeningInode(t, f.web); got != listener || !socketInodes(t, supPID)[listener] {
		t.Fatalf("listening socket after the re-exec: %d (held by the supervisor: %v), want the same socket %d",
			got, socketInodes(t, supPID)[listener], listener)
	}
	if st.Supervisor.PID != supPID {
		t.Fatalf("supervisor pid %d after the re-exec, want %d", st.Supervisor.PID, supPID)
	}
	if st.Incumbent == nil || st.Incumbent.PID != daemonPID {
		t.Fatalf("daemon after the re-exec: %+v, want pid %d", st.Incumbent, daemonPID)
	}

	out, _, code := f.cli(t, "upgrade", "--config", f.cfg, "--binary", f.v2)
	if code != 0 {
		t.Fatalf("upgrade after the re-exec: exit %d, %q", code, out)
	}
	build, pid2 := f.hello(t)
	if build != "daemon-v2" {
		t.Fatalf("after the upgrade: %s", build)
	}

	f.stopAndCheck(t, sup, pid2)
	if _, err := os.Stat(filepath.Join(f.dir, "trigger.sock")); !os.IsNotExist(err) {
		t.Errorf("trigger socket left behind: %v", err)
	}
	if _, err := os.Stat(f.web); err != nil {
		t.Errorf("the listener's socket file was removed: %v", err)
	}
}

// needSetpriv skips the test unless it can run commands as another user
// (nobody) with setpriv, and returns setpriv's path. CI runs these tests
// as root, with util-linux installed.
func needSetpriv(t *testing.T) string {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skipf("needs root (running as uid %d) to run the client as user nobody with setpriv", os.Getuid())
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skipf("needs setpriv (util-linux) to run the client as user nobody: %v", err)
	}
	return setpriv
}

// TestSecondUserCannotTrigger runs upgrade as another user (nobody, via
// setpriv): the 0600 trigger socket keeps it out, and with the file mode
// opened up the SO_PEERCRED check still does; nothing is spawned.
func TestSecondUserCannotTrigger(t *testing.T) {
	setpriv := needSetpriv(t)
	f := newFixture(t)
	if err := os.Chmod(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f.startSupervisor(t, nil)
	_, pid := f.hello(t)
	asNobody := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", f.v1, "upgrade", "--config", f.cfg)
		cmd.Env = supervisorEnv()
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

// TestSocketActivation passes two listeners as systemd does (fd 3 and 4,
// LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID), in an order other than that of
// [[listeners]]: the supervisor matches them by name and uses them instead
// of binding (binding would fail: the paths are live), the daemon gets
// them in the configured order without systemd's variables left in its
// environment, and a handoff passes them on.
func TestSocketActivation(t *testing.T) {
	f := newFixture(t)
	admin := filepath.Join(f.dir, "admin.sock")
	raw, err := os.ReadFile(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	raw = fmt.Appendf(raw, "\n[[listeners]]\nname = \"admin\"\naddr = \"unix:%s\"\n", admin)
	if err := os.WriteFile(f.cfg, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	var files []*os.File
	for _, path := range []string{admin, f.web} {
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		lf, err := ln.File()
		if err != nil {
			t.Fatal(err)
		}
		defer lf.Close()
		files = append(files, lf)
	}
	sup := f.startSupervisor(t, []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=admin:web", envTestListenPID + "=1"}, files...)
	if build, _ := f.hello(t); build != "daemon-v1" {
		t.Fatalf("serving %s", build)
	}
	adminLine := func() string {
		t.Helper()
		c, err := net.DialTimeout("unix", admin, 10*time.Second)
		if err != nil {
			t.Fatalf("dial admin: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("read admin: %v", err)
		}
		return strings.TrimSpace(line)
	}
	if got, want := adminLine(), "env= names=web,admin"; got != want {
		t.Fatalf("the daemon says %q, want %q (no LISTEN_* left, listeners in config order)", got, want)
	}
	if out, _, code := f.cli(t, "upgrade", "--config", f.cfg, "--binary", f.v2); code != 0 {
		t.Fatalf("upgrade after socket activation: exit %d, %q", code, out)
	}
	if build, _ := f.hello(t); build != "daemon-v2" {
		t.Fatalf("after the upgrade: serving %s", build)
	}
	if got, want := adminLine(), "env= names=web,admin"; got != want {
		t.Fatalf("after the upgrade the daemon says %q, want %q", got, want)
	}
	sup.signal(t, syscall.SIGTERM)
	if err := sup.wait(t, "after SIGTERM"); err != nil {
		t.Fatalf("supervisor exit: %v", err)
	}
}

// TestAllowedUIDsMayTrigger: with allowed_uids = [65534], nobody (via
// setpriv) gets through the trigger socket's file access (an ACL grants
// it) and the SO_PEERCRED check: status and upgrade succeed. Other users
// stay out (TestSecondUserCannotTrigger).
func TestAllowedUIDsMayTrigger(t *testing.T) {
	setpriv := needSetpriv(t)
	f := newFixture(t)
	if err := os.Chmod(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	probe := filepath.Join(f.dir, "acl-probe")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := setTriggerACL(probe, probe, []uint32{65534}); err != nil {
		t.Skipf("no POSIX ACLs in %s: %v", f.dir, err)
	}
	f.editConfig(t, "journal ", "allowed_uids     = [65534]\njournal ")
	f.startSupervisor(t, nil)
	asNobody := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, setpriv, append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", f.v1}, args...)...)
		cmd.Env = supervisorEnv()
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := asNobody("status", "--config", f.cfg)
	if err != nil || !strings.Contains(out, "incumbent:") {
		t.Fatalf("status as an allowed uid: %v, %q", err, out)
	}
	out, err = asNobody("upgrade", "--config", f.cfg, "--binary", f.v2)
	if err != nil || !strings.Contains(out, "committed: handoff ") {
		t.Fatalf("upgrade as an allowed uid: %v, %q", err, out)
	}
	if build, _ := f.hello(t); build != "daemon-v2" {
		t.Fatalf("serving %s after the upgrade by an allowed uid", build)
	}
}
