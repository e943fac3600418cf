package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/peercred"
	"github.com/handoff-go/handoff/internal/proc"
	"github.com/handoff-go/handoff/internal/wire"
)

// ResumeFromJournal recovers after the supervisor itself died. It reads
// the journal, kills an orphaned successor and waits for it to be gone
// (so the lock it may hold is free), finds the live daemon on the control
// socket (waiting as long as the incumbent may need to retake the lock),
// makes sure it serves and holds its lock (ResumeAfterAbort is
// idempotent), takes back from it the listener descriptors this supervisor
// lacks (those it already has, bound or from systemd, are kept), adopts
// it, and clears the journal. No journal: nil. No live daemon: an error
// matching ErrNoIncumbent (cold-start then). A corrupt journal is moved
// aside and reported with ErrJournalCorrupt.
//
// A handoff that had reached the commit (journal phase committing) may
// have committed: then the successor answers on the control socket and is
// adopted, and the sealed old incumbent, which can no longer serve, is
// killed.
func (s *Supervisor) ResumeFromJournal(ctx context.Context) error {
	if s.cfg.Journal == "" {
		return errNoJournal
	}
	ctx, err := s.begin(ctx)
	if err != nil {
		return err
	}
	defer s.end()
	rec, ok, err := readJournal(s.cfg.Journal)
	if err != nil || !ok {
		return err
	}
	s.log.Info("handoff: resuming from journal", "phase", rec.Phase, "handoff", rec.HandoffID, "incumbent", rec.IncumbentPID, "successor", rec.SuccessorPID)

	// The committing record is written while the successor opens, before
	// its Ready is checked: the handoff committed only if the successor
	// took over the control socket, which it does after its Commit.
	committing := rec.Phase == PhaseCommitting
	if committing && proc.Same(rec.SuccessorPID, rec.SuccessorStart) && s.controlSocketOwner() != rec.SuccessorPID {
		committing = false
	}
	// Before the commit a successor never serves: kill it first, so that
	// the incumbent can retake a lock it may hold and answer.
	if !committing && proc.Same(rec.SuccessorPID, rec.SuccessorStart) {
		s.log.Warn("handoff: killing the orphaned successor", "pid", rec.SuccessorPID)
		if err := killOrphanAndWait(ctx, rec.SuccessorPID, rec.SuccessorStart); err != nil {
			return err
		}
	}
	conn, h, dialErr := s.findDaemon(ctx, rec)
	if dialErr != nil {
		if err := ctx.Err(); err != nil {
			// Cancelled (Close): nothing is known, the journal stays.
			return fmt.Errorf("handoff: resume interrupted: %w", err)
		}
		writeJournal(s.cfg.Journal, journalRecord{Phase: PhaseIdle})
		return fmt.Errorf("%w: nothing answers on %s: %w", ErrNoIncumbent, s.cfg.ControlSocket, dialErr)
	}
	defer conn.Close()
	// Cancellation cuts the session short (the waits below are bounded by
	// the liveness and deadline, not by ctx).
	stopCancel := context.AfterFunc(ctx, func() { conn.UnixConn().Close() })
	defer stopCancel()
	live := h.PID
	committed := committing && live == rec.SuccessorPID
	switch {
	case committed && rec.IncumbentPID != live && proc.Same(rec.IncumbentPID, rec.IncumbentStart):
		// Sealed, its lock gone to the successor: it cannot serve again.
		s.log.Warn("handoff: killing the sealed predecessor of the committed successor", "pid", rec.IncumbentPID)
		if err := killOrphanAndWait(ctx, rec.IncumbentPID, rec.IncumbentStart); err != nil {
			return err
		}
	case !committed && rec.SuccessorPID != live && proc.Same(rec.SuccessorPID, rec.SuccessorStart):
		// Not committed: the incumbent answers, so it holds the lock.
		s.log.Warn("handoff: killing the orphaned successor", "pid", rec.SuccessorPID)
		if err := killOrphanAndWait(ctx, rec.SuccessorPID, rec.SuccessorStart); err != nil {
			return err
		}
	}
	spec := SpawnSpec{Binary: rec.IncumbentBinary, Args: rec.IncumbentArgs}
	if committed {
		spec = SpawnSpec{Binary: rec.SuccessorBinary, Args: rec.SuccessorArgs}
	}
	if spec.Binary == "" {
		spec.Binary = "unknown"
	}
	id := newHandoffID()
	// An error while ctx is cancelled is the cancellation's doing.
	interrupted := func(err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("handoff: resume interrupted (%v): %w", err, cerr)
		}
		return err
	}
	if err := s.ackHello(conn, h, id, time.Time{}); err != nil {
		return interrupted(err)
	}
	if rec.Phase != PhaseIdle && !committed {
		if err := conn.Send(wire.ResumeAfterAbort{Reason: "the supervisor restarted during a handoff"}, string(id), writeTimeout); err != nil {
			return interrupted(err)
		}
		if err := awaitType(conn, wire.TypeResumed, s.cfg.Liveness+DefaultDeadline); err != nil {
			return interrupted(err)
		}
	}
	if err := s.takeListeners(conn, id); err != nil {
		return interrupted(err)
	}
	if !stopCancel() {
		return fmt.Errorf("handoff: resume interrupted: %w", ctx.Err())
	}
	conn.Close()
	return s.Adopt(ctx, live, spec)
}

