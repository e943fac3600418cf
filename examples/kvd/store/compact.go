package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/internal/crash"
)

// compactChunk is how many entries or records a compaction handles between
// two checks for cancellation (about 256 KiB at 1 KiB values).
const compactChunk = 256

// compactSyncBytes is how much of a new snapshot may be written before it
// is fsync'd. Syncing as it goes keeps the final fsync, which cannot be
// cancelled, short (a gigabyte of dirty pages takes about a second here),
// and spares the log's fsyncs a burst of writeback.
const compactSyncBytes = 8 << 20

// compactor is the background goroutine of the store that holds the
// data-directory lock: it merges the snapshot and the closed log segments,
// read from disk, into a new snapshot and deletes the segments it covers.
// It owns the snapshot file and the deletion of segments; the writer only
// tells it a segment was closed. Started when the store becomes writable,
// stopped (cancelled and waited for) by Seal and Close.
type compactor struct {
	s      *Store
	ctx    context.Context
	cancel context.CancelFunc
	kick   chan struct{}   // a segment was closed
	reqs   chan chan error // Compact's requests, each answered once
	done   chan struct{}   // closed when the goroutine has returned
}

// startCompactorLocked starts the compactor. Called with s.mu held (or
// before s is shared) when the store becomes writable.
func (s *Store) startCompactorLocked() {
	ctx, cancel := context.WithCancel(context.Background())
	c := &compactor{s: s, ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1), reqs: make(chan chan error), done: make(chan struct{})}
	s.comp = c
	go c.loop()
}

// stop cancels the compactor and waits until it has returned: a compaction
// in progress stops at its next chunk and removes its temporary file.
func (c *compactor) stop() {
	if c == nil {
		return
	}
	c.cancel()
	<-c.done
}

func (c *compactor) kickNow() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *compactor) loop() {
	defer close(c.done)
	s := c.s
	// A crash may have left temporary snapshots, and segments the
	// snapshot covers already.
	s.noteCompaction(0, errors.Join(s.removeStaleTemps(), s.deleteCovered()), false)
	c.kickNow()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.kick:
			if !s.opts.noAutoCompact && s.compactionDue() {
				s.compact(c.ctx)
			}
		case reply := <-c.reqs:
			reply <- s.compactAll(c.ctx)
		}
	}
}

// compactionDue is the policy: compact once the closed segments beyond the
// snapshot hold at least half as many bytes as the snapshot, so that each
// byte is rewritten a bounded number of times while the log read at a
// restart stays at most about half the snapshot.
func (s *Store) compactionDue() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var beyond int64
	for _, g := range s.segs {
		if g.lastRev > s.snapRev {
			beyond += g.size
		}
	}
	return beyond > 0 && beyond >= s.snapBytes/2
}

// Compact writes a snapshot now, in the compactor goroutine: it closes the
// active segment if it holds records, merges the snapshot on disk and
// every closed segment into a new snapshot and deletes the segments it
// covers. It returns once that is done; if Seal or Close cancel it meanwhile
// it returns their error or context.Canceled. Compact is for tools and
// benchmarks that want a data directory held by a snapshot alone; the store
// compacts by itself in the background.
func (s *Store) Compact() error {
	s.mu.RLock()
	c, refuse := s.comp, s.refuse
	s.mu.RUnlock()
	if c == nil {
		return refuse
	}
	reply := make(chan error, 1)
	select {
	case c.reqs <- reply:
		return <-reply // the loop answers every request it took
	case <-c.done:
		s.mu.RLock()
		defer s.mu.RUnlock()
		return s.refuse
	}
}

// compactAll is Compact's work: close the active segment, then compact.
func (s *Store) compactAll(ctx context.Context) error {
	if err := s.takeTurn(); err != nil {
		return err
	}
	s.mu.RLock()
	full, writable, wfault := s.size > 0, s.f != nil, s.wfault
	s.mu.RUnlock()
	var err error
	switch {
	case full && !writable:
		// The active segment may need cutting before it is closed.
		err = fmt.Errorf("store: compact: %w: the log is not open for writing: %w", ErrWriteFailed, wfault)
	case full:
		err = s.rotate()
	}
	s.mu.Lock()
	s.handTurnLocked()
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.compact(ctx)
}

// check is called between chunks of a compaction.
func (s *Store) compactCheck(ctx context.Context) error {
	if h := s.opts.compactChunk; h != nil {
		h(ctx)
	}
	return ctx.Err()
}

