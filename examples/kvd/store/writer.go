package store

import (
	"fmt"
	"os"
)

// SyncPhase says which fsync of a log segment Options.FailSync is asked
// about.
type SyncPhase string

// The fsyncs of a log segment.
const (
	SyncCommit SyncPhase = "commit" // a batch of writes, before they are acknowledged
	SyncDrain  SyncPhase = "drain"  // Sync, which a handoff's drain calls
	SyncSeal   SyncPhase = "seal"   // Seal
)

// writerPlan is what has to happen before the active segment can be
// appended to. Opening the writer does it in order, each step at most once
// successfully; a step that fails (other than by an fsync) is tried again
// by the next batch.
type writerPlan struct {
	// cut: segment cutSeq may hold bytes past cutAt that are not durable
	// records (a torn tail a crash left, or what a failed write left):
	// truncate it there and fsync it first.
	cut    bool
	cutSeq uint64
	cutAt  int64
	// create: the active segment does not exist yet: create it and fsync
	// the directory.
	create bool
}

// writerFault is an error opening the writer. fatal: an fsync failed, so
// the store fails for good; otherwise the next batch tries again.
type writerFault struct {
	err   error
	fatal bool
}

// openWriter opens segment seq for appending after carrying out p. It
// returns the open file, and what is left of p when it failed. It touches
// only files, so the caller needs no lock, only the write turn (or a store
// not shared yet).
func (s *Store) openWriter(seq uint64, p writerPlan) (*os.File, writerPlan, *writerFault) {
	if p.cut && p.cutSeq != seq {
		// A segment the writer will not append to (it ends below the
		// snapshot): cut it before the next one starts.
		f, err := s.opts.openFile(segmentPath(s.dir, p.cutSeq), os.O_RDWR, 0)
		if err != nil {
			return nil, p, &writerFault{err: fmt.Errorf("store: open %s to cut it: %w", segmentName(p.cutSeq), err)}
		}
		fault := s.cutFile(f, p.cutSeq, p.cutAt)
		f.Close()
		if fault != nil {
			return nil, p, fault
		}
		p.cut = false
	}
	var f *os.File
	var err error
	if p.create {
		if f, err = createSegment(s.opts.openFile, s.dir, seq); err != nil {
			return nil, p, &writerFault{err: err}
		}
		// The name must be durable before a record in it is acknowledged.
		if err := s.opts.syncDir(s.dir); err != nil {
			f.Close()
			return nil, p, &writerFault{err: fmt.Errorf("store: starting log segment %s: %w", segmentName(seq), err), fatal: true}
		}
		p.create = false
		return f, p, nil
	}
	f, err = s.opts.openFile(segmentPath(s.dir, seq), os.O_RDWR|os.O_APPEND, 0)
	if err != nil {
		return nil, p, &writerFault{err: fmt.Errorf("store: open log segment %s for writing: %w", segmentName(seq), err)}
	}
	if p.cut {
		if fault := s.cutFile(f, seq, p.cutAt); fault != nil {
			f.Close()
			return nil, p, fault
		}
		p.cut = false
	}
	return f, p, nil
}

// cutFile truncates f, segment seq, at off and fsyncs it, so that what
// was cut off never comes back: it was never acknowledged.
func (s *Store) cutFile(f *os.File, seq uint64, off int64) *writerFault {
	if err := f.Truncate(off); err != nil {
		return &writerFault{err: fmt.Errorf("store: cut %s at offset %d: %w", segmentName(seq), off, err)}
	}
	if err := s.opts.syncFile(f); err != nil {
		return &writerFault{err: fmt.Errorf("store: fsync %s after cutting it at offset %d: %w", segmentName(seq), off, err), fatal: true}
	}
	return nil
}

// setWriterLocked records the outcome of openWriter. Called with s.mu
// held by the holder of the write turn (or before s is shared).
func (s *Store) setWriterLocked(f *os.File, rest writerPlan, fault *writerFault) {
	s.plan = rest
	switch {
	case fault == nil:
		s.f, s.wfault = f, nil
	case fault.fatal:
		s.failQueueLocked(fault.err)
	default:
		s.wfault = fault.err
	}
}

// syncLog fsyncs the log segment f in phase, unless Options.FailSync
// makes it fail.
func (s *Store) syncLog(f *os.File, phase SyncPhase) error {
	if h := s.opts.failSync; h != nil {
		if err := h(phase); err != nil {
			return err
		}
	}
	return s.opts.syncFile(f)
}

// writeFailedLocked handles a write of the log that failed without an
// fsync failing (a full or read-only disk): the batch and those queued
// behind it fail with ErrWriteFailed, nothing of them was applied, and
// their revisions are handed out again. What the write may have appended
// was cut off already, or is in s.plan to be cut before the next write.
// The store stays open. Called with s.mu held by the turn's holder.
func (s *Store) writeFailedLocked(b *batch, cause error) {
	s.wfault = cause
	err := fmt.Errorf("%w: %w", ErrWriteFailed, cause)
	b.err = err
	for _, q := range s.queue {
		q.err = err
		close(q.done)
	}
	s.queue = nil
	s.next = s.rev
}
