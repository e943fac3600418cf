package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// segmentFiles lists the segment files in dir, oldest first.
func segmentFiles(t *testing.T, dir string) []string {
	t.Helper()
	seqs, err := listSegments(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, seq := range seqs {
		names = append(names, segmentName(seq))
	}
	return names
}

// snapshotContents decodes the snapshot file of dir.
func snapshotContents(t *testing.T, dir string) (uint64, map[string]string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, SnapshotFileName))
	if err != nil {
		t.Fatal(err)
	}
	rev, _, data, err := decodeSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	return rev, data
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	const limit = 512
	opts := smallSegments(limit, false)
	var dirSyncs int
	opts.syncDir = func(d string) error {
		dirSyncs++ // only the committer (one at a time) rotates here
		return syncDir(d)
	}
	s := openT(t, dir, opts)
	created := dirSyncs // the first segment's name
	var maxRecord int64
	for i := range 60 {
		before := s.Stats().ActiveBytes
		mustPut(t, s, fmt.Sprintf("k%02d", i), fmt.Sprintf("value-%d", i))
		if st := s.Stats(); st.ActiveBytes > before {
			maxRecord = max(maxRecord, st.ActiveBytes-before)
		}
	}
	want := contents(s)
	names := segmentFiles(t, dir)
	if len(names) < 3 || names[0] != LogFileName || names[1] != "kv-00000001.wal" {
		t.Fatalf("segments %v, want kv.wal, kv-00000001.wal, ...", names)
	}
	for _, n := range names[:len(names)-1] {
		if size := fileSize(t, filepath.Join(dir, n)); size < limit || size >= limit+maxRecord {
			t.Errorf("closed segment %s is %d bytes, want %d up to one batch more", n, size, limit)
		}
	}
	if st := s.Stats(); st.ClosedSegments != len(names)-1 || st.ActiveSegment != names[len(names)-1] {
		t.Errorf("Stats = %+v, segments on disk %v", st, names)
	}
	if got := dirSyncs - created; got != len(names)-1 {
		t.Errorf("%d directory fsyncs for %d rotations", got, len(names)-1)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r := openT(t, dir, opts)
	if got := contents(r); r.Revision() != 60 || !maps.Equal(got, want) {
		t.Errorf("reopened at revision %d with %d keys, want 60 with %d", r.Revision(), len(got), len(want))
	}
	if rc := r.Recovery(); rc.Replayed != 60 {
		t.Errorf("Recovery = %+v, want 60 records replayed across %d segments", rc, len(names))
	}
	if rev := mustPut(t, r, "after", "reopen"); rev != 61 {
		t.Errorf("revision after reopen = %d, want 61", rev)
	}
}

// TestRotationDirSyncFailure: the batch that filled the segment is
// durable and acknowledged; the directory's fsync failing fails the store
// rather than write into a file whose name may not be durable.
func TestRotationDirSyncFailure(t *testing.T) {
	dir := t.TempDir()
	errInjected := errors.New("injected EIO")
	opts := smallSegments(100, false)
	armed := false
	opts.syncDir = func(d string) error {
		if armed {
			return errInjected
		}
		return syncDir(d)
	}
	s := openT(t, dir, opts)
	armed = true
	var acked []string
	for i := 0; ; i++ {
		k := fmt.Sprintf("k%d", i)
		if _, err := s.Put(k, []byte("a value of some length")); err != nil {
			if !errors.Is(err, ErrFailed) || !errors.Is(err, errInjected) {
				t.Fatalf("Put after the failed rotation = %v, want ErrFailed wrapping the fsync error", err)
			}
			break
		}
		acked = append(acked, k)
	}
	s.Close()
	r := openT(t, dir, defaultOptions())
	for _, k := range acked {
		if _, ok := r.Get(k); !ok {
			t.Errorf("acknowledged %s lost", k)
		}
	}
}

func TestCompact(t *testing.T) {
	dir := t.TempDir()
	opts := smallSegments(512, false)
	s := openT(t, dir, opts)
	for i := range 60 {
		mustPut(t, s, fmt.Sprintf("k%02d", i), fmt.Sprintf("value-%d", i))
	}
	for i := range 10 {
		if _, err := s.Delete(fmt.Sprintf("k%02d", i*3)); err != nil {
			t.Fatal(err)
		}
	}
	mustPut(t, s, "k01", "overwritten")
	if err := s.Compact(); err != nil {
		t.Fatal(err)
	}
	rev, want := s.Revision(), contents(s)
	snapRev, snap := snapshotContents(t, dir)
	if snapRev != rev || !maps.Equal(snap, want) {
		t.Errorf("snapshot at %d with %d keys, the store at %d with %d", snapRev, len(snap), rev, len(want))
	}
	if names := segmentFiles(t, dir); len(names) != 1 || names[0] != s.Stats().ActiveSegment {
		t.Errorf("segments after Compact: %v, want only the active one", names)
	}
	if st := s.Stats(); st.SnapshotRevision != rev || st.ClosedSegments != 0 || st.ActiveBytes != 0 || st.Compaction.Snapshots != 1 {
		t.Errorf("Stats = %+v", st)
	}
	if err := s.Compact(); err != nil { // nothing to do
		t.Fatal(err)
	}
	mustPut(t, s, "after", "compaction")
	want["after"] = "compaction"
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r := openT(t, dir, opts)
	if got := contents(r); !maps.Equal(got, want) || r.Revision() != rev+1 {
		t.Errorf("reopened at %d with %v, want %d with %v", r.Revision(), got, rev+1, want)
	}
	if rc := r.Recovery(); rc.SnapshotRevision != rev || rc.Replayed != 1 {
		t.Errorf("Recovery = %+v, want the snapshot at %d and one record", rc, rev)
	}
	// A second compaction merges the first snapshot with the new log.
	if err := r.Compact(); err != nil {
		t.Fatal(err)
	}
	if snapRev, snap := snapshotContents(t, dir); snapRev != rev+1 || !maps.Equal(snap, want) {
		t.Errorf("second snapshot at %d with %d keys, want %d with %d", snapRev, len(snap), rev+1, len(want))
	}
}