// compact merges the snapshot on disk and the closed segments holding
// revisions beyond it into a new snapshot (temporary file, fsync, rename,
// fsync of the directory), then deletes the segments it covers, oldest
// first. Nothing is taken from the in-memory map, so writers are not held
// up. A failed or cancelled compaction removes its temporary file and
// leaves the old snapshot and every segment in place.
func (s *Store) compact(ctx context.Context) (err error) {
	start := time.Now()
	wrote := false
	defer func() {
		s.noteCompaction(time.Since(start), err, wrote)
		if h := s.opts.onCompacted; h != nil {
			h(err)
		}
	}()

	s.mu.RLock()
	segs, verified := slices.Clone(s.segs), s.snapRev
	s.mu.RUnlock()
	if !slices.ContainsFunc(segs, func(g segment) bool { return g.lastRev > verified }) {
		return s.deleteCovered()
	}

	snapPath := filepath.Join(s.dir, SnapshotFileName)
	var sr *snapReader
	in, err := os.Open(snapPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("store: compact: open snapshot: %w", err)
	default:
		// The rename below unlinks this snapshot; closing the last
		// reference frees it, which is left to a reaper.
		defer s.reap(in)
		if sr, err = newSnapReader(in, snapPath); err != nil {
			return fmt.Errorf("store: compact: %w", err)
		}
	}
	var base uint64
	var snapSize int64
	if sr != nil {
		base = sr.rev
		if fi, err := in.Stat(); err == nil {
			snapSize = fi.Size()
		}
	}
	if err := s.roomToCompact(segs, base, snapSize); err != nil {
		return err
	}

	// The newest operation per key in the closed segments beyond base.
	over := map[string]record{}
	target := base
	for _, g := range segs {
		if g.lastRev <= base {
			continue
		}
		if err := s.readForCompaction(ctx, g, base, &target, over); err != nil {
			return err
		}
	}
	if target == base {
		return s.deleteCovered()
	}
	keys := slices.Sorted(maps.Keys(over))

	tmp, err := os.CreateTemp(s.dir, snapshotTempPattern)
	if err != nil {
		return fmt.Errorf("store: compact: create snapshot: %w", err)
	}
	renamed := false
	defer func() {
		if !renamed {
			// Remove the name now; the open file keeps its blocks until
			// the reaper closes it.
			os.Remove(tmp.Name())
			s.reap(tmp)
		}
	}()
	sw := newSnapWriter(tmp, target)
	var synced int64
	// chunkDone checks for cancellation and fsyncs what was written since
	// the last fsync once it is compactSyncBytes.
	chunkDone := func() error {
		if err := s.compactCheck(ctx); err != nil {
			return err
		}
		if sw.bytes-synced < compactSyncBytes {
			return nil
		}
		if err := sw.flush(); err != nil {
			return fmt.Errorf("store: compact: write snapshot %s: %w", tmp.Name(), err)
		}
		if err := s.opts.syncFile(tmp); err != nil {
			return fmt.Errorf("store: compact: fsync snapshot %s: %w", tmp.Name(), err)
		}
		synced = sw.bytes
		return s.compactCheck(ctx)
	}
	i := 0
	emit := func(k string) error {
		if r := over[k]; r.op == opPut {
			return sw.add([]byte(k), r.value)
		}
		return nil // deleted
	}
	for n := 1; sr != nil; n++ {
		k, v, ok, err := sr.next()
		if err != nil {
			return fmt.Errorf("store: compact: %w", err)
		}
		if !ok {
			break
		}
		for ; i < len(keys) && keys[i] < string(k); i++ {
			if err := emit(keys[i]); err != nil {
				return err
			}
		}
		if i < len(keys) && keys[i] == string(k) {
			err = emit(keys[i])
			i++
		} else {
			err = sw.add(k, v)
		}
		if err != nil {
			return err
		}
		if n%compactChunk == 0 {
			if err := chunkDone(); err != nil {
				return err
			}
		}
	}
	for ; i < len(keys); i++ {
		if err := emit(keys[i]); err != nil {
			return err
		}
		if i%compactChunk == 0 {
			if err := chunkDone(); err != nil {
				return err
			}
		}
	}
	if err := sw.finish(); err != nil {
		return fmt.Errorf("store: compact: write snapshot %s: %w", tmp.Name(), err)
	}
	crash.Point("kvd-compact-written")
	if err := s.compactCheck(ctx); err != nil {
		return err
	}
	if err := s.opts.syncFile(tmp); err != nil {
		return fmt.Errorf("store: compact: fsync snapshot %s: %w", tmp.Name(), err)
	}
	crash.Point("kvd-compact-synced")
	if err := s.compactCheck(ctx); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), snapPath); err != nil {
		return fmt.Errorf("store: compact: rename snapshot into place: %w", err)
	}
	renamed, wrote = true, true
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("store: compact: close snapshot %s: %w", tmp.Name(), err)
	}
	// The segments may go only once the snapshot's name is durable.
	if err := s.opts.syncDir(s.dir); err != nil {
		return fmt.Errorf("store: compact: %w", err)
	}
	crash.Point("kvd-compact-renamed")
	s.mu.Lock()
	s.snapRev, s.snapBytes = target, sw.bytes
	s.mu.Unlock()
	return s.deleteCovered()
}

