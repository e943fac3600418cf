package wire

import (
	"errors"
	"fmt"
	"time"
)

// Environment of a spawned daemon. Listeners sit at fd 3, 4, ... in the
// order of LISTEN_FDNAMES (the systemd socket-activation convention). A
// successor also gets HANDOFF_ROLE=successor and HANDOFF_SOCK_FD, its end of
// the control socketpair. Every daemon the supervisor starts gets
// HANDOFF_CONTROL_SOCKET, the control socket's path. A cold-started daemon
// may get HANDOFF_CONNS_FD, a socket on which the supervisor sends the
// connections it held (Conns frames, then end of stream). The daemon side clears
// all of them when it reads them.
const (
	EnvListenFDs      = "LISTEN_FDS"
	EnvListenFDNames  = "LISTEN_FDNAMES"
	EnvListenPID      = "LISTEN_PID"
	EnvRole           = "HANDOFF_ROLE"
	EnvSockFD         = "HANDOFF_SOCK_FD"
	EnvControlSocket  = "HANDOFF_CONTROL_SOCKET"
	EnvConnsFD        = "HANDOFF_CONNS_FD"
	RoleSuccessorEnv  = "successor"
	FirstListenFD     = 3
	LockFileName      = ".handoff.lock"
	PIDFileName       = ".handoff.pid"
	DefaultSocketName = ".handoff.sock"
)

// Timing defaults both sides agree on.
const (
	// DefaultLiveness bounds every receive from a peer: any frame,
	// heartbeats included, resets it.
	DefaultLiveness = 10 * time.Second
	// DefaultHeartbeatInterval is how often daemons beat while drain, seal
	// or a successor's start-up run, unless the announced liveness asks for
	// more: daemons beat every min(DefaultHeartbeatInterval, liveness/4),
	// never more often than MinHeartbeatInterval.
	DefaultHeartbeatInterval = 2 * time.Second
	// MinHeartbeatInterval is the shortest heartbeat interval a daemon uses.
	MinHeartbeatInterval = 250 * time.Millisecond
	// DefaultHelloTimeout bounds the Hello/HelloAck exchange.
	DefaultHelloTimeout = 5 * time.Second
	// DefaultDeadline bounds a whole handoff.
	DefaultDeadline = 60 * time.Second
	// ReplySlack is added to waits for a reply that may already be in flight.
	ReplySlack = time.Second
	// WriteTimeout bounds every frame write.
	WriteTimeout = 5 * time.Second
)

// HeartbeatInterval is how often a daemon beats for a supervisor whose
// liveness is liveness (zero: not announced, DefaultLiveness).
func HeartbeatInterval(liveness time.Duration) time.Duration {
	if liveness <= 0 {
		liveness = DefaultLiveness
	}
	return max(min(DefaultHeartbeatInterval, liveness/4), MinHeartbeatInterval)
}

// Sentinels both packages export under their own names, so that
// errors.Is agrees whichever package a caller names.
var (
	ErrAborted = errors.New("handoff: handoff aborted")
	ErrClosed  = errors.New("handoff: closed")
)

// Violation is an error matching ErrProtocol that says what the peer did.
func Violation(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}
