package store

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// errChain marks damage to the chain of segments rather than to a file's
// bytes: a segment missing after the warm position, or revisions that do
// not follow across files. A compaction that ran meanwhile (a newer
// snapshot covering what is gone) explains it; a catch-up then falls back
// to a full load, which decides whether it is corruption.
var errChain = errors.New("the log does not continue from the position read")

// position is where reading the log got to: a segment and the offset just
// past its last record applied.
type position struct {
	seq     uint64
	f       *os.File // read-only; nil before the first segment
	off     int64
	lastRev uint64 // revision of the segment's last record read; 0 if none
	lastCRC uint32 // checksum of that record
	gone    bool   // deleted (compacted) since it was opened
}

// loader rebuilds the state from the directory: the snapshot, then the
// segments from oldest to newest. Prepare, Warm.Open, Reopen and the
// full-load fallback share it.
type loader struct {
	dir string
	// reap closes a segment file that may be deleted already (freeing
	// it may take long); nil: close at once.
	reap func(*os.File)
	// data is the state. While it is nil (Reopen's catch-up) records are
	// collected in pending instead, to be applied once all of them read
	// without error.
	data    map[string][]byte
	pending []record
	snapRev uint64 // revision of the snapshot loaded (checksum verified)
	// snapBytes is its size.
	snapBytes int64
	rev       uint64 // revision of the state
	closed    []segment
	pos       position
	records   int   // records applied since the counters were reset
	bytes     int64 // log bytes read since then
	torn      struct {
		path      string
		at, bytes int64
	}
}

// load reads the snapshot and every segment of dir. The lock holder
// (locked) cuts a torn tail off the last segment (see damagedAt); without
// the lock the last segment may be being written, and reading it stops at
// the first record that is not complete.
//
// Without the lock a compaction may delete segments meanwhile. The
// segments are opened first and the snapshot after them: a segment deleted
// before it was opened was covered by a snapshot renamed into place before
// the deletion, so the snapshot opened later covers it.
func load(dir string, locked bool, reap func(*os.File)) (l *loader, err error) {
	seqs, err := listSegments(dir)
	if err != nil {
		return nil, err
	}
	type opened struct {
		seq uint64
		f   *os.File
	}
	var files []opened
	defer func() {
		if err != nil {
			for _, o := range files {
				o.f.Close()
			}
		}
	}()
	for _, seq := range seqs {
		f, err := os.Open(segmentPath(dir, seq))
		if errors.Is(err, fs.ErrNotExist) {
			continue // compacted: the snapshot covers it
		}
		if err != nil {
			return nil, fmt.Errorf("store: open log segment: %w", err)
		}
		files = append(files, opened{seq, f})
	}
	l = &loader{dir: dir, reap: reap, data: map[string][]byte{}}
	if err := l.loadSnapshot(); err != nil {
		return nil, err
	}
	for i, o := range files {
		files[i].f = nil // l owns it now
		l.enter(o.seq, o.f)
		mode := tailNone
		if i == len(files)-1 {
			mode = tailStop
			if locked {
				mode = tailCut
			}
		}
		if err := l.readPos(mode); err != nil {
			l.close()
			return nil, err
		}
	}
	files = nil
	return l, nil
}

// loadSnapshot reads the snapshot into l.data. A missing snapshot is an
// empty state at revision 0.
func (l *loader) loadSnapshot() error {
	path := filepath.Join(l.dir, SnapshotFileName)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: open snapshot: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("store: stat snapshot: %w", err)
	}
	sr, err := newSnapReader(f, path)
	if err != nil {
		return err
	}
	for {
		k, v, ok, err := sr.next()
		if err != nil {
			clear(l.data) // nothing of a damaged snapshot is used
			return err
		}
		if !ok {
			break
		}
		l.data[string(k)] = bytes.Clone(v)
		if len(v) == 0 {
			l.data[string(k)] = []byte{}
		}
	}
	l.snapRev, l.rev, l.snapBytes = sr.rev, sr.rev, fi.Size()
	return nil
}

// enter makes segment seq, open as f, the one being read; the previous
// one, read to its end, is closed.
func (l *loader) enter(seq uint64, f *os.File) {
	if l.pos.f != nil {
		if !l.pos.gone {
			l.closed = append(l.closed, segment{seq: l.pos.seq, lastRev: l.pos.lastRev, size: l.pos.off})
		}
		l.closeFile(l.pos.f)
	}
	l.pos = position{seq: seq, f: f}
}

// readPos applies the records of the current segment from the position to
// the segment's end (or, tailStop, to the last complete record).
func (l *loader) readPos(mode tailMode) error {
	fi, err := l.pos.f.Stat()
	if err != nil {
		return fmt.Errorf("store: stat log segment: %w", err)
	}
	path := segmentPath(l.dir, l.pos.seq)
	start := l.pos.off
	res, err := replay(l.pos.f, start, fi.Size(), path, l.rev, mode, func(off int64, r record) error {
		return l.apply(path, off, r)
	})
	if err != nil {
		return err
	}
	l.bytes += res.validEnd - start
	l.pos.off = res.validEnd
	if res.torn && mode == tailCut {
		l.torn.path, l.torn.at, l.torn.bytes = path, res.validEnd, fi.Size()-res.validEnd
	}
	return nil
}

