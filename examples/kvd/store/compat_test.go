package store

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"testing"
)

// testdata/v1 holds data directories written by the single-file layout
// (the store before log segments): kv.snap version 1 and kv.wal. Their
// contents are what these functions write.
func v1History(dir string) (rev uint64, data map[string]string) {
	data = map[string]string{}
	put := func(k, v string) { rev++; data[k] = v }
	del := func(k string) { rev++; delete(data, k) }
	switch dir {
	case "sealed", "snapshot-and-log":
		for i := range 20 {
			put(fmt.Sprintf("key-%02d", i), fmt.Sprintf("value-%d", i))
		}
		for i := range 3 {
			del(fmt.Sprintf("key-%02d", i))
		}
		put("key-05", "overwritten")
		put("empty", "")
		if dir == "sealed" {
			break
		}
		for i := range 5 {
			put(fmt.Sprintf("later-%d", i), "after the seal")
		}
		del("key-10")
		put("key-11", "changed after the seal")
	case "log-only":
		for i := range 10 {
			put(fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i))
		}
		del("k3")
	}
	return rev, data
}

func copyDir(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(to, e.Name()), b)
	}
	return to
}

// TestOldLayoutRecovers: directories the single-file layout left recover
// at a cold start with the same state, take writes, and convert to the
// segment layout by compacting.
func TestOldLayoutRecovers(t *testing.T) {
	tests := []struct {
		dir          string
		snapRev      uint64
		wantReplayed int
	}{
		{"sealed", 25, 0},
		{"snapshot-and-log", 25, 7},
		{"log-only", 0, 11},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			dir := copyDir(t, filepath.Join("testdata", "v1", tt.dir))
			wantRev, want := v1History(tt.dir)
			w, err := Prepare(dir)
			if err != nil {
				t.Fatal(err)
			}
			if w.Revision() != wantRev || !maps.Equal(warmContents(w), want) {
				t.Errorf("warm-up at revision %d with %v, want %d with %v", w.Revision(), warmContents(w), wantRev, want)
			}
			s := warmOpenT(t, w, defaultOptions())
			if s.Revision() != wantRev || !maps.Equal(contents(s), want) {
				t.Errorf("opened at revision %d with %v, want %d with %v", s.Revision(), contents(s), wantRev, want)
			}
			if rc := s.Recovery(); rc.SnapshotRevision != tt.snapRev || rc.Replayed != tt.wantReplayed || rc.TornTailBytes != 0 {
				t.Errorf("Recovery = %+v, want snapshot %d and %d records", rc, tt.snapRev, tt.wantReplayed)
			}
			if rev := mustPut(t, s, "new", "write"); rev != wantRev+1 {
				t.Errorf("first new revision %d, want %d", rev, wantRev+1)
			}
			want["new"] = "write"
			if err := s.Compact(); err != nil {
				t.Fatal(err)
			}
			s.Close()
			b, err := os.ReadFile(filepath.Join(dir, SnapshotFileName))
			if err != nil || string(b[:len(snapMagicV2)]) != snapMagicV2 {
				t.Errorf("after compaction kv.snap starts %q (%v), want %q", b[:min(8, len(b))], err, snapMagicV2)
			}
			if _, err := os.Stat(filepath.Join(dir, LogFileName)); !os.IsNotExist(err) {
				t.Errorf("kv.wal still there after the compaction covered it (stat: %v)", err)
			}
			r := openT(t, dir, defaultOptions())
			if r.Revision() != wantRev+1 || !maps.Equal(contents(r), want) {
				t.Errorf("reopened at revision %d with %v, want %d with %v", r.Revision(), contents(r), wantRev+1, want)
			}
		})
	}
}

// TestOldLayoutLogCoveredBySnapshot: the single-file layout's Seal wrote
// the snapshot and then emptied kv.wal; a crash between the two left the
// log's records, all in the snapshot. They are skipped, and the next
// write continues kv.wal.
func TestOldLayoutLogCoveredBySnapshot(t *testing.T) {
	dir := t.TempDir()
	want := map[string]string{}
	var log []byte
	for i := range 5 {
		k, v := fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i)
		log = appendRecord(log, record{op: opPut, rev: uint64(i + 1), key: k, value: []byte(v)})
		want[k] = v
	}
	writeFile(t, filepath.Join(dir, SnapshotFileName), encodeSnapshotV1(5, want))
	writeFile(t, filepath.Join(dir, LogFileName), log)
	s := openT(t, dir, defaultOptions())
	if s.Revision() != 5 || !maps.Equal(contents(s), want) || s.Recovery().Replayed != 0 {
		t.Fatalf("opened at %d with %v (%+v), want 5 with %v and nothing replayed", s.Revision(), contents(s), s.Recovery(), want)
	}
	mustPut(t, s, "k5", "v5")
	want["k5"] = "v5"
	s.Close()
	r := openT(t, dir, defaultOptions())
	if r.Revision() != 6 || !maps.Equal(contents(r), want) || r.Recovery().Replayed != 1 {
		t.Errorf("reopened at %d with %v (%+v), want 6 with %v", r.Revision(), contents(r), r.Recovery(), want)
	}
}
