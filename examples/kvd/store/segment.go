package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// DefaultSegmentBytes is the size past which the writer starts a new log
// segment.
const DefaultSegmentBytes = 64 << 20

// segment is a closed log segment: complete, never written again.
type segment struct {
	seq     uint64
	lastRev uint64 // revision of its last record; 0 if it holds none
	size    int64
}

// segmentName is the file name of log segment seq: kv.wal for 0 (the log
// of the single-file layout), kv-<seq>.wal with at least 8 digits after.
func segmentName(seq uint64) string {
	if seq == 0 {
		return LogFileName
	}
	return fmt.Sprintf("kv-%08d.wal", seq)
}

// parseSegmentName returns the sequence number of a segment file name, and
// false for any other name (temporary files, the lock, the snapshot, names
// not written by segmentName).
func parseSegmentName(name string) (uint64, bool) {
	if name == LogFileName {
		return 0, true
	}
	digits, ok := strings.CutPrefix(name, "kv-")
	if !ok {
		return 0, false
	}
	if digits, ok = strings.CutSuffix(digits, ".wal"); !ok {
		return 0, false
	}
	seq, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || seq == 0 || segmentName(seq) != name {
		return 0, false
	}
	return seq, true
}

// listSegments returns the sequence numbers of the log segments in dir,
// ascending. A missing directory holds none.
func listSegments(dir string) ([]uint64, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: list %s: %w", dir, err)
	}
	var seqs []uint64
	for _, e := range ents {
		if seq, ok := parseSegmentName(e.Name()); ok && e.Type().IsRegular() {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	return seqs, nil
}

func segmentPath(dir string, seq uint64) string {
	return filepath.Join(dir, segmentName(seq))
}

// createSegment creates segment seq for appending, opening it with
// openFile. It fails if the file exists: a segment is created once.
func createSegment(openFile func(string, int, os.FileMode) (*os.File, error), dir string, seq uint64) (*os.File, error) {
	f, err := openFile(segmentPath(dir, seq), os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: create log segment %s: %w", segmentName(seq), err)
	}
	return f, nil
}

// snapshotTempPattern names the temporary files a snapshot is written to
// before it is renamed into place.
const snapshotTempPattern = SnapshotFileName + ".tmp-*"

// staleTemps lists the snapshot files that were never renamed into place
// (a crash).
func staleTemps(dir string) ([]string, error) {
	stale, err := filepath.Glob(filepath.Join(dir, snapshotTempPattern))
	if err != nil {
		return nil, fmt.Errorf("store: list temporary snapshots: %w", err)
	}
	return stale, nil
}

// syncDir fsyncs a directory, making renames and new names in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("store: open directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("store: fsync directory %s: %w", dir, err)
	}
	return nil
}
