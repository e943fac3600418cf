//go:build !linux

package httphandoff

import "syscall"

// boundaryRawConn: connections are passed only on Linux; elsewhere a
// boundary read is a plain Read, woken by a deadline.
func boundaryRawConn(syscall.Conn) syscall.RawConn { return nil }

func readFD(uintptr, []byte) (int, error) { return 0, syscall.EINVAL }
