package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCmd runs the command line args in-process.
func runCmd(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	code = exitCode(err, &errOut)
	return out.String(), errOut.String(), code
}

func TestHelpDocumentsEverything(t *testing.T) {
	out, _, code := runCmd(t, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{
		// commands and flags
		"run", "upgrade", "status", "version", "--config", "--binary", "--timeout", "--json",
		// every key
		"control_socket", "trigger_socket", "binary", "args", "env", "drain_grace_secs", "deadline_secs",
		"journal", "allowed_binaries", "allowed_uids", "metrics_addr", "log_format", "[[listeners]]", "name", "addr",
		// signals, systemd, metrics
		"SIGHUP", "SIGTERM", "SIGUSR2", "Type=notify-reload", "handoff_handoffs_total", "handoff_daemon_restarts_total",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q", want)
		}
	}
	// Every subcommand's --help prints it too.
	for _, cmd := range []string{"run", "upgrade", "status"} {
		if o, _, code := runCmd(t, cmd, "--help"); code != 0 || o != helpText {
			t.Errorf("%s --help: exit %d", cmd, code)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"run"},
		{"--config"},
		{"upgrade", "--bogus"},
		{"status", "--config", "x", "extra"},
		{"version", "x"},
	} {
		_, stderr, code := runCmd(t, args...)
		if code != 2 || !strings.Contains(stderr, "handoff-supervisor:") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
}

func TestVersion(t *testing.T) {
	out, _, code := runCmd(t, "version")
	if code != 0 || !strings.HasPrefix(out, "handoff-supervisor ") {
		t.Fatalf("exit %d, %q", code, out)
	}
}

// TestConfigErrorsNameKeyAndLine runs each command on a bad config.
func TestConfigErrorsNameKeyAndLine(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("control_socket = \"/run/c\"\ntrigger_socket = \"/run/t\"\nbinary = \"/bin/true\"\n\n[[listeners]]\nname = \"web\"\naddr = \"localhost\"\nport = 8080\n"), 0o644)
	for _, args := range [][]string{{"--config", bad}, {"run", "--config", bad}, {"upgrade", "--config", bad}, {"status", "--config", bad}} {
		_, stderr, code := runCmd(t, args...)
		if code != 1 || !strings.Contains(stderr, bad+":8: key listeners.port: unknown key") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
	os.WriteFile(bad, []byte("control_socket = \"/run/c\"\ntrigger_socket = \"/run/t\"\nbinary = \"/bin/true\"\n\n[[listeners]]\nname = \"web\"\naddr = \"localhost\"\n"), 0o644)
	_, stderr, code := runCmd(t, "--config", bad)
	if code != 1 || !strings.Contains(stderr, bad+":7: key listeners[0].addr: bad address \"localhost\"") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

// TestClientWithoutSupervisor: upgrade and status fail clearly when
// nothing serves the trigger socket.
func TestClientWithoutSupervisor(t *testing.T) {
	dir := shortDir(t)
	cfg := filepath.Join(dir, "c.toml")
	os.WriteFile(cfg, []byte("control_socket = \""+dir+"/c\"\ntrigger_socket = \""+dir+"/t\"\nbinary = \"/bin/true\"\n"), 0o644)
	for _, cmd := range []string{"upgrade", "status"} {
		_, stderr, code := runCmd(t, cmd, "--config", cfg)
		if code != 1 || !strings.Contains(stderr, "connect to the supervisor's trigger socket") {
			t.Errorf("%s: exit %d, stderr %q", cmd, code, stderr)
		}
	}
}
