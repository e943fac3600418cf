// Package supervisor is the supervisor side of handoff: it holds a
// daemon's listening sockets (never accepting on them), starts the daemon,
// drives every handoff to a new binary and reaps every child. The
// reference binary, cmd/handoff-supervisor, is built on it; embed it to
// supervise from a program of your own.
//
// # Lifecycle
//
//	sup, err := supervisor.New(supervisor.Config{ControlSocket: path})
//	sup.AddListener("http", ln)             // the supervisor keeps a duplicate
//	pid, err := sup.ColdStart(ctx, spec)     // returns once the daemon answers
//	out, err := sup.PerformHandoff(ctx, spec2)
//	sup.Stop(ctx); sup.Close()
//
// A handoff spawns the successor and completes its handshake before the
// incumbent stops accepting, then drains, seals, begins, checks Ready and
// commits; anything else rolls back and the incumbent serves on. A
// restarted supervisor recovers a running daemon (and a handoff in flight)
// from the journal with ResumeFromJournal.
//
// The daemon side is package handoff; the two never import each other and
// speak only over the control socket. Every daemon is started with the
// control socket's path in HANDOFF_CONTROL_SOCKET. ARCHITECTURE.md
// describes the protocol, the state machines and the failure table.
//
// # Errors
//
// Test errors with errors.Is against ErrHandoffInProgress, ErrNoIncumbent,
// ErrAborted, ErrTimeout, ErrProtocol, ErrClosed, ErrJournalCorrupt and,
// on Outcome.Err, the kinds ErrSuccessorFailed, ErrIncumbentFailed,
// ErrDrainFailed, ErrSealFailed and ErrReadyRejected.
package supervisor
