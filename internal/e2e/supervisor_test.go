package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/okline"
	"github.com/handoff-go/handoff/internal/proc"
	"golang.org/x/sys/unix"
)

// Bounds of the harness's waits.
const (
	readyTimeout   = 60 * time.Second // the supervisor's READY=1 after its start
	handoffTimeout = 2 * time.Minute  // one trigger line's answer (the handoff's deadline is 30 s)
	statusTimeout  = 10 * time.Second // a status answer
	logWaitTimeout = 10 * time.Second // a daemon's log line after the handoff it tells of
	stopTimeout    = 60 * time.Second // the supervisor's exit after SIGTERM
	exitTimeout    = 30 * time.Second // a replaced daemon's exit after the commit
	deadlineSecs   = 30               // deadline_secs of every configuration
	defaultGrace   = 10.0             // drain_grace_secs unless a test sets it
	logTailBytes   = 8 << 10          // how much of the log a failure shows
	logLineMax     = 1 << 20          // longest log line the reader takes whole
	dialTimeout    = 10 * time.Second // a client connection to kvd
	requestTimeout = 30 * time.Second // one request on a client connection
)

// supOptions are the configuration keys a test sets.
type supOptions struct {
	drainGrace float64 // drain_grace_secs; 0: defaultGrace
}

// supervisor is a running handoff-supervisor with kvd as its daemon.
type supervisor struct {
	t       *testing.T
	dir     string
	config  string
	trigger string
	data    string
	addr    string // kvd's HTTP listener, as bound by the supervisor
	cmd     *exec.Cmd
	exited  chan struct{} // closed once cmd.Wait returned
	waitErr error
	logPath string
	logDone chan struct{} // closed once every writer of the log pipe is gone
	// notify is NOTIFY_SOCKET, read until stop closes it; notifyDone is
	// closed when its reader has returned.
	notify     *net.UnixConn
	notifyDone chan struct{}

	mu      sync.Mutex
	changed chan struct{}  // closed and replaced at every line the log reader notes
	passed  map[string]int // handoff id → passed_conns, from the successor's log
	logAddr string         // from "listener ready"
}

var (
	// The successor logs how many connections it was passed once it
	// committed (handoff.Run); the supervisor logs the address it bound.
	committedLine = regexp.MustCompile(`msg="handoff: successor committed, serving".* handoff=(\S+) passed_conns=(\d+)`)
	listenerLine  = regexp.MustCompile(`msg="listener ready" name=http addr=(\S+)`)
)

// startSupervisor writes a configuration into a new directory, starts the
// supervisor on it and waits for its READY=1 (sent once kvd serves). The
// supervisor is stopped when the test ends.
func startSupervisor(t *testing.T, o supOptions) *supervisor {
	t.Helper()
	needBinaries(t)
	// Unix socket paths must be short: not t.TempDir.
	dir, err := os.MkdirTemp("", "hoe2e")
	if err != nil {
		t.Fatal(err)
	}
	s := &supervisor{
		t: t, dir: dir,
		config:  filepath.Join(dir, "handoff.toml"),
		trigger: filepath.Join(dir, "trigger.sock"),
		data:    filepath.Join(dir, "data"),
		logPath: filepath.Join(dir, "supervisor.log"),
		exited:  make(chan struct{}),
		logDone: make(chan struct{}),
		changed: make(chan struct{}),
		passed:  map[string]int{},
	}
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("supervisor log (last %d bytes):\n%s", logTailBytes, s.logTail())
		}
		os.RemoveAll(dir)
	})
	grace := o.drainGrace
	if grace == 0 {
		grace = defaultGrace
	}
	cfg := fmt.Sprintf(`# written by the e2e tests
control_socket   = %q
trigger_socket   = %q
binary           = %q
args             = ["--data", %q]
drain_grace_secs = %g
deadline_secs    = %d
journal          = %q

[[listeners]]
name = "http"
addr = "127.0.0.1:0"
`, filepath.Join(dir, "control.sock"), s.trigger, kvdBin, s.data, grace, deadlineSecs, filepath.Join(dir, "journal"))
	if err := os.WriteFile(s.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	notifyPath := filepath.Join(dir, "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	// The supervisor and every kvd it starts write to this pipe (the
	// daemons inherit the supervisor's stderr); the reader copies it to
	// the log file and notes the lines the tests wait for.
	pr, pw, err := os.Pipe()
	if err != nil {
		logFile.Close()
		t.Fatal(err)
	}
	s.cmd = exec.Command(supervisorBin, "run", "--config", s.config)
	s.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	s.cmd.Stdout, s.cmd.Stderr = pw, pw
	// Its own process group, so that a supervisor that must be killed
	// takes its daemons along.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = s.cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		logFile.Close()
		notify.Close()
		close(s.exited)
		close(s.logDone)
		t.Fatalf("start the supervisor: %v", err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.exited)
	}()
	go s.readLog(pr, logFile)

	// The notify socket is read (and what comes discarded) until the
	// supervisor has exited, so that its sd_notify calls succeed.
	s.notify = notify
	ready := make(chan error, 1)
	s.notifyDone = make(chan struct{})
	go func() {
		defer close(s.notifyDone)
		buf := make([]byte, 4096)
		notify.SetReadDeadline(time.Now().Add(readyTimeout))
		waiting := true
		for {
			n, err := notify.Read(buf)
			if err != nil {
				if waiting {
					ready <- err
				}
				return
			}
			if !waiting {
				continue
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if line == "READY=1" {
					waiting = false
					notify.SetReadDeadline(time.Time{})
					ready <- nil
					break
				}
			}
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("waiting for the supervisor's READY=1: %v", err)
		}
	case <-s.exited:
		t.Fatalf("the supervisor exited during its start: %v", s.waitErr)
	}
	// "listener ready" is logged before the daemon starts, so before
	// READY=1, but the reader may not have got to it yet.
	s.addr = s.waitLog("the listener's address", func() (string, bool) { return s.logAddr, s.logAddr != "" })
	return s
}

