package store

import (
	"bytes"
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
