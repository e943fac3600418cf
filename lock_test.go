//go:build linux

package handoff

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/atomicfile"
	"github.com/handoff-go/handoff/internal/fdutil"
	"github.com/handoff-go/handoff/internal/testutil"
	"github.com/handoff-go/handoff/internal/wire"
	"golang.org/x/sys/unix"
)

// TestMain lets the test binary double as the lock tests' child
// (HANDOFF_TEST_ROLE=child): TC_MODE=lock takes the lock on TC_DIR (with
// TC_GRANDCHILD set, leaks its descriptor into a grandchild), TC_MODE=hold
// only holds what it inherited; each reports in the file TC_OUT.
func TestMain(m *testing.M) {
	switch os.Getenv("HANDOFF_TEST_ROLE") {
	case "child":
		os.Exit(lockChild())
	case "run":
		os.Exit(runDaemon())
	}
	os.Exit(m.Run())
}

func lockChild() int {
	out := os.Getenv("TC_OUT")
	report := func(s string) {
		if err := atomicfile.WriteFile(out, []byte(s), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "report:", err)
		}
	}
	switch os.Getenv("TC_MODE") {
	case "lock":
		l, err := AcquireDataDirLock(os.Getenv("TC_DIR"))
		if err != nil {
			report("error: " + err.Error())
			return 1
		}
		if os.Getenv("TC_GRANDCHILD") != "" {
			// Leak the lock's descriptor into a grandchild on purpose.
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), "TC_MODE=hold", "TC_OUT="+out+".grandchild")
			cmd.ExtraFiles = []*os.File{l.f}
			if err := cmd.Start(); err != nil {
				report("error: " + err.Error())
				return 1
			}
			report("locked " + strconv.Itoa(cmd.Process.Pid))
		} else {
			report("locked")
		}
		select {}
	case "hold":
		report("holding")
		select {}
	}
	return 9
}

var (
	must       = testutil.Must
	waitFor    = testutil.WaitFor
	shortDir   = testutil.ShortDir
	checkLeaks = testutil.CheckLeaks
)

// lockFileWatch holds a read-only descriptor on a data directory's lock
// file. Inode numbers alone prove nothing (ext4 hands a freed one to the
// next new file); an open descriptor on the original inode does: its link
// count drops to 0 if the file is unlinked, and path must still name it.
type lockFileWatch struct {
	path string
	f    *os.File
}

func watchLockFile(t *testing.T, dir string) *lockFileWatch {
	t.Helper()
	path := filepath.Join(dir, wire.LockFileName)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &lockFileWatch{path: path, f: f}
}

// check fails unless the watched inode is still the lock file, linked once.
func (w *lockFileWatch) check(t *testing.T, step string) {
	t.Helper()
	var fst, pst unix.Stat_t
	if err := fdutil.Control(w.f, func(fd int) error { return unix.Fstat(fd, &fst) }); err != nil {
		t.Fatalf("%s: fstat lock file: %v", step, err)
	}
	if fst.Nlink != 1 {
		t.Fatalf("%s: the lock file has %d links, want 1 (it was unlinked or linked elsewhere)", step, fst.Nlink)
	}
	if err := unix.Stat(w.path, &pst); err != nil {
		t.Fatalf("%s: %v", step, err)
	}
	if pst.Ino != fst.Ino || pst.Dev != fst.Dev {
		t.Fatalf("%s: %s is inode %d, the lock file was %d: it was replaced", step, w.path, pst.Ino, fst.Ino)
	}
}

// startLockChild starts a child that takes the lock on dir and reports it
// in a marker file; it returns the child and the marker's content.
func startLockChild(t *testing.T, dir string, grandchild bool) (*exec.Cmd, string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "HANDOFF_TEST_ROLE=child", "TC_MODE=lock", "TC_DIR="+dir, "TC_OUT="+out)
	if grandchild {
		cmd.Env = append(cmd.Env, "TC_GRANDCHILD=1")
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var msg string
	waitFor(t, "the child's lock marker", func() bool {
		b, err := os.ReadFile(out)
		msg = string(b)
		return err == nil
	})
	if !strings.HasPrefix(msg, "locked") {
		t.Fatalf("child: %s", msg)
	}
	if grandchild {
		waitFor(t, "the grandchild's marker", func() bool { _, err := os.Stat(out + ".grandchild"); return err == nil })
	}
	return cmd, msg
}

func TestLockAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	l, err := AcquireDataDirLock(dir)
	if err != nil {
		t.Fatal(err)
	}
	lf := watchLockFile(t, dir)
	if _, err := AcquireDataDirLock(dir); !errors.Is(err, ErrLockHeld) {
		t.Fatalf("second acquire in-process: %v, want ErrLockHeld", err)
	}
	lf.check(t, "second acquire")
	must(t, l.Release())
	must(t, l.Release()) // idempotent
	lf.check(t, "release")

	t.Run("held by a live child names its pid", func(t *testing.T) {
		cmd, _ := startLockChild(t, dir, false)
		_, err := AcquireDataDirLock(dir)
		var held *LockHeldError
		if !errors.As(err, &held) || !errors.Is(err, ErrLockHeld) || held.HolderPID != cmd.Process.Pid {
			t.Fatalf("acquire: %v (holder %+v), want ErrLockHeld naming pid %d", err, held, cmd.Process.Pid)
		}
		if !strings.Contains(err.Error(), strconv.Itoa(cmd.Process.Pid)) {
			t.Fatalf("error %q does not name the holder", err)
		}
		lf.check(t, "acquire while a child holds it")
		// It refuses at once: no retry (which would end in ErrTimeout).
		retries := 0
		_, err = acquireBreakingStale(dir, func() { retries++ })
		if !errors.As(err, &held) || held.StaleHolder || held.HolderPID != cmd.Process.Pid || errors.Is(err, ErrTimeout) || retries != 0 {
			t.Fatalf("break-stale on a live holder: %v (%+v, %d retries), want a refusal at once naming pid %d", err, held, retries, cmd.Process.Pid)
		}
		lf.check(t, "break-stale on a live holder")
		// SIGKILL frees it: the kernel drops the flock with the last descriptor.
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		l, err := AcquireDataDirLockOrBreakStale(dir)
		if err != nil {
			t.Fatalf("acquire after SIGKILL: %v", err)
		}
		if pid := readPID(dir); pid != os.Getpid() {
			t.Fatalf("pid file names %d, want us", pid)
		}
		lf.check(t, "break-stale after SIGKILL")
		must(t, l.Release())
		lf.check(t, "release")
	})

	t.Run("descriptor inherited by a grandchild keeps it held", func(t *testing.T) {
		cmd, msg := startLockChild(t, dir, true)
		gpid, _ := strconv.Atoi(strings.TrimPrefix(msg, "locked "))
		t.Cleanup(func() { syscall.Kill(gpid, syscall.SIGKILL) })
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		_, err := AcquireDataDirLockOrBreakStale(dir)
		var held *LockHeldError
		if !errors.As(err, &held) || !held.StaleHolder || held.HolderPID != cmd.Process.Pid || !errors.Is(err, ErrTimeout) {
			t.Fatalf("break-stale with a grandchild holding the descriptor: %v (%+v)", err, held)
		}
		lf.check(t, "break-stale with a grandchild holding the descriptor")

		// A live process is recorded as the holder while break-stale
		// waits: it must name that process, not call it dead, and stop
		// waiting (a wait to the end would match ErrTimeout). The pid
		// file is written on the first retry, so it is read again.
		retries := 0
		_, err = acquireBreakingStale(dir, func() {
			if retries++; retries == 1 {
				writePIDFile(dir, gpid)
			}
		})
		if !errors.As(err, &held) || held.StaleHolder || held.HolderPID != gpid || errors.Is(err, ErrTimeout) || retries != 1 {
			t.Fatalf("break-stale after a live holder was recorded: %v (%+v, %d retries), want pid %d not stale after one retry", err, held, retries, gpid)
		}
		lf.check(t, "break-stale with a live recorded holder")

		syscall.Kill(gpid, syscall.SIGKILL)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, err := AcquireDataDirLockWait(ctx, dir)
		if err != nil {
			t.Fatalf("acquire after the grandchild died: %v", err)
		}
		lf.check(t, "acquire after the grandchild died")
		must(t, l.Release())
		lf.check(t, "release")
	})
	lf.check(t, "end")
}

func TestLockRejectsEmptyDir(t *testing.T) {
	if _, err := AcquireDataDirLock(""); err == nil {
		t.Fatal("empty dir accepted")
	}
	if _, err := AcquireDataDirLock(filepath.Join(t.TempDir(), "missing")); err == nil || errors.Is(err, ErrLockHeld) {
		t.Fatalf("missing dir: %v", err)
	}
}

// The holder's pid comes from the kernel's lock table: a lost or never
// written pid file does not hide who holds the lock.
func TestLockHolderWithoutPIDFile(t *testing.T) {
	dir := t.TempDir()
	cmd, _ := startLockChild(t, dir, false)
	must(t, os.Remove(filepath.Join(dir, wire.PIDFileName)))
	_, err := AcquireDataDirLock(dir)
	var held *LockHeldError
	if !errors.As(err, &held) || held.HolderPID != cmd.Process.Pid {
		t.Fatalf("lock held by pid %d, no pid file: %v (%+v), want that pid named", cmd.Process.Pid, err, held)
	}
}

// Taking the lock needs no free space: the pid file is advisory, and a
// full filesystem only leaves it unwritten. The test mounts a small tmpfs
// and fills it, so it needs root.
func TestLockOnFullFilesystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	fill, err := os.Create(filepath.Join(dir, "fill"))
	must(t, err)
	_, err = fill.Write(make([]byte, 1<<20))
	fill.Close()
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the tmpfs: %v, want ENOSPC", err)
	}
	l, err := AcquireDataDirLock(dir)
	if err != nil {
		t.Fatalf("lock on a full filesystem: %v", err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	out := filepath.Join(t.TempDir(), "out")
	cmd.Env = append(os.Environ(), "HANDOFF_TEST_ROLE=child", "TC_MODE=lock", "TC_DIR="+dir, "TC_OUT="+out)
	must(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, "the child's lock attempt", func() bool { _, err := os.Stat(out); return err == nil })
	if b, _ := os.ReadFile(out); !strings.Contains(string(b), strconv.Itoa(os.Getpid())) {
		t.Fatalf("a second process on the full filesystem: %q, want the lock held by us (pid %d)", b, os.Getpid())
	}
	must(t, l.Release())
	l, err = AcquireDataDirLockOrBreakStale(dir)
	if err != nil {
		t.Fatalf("break-stale lock on a full filesystem: %v", err)
	}
	must(t, l.Release())
}
