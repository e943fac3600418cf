package store

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// smallSegments are options with segments of n bytes and compaction only
// on request (unless auto).
func smallSegments(n int64, auto bool) options {
	opts := defaultOptions()
	opts.segmentBytes = n
	opts.noAutoCompact = !auto
	return opts
}

// writeLoad runs n writers putting to a small key space (so that
// overwrites matter) until the store refuses writes. It returns a channel
// that gets a revision after acknowledged writes, and a wait for the
// writers.
func writeLoad(t *testing.T, s *Store, n int) (acks <-chan uint64, wait func()) {
	t.Helper()
	ch := make(chan uint64, 64)
	var wg sync.WaitGroup
	for w := range n {
		wg.Go(func() {
			for i := 0; ; i++ {
				var rev uint64
				var err error
				if i%7 == 6 {
					rev, err = s.Delete(fmt.Sprintf("w%d-%d", w, (i/2)%40))
				} else {
					rev, err = s.Put(fmt.Sprintf("w%d-%d", w, i%40), fmt.Appendf(nil, "value %d of writer %d", i, w))
				}
				if errors.Is(err, ErrSealed) || errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
				select {
				case ch <- rev:
				default:
				}
			}
		})
	}
	return ch, wg.Wait
}

// waitRevision waits until s has acknowledged writes up to rev.
func waitRevision(t *testing.T, s *Store, acks <-chan uint64, rev uint64) {
	t.Helper()
	for s.Revision() < rev {
		select {
		case <-acks:
		case <-time.After(waitBound):
			t.Fatalf("timed out waiting for revision %d (at %d)", rev, s.Revision())
		}
	}
}

// warmContents is the Warm's state, values as strings.
func warmContents(w *Warm) map[string]string {
	m := map[string]string{}
	for k, v := range w.l.data {
		m[k] = string(v)
	}
	return m
}

func warmOpenT(t *testing.T, w *Warm, opts options) *Store {
	t.Helper()
	s, err := w.open(opts)
	if err != nil {
		t.Fatalf("Warm.Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// checkSameState checks that succ took over exactly what inc sealed.
func checkSameState(t *testing.T, inc, succ *Store) {
	t.Helper()
	if succ.Revision() != inc.Revision() {
		t.Errorf("successor at revision %d, the incumbent sealed %d", succ.Revision(), inc.Revision())
	}
	if got, want := contents(succ), contents(inc); !maps.Equal(got, want) {
		t.Errorf("successor holds %d keys, the incumbent sealed %d; they differ", len(got), len(want))
	}
	if succ.Fingerprint() != inc.Fingerprint() {
		t.Errorf("successor's fingerprint %s, the incumbent sealed %s", succ.Fingerprint(), inc.Fingerprint())
	}
}

// TestPrepareWhileWriting is a handoff of the store: the successor
// prepares while the incumbent writes (rotating segments, compacting or
// not), the incumbent writes more and seals, and Warm.Open gets exactly the
// sealed state, catching up only what came after the warm-up.
func TestPrepareWhileWriting(t *testing.T) {
	tests := []struct {
		name    string
		compact bool
	}{
		{"segments only", false},
		{"compacting meanwhile", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := smallSegments(2<<10, tt.compact)
			inc := openT(t, dir, opts)
			acks, wait := writeLoad(t, inc, 4)
			waitRevision(t, inc, acks, 300)

			w, err := Prepare(dir)
			if err != nil {
				t.Fatalf("Prepare while the incumbent writes: %v", err)
			}
			warmRev := w.Revision()
			if warmRev < 300 {
				t.Errorf("the warm-up reached revision %d, the incumbent had acknowledged 300 before it began", warmRev)
			}
			waitRevision(t, inc, acks, warmRev+300) // several segments after the warm-up
			if err := inc.Seal(); err != nil {
				t.Fatal(err)
			}
			wait()

			succ := warmOpenT(t, w, opts)
			checkSameState(t, inc, succ)
			rc := succ.Recovery()
			t.Logf("warm-up to revision %d (%d records, %d bytes, %v); caught up %d records, %d bytes in %v; full load %v (%s)",
				warmRev, rc.WarmRecords, rc.WarmBytes, rc.WarmDuration, rc.CaughtUpRecords, rc.CaughtUpBytes, rc.CatchUpDuration, rc.FullLoad, rc.FullLoadReason)
			if !tt.compact {
				if rc.FullLoad || rc.CaughtUpRecords != int(inc.Revision()-warmRev) {
					t.Errorf("Recovery = %+v, want %d records caught up after revision %d and no full load", rc, inc.Revision()-warmRev, warmRev)
				}
			}
			if rev := mustPut(t, succ, "next", "writer"); rev != inc.Revision()+1 {
				t.Errorf("the successor's first write got revision %d, want %d", rev, inc.Revision()+1)
			}
		})
	}
}

// TestPrepareUnderCompaction: warm-ups racing a writer and compactions
// that delete segments under them always load a state the log had at
// their revision.
func TestPrepareUnderCompaction(t *testing.T) {
	dir := t.TempDir()
	inc := openT(t, dir, smallSegments(1<<10, true))
	type op struct {
		del  bool
		k, v string
	}
	var mu sync.Mutex
	history := []op{{}} // history[rev]
	acks := make(chan uint64, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			o := op{k: fmt.Sprintf("k%d", i%60), v: fmt.Sprintf("v%d", i)}
			var rev uint64
			var err error
			if i%5 == 4 {
				o.del = true
				rev, err = inc.Delete(o.k)
			} else {
				rev, err = inc.Put(o.k, []byte(o.v))
			}
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			if rev != uint64(len(history)) {
				t.Errorf("revision %d after %d", rev, len(history)-1)
			}
			history = append(history, o)
			mu.Unlock()
			select {
			case acks <- rev:
			default:
			}
		}
	})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := inc.Compact(); err != nil {
				t.Error(err)
				return
			}
		}
	})
	type seen struct {
		rev  uint64
		data map[string]string
	}
	var warms []seen
	for i := range 30 {
		waitRevision(t, inc, acks, uint64(i*20))
		w, err := Prepare(dir)
		if err != nil {
			t.Fatalf("Prepare: %v", err)
		}
		warms = append(warms, seen{w.Revision(), warmContents(w)})
		w.Close()
	}
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("%d writes, %d snapshots written", len(history)-1, inc.Stats().Compaction.Snapshots)
	for _, w := range warms {
		want := map[string]string{}
		for _, o := range history[1 : w.rev+1] {
			if o.del {
				delete(want, o.k)
			} else {
				want[o.k] = o.v
			}
		}
		if !maps.Equal(w.data, want) {
			t.Errorf("a warm-up at revision %d holds %v, the log had %v", w.rev, w.data, want)
		}
	}
}

