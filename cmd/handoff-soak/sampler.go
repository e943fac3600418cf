package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// sample is one look at the processes. A value that could not be read is
// -1 (the daemon may have exited between two reads during a handoff).
type sample struct {
	At         time.Time
	Handoffs   int // handoffs finished when it was taken
	SupFDs     int
	SupRSS     int64
	Goroutines int
	DaemonPID  int
	DaemonFDs  int
	DaemonRSS  int64
	Zombies    []int
	KVD        int
}

// sampler takes samples every interval and on demand, and keeps them all.
type sampler struct {
	supPID    int
	kvdBins   []string
	metrics   *metricsClient
	daemonPID atomic.Int64
	handoffs  atomic.Int64

	mu      sync.Mutex
	samples []sample // every one, in order
	rest    []sample // rest[i]: at rest after i handoffs
	// zombieSeen: first and last sighting of each zombie pid.
	zombieSeen map[int][2]time.Time
}

func newSampler(supPID int, kvdBins []string, m *metricsClient, daemonPID int) *sampler {
	s := &sampler{supPID: supPID, kvdBins: kvdBins, metrics: m, zombieSeen: map[int][2]time.Time{}}
	s.daemonPID.Store(int64(daemonPID))
	return s
}

// take samples now and records the sample.
func (s *sampler) take(ctx context.Context) sample {
	smp := sample{At: time.Now(), Handoffs: int(s.handoffs.Load()), SupFDs: -1, SupRSS: -1, Goroutines: -1,
		DaemonFDs: -1, DaemonRSS: -1, KVD: -1}
	if n, err := fdCount(s.supPID); err == nil {
		smp.SupFDs = n
	}
	if n, err := rssBytes(s.supPID); err == nil {
		smp.SupRSS = n
	}
	mctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	if m, err := s.metrics.scrape(mctx, "go_goroutines"); err == nil {
		if g, ok := m["go_goroutines"]; ok {
			smp.Goroutines = int(g)
		}
	}
	cancel()
	smp.DaemonPID = int(s.daemonPID.Load())
	if smp.DaemonPID > 0 {
		fds, ferr := fdCount(smp.DaemonPID)
		rss, rerr := rssBytes(smp.DaemonPID)
		if ferr == nil && rerr == nil {
			smp.DaemonFDs, smp.DaemonRSS = fds, rss
		}
	}
	if ps, err := scanProcs(s.supPID, s.kvdBins); err == nil {
		smp.Zombies, smp.KVD = ps.zombies, ps.kvd
	}
	s.mu.Lock()
	s.samples = append(s.samples, smp)
	for _, z := range smp.Zombies {
		seen, ok := s.zombieSeen[z]
		if !ok {
			seen[0] = smp.At
		}
		seen[1] = smp.At
		s.zombieSeen[z] = seen
	}
	s.mu.Unlock()
	return smp
}

// takeRest takes the sample at rest after the handoffs so far.
func (s *sampler) takeRest(ctx context.Context) sample {
	smp := s.take(ctx)
	s.mu.Lock()
	s.rest = append(s.rest, smp)
	s.mu.Unlock()
	return smp
}

// run samples every interval until ctx is done.
func (s *sampler) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.take(ctx)
		}
	}
}

// snapshot returns copies of every sample, the samples at rest and the
// zombies' lifetimes as seen.
func (s *sampler) snapshot() (all, rest []sample, zombieLife map[int]time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	zombieLife = map[int]time.Duration{}
	for pid, seen := range s.zombieSeen {
		zombieLife[pid] = seen[1].Sub(seen[0])
	}
	return append([]sample(nil), s.samples...), append([]sample(nil), s.rest...), zombieLife
}
