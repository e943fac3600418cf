package handoff

import (
	"os"
)

// rawControl runs fn with the raw descriptor of f without calling f.Fd.
func rawControl(f *os.File, fn func(fd uintptr)) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(fn)
}
