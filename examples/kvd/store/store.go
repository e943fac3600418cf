package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// File names inside the data directory.
const (
	LogFileName      = "kv.wal"
	SnapshotFileName = "kv.snap"
)

// maxBatchBytes caps how many bytes of records one fsync commits.
const maxBatchBytes = 4 << 20

type state int

const (
	stateOpen    state = iota
	stateSealing       // Seal is waiting for the last batch or writing the snapshot
	stateSealed
	stateFailed
	stateClosed
)

// options are the seams tests and benchmarks use.
type options struct {
	syncFile        func(*os.File) error // fsync of the log and the snapshot
	maxBatchRecords int                  // 0: no limit (group commit); 1: one fsync per write
	onEnqueue       func()               // called after a write joined a batch
}

func defaultOptions() options {
	return options{syncFile: (*os.File).Sync}
}

// Recovery tells what Open or Reopen found on disk.
type Recovery struct {
	SnapshotRevision uint64 // revision of the snapshot loaded; 0 if there was none
	Replayed         int    // log records applied on top of the snapshot
	// TornTailAt is the log offset where a torn tail was cut off, and
	// TornTailBytes how many bytes were cut; both 0 when the log was intact.
	TornTailAt    int64
	TornTailBytes int64
}

// Store is a durable in-memory key-value map. All methods are safe for
// concurrent use.
type Store struct {
	dir  string
	opts options

	mu         sync.RWMutex
	progress   *sync.Cond // broadcast after every commit
	state      state
	refuse     error // why writes are refused; nil while open
	f          *os.File
	size       int64 // bytes of the log that are durable
	data       map[string][]byte
	rev        uint64 // last durable revision
	next       uint64 // last revision handed out
	queue      []*batch
	committing bool // a writer is committing the head of the queue
	fp         string
	fpRev      uint64 // fp is valid while rev == fpRev
	recovery   Recovery
	fsyncs     uint64 // log fsyncs, for the benchmark
}

// batch is a group of records committed with one write and one fsync.
type batch struct {
	buf  []byte
	recs []record
	lead chan struct{} // closed when the batch's first writer must commit it
	done chan struct{} // closed when the batch is durable or failed
	err  error         // set before done is closed
}

// Open opens the store in dir, creating the directory and the log if
// needed, and recovers: it loads the snapshot, replays the log on top,
// and cuts a torn log tail off (see Recovery). Damage elsewhere fails with
// a *CorruptError. Hold the data-directory lock before calling it.
func Open(dir string) (*Store, error) {
	return open(dir, defaultOptions())
}

func open(dir string, opts options) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: create data directory: %w", err)
	}
	s := &Store{dir: dir, opts: opts}
	s.progress = sync.NewCond(&s.mu)
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

