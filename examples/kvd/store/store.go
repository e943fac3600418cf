package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/handoff-go/handoff/internal/crash"
)

// File names inside the data directory. LogFileName is also the oldest
// log segment's (see segmentName).
const (
	LogFileName      = "kv.wal"
	SnapshotFileName = "kv.snap"
)

// maxBatchBytes caps how many bytes of records one fsync commits.
const maxBatchBytes = 4 << 20

type state int

const (
	stateOpen    state = iota
	stateSealing       // Seal is waiting for the last batch and the compactor
	stateSealed
	stateFailed
	stateClosed
)

// options are the seams tests and benchmarks use.
type options struct {
	syncFile        func(*os.File) error // fsync of log segments and snapshots
	syncDir         func(dir string) error
	failSync        func(SyncPhase) error                                           // Options.FailSync
	writeFile       func(*os.File, []byte) (int, error)                             // appends a batch to the log
	openFile        func(name string, flag int, perm os.FileMode) (*os.File, error) // opens the log for writing
	freeBytes       func(dir string) (uint64, error)                                // free space, before a compaction
	maxBatchRecords int                                                             // 0: no limit (group commit); 1: one fsync per write
	segmentBytes    int64                                                           // rotate once the active segment holds this much
	noAutoCompact   bool                                                            // compact only when Compact is called
	onEnqueue       func()                                                          // called after a write joined a batch
	// compactChunk is called between chunks of a compaction with its
	// context (a test blocks there until the compaction is cancelled).
	compactChunk func(context.Context)
	// onCompacted is called after every compaction attempt with its error.
	onCompacted func(error)
}

func defaultOptions() options {
	return options{syncFile: (*os.File).Sync, syncDir: syncDir, writeFile: (*os.File).Write, openFile: os.OpenFile, freeBytes: freeBytes, segmentBytes: DefaultSegmentBytes}
}

// Options tune a Store. The zero value is the default.
type Options struct {
	// SegmentBytes is the size past which the writer starts a new log
	// segment (DefaultSegmentBytes when 0). The compactor merges closed
	// segments into the snapshot.
	SegmentBytes int64

	// FailSync is for fault-injection tests (kvd's --fail-fsync-at); leave
	// it nil. If set, it is asked before every fsync of a log segment
	// with the fsync's phase, and an error it returns is taken as that
	// fsync's failure (the fsync is not done): the store fails as after a
	// real one.
	FailSync func(SyncPhase) error
}

func (o Options) apply(opts options) (options, error) {
	if o.SegmentBytes < 0 {
		return opts, fmt.Errorf("store: Options.SegmentBytes is negative (%d)", o.SegmentBytes)
	}
	if o.SegmentBytes > 0 {
		opts.segmentBytes = o.SegmentBytes
	}
	if o.FailSync != nil {
		opts.failSync = o.FailSync
	}
	return opts, nil
}

// Recovery tells what Open, Warm.Open or Reopen found on disk. Warm-up
// figures are Prepare's (read without the lock, while the previous writer
// may still have been writing); catch-up figures are what was applied
// after, with the lock held: the part of a handoff's pause that depends on
// the data.
type Recovery struct {
	SnapshotRevision uint64 // revision of the snapshot loaded; 0 if there was none
	Replayed         int    // log records applied on top of the snapshot, warm-up and catch-up together

	WarmRecords  int           // log records Prepare applied
	WarmBytes    int64         // log bytes Prepare read
	WarmDuration time.Duration // Prepare's time, snapshot included

	CaughtUpRecords int           // log records applied after the warm-up position
	CaughtUpBytes   int64         // log bytes read after it
	CatchUpDuration time.Duration // Open's or Reopen's time

	// FullLoad is set when the log did not continue from the warm-up's
	// position (compactions deleted segments it had not read) and the
	// directory was loaded in full instead; FullLoadReason says why.
	FullLoad       bool
	FullLoadReason string

	// TornTailFile is the segment whose torn tail was cut off at offset
	// TornTailAt, TornTailBytes bytes; all empty when the log was intact
	// (or when cutting it failed: see WriteErr).
	TornTailFile  string
	TornTailAt    int64
	TornTailBytes int64

	// WriteErr is why the log could not be opened for writing (a full or
	// read-only disk): the store opened with every durable write, serves
	// reads, and refuses writes with this reason; each write tries again.
	// If it matches ErrFailed an fsync failed and writes are refused for
	// good. Nil when the store opened writable.
	WriteErr error
}

