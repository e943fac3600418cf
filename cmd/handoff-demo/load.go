package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// sample is one request as the client saw it.
type sample struct {
	start   time.Duration // since the load began
	latency time.Duration
	ok      bool
	write   bool
	probe   bool // sent by the probe of a handoff, on a fresh connection
	retried bool // the HTTP client sent it again on another connection
	err     string
}

// Bounds of the probe that runs through each handoff.
const (
	probeConns    = 2               // concurrent probe requests
	probeMax      = 300             // requests per handoff, at most
	probeDuration = 2 * time.Minute // and for at most this long
)

// loader runs the workers. Half of them open a fresh connection for every
// request (the case a restart breaks), half reuse keep-alive connections.
type loader struct {
	addr    string
	began   time.Time
	okN     atomic.Int64
	failN   atomic.Int64
	mu      sync.Mutex
	samples []sample
	acked   map[string]string // key → value of every acknowledged write
}

func newLoader(addr string) *loader {
	return &loader{addr: addr, acked: map[string]string{}, began: time.Now()}
}

func client(keepAlive bool) *http.Client {
	tr := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 4, ResponseHeaderTimeout: 60 * time.Second}
	return &http.Client{Transport: tr, Timeout: 90 * time.Second}
}

// run issues requests at rate per second across workers until ctx ends.
// Each worker starts at a random phase and waits a jittered interval
// (half to one and a half times the mean) between requests, so requests
// spread over time instead of leaving in bursts that a short accept gap
// falls between. Every request is bounded by the client timeout; the loop
// by ctx.
func (l *loader) run(ctx context.Context, workers, rate int) {
	mean := time.Duration(float64(time.Second) * float64(workers) / float64(rate))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			c := client(w%2 == 1)
			defer c.CloseIdleConnections()
			wait := time.NewTimer(rand.N(mean))
			defer wait.Stop()
			var mine []string
			for n := 0; ; n++ {
				select {
				case <-ctx.Done():
					return
				case <-wait.C:
				}
				wait.Reset(mean/2 + rand.N(mean))
				if n%2 == 0 || len(mine) == 0 {
					key := "w" + strconv.Itoa(w) + "-" + strconv.Itoa(n)
					if l.put(c, key, false, nil) {
						mine = append(mine, key)
					}
				} else {
					l.getCheck(c, mine[(n/2)%len(mine)])
				}
			}
		})
	}
	wg.Wait()
}

// probe writes over fresh connections, probeConns at a time and back to
// back, until stop is closed (the handoff's outcome arrived) or its bounds
// are reached, so that requests are in flight throughout handoff number
// h, accept gap included, whatever the load's timing. It closes started
// once its first request has begun: trigger the handoff after that, and
// at least one request overlaps it.
func (l *loader) probe(h int, started chan<- struct{}, stop <-chan struct{}) {
	c := client(false)
	defer c.CloseIdleConnections()
	end := time.Now().Add(probeDuration)
	var once sync.Once
	begun := func() { once.Do(func() { close(started) }) }
	defer begun()
	var sent atomic.Int64
	var wg sync.WaitGroup
	for range probeConns {
		wg.Go(func() {
			for first := true; ; first = false {
				if !first {
					select {
					case <-stop:
						return
					default:
					}
				}
				n := sent.Add(1)
				if n > probeMax || time.Now().After(end) {
					return
				}
				l.put(c, "probe"+strconv.Itoa(h)+"-"+strconv.FormatInt(n, 10), true, begun)
			}
		})
	}
	wg.Wait()
}

func (l *loader) record(s sample) {
	if s.ok {
		l.okN.Add(1)
	} else {
		l.failN.Add(1)
	}
	l.mu.Lock()
	l.samples = append(l.samples, s)
	l.mu.Unlock()
}

// do sends req and reports whether the client sent it more than once: Go's
// transport resends a request that is idempotent (a GET, or one with an
// Idempotency-Key header) on a new connection when a reused keep-alive
// connection turns out closed by the server, without telling the caller.
func do(c *http.Client, req *http.Request) (*http.Response, bool, error) {
	var conns atomic.Int32
	trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { conns.Add(1) }}
	resp, err := c.Do(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	return resp, conns.Load() > 1, err
}

// put writes a value under key and records the sample. begun, if not nil,
// is called once the request's start time was taken.
func (l *loader) put(c *http.Client, key string, probe bool, begun func()) bool {
	val := strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + key
	start := time.Now()
	s := sample{start: start.Sub(l.began), write: true, probe: probe}
	if begun != nil {
		begun()
	}
	req, err := http.NewRequest(http.MethodPut, "http://"+l.addr+"/kv/"+key, bytes.NewReader([]byte(val)))
	if err != nil {
		s.err = err.Error()
		l.record(s)
		return false
	}
	// A PUT of a whole value is idempotent: the header lets the client
	// retry it on a keep-alive connection the server closed while idle.
	req.Header.Set("Idempotency-Key", key)
	resp, retried, err := do(c, req)
	s.latency, s.retried = time.Since(start), retried
	if err != nil {
		s.err = err.Error()
		l.record(s)
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		s.err = "PUT: " + resp.Status
		l.record(s)
		return false
	}
	s.ok = true
	l.record(s)
	l.mu.Lock()
	l.acked[key] = val
	l.mu.Unlock()
	return true
}

// getCheck reads a key this worker wrote and checks the value.
func (l *loader) getCheck(c *http.Client, key string) {
	start := time.Now()
	got, status, retried, err := get(c, l.addr, key)
	s := sample{start: start.Sub(l.began), latency: time.Since(start), retried: retried}
	l.mu.Lock()
	want := l.acked[key]
	l.mu.Unlock()
	switch {
	case err != nil:
		s.err = err.Error()
	case status != http.StatusOK:
		s.err = fmt.Sprintf("GET %s: status %d", key, status)
	case got != want:
		s.err = fmt.Sprintf("GET %s: stale value %q, want %q", key, got, want)
	default:
		s.ok = true
	}
	l.record(s)
}

func get(c *http.Client, addr, key string) (val string, status int, retried bool, err error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/kv/"+key, nil)
	if err != nil {
		return "", 0, false, err
	}
	resp, retried, err := do(c, req)
	if err != nil {
		return "", 0, retried, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode, retried, err
}

// ackedWrites returns a copy of every acknowledged write.
func (l *loader) ackedWrites() map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	acked := make(map[string]string, len(l.acked))
	for k, v := range l.acked {
		acked[k] = v
	}
	return acked
}

// verify reads every acknowledged write back from the live daemon; it
// returns how many were checked and the keys that were lost or changed.
func (l *loader) verify(ctx context.Context) (checked int, lost []string, err error) {
	c := client(true)
	defer c.CloseIdleConnections()
	for k, want := range l.ackedWrites() {
		if ctx.Err() != nil {
			return checked, lost, ctx.Err()
		}
		got, status, _, err := get(c, l.addr, k)
		if err != nil {
			return checked, lost, fmt.Errorf("read back %s: %w", k, err)
		}
		checked++
		if status != http.StatusOK || got != want {
			lost = append(lost, k)
		}
	}
	return checked, lost, nil
}