// TestBackgroundCompaction: with small segments the store compacts by
// itself and keeps the log short; everything survives a restart.
func TestBackgroundCompaction(t *testing.T) {
	dir := t.TempDir()
	opts := smallSegments(512, true)
	compacted := make(chan error, 100)
	opts.onCompacted = func(err error) {
		select {
		case compacted <- err:
		default:
		}
	}
	s := openT(t, dir, opts)
	for i := 0; s.Stats().Compaction.Snapshots < 3; i++ {
		mustPut(t, s, fmt.Sprintf("k%d", i%50), fmt.Sprintf("value-%d", i))
		if i%20 == 19 {
			select {
			case err := <-compacted:
				if err != nil {
					t.Fatalf("compaction: %v", err)
				}
			case <-time.After(waitBound):
				t.Fatal("no compaction")
			}
		}
	}
	want, rev := contents(s), s.Revision()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	r := openT(t, dir, opts)
	if got := contents(r); r.Revision() != rev || !maps.Equal(got, want) {
		t.Errorf("reopened at %d with %d keys, want %d with %d", r.Revision(), len(got), rev, len(want))
	}
	if rc := r.Recovery(); rc.SnapshotRevision == 0 {
		t.Errorf("Recovery = %+v, want a snapshot", rc)
	}
}

// TestSealCancelsCompaction: a compaction in progress stops at its next
// chunk when the store is sealed; Seal does not wait for it to finish, the
// temporary file is removed and the successor gets everything.
func TestSealCancelsCompaction(t *testing.T) {
	for _, stop := range []string{"Seal", "Close"} {
		t.Run(stop, func(t *testing.T) {
			dir := t.TempDir()
			opts := smallSegments(4<<10, false)
			started := make(chan struct{})
			var once sync.Once
			opts.compactChunk = func(ctx context.Context) {
				once.Do(func() { close(started) })
				<-ctx.Done() // a compaction that would never end by itself
			}
			s := openT(t, dir, opts)
			putMany(t, s, 3*compactChunk)
			compacted := make(chan error, 1)
			go func() { compacted <- s.Compact() }()
			wait(t, started, "the compaction")
			if tmp, _ := filepath.Glob(filepath.Join(dir, snapshotTempPattern)); len(tmp) != 1 {
				t.Fatalf("temporary snapshots while compacting: %v, want one", tmp)
			}
			begin := time.Now()
			var err error
			if stop == "Seal" {
				err = s.Seal()
			} else {
				err = s.Close()
			}
			took := time.Since(begin)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s took %v with a compaction running", stop, took)
			select {
			case err := <-compacted:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Compact = %v, want context.Canceled", err)
				}
			case <-time.After(waitBound):
				t.Fatal("Compact did not return")
			}
			if tmp, _ := filepath.Glob(filepath.Join(dir, snapshotTempPattern)); len(tmp) != 0 {
				t.Errorf("temporary snapshot left behind: %v", tmp)
			}
			if _, err := os.Stat(filepath.Join(dir, SnapshotFileName)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a cancelled compaction put a snapshot in place (stat: %v)", err)
			}
			if stop == "Seal" {
				succ := openT(t, dir, defaultOptions())
				checkSameState(t, s, succ)
			}
		})
	}
}