// Store is a durable in-memory key-value map. All methods are safe for
// concurrent use.
type Store struct {
	dir  string
	opts options

	// life serialises Seal, Reopen, Close and Compact's start against each
	// other; it is taken before mu.
	life sync.Mutex

	mu       sync.RWMutex
	progress *sync.Cond // broadcast after every commit and hand-over of the write turn
	state    state
	refuse   error    // why writes are refused; nil while open
	f        *os.File // the active segment, appended to; nil unless open and writable
	// wfault is why writing the log does not work at the moment: the last
	// write failed, or the writer could not be opened (then f is nil and
	// plan says what is left to do). Unlike refuse it is not for good: the
	// next batch tries again, and a batch that commits clears it.
	wfault     error
	plan       writerPlan
	seq        uint64 // the active segment's sequence number
	size       int64  // bytes of the active segment that are durable
	lastCRC    uint32 // checksum of the active segment's last record; 0 if it has none
	segs       []segment
	snapRev    uint64 // revision of the newest snapshot this process verified or wrote
	snapBytes  int64  // its size, if this process wrote it (compaction policy)
	data       map[string][]byte
	rev        uint64 // last durable revision
	next       uint64 // last revision handed out
	queue      []*batch
	committing bool      // a writer holds the write turn (commits the head of the queue, or rotates)
	sealedAt   *position // after Seal: the end of the log, its segment open read-only, for Reopen
	comp       *compactor
	recovery   Recovery
	fsyncs     uint64 // log fsyncs, for the benchmark
	compStats  CompactionStats
	rotateErr  error
	// reapers close files whose names are gone (see unlink): the last
	// close frees the blocks, which takes long for a big file. Close
	// joins them; Seal does not wait for them.
	reapers sync.WaitGroup
}

// batch is a group of records committed with one write and one fsync.
type batch struct {
	buf     []byte
	recs    []record
	lastCRC uint32        // checksum of its last record
	lead    chan struct{} // closed when the batch's first writer must commit it
	done    chan struct{} // closed when the batch is durable or failed
	err     error         // set before done is closed
}

// Open opens the store in dir, creating the directory and the log if
// needed, and recovers: it loads the snapshot, replays the log segments on
// top, and cuts a torn tail off the last one (see Recovery). Damage
// elsewhere fails with a *CorruptError. A log that cannot be opened for
// writing (a full or read-only disk) does not fail it: the store serves
// reads and refuses writes until the disk takes them (Recovery.WriteErr).
// Hold the data-directory lock before calling it. Open is Prepare
// followed by Warm.Open.
func Open(dir string) (*Store, error) {
	return open(dir, defaultOptions())
}

// OpenWith is Open with options.
func OpenWith(dir string, o Options) (*Store, error) {
	opts, err := o.apply(defaultOptions())
	if err != nil {
		return nil, err
	}
	return open(dir, opts)
}

func open(dir string, opts options) (*Store, error) {
	w, err := Prepare(dir)
	if err != nil {
		return nil, err
	}
	return w.open(opts)
}

// becomeWriterLocked makes s the writer of the state l loaded: it appends
// to the last segment (cut to its last good record) or creates the first.
// l is consumed. The state is s's whatever happens to the files: if the
// log cannot be opened for writing (a full or read-only disk) the store
// serves reads and each write tries again (rc.WriteErr says why), and if an
// fsync fails it refuses writes for good. Called with s.mu held or before
// s is shared.
func (s *Store) becomeWriterLocked(l *loader, rc *Recovery) {
	defer l.close()
	seq, size, lastCRC := l.pos.seq, l.pos.off, l.pos.lastCRC
	closed := l.closed
	var p writerPlan
	if l.pos.f == nil {
		// No log yet: create the first segment.
		seq, size, p.create = 0, 0, true
	} else {
		if l.torn.bytes > 0 {
			p.cut, p.cutSeq, p.cutAt = true, seq, size
		}
		if l.pos.lastRev != 0 && l.pos.lastRev < l.snapRev {
			// The segment ends below the snapshot (records the snapshot
			// holds, their damaged rest cut off): the next revision would
			// not follow its last one, so the writer starts a new segment.
			closed = append(closed, segment{seq: seq, lastRev: l.pos.lastRev, size: size})
			seq, size, lastCRC, p.create = seq+1, 0, 0, true
		}
	}
	s.f, s.seq, s.size, s.lastCRC = nil, seq, size, lastCRC
	s.segs, s.snapRev, s.snapBytes = closed, l.snapRev, l.snapBytes
	s.rev, s.next = l.rev, l.rev
	s.state, s.refuse = stateOpen, nil
	f, rest, fault := s.openWriter(seq, p)
	s.setWriterLocked(f, rest, fault)
	if p.cut && !rest.cut {
		rc.TornTailFile, rc.TornTailAt, rc.TornTailBytes = l.torn.path, l.torn.at, l.torn.bytes
	}
	switch {
	case s.state == stateFailed:
		rc.WriteErr = s.refuse
	case s.wfault != nil:
		rc.WriteErr = s.wfault
	}
}

