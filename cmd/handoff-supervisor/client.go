package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/internal/okline"
)

// maxReply bounds a reply line read by the client commands.
const maxReply = 1 << 20

// noSupervisorError: nothing answers on the trigger socket, because its
// file does not exist or nothing listens on it.
type noSupervisorError struct {
	path   string // the trigger socket
	config string // the configuration file that names it
	err    error  // the connect error
}

func (e *noSupervisorError) Error() string {
	why := e.err.Error()
	switch {
	case errors.Is(e.err, syscall.ENOENT):
		why = "the socket file does not exist"
	case errors.Is(e.err, syscall.ECONNREFUSED):
		why = "nothing listens on the socket file: connection refused"
	}
	return fmt.Sprintf("no supervisor answers at %s (%s)", e.path, why)
}

func (e *noSupervisorError) Unwrap() error { return e.err }

// hint says what to check, for a person.
func (e *noSupervisorError) hint() string {
	return fmt.Sprintf("Check that the supervisor runs (e.g. systemctl status <its unit>) and that it uses the trigger_socket of %s.", e.config)
}

// ask sends one command line to the trigger socket named in cfg and
// returns the reply line. The whole exchange is bounded by timeout and
// ctx.
func ask(ctx context.Context, cfg *Config, line string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", cfg.TriggerSocket)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return "", &noSupervisorError{path: cfg.TriggerSocket, config: cfg.path, err: err}
		}
		if errors.Is(err, syscall.EACCES) {
			return "", fmt.Errorf("connect to the supervisor's trigger socket %s: %w (only the supervisor's user, root and allowed_uids may use it)", cfg.TriggerSocket, err)
		}
		return "", fmt.Errorf("connect to the supervisor's trigger socket: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	// A write error is not final: the supervisor may have answered (and
	// closed) before reading, e.g. "err: permission denied".
	_, werr := io.WriteString(c, line+"\n")
	reply, err := readLine(c, maxReply)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("no reply within %v: %w", timeout, ctx.Err())
		}
		return "", fmt.Errorf("read the supervisor's reply: %w", errors.Join(err, werr))
	}
	return reply, nil
}

// exitError ends the program with code without printing anything more:
// the command has already said what happened.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// upgradeReplySlack is added to twice deadline_secs for the client's wait:
// the successor's start, the handoff itself and a rollback all fit in it.
const upgradeReplySlack = 30 * time.Second

type upgradeOptions struct {
	config, binary string
	timeout        time.Duration
}

// upgradeFlags defines the upgrade command's flags.
func upgradeFlags() (*flag.FlagSet, *upgradeOptions) {
	fs := newFlagSet("upgrade")
	o := &upgradeOptions{}
	fs.StringVar(&o.config, "config", "", "the configuration `file` (required)")
	fs.StringVar(&o.binary, "binary", "", "hand off to `PATH` instead of the configured binary; it must be binary or one of allowed_binaries")
	fs.DurationVar(&o.timeout, "timeout", 0, "wait at most `D` for the outcome, e.g. 3m (default: 2 x deadline_secs + 30s)")
	return fs, o
}

// runUpgrade asks the running supervisor for a handoff and waits for its
// outcome; it succeeds only when the handoff committed.
func runUpgrade(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, o := upgradeFlags()
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	cfg, err := loadConfigFlag(o.config)
	if err != nil {
		return err
	}
	line := "handoff"
	if o.binary != "" {
		abs, err := filepath.Abs(o.binary)
		if err != nil {
			return fmt.Errorf("--binary: %w", err)
		}
		line += " " + abs
	}
	if o.timeout <= 0 {
		o.timeout = 2*cfg.deadline() + upgradeReplySlack
	}
	reply, err := ask(ctx, cfg, line, o.timeout)
	if err != nil {
		return err
	}
	answer, code, err := upgradeAnswer(reply)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, answer)
	if code != exitOK {
		return &exitError{code}
	}
	return nil
}

// upgradeAnswer words the supervisor's reply to a handoff for a person
// and picks the exit status: 0 only for a handoff that committed. The
// protocol's "ok:" means that the handoff ran, not that it committed.
func upgradeAnswer(reply string) (string, int, error) {
	if _, ok := strings.CutPrefix(reply, "err: "); ok {
		return reply, exitFailure, nil
	}
	rest, ok := strings.CutPrefix(reply, "ok: ")
	if !ok {
		return "", exitFailure, fmt.Errorf("unexpected reply from the supervisor: %q", reply)
	}
	f, err := okline.Fields(rest)
	if err != nil {
		return "", exitFailure, fmt.Errorf("unexpected reply from the supervisor %q: %w", reply, err)
	}
	switch f["committed"] {
	case "true":
		passed := ""
		if n := f["passed_conns"]; n != "" && n != "0" {
			passed = ", " + n + " established connections passed"
		}
		return fmt.Sprintf("committed: handoff %s, now serving pid %s, build %s (accept gap %s, library overhead %s%s)",
			orDash(f["id"]), orDash(f["pid"]), orDash(f["build_id"]), orDash(f["accept_gap"]), orDash(f["library_overhead"]), passed), exitOK, nil
	case "false":
		reason := f["reason"]
		if reason == "" {
			reason = "no reason given"
		}
		return fmt.Sprintf("rolled back: %s (handoff %s)", reason, orDash(f["id"])), exitFailure, nil
	}
	return "", exitFailure, fmt.Errorf("unexpected reply from the supervisor (committed=%q): %q", f["committed"], reply)
}

// statusTimeout bounds the status command's exchange.
const statusTimeout = 10 * time.Second

type statusOptions struct {
	config string
	json   bool
}

// statusFlags defines the status command's flags.
func statusFlags() (*flag.FlagSet, *statusOptions) {
	fs := newFlagSet("status")
	o := &statusOptions{}
	fs.StringVar(&o.config, "config", "", "the configuration `file` (required)")
	fs.BoolVar(&o.json, "json", false, "print the status as one JSON object")
	return fs, o
}

// runStatus prints the running supervisor's status.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, o := statusFlags()
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	cfg, err := loadConfigFlag(o.config)
	if err != nil {
		return err
	}
	reply, err := ask(ctx, cfg, "status", statusTimeout)
	if err != nil {
		return err
	}
	body, r, err := statusAnswer(reply)
	switch {
	case errors.Is(err, errNotOK):
		fmt.Fprintln(stderr, reply)
		return &exitError{exitFailure}
	case err != nil:
		return err
	case o.json:
		_, err := fmt.Fprintln(stdout, body)
		return err
	}
	return writeStatus(stdout, r)
}

// errNotOK: the supervisor refused ("err: ...") or said something else.
var errNotOK = errors.New("not an ok: reply")

// statusAnswer decodes the supervisor's reply to status: its JSON body
// and the report that holds.
func statusAnswer(reply string) (string, statusReport, error) {
	var r statusReport
	body, ok := strings.CutPrefix(reply, "ok: ")
	if !ok {
		return "", r, errNotOK
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return "", r, fmt.Errorf("decode the supervisor's status %.100q: %w", body, err)
	}
	return body, r, nil
}