// controlSocketOwner is the pid of the process that listens on the
// control socket (SO_PEERCRED of a connection holds the listener's
// credentials from its listen call, whether or not it accepts), or 0.
func (s *Supervisor) controlSocketOwner() int {
	c, err := net.DialTimeout("unix", s.cfg.ControlSocket, s.cfg.HelloTimeout)
	if err != nil {
		return 0
	}
	defer c.Close()
	cred, err := peercred.Get(c.(*net.UnixConn))
	if err != nil {
		return 0
	}
	return int(cred.Pid)
}

// findDaemon connects to the control socket and reads the daemon's Hello.
// After a supervisor crash inside a handoff the incumbent answers only once
// it has retaken the lock, which it tries until the handoff's deadline plus
// slack (at least DefaultLiveness); a connection waits in the socket's
// backlog meanwhile. So it waits that long, and retries while a process
// of the journal is alive (a daemon that gave up closes its socket).
func (s *Supervisor) findDaemon(ctx context.Context, rec journalRecord) (*wire.Conn, wire.Hello, error) {
	bound := DefaultLiveness
	if rec.DeadlineUnixMS != 0 {
		bound = max(bound, time.Until(time.UnixMilli(rec.DeadlineUnixMS)))
	}
	ctx, cancel := context.WithTimeout(ctx, bound+replySlack+s.cfg.HelloTimeout)
	defer cancel()
	backoff := time.Millisecond
	for {
		wait := s.cfg.HelloTimeout
		if dl, ok := ctx.Deadline(); ok {
			wait = max(time.Until(dl), time.Millisecond)
		}
		conn, h, err := s.dialIncumbentWithin(ctx, wait)
		if err == nil {
			return conn, h, nil
		}
		if !proc.Same(rec.IncumbentPID, rec.IncumbentStart) && !proc.Same(rec.SuccessorPID, rec.SuccessorStart) {
			return nil, wire.Hello{}, err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, wire.Hello{}, err
		case <-t.C:
		}
		backoff = min(backoff*2, 100*time.Millisecond)
	}
}

// killOrphanAndWait kills pid (not our child) and waits, bounded, until it
// is gone or a zombie: its descriptors, the lock among them, are closed.
// A cancelled ctx ends the wait with an error wrapping ctx.Err().
func killOrphanAndWait(ctx context.Context, pid int, start uint64) error {
	killOrphan(pid)
	limit := time.NewTimer(10 * time.Second)
	defer limit.Stop()
	backoff := time.Millisecond
	for proc.Same(pid, start) {
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("handoff: waiting for the killed pid %d to be gone: %w", pid, ctx.Err())
		case <-limit.C:
			t.Stop()
			return fmt.Errorf("%w: pid %d still runs after SIGKILL", ErrTimeout, pid)
		case <-t.C:
		}
		backoff = min(backoff*2, 50*time.Millisecond)
	}
	return nil
}

// takeListeners asks the incumbent for its listener descriptors.
func (s *Supervisor) takeListeners(conn *wire.Conn, id HandoffID) error {
	if err := conn.Send(wire.ListenersRequest{}, string(id), writeTimeout); err != nil {
		return err
	}
	f, err := conn.Recv(s.cfg.Liveness)
	if err != nil {
		return fmt.Errorf("handoff: waiting for the incumbent's listeners: %w", err)
	}
	m, ok := f.Msg.(wire.Listeners)
	if !ok || len(m.Names) != len(f.FDs) {
		closeFDs(f.FDs)
		return fmt.Errorf("%w: expected listeners with one descriptor per name, got %s with %d descriptors", ErrProtocol, f.Msg.Type(), len(f.FDs))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var took []string
next:
	for i, name := range m.Names {
		for _, have := range s.listeners {
			if have.name == name {
				// Already bound or inherited (socket activation): keep ours.
				unix.Close(f.FDs[i])
				continue next
			}
		}
		s.listeners = append(s.listeners, namedFD{name, f.FDs[i]})
		took = append(took, name)
	}
	s.log.Info("handoff: took listeners back from the incumbent", "names", took)
	return nil
}

func awaitType(conn *wire.Conn, want wire.Type, bound time.Duration) error {
	deadline := time.Now().Add(bound)
	for {
		f, err := conn.Recv(time.Until(deadline))
		if err != nil {
			return err
		}
		closeFDs(f.FDs)
		switch m := f.Msg.(type) {
		case wire.Resumed:
			if m.Error != "" {
				return errors.New("handoff: the incumbent could not resume: " + m.Error)
			}
		case wire.Heartbeat:
			continue
		}
		if f.Msg.Type() == want {
			return nil
		}
	}
}
