package supervisor

import (
	"errors"

	"github.com/handoff-go/handoff/internal/wire"
)

// Sentinel errors. Test for them with errors.Is; every error the package
// returns wraps one of these (or an operating-system error) with %w. The
// ones the daemon side shares (ErrAborted, ErrTimeout, ErrProtocol, ...)
// are the same values as the handoff package's.
var (
	// ErrHandoffInProgress: a handoff is already running; only one runs at a time.
	ErrHandoffInProgress = errors.New("handoff: handoff in progress")

	// ErrAborted: the handoff was aborted (Outcome.Err matches it).
	ErrAborted = wire.ErrAborted

	// ErrTimeout: a peer did not answer within its bound (liveness, Hello, deadline).
	ErrTimeout = wire.ErrTimeout

	// ErrProtocol: a peer broke the wire protocol (unexpected message, wrong
	// handoff id, wrong pid, bad frame). The session is closed.
	ErrProtocol = wire.ErrProtocol

	// ErrFrameTooLarge: a frame's length exceeds the 1 MiB maximum.
	ErrFrameTooLarge = wire.ErrFrameTooLarge

	// ErrVersionMismatch: the two sides share no protocol version.
	ErrVersionMismatch = wire.ErrVersionMismatch

	// ErrClosed: the supervisor was closed.
	ErrClosed = wire.ErrClosed

	// ErrSessionLost: the peer closed the control channel (EOF or reset).
	ErrSessionLost = wire.ErrPeerClosed

	// ErrNoIncumbent: the supervisor has no running incumbent to hand off from.
	ErrNoIncumbent = errors.New("handoff: no incumbent")

	// Kinds of failed handoffs, matched by Outcome.Err:
	// ErrSuccessorFailed: the successor exited, stalled, broke the protocol
	// or could not be started.
	ErrSuccessorFailed = errors.New("handoff: the successor failed")
	// ErrIncumbentFailed: the incumbent exited, stalled, broke the protocol
	// or could not be reached.
	ErrIncumbentFailed = errors.New("handoff: the incumbent failed")
	// ErrDrainFailed: the incumbent's Drain returned an error.
	ErrDrainFailed = errors.New("handoff: drain failed")
	// ErrSealFailed: the incumbent's Seal returned an error (it kept the lock).
	ErrSealFailed = errors.New("handoff: seal failed")
	// ErrReadyRejected: the successor's Ready was unhealthy or stale.
	ErrReadyRejected = errors.New("handoff: ready rejected")
)
