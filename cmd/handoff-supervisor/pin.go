package main

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// pinnedBinary is the known-good binary held open: a package manager that
// replaces the file at its path (a rename over it) does not change what
// the supervisor restarts after a crash. The path stays what logs, status
// and argv[0] show while it still names the pinned file; once it names
// another file, the pinned one is started through /proc/<our pid>/fd/<n>
// (argv[0] is then that path too). That works for a #! script as well:
// the kernel hands the interpreter that path, which the daemon (our uid)
// can open while we hold the descriptor. A binary rewritten in place,
// under the same inode, is not protected: the descriptor sees the new
// content.
//
// What is pinned is the file at the configured path, opened right before
// the spawn that proves it good, never /proc/<pid>/exe of the daemon:
// for a script that is its interpreter, for a wrapper that execs another
// program that program, and either would then be started with the
// daemon's arguments.
type pinnedBinary struct {
	path     string // canonical path it was known-good under
	f        *os.File
	dev, ino uint64
}

// openPin opens the file at path (read-only, close-on-exec, so no daemon
// inherits it). Called right before a spawn of path, it holds the file
// that spawn executes; the caller keeps it once the daemon proves good.
func openPin(path string) (*pinnedBinary, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("pin the known-good binary %s: %w", path, err)
	}
	p, err := newPinned(path, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return p, nil
}

// pinRunning pins the file a daemon this image did not start (resumed
// from the journal, or adopted after a re-exec that passed no pin) was
// started from: its /proc/<pid>/exe when that is the file at path (a
// binary started directly and not replaced since), else the file at path,
// as /proc/<pid>/exe of a script or wrapper is some other program.
func pinRunning(path string, pid int) (*pinnedBinary, error) {
	byPath, err := openPin(path)
	if err != nil || pid <= 0 {
		return byPath, err
	}
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil {
		return byPath, nil // gone, or not ours to look at
	}
	exe, err := newPinned(path, f)
	if err != nil {
		f.Close()
		return byPath, nil
	}
	if exe.dev != byPath.dev || exe.ino != byPath.ino {
		exe.close()
		return byPath, nil
	}
	byPath.close()
	return exe, nil
}

// newPinned takes f, an open executable known good under path.
func newPinned(path string, f *os.File) (*pinnedBinary, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("pin the known-good binary %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("pin the known-good binary %s: not a regular file", path)
	}
	return &pinnedBinary{path: path, f: f, dev: st.Dev, ino: st.Ino}, nil
}

// replaced reports whether the file at the path is no longer the pinned one.
func (p *pinnedBinary) replaced() bool {
	var st unix.Stat_t
	if err := unix.Stat(p.path, &st); err != nil {
		return true
	}
	return st.Dev != p.dev || st.Ino != p.ino
}

// exe is what to execute to start the pinned binary: its path while that
// still names it, else the descriptor.
func (p *pinnedBinary) exe() string {
	if !p.replaced() {
		return p.path
	}
	return p.fdPath()
}

func (p *pinnedBinary) fdPath() string {
	return "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(int(p.f.Fd()))
}

func (p *pinnedBinary) close() {
	if p != nil {
		p.f.Close()
	}
}
