package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
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
	err     string
}

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
// Every request is bounded by the client timeout; the loop by ctx.
func (l *loader) run(ctx context.Context, workers, rate int) {
	perWorker := time.Duration(float64(time.Second) * float64(workers) / float64(rate))
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := client(w%2 == 1)
			defer c.CloseIdleConnections()
			tick := time.NewTicker(perWorker)
			defer tick.Stop()
			var mine []string
			for n := 0; ; n++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if n%2 == 0 || len(mine) == 0 {
					key := "w" + strconv.Itoa(w) + "-" + strconv.Itoa(n)
					val := strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + key
					if l.put(c, key, val) {
						mine = append(mine, key)
					}
				} else {
					l.getCheck(c, mine[(n/2)%len(mine)])
				}
			}
		}()
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

func (l *loader) put(c *http.Client, key, val string) bool {
	start := time.Now()
	req, err := http.NewRequest(http.MethodPut, "http://"+l.addr+"/kv/"+key, bytes.NewReader([]byte(val)))
	if err != nil {
		l.record(sample{start: start.Sub(l.began), write: true, err: err.Error()})
		return false
	}
	// A PUT of a whole value is idempotent: the header lets the client
	// retry it on a keep-alive connection the server closed while idle.
	req.Header.Set("Idempotency-Key", key)
	resp, err := c.Do(req)
	s := sample{start: start.Sub(l.began), latency: time.Since(start), write: true}
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
	got, status, err := get(c, l.addr, key)
	s := sample{start: start.Sub(l.began), latency: time.Since(start)}
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

func get(c *http.Client, addr, key string) (string, int, error) {
	resp, err := c.Get("http://" + addr + "/kv/" + key)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode, err
}

// verify reads every acknowledged write back; it returns how many were
// checked and the keys that were lost or changed.
func (l *loader) verify(ctx context.Context) (checked int, lost []string, err error) {
	c := client(true)
	defer c.CloseIdleConnections()
	l.mu.Lock()
	acked := make(map[string]string, len(l.acked))
	for k, v := range l.acked {
		acked[k] = v
	}
	l.mu.Unlock()
	for k, want := range acked {
		if ctx.Err() != nil {
			return checked, lost, ctx.Err()
		}
		got, status, err := get(c, l.addr, k)
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
