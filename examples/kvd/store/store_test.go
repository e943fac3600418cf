package store

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// waitBound bounds every wait on another goroutine in these tests.
const waitBound = 10 * time.Second

func openT(t *testing.T, dir string, opts options) *Store {
	t.Helper()
	s, err := open(dir, opts)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustPut(t *testing.T, s *Store, key, value string) uint64 {
	t.Helper()
	rev, err := s.Put(key, []byte(value))
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	return rev
}

// contents returns a copy of the store's map, values as strings.
func contents(s *Store) map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := make(map[string]string, len(s.data))
	for k, v := range s.data {
		m[k] = string(v)
	}
	return m
}

// logEnds writes n records one at a time and returns the log offset after
// each of them.
func logEnds(t *testing.T, s *Store, n int) []int64 {
	t.Helper()
	var ends []int64
	for i := range n {
		mustPut(t, s, fmt.Sprintf("k%02d", i), fmt.Sprintf("value-%d", i))
		s.mu.RLock()
		ends = append(ends, s.size)
		s.mu.RUnlock()
	}
	return ends
}

func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitBound):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestRecoverTornTail(t *testing.T) {
	const n = 5
	tests := []struct {
		name string
		// damage changes the log whose records end at ends; it returns how
		// many records survive intact.
		damage func(t *testing.T, path string, ends []int64) (complete int)
	}{
		{"intact", func(*testing.T, string, []int64) int { return n }},
		{"last record one byte short", func(t *testing.T, path string, ends []int64) int {
			truncate(t, path, ends[n-1]-1)
			return n - 1
		}},
		{"partial header", func(t *testing.T, path string, ends []int64) int {
			truncate(t, path, ends[n-2]+3)
			return n - 1
		}},
		{"header without payload", func(t *testing.T, path string, ends []int64) int {
			truncate(t, path, ends[n-2]+recordHeaderLen+2)
			return n - 1
		}},
		{"only half the log", func(t *testing.T, path string, ends []int64) int {
			truncate(t, path, ends[1]+5)
			return 2
		}},
		{"bad checksum in the last record", func(t *testing.T, path string, ends []int64) int {
			flipByte(t, path, ends[n-1]-1)
			return n - 1
		}},
		{"zero-filled tail", func(t *testing.T, path string, ends []int64) int {
			appendBytes(t, path, make([]byte, 4096))
			return n
		}},
		{"everything torn", func(t *testing.T, path string, ends []int64) int {
			truncate(t, path, 6)
			return 0
		}},
		{"unacknowledged batch zeroed from inside its first record", func(t *testing.T, path string, ends []int64) int {
			// Three acknowledged records, then a batch of three whose
			// bytes from offset 100 never reached the disk.
			truncate(t, path, ends[2])
			appendBytes(t, path, unackedBatch(4, 3))
			zeroFrom(t, path, 100)
			return 3
		}},
		{"hole across an unacknowledged batch, its last record cut short", func(t *testing.T, path string, ends []int64) int {
			batch := unackedBatch(n+1, 3)
			appendBytes(t, path, batch[:len(batch)-5])
			writeAt(t, path, ends[n-1]+20, make([]byte, 30)) // records n+1 and n+2
			return n
		}},
		{"garbage length in an unacknowledged batch", func(t *testing.T, path string, ends []int64) int {
			batch := unackedBatch(n+1, 2)
			appendBytes(t, path, batch[:len(batch)-1])
			writeAt(t, path, ends[n-1], []byte{0xff, 0xff, 0x0f, 0x00}) // overruns the log
			return n
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir, defaultOptions())
			ends := logEnds(t, s, n)
			want := contents(s)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, LogFileName)
			sizeBefore := fileSize(t, path)
			complete := tt.damage(t, path, ends)
			damaged := fileSize(t, path)

			s = openT(t, dir, defaultOptions())
			if got := s.Revision(); got != uint64(complete) {
				t.Errorf("Revision = %d, want %d", got, complete)
			}
			for i := complete; i < n; i++ {
				delete(want, fmt.Sprintf("k%02d", i))
			}
			if got := contents(s); !maps.Equal(got, want) {
				t.Errorf("contents = %v, want %v", got, want)
			}
			var validEnd int64
			if complete > 0 {
				validEnd = ends[complete-1]
			}
			rc := s.Recovery()
			wantTorn := damaged - validEnd
			if rc.TornTailBytes != wantTorn || (wantTorn > 0 && rc.TornTailAt != validEnd) {
				t.Errorf("Recovery = %+v, want a torn tail of %d bytes at %d (log was %d bytes, %d after damage)",
					rc, wantTorn, validEnd, sizeBefore, damaged)
			}
			if got := fileSize(t, path); got != validEnd {
				t.Errorf("log is %d bytes after recovery, want %d", got, validEnd)
			}

			// The recovered store keeps counting and reopens cleanly.
			if rev := mustPut(t, s, "after", "recovery"); rev != uint64(complete)+1 {
				t.Errorf("first revision after recovery = %d, want %d", rev, complete+1)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = openT(t, dir, defaultOptions())
			if rc := s.Recovery(); rc.TornTailBytes != 0 || rc.Replayed != complete+1 {
				t.Errorf("second recovery = %+v, want %d records replayed and no torn tail", rc, complete+1)
			}
		})
	}
}

