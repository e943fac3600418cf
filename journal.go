package handoff

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
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
	return writeFileAtomic(path, append(b, '\n'), 0o600)
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
	derr := json.Unmarshal(b, &r)
	if derr == nil && r.Format != journalFormat {
		derr = fmt.Errorf("format %d, expected %d", r.Format, journalFormat)
	}
	if derr == nil && !knownPhase(r.Phase) {
		derr = fmt.Errorf("unknown phase %q", r.Phase)
	}
	if derr != nil {
		aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().UnixNano())
		if err := os.Rename(path, aside); err != nil {
			return r, false, fmt.Errorf("%w (%w) and could not be moved aside: %w", ErrJournalCorrupt, derr, err)
		}
		return r, false, fmt.Errorf("%w: %w; moved to %s", ErrJournalCorrupt, derr, aside)
	}
	return r, true, nil
}

func knownPhase(p Phase) bool {
	switch p {
	case PhaseIdle, PhaseSpawning, PhaseDraining, PhaseSealing, PhaseBegun, PhaseCommitting, PhaseRollingBack:
		return true
	}
	return false
}

// procStart returns the start time of pid in clock ticks since boot (field
// 22 of /proc/pid/stat), 0 if unknown. Equal pid and start time mean the
// same process.
func procStart(pid int) uint64 {
	_, start := procStat(pid)
	return start
}

// procStat returns pid's state letter (field 3 of /proc/pid/stat: 'Z' for
// a zombie) and its start time; 0, 0 if there is no such process.
func procStat(pid int) (byte, uint64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	// The command name (field 2) may hold spaces; skip past its ')'.
	i := len(b) - 1
	for i >= 0 && b[i] != ')' {
		i--
	}
	if i < 0 {
		return 0, 0
	}
	var fields []string
	start := -1
	for j := i + 1; j <= len(b); j++ {
		if j == len(b) || b[j] == ' ' || b[j] == '\n' {
			if start >= 0 {
				fields = append(fields, string(b[start:j]))
				start = -1
			}
			continue
		}
		if start < 0 {
			start = j
		}
	}
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 || fields[0] == "" {
		return 0, 0
	}
	var v uint64
	fmt.Sscan(fields[19], &v)
	return fields[0][0], v
}

// sameProcess reports whether pid is alive (not a zombie) and started at
// start.
func sameProcess(pid int, start uint64) bool {
	if pid <= 0 || start == 0 {
		return false
	}
	state, st := procStat(pid)
	return st == start && state != 'Z' && state != 'X'
}
