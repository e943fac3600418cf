package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
)

// checkAcked reopens dir from disk and checks that every key of acked is
// there with its value and that none of gone is.
func checkAcked(t *testing.T, dir string, acked map[string]string, gone ...string) *Store {
	t.Helper()
	r := openT(t, dir, defaultOptions())
	for k, v := range acked {
		if got, ok := r.Get(k); !ok || string(got) != v {
			t.Errorf("after reopening, %s = %q, %v; want the acknowledged %q", k, got, ok, v)
		}
	}
	for _, k := range gone {
		if _, ok := r.Get(k); ok {
			t.Errorf("after reopening, %s is there although its write failed", k)
		}
	}
	return r
}

// TestWriteFailureIsNotForGood: a write of the log that fails without an
// fsync failing (a full or read-only disk) fails its batch with
// ErrWriteFailed and cuts off what it appended; the store serves reads,
// answers Check with the cause, and takes writes again as soon as the
// disk does, with the next revision.
func TestWriteFailureIsNotForGood(t *testing.T) {
	tests := []struct {
		name  string
		errno syscall.Errno
		part  bool // half the batch reaches the file before the error
	}{
		{"disk full half-way through the batch", syscall.ENOSPC, true},
		{"read-only filesystem", syscall.EROFS, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			var broken atomic.Bool
			opts := defaultOptions()
			opts.writeFile = func(f *os.File, p []byte) (int, error) {
				if !broken.Load() {
					return f.Write(p)
				}
				n := 0
				if tt.part {
					n, _ = f.Write(p[:len(p)/2])
				}
				return n, &os.PathError{Op: "write", Path: f.Name(), Err: tt.errno}
			}
			s := openT(t, dir, opts)
			acked := map[string]string{}
			for i := range 3 {
				k := fmt.Sprintf("k%d", i)
				mustPut(t, s, k, "durable")
				acked[k] = "durable"
			}
			durable := fileSize(t, filepath.Join(dir, LogFileName))

			broken.Store(true)
			for range 2 {
				_, err := s.Put("failed", []byte("never applied"))
				if !errors.Is(err, ErrWriteFailed) || !errors.Is(err, tt.errno) || errors.Is(err, ErrFailed) {
					t.Fatalf("Put on a broken disk = %v, want ErrWriteFailed wrapping %v", err, tt.errno)
				}
			}
			if err := s.Check(); !errors.Is(err, ErrWriteFailed) || !errors.Is(err, tt.errno) {
				t.Errorf("Check after a failed write = %v, want ErrWriteFailed wrapping %v", err, tt.errno)
			}
			if v, ok := s.Get("k1"); !ok || string(v) != "durable" {
				t.Errorf("Get after a failed write = %q, %v", v, ok)
			}
			if _, ok := s.Get("failed"); ok {
				t.Error("the failed write is visible")
			}
			if got := fileSize(t, filepath.Join(dir, LogFileName)); got != durable {
				t.Errorf("the log is %d bytes after the failed write, want the %d durable ones", got, durable)
			}
			if s.Revision() != 3 {
				t.Errorf("revision %d after the failed writes, want 3", s.Revision())
			}

			broken.Store(false)
			if rev := mustPut(t, s, "after", "the disk took it"); rev != 4 {
				t.Errorf("the first write after the disk recovered got revision %d, want 4", rev)
			}
			acked["after"] = "the disk took it"
			if err := s.Check(); err != nil {
				t.Errorf("Check after a good write: %v", err)
			}
			if err := s.Seal(); err != nil {
				t.Errorf("Seal after the disk recovered: %v", err)
			}
			s.Close()
			checkAcked(t, dir, acked, "failed")
		})
	}
}