// compactReserve is the free space a compaction leaves for the log: it
// starts only if the new snapshot fits with this much to spare, so that
// it never fills the disk under the writers.
const compactReserve = maxBatchBytes

// roomToCompact fails with ENOSPC, postponing the compaction, unless the
// filesystem has room for the new snapshot, at most the old one (of
// snapSize bytes) and the segments beyond base together, plus
// compactReserve. Where the free space cannot be told, it lets the
// compaction try.
func (s *Store) roomToCompact(segs []segment, base uint64, snapSize int64) error {
	need := snapSize + compactReserve
	for _, g := range segs {
		if g.lastRev > base {
			need += g.size
		}
	}
	free, err := s.opts.freeBytes(s.dir)
	if err != nil || free >= uint64(need) {
		return nil
	}
	return fmt.Errorf("store: compact: postponed: %d bytes free, the new snapshot may need %d and the log %d besides: %w",
		free, need-compactReserve, compactReserve, syscall.ENOSPC)
}

// freeBytes is the space dir's filesystem has for unprivileged writes.
func freeBytes(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// readForCompaction reads the closed segment g from disk and records in
// over the newest operation per key beyond base. *target is the revision
// read up to; the segment must continue it.
func (s *Store) readForCompaction(ctx context.Context, g segment, base uint64, target *uint64, over map[string]record) error {
	path := segmentPath(s.dir, g.seq)
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("store: compact: open log segment: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("store: compact: stat log segment: %w", err)
	}
	n := 0
	_, err = replay(f, 0, fi.Size(), path, base, tailNone, func(off int64, r record) error {
		if n++; n%compactChunk == 0 {
			if err := s.compactCheck(ctx); err != nil {
				return err
			}
		}
		if r.rev <= base {
			return nil
		}
		if r.rev != *target+1 {
			return &CorruptError{Path: path, Offset: off, Err: fmt.Errorf("revision %d where %d was due", r.rev, *target+1)}
		}
		*target = r.rev
		over[r.key] = r
		return nil
	})
	if err != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("store: compact: %w", err)
	}
	return err
}

// deleteCovered deletes, oldest first, the closed segments whose records
// are all in the snapshot this process verified or wrote. A crash between
// two deletions leaves covered segments, skipped on replay and deleted the
// next time. It is a few unlinks, so it is not cancelled half-way.
func (s *Store) deleteCovered() error {
	s.mu.RLock()
	segs, cover := slices.Clone(s.segs), s.snapRev
	s.mu.RUnlock()
	var gone []uint64
	var err error
	for i, g := range segs {
		if g.lastRev > cover {
			break
		}
		if i > 0 {
			crash.Point("kvd-compact-between-deletions")
		}
		if err = s.unlink(segmentPath(s.dir, g.seq)); err != nil {
			break
		}
		gone = append(gone, g.seq)
	}
	if len(gone) > 0 {
		s.mu.Lock()
		s.segs = slices.DeleteFunc(s.segs, func(g segment) bool { return slices.Contains(gone, g.seq) })
		s.mu.Unlock()
	}
	return err
}

// removeStaleTemps removes the snapshot files that were never renamed
// into place (a crash in a compaction). Only the lock holder's compactor
// calls it, before its first compaction, so none of them is being written;
// the warm-up ignores them.
func (s *Store) removeStaleTemps() error {
	stale, err := staleTemps(s.dir)
	if err != nil {
		return err
	}
	for _, p := range stale {
		if err := s.unlink(p); err != nil {
			return err
		}
	}
	return nil
}

// CompactionStats is what the compactor did, for logs and benchmarks.
type CompactionStats struct {
	Snapshots    int           // snapshots written by this store
	LastDuration time.Duration // of the last compaction that wrote one
	LastErr      error         // of the last attempt; nil if it succeeded
}

func (s *Store) noteCompaction(took time.Duration, err error, wrote bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.compStats.LastErr = err
	if wrote && err == nil {
		s.compStats.Snapshots++
		s.compStats.LastDuration = took
	}
}

// Stats is a view of the store's files.
type Stats struct {
	Revision         uint64
	Keys             int
	SnapshotRevision uint64 // newest snapshot this process verified or wrote
	SnapshotBytes    int64
	ClosedSegments   int    // closed log segments not deleted yet
	ActiveSegment    string // file name of the segment written to
	ActiveBytes      int64
	Compaction       CompactionStats
	// RotateErr is why the last attempt to start a new segment failed
	// (the writer then goes on appending to the active one); nil if none
	// did.
	RotateErr error
}

// Stats returns a view of the store's files.
func (s *Store) Stats() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return Stats{
		Revision:         s.rev,
		Keys:             len(s.data),
		SnapshotRevision: s.snapRev,
		SnapshotBytes:    s.snapBytes,
		ClosedSegments:   len(s.segs),
		ActiveSegment:    segmentName(s.seq),
		ActiveBytes:      s.size,
		Compaction:       s.compStats,
		RotateErr:        s.rotateErr,
	}
}
