// Package handoff replaces the binary of a running stateful daemon with no
// refused connections, no lost acknowledged writes, never two writers on
// the same data, and automatic rollback when the new binary fails. It is
// the daemon side; package supervisor is the supervisor side.
//
// # The front door
//
// A daemon calls Run with a Config: its data directory, the addresses to
// bind when started by hand, and Open, which opens its state on the
// listeners as a Service (a Drainable that can Start and Shutdown; package
// httphandoff makes a net/http server one). Run detects the role, takes the
// data-directory lock when it may, answers the supervisor and returns when
// the process should exit. The step API underneath (DetectRole, the
// successor's typestates, BindColdStart, Incumbent.Serve) is for daemons
// that need more control. On systems other than Linux, Run starts the
// daemon without handoff.
//
// # Roles
//
// The supervisor binds the listening sockets (or inherits them from systemd)
// and never accepts on them; it starts the daemon, drives every handoff and
// reaps every child. The Incumbent is the serving daemon: on request it
// drains, seals its state, releases the DataDirLock and exits on Commit,
// or resumes on abort. The Successor is the new binary, spawned with the
// same listener descriptors: it handshakes early, waits for Begin (sent
// only after the incumbent sealed and released the lock), takes the lock,
// opens the data, announces Ready and becomes the next incumbent once the
// supervisor accepts it. A daemon learns its role from DetectRole.
//
// # Protocol
//
// The supervisor talks to the incumbent over the control socket (a unix
// stream socket at a path) and to the successor over a socketpair passed
// at spawn. Frames are a little-endian uint32 length, a uint16 protocol
// version and one JSON message, at most 1 MiB; every read and write has a
// deadline. A handoff runs:
//
//	supervisor → incumbent  Hello/HelloAck (version, handoff id)
//	supervisor spawns the successor; Hello/HelloAck (pid checked)
//	→ incumbent  PrepareHandoff, SealRequest (pipelined)
//	             ← Drained, ← SealComplete      (heartbeats meanwhile; lock released first)
//	→ successor  Begin            ← Ready        (checked: healthy, revisions ≥ sealed)
//	→ successor  Commit, → incumbent Commit      (the incumbent exits)
//
// Anything else ends in a rollback: the successor is told to abort, killed
// and reaped; the incumbent gets ResumeAfterAbort, retakes its lock and
// serves again. ARCHITECTURE.md describes every message and state.
//
// # Invariants
//
//   - At most one process holds the data-directory lock (flock on
//     <dir>/.handoff.lock, whose inode never changes); the incumbent releases
//     it only after a successful seal.
//   - Drain and seal fsync before they return; a failure aborts the handoff.
//   - The listening sockets never close: the supervisor holds them across
//     every swap, so connections that arrive meanwhile wait in the kernel's
//     accept queue. Descriptors are duplicated through SyscallConn and
//     spawned with raw descriptors, so O_NONBLOCK is never cleared.
//   - The successor serves only after AnnounceAndBind returned, that is
//     after the supervisor accepted its Ready.
//
// # Errors
//
// Test errors with errors.Is against ErrLockHeld, ErrAborted, ErrTimeout,
// ErrProtocol, ErrFrameTooLarge, ErrVersionMismatch, ErrNotInherited,
// ErrSessionLost and ErrClosed; *LockHeldError carries the holder's pid.
// ErrAborted, ErrTimeout, ErrProtocol and ErrClosed are the same values as
// package supervisor's.
package handoff