// TestCompactionFailure: a compaction that fails leaves the old snapshot
// and the segments it did not cover; the store goes on taking writes.
func TestCompactionFailure(t *testing.T) {
	errInjected := errors.New("injected EIO")
	tests := []struct {
		name string
		// inject sets opts to fail; the snapshot's fsync or the directory's
		// after the rename.
		inject       func(opts *options, dir string)
		wantSnapshot bool // a snapshot is in place afterwards (not durable for sure)
	}{
		{"snapshot fsync", func(opts *options, dir string) {
			opts.syncFile = func(f *os.File) error {
				if strings.Contains(f.Name(), ".tmp-") {
					return errInjected
				}
				return f.Sync()
			}
		}, false},
		{"directory fsync after the rename", func(opts *options, dir string) {
			opts.syncDir = func(d string) error {
				if _, err := os.Stat(filepath.Join(dir, SnapshotFileName)); err == nil {
					return errInjected
				}
				return syncDir(d)
			}
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := smallSegments(512, false)
			tt.inject(&opts, dir)
			s := openT(t, dir, opts)
			for i := range 40 {
				mustPut(t, s, fmt.Sprintf("k%02d", i), "a value of some length")
			}
			segsBefore := segmentFiles(t, dir)
			if err := s.Compact(); !errors.Is(err, errInjected) {
				t.Fatalf("Compact = %v, want the injected error", err)
			}
			if tmp, _ := filepath.Glob(filepath.Join(dir, snapshotTempPattern)); len(tmp) != 0 {
				t.Errorf("temporary snapshot left behind: %v", tmp)
			}
			_, err := os.Stat(filepath.Join(dir, SnapshotFileName))
			if (err == nil) != tt.wantSnapshot {
				t.Errorf("snapshot in place: %v, want %v", err == nil, tt.wantSnapshot)
			}
			// Compact closed the active segment first; none was deleted.
			if got := segmentFiles(t, dir); len(got) != len(segsBefore)+1 || !slices.Equal(got[:len(segsBefore)], segsBefore) {
				t.Errorf("segments %v after the failed compaction, %v before", got, segsBefore)
			}
			if st := s.Stats(); st.SnapshotRevision != 0 || !errors.Is(st.Compaction.LastErr, errInjected) {
				t.Errorf("Stats = %+v, want no snapshot counted and the error kept", st)
			}
			mustPut(t, s, "after", "the failure")
			want, rev := contents(s), s.Revision()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			r := openT(t, dir, defaultOptions())
			if got := contents(r); r.Revision() != rev || !maps.Equal(got, want) {
				t.Errorf("reopened at %d with %d keys, want %d with %d", r.Revision(), len(got), rev, len(want))
			}
		})
	}
}

// TestCompactionLeftovers are the states a crash inside a compaction
// leaves, built in-process: a temporary snapshot (even a complete one) is
// never loaded; segments the snapshot covers are skipped and deleted.
func TestCompactionLeftovers(t *testing.T) {
	tests := []struct {
		name string
		// restore picks which of the compacted segments come back.
		restore func(names []string) []string
	}{
		{"renamed, no segment deleted", func(names []string) []string { return names }},
		{"renamed, the first segment deleted", func(names []string) []string { return names[1:] }},
		{"renamed, every segment deleted", func([]string) []string { return nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			opts := smallSegments(512, false)
			s := openT(t, dir, opts)
			for i := range 60 {
				mustPut(t, s, fmt.Sprintf("k%02d", i%25), fmt.Sprintf("value-%d", i))
			}
			if err := s.Compact(); err != nil { // rotates: kv.wal… are closed
				t.Fatal(err)
			}
			mustPut(t, s, "after", "x")
			s.Close()
			saved := map[string][]byte{}
			// The segments the compaction deleted, read back from a copy
			// made before: rebuild them by writing the same history again.
			ref := t.TempDir()
			rs := openT(t, ref, opts)
			for i := range 60 {
				mustPut(t, rs, fmt.Sprintf("k%02d", i%25), fmt.Sprintf("value-%d", i))
			}
			rs.Close()
			names := segmentFiles(t, ref)
			for _, n := range names {
				b, err := os.ReadFile(filepath.Join(ref, n))
				if err != nil {
					t.Fatal(err)
				}
				saved[n] = b
			}
			restored := tt.restore(names)
			for _, n := range restored {
				writeFile(t, filepath.Join(dir, n), saved[n])
			}
			// A complete temporary snapshot with other contents.
			writeFile(t, filepath.Join(dir, SnapshotFileName+".tmp-999"), encodeSnapshotV2(t, 1000, map[string]string{"bogus": "never loaded"}))

			w, err := Prepare(dir)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := w.l.data["bogus"]; ok {
				t.Error("Prepare loaded the temporary snapshot")
			}
			r := warmOpenT(t, w, opts)
			if _, ok := r.Get("bogus"); ok || r.Revision() != 61 {
				t.Errorf("recovered at revision %d (bogus present %v), want 61 from the snapshot and the log", r.Revision(), ok)
			}
			if rc := r.Recovery(); rc.Replayed != 1 {
				t.Errorf("Recovery = %+v, want only the record after the snapshot applied", rc)
			}
			r.Close() // waits for the compactor, which cleans up
			if tmp, _ := filepath.Glob(filepath.Join(dir, snapshotTempPattern)); len(tmp) != 0 {
				t.Errorf("the lock holder left the temporary snapshot: %v", tmp)
			}
			if got := segmentFiles(t, dir); len(got) != 1 {
				t.Errorf("segments %v after the restart, want the covered ones deleted", got)
			}
		})
	}
}

// putMany writes n keys through concurrent writers (few fsyncs).
func putMany(t *testing.T, s *Store, n int) {
	t.Helper()
	const writers = 32
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := w; i < n; i += writers {
				if _, err := s.Put(fmt.Sprintf("k%05d", i), []byte("v")); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
