package supervisor

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// FuzzDecodeJournal: any bytes are refused with an error or decode to a
// valid record that encodes and decodes to the same record again.
func FuzzDecodeJournal(f *testing.F) {
	good, _ := json.Marshal(journalRecord{Format: journalFormat, Updated: time.Unix(1, 2).UTC(), Phase: PhaseCommitting, HandoffID: "h1",
		IncumbentPID: 10, IncumbentStart: 5, IncumbentBinary: "/bin/d", IncumbentArgs: []string{"-x"},
		SuccessorPID: 11, SuccessorStart: 6, SuccessorBinary: "/bin/d2", DeadlineUnixMS: 99})
	f.Add(good)
	f.Add([]byte(`{"format":1,"phase":"idle","incumbent_pid":3}`))
	f.Add([]byte(`{"format":1,"phase":"nope"}`))
	f.Add([]byte(`{"format":2,"phase":"idle"}`))
	f.Add([]byte(`{"format":1,"phase":"spawning","successor_pid":-4}`))
	f.Add([]byte(`{"format":1,"phase":"idle","updated":"not a time"}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeJournal(b)
		if err != nil {
			return
		}
		if !knownPhase(r.Phase) || r.Format != journalFormat || r.IncumbentPID < 0 || r.SuccessorPID < 0 {
			t.Fatalf("accepted an invalid record %+v", r)
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("encode %+v: %v", r, err)
		}
		r2, err := decodeJournal(again)
		if err != nil {
			t.Fatalf("a record it accepted does not decode again: %v (%s)", err, again)
		}
		again2, _ := json.Marshal(r2)
		if string(again) != string(again2) {
			t.Fatalf("round trip changed the record:\n%s\n%s", again, again2)
		}
	})
}

func TestDecodeJournalNamesWhatIsWrong(t *testing.T) {
	for in, want := range map[string]string{
		`{"format":2,"phase":"idle"}`:                      "format 2, expected 1",
		`{"format":1,"phase":"nope"}`:                      `unknown phase "nope"`,
		`{"format":1,"phase":"idle","incumbent_pid":-1}`:   "negative pid (incumbent -1",
		`{"format":1,"phase":"warming_up","handoff_id":1}`: "cannot unmarshal number",
	} {
		if _, err := decodeJournal([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error containing %q", in, err, want)
		}
	}
}