// apply checks that r continues the log and applies it. Inside a segment
// revisions are consecutive. Records at or below the snapshot's revision
// are in it already and skipped; beyond it, each record must be the
// state's next revision.
func (l *loader) apply(path string, off int64, r record) error {
	if l.pos.lastRev != 0 && r.rev != l.pos.lastRev+1 {
		return &CorruptError{Path: path, Offset: off, Err: fmt.Errorf("revision %d follows %d", r.rev, l.pos.lastRev)}
	}
	l.pos.lastRev, l.pos.lastCRC = r.rev, r.crc
	switch {
	case r.rev <= l.snapRev:
		return nil // in the snapshot already
	case r.rev <= l.rev:
		return &CorruptError{Path: path, Offset: off, Err: fmt.Errorf("%w: revision %d again, the state is at %d", errChain, r.rev, l.rev)}
	case r.rev != l.rev+1:
		return &CorruptError{Path: path, Offset: off, Err: fmt.Errorf("%w: the log continues at revision %d, the state is at %d", errChain, r.rev, l.rev)}
	}
	if l.data == nil {
		l.pending = append(l.pending, r)
	} else {
		applyTo(l.data, r)
	}
	l.rev = r.rev
	l.records++
	return nil
}

func applyTo(data map[string][]byte, r record) {
	switch r.op {
	case opPut:
		data[r.key] = r.value
	case opDelete:
		delete(data, r.key)
	}
}

// catchUp applies what was written after the position: the rest of the
// current segment, then the segments after it. The lock holder (locked)
// cuts a torn tail off the last one; without the lock reading it stops
// at the first record that is not complete. Segments that are gone or a
// sequence number skipped fail with errChain: a compaction deleted what
// was not read yet.
func (l *loader) catchUp(locked bool) error {
	seqs, err := listSegments(l.dir)
	if err != nil {
		return err
	}
	l.closed = slices.DeleteFunc(l.closed, func(s segment) bool {
		_, found := slices.BinarySearch(seqs, s.seq)
		return !found // compacted meanwhile
	})
	var later []uint64
	for _, seq := range seqs {
		if l.pos.f == nil || seq > l.pos.seq {
			later = append(later, seq)
		}
	}
	lastMode := tailStop
	if locked {
		lastMode = tailCut
	}
	if l.pos.f != nil {
		name := segmentName(l.pos.seq)
		fi, err := os.Stat(filepath.Join(l.dir, name))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// Compacted after it was closed: its rest is still readable
			// through the open file, but it must have a successor.
			if len(later) == 0 {
				return fmt.Errorf("store: %w: %s is gone and no segment follows it", errChain, name)
			}
			l.pos.gone = true
		case err != nil:
			return fmt.Errorf("store: stat log segment: %w", err)
		default:
			if mine, err := l.pos.f.Stat(); err != nil || !os.SameFile(fi, mine) {
				return fmt.Errorf("store: %w: %s is not the file read before", errChain, name)
			}
		}
		mode := lastMode
		if len(later) > 0 {
			mode = tailNone
		}
		if err := l.readPos(mode); err != nil {
			return err
		}
	}
	for i, seq := range later {
		if l.pos.f != nil && seq != l.pos.seq+1 {
			return fmt.Errorf("store: %w: %s is missing", errChain, segmentName(l.pos.seq+1))
		}
		f, err := os.Open(segmentPath(l.dir, seq))
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("store: %w: %s was deleted before it was read", errChain, segmentName(seq))
		}
		if err != nil {
			return fmt.Errorf("store: open log segment: %w", err)
		}
		l.enter(seq, f)
		mode := tailNone
		if i == len(later)-1 {
			mode = lastMode
		}
		if err := l.readPos(mode); err != nil {
			return err
		}
	}
	return nil
}

// close releases the open segment.
func (l *loader) close() {
	if l.pos.f != nil {
		l.closeFile(l.pos.f)
		l.pos.f = nil
	}
}

func (l *loader) closeFile(f *os.File) {
	if l.reap != nil {
		l.reap(f)
	} else {
		f.Close()
	}
}

func (l *loader) resetCounters() {
	l.records, l.bytes = 0, 0
}

// Warm-up tuning: Prepare reads again what was written while it read,
// until a pass finds little new (or after prepareMaxPasses passes), and
// starts over when a compaction broke the chain under it.
const (
	prepareMaxPasses   = 4
	preparePassEnough  = 64 << 10 // bytes: a pass reading less ends the warm-up
	prepareMaxAttempts = 3
)

// Warm is a state loaded read-only by Prepare: a snapshot and the log up
// to a position. Open turns it into the Store, applying only what was
// written after that position.
type Warm struct {
	mu   sync.Mutex
	dir  string
	l    *loader // nil once opened or closed
	rc   Recovery
	rev  uint64
	keys int
}