func TestCorruptionInTheMiddle(t *testing.T) {
	tests := []struct {
		name string
		// damage returns the offset Open must name.
		damage func(t *testing.T, path string, ends []int64) int64
	}{
		{"flipped payload byte", func(t *testing.T, path string, ends []int64) int64 {
			flipByte(t, path, ends[1]+recordHeaderLen+3)
			return ends[1]
		}},
		{"flipped checksum byte", func(t *testing.T, path string, ends []int64) int64 {
			flipByte(t, path, ends[2]+5)
			return ends[2]
		}},
		{"absurd length", func(t *testing.T, path string, ends []int64) int64 {
			writeAt(t, path, ends[0], []byte{0xff, 0xff, 0xff, 0x7f})
			return ends[0]
		}},
		{"first record damaged", func(t *testing.T, path string, ends []int64) int64 {
			flipByte(t, path, recordHeaderLen)
			return 0
		}},
		{"length overrunning the log", func(t *testing.T, path string, ends []int64) int64 {
			// Without the intact records behind it this would pass for a
			// torn last record and cut three acknowledged writes.
			writeAt(t, path, ends[1], []byte{0xff, 0xff, 0x0f, 0x00})
			return ends[1]
		}},
		{"hole before intact records of the last batch", func(t *testing.T, path string, ends []int64) int64 {
			// The batch was not acknowledged, but the log cannot tell its
			// records from acknowledged ones: refused, not guessed.
			appendBytes(t, path, unackedBatch(6, 3))
			writeAt(t, path, ends[4]+recordHeaderLen, make([]byte, 10))
			return ends[4]
		}},
		{"damage more than a batch before the end", func(t *testing.T, path string, ends []int64) int64 {
			flipByte(t, path, ends[4]-1)
			appendBytes(t, path, make([]byte, maxBatchBytes))
			return ends[3]
		}},
		{"revision gap", func(t *testing.T, path string, ends []int64) int64 {
			appendBytes(t, path, appendRecord(nil, record{op: opDelete, rev: 7, key: "k"}))
			appendBytes(t, path, appendRecord(nil, record{op: opDelete, rev: 8, key: "k"}))
			return ends[len(ends)-1]
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir, defaultOptions())
			ends := logEnds(t, s, 5)
			s.Close()
			path := filepath.Join(dir, LogFileName)
			before := fileSize(t, path)
			wantOff := tt.damage(t, path, ends)

			s, err := Open(dir)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded on a log damaged in the middle")
			}
			var ce *CorruptError
			if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) {
				t.Fatalf("Open error = %v, want a *CorruptError", err)
			}
			if ce.Offset != wantOff || ce.Path != path {
				t.Errorf("CorruptError names %s offset %d, want %s offset %d (%v)", ce.Path, ce.Offset, path, wantOff, err)
			}
			if got := fileSize(t, path); got < before {
				t.Errorf("Open cut a corrupt log from %d to %d bytes; it must keep the evidence", before, got)
			}
		})
	}
}

