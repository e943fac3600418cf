package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/testutil"
)

// refusalTimeout bounds a supervisor run that must refuse to start.
const refusalTimeout = 15 * time.Second

// runRefused runs the supervisor on the fixture's config, which it must
// refuse before starting anything: it returns its stderr once it exited
// with status 1. One that starts anyway is stopped and fails the test.
func (f *fixture) runRefused(t *testing.T) string {
	t.Helper()
	cmd := supervisorCmd(context.Background(), t, "--config", f.cfg)
	var stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.WaitDelay = 5 * time.Second
	testutil.Must(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitFailure {
			t.Fatalf("supervisor exit: %v, want status 1; output:\n%s", err, stderr.String())
		}
	case <-time.After(refusalTimeout):
		cmd.Process.Signal(syscall.SIGTERM)
		<-exited
		f.killDaemons(t)
		t.Fatalf("the supervisor started (still running after %v) instead of refusing; output:\n%s", refusalTimeout, stderr.String())
	}
	if n := len(f.spawned(t)); n != 0 {
		t.Errorf("%d daemons started before the refusal", n)
	}
	return stderr.String()
}

// precious writes a regular file that nothing may replace or remove.
func precious(t *testing.T, path string) {
	t.Helper()
	testutil.Must(t, os.WriteFile(path, []byte("precious\n"), 0o644))
}

// checkPrecious fails unless path is still the file precious wrote.
func checkPrecious(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("%s is no longer the regular file it was: %v, %v", path, fi, err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "precious\n" {
		t.Fatalf("%s changed: %q, %v", path, b, err)
	}
}

// TestRefusesSocketPathsThatAreNoSocket starts supervisor processes whose
// trigger or control socket path names something other than a socket
// (a regular file, the config file, the journal, a listener's path, a
// symbolic link), lies in a missing directory, or is too long for a
// socket address: each is refused before anything starts, naming the key,
// and the file is left as it was.
func TestRefusesSocketPathsThatAreNoSocket(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup edits the fixture and returns a file that must survive
		// ("" for none).
		setup func(t *testing.T, f *fixture) string
		want  []string // in stderr; {cfg} and {dir} are replaced
	}{
		{"trigger is a regular file", func(t *testing.T, f *fixture) string {
			p := filepath.Join(f.dir, "trigger.sock")
			precious(t, p)
			return p
		}, []string{"{cfg}:2: key trigger_socket: {dir}/trigger.sock exists and is a regular file, not a socket; the supervisor would replace it with its trigger socket: refusing to start"}},
		{"trigger is the config file", func(t *testing.T, f *fixture) string {
			f.editConfig(t, filepath.Join(f.dir, "trigger.sock"), f.cfg)
			return ""
		}, []string{"{cfg}:2: key trigger_socket: \"{cfg}\" is also the configuration file"}},
		{"trigger is the journal", func(t *testing.T, f *fixture) string {
			f.editConfig(t, filepath.Join(f.dir, "trigger.sock"), filepath.Join(f.dir, "journal"))
			precious(t, filepath.Join(f.dir, "journal"))
			return filepath.Join(f.dir, "journal")
		}, []string{"key journal: \"{dir}/journal\" is also trigger_socket"}},
		{"trigger is the control socket", func(t *testing.T, f *fixture) string {
			f.editConfig(t, filepath.Join(f.dir, "trigger.sock"), filepath.Join(f.dir, "control.sock"))
			return ""
		}, []string{"{cfg}:2: key trigger_socket: \"{dir}/control.sock\" is also control_socket"}},
		{"trigger inside a listener", func(t *testing.T, f *fixture) string {
			f.editConfig(t, filepath.Join(f.dir, "trigger.sock"), filepath.Join(f.dir, "web.sock", "t"))
			return ""
		}, []string{"key listeners[0].addr: \"{dir}/web.sock\" would have to be a directory holding trigger_socket ({dir}/web.sock/t)"}},
		{"trigger is a symbolic link", func(t *testing.T, f *fixture) string {
			p := filepath.Join(f.dir, "target")
			precious(t, p)
			testutil.Must(t, os.Symlink(p, filepath.Join(f.dir, "trigger.sock")))
			return p
		}, []string{"{cfg}:2: key trigger_socket: {dir}/trigger.sock exists and is a symbolic link, not a socket"}},
		{"trigger in a missing directory", func(t *testing.T, f *fixture) string {
			f.editConfig(t, filepath.Join(f.dir, "trigger.sock"), filepath.Join(f.dir, "none", "trigger.sock"))
			return ""
		}, []string{"{cfg}:2: key trigger_socket: the directory {dir}/none does not exist"}},
		{"trigger too long", func(t *testing.T, f *fixture) string {
			long := filepath.Join(f.dir, strings.Repeat("t", 100-len(f.dir)))
			f.editConfig(t, filepath.Join(f.dir, "trigger.sock"), long)
			return ""
		}, []string{"{cfg}:2: key trigger_socket: ", "is 101 bytes long; at most 97 fit: a unix socket address holds 107 bytes"}},
		{"control is a regular file", func(t *testing.T, f *fixture) string {
			p := filepath.Join(f.dir, "control.sock")
			precious(t, p)
			return p
		}, []string{"{cfg}:1: key control_socket: {dir}/control.sock exists and is a regular file, not a socket; the daemon would replace it with its control socket"}},
		{"control in a missing directory", func(t *testing.T, f *fixture) string {
			f.editConfig(t, filepath.Join(f.dir, "control.sock"), filepath.Join(f.dir, "none", "control.sock"))
			return ""
		}, []string{"{cfg}:1: key control_socket: the directory {dir}/none does not exist"}},
		{"control too long", func(t *testing.T, f *fixture) string {
			long := filepath.Join(f.dir, strings.Repeat("c", 100-len(f.dir)))
			f.editConfig(t, filepath.Join(f.dir, "control.sock"), long)
			return ""
		}, []string{"{cfg}:1: key control_socket: ", "is 101 bytes long; at most 94 fit"}},
		{"listener is a regular file", func(t *testing.T, f *fixture) string {
			precious(t, f.web)
			return f.web
		}, []string{"key listeners[0].addr: {dir}/web.sock exists and is a regular file, not a socket"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			keep := tc.setup(t, f)
			cfg, err := os.ReadFile(f.cfg)
			testutil.Must(t, err)
			stderr := f.runRefused(t)
			for _, w := range tc.want {
				w = strings.ReplaceAll(strings.ReplaceAll(w, "{cfg}", f.cfg), "{dir}", f.dir)
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if keep != "" {
				checkPrecious(t, keep)
			}
			if now, err := os.ReadFile(f.cfg); err != nil || string(now) != string(cfg) {
				t.Fatalf("the config file changed: %v", err)
			}
		})
	}
}

// TestReplacesStaleSockets: a trigger socket, control socket and listener
// left by a supervisor and daemon that died (nothing answers on them) are
// still replaced, and the supervisor starts.
func TestReplacesStaleSockets(t *testing.T) {
	f := newFixture(t)
	for _, p := range []string{filepath.Join(f.dir, "trigger.sock"), filepath.Join(f.dir, "control.sock"), f.web} {
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
		testutil.Must(t, err)
		ln.SetUnlinkOnClose(false)
		ln.Close()
	}
	sup := f.startSupervisor(t, nil)
	_, pid := f.hello(t)
	f.stopAndCheck(t, sup, pid)
}
