package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/examples/kvd/store"
)

// populateWriters is how many goroutines put keys at once: the store
// commits the writes that queue behind an fsync together, so more writers
// mean fewer, larger fsyncs.
const populateWriters = 1024

// populateTimeout bounds the population of one data directory.
const populateTimeout = 10 * time.Minute

// popKey is the key of the i-th populated entry.
func popKey(i int) string {
	return fmt.Sprintf("k%08d", i)
}

// fillValue fills v with the value of the i-th populated entry: its key
// repeated, so that a check can tell one entry's value from another's.
func fillValue(v []byte, i int) {
	pat := strconv.AppendInt([]byte("k"), int64(i), 10)
	pat = append(pat, '|')
	for j := range v {
		v[j] = pat[j%len(pat)]
	}
}

// isPopValue reports whether v is the value of the i-th populated entry.
func isPopValue(v []byte, i, size int) bool {
	if len(v) != size {
		return false
	}
	pat := strconv.AppendInt([]byte("k"), int64(i), 10)
	pat = append(pat, '|')
	for j := range v {
		if v[j] != pat[j%len(pat)] {
			return false
		}
	}
	return true
}

// populated is what populate wrote.
type populated struct {
	Took      time.Duration `json:"took_ns"`
	DiskBytes int64         `json:"disk_bytes"` // the data directory's files
}

// populate fills the fresh data directory dir with n keys of valueSize
// bytes through kvd's store package (many concurrent Puts, which the store
// commits in groups), then compacts the store into a snapshot, the form a
// running kvd leaves behind once its background compaction caught up.
func populate(ctx context.Context, dir string, n, valueSize int) (populated, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, populateTimeout)
	defer cancel()
	lock, err := handoff.AcquireDataDirLock(dir)
	if err != nil {
		return populated{}, fmt.Errorf("populate %s: %w", dir, err)
	}
	st, err := store.Open(dir)
	if err != nil {
		return populated{}, errors.Join(fmt.Errorf("populate %s: %w", dir, err), lock.Release())
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, populateWriters)
	for w := range populateWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := make([]byte, valueSize)
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				fillValue(v, i)
				if _, err := st.Put(popKey(i), v); err != nil {
					errs[w] = fmt.Errorf("put %s: %w", popKey(i), err)
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	err = errors.Join(errs...)
	if err == nil && ctx.Err() != nil {
		err = fmt.Errorf("after %v: %w", populateTimeout, ctx.Err())
	}
	if err == nil && st.Len() != n {
		err = fmt.Errorf("the store holds %d keys, want %d", st.Len(), n)
	}
	if err == nil {
		err = st.Compact()
	}
	err = errors.Join(err, st.Close(), lock.Release())
	st = nil
	// The store's map is garbage now; give its memory back before the
	// daemons load their own copies.
	debug.FreeOSMemory()
	if err != nil {
		return populated{}, fmt.Errorf("populate %s: %w", dir, err)
	}
	size, err := dirSize(dir)
	return populated{Took: time.Since(start), DiskBytes: size}, err
}

// dirSize adds up the sizes of the regular files in dir.
func dirSize(dir string) (int64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("data directory: %w", err)
	}
	var n int64
	for _, e := range ents {
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			return 0, fmt.Errorf("data directory: %w", err)
		}
		if fi.Mode().IsRegular() {
			n += fi.Size()
		}
	}
	return n, nil
}
