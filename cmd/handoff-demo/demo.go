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
	"time"
)

// demo owns the working directory, the built binaries and the supervisor.
type demo struct {
	o              options
	stdout, stderr io.Writer
	dir            string
	tmp            bool
	bin            map[string]string // "v1", "v2", "broken", "supervisor" → path
	config         string
	trigger        string
	addr           string // kvd's HTTP address
	sup            *exec.Cmd
	supDone        chan error
	logFile        *os.File
}

func newDemo(o options, stdout, stderr io.Writer) (*demo, error) {
	d := &demo{o: o, stdout: stdout, stderr: stderr, bin: map[string]string{}}
	if o.dir != "" {
		if err := os.MkdirAll(o.dir, 0o755); err != nil {
			return nil, fmt.Errorf("working directory: %w", err)
		}
		d.dir = o.dir
	} else {
		dir, err := os.MkdirTemp("", "handoff-demo-")
		if err != nil {
			return nil, fmt.Errorf("working directory: %w", err)
		}
		d.dir, d.tmp = dir, true
	}
	return d, nil
}

func (d *demo) cleanup() {
	d.stopSupervisor() // already stopped unless the run failed
	if d.logFile != nil {
		d.logFile.Close()
	}
	if d.tmp && !d.o.keepDir {
		os.RemoveAll(d.dir)
	}
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.stdout, format+"\n", args...)
}

// moduleRoot finds the handoff module so the demo can build its binaries.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run the demo from inside the handoff module (go run ./cmd/handoff-demo)")
	}
	return filepath.Dir(mod), nil
}

// build compiles the supervisor and kvd v1 in one go build, so the
// packages they share compile once, then links kvd v2 and the broken kvd
// from the packages just compiled: they differ only in -ldflags.
func (d *demo) build(ctx context.Context) error {
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	bindir := filepath.Join(d.dir, "bin")
	if err := os.MkdirAll(bindir, 0o755); err != nil {
		return err
	}
	goBuild := func(out, ldflags string, pkgs ...string) error {
		cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-o", out, "-ldflags", ldflags}, pkgs...)...)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, b)
		}
		return nil
	}
	// The supervisor has no main.buildID; the linker ignores it there.
	if err := goBuild(bindir+string(filepath.Separator), "-X main.buildID=kvd-v1", "./cmd/handoff-supervisor", "./examples/kvd"); err != nil {
		return err
	}
	d.bin["supervisor"] = filepath.Join(bindir, "handoff-supervisor")
	d.bin["v1"] = filepath.Join(bindir, "kvd-v1")
	if err := os.Rename(filepath.Join(bindir, "kvd"), d.bin["v1"]); err != nil {
		return err
	}
	variants := map[string]string{
		"v2":     "-X main.buildID=kvd-v2",
		"broken": "-X main.buildID=kvd-broken -X main.failBeforeReady=true",
	}
	errs := make(chan error, len(variants))
	for name, ldflags := range variants {
		out := filepath.Join(bindir, "kvd-"+name)
		d.bin[name] = out
		go func() { errs <- goBuild(out, ldflags, "./examples/kvd") }()
	}
	var all []error
	for range variants {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

// freeAddr picks a loopback port for kvd's listener.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func (d *demo) writeConfig() error {
	addr, err := freeAddr()
	if err != nil {
		return fmt.Errorf("pick a port: %w", err)
	}
	d.addr = addr
	data := filepath.Join(d.dir, "data")
	run := filepath.Join(d.dir, "run")
	for _, p := range []string{data, run} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			return err
		}
	}
	d.trigger = filepath.Join(run, "trigger.sock")
	d.config = filepath.Join(d.dir, "handoff.toml")
	cfg := fmt.Sprintf(`# written by handoff-demo
control_socket   = %q
trigger_socket   = %q
binary           = %q
args             = ["--data", %q]
allowed_binaries = [%q, %q]
drain_grace_secs = 10
deadline_secs    = 30
journal          = %q

[[listeners]]
name = "http"
addr = %q
`, filepath.Join(run, "control.sock"), d.trigger, d.bin["v1"], data,
		d.bin["v2"], d.bin["broken"], filepath.Join(run, "journal"), addr)
	return os.WriteFile(d.config, []byte(cfg), 0o600)
}

