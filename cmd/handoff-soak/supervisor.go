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
	"sync"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/internal/okline"
)

// Supervisor settings of the soak: generous bounds, so that a slow
// machine shows up as a slow handoff rather than as a rollback.
const (
	drainGraceSecs = 10
	deadlineSecs   = 30
	// startTimeout bounds the supervisor's start-up (listener, cold start
	// of kvd, metrics).
	startTimeout = 30 * time.Second
	// stopTimeout bounds its exit after SIGTERM (it stops kvd first).
	stopTimeout = deadlineSecs*time.Second + 15*time.Second
	// replyTimeout bounds one trigger exchange: a whole handoff.
	replyTimeout = deadlineSecs*time.Second + 10*time.Second
)

// supervisor is the running handoff-supervisor and what its log said.
type supervisor struct {
	bin     binaries
	config  string
	trigger string
	dataDir string
	logPath string

	cmd  *exec.Cmd
	done chan struct{} // closed when the process was waited for
	err  error         // its exit, once done

	mu         sync.Mutex
	httpAddr   string
	metrics    string
	daemonPID  int
	ready      chan struct{} // closed at "supervisor ready"
	readyOnce  sync.Once
	logged     logCounts
	logScanned chan struct{} // closed when the log pipe hit EOF
}

// logCounts are the warnings and errors in the log of the supervisor and
// of the daemons (they inherit its stderr).
type logCounts struct {
	Warnings int      `json:"warnings"`
	Errors   int      `json:"errors"`
	Examples []string `json:"examples,omitempty"` // the first few
}

const maxLogExamples = 8

// writeConfig writes the supervisor's TOML configuration under work.
func writeConfig(work string, bin binaries) (*supervisor, error) {
	run := filepath.Join(work, "run")
	data := filepath.Join(work, "data")
	for _, d := range []string{run, data} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	s := &supervisor{
		bin:     bin,
		config:  filepath.Join(work, "handoff.toml"),
		trigger: filepath.Join(run, "trigger.sock"),
		dataDir: data,
		logPath: filepath.Join(work, "supervisor.log"),
	}
	cfg := fmt.Sprintf(`# written by handoff-soak
control_socket   = %q
trigger_socket   = %q
binary           = %q
args             = ["--data", %q]
allowed_binaries = [%q]
drain_grace_secs = %d
deadline_secs    = %d
journal          = %q
metrics_addr     = "127.0.0.1:0"
log_format       = "json"

[[listeners]]
name = "http"
addr = "127.0.0.1:0"
`, filepath.Join(run, "control.sock"), s.trigger, bin.kvd[0], data, bin.kvd[1],
		drainGraceSecs, deadlineSecs, filepath.Join(run, "journal"))
	return s, os.WriteFile(s.config, []byte(cfg), 0o600)
}

// start runs the supervisor and waits for its "supervisor ready" line.
func (s *supervisor) start(ctx context.Context) error {
	logFile, err := os.Create(s.logPath)
	if err != nil {
		return err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return err
	}
	s.cmd = exec.Command(s.bin.supervisor, "run", "--config", s.config)
	// A pipe of our own as an *os.File: exec does not wait for it, and
	// the daemons, which inherit it, may hold it after the supervisor.
	s.cmd.Stdout, s.cmd.Stderr = pw, pw
	s.ready = make(chan struct{})
	s.logScanned = make(chan struct{})
	s.done = make(chan struct{})
	if err := s.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		logFile.Close()
		return fmt.Errorf("start handoff-supervisor: %w", err)
	}
	pw.Close()
	go s.scanLog(pr, logFile)
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	t := time.NewTimer(startTimeout)
	defer t.Stop()
	select {
	case <-s.ready:
		return nil
	case <-s.done:
		return fmt.Errorf("handoff-supervisor exited during start-up: %w (log: %s)", s.err, s.logPath)
	case <-t.C:
		return fmt.Errorf("handoff-supervisor not ready within %v (log: %s)", startTimeout, s.logPath)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// logLine is what scanLog reads from the supervisor's JSON log lines.
type logLine struct {
	Msg       string `json:"msg"`
	Level     string `json:"level"`
	Name      string `json:"name"`
	Addr      string `json:"addr"`
	DaemonPID int    `json:"daemon_pid"`
}

// scanLog copies the log to its file and picks out the addresses, the
// readiness and the warnings and errors (JSON from the supervisor, slog
// text from kvd).
func (s *supervisor) scanLog(r io.ReadCloser, file *os.File) {
	defer close(s.logScanned)
	defer file.Close()
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			file.WriteString(line)
			s.noteLine(strings.TrimSuffix(line, "\n"))
		}
		if err != nil {
			return
		}
	}
}

