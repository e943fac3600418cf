//go:build linux

package handoff

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/internal/proc"
	"github.com/handoff-go/handoff/internal/wire"
	"golang.org/x/sys/unix"
)

// staleWait bounds how long AcquireDataDirLockOrBreakStale retries a lock
// whose recorded holder is dead (its descriptors may still be closing).
const staleWait = 2 * time.Second

// DataDirLock is an exclusive flock on <dir>/.handoff.lock. At most one
// process holds it, and the flock alone decides who: the holder's pid for
// error messages comes from the kernel's lock table (/proc/locks). The pid
// is also written to <dir>/.handoff.pid for people, advisory only: it is
// not fsync'd (after a crash no process holds the lock anyway) and taking
// the lock does not fail when it cannot be written, so a full disk does
// not keep a daemon from starting. The lock file is never unlinked: a
// second inode would let two processes each believe they hold the lock.
type DataDirLock struct {
	dir string
	mu  sync.Mutex
	f   *os.File // nil while released
	ino uint64
}

// AcquireDataDirLock takes the lock on dir without waiting. If another
// process holds it the error matches ErrLockHeld and is a *LockHeldError
// naming the holder's pid.
func AcquireDataDirLock(dir string) (*DataDirLock, error) {
	return acquire(dir)
}

// AcquireDataDirLockOrBreakStale is AcquireDataDirLock for a cold start after
// a crash. A stale pid file (its process is gone) is replaced. If the lock
// is held while its recorded holder is dead, the descriptor lives on in
// another process (one that inherited it, or one still exiting): it retries
// for up to two seconds for it to go away and then refuses with an error
// naming the dead holder (also matching ErrTimeout). Every retry reads the
// pid file again: as soon as it names a live process, that holder is
// reported at once. It never unlinks the lock file.
func AcquireDataDirLockOrBreakStale(dir string) (*DataDirLock, error) {
	return acquireBreakingStale(dir, nil)
}

// acquireBreakingStale is AcquireDataDirLockOrBreakStale; onRetry, if not
// nil, is called each time it is about to wait for a lock whose recorded
// holder is dead.
func acquireBreakingStale(dir string, onRetry func()) (*DataDirLock, error) {
	deadline := time.Now().Add(staleWait)
	backoff := time.Millisecond
	for {
		l, err := acquire(dir)
		var held *LockHeldError
		if err == nil || !errors.As(err, &held) || (held.HolderPID > 0 && proc.Alive(held.HolderPID)) {
			return l, err
		}
		wait := time.Until(deadline)
		if wait <= 0 {
			held.StaleHolder = held.HolderPID > 0
			return nil, fmt.Errorf("%w: waiting %v for the lock: %w", ErrTimeout, staleWait, err)
		}
		if onRetry != nil {
			onRetry()
		}
		time.Sleep(min(backoff, wait))
		backoff = min(backoff*2, 50*time.Millisecond)
	}
}

// AcquireDataDirLockWait retries AcquireDataDirLock until it succeeds, fails
// with an error other than ErrLockHeld, or ctx ends; then it returns the last
// *LockHeldError (also matching ErrTimeout when ctx expired).
func AcquireDataDirLockWait(ctx context.Context, dir string) (*DataDirLock, error) {
	backoff := time.Millisecond
	for {
		l, err := acquire(dir)
		if err == nil || !errors.Is(err, ErrLockHeld) {
			return l, err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w: waiting for the lock: %w", ErrTimeout, err)
		case <-t.C:
		}
		backoff = min(backoff*2, 50*time.Millisecond)
	}
}

