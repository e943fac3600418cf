//go:build linux

package handoff

import (
	"os"

	"golang.org/x/sys/unix"
)

// rawControl runs fn with the raw descriptor of f without calling f.Fd.
func rawControl(f *os.File, fn func(fd uintptr)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(fn)
}

func closeFD(fd int) { unix.Close(fd) }
