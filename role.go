//go:build linux

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

// Role is the result of DetectRole: *ColdStart or *Successor.
type Role interface{ isRole() }

// ColdStart: the process was started by hand or cold-started by the
// supervisor. Inherited is never nil; it is empty when started by hand.
type ColdStart struct {
	Inherited *InheritedListeners

	conns    []PassedConn
	connsErr error
}

// Conns returns the established connections the supervisor held when it
// cold-started this process (it does when the incumbent died after
// passing them for a handoff): serve them once serving
// (ConnPasser.AdoptConns). The error says why some may be missing. It
// hands them over once; later calls return none.
func (c *ColdStart) Conns() ([]PassedConn, error) {
	conns, err := c.conns, c.connsErr
	c.conns, c.connsErr = nil, nil
	return conns, err
}

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
// It also keeps the control socket path the supervisor passed, for a
// daemon that names none itself.
var (
	adoptedMu      sync.Mutex
	adopted        *InheritedListeners
	adoptedControl string
)

func setAdopted(il *InheritedListeners, controlSocket string) {
	adoptedMu.Lock()
	adopted, adoptedControl = il, controlSocket
	adoptedMu.Unlock()
}

// controlSocketPath is explicit, or else the path the supervisor passed.
func controlSocketPath(explicit string) (string, error) {
	if explicit != "" {
		return explicit, nil
	}
	adoptedMu.Lock()
	defer adoptedMu.Unlock()
	if adoptedControl == "" {
		return "", fmt.Errorf("handoff: no control socket path: none was given and the supervisor passed none (%s)", wire.EnvControlSocket)
	}
	return adoptedControl, nil
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
	for _, k := range []string{wire.EnvListenFDs, wire.EnvListenFDNames, wire.EnvListenPID, wire.EnvRole, wire.EnvSockFD, wire.EnvControlSocket, wire.EnvConnsFD} {
		env[k] = os.Getenv(k)
		os.Unsetenv(k)
	}
	il, err := adoptListeners(env)
	if err != nil {
		return nil, err
	}
	setAdopted(il, env[wire.EnvControlSocket])
	role, sockFD := env[wire.EnvRole], env[wire.EnvSockFD]
	switch role {
	case "":
		if sockFD != "" {
			il.Close()
			return nil, fmt.Errorf("handoff: %s is set but %s is not", wire.EnvSockFD, wire.EnvRole)
		}
		cs := &ColdStart{Inherited: il}
		if v := env[wire.EnvConnsFD]; v != "" {
			cs.conns, cs.connsErr = receiveHeldConns(v, len(il.Names()))
		}
		return cs, nil
	case wire.RoleSuccessorEnv:
		n := len(il.Names())
		fd, err := strconv.Atoi(sockFD)
		switch {
		case err != nil || fd < 0:
			il.Close()
			return nil, fmt.Errorf("handoff: %s=%q is not a descriptor number", wire.EnvSockFD, sockFD)
		case fd < wire.FirstListenFD:
			il.Close()
			return nil, fmt.Errorf("handoff: %s=%d is a standard stream (0, 1 or 2)", wire.EnvSockFD, fd)
		case fd < wire.FirstListenFD+n:
			il.Close()
			return nil, fmt.Errorf("handoff: %s=%d is one of the %d inherited listeners (fds %d..%d)", wire.EnvSockFD, fd, n, wire.FirstListenFD, wire.FirstListenFD+n-1)
		}
		unix.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), "handoff-control")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			il.Close()
			return nil, fmt.Errorf("handoff: %s=%d: %w", wire.EnvSockFD, fd, err)
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			c.Close()
			il.Close()
			return nil, fmt.Errorf("handoff: %s=%d is not a unix socket", wire.EnvSockFD, fd)
		}
		return &Successor{inherited: il, conn: wire.NewConn(uc)}, nil
	default:
		il.Close()
		return nil, fmt.Errorf("handoff: %s=%q: the only known role is %q", wire.EnvRole, role, wire.RoleSuccessorEnv)
	}
}

// receiveHeldConns reads the connections the supervisor sends on the
// socket HANDOFF_CONNS_FD names: Conns frames, then the end of the stream.
func receiveHeldConns(v string, listeners int) ([]PassedConn, error) {
	fd, err := strconv.Atoi(v)
	if err != nil || fd < wire.FirstListenFD+listeners {
		return nil, fmt.Errorf("handoff: %s=%q is not a descriptor after the %d listeners", wire.EnvConnsFD, v, listeners)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "handoff-conns")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("handoff: %s=%d: %w", wire.EnvConnsFD, fd, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("handoff: %s=%d is not a unix socket", wire.EnvConnsFD, fd)
	}
	conn := wire.NewConn(uc)
	defer conn.Close()
	var conns []PassedConn
	for {
		fr, err := conn.Recv(wire.DefaultHelloTimeout)
		if errors.Is(err, ErrSessionLost) {
			return conns, nil
		}
		if err != nil {
			return conns, fmt.Errorf("handoff: receiving the held connections: %w", err)
		}
		m, ok := fr.Msg.(wire.Conns)
		if !ok {
			closeFDs(fr.FDs)
			return conns, wire.Violation("expected conns on %s, got %s", wire.EnvConnsFD, fr.Msg.Type())
		}
		got, err := connsFromFrame(m, fr.FDs)
		conns = append(conns, got...)
		if err != nil {
			return conns, err
		}
	}
}

// adoptListeners takes the descriptors that env (the activation variables
// read by DetectRole) describes.
func adoptListeners(env map[string]string) (*InheritedListeners, error) {
	il := newInheritedListeners()
	n, names, err := parseActivation(env, os.Getpid())
	if err != nil || n == 0 {
		return il, err
	}
	var errs []error
	for i, name := range names {
		fd := wire.FirstListenFD + i
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

// maxListenFDs bounds LISTEN_FDS: far more than any daemon listens on.
const maxListenFDs = 1024

// parseActivation reads LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID from env
// for the process pid: how many descriptors were passed from fd 3 on, and
// their names (fd<N> for a descriptor passed without one). Variables meant
// for another pid (systemd's rule) pass nothing.
func parseActivation(env map[string]string, pid int) (int, []string, error) {
	nstr := env[wire.EnvListenFDs]
	if nstr == "" {
		return 0, nil, nil
	}
	if p := env[wire.EnvListenPID]; p != "" && p != strconv.Itoa(pid) {
		return 0, nil, nil
	}
	n, err := strconv.Atoi(nstr)
	if err != nil || n < 0 || n > maxListenFDs {
		return 0, nil, fmt.Errorf("handoff: %s=%q is not a count of descriptors (0 to %d)", wire.EnvListenFDs, nstr, maxListenFDs)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = "fd" + strconv.Itoa(wire.FirstListenFD+i)
	}
	s := env[wire.EnvListenFDNames]
	if s == "" {
		return n, names, nil
	}
	given := strings.Split(s, ":")
	if len(given) != n {
		return 0, nil, fmt.Errorf("handoff: %s has %d names for %s=%d", wire.EnvListenFDNames, len(given), wire.EnvListenFDs, n)
	}
	seen := make(map[string]bool, n)
	for i, name := range given {
		switch {
		case name == "":
			return 0, nil, fmt.Errorf("handoff: %s: name %d of %d is empty", wire.EnvListenFDNames, i+1, n)
		case seen[name]:
			return 0, nil, fmt.Errorf("handoff: %s: listener name %q passed twice", wire.EnvListenFDNames, name)
		}
		seen[name] = true
	}
	return n, given, nil
}