// startSupervisor runs handoff-supervisor and waits for its READY=1 on a
// notify socket, as systemd would.
func (d *demo) startSupervisor(ctx context.Context) error {
	notifyPath := filepath.Join(d.dir, "run", "notify.sock")
	os.Remove(notifyPath)
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify socket: %w", err)
	}
	defer notify.Close()
	logPath := filepath.Join(d.dir, "supervisor.log")
	if d.logFile, err = os.Create(logPath); err != nil {
		return err
	}
	cmd := exec.Command(d.bin["supervisor"], "run", "--config", d.config)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	cmd.Stdout, cmd.Stderr = d.logFile, d.logFile
	if d.o.verbose {
		cmd.Stdout, cmd.Stderr = io.MultiWriter(d.logFile, d.stderr), io.MultiWriter(d.logFile, d.stderr)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start supervisor: %w", err)
	}
	d.sup = cmd
	d.supDone = make(chan error, 1)
	go func() { d.supDone <- cmd.Wait() }()

	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		notify.SetReadDeadline(time.Now().Add(60 * time.Second))
		for {
			n, err := notify.Read(buf)
			if err != nil {
				got <- err
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if line == "READY=1" {
					got <- nil
					return
				}
			}
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			return fmt.Errorf("waiting for the supervisor's READY=1: %w (log: %s)", err, logPath)
		}
		return nil
	case err := <-d.supDone:
		return fmt.Errorf("the supervisor exited during start-up: %w (log: %s)", err, logPath)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stopSupervisor stops the supervisor with SIGTERM, as systemd would, and
// returns an error unless it exited with status 0 (it stops the daemon,
// which drains and seals, first). It returns nil if nothing runs.
func (d *demo) stopSupervisor() error {
	if d.sup == nil || d.sup.Process == nil {
		return nil
	}
	defer func() { d.sup = nil }()
	d.sup.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.supDone:
		if err != nil {
			return fmt.Errorf("the supervisor exited with %w after SIGTERM (log: %s)", err, d.logFile.Name())
		}
		return nil
	case <-time.After(30 * time.Second):
		d.sup.Process.Kill()
		<-d.supDone
		return fmt.Errorf("the supervisor did not exit within 30s of SIGTERM (log: %s)", d.logFile.Name())
	}
}

// checkDataDir reads the data directory with kvd --dump once nothing
// serves it, and checks every acknowledged write there.
func (d *demo) checkDataDir(ctx context.Context, acked map[string]string) (rev uint64, checked int, lost []string, err error) {
	cmd := exec.CommandContext(ctx, d.bin["v1"], "--data", filepath.Join(d.dir, "data"), "--dump")
	cmd.Stderr = d.logFile
	out, err := cmd.Output()
	if err != nil {
		return 0, 0, nil, fmt.Errorf("kvd --dump: %w", err)
	}
	var dump struct {
		Revision uint64            `json:"revision"`
		Data     map[string][]byte `json:"data"`
	}
	if err := json.Unmarshal(out, &dump); err != nil {
		return 0, 0, nil, fmt.Errorf("kvd --dump: %w", err)
	}
	for k, want := range acked {
		checked++
		if got, ok := dump.Data[k]; !ok || string(got) != want {
			lost = append(lost, k)
		}
	}
	return dump.Revision, checked, lost, nil
}

// triggerResult is the supervisor's answer to one trigger line.
type triggerResult struct {
	id        string
	committed bool
	reason    string
	fields    map[string]string
}

// handoff asks the supervisor, over its trigger socket, to hand off to bin.
func (d *demo) handoff(bin string) (triggerResult, error) {
	c, err := net.DialTimeout("unix", d.trigger, 5*time.Second)
	if err != nil {
		return triggerResult{}, fmt.Errorf("trigger socket: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := fmt.Fprintf(c, "handoff %s\n", bin); err != nil {
		return triggerResult{}, fmt.Errorf("trigger: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return triggerResult{}, fmt.Errorf("trigger answer: %w", err)
	}
	return parseAnswer(strings.TrimSpace(line))
}

// parseAnswer reads "ok: id=… committed=true|false reason=…" (reason runs
// to the end of the line) or "err: …".
func parseAnswer(line string) (triggerResult, error) {
	rest, ok := strings.CutPrefix(line, "ok:")
	if !ok {
		return triggerResult{}, fmt.Errorf("supervisor answered %q", line)
	}
	r := triggerResult{fields: map[string]string{}}
	rest = strings.TrimSpace(rest)
	if i := strings.Index(rest, "reason="); i >= 0 {
		r.reason = strings.Trim(strings.TrimSpace(rest[i+len("reason="):]), `"`)
		rest = rest[:i]
	}
	for _, f := range strings.Fields(rest) {
		k, v, _ := strings.Cut(f, "=")
		r.fields[k] = v
	}
	r.id = r.fields["id"]
	c, err := strconv.ParseBool(r.fields["committed"])
	if err != nil {
		return r, fmt.Errorf("supervisor answer %q has no committed=true|false", line)
	}
	r.committed = c
	return r, nil
}
