package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Bounds of the kvd mode's clients.
const (
	// kvdReqTimeout bounds each probe and write. It is long on purpose:
	// the bench measures how long a client waits, so a request that waits
	// in the accept queue must not give up first.
	kvdReqTimeout = 30 * time.Second
	// maxProbesInFlight bounds the probes waiting at once; a tick that
	// finds that many in flight sends none (counted as skipped).
	maxProbesInFlight = 256
	// maxRecorded bounds the probe outcomes one load keeps.
	maxRecorded = 4 << 20
)

// reqCounts counts the requests of one kind (probes or writes).
type reqCounts struct {
	OK       int64            `json:"ok"`
	Failed   int64            `json:"failed"`
	Failures map[string]int64 `json:"failures"` // by kind
	// Examples are the first few failures, as the client saw them.
	Examples []string `json:"examples,omitempty"`
	// FailedInOps: the failed ones that were in flight during a handoff
	// or a restart; the others failed in the rests between them.
	FailedInOps int64 `json:"failed_in_ops"`
	// Skipped: probe ticks that found maxProbesInFlight probes waiting.
	Skipped    int64         `json:"skipped,omitempty"`
	MaxLatency time.Duration `json:"max_latency_ns"` // of the successful ones

	failedAt [][2]time.Time // start and end of each failed request
}

func (c *reqCounts) record(start, end time.Time, kind string, err error) {
	if err == nil {
		c.OK++
		c.MaxLatency = max(c.MaxLatency, end.Sub(start))
		return
	}
	if c.Failures == nil {
		c.Failures = map[string]int64{}
	}
	c.Failed++
	c.Failures[kind]++
	if len(c.Examples) < 5 {
		c.Examples = append(c.Examples, err.Error())
	}
	if len(c.failedAt) < maxRecorded {
		c.failedAt = append(c.failedAt, [2]time.Time{start, end})
	}
}

// countInOps sets FailedInOps: the failures in flight during one of the
// windows.
func (c *reqCounts) countInOps(windows [][2]time.Time) {
	c.FailedInOps = 0
	for _, f := range c.failedAt {
		for _, w := range windows {
			if f[0].Before(w[1]) && f[1].After(w[0]) {
				c.FailedInOps++
				break
			}
		}
	}
}

// kvdLoad is the client side of the kvd mode: a prober that opens a fresh
// connection for GET /healthz every probeEvery, and one writer that PUTs a
// new key on a fresh connection writeRate times a second and remembers the
// acknowledged ones.
type kvdLoad struct {
	addr       string
	prefix     string // of the written keys
	probeEvery time.Duration
	writeEvery time.Duration

	mu     sync.Mutex
	probes reqCounts
	okAt   []time.Time // when each successful probe got its answer
	writes reqCounts
	acked  map[string]string // key → value, acknowledged by a 200

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newKVDLoad(addr, prefix string, probeEvery time.Duration, writeRate int) *kvdLoad {
	return &kvdLoad{
		addr: addr, prefix: prefix, probeEvery: probeEvery,
		writeEvery: time.Second / time.Duration(writeRate), acked: map[string]string{},
	}
}

// start runs the prober and the writer until stop or ctx ends.
func (l *kvdLoad) start(ctx context.Context) {
	ctx, l.cancel = context.WithCancel(ctx)
	l.wg.Add(2)
	go func() {
		defer l.wg.Done()
		l.probe(ctx)
	}()
	go func() {
		defer l.wg.Done()
		l.write(ctx)
	}()
}

// stop ends the load and waits for every request in flight.
func (l *kvdLoad) stop() {
	l.cancel()
	l.wg.Wait()
}

func (l *kvdLoad) probe(ctx context.Context) {
	sem := make(chan struct{}, maxProbesInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(l.probeEvery)
	defer tick.Stop()
	for n := 0; n < maxRecorded; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case sem <- struct{}{}:
		default:
			l.mu.Lock()
			l.probes.Skipped++
			l.mu.Unlock()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			start := time.Now()
			_, kind, err := kvdRequest(l.addr, "GET /healthz", nil)
			end := time.Now()
			l.mu.Lock()
			defer l.mu.Unlock()
			l.probes.record(start, end, kind, err)
			if err == nil {
				l.okAt = append(l.okAt, end)
			}
		}()
	}
}

