package handoff

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/wire"
)

// Environment of a spawned daemon. Listeners sit at fd 3, 4, ... in the
// order of LISTEN_FDNAMES (the systemd socket-activation convention). A
// successor also gets HANDOFF_ROLE=successor and HANDOFF_SOCK_FD, its end of
// the control socketpair. DetectRole clears all of them.
const (
	EnvListenFDs     = "LISTEN_FDS"
	EnvListenFDNames = "LISTEN_FDNAMES"
	EnvListenPID     = "LISTEN_PID"
	EnvRole          = "HANDOFF_ROLE"
	EnvSockFD        = "HANDOFF_SOCK_FD"
	// RoleSuccessorValue is the value of HANDOFF_ROLE for a successor.
	RoleSuccessorValue = "successor"
	// firstListenFD is the descriptor of the first inherited listener.
	firstListenFD = 3
)

// Role is the result of DetectRole: *ColdStart or *Successor.
type Role interface{ isRole() }

// ColdStart: the process was started by hand or cold-started by the
// supervisor. Inherited is never nil; it is empty when started by hand.
type ColdStart struct{ Inherited *InheritedListeners }

func (*ColdStart) isRole() {}

// Successor: the supervisor spawned this process to take over from the
// incumbent. Call Handshake next.
type Successor struct {
	inherited *InheritedListeners
	conn      *wire.Conn
}

func (*Successor) isRole() {}

// process-wide record of what DetectRole adopted, so the Incumbent can hand
// duplicates back to a restarted supervisor.
var (
	adoptedMu sync.Mutex
	adopted   *InheritedListeners
)

func setAdopted(il *InheritedListeners) {
	adoptedMu.Lock()
	adopted = il
	adoptedMu.Unlock()
}

func adoptedListeners() *InheritedListeners {
	adoptedMu.Lock()
	defer adoptedMu.Unlock()
	return adopted
}

// DetectRole reads the handoff environment, adopts the inherited
// descriptors (marking them close-on-exec) and clears the environment so
// grandchildren do not inherit it, whatever the outcome. Call it once,
// early in main; a second call finds the environment cleared and reports a
// cold start with nothing inherited.
func DetectRole() (Role, error) {
	env := map[string]string{}
	for _, k := range []string{EnvListenFDs, EnvListenFDNames, EnvListenPID, EnvRole, EnvSockFD} {
		env[k] = os.Getenv(k)
		os.Unsetenv(k)
	}
	il, err := adoptListeners(env)
	if err != nil {
		return nil, err
	}
	setAdopted(il)
	role, sockFD := env[EnvRole], env[EnvSockFD]
	switch role {
	case "":
		if sockFD != "" {
			il.Close()
			return nil, fmt.Errorf("handoff: %s is set but %s is not", EnvSockFD, EnvRole)
		}
		return &ColdStart{Inherited: il}, nil
	case RoleSuccessorValue:
		n := len(il.Names())
		fd, err := strconv.Atoi(sockFD)
		switch {
		case err != nil || fd < 0:
			il.Close()
			return nil, fmt.Errorf("handoff: %s=%q is not a descriptor number", EnvSockFD, sockFD)
		case fd < firstListenFD:
			il.Close()
			return nil, fmt.Errorf("handoff: %s=%d is a standard stream (0, 1 or 2)", EnvSockFD, fd)
		case fd < firstListenFD+n:
			il.Close()
			return nil, fmt.Errorf("handoff: %s=%d is one of the %d inherited listeners (fds %d..%d)", EnvSockFD, fd, n, firstListenFD, firstListenFD+n-1)
		}
		unix.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), "handoff-control")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			il.Close()
			return nil, fmt.Errorf("handoff: %s=%d: %w", EnvSockFD, fd, err)
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			il.Close()
			return nil, fmt.Errorf("handoff: %s=%d is not a unix socket", EnvSockFD, fd)
		}
		return &Successor{inherited: il, conn: wire.NewConn(uc)}, nil
	default:
		il.Close()
		return nil, fmt.Errorf("handoff: %s=%q: the only known role is %q", EnvRole, role, RoleSuccessorValue)
	}
}

// adoptListeners takes the descriptors that env (the activation variables
// read by DetectRole) describes.
func adoptListeners(env map[string]string) (*InheritedListeners, error) {
	il := newInheritedListeners()
	nstr := env[EnvListenFDs]
	if nstr == "" {
		return il, nil
	}
	if pid := env[EnvListenPID]; pid != "" && pid != strconv.Itoa(os.Getpid()) {
		// Meant for another process (systemd semantics): not ours.
		return il, nil
	}
	n, err := strconv.Atoi(nstr)
	if err != nil || n < 0 || n > 1024 {
		return nil, fmt.Errorf("handoff: %s=%q is not a count of descriptors", EnvListenFDs, nstr)
	}
	var names []string
	if s := env[EnvListenFDNames]; s != "" {
		names = strings.Split(s, ":")
	}
	if len(names) != 0 && len(names) != n {
		return nil, fmt.Errorf("handoff: %s has %d names for %s=%d", EnvListenFDNames, len(names), EnvListenFDs, n)
	}
	var errs []error
	for i := range n {
		fd := firstListenFD + i
		name := "fd" + strconv.Itoa(fd)
		if len(names) > 0 {
			name = names[i]
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			errs = append(errs, fmt.Errorf("handoff: inherited %q at fd %d: %w", name, fd, err))
			continue
		}
		unix.CloseOnExec(fd)
		if err := il.add(name, os.NewFile(uintptr(fd), name)); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		il.Close()
		return nil, errors.Join(errs...)
	}
	return il, nil
}
