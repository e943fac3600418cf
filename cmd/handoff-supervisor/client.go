package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"time"
)

// maxReply bounds a reply line read by the client commands.
const maxReply = 1 << 20

// ask sends one command line to the trigger socket at path and returns the
// reply line. The whole exchange is bounded by timeout and ctx.
func ask(ctx context.Context, path, line string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
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

// runUpgrade asks the running supervisor for a handoff and waits for its
// outcome; it succeeds only when the handoff committed.
func runUpgrade(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("upgrade")
	config := fs.String("config", "", "configuration `file` (required)")
	binary := fs.String("binary", "", "hand off to this `path` instead of the configured binary; it must be binary or one of allowed_binaries")
	timeout := fs.Duration("timeout", 0, "how long to wait for the outcome (default: 2×deadline_secs + 30s)")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	cfg, err := loadConfigFlag(*config)
	if err != nil {
		return err
	}
	line := "handoff"
	if *binary != "" {
		abs, err := filepath.Abs(*binary)
		if err != nil {
			return fmt.Errorf("--binary: %w", err)
		}
		line += " " + abs
	}
	if *timeout <= 0 {
		*timeout = 2*cfg.deadline() + upgradeReplySlack
	}
	reply, err := ask(ctx, cfg.TriggerSocket, line, *timeout)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, reply)
	rest, ok := strings.CutPrefix(reply, "ok: ")
	if !ok {
		return &exitError{1}
	}
	fields, err := parseFields(rest)
	if err != nil {
		return fmt.Errorf("unexpected reply: %w", err)
	}
	if fields["committed"] != "true" {
		return &exitError{1}
	}
	return nil
}

// statusTimeout bounds the status command's exchange.
const statusTimeout = 10 * time.Second

// runStatus prints the running supervisor's status.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status")
	config := fs.String("config", "", "configuration `file` (required)")
	asJSON := fs.Bool("json", false, "print the status as one JSON object")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	cfg, err := loadConfigFlag(*config)
	if err != nil {
		return err
	}
	reply, err := ask(ctx, cfg.TriggerSocket, "status", statusTimeout)
	if err != nil {
		return err
	}
	body, ok := strings.CutPrefix(reply, "ok: ")
	if !ok {
		fmt.Fprintln(stderr, reply)
		return &exitError{1}
	}
	if *asJSON {
		_, err := fmt.Fprintln(stdout, body)
		return err
	}
	var r statusReport
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return fmt.Errorf("decode the supervisor's status: %w", err)
	}
	return writeStatus(stdout, r)
}