func (l *kvdLoad) write(ctx context.Context) {
	tick := time.NewTicker(l.writeEvery)
	defer tick.Stop()
	for i := 0; i < maxRecorded; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		key := l.prefix + strconv.Itoa(i)
		value := fmt.Sprintf("%s=%d@%d", key, i, time.Now().UnixNano())
		start := time.Now()
		_, kind, err := kvdRequest(l.addr, "PUT /kv/"+key, []byte(value))
		l.mu.Lock()
		l.writes.record(start, time.Now(), kind, err)
		if err == nil {
			l.acked[key] = value
		}
		l.mu.Unlock()
	}
}

// snapshot returns what the load saw: its counts, the times of successful
// probes in order, and the acknowledged writes.
func (l *kvdLoad) snapshot() (probes, writes reqCounts, okAt []time.Time, acked map[string]string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	okAt = slices.Clone(l.okAt)
	slices.SortFunc(okAt, func(a, b time.Time) int { return a.Compare(b) })
	acked = make(map[string]string, len(l.acked))
	for k, v := range l.acked {
		acked[k] = v
	}
	probes, writes = l.probes, l.writes
	probes.failedAt, writes.failedAt = slices.Clone(probes.failedAt), slices.Clone(writes.failedAt)
	return probes, writes, okAt, acked
}

// kvdRequest sends one HTTP/1.1 request ("METHOD /path") with body on a
// fresh connection and reads the answer, which must be 200 OK.
func kvdRequest(addr, req string, body []byte) ([]byte, string, error) {
	deadline := time.Now().Add(kvdReqTimeout)
	d := net.Dialer{Deadline: deadline}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, classify(err), err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s HTTP/1.1\r\nHost: kvd\r\nConnection: close\r\n", req)
	if body != nil {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.Write(body)
	if _, err := c.Write(b.Bytes()); err != nil {
		return nil, classify(err), err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, classify(err), err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, classify(err), err
	}
	if resp.StatusCode != http.StatusOK {
		return got, failBad, fmt.Errorf("%s: %s: %s", req, resp.Status, bytes.TrimSpace(got))
	}
	return got, "", nil
}

// pause is the longest time without a successful probe in a window,
// and when it began, from the window's opening (negative: before it).
type pause struct {
	Len  time.Duration `json:"len_ns"`
	From time.Duration `json:"from_ns"`
}

// pauses returns, for each window, the longest time between two
// successive successful probes (okAt, in order) around it: the pause a
// client that probes every few milliseconds saw. A window with no probe
// after it is measured to its end.
func pauses(okAt []time.Time, windows [][2]time.Time) []pause {
	var out []pause
	for _, w := range windows {
		// From the last success before the window opened (or its
		// opening), through each one, to the first after it closed.
		i, _ := slices.BinarySearchFunc(okAt, w[0], func(t, target time.Time) int { return t.Compare(target) })
		prev := w[0]
		if i > 0 {
			prev = okAt[i-1]
		}
		var longest pause
		closed := false
		for ; i < len(okAt) && !closed; i++ {
			if d := okAt[i].Sub(prev); d > longest.Len {
				longest = pause{d, prev.Sub(w[0])}
			}
			prev = okAt[i]
			closed = okAt[i].After(w[1])
		}
		if d := w[1].Sub(prev); !closed && d > longest.Len {
			longest = pause{d, prev.Sub(w[0])}
		}
		out = append(out, longest)
	}
	return out
}

// checkLive reads every acknowledged write back from the serving daemon
// and returns the keys whose value is missing or differs.
func checkLive(ctx context.Context, addr string, acked map[string]string) ([]string, error) {
	client := &http.Client{Timeout: kvdReqTimeout}
	defer client.CloseIdleConnections()
	var lost []string
	for _, k := range slices.Sorted(maps.Keys(acked)) {
		if err := ctx.Err(); err != nil {
			return lost, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/kv/"+k, nil)
		if err != nil {
			return lost, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return lost, fmt.Errorf("read back %s: %w", k, err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return lost, fmt.Errorf("read back %s: %w", k, err)
		}
		if resp.StatusCode != http.StatusOK || string(got) != acked[k] {
			lost = append(lost, k)
		}
	}
	return lost, nil
}

// waitHealthy probes /healthz every interval until it answers 200, and
// returns when it did; it fails once timeout has passed.
func waitHealthy(ctx context.Context, addr string, interval, timeout time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if _, _, err := kvdRequest(addr, "GET /healthz", nil); err == nil {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%s/healthz: no answer within %v: %w", addr, timeout, ctx.Err())
		case <-tick.C:
		}
	}
}
