package handoff

import (
	"errors"
	"fmt"

	"github.com/handoff-go/handoff/internal/wire"
)

// Sentinel errors. Test for them with errors.Is; every error the package
// returns wraps one of these (or an operating-system error) with %w.
var (
	// ErrLockHeld: the data-directory lock is held by another live process.
	// The error also matches *LockHeldError, which names the holder.
	ErrLockHeld = errors.New("handoff: data-directory lock is held")

	// ErrAborted: the handoff was aborted. A successor that gets it from
	// WaitForBegin or AnnounceAndBind (or Run) must exit without serving.
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

	// ErrNotInherited: no listener or file of that name was passed to this process.
	ErrNotInherited = errors.New("handoff: not inherited")

	// ErrClosed: the object was closed.
	ErrClosed = wire.ErrClosed

	// ErrSessionLost: the peer closed the control channel (EOF or reset).
	ErrSessionLost = wire.ErrPeerClosed
)

// LockHeldError reports that the data-directory lock is held by another
// process. It matches ErrLockHeld with errors.Is.
type LockHeldError struct {
	Dir       string // the data directory whose lock is held
	HolderPID int    // the holder, from the kernel's lock table (or the pid file); 0 when unknown
	// StaleHolder: HolderPID is dead, yet the lock is held through a
	// descriptor that another process inherited or has not yet closed.
	StaleHolder bool
}

// Error names the directory and the holder.
func (e *LockHeldError) Error() string {
	if e.StaleHolder {
		return fmt.Sprintf("handoff: data-directory lock %s is still held although its recorded holder pid %d is dead: another process holds its descriptor (inherited, or still exiting)", e.Dir, e.HolderPID)
	}
	if e.HolderPID > 0 {
		return fmt.Sprintf("handoff: data-directory lock %s is held by pid %d", e.Dir, e.HolderPID)
	}
	return fmt.Sprintf("handoff: data-directory lock %s is held by another process (pid unknown)", e.Dir)
}

// Unwrap makes errors.Is(err, ErrLockHeld) true.
func (e *LockHeldError) Unwrap() error { return ErrLockHeld }