// TestOpenWithoutWritableLog: a store whose log cannot be opened for
// writing (a read-only or full filesystem) opens all the same: it serves
// every durable write, refuses writes, Sync and Seal with ErrWriteFailed
// naming the cause, and becomes writable by itself once the log opens,
// cutting a torn tail first if it had one.
func TestOpenWithoutWritableLog(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string) (acked map[string]string)
		torn    bool
	}{
		{"empty directory: the first segment cannot be created", func(*testing.T, string) map[string]string {
			return map[string]string{}
		}, false},
		{"intact log", func(t *testing.T, dir string) map[string]string {
			s := openT(t, dir, defaultOptions())
			mustPut(t, s, "a", "1")
			mustPut(t, s, "b", "2")
			s.Close()
			return map[string]string{"a": "1", "b": "2"}
		}, false},
		{"torn tail that cannot be cut", func(t *testing.T, dir string) map[string]string {
			s := openT(t, dir, defaultOptions())
			mustPut(t, s, "a", "1")
			s.Close()
			appendBytes(t, filepath.Join(dir, LogFileName), unackedBatch(2, 3)[:30])
			return map[string]string{"a": "1"}
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			acked := tt.prepare(t, dir)
			var broken atomic.Bool
			broken.Store(true)
			opts := defaultOptions()
			opts.openFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
				if broken.Load() {
					return nil, &os.PathError{Op: "open", Path: name, Err: syscall.EROFS}
				}
				return os.OpenFile(name, flag, perm)
			}
			s := openT(t, dir, opts)
			if err := s.Recovery().WriteErr; !errors.Is(err, syscall.EROFS) {
				t.Errorf("Recovery().WriteErr = %v, want EROFS", err)
			}
			for k, v := range acked {
				if got, ok := s.Get(k); !ok || string(got) != v {
					t.Errorf("%s = %q, %v; want %q", k, got, ok, v)
				}
			}
			for name, err := range map[string]error{"Check": s.Check(), "Sync": s.Sync(), "Seal": s.Seal()} {
				if !errors.Is(err, ErrWriteFailed) || !errors.Is(err, syscall.EROFS) {
					t.Errorf("%s on a store without a writable log = %v, want ErrWriteFailed wrapping EROFS", name, err)
				}
			}
			if _, err := s.Put("refused", []byte("x")); !errors.Is(err, ErrWriteFailed) || !errors.Is(err, syscall.EROFS) {
				t.Errorf("Put = %v, want ErrWriteFailed wrapping EROFS", err)
			}
			if s.Sealed() {
				t.Fatal("a store that cannot write was sealed")
			}

			broken.Store(false)
			want := uint64(len(acked)) + 1
			if rev := mustPut(t, s, "later", "written"); rev != want {
				t.Errorf("the first write once the log opens got revision %d, want %d", rev, want)
			}
			acked["later"] = "written"
			if err := s.Check(); err != nil {
				t.Errorf("Check once writable: %v", err)
			}
			s.Close()
			r := checkAcked(t, dir, acked, "refused")
			if rc := r.Recovery(); rc.TornTailBytes != 0 || rc.WriteErr != nil {
				t.Errorf("reopening found a torn tail of %d bytes, write error %v: the first writer should have cut it", rc.TornTailBytes, rc.WriteErr)
			}
		})
	}
}

// TestFsyncFailureInDrainAndSeal: an fsync that fails in Sync (a
// handoff's drain) or in Seal fails the store for good: the store serves
// every acknowledged write, refuses writes with ErrFailed, is not sealed,
// and Reopen (an aborted handoff) leaves it so without an error. A restart
// recovers everything from disk.
func TestFsyncFailureInDrainAndSeal(t *testing.T) {
	errInjected := errors.New("injected fsync failure")
	for _, phase := range []SyncPhase{SyncDrain, SyncSeal} {
		t.Run(string(phase), func(t *testing.T) {
			dir := t.TempDir()
			var fsyncs atomic.Int32
			opts := defaultOptions()
			opts.failSync = func(p SyncPhase) error {
				fsyncs.Add(1)
				if p == phase {
					return errInjected
				}
				return nil
			}
			s := openT(t, dir, opts)
			acked := map[string]string{"a": "1", "b": "2"}
			for k, v := range acked {
				mustPut(t, s, k, v)
			}
			var err error
			if phase == SyncDrain {
				err = s.Sync()
			} else {
				err = s.Seal()
			}
			if !errors.Is(err, ErrFailed) || !errors.Is(err, errInjected) {
				t.Fatalf("%s with a failing fsync = %v, want ErrFailed wrapping it", phase, err)
			}
			after := fsyncs.Load()
			if s.Sealed() {
				t.Error("sealed although the fsync failed")
			}
			if err := s.Reopen(); err != nil {
				t.Errorf("Reopen of the failed store = %v, want nil", err)
			}
			if _, err := s.Put("c", []byte("3")); !errors.Is(err, ErrFailed) || !errors.Is(err, errInjected) {
				t.Errorf("Put after the failed fsync = %v, want ErrFailed wrapping it", err)
			}
			for name, err := range map[string]error{"Check": s.Check(), "Sync": s.Sync(), "Seal": s.Seal()} {
				if !errors.Is(err, ErrFailed) {
					t.Errorf("%s after the failed fsync = %v, want ErrFailed", name, err)
				}
			}
			if n := fsyncs.Load(); n != after {
				t.Errorf("%d more fsyncs after one failed: never retry an fsync", n-after)
			}
			for k, v := range acked {
				if got, ok := s.Get(k); !ok || string(got) != v {
					t.Errorf("%s = %q, %v; want %q", k, got, ok, v)
				}
			}
			s.Close()
			r := checkAcked(t, dir, acked, "c")
			mustPut(t, r, "c", "3")
		})
	}
}