// unlink removes the name path now and frees its blocks later. Freeing a
// big file (ext4: hundreds of milliseconds a gigabyte) happens at its last
// close, so the file is held open across the unlink and closed by a
// reaper goroutine, not in the caller, who may be what Seal waits for.
func (s *Store) unlink(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err == nil {
		defer s.reap(f)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("store: remove %s: %w", filepath.Base(path), err)
	}
	return nil
}

// reap closes f in a goroutine Close joins: f may be the last reference to
// a file already unlinked.
func (s *Store) reap(f *os.File) {
	s.reapers.Go(func() { f.Close() })
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
	at := len(b.buf)
	b.buf = appendRecord(b.buf, r)
	b.lastCRC = binary.LittleEndian.Uint32(b.buf[at+4:])
	b.recs = append(b.recs, r)
	if !s.committing {
		// Nobody holds the turn: the queue was empty and b is its head.
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

// commitHead writes and fsyncs the batch at the head of the queue, starts
// a new segment if the active one is full, then hands the turn to the
// next batch's first writer. Only the writer whose batch's lead channel
// was closed calls it. A writer that is not open (a full or read-only disk
// at open, or after a failed write) is opened first.
func (s *Store) commitHead() {
	s.mu.Lock()
	b := s.queue[0]
	s.queue[0] = nil
	s.queue = s.queue[1:]
	f, seq, size, plan := s.f, s.seq, s.size, s.plan
	s.mu.Unlock()

	var fault *writerFault
	if f == nil {
		var rest writerPlan
		f, rest, fault = s.openWriter(seq, plan)
		s.mu.Lock()
		s.setWriterLocked(f, rest, fault)
		s.mu.Unlock()
	}
	var werr, serr error // a failed write, a failed fsync
	if fault == nil {
		if _, err := s.opts.writeFile(f, b.buf); err != nil {
			werr = fmt.Errorf("writing the log: %w", err)
			// The write may have appended part of the batch: cut it off,
			// or have the next writer do it before appending.
			if cf := s.cutFile(f, seq, size); cf != nil {
				if cf.fatal {
					serr = cf.err
				} else {
					werr = fmt.Errorf("%w (and cutting off what it appended failed: %w)", werr, cf.err)
					f.Close()
					s.mu.Lock()
					s.f, s.plan = nil, writerPlan{cut: true, cutSeq: seq, cutAt: size}
					s.mu.Unlock()
				}
			}
		} else if err := s.syncLog(f, SyncCommit); err != nil {
			serr = fmt.Errorf("writing the log: %w", err)
		}
	} else if fault.fatal {
		serr = fault.err
	} else {
		werr = fault.err
	}

	s.mu.Lock()
	s.fsyncs++
	switch {
	case serr != nil:
		// Never retry: the kernel may have dropped the pages it failed to
		// write. Fail this batch and every batch queued behind it.
		b.err = s.failQueueLocked(serr)
	case werr != nil:
		// Nothing was fsync'd or applied: the disk is full or read-only.
		// The store stays open and the next batch tries again.
		s.writeFailedLocked(b, werr)
	}
	if serr != nil || werr != nil {
		close(b.done)
		s.handTurnLocked()
		s.mu.Unlock()
		return
	}
	for _, r := range b.recs {
		applyTo(s.data, r)
	}
	s.size += int64(len(b.buf))
	s.lastCRC = b.lastCRC
	s.rev = b.recs[len(b.recs)-1].rev
	s.wfault = nil
	close(b.done)
	full := s.size >= s.opts.segmentBytes
	s.mu.Unlock()

	if full {
		s.rotate() // a failure is kept in rotateErr; the next batch tries again
	}
	s.mu.Lock()
	s.handTurnLocked()
	s.mu.Unlock()
}

// handTurnLocked passes the write turn to the next batch's first writer,
// or frees it. Called with s.mu held by the turn's holder.
func (s *Store) handTurnLocked() {
	if len(s.queue) > 0 {
		close(s.queue[0].lead)
	} else {
		s.committing = false
	}
	s.progress.Broadcast()
}

// failQueueLocked puts the store in the failed state for cause and fails
// every queued batch. It returns the error writes get from now on. Called
// with s.mu held.
func (s *Store) failQueueLocked(cause error) error {
	s.state = stateFailed
	s.refuse = fmt.Errorf("%w: %w", ErrFailed, cause)
	for _, q := range s.queue {
		q.err = s.refuse
		close(q.done)
	}
	s.queue = nil
	return s.refuse
}

// rotate closes the active segment and starts the next: a new file and an
// fsync of the directory, so that the name of the file the next batch goes
// to is durable. The caller holds the write turn, so no batch is being
// written. If the file cannot be created the store keeps appending to the
// old segment (the next full batch tries again); if the directory's fsync
// fails the store fails (the fsync is not retried).
func (s *Store) rotate() error {
	s.mu.RLock()
	seq, old, size, rev := s.seq, s.f, s.size, s.rev
	s.mu.RUnlock()
	nf, err := createSegment(s.opts.openFile, s.dir, seq+1)
	if err != nil {
		s.mu.Lock()
		s.rotateErr = err
		s.mu.Unlock()
		return err
	}
	crash.Point("kvd-rotate-created")
	if err := s.opts.syncDir(s.dir); err != nil {
		nf.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.failQueueLocked(fmt.Errorf("starting log segment %s: %w", segmentName(seq+1), err))
	}
	s.mu.Lock()
	s.segs = append(s.segs, segment{seq: seq, lastRev: rev, size: size})
	s.f, s.seq, s.size, s.lastCRC = nf, seq+1, 0, 0
	s.rotateErr = nil
	c := s.comp
	s.mu.Unlock()
	old.Close() // fsync'd with its last batch
	if c != nil {
		c.kickNow()
	}
	return nil
}

// takeTurn waits for the write turn and takes it; it fails if the store
// stops taking writes meanwhile.
func (s *Store) takeTurn() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.committing && s.state == stateOpen {
		s.progress.Wait()
	}
	if s.state != stateOpen {
		return s.refuse
	}
	s.committing = true
	return nil
}

// waitIdleLocked waits until nobody holds the write turn. New writes must
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

// Recovery reports what the last Open, Warm.Open or Reopen found on disk.
func (s *Store) Recovery() Recovery {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.recovery
}

// Fingerprint identifies the state by where it ends in the log: the
// revision, the active segment, its durable length and the checksum of its
// last record. It costs nothing to compute. A store that sealed and the
// store that caught up with it (Warm.Open) or reloaded the directory
// report the same; any write changes it.
func (s *Store) Fingerprint() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return fmt.Sprintf("r%d-%s@%d-%08x", s.rev, segmentName(s.seq), s.size, s.lastCRC)
}