// readLog copies the log pipe to f and notes the lines the tests wait for,
// until every writer has exited.
func (s *supervisor) readLog(r *os.File, f *os.File) {
	defer close(s.logDone)
	defer r.Close()
	defer f.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			f.WriteString(line)
			s.note(line)
		}
		if err != nil {
			return
		}
	}
}

func (s *supervisor) note(line string) {
	if len(line) > logLineMax {
		return
	}
	var noted bool
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := committedLine.FindStringSubmatch(line); m != nil {
		n, _ := strconv.Atoi(m[2])
		s.passed[m[1]] = n
		noted = true
	}
	if m := listenerLine.FindStringSubmatch(line); m != nil && s.logAddr == "" {
		s.logAddr = m[1]
		noted = true
	}
	if noted {
		close(s.changed)
		s.changed = make(chan struct{})
	}
}

// waitLog waits until get reports a value noted from the log, for at most
// logWaitTimeout or until every process writing the log is gone.
func waitLog[T any](s *supervisor, what string, get func() (T, bool)) T {
	s.t.Helper()
	timer := time.NewTimer(logWaitTimeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		v, ok := get()
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return v
		}
		select {
		case <-ch:
		case <-s.logDone:
			s.mu.Lock()
			v, ok = get()
			s.mu.Unlock()
			if ok {
				return v
			}
			s.t.Fatalf("%s: not in the log, and every process writing it exited", what)
		case <-timer.C:
			s.t.Fatalf("%s: not in the log within %v", what, logWaitTimeout)
		}
	}
}

func (s *supervisor) waitLog(what string, get func() (string, bool)) string {
	s.t.Helper()
	return waitLog(s, what, get)
}

// passedConns is how many connections the successor of handoff id says
// it was passed; it waits for the line (logged right after the commit,
// possibly after the supervisor answered).
func (s *supervisor) passedConns(id string) int {
	s.t.Helper()
	return waitLog(s, "passed_conns of handoff "+id, func() (int, bool) {
		n, ok := s.passed[id]
		return n, ok
	})
}