// TestRevisionsAcrossHandoffs simulates a chain of handoffs: each
// generation opens the directory, writes, and seals it for the next.
func TestRevisionsAcrossHandoffs(t *testing.T) {
	dir := t.TempDir()
	var last uint64
	want := map[string]string{}
	for gen := range 5 {
		s := openT(t, dir, defaultOptions())
		if got := s.Revision(); got != last {
			t.Fatalf("generation %d opened at revision %d, the previous one sealed %d", gen, got, last)
		}
		for i := range 3 {
			k, v := fmt.Sprintf("g%d-k%d", gen, i), fmt.Sprintf("v%d", gen)
			rev := mustPut(t, s, k, v)
			if rev != last+1 {
				t.Fatalf("generation %d: revision %d after %d", gen, rev, last)
			}
			last, want[k] = rev, v
		}
		if gen > 0 {
			k := fmt.Sprintf("g%d-k0", gen-1)
			rev, err := s.Delete(k)
			if err != nil || rev != last+1 {
				t.Fatalf("generation %d: Delete = %d, %v; want revision %d", gen, rev, err, last+1)
			}
			last = rev
			delete(want, k)
		}
		if err := s.Seal(); err != nil {
			t.Fatalf("generation %d: Seal: %v", gen, err)
		}
		if got := s.Revision(); got != last {
			t.Fatalf("generation %d sealed at revision %d, want %d", gen, got, last)
		}
	}
	s := openT(t, dir, defaultOptions())
	if got := contents(s); !maps.Equal(got, want) {
		t.Errorf("final contents = %v, want %v", got, want)
	}
}