// Sync waits until every write accepted so far is durable (or failed)
// and fsyncs the active log segment: a handoff's drain calls it. Writes
// are durable when Put and Delete return, so it only waits for the batch
// in flight, and the fsync finds nothing to write unless the disk lost
// it. It returns the reason the store refuses writes if it failed (and
// fails it if the fsync fails), and an error matching ErrWriteFailed if
// the log is not open for writing. On a sealed or closed store it does
// nothing.
func (s *Store) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A failed batch hands its revisions out again (s.next goes back):
	// then what was accepted is done too.
	for target := s.next; s.rev < target && s.next >= target && s.state != stateFailed; {
		s.progress.Wait()
	}
	for s.committing && s.state == stateOpen {
		s.progress.Wait()
	}
	switch s.state {
	case stateFailed:
		return s.refuse
	case stateOpen:
	default:
		return nil
	}
	if s.f == nil {
		return fmt.Errorf("store: sync: %w: the log is not open for writing: %w", ErrWriteFailed, s.wfault)
	}
	// Take the write turn: no batch is written meanwhile.
	s.committing = true
	f := s.f
	s.mu.Unlock()
	err := s.syncLog(f, SyncDrain)
	s.mu.Lock()
	if err != nil {
		s.failQueueLocked(fmt.Errorf("fsync of the log in a drain: %w", err))
	}
	s.handTurnLocked()
	if err != nil {
		return s.refuse
	}
	return nil
}

