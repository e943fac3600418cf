package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
)

// BenchmarkPut compares group commit with one fsync per write, side by
// side, under the same number of concurrent writers:
//
//	go test -run '^$' -bench Put ./examples/kvd/store
func BenchmarkPut(b *testing.B) {
	modes := []struct {
		name       string
		maxRecords int
	}{
		{"group-commit", 0},
		{"fsync-per-write", 1},
	}
	value := bytes.Repeat([]byte("v"), 128)
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			opts := defaultOptions()
			opts.maxBatchRecords = m.maxRecords
			s, err := open(b.TempDir(), opts)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			var n atomic.Uint64
			b.SetParallelism(16) // writers per GOMAXPROCS
			b.SetBytes(int64(len(value)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					key := "key-" + strconv.FormatUint(n.Add(1)%10_000, 10)
					if _, err := s.Put(key, value); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			s.mu.RLock()
			fsyncs := s.fsyncs
			s.mu.RUnlock()
			if fsyncs > 0 {
				b.ReportMetric(float64(b.N)/float64(fsyncs), "writes/fsync")
			}
		})
	}
}

// BenchmarkHandoff measures, per data size (keys of 1 KiB held by a
// snapshot, plus a short log), what a handoff of the store costs inside
// the pause: the incumbent's Seal (also half-way through a compaction of
// the whole snapshot, which it cancels), and the successor's Warm.Open
// after a Prepare (catching up the 10 writes made since), against a full Open
// (what a restart, or a successor without a warm-up, pays). Prepare is
// shown too; it runs before the pause. The Go GC cycle that loading
// triggers is finished before each timed Open (kvd runs it at the end of
// its warm-up), so that it does not land in the window measured.
//
//	go test -run '^$' -bench Handoff -benchtime 10x ./examples/kvd/store
func BenchmarkHandoff(b *testing.B) {
	for _, keys := range []int{1_000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("keys=%d", keys), func(b *testing.B) {
			dir := b.TempDir()
			writeBenchSnapshot(b, dir, keys, 1024)
			inc, err := Open(dir)
			if err != nil {
				b.Fatal(err)
			}
			defer inc.Close()
			put := func(n int) {
				for i := range n {
					if _, err := inc.Put(fmt.Sprintf("key-%08d", i), bytes.Repeat([]byte{'w'}, 1024)); err != nil {
						b.Fatal(err)
					}
				}
			}
			reopen := func() {
				if err := inc.Reopen(); err != nil {
					b.Fatal(err)
				}
			}
			b.Run("Seal", func(b *testing.B) {
				for b.Loop() {
					b.StopTimer()
					put(1)
					b.StartTimer()
					if err := inc.Seal(); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					reopen()
					b.StartTimer()
				}
			})
			b.Run("SealDuringCompaction", func(b *testing.B) {
				// Seal half-way through a compaction that merges the
				// whole snapshot: it is cancelled at its next chunk.
				half := max(1, keys/compactChunk/2)
				for b.Loop() {
					b.StopTimer()
					put(100)
					mid := make(chan struct{})
					chunks := 0
					inc.opts.compactChunk = func(context.Context) {
						if chunks++; chunks == half {
							close(mid)
						}
					}
					compacted := make(chan error, 1)
					go func() { compacted <- inc.Compact() }()
					<-mid
					b.StartTimer()
					if err := inc.Seal(); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					// A small compaction may finish before the cancel.
					if err := <-compacted; err != nil && !errors.Is(err, context.Canceled) {
						b.Fatalf("Compact = %v, want it cancelled or done", err)
					}
					inc.opts.compactChunk = nil
					reopen()
					b.StartTimer()
				}
			})
			b.Run("Prepare", func(b *testing.B) {
				for b.Loop() {
					w, err := Prepare(dir)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					w.Close()
					b.StartTimer()
				}
			})
			b.Run("WarmOpen", func(b *testing.B) {
				var caught int
				for b.Loop() {
					b.StopTimer()
					w, err := Prepare(dir)
					if err != nil {
						b.Fatal(err)
					}
					put(10)
					if err := inc.Seal(); err != nil {
						b.Fatal(err)
					}
					runtime.GC() // as kvd does at the end of its warm-up
					b.StartTimer()
					s, err := w.Open()
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					caught = s.Recovery().CaughtUpRecords
					s.Close()
					reopen()
					b.StartTimer()
				}
				b.ReportMetric(float64(caught), "records-caught-up")
			})
			b.Run("FullOpen", func(b *testing.B) {
				for b.Loop() {
					b.StopTimer()
					if err := inc.Seal(); err != nil {
						b.Fatal(err)
					}
					runtime.GC() // the same start for both
					b.StartTimer()
					s, err := Open(dir)
					if err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					s.Close()
					reopen()
					b.StartTimer()
				}
			})
		})
	}
}

// writeBenchSnapshot writes a snapshot of keys keys with values of size
// bytes straight into dir, at revision keys.
func writeBenchSnapshot(b *testing.B, dir string, keys, size int) {
	b.Helper()
	f, err := os.Create(filepath.Join(dir, SnapshotFileName))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sw := newSnapWriter(f, uint64(keys))
	value := bytes.Repeat([]byte{'s'}, size)
	for i := range keys {
		if err := sw.add(fmt.Appendf(nil, "key-%08d", i), value); err != nil {
			b.Fatal(err)
		}
	}
	if err := sw.finish(); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}