func TestSealThenOpenYieldsSameState(t *testing.T) {
	type op struct {
		del        bool
		key, value string
	}
	tests := []struct {
		name string
		ops  []op
	}{
		{"empty", nil},
		{"puts", []op{{key: "a", value: "1"}, {key: "b", value: "2"}, {key: "c", value: ""}}},
		{"overwrites", []op{{key: "a", value: "1"}, {key: "a", value: "2"}, {key: "a", value: "3"}}},
		{"deletes", []op{{key: "a", value: "1"}, {key: "b", value: "2"}, {del: true, key: "a"}, {del: true, key: "zz"}}},
		{"binary", []op{{key: "\x00\xff", value: "\x00\x01\x02"}, {key: "long", value: string(bytes.Repeat([]byte{7}, 100_000))}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openT(t, dir, defaultOptions())
			for _, o := range tt.ops {
				var err error
				if o.del {
					_, err = s.Delete(o.key)
				} else {
					_, err = s.Put(o.key, []byte(o.value))
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			before, size := s.Fingerprint(), fileSize(t, filepath.Join(dir, LogFileName))
			if err := s.Seal(); err != nil {
				t.Fatal(err)
			}
			rev, fp, want := s.Revision(), s.Fingerprint(), contents(s)
			if fp != before {
				t.Errorf("Seal's fingerprint %s differs from the open store's %s", fp, before)
			}
			// Seal writes nothing: the log is the state.
			if got := fileSize(t, filepath.Join(dir, LogFileName)); got != size {
				t.Errorf("log is %d bytes after Seal, %d before", got, size)
			}
			if _, err := os.Stat(filepath.Join(dir, SnapshotFileName)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Seal wrote a snapshot (stat: %v)", err)
			}

			r := openT(t, dir, defaultOptions())
			if got := contents(r); !maps.Equal(got, want) {
				t.Errorf("reopened contents = %v, want %v", got, want)
			}
			if r.Revision() != rev || r.Fingerprint() != fp {
				t.Errorf("reopened at %d %s, sealed at %d %s", r.Revision(), r.Fingerprint(), rev, fp)
			}
			if rc := r.Recovery(); rc.SnapshotRevision != 0 || rc.Replayed != len(tt.ops) || rc.TornTailBytes != 0 || rc.FullLoad {
				t.Errorf("Recovery = %+v, want no snapshot and %d records replayed", rc, len(tt.ops))
			}
		})
	}
}

// TestReopenAfterAbortReadsDisk: the incumbent seals, a successor opens
// and writes, then goes away; the incumbent resumes and must see its write.
func TestReopenAfterAbortReadsDisk(t *testing.T) {
	dir := t.TempDir()
	inc := openT(t, dir, defaultOptions())
	mustPut(t, inc, "a", "from the incumbent")
	if err := inc.Seal(); err != nil {
		t.Fatal(err)
	}

	succ := openT(t, dir, defaultOptions())
	rev := mustPut(t, succ, "b", "from the successor")
	if err := succ.Close(); err != nil {
		t.Fatal(err)
	}

	for range 2 { // idempotent
		if err := inc.Reopen(); err != nil {
			t.Fatalf("Reopen: %v", err)
		}
	}
	if got := inc.Revision(); got != rev {
		t.Errorf("Revision after Reopen = %d, want the successor's %d", got, rev)
	}
	want := map[string]string{"a": "from the incumbent", "b": "from the successor"}
	if got := contents(inc); !maps.Equal(got, want) {
		t.Errorf("contents after Reopen = %v, want %v", got, want)
	}
	if next := mustPut(t, inc, "c", "resumed"); next != rev+1 {
		t.Errorf("first revision after Reopen = %d, want %d", next, rev+1)
	}
	if err := inc.Check(); err != nil {
		t.Errorf("Check after Reopen: %v", err)
	}
}

func TestConcurrentWriters(t *testing.T) {
	const writers, perWriter = 16, 40
	dir := t.TempDir()
	s := openT(t, dir, defaultOptions())

	type ack struct {
		rev        uint64
		key, value string
	}
	acks := make(chan ack, writers*perWriter)
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				// Half the writes go to a small shared key space, so the
				// order of overwrites matters.
				key := fmt.Sprintf("w%d-%d", w, i)
				if i%2 == 0 {
					key = fmt.Sprintf("shared-%d", i%5)
				}
				value := fmt.Sprintf("w%d-i%d", w, i)
				rev, err := s.Put(key, []byte(value))
				if err != nil {
					errs <- err
					return
				}
				acks <- ack{rev, key, value}
			}
		})
	}
	wg.Wait()
	close(acks)
	close(errs)
	for err := range errs {
		t.Fatalf("Put: %v", err)
	}

	latest := map[string]ack{}
	seen := map[uint64]bool{}
	for a := range acks {
		if seen[a.rev] {
			t.Fatalf("revision %d acknowledged twice", a.rev)
		}
		seen[a.rev] = true
		if a.rev > latest[a.key].rev {
			latest[a.key] = a
		}
	}
	const total = writers * perWriter
	if len(seen) != total || s.Revision() != total {
		t.Fatalf("%d acknowledged revisions, store at %d; want %d", len(seen), s.Revision(), total)
	}
	s.mu.RLock()
	fsyncs := s.fsyncs
	s.mu.RUnlock()
	t.Logf("%d writes in %d fsyncs", total, fsyncs)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	r := openT(t, dir, defaultOptions())
	if r.Revision() != total {
		t.Errorf("reopened at revision %d, want %d", r.Revision(), total)
	}
	for k, a := range latest {
		if v, ok := r.Get(k); !ok || string(v) != a.value {
			t.Errorf("after reopen %q = %q (present %v), want %q from revision %d", k, v, ok, a.value, a.rev)
		}
	}
	if r.Len() != len(latest) {
		t.Errorf("Len = %d, want %d", r.Len(), len(latest))
	}
}