// load reads the snapshot and the log into s. Called with s.mu held (or
// before s is shared).
func (s *Store) load() error {
	stale, _ := filepath.Glob(filepath.Join(s.dir, SnapshotFileName+".tmp-*"))
	for _, p := range stale {
		os.Remove(p) // a snapshot that was never renamed into place
	}
	rev, data, fp, err := readSnapshot(filepath.Join(s.dir, SnapshotFileName))
	if err != nil {
		return err
	}
	rc := Recovery{SnapshotRevision: rev}
	path := filepath.Join(s.dir, LogFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("store: open log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("store: stat log: %w", err)
	}
	var prev uint64 // revision of the previous record in the file
	res, err := replay(f, fi.Size(), path, rev, func(off int64, r record) error {
		if prev != 0 && r.rev != prev+1 {
			return &CorruptError{Path: path, Offset: off, Err: fmt.Errorf("revision %d follows %d", r.rev, prev)}
		}
		prev = r.rev
		if r.rev <= rev {
			return nil // already in the snapshot
		}
		if r.rev != rev+1 {
			return &CorruptError{Path: path, Offset: off, Err: fmt.Errorf("log continues at revision %d, state is at %d", r.rev, rev)}
		}
		apply(data, r)
		rev = r.rev
		rc.Replayed++
		return nil
	})
	if err != nil {
		f.Close()
		return err
	}
	keep := res.validEnd
	if rc.Replayed == 0 {
		// Every record left is in the snapshot: start the log afresh, so
		// that the next write's revision follows the last record's.
		keep = 0
	}
	if keep < fi.Size() {
		if err := f.Truncate(keep); err != nil {
			f.Close()
			return fmt.Errorf("store: cut %s at offset %d: %w", path, keep, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("store: fsync %s after cutting it: %w", path, err)
		}
	}
	if res.torn {
		rc.TornTailAt, rc.TornTailBytes = res.validEnd, fi.Size()-res.validEnd
	}
	if err := syncDir(s.dir); err != nil { // the log's name is durable
		f.Close()
		return err
	}
	s.f, s.size, s.data, s.rev, s.next = f, keep, data, rev, rev
	s.state, s.refuse, s.recovery = stateOpen, nil, rc
	s.fp, s.fpRev = "", 0
	if rc.Replayed == 0 && fp != "" {
		s.fp, s.fpRev = fp, rev
	}
	return nil
}

func apply(data map[string][]byte, r record) {
	switch r.op {
	case opPut:
		data[r.key] = r.value
	case opDelete:
		delete(data, r.key)
	}
}

// Put stores value under key and returns the write's revision once it is
// durable.
func (s *Store) Put(key string, value []byte) (uint64, error) {
	if len(value) > MaxValueLen {
		return 0, fmt.Errorf("%w: %d bytes, at most %d", ErrValueTooLarge, len(value), MaxValueLen)
	}
	v := bytes.Clone(value)
	if v == nil {
		v = []byte{}
	}
	return s.write(record{op: opPut, key: key, value: v})
}

// Delete removes key and returns the write's revision once it is durable.
// Deleting an absent key is a write like any other.
func (s *Store) Delete(key string) (uint64, error) {
	return s.write(record{op: opDelete, key: key})
}

// write queues r and waits until its batch is durable. The first writer of
// a batch commits it when its turn comes (group commit); the others wait.
func (s *Store) write(r record) (uint64, error) {
	if len(r.key) == 0 || len(r.key) > MaxKeyLen {
		return 0, fmt.Errorf("%w: length %d, want 1..%d", ErrInvalidKey, len(r.key), MaxKeyLen)
	}
	s.mu.Lock()
	if s.state != stateOpen {
		err := s.refuse
		s.mu.Unlock()
		return 0, err
	}
	s.next++
	r.rev = s.next
	var b *batch
	first := false
	if n := len(s.queue); n > 0 && s.fits(s.queue[n-1], r) {
		b = s.queue[n-1]
	} else {
		b = &batch{lead: make(chan struct{}), done: make(chan struct{})}
		s.queue = append(s.queue, b)
		first = true
	}
	b.buf = appendRecord(b.buf, r)
	b.recs = append(b.recs, r)
	if !s.committing {
		// Nobody commits: the queue was empty and b is its head.
		s.committing = true
		close(b.lead)
	}
	s.mu.Unlock()
	if s.opts.onEnqueue != nil {
		s.opts.onEnqueue()
	}
	if first {
		select {
		case <-b.lead:
			s.commitHead()
		case <-b.done:
		}
	}
	<-b.done
	if b.err != nil {
		return 0, b.err
	}
	return r.rev, nil
}

func (s *Store) fits(b *batch, r record) bool {
	if s.opts.maxBatchRecords > 0 && len(b.recs) >= s.opts.maxBatchRecords {
		return false
	}
	return len(b.buf)+r.encodedLen() <= maxBatchBytes
}

// commitHead writes and fsyncs the batch at the head of the queue, then
// hands the turn to the next batch's first writer. Only the writer whose
// batch's lead channel was closed calls it.
func (s *Store) commitHead() {
	s.mu.Lock()
	b := s.queue[0]
	s.queue[0] = nil
	s.queue = s.queue[1:]
	f := s.f
	s.mu.Unlock()

	_, err := f.Write(b.buf)
	if err == nil {
		err = s.opts.syncFile(f)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.fsyncs++
	if err != nil {
		// Never retry: the kernel may have dropped the pages it failed to
		// write. Fail this batch and every batch queued behind it.
		s.state = stateFailed
		s.refuse = fmt.Errorf("%w: writing the log: %w", ErrFailed, err)
		b.err = s.refuse
		close(b.done)
		for _, q := range s.queue {
			q.err = s.refuse
			close(q.done)
		}
		s.queue = nil
	} else {
		for _, r := range b.recs {
			apply(s.data, r)
		}
		s.size += int64(len(b.buf))
		s.rev = b.recs[len(b.recs)-1].rev
		close(b.done)
	}
	if len(s.queue) > 0 {
		close(s.queue[0].lead)
	} else {
		s.committing = false
	}
	s.progress.Broadcast()
}

// waitIdleLocked waits until no batch is being committed. New writes must
// already be refused, or it may wait for ever. Called with s.mu held.
func (s *Store) waitIdleLocked() {
	for s.committing {
		s.progress.Wait()
	}
}

// Get returns a copy of the value stored under key.
func (s *Store) Get(key string) ([]byte, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.data[key]
	return bytes.Clone(v), ok
}

// Len returns the number of keys.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.data)
}

// Contents returns a copy of every key and value, and the revision they
// are at.
func (s *Store) Contents() (uint64, map[string][]byte) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	m := make(map[string][]byte, len(s.data))
	for k, v := range s.data {
		m[k] = bytes.Clone(v)
	}
	return s.rev, m
}

// Revision returns the revision of the last durable write (0 for a store
// never written to).
func (s *Store) Revision() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rev
}

// Revisions returns Revision per shard. The store has one shard.
func (s *Store) Revisions() []uint64 {
	return []uint64{s.Revision()}
}

// Recovery reports what the last Open or Reopen found on disk.
func (s *Store) Recovery() Recovery {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.recovery
}