// TestWarmOpenAfterCompactions: compactions by the incumbent after the
// warm-up delete segments; Warm.Open still reads the rest of its own
// segment through the file it kept open, and falls back to a full load
// only when a segment it never read is gone.
func TestWarmOpenAfterCompactions(t *testing.T) {
	tests := []struct {
		name string
		// after runs on the incumbent between Prepare and Seal.
		after        func(t *testing.T, inc *Store)
		wantFullLoad string // in FullLoadReason; "" for none
	}{
		{"warm segment compacted, its successor kept", func(t *testing.T, inc *Store) {
			if err := inc.Compact(); err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				mustPut(t, inc, fmt.Sprintf("after-%d", i), "x")
			}
		}, ""},
		{"two segments compacted", func(t *testing.T, inc *Store) {
			for i := range 60 {
				mustPut(t, inc, fmt.Sprintf("after-%d", i), "a value long enough to fill segments")
			}
			if err := inc.Compact(); err != nil {
				t.Fatal(err)
			}
			mustPut(t, inc, "last", "x")
		}, "missing"},
		{"nothing compacted", func(t *testing.T, inc *Store) {
			for i := range 60 {
				mustPut(t, inc, fmt.Sprintf("after-%d", i), "a value long enough to fill segments")
			}
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := smallSegments(1<<10, false)
			inc := openT(t, dir, opts)
			for i := range 20 {
				mustPut(t, inc, fmt.Sprintf("k%d", i), "before the warm-up")
			}
			w, err := Prepare(dir)
			if err != nil {
				t.Fatal(err)
			}
			tt.after(t, inc)
			if err := inc.Seal(); err != nil {
				t.Fatal(err)
			}
			succ := warmOpenT(t, w, opts)
			checkSameState(t, inc, succ)
			rc := succ.Recovery()
			if rc.FullLoad != (tt.wantFullLoad != "") || !strings.Contains(rc.FullLoadReason, tt.wantFullLoad) {
				t.Errorf("Recovery = %+v, want full load %q", rc, tt.wantFullLoad)
			}
		})
	}
}

// TestWarmUpOfAnEmptyDirectory: the warm-up found nothing (first start, or
// before the incumbent's first write); the catch-up reads the whole log,
// or loads in full if a snapshot covers what was deleted.
func TestWarmUpOfAnEmptyDirectory(t *testing.T) {
	for _, compact := range []bool{false, true} {
		t.Run(fmt.Sprintf("compacted=%v", compact), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			w, err := Prepare(dir)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("Prepare created the data directory (stat: %v)", err)
			}
			opts := smallSegments(512, false)
			inc := openT(t, dir, opts)
			for i := range 40 {
				mustPut(t, inc, fmt.Sprintf("k%d", i), "a value of some length")
			}
			if compact {
				if err := inc.Compact(); err != nil {
					t.Fatal(err)
				}
				mustPut(t, inc, "last", "x")
			}
			if err := inc.Seal(); err != nil {
				t.Fatal(err)
			}
			succ := warmOpenT(t, w, opts)
			checkSameState(t, inc, succ)
			if rc := succ.Recovery(); rc.FullLoad != compact {
				t.Errorf("Recovery = %+v, want full load %v", rc, compact)
			}
		})
	}
}