// TestReopenOnUnwritableDisk: after a seal and a successor that wrote and
// went away, Reopen on a disk where the log cannot be opened for writing
// still catches up with what the successor wrote and serves it, and
// writes work again once the log opens.
func TestReopenOnUnwritableDisk(t *testing.T) {
	dir := t.TempDir()
	var broken atomic.Bool
	opts := defaultOptions()
	opts.openFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		if broken.Load() {
			return nil, &os.PathError{Op: "open", Path: name, Err: syscall.ENOSPC}
		}
		return os.OpenFile(name, flag, perm)
	}
	inc := openT(t, dir, opts)
	mustPut(t, inc, "inc", "1")
	if err := inc.Seal(); err != nil {
		t.Fatal(err)
	}
	succ := openT(t, dir, defaultOptions())
	mustPut(t, succ, "succ", "2")
	succ.Close()

	broken.Store(true)
	if err := inc.Reopen(); err != nil {
		t.Fatalf("Reopen = %v", err)
	}
	if v, ok := inc.Get("succ"); !ok || string(v) != "2" {
		t.Errorf("the successor's write after Reopen = %q, %v", v, ok)
	}
	if err := inc.Check(); !errors.Is(err, ErrWriteFailed) || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("Check = %v, want ErrWriteFailed wrapping ENOSPC", err)
	}
	broken.Store(false)
	if rev := mustPut(t, inc, "again", "3"); rev != 3 {
		t.Errorf("revision %d, want 3", rev)
	}
	inc.Close()
	checkAcked(t, dir, map[string]string{"inc": "1", "succ": "2", "again": "3"})
}

// TestCompactionWaitsForRoom: a compaction that would not leave the log
// room on the disk is postponed with ENOSPC, writes no temporary file,
// and runs once there is room.
func TestCompactionWaitsForRoom(t *testing.T) {
	dir := t.TempDir()
	var free atomic.Uint64
	opts := smallSegments(1<<10, false)
	opts.freeBytes = func(string) (uint64, error) { return free.Load(), nil }
	s := openT(t, dir, opts)
	for i := range 40 {
		mustPut(t, s, fmt.Sprintf("k%02d", i), "a value long enough to fill segments")
	}
	free.Store(compactReserve) // room for the log, none for a snapshot
	if err := s.Compact(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Compact without room = %v, want ENOSPC", err)
	}
	if st := s.Stats(); !errors.Is(st.Compaction.LastErr, syscall.ENOSPC) || st.Compaction.Snapshots != 0 {
		t.Errorf("after the postponed compaction: %+v", st.Compaction)
	}
	if tmps, _ := staleTemps(dir); len(tmps) > 0 {
		t.Errorf("a postponed compaction left %v", tmps)
	}
	mustPut(t, s, "during", "writes go on")
	free.Store(1 << 40)
	if err := s.Compact(); err != nil {
		t.Fatalf("Compact with room: %v", err)
	}
	if st := s.Stats(); st.Compaction.Snapshots != 1 || st.SnapshotRevision != s.Revision() {
		t.Errorf("after the compaction: %+v", st)
	}
}