// Fingerprint identifies the key/value state and its revision: equal
// states have equal fingerprints. After Seal it is the fingerprint of the
// snapshot written; a store reopened from that snapshot reports the same.
// Computing it for a store written since costs a pass over the data.
func (s *Store) Fingerprint() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fp == "" || s.fpRev != s.rev {
		s.fp, s.fpRev = stateFingerprint(s.rev, s.data), s.rev
	}
	return s.fp
}

// Sync waits until every write accepted so far is durable, and returns the
// reason the store refuses writes if it failed. Writes are durable when Put
// and Delete return, so Sync only waits for the batch in flight.
func (s *Store) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for target := s.next; s.rev < target && s.state != stateFailed; {
		s.progress.Wait()
	}
	if s.state == stateFailed {
		return s.refuse
	}
	return nil
}

// Check is a health check: it returns nil if the store is open, takes
// writes, and its log on disk is the file it writes, of the size it
// wrote (nobody else truncated, replaced or appended to it).
func (s *Store) Check() error {
	s.mu.RLock()
	st, refuse, f, size, busy := s.state, s.refuse, s.f, s.size, s.committing
	s.mu.RUnlock()
	if st != stateOpen {
		return refuse
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("store: check: stat log: %w", err)
	}
	if fi.Size() < size || (fi.Size() > size && !busy) {
		return fmt.Errorf("store: check: log is %d bytes on disk, %d written", fi.Size(), size)
	}
	pi, err := os.Stat(filepath.Join(s.dir, LogFileName))
	if err != nil {
		return fmt.Errorf("store: check: %w", err)
	}
	if !os.SameFile(fi, pi) {
		return errors.New("store: check: the log file was replaced")
	}
	return nil
}

// Seal makes the store read-only for a handoff: new writes fail with
// ErrSealed, the batch in flight is committed, a snapshot is written
// atomically, the log is emptied and fsync'd, and the files are closed.
// Revision and Fingerprint then describe the sealed state. Seal on a sealed
// store does nothing.
//
// If Seal fails before the snapshot is in place, the store is open again
// (the log is intact) and the error says why. If it fails after, the log
// may be in an unknown state on disk and the store fails (ErrFailed).
func (s *Store) Seal() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.state {
	case stateSealed:
		return nil
	case stateSealing:
		return errors.New("store: Seal is already running")
	case stateFailed, stateClosed:
		return s.refuse
	}
	s.state, s.refuse = stateSealing, ErrSealed
	s.waitIdleLocked()
	if s.state == stateFailed { // the last batch failed
		return s.refuse
	}
	fp, err := writeSnapshot(filepath.Join(s.dir, SnapshotFileName), s.rev, s.data, s.opts.syncFile)
	if err != nil {
		// The log is intact and still describes the state: keep serving.
		s.state, s.refuse = stateOpen, nil
		return err
	}
	s.fp, s.fpRev = fp, s.rev
	// The snapshot is durable; the log's records are all in it.
	if err := s.f.Truncate(0); err != nil {
		return s.failLocked(fmt.Errorf("store: empty the log after the snapshot: %w", err))
	}
	if err := s.opts.syncFile(s.f); err != nil {
		return s.failLocked(fmt.Errorf("store: fsync the emptied log: %w", err))
	}
	s.size = 0
	err = s.f.Close()
	s.f = nil
	if err != nil {
		return s.failLocked(fmt.Errorf("store: close the log: %w", err))
	}
	s.state = stateSealed
	return nil
}

// failLocked puts the store in the failed state for cause. Called with
// s.mu held and no batch in flight.
func (s *Store) failLocked(cause error) error {
	s.state = stateFailed
	s.refuse = fmt.Errorf("%w: %w", ErrFailed, cause)
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
	return s.refuse
}

// Sealed reports whether the store is sealed (read-only, files closed).
func (s *Store) Sealed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state == stateSealed
}

// Reopen makes a sealed store writable again after an aborted handoff. It
// reads the directory again, like Open, because another process may have
// written after the seal. On an open store it does nothing, so it is
// idempotent. A failed store cannot be reopened (restart the process to
// recover from disk), nor can a closed one.
func (s *Store) Reopen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.state {
	case stateOpen:
		return nil
	case stateSealed:
		return s.load()
	case stateSealing:
		return errors.New("store: Reopen during Seal")
	case stateFailed:
		return fmt.Errorf("store: cannot reopen: %w", s.refuse)
	default:
		return ErrClosed
	}
}

// Close refuses new writes (ErrClosed), waits for the batch in flight and
// closes the log without writing a snapshot: the next Open replays the
// log. Close is idempotent. Use Seal instead to hand the data over.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == stateClosed {
		return nil
	}
	s.state, s.refuse = stateClosed, ErrClosed
	s.waitIdleLocked()
	s.state, s.refuse = stateClosed, ErrClosed // a failing last batch set them
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	if err != nil {
		return fmt.Errorf("store: close log: %w", err)
	}
	return nil
}