// Check is a health check: it returns nil if the store is open, takes
// writes, and its active log segment on disk is the file it writes, of the
// size it wrote (nobody else truncated, replaced or appended to it). A
// store whose last write failed (a full or read-only disk) answers an
// error matching ErrWriteFailed until a write succeeds again.
func (s *Store) Check() error {
	// The read lock is held across the stats: no batch can start while it
	// is held (a write takes the lock to join the queue), and one that is
	// being written keeps committing set until it has updated size under
	// the lock. So the file is size bytes long unless a batch is in flight.
	s.mu.RLock()
	defer s.mu.RUnlock()
	st, refuse, f, seq, size, busy, wfault := s.state, s.refuse, s.f, s.seq, s.size, s.committing, s.wfault
	if st != stateOpen {
		return refuse
	}
	switch {
	case f == nil:
		return fmt.Errorf("store: check: %w: the log is not open for writing: %w", ErrWriteFailed, wfault)
	case wfault != nil:
		return fmt.Errorf("store: check: %w: the last write failed: %w", ErrWriteFailed, wfault)
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("store: check: stat log: %w", err)
	}
	if fi.Size() < size || (fi.Size() > size && !busy) {
		return fmt.Errorf("store: check: log segment %s is %d bytes on disk, %d written", segmentName(seq), fi.Size(), size)
	}
	pi, err := os.Stat(segmentPath(s.dir, seq))
	if err != nil {
		if busy {
			return nil // rotating: f may be the segment just closed
		}
		return fmt.Errorf("store: check: %w", err)
	}
	if !os.SameFile(fi, pi) && !busy {
		return errors.New("store: check: the log file was replaced")
	}
	return nil
}