// TestPrepareIsReadOnly: Prepare creates, changes and removes nothing, even
// where the lock holder would (a torn tail, a stale temporary snapshot).
func TestPrepareIsReadOnly(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, smallSegments(512, false))
	for i := range 40 {
		mustPut(t, s, fmt.Sprintf("k%d", i), "a value of some length")
	}
	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		mustPut(t, s, fmt.Sprintf("later%d", i), "x")
	}
	active := filepath.Join(dir, s.Stats().ActiveSegment)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	appendBytes(t, active, unackedBatch(46, 2)[:30]) // a torn tail
	writeFile(t, filepath.Join(dir, SnapshotFileName+".tmp-123"), []byte("half a snapshot"))

	before := dirState(t, dir)
	for range 2 {
		w, err := Prepare(dir)
		if err != nil {
			t.Fatal(err)
		}
		if w.Revision() != 45 {
			t.Errorf("warm-up at revision %d, want 45", w.Revision())
		}
		w.Close()
	}
	if after := dirState(t, dir); !maps.Equal(after, before) {
		t.Errorf("Prepare changed the directory:\nbefore %v\nafter  %v", before, after)
	}
}

// dirState describes every file in dir: name, size, modification time.
func dirState(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = fmt.Sprintf("%d bytes, %v", fi.Size(), fi.ModTime().UnixNano())
	}
	return m
}

// TestPrepareStopsAtAnIncompleteRecord: the incumbent is in the middle of
// writing a batch; the warm-up stops before it, and Warm.Open reads it
// once complete, or cuts it off as a torn tail if it never was.
func TestPrepareStopsAtAnIncompleteRecord(t *testing.T) {
	tests := []struct {
		name       string
		completed  bool
		wantRev    uint64
		wantCaught int
	}{
		{"completed after the warm-up", true, 5, 2},
		{"never completed", false, 3, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, LogFileName)
			writeFile(t, path, unackedBatch(1, 3))
			tail := unackedBatch(4, 2)
			appendBytes(t, path, tail[:20])
			w, err := Prepare(dir)
			if err != nil {
				t.Fatalf("Prepare with a record being written: %v", err)
			}
			if w.Revision() != 3 {
				t.Errorf("warm-up at revision %d, want 3", w.Revision())
			}
			if tt.completed {
				appendBytes(t, path, tail[20:])
			}
			s := warmOpenT(t, w, defaultOptions())
			rc := s.Recovery()
			if s.Revision() != tt.wantRev || rc.CaughtUpRecords != tt.wantCaught {
				t.Errorf("opened at revision %d, %+v; want %d with %d caught up", s.Revision(), rc, tt.wantRev, tt.wantCaught)
			}
			if !tt.completed && rc.TornTailBytes != 20 {
				t.Errorf("Recovery = %+v, want a torn tail of 20 bytes", rc)
			}
		})
	}
}

// TestCorruptClosedSegment: a closed segment is complete; damage in it,
// even in its last bytes, is corruption for the warm-up and for Open.
func TestCorruptClosedSegment(t *testing.T) {
	for _, where := range []string{"middle", "last byte"} {
		t.Run(where, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir, smallSegments(512, false))
			for i := range 40 {
				mustPut(t, s, fmt.Sprintf("k%d", i), "a value of some length")
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, LogFileName)
			off := fileSize(t, path) / 2
			if where == "last byte" {
				off = fileSize(t, path) - 1
			}
			flipByte(t, path, off)
			if w, err := Prepare(dir); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), LogFileName) {
				if err == nil {
					w.Close()
				}
				t.Errorf("Prepare = %v, want ErrCorrupt naming %s", err, LogFileName)
			}
			if s, err := Open(dir); !errors.Is(err, ErrCorrupt) {
				if err == nil {
					s.Close()
				}
				t.Errorf("Open = %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestWarmOpensOnce(t *testing.T) {
	dir := t.TempDir()
	w, err := Prepare(dir)
	if err != nil {
		t.Fatal(err)
	}
	warmOpenT(t, w, defaultOptions())
	if s, err := w.Open(); err == nil {
		s.Close()
		t.Error("a second Warm.Open succeeded")
	}
	if err := w.Close(); err != nil {
		t.Errorf("Close after Open: %v", err)
	}
	w2, err := Prepare(dir)
	if err != nil {
		t.Fatal(err)
	}
	w2.Close()
	w2.Close()
	if s, err := w2.Open(); err == nil {
		s.Close()
		t.Error("Warm.Open after Close succeeded")
	}
}
