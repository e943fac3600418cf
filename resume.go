package handoff

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/wire"
)

// ResumeFromJournal recovers after the supervisor itself died. It reads
// the journal, kills an orphaned successor, finds the live incumbent on the
// control socket, makes sure it serves and holds its lock (ResumeAfterAbort
// is idempotent), takes back from it the listener descriptors this
// supervisor lacks (those it already has, bound or from systemd, are kept),
// adopts it, and clears the journal. No journal: nil.
// No live daemon: an error matching ErrNoIncumbent (cold-start then). A
// corrupt journal is moved aside and reported with ErrJournalCorrupt.
func (s *Supervisor) ResumeFromJournal(ctx context.Context) error {
	if s.cfg.Journal == "" {
		return errNoJournal
	}
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	rec, ok, err := readJournal(s.cfg.Journal)
	if err != nil || !ok {
		return err
	}
	s.log.Info("handoff: resuming from journal", "phase", rec.Phase, "handoff", rec.HandoffID, "incumbent", rec.IncumbentPID, "successor", rec.SuccessorPID)

	hctx, cancel := context.WithTimeout(ctx, s.cfg.HelloTimeout+s.cfg.Liveness)
	defer cancel()
	conn, h, dialErr := s.dialIncumbent(hctx)
	live := 0
	if dialErr == nil {
		defer conn.Close()
		live = h.PID
	}
	committed := live != 0 && live == rec.SuccessorPID && rec.Phase == PhaseCommitting
	// A successor that did not become the incumbent is an orphan: kill it.
	if rec.SuccessorPID != 0 && !committed && sameProcess(rec.SuccessorPID, rec.SuccessorStart) {
		s.log.Warn("handoff: killing the orphaned successor", "pid", rec.SuccessorPID)
		killOrphan(rec.SuccessorPID)
	}
	if live == 0 {
		writeJournal(s.cfg.Journal, journalRecord{Phase: PhaseIdle})
		return fmt.Errorf("%w: nothing answers on %s: %w", ErrNoIncumbent, s.cfg.ControlSocket, dialErr)
	}
	spec := SpawnSpec{Binary: rec.IncumbentBinary, Args: rec.IncumbentArgs}
	if committed {
		spec = SpawnSpec{Binary: rec.SuccessorBinary, Args: rec.SuccessorArgs}
	}
	if spec.Binary == "" {
		spec.Binary = "unknown"
	}
	id := newHandoffID()
	if err := s.ackHello(conn, h, id, time.Time{}); err != nil {
		return err
	}
	if rec.Phase != PhaseIdle && !committed {
		if err := conn.Send(wire.ResumeAfterAbort{Reason: "the supervisor restarted during a handoff"}, string(id), writeTimeout); err != nil {
			return err
		}
		if err := awaitType(conn, wire.TypeResumed, s.cfg.Liveness+DefaultDeadline); err != nil {
			return err
		}
	}
	if err := s.takeListeners(conn, id); err != nil {
		return err
	}
	conn.Close()
	return s.Adopt(ctx, live, spec)
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
