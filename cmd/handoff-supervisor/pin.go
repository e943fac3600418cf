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
// (argv[0] is then that path too). A binary rewritten in place, under the
// same inode, is not protected: the descriptor sees the new content.
type pinnedBinary struct {
	path     string // canonical path it was known-good under
	f        *os.File
	dev, ino uint64
}

// pinBinary opens what pid executes (its /proc/<pid>/exe, exactly the
// file that proved good) or, when that is gone, the file at path.
func pinBinary(path string, pid int) (*pinnedBinary, error) {
	var f *os.File
	if pid > 0 {
		f, _ = os.Open("/proc/" + strconv.Itoa(pid) + "/exe") // nil when pid is gone
	}
	if f == nil {
		var err error
		if f, err = os.Open(path); err != nil {
			return nil, fmt.Errorf("pin the known-good binary %s: %w", path, err)
		}
	}
	p, err := newPinned(path, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return p, nil
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