// ask sends one trigger line and returns the answer line, having read
// the connection to its end (the supervisor closes it after answering).
func (s *supervisor) ask(line string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("unix", s.trigger, timeout)
	if err != nil {
		return "", fmt.Errorf("trigger socket: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", fmt.Errorf("trigger %q: %w", line, err)
	}
	all, err := io.ReadAll(io.LimitReader(c, 1<<20))
	if err != nil {
		return "", fmt.Errorf("trigger %q: answer: %w", line, err)
	}
	answer, _, ok := strings.Cut(string(all), "\n")
	if !ok {
		return "", fmt.Errorf("trigger %q: answer without a newline: %q", line, all)
	}
	return answer, nil
}

// outcome is the supervisor's answer to "handoff".
type outcome struct {
	id        string
	committed bool
	pid       int
	acceptGap time.Duration
	overhead  time.Duration // library_overhead
	reason    string
	line      string
}

// handoff asks for a handoff to the configured binary and returns its
// outcome; a refusal ("err:") or a malformed answer fails the test.
func (s *supervisor) handoff() outcome {
	s.t.Helper()
	line, err := s.ask("handoff", handoffTimeout)
	if err != nil {
		s.t.Fatal(err)
	}
	o, err := parseOutcome(line)
	if err != nil {
		s.t.Fatal(err)
	}
	return o
}

// mustCommit is handoff, failing the test unless it committed.
func (s *supervisor) mustCommit(what string) outcome {
	s.t.Helper()
	o := s.handoff()
	if !o.committed {
		s.t.Fatalf("%s: the handoff rolled back: %s (%s)", what, o.reason, o.line)
	}
	return o
}

// parseOutcome reads "ok: id=… committed=… pid=… build_id=… accept_gap=…
// library_overhead=… reason=…".
func parseOutcome(line string) (outcome, error) {
	rest, ok := strings.CutPrefix(line, "ok: ")
	if !ok {
		return outcome{}, fmt.Errorf("the supervisor answered %q", line)
	}
	f, err := okline.Fields(rest)
	if err != nil {
		return outcome{}, fmt.Errorf("answer %q: %w", line, err)
	}
	o := outcome{id: f["id"], reason: f["reason"], line: line}
	var errs []error
	if o.committed, err = strconv.ParseBool(f["committed"]); err != nil {
		errs = append(errs, fmt.Errorf("committed: %w", err))
	}
	if o.pid, err = strconv.Atoi(f["pid"]); err != nil {
		errs = append(errs, fmt.Errorf("pid: %w", err))
	}
	if o.acceptGap, err = time.ParseDuration(f["accept_gap"]); err != nil {
		errs = append(errs, fmt.Errorf("accept_gap: %w", err))
	}
	if o.overhead, err = time.ParseDuration(f["library_overhead"]); err != nil {
		errs = append(errs, fmt.Errorf("library_overhead: %w", err))
	}
	if o.id == "" {
		errs = append(errs, errors.New("no id"))
	}
	if err := errors.Join(errs...); err != nil {
		return o, fmt.Errorf("answer %q: %w", line, err)
	}
	return o, nil
}

// status is what the supervisor's status command reports that the tests
// read.
type status struct {
	Supervisor struct {
		PID int `json:"pid"`
	} `json:"supervisor"`
	Phase     string `json:"phase"`
	Incumbent *struct {
		PID int `json:"pid"`
	} `json:"incumbent"`
	Handoffs     int `json:"handoffs"`
	LastOutcomes []struct {
		ID             string  `json:"id"`
		Committed      bool    `json:"committed"`
		TotalMS        float64 `json:"total_ms"`
		DrainMS        float64 `json:"drain_ms"`
		SealMS         float64 `json:"seal_ms"`
		BeginToReadyMS float64 `json:"begin_to_ready_ms"`
		AcceptGapMS    float64 `json:"accept_gap_ms"`
	} `json:"last_outcomes"`
}

func (s *supervisor) status() status {
	s.t.Helper()
	line, err := s.ask("status", statusTimeout)
	if err != nil {
		s.t.Fatal(err)
	}
	raw, ok := strings.CutPrefix(line, "ok: ")
	if !ok {
		s.t.Fatalf("status: the supervisor answered %q", line)
	}
	var st status
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		s.t.Fatalf("status %q: %v", raw, err)
	}
	return st
}

// incumbentPID is the pid of the daemon serving now.
func (s *supervisor) incumbentPID() int {
	s.t.Helper()
	st := s.status()
	if st.Incumbent == nil {
		s.t.Fatalf("no daemon serves (phase %s)", st.Phase)
	}
	return st.Incumbent.PID
}

// stop ends the supervisor with SIGTERM (it stops kvd, which drains and
// seals), or kills its process group if it does not exit in time, and
// waits for every process writing the log.
func (s *supervisor) stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	select {
	case <-s.exited:
	default:
		s.cmd.Process.Signal(syscall.SIGTERM)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	var err error
	select {
	case <-s.exited:
		if s.waitErr != nil {
			err = fmt.Errorf("the supervisor exited with %w after SIGTERM", s.waitErr)
		}
	case <-timer.C:
		proc.KillGroup(s.cmd.Process.Pid, unix.SIGKILL)
		<-s.exited
		err = fmt.Errorf("the supervisor did not exit within %v of SIGTERM", stopTimeout)
	}
	if s.notify != nil {
		s.notify.Close()
		<-s.notifyDone
		s.notify = nil
	}
	// Daemons outliving the supervisor would hold the log pipe open.
	select {
	case <-s.logDone:
	case <-time.After(exitTimeout):
		proc.KillGroup(s.cmd.Process.Pid, unix.SIGKILL)
		<-s.logDone
		err = errors.Join(err, errors.New("daemons outlived the supervisor; killed"))
	}
	return err
}

// mustStop is stop, failing the test on an error.
func (s *supervisor) mustStop() {
	s.t.Helper()
	if err := s.stop(); err != nil {
		s.t.Fatal(err)
	}
}

// logTail is the end of the log file.
func (s *supervisor) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return err.Error()
	}
	if len(b) > logTailBytes {
		b = b[len(b)-logTailBytes:]
	}
	return string(b)
}

// waitExit waits for process pid (a replaced daemon) to exit, through a
// pidfd: it becomes readable when the process has exited, zombie or
// reaped. A pid already gone counts as exited.
func waitExit(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	}
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(fd)
	ms := int(timeout / time.Millisecond)
	for {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("poll pidfd %d: %v", pid, err)
		}
		if n == 0 {
			t.Fatalf("process %d did not exit within %v", pid, timeout)
		}
		return
	}
}