func TestWriteRefused(t *testing.T) {
	tests := []struct {
		name  string
		after func(*Store) error
		want  error
	}{
		{"after Seal", (*Store).Seal, ErrSealed},
		{"after Close", (*Store).Close, ErrClosed},
		{"after Seal and Close", func(s *Store) error { return errors.Join(s.Seal(), s.Close()) }, ErrClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openT(t, t.TempDir(), defaultOptions())
			rev := mustPut(t, s, "k", "v")
			if err := tt.after(s); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Put("k", []byte("w")); !errors.Is(err, tt.want) {
				t.Errorf("Put = %v, want %v", err, tt.want)
			}
			if _, err := s.Delete("k"); !errors.Is(err, tt.want) {
				t.Errorf("Delete = %v, want %v", err, tt.want)
			}
			if err := s.Check(); !errors.Is(err, tt.want) {
				t.Errorf("Check = %v, want %v", err, tt.want)
			}
			if v, ok := s.Get("k"); !ok || string(v) != "v" || s.Revision() != rev {
				t.Errorf("Get = %q, %v at revision %d; reads must still see revision %d", v, ok, s.Revision(), rev)
			}
		})
	}
}

func TestInvalidWrites(t *testing.T) {
	s := openT(t, t.TempDir(), defaultOptions())
	tests := []struct {
		name  string
		key   string
		value []byte
		want  error
	}{
		{"empty key", "", nil, ErrInvalidKey},
		{"long key", string(make([]byte, MaxKeyLen+1)), nil, ErrInvalidKey},
		{"large value", "k", make([]byte, MaxValueLen+1), ErrValueTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.Put(tt.key, tt.value); !errors.Is(err, tt.want) {
				t.Errorf("Put = %v, want %v", err, tt.want)
			}
		})
	}
	if s.Revision() != 0 {
		t.Errorf("refused writes advanced the revision to %d", s.Revision())
	}
}

// TestFsyncFailureFailsBatch: the writes whose fsync failed and every write
// queued behind them fail, nothing is retried, and the store stays failed.
func TestFsyncFailureFailsBatch(t *testing.T) {
	errInjected := errors.New("injected EIO")
	tests := []struct {
		name     string
		failCall int // which log fsync fails, from 1
	}{
		{"first batch", 1},
		{"second batch", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			const queued = 5
			entered := make(chan struct{}) // the failing fsync started
			release := make(chan struct{}) // let it return
			enqueued := make(chan struct{}, 2*queued+2)
			calls := 0
			opts := defaultOptions()
			opts.syncFile = func(f *os.File) error {
				calls++ // only the committing writer calls it
				if calls != tt.failCall {
					return f.Sync()
				}
				close(entered)
				<-release
				return errInjected
			}
			opts.onEnqueue = func() { enqueued <- struct{}{} }
			s := openT(t, dir, opts)

			var acked []string
			for i := 1; i < tt.failCall; i++ {
				mustPut(t, s, fmt.Sprintf("ok%d", i), "durable")
				<-enqueued
				acked = append(acked, fmt.Sprintf("ok%d", i))
			}

			results := make(chan error, queued+1)
			go func() {
				_, err := s.Put("leader", []byte("x"))
				results <- err
			}()
			wait(t, entered, "the failing fsync")
			<-enqueued
			for i := range queued {
				go func() {
					_, err := s.Put(fmt.Sprintf("queued%d", i), []byte("x"))
					results <- err
				}()
			}
			for range queued {
				select {
				case <-enqueued:
				case <-time.After(waitBound):
					t.Fatal("timed out waiting for writers to queue")
				}
			}
			close(release)
			for range queued + 1 {
				select {
				case err := <-results:
					if !errors.Is(err, ErrFailed) || !errors.Is(err, errInjected) {
						t.Errorf("write in or behind the failed batch returned %v, want ErrFailed wrapping the fsync error", err)
					}
				case <-time.After(waitBound):
					t.Fatal("timed out waiting for the writes to fail")
				}
			}
			callsAfter := calls

			if _, err := s.Put("later", []byte("x")); !errors.Is(err, ErrFailed) {
				t.Errorf("Put on a failed store = %v, want ErrFailed", err)
			}
			for name, err := range map[string]error{"Sync": s.Sync(), "Seal": s.Seal(), "Check": s.Check()} {
				if !errors.Is(err, ErrFailed) {
					t.Errorf("%s on a failed store = %v, want ErrFailed", name, err)
				}
			}
			// An aborted handoff resumes a failed store as it was:
			// serving reads, refusing writes.
			if err := s.Reopen(); err != nil {
				t.Errorf("Reopen on a failed store = %v, want nil (it stays failed)", err)
			}
			if _, err := s.Put("after-reopen", []byte("x")); !errors.Is(err, ErrFailed) {
				t.Errorf("Put after Reopen on a failed store = %v, want ErrFailed", err)
			}
			for _, k := range acked {
				if _, ok := s.Get(k); !ok {
					t.Errorf("acknowledged %q not served by the failed store", k)
				}
			}
			if calls != callsAfter {
				t.Errorf("the store called fsync %d more times after failing", calls-callsAfter)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			// A restart recovers; every acknowledged write is there.
			r := openT(t, dir, defaultOptions())
			for _, k := range acked {
				if _, ok := r.Get(k); !ok {
					t.Errorf("acknowledged %q lost", k)
				}
			}
		})
	}
}