func acquire(dir string) (*DataDirLock, error) {
	if dir == "" {
		return nil, errors.New("handoff: data directory path is empty")
	}
	path := filepath.Join(dir, wire.LockFileName)
	for attempt := 0; ; attempt++ {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
		if errors.Is(err, syscall.EROFS) {
			// A read-only filesystem (ext4 remounts itself so on an
			// error): flock works on a descriptor opened for reading,
			// and the daemon can still serve what it reads.
			f, err = os.OpenFile(path, os.O_RDONLY|syscall.O_CLOEXEC, 0)
		}
		if err != nil {
			return nil, fmt.Errorf("handoff: open lock file: %w", err)
		}
		if err := flock(f); err != nil {
			holder := holderPID(f, dir)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, &LockHeldError{Dir: dir, HolderPID: holder}
			}
			return nil, fmt.Errorf("handoff: flock %s: %w", path, err)
		}
		// The file we locked must still be the one at path; if someone
		// replaced it, lock the new one instead.
		var fst, pst unix.Stat_t
		var statErr error
		if err := rawControl(f, func(fd uintptr) { statErr = unix.Fstat(int(fd), &fst) }); err != nil || statErr != nil {
			f.Close()
			return nil, fmt.Errorf("handoff: stat lock file: %w", errors.Join(err, statErr))
		}
		if err := unix.Stat(path, &pst); err != nil || pst.Ino != fst.Ino || pst.Dev != fst.Dev {
			f.Close()
			if attempt < 3 {
				continue
			}
			return nil, fmt.Errorf("handoff: lock file %s keeps being replaced", path)
		}
		writePIDFile(dir, os.Getpid())
		return &DataDirLock{dir: dir, f: f, ino: fst.Ino}, nil
	}
}

func flock(f *os.File) error {
	var err error
	ctlErr := rawControl(f, func(fd uintptr) {
		for {
			err = unix.Flock(int(fd), unix.LOCK_EX|unix.LOCK_NB)
			if err != unix.EINTR {
				return
			}
		}
	})
	if ctlErr != nil {
		return ctlErr
	}
	return err
}

// Dir returns the data directory.
func (l *DataDirLock) Dir() string { return l.dir }

// Release removes the pid file and releases the lock. Calling it again is a no-op.
func (l *DataDirLock) Release() error {
	return l.release(true)
}

// release drops the lock; the pid file is removed only if removePID. The
// incumbent keeps it during a handoff (the successor overwrites it at
// once), which keeps an unlink off the accept gap.
func (l *DataDirLock) release(removePID bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	var err error
	if removePID && readPID(l.dir) == os.Getpid() {
		if rmErr := os.Remove(filepath.Join(l.dir, wire.PIDFileName)); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
			err = fmt.Errorf("handoff: remove pid file: %w", rmErr)
		}
	}
	if cerr := l.f.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("handoff: release lock: %w", cerr)
	}
	l.f = nil
	return err
}

// Held reports whether this process still holds the lock through l.
func (l *DataDirLock) Held() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f != nil
}

func (l *DataDirLock) released() bool { return !l.Held() }

// reacquire takes the lock again after Release, waiting until ctx ends.
func (l *DataDirLock) reacquire(ctx context.Context) error {
	if l.Held() {
		return nil
	}
	nl, err := AcquireDataDirLockWait(ctx, l.dir)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.f, l.ino = nl.f, nl.ino
	l.mu.Unlock()
	return nil
}

func readPID(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, wire.PIDFileName))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// holderPID is the pid holding the flock on f's file: the one the kernel
// lists (the process that took the lock) if it is alive. If it is dead, a
// descriptor it passed on holds the lock: the pid file may name the live
// process that has it. Failing both, the dead one, else 0.
func holderPID(f *os.File, dir string) int {
	var kernel int
	var st unix.Stat_t
	var statErr error
	if err := rawControl(f, func(fd uintptr) { statErr = unix.Fstat(int(fd), &st) }); err == nil && statErr == nil {
		if pids := proc.FlockHolders(st.Ino); len(pids) > 0 {
			kernel = pids[0]
		}
	}
	if kernel > 0 && proc.Alive(kernel) {
		return kernel
	}
	if recorded := readPID(dir); recorded > 0 && (kernel == 0 || proc.Alive(recorded)) {
		return recorded
	}
	return kernel
}

// writePIDFile records pid for people, best effort: a temporary file
// renamed over, so a reader never sees half a pid, and nothing fsync'd.
func writePIDFile(dir string, pid int) {
	path := filepath.Join(dir, wire.PIDFileName)
	tmp := path + ".tmp-" + strconv.Itoa(pid)
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		os.Remove(tmp)
		return
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
	}
}