// Prepare loads the state of dir without writing anything and without the
// data-directory lock, while another process may still write the
// directory: it reads the newest snapshot and every log segment up to
// the last complete record (an incomplete one at the end is where the
// warm-up stops, not an error), and keeps its position there, with the
// segment open so that a later deletion does not matter. Segments
// compacted away while it reads are handled by starting over (bounded);
// if that does not settle, Open falls back to a full load. Damage that no
// writer in progress explains fails with a *CorruptError.
//
// A missing directory is an empty store. Call Open (lock held) or Close.
func Prepare(dir string) (*Warm, error) {
	start := time.Now()
	var l *loader
	for attempt := 1; ; attempt++ {
		var err error
		if l, err = load(dir, false, nil); err != nil {
			return nil, err
		}
		for range prepareMaxPasses {
			before := l.bytes
			if err = l.catchUp(false); err != nil || l.bytes-before < preparePassEnough {
				break
			}
		}
		if err == nil {
			break
		}
		if !errors.Is(err, errChain) {
			l.close()
			return nil, err
		}
		if attempt == prepareMaxAttempts {
			// The first load of l is consistent, only the passes after it
			// were cut short: Open catches up, or falls back to a full load.
			break
		}
		l.close()
	}
	w := &Warm{dir: dir, l: l, rev: l.rev, keys: len(l.data)}
	w.rc = Recovery{
		SnapshotRevision: l.snapRev,
		Replayed:         l.records,
		WarmRecords:      l.records,
		WarmBytes:        l.bytes,
		WarmDuration:     time.Since(start),
	}
	return w, nil
}

// Revision is the revision the warm-up reached.
func (w *Warm) Revision() uint64 { return w.rev }

// Len is the number of keys the warm-up loaded.
func (w *Warm) Len() int { return w.keys }

// Recovery reports the warm-up: the snapshot's revision and the log
// records and bytes read after it, and how long it took.
func (w *Warm) Recovery() Recovery { return w.rc }

// Close releases a Warm that will not be opened. It is idempotent, and a
// no-op after Open.
func (w *Warm) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.l != nil {
		w.l.close()
		w.l = nil
	}
	return nil
}

// Open makes the warmed-up state the writable Store. Hold the
// data-directory lock, and call it only once the previous writer has
// sealed or stopped: it applies what was written after the warm-up's
// position with the full recovery rules (a torn tail is cut off, other
// damage fails with a *CorruptError), and appends to the last segment. If
// compactions during the warm-up deleted segments it had not read, it
// loads the directory in full instead and says so in Recovery. If the
// last segment cannot be opened for writing (or cut, or the first one
// created) the store opens all the same, serving reads and refusing
// writes until the disk takes them, and Recovery.WriteErr says why. A
// Warm is opened at most once.
func (w *Warm) Open() (*Store, error) {
	return w.open(defaultOptions())
}

// OpenWith is Open with options.
func (w *Warm) OpenWith(o Options) (*Store, error) {
	opts, err := o.apply(defaultOptions())
	if err != nil {
		w.Close()
		return nil, err
	}
	return w.open(opts)
}

func (w *Warm) open(opts options) (*Store, error) {
	w.mu.Lock()
	l := w.l
	w.l = nil
	w.mu.Unlock()
	if l == nil {
		return nil, errors.New("store: Warm already opened or closed")
	}
	start := time.Now()
	if err := os.MkdirAll(w.dir, 0o700); err != nil {
		l.close()
		return nil, fmt.Errorf("store: create data directory: %w", err)
	}
	s := &Store{dir: w.dir, opts: opts}
	s.progress = sync.NewCond(&s.mu)
	l.reap = s.reap // files the incumbent deleted are freed off the pause
	rc := w.rc
	l.resetCounters()
	l, err := catchUpOrReload(l, &rc)
	if err != nil {
		s.reapers.Wait()
		return nil, err
	}
	s.data = l.data
	s.becomeWriterLocked(l, &rc)
	rc.CatchUpDuration = time.Since(start)
	s.recovery = rc
	if s.state == stateOpen {
		s.startCompactorLocked()
	}
	return s, nil
}

// catchUpOrReload catches l up with the lock held; if the chain from its
// position is broken it loads the directory in full instead. rc is
// updated with what was read.
func catchUpOrReload(l *loader, rc *Recovery) (*loader, error) {
	err := l.catchUp(true)
	if err == nil {
		rc.CaughtUpRecords, rc.CaughtUpBytes = l.records, l.bytes
		rc.Replayed += l.records
		return l, nil
	}
	l.close()
	if !errors.Is(err, errChain) {
		return nil, err
	}
	full, ferr := load(l.dir, true, l.reap)
	if ferr != nil {
		return nil, ferr
	}
	rc.FullLoad, rc.FullLoadReason = true, err.Error()
	rc.SnapshotRevision = full.snapRev
	rc.Replayed = full.records
	rc.CaughtUpRecords, rc.CaughtUpBytes = full.records, full.bytes
	return full, nil
}
