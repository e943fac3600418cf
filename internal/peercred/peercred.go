// Package peercred reads and checks the credentials of a unix-socket peer
// (SO_PEERCRED, taken by the kernel when the peer connected).
package peercred

import (
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Get returns the credentials of c's peer.
func Get(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("handoff: peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("handoff: peer credentials: %w", err)
	}
	if credErr != nil {
		return nil, fmt.Errorf("handoff: peer credentials: %w", credErr)
	}
	return cred, nil
}

// CheckSameUser allows peers running as root or as this process's uid and
// returns the peer's pid (also when it refuses).
func CheckSameUser(c *net.UnixConn) (int, error) {
	cred, err := Get(c)
	if err != nil {
		return 0, err
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Getuid() {
		return int(cred.Pid), fmt.Errorf("handoff: control peer pid %d runs as uid %d, not %d or root: refused", cred.Pid, cred.Uid, os.Getuid())
	}
	return int(cred.Pid), nil
}
