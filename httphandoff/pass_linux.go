package httphandoff

import "syscall"

// boundaryRawConn is the RawConn a boundary read waits on for readiness
// without reading (see passConn).
func boundaryRawConn(sc syscall.Conn) syscall.RawConn {
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

func readFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err == syscall.EINTR {
			continue
		}
		return n, err
	}
}