// TestSealFailure: a seal that cannot finish (its last batch's fsync
// failed) fails, refuses writes, and a restart recovers every write that
// was acknowledged.
func TestSealFailure(t *testing.T) {
	errInjected := errors.New("injected EIO")
	dir := t.TempDir()
	entered, release := make(chan struct{}), make(chan struct{})
	calls := 0
	opts := defaultOptions()
	opts.syncFile = func(f *os.File) error {
		if calls++; calls == 2 {
			close(entered)
			<-release
			return errInjected
		}
		return f.Sync()
	}
	s := openT(t, dir, opts)
	mustPut(t, s, "k", "v")
	put := make(chan error, 1)
	go func() {
		_, err := s.Put("unacked", []byte("x"))
		put <- err
	}()
	wait(t, entered, "the second fsync")
	sealed := make(chan error, 1)
	go func() { sealed <- s.Seal() }()
	close(release)
	select {
	case err := <-sealed:
		if !errors.Is(err, ErrFailed) || !errors.Is(err, errInjected) {
			t.Errorf("Seal = %v, want ErrFailed wrapping the fsync error", err)
		}
	case <-time.After(waitBound):
		t.Fatal("Seal did not return")
	}
	if err := <-put; !errors.Is(err, ErrFailed) {
		t.Errorf("the write whose fsync failed returned %v", err)
	}
	if _, err := s.Put("k2", []byte("v2")); !errors.Is(err, ErrFailed) {
		t.Errorf("Put after the failed Seal = %v, want ErrFailed", err)
	}
	s.Close()
	r := openT(t, dir, defaultOptions())
	if v, ok := r.Get("k"); !ok || string(v) != "v" {
		t.Errorf("after restart k = %q, %v; want the acknowledged %q", v, ok, "v")
	}
}

func TestSyncWaitsForBatchInFlight(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	opts := defaultOptions()
	opts.syncFile = func(f *os.File) error {
		once.Do(func() {
			close(entered)
			<-release
		})
		return f.Sync()
	}
	s := openT(t, t.TempDir(), opts)
	put := make(chan error, 1)
	go func() {
		_, err := s.Put("k", []byte("v"))
		put <- err
	}()
	wait(t, entered, "the fsync")
	synced := make(chan error, 1)
	go func() { synced <- s.Sync() }()
	close(release)
	select {
	case err := <-synced:
		if err != nil {
			t.Fatal(err)
		}
		if s.Revision() != 1 {
			t.Errorf("Sync returned at revision %d, before the write in flight was durable", s.Revision())
		}
	case <-time.After(waitBound):
		t.Fatal("Sync did not return")
	}
	if err := <-put; err != nil {
		t.Fatal(err)
	}
}

