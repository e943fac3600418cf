package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/handoff-go/handoff/internal/atomicfile"
)

// ErrJournalCorrupt: the journal could not be read; it was moved aside
// (the error names where) and the supervisor carried on without it.
var ErrJournalCorrupt = errors.New("handoff: journal is corrupt")

// journalRecord is the supervisor's durable view: who serves, and how far
// the running handoff (if any) got. It is rewritten atomically (temp file,
// fsync, rename, fsync directory) after each acknowledged phase.
type journalRecord struct {
	Format          int       `json:"format"`
	Updated         time.Time `json:"updated"`
	Phase           Phase     `json:"phase"`
	HandoffID       HandoffID `json:"handoff_id,omitempty"`
	IncumbentPID    int       `json:"incumbent_pid,omitempty"`
	IncumbentStart  uint64    `json:"incumbent_start,omitempty"` // /proc start time, guards against pid reuse
	IncumbentBinary string    `json:"incumbent_binary,omitempty"`
	IncumbentArgs   []string  `json:"incumbent_args,omitempty"`
	SuccessorPID    int       `json:"successor_pid,omitempty"`
	SuccessorStart  uint64    `json:"successor_start,omitempty"`
	SuccessorBinary string    `json:"successor_binary,omitempty"`
	SuccessorArgs   []string  `json:"successor_args,omitempty"`
	// DeadlineUnixMS is the running handoff's deadline: a daemon gives up
	// retaking the lock after it (plus slack), which bounds how long a
	// restarted supervisor waits for the incumbent to answer.
	DeadlineUnixMS int64 `json:"deadline_unix_ms,omitempty"`
}

const journalFormat = 1

func writeJournal(path string, r journalRecord) error {
	if path == "" {
		return nil
	}
	r.Format = journalFormat
	r.Updated = time.Now().UTC()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("handoff: encode journal: %w", err)
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o600)
}

// readJournal returns the record, ok=false if there is none. A journal
// that cannot be decoded is renamed to <path>.corrupt-<unix time> and an
// error matching ErrJournalCorrupt names that file.
func readJournal(path string) (journalRecord, bool, error) {
	var r journalRecord
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return r, false, nil
	}
	if err != nil {
		return r, false, fmt.Errorf("handoff: read journal: %w", err)
	}
	r, derr := decodeJournal(b)
	if derr != nil {
		aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().UnixNano())
		if err := os.Rename(path, aside); err != nil {
			return r, false, fmt.Errorf("%w (%w) and could not be moved aside: %w", ErrJournalCorrupt, derr, err)
		}
		return r, false, fmt.Errorf("%w: %w; moved to %s", ErrJournalCorrupt, derr, aside)
	}
	return r, true, nil
}

// decodeJournal decodes and checks a journal's contents.
func decodeJournal(b []byte) (journalRecord, error) {
	var r journalRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return journalRecord{}, err
	}
	switch {
	case r.Format != journalFormat:
		return journalRecord{}, fmt.Errorf("format %d, expected %d", r.Format, journalFormat)
	case !knownPhase(r.Phase):
		return journalRecord{}, fmt.Errorf("unknown phase %q", r.Phase)
	case r.IncumbentPID < 0 || r.SuccessorPID < 0:
		return journalRecord{}, fmt.Errorf("negative pid (incumbent %d, successor %d)", r.IncumbentPID, r.SuccessorPID)
	}
	return r, nil
}

func knownPhase(p Phase) bool {
	switch p {
	case PhaseIdle, PhaseSpawning, PhaseWarmingUp, PhaseDraining, PhaseSealing, PhaseBegun, PhaseCommitting, PhaseRollingBack:
		return true
	}
	return false
}
