package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

// mountTmpfs mounts a tmpfs of size bytes at dir (made if missing) for the
// rest of the test, and skips the test where it cannot (not root, or no
// mount permission).
func mountTmpfs(t *testing.T, dir string, size int) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skipf("needs root to mount a tmpfs (running as uid %d)", os.Getuid())
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.Itoa(size)); err != nil {
		t.Skipf("cannot mount a tmpfs at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// TestRefusesUnwritableJournal starts supervisor processes whose journal
// cannot be replaced: its directory read-only (a read-only mount as root,
// mode 0555 otherwise) with a journal in it, full, not a directory, or
// the journal a directory itself. Each is refused before anything starts,
// naming the key, the path and why, and an existing journal is left
// exactly as it was.
func TestRefusesUnwritableJournal(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup returns the journal path to configure and a file that
		// must survive ("" for none).
		setup func(t *testing.T, f *fixture) (journal, keep string)
		want  []string // {cfg}, {dir} replaced
	}{
		{"read-only directory", func(t *testing.T, f *fixture) (string, string) {
			dir := filepath.Join(f.dir, "state")
			j := filepath.Join(dir, "journal")
			if os.Getuid() != 0 {
				testutil.Must(t, os.Mkdir(dir, 0o755))
				precious(t, j)
				testutil.Must(t, os.Chmod(dir, 0o555))
				t.Cleanup(func() { os.Chmod(dir, 0o755) })
				return j, j
			}
			mountTmpfs(t, dir, 1<<20)
			precious(t, j)
			if err := syscall.Mount("", dir, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
				t.Skipf("cannot remount %s read-only: %v", dir, err)
			}
			return j, j
		}, []string{"{cfg}:8: key journal: the journal {dir}/state/journal cannot be written: the supervisor replaces it through a temporary file in {dir}/state, and creating one failed: "}},
		{"full filesystem", func(t *testing.T, f *fixture) (string, string) {
			dir := filepath.Join(f.dir, "state")
			mountTmpfs(t, dir, 64<<10)
			j := filepath.Join(dir, "journal")
			precious(t, j)
			fill, err := os.Create(filepath.Join(dir, "fill"))
			testutil.Must(t, err)
			defer fill.Close()
			for {
				if _, err := fill.Write(make([]byte, 4096)); err != nil {
					if !errors.Is(err, syscall.ENOSPC) {
						t.Fatal(err)
					}
					break
				}
			}
			return j, j
		}, []string{"{cfg}:8: key journal: the journal {dir}/state/journal cannot be written: ", "no space left on device"}},
		{"directory is a file", func(t *testing.T, f *fixture) (string, string) {
			p := filepath.Join(f.dir, "state")
			precious(t, p)
			return filepath.Join(p, "journal"), p
		}, []string{"{cfg}:8: key journal: a parent of {dir}/state/journal is not a directory"}},
		{"journal is a directory", func(t *testing.T, f *fixture) (string, string) {
			p := filepath.Join(f.dir, "state")
			testutil.Must(t, os.Mkdir(p, 0o755))
			return p, ""
		}, []string{"{cfg}:8: key journal: {dir}/state exists and is a directory, not a regular file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			journal, keep := tc.setup(t, f)
			f.editConfig(t, filepath.Join(f.dir, "journal"), journal)
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
			if ents, err := os.ReadDir(filepath.Dir(journal)); err == nil {
				for _, e := range ents {
					if strings.Contains(e.Name(), ".probe-") {
						t.Errorf("probe file left behind: %s", e.Name())
					}
				}
			}
		})
	}
}

// TestJournalCheckKeepsJournal: the check of a writable journal leaves
// the journal exactly as it was and nothing beside it.
func TestJournalCheckKeepsJournal(t *testing.T) {
	dir := t.TempDir()
	j := filepath.Join(dir, "journal")
	precious(t, j)
	c := &Config{path: "h.toml", Journal: j}
	if err := c.checkJournal(); err != nil {
		t.Fatal(err)
	}
	checkPrecious(t, j)
	ents, err := os.ReadDir(dir)
	testutil.Must(t, err)
	if len(ents) != 1 {
		t.Fatalf("files beside the journal after the check: %v", ents)
	}
	// Absent, it is not created either.
	testutil.Must(t, os.Remove(j))
	testutil.Must(t, c.checkJournal())
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("files after checking an absent journal: %v", ents)
	}
}