func TestCheckNoticesAnotherWriter(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, defaultOptions())
	mustPut(t, s, "k", "v")
	if err := s.Check(); err != nil {
		t.Fatalf("Check on a healthy store: %v", err)
	}
	appendBytes(t, filepath.Join(dir, LogFileName), appendRecord(nil, record{op: opDelete, rev: 2, key: "k"}))
	if err := s.Check(); err == nil {
		t.Error("Check did not notice a record appended by someone else")
	}
}

// unackedBatch encodes count records from revision first on, as one
// group commit writes them.
func unackedBatch(first uint64, count int) []byte {
	var b []byte
	for i := range count {
		rev := first + uint64(i)
		b = appendRecord(b, record{op: opPut, rev: rev, key: fmt.Sprintf("unacked%02d", rev), value: []byte("never acknowledged")})
	}
	return b
}

// zeroFrom overwrites the file from off to its end with zeros.
func zeroFrom(t *testing.T, path string, off int64) {
	t.Helper()
	writeAt(t, path, off, make([]byte, fileSize(t, path)-off))
}

func truncate(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeAt(t, path, off, []byte{b[off] ^ 0x55})
}

func writeAt(t *testing.T, path string, off int64, p []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
}

func appendBytes(t *testing.T, path string, p []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(p); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedRecordsAlreadyInSnapshot: the single-file layout wrote the
// snapshot, then emptied kv.wal; a crash between the two left records the
// snapshot holds. Damage there loses nothing; the log's good part is kept
// (the compactor deletes it), and the writer starts a new segment so that
// revisions stay consecutive in each.
func TestDamagedRecordsAlreadyInSnapshot(t *testing.T) {
	dir := t.TempDir()
	want := map[string]string{}
	var log []byte
	var ends []int64
	for i := range 5 {
		k, v := fmt.Sprintf("k%02d", i), fmt.Sprintf("value-%d", i)
		log = appendRecord(log, record{op: opPut, rev: uint64(i + 1), key: k, value: []byte(v)})
		ends = append(ends, int64(len(log)))
		want[k] = v
	}
	writeFile(t, filepath.Join(dir, SnapshotFileName), encodeSnapshotV1(5, want))
	path := filepath.Join(dir, LogFileName)
	writeFile(t, path, log)
	flipByte(t, path, ends[2]+recordHeaderLen+1)

	s := openT(t, dir, defaultOptions())
	if got := contents(s); !maps.Equal(got, want) || s.Revision() != 5 {
		t.Fatalf("recovered revision %d, %v; want 5, %v", s.Revision(), got, want)
	}
	if rc := s.Recovery(); rc.TornTailAt != ends[2] || rc.Replayed != 0 {
		t.Errorf("Recovery = %+v, want the damage from %d cut and nothing replayed", rc, ends[2])
	}
	if rev := mustPut(t, s, "after", "recovery"); rev != 6 {
		t.Errorf("revision after recovery = %d, want 6", rev)
	}
	if got := s.Stats().ActiveSegment; got != segmentName(1) {
		t.Errorf("writing to %s, want a new segment %s", got, segmentName(1))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s, covered by the snapshot, is still there (stat: %v)", LogFileName, err)
	}
	s = openT(t, dir, defaultOptions())
	if rc := s.Recovery(); s.Revision() != 6 || rc.Replayed != 1 {
		t.Errorf("second open: revision %d, recovery %+v; want 6 with one record replayed", s.Revision(), rc)
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// Check runs beside writers (the daemon's /healthz does): a batch being
// committed must never look like a foreign writer.
func TestCheckBesideWriters(t *testing.T) {
	// Without fsyncs the writers leave the queue empty often, which is
	// when a Check that read the state before a batch started would stat
	// the file after it was written.
	opts := defaultOptions()
	opts.syncFile = func(*os.File) error { return nil }
	s := openT(t, t.TempDir(), opts)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.Put(fmt.Sprintf("w%d-%d", w, i), []byte("v")); err != nil {
					t.Errorf("put: %v", err)
					return
				}
			}
		}()
	}
	for range 20000 {
		if err := s.Check(); err != nil {
			t.Errorf("Check beside writers: %v", err)
			break
		}
	}
	close(stop)
	wg.Wait()
}