// Seal makes the store read-only for a handoff, in a time that does not
// depend on the data: new writes fail with ErrSealed, the batch in flight
// is committed (every acknowledged write is fsync'd already), a running
// compaction is cancelled and waited for, and the log file is fsync'd
// (nothing is left to write, so that costs next to nothing) and closed.
// Revision and Fingerprint then describe the sealed state; reads go on.
// Seal on a sealed store does nothing.
//
// If Seal fails the store is open again, unless the last batch or Seal's
// fsync failed (ErrFailed). A store whose log is not open for writing (a
// full or read-only disk at open, or a failed write that could not be cut
// off) is not sealed: the error matches ErrWriteFailed.
func (s *Store) Seal() error {
	s.life.Lock()
	defer s.life.Unlock()
	s.mu.Lock()
	switch s.state {
	case stateSealed:
		s.mu.Unlock()
		return nil
	case stateFailed, stateClosed:
		err := s.refuse
		s.mu.Unlock()
		return err
	}
	s.state, s.refuse = stateSealing, ErrSealed
	s.waitIdleLocked()
	if s.state == stateFailed { // the last batch failed
		err := s.refuse
		s.mu.Unlock()
		return err
	}
	if s.f == nil {
		s.state, s.refuse = stateOpen, nil
		err := fmt.Errorf("store: seal: %w: the log is not open for writing: %w", ErrWriteFailed, s.wfault)
		s.mu.Unlock()
		return err
	}
	// Reopen continues from here; the open file reads this segment even
	// if a successor's compaction deletes it.
	rf, err := os.Open(segmentPath(s.dir, s.seq))
	if err != nil {
		s.state, s.refuse = stateOpen, nil
		s.mu.Unlock()
		return fmt.Errorf("store: seal: %w", err)
	}
	c := s.comp
	s.comp = nil
	s.mu.Unlock()

	c.stop()

	// Nobody writes meanwhile: the store is sealing.
	serr := s.syncLog(s.f, SyncSeal)
	s.mu.Lock()
	defer s.mu.Unlock()
	if serr != nil {
		rf.Close()
		return s.failLocked(fmt.Errorf("fsync of the log in a seal: %w", serr))
	}
	s.sealedAt = &position{seq: s.seq, f: rf, off: s.size, lastRev: s.rev, lastCRC: s.lastCRC}
	if s.size == 0 {
		s.sealedAt.lastRev = 0
	}
	err = s.f.Close()
	s.f = nil
	if err != nil {
		s.closeSealedLocked()
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

func (s *Store) closeSealedLocked() {
	if s.sealedAt != nil {
		if s.sealedAt.f != nil {
			s.reap(s.sealedAt.f) // a successor may have deleted it
		}
		s.sealedAt = nil
	}
}

// Sealed reports whether the store is sealed (read-only, log closed).
func (s *Store) Sealed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.state == stateSealed
}

// Reopen makes a sealed store writable again after an aborted handoff.
// Another process (a successor that later died) may have written after
// the seal, so it applies what the log holds after the sealed position,
// like Warm.Open (a torn tail is cut, other damage refused, and a chain
// broken by the successor's compactions means a full load). Hold the
// data-directory lock. On an open store it does nothing, so it is
// idempotent; if it fails the store stays sealed, and the next Reopen
// loads the directory in full. If the log cannot be opened for writing
// the store is open all the same, serving reads, and Check says why writes
// fail (see Recovery.WriteErr).
//
// A failed store (ErrFailed) is not reopened: it was never sealed, so
// nobody else wrote and it holds every acknowledged write; Reopen returns
// nil and it goes on serving reads and refusing writes, for good (only a
// restart, which recovers from disk, lets it write again: an fsync is
// never retried). A closed store cannot be reopened.
func (s *Store) Reopen() error {
	s.life.Lock()
	defer s.life.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.state {
	case stateOpen:
		return nil
	case stateSealed:
	case stateFailed:
		return nil
	default:
		return ErrClosed
	}
	start := time.Now()
	var l *loader
	rc := Recovery{SnapshotRevision: s.snapRev}
	if at := s.sealedAt; at != nil && at.f != nil {
		l = &loader{dir: s.dir, reap: s.reap, snapRev: s.snapRev, snapBytes: s.snapBytes, rev: s.rev, closed: slices.Clone(s.segs), pos: *at}
		s.sealedAt.f = nil // l owns it now
	} else {
		rc.FullLoad, rc.FullLoadReason = true, "a previous Reopen failed"
		var err error
		if l, err = load(s.dir, true, s.reap); err != nil {
			return err
		}
		rc.SnapshotRevision, rc.Replayed, rc.CaughtUpRecords, rc.CaughtUpBytes = l.snapRev, l.records, l.records, l.bytes
	}
	if !rc.FullLoad {
		var err error
		if l, err = catchUpOrReload(l, &rc); err != nil {
			return err
		}
	}
	fresh, pending := l.data, l.pending
	s.becomeWriterLocked(l, &rc)
	if fresh != nil {
		s.data = fresh
	} else {
		for _, r := range pending {
			applyTo(s.data, r)
		}
	}
	s.closeSealedLocked()
	rc.CatchUpDuration = time.Since(start)
	s.recovery = rc
	if s.state == stateOpen {
		s.startCompactorLocked()
	}
	return nil
}

// Close refuses new writes (ErrClosed), waits for the batch in flight,
// stops the compactor and closes the log. The next Open replays the log.
// Close is idempotent. Use Seal instead to hand the data over.
func (s *Store) Close() error {
	s.life.Lock()
	defer s.life.Unlock()
	s.mu.Lock()
	if s.state == stateClosed {
		s.mu.Unlock()
		return nil
	}
	s.state, s.refuse = stateClosed, ErrClosed
	s.waitIdleLocked()
	s.state, s.refuse = stateClosed, ErrClosed // a failing last batch set them
	c := s.comp
	s.comp = nil
	s.mu.Unlock()

	c.stop()

	s.mu.Lock()
	s.closeSealedLocked()
	var err error
	if s.f != nil {
		if cerr := s.f.Close(); cerr != nil {
			err = fmt.Errorf("store: close log: %w", cerr)
		}
		s.f = nil
	}
	s.mu.Unlock()
	s.reapers.Wait()
	return err
}