func (s *supervisor) noteLine(line string) {
	level := ""
	var l logLine
	if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &l) == nil {
		level = l.Level
	} else if i := strings.Index(line, " level="); i >= 0 {
		level, _, _ = strings.Cut(line[i+len(" level="):], " ")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch level {
	case "WARN", "ERROR":
		if level == "WARN" {
			s.logged.Warnings++
		} else {
			s.logged.Errors++
		}
		if len(s.logged.Examples) < maxLogExamples {
			s.logged.Examples = append(s.logged.Examples, truncate(line, 300))
		}
	}
	switch l.Msg {
	case "listener ready":
		if l.Name == "http" {
			s.httpAddr = l.Addr
		}
	case "serving metrics":
		s.metrics = l.Addr
	case "supervisor ready":
		s.daemonPID = l.DaemonPID
		s.readyOnce.Do(func() { close(s.ready) })
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// addrs returns kvd's HTTP address, the metrics address and the daemon's
// pid from the log.
func (s *supervisor) addrs() (httpAddr, metrics string, pid int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.httpAddr == "" || s.metrics == "" || s.daemonPID == 0 {
		return "", "", 0, fmt.Errorf("the supervisor's log named no listener address, metrics address or daemon pid (log: %s)", s.logPath)
	}
	return s.httpAddr, s.metrics, s.daemonPID, nil
}

func (s *supervisor) logSummary() logCounts {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.logged
	c.Examples = append([]string(nil), c.Examples...)
	return c
}

func (s *supervisor) pid() int { return s.cmd.Process.Pid }

// ask sends one trigger line and reads the reply line.
func (s *supervisor) ask(ctx context.Context, line string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", s.trigger)
	if err != nil {
		return "", fmt.Errorf("trigger socket: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", fmt.Errorf("trigger socket: send %q: %w", line, err)
	}
	reply, err := bufio.NewReaderSize(io.LimitReader(c, 1<<20), 4096).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("trigger socket: reply to %q: %w", line, err)
	}
	return strings.TrimSuffix(reply, "\n"), nil
}

// handoffReply is a parsed "ok:" reply to a handoff line.
type handoffReply struct {
	ID              string
	Committed       bool
	PID             int
	BuildID         string
	AcceptGap       time.Duration
	LibraryOverhead time.Duration
	Reason          string
}

// parseHandoffReply parses
// "ok: id=ID committed=B pid=P build_id=Q accept_gap=D library_overhead=D reason=Q".
func parseHandoffReply(line string) (handoffReply, error) {
	rest, ok := strings.CutPrefix(line, "ok:")
	if !ok {
		return handoffReply{}, fmt.Errorf("supervisor: %s", line)
	}
	f, err := okline.Fields(rest)
	if err != nil {
		return handoffReply{}, fmt.Errorf("reply %q: %w", line, err)
	}
	var r handoffReply
	var errs []error
	r.ID = f["id"]
	r.BuildID = f["build_id"]
	r.Reason = f["reason"]
	r.Committed, err = strconv.ParseBool(f["committed"])
	errs = append(errs, err)
	r.PID, err = strconv.Atoi(f["pid"])
	errs = append(errs, err)
	r.AcceptGap, err = time.ParseDuration(f["accept_gap"])
	errs = append(errs, err)
	r.LibraryOverhead, err = time.ParseDuration(f["library_overhead"])
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return handoffReply{}, fmt.Errorf("reply %q: %w", line, err)
	}
	return r, nil
}

// statusReply is the part of the status command's JSON the soak reads.
type statusReply struct {
	Phase     string `json:"phase"`
	Incumbent *struct {
		PID     int    `json:"pid"`
		BuildID string `json:"build_id"`
	} `json:"incumbent"`
	Handoffs int `json:"handoffs"`
}

func (s *supervisor) status(ctx context.Context) (statusReply, error) {
	line, err := s.ask(ctx, "status", 10*time.Second)
	if err != nil {
		return statusReply{}, err
	}
	body, ok := strings.CutPrefix(line, "ok:")
	if !ok {
		return statusReply{}, fmt.Errorf("status: %s", line)
	}
	var st statusReply
	if err := json.Unmarshal([]byte(strings.TrimSpace(body)), &st); err != nil {
		return statusReply{}, fmt.Errorf("status: %w", err)
	}
	return st, nil
}

// stop sends SIGTERM, as a service manager would, and waits for the exit
// (it stops the daemon, which drains and seals, first). After
// stopTimeout it kills the supervisor and says so.
func (s *supervisor) stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	select {
	case <-s.done:
		return fmt.Errorf("handoff-supervisor had already exited: %w (log: %s)", s.err, s.logPath)
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-s.done:
		if s.err != nil {
			return fmt.Errorf("handoff-supervisor exited with %w after SIGTERM (log: %s)", s.err, s.logPath)
		}
		return nil
	case <-t.C:
		s.cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("handoff-supervisor did not exit within %v of SIGTERM; killed (log: %s)", stopTimeout, s.logPath)
	}
}

// waitLog waits (bounded) until every writer of the log pipe is gone, so
// that the counts include the daemon's last lines.
func (s *supervisor) waitLog(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.logScanned:
	case <-t.C:
	}
}

// dump reads the data directory with kvd --dump (no daemon may run).
func (s *supervisor) dump(ctx context.Context) (map[string][]byte, uint64, error) {
	cmd := exec.CommandContext(ctx, s.bin.kvd[0], "--dump", "--data", s.dataDir)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, 0, fmt.Errorf("kvd --dump: %w: %s", err, truncate(strings.TrimSpace(stderr.String()), 500))
	}
	var d struct {
		Revision uint64            `json:"revision"`
		Data     map[string][]byte `json:"data"`
	}
	if err := json.Unmarshal(out, &d); err != nil {
		return nil, 0, fmt.Errorf("kvd --dump: %w", err)
	}
	return d.Data, d.Revision, nil
}
