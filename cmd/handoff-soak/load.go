package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// opKind is a kind of request, by connection and method.
type opKind int

const (
	freshPut opKind = iota
	freshGet
	keepAlivePut
	keepAliveGet
	numOps
)

var opNames = [numOps]string{"fresh_put", "fresh_get", "keepalive_put", "keepalive_get"}

// maxFailureExamples bounds the failure messages kept per run.
const maxFailureExamples = 10

// opStats are the outcomes of one kind of request.
type opStats struct {
	OK     int `json:"ok"`
	Failed int `json:"failed"`
	// Failures counts failed requests by cause.
	Failures map[string]int `json:"failures,omitempty"`
	// Retried counts requests net/http sent again on a new connection by
	// itself (keep-alive clients only); they are in OK or Failed too.
	Retried int `json:"retried,omitempty"`
	lat     []time.Duration
}

// loader runs the load and records every acknowledged write.
type loader struct {
	base           string // http://host:port
	timeout        time.Duration
	idempotentPuts bool

	mu       sync.Mutex
	ops      [numOps]opStats
	acked    map[string]string // key → value, acknowledged with 200
	keys     []string          // acked's keys, for random GETs
	examples []string          // the first failures, as text

	dials []*atomic.Int64 // per keep-alive client: TCP connections opened
	seq   atomic.Int64    // unique key numbers
	wg    sync.WaitGroup
}

func newLoader(addr string, timeout time.Duration, idempotentPuts bool) *loader {
	l := &loader{base: "http://" + addr, timeout: timeout, idempotentPuts: idempotentPuts, acked: map[string]string{}}
	for i := range l.ops {
		l.ops[i].Failures = map[string]int{}
	}
	return l
}

// start runs the workers until stop is closed: fresh workers sharing
// freshRate requests per second, and keepAlive clients of
// keepAliveRate each. A worker finishes the request it is in.
func (l *loader) start(stop <-chan struct{}, freshWorkers int, freshRate float64, keepAlive int, keepAliveRate float64) {
	if freshRate > 0 {
		per := freshRate / float64(freshWorkers)
		for w := range freshWorkers {
			c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			l.wg.Go(func() { l.worker(stop, c, false, per, w) })
		}
	}
	if keepAliveRate > 0 {
		for w := range keepAlive {
			dials := new(atomic.Int64)
			l.dials = append(l.dials, dials)
			d := &net.Dialer{Timeout: l.timeout}
			tr := &http.Transport{
				MaxIdleConnsPerHost: 1,
				MaxConnsPerHost:     1,
				DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					dials.Add(1)
					return d.DialContext(ctx, network, addr)
				},
			}
			c := &http.Client{Transport: tr}
			l.wg.Go(func() { l.worker(stop, c, true, keepAliveRate, freshWorkers+w) })
		}
	}
}

// wait waits for the workers after stop was closed.
func (l *loader) wait() { l.wg.Wait() }

// worker alternates a PUT of a new key and a GET of an acknowledged key,
// rate times a second (ticks missed while a request takes longer are
// dropped, so the rate stays bounded).
func (l *loader) worker(stop <-chan struct{}, c *http.Client, keepAlive bool, rate float64, id int) {
	defer c.CloseIdleConnections()
	t := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer t.Stop()
	rnd := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	put := true
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if key, want, ok := l.randomAcked(rnd); !put && ok {
			l.get(c, keepAlive, key, want)
		} else {
			l.put(c, keepAlive, id)
		}
		put = !put
	}
}

func (l *loader) randomAcked(rnd *rand.Rand) (key, value string, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.keys) == 0 {
		return "", "", false
	}
	key = l.keys[rnd.IntN(len(l.keys))]
	return key, l.acked[key], true
}

// newValue is a value nobody else writes: the key and random bytes.
func newValue(key string) string {
	var b [8]byte
	crand.Read(b[:])
	return "soak:" + key + ":" + hex.EncodeToString(b[:])
}

func (l *loader) put(c *http.Client, keepAlive bool, worker int) {
	kind := freshPut
	if keepAlive {
		kind = keepAlivePut
	}
	key := fmt.Sprintf("soak-w%03d-%09d", worker, l.seq.Add(1))
	value := newValue(key)
	req, err := http.NewRequest(http.MethodPut, l.base+"/kv/"+key, bytes.NewReader([]byte(value)))
	if err != nil {
		panic(err) // a bad URL is a bug here
	}
	if keepAlive && l.idempotentPuts {
		// Writing the same value to the same key again changes nothing: the
		// transport may resend it on a new connection if the server closed
		// the reused one (see net/http's Request.isReplayable).
		req.Header.Set("Idempotency-Key", key)
	}
	status, _, attempts, took, err := l.do(c, req)
	l.mu.Lock()
	defer l.mu.Unlock()
	if attempts > 1 {
		l.ops[kind].Retried++
	}
	if err == nil && status == http.StatusOK {
		l.ops[kind].OK++
		l.ops[kind].lat = append(l.ops[kind].lat, took)
		l.acked[key] = value
		l.keys = append(l.keys, key)
		return
	}
	l.failLocked(kind, key, status, err)
}

func (l *loader) get(c *http.Client, keepAlive bool, key, want string) {
	kind := freshGet
	if keepAlive {
		kind = keepAliveGet
	}
	req, err := http.NewRequest(http.MethodGet, l.base+"/kv/"+key, nil)
	if err != nil {
		panic(err)
	}
	status, body, attempts, took, err := l.do(c, req)
	l.mu.Lock()
	defer l.mu.Unlock()
	if attempts > 1 {
		l.ops[kind].Retried++
	}
	switch {
	case err == nil && status == http.StatusOK && string(body) == want:
		l.ops[kind].OK++
		l.ops[kind].lat = append(l.ops[kind].lat, took)
	case err == nil && status == http.StatusOK:
		l.failLocked(kind, key, 0, fmt.Errorf("%w: got %q, acknowledged %q", errWrongValue, truncate(string(body), 80), want))
	default:
		l.failLocked(kind, key, status, err)
	}
}

// errWrongValue: a GET answered 200 with another value than the one
// acknowledged.
var errWrongValue = errors.New("wrong value")

// do sends req and reads the whole response. attempts is how many
// connections the transport used for it (more than one: it resent the
// request by itself).
func (l *loader) do(c *http.Client, req *http.Request) (status int, body []byte, attempts int, took time.Duration, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	var got atomic.Int32
	trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { got.Add(1) }}
	req = req.WithContext(httptrace.WithClientTrace(ctx, trace))
	t0 := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, int(got.Load()), time.Since(t0), err
	}
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, body, int(got.Load()), time.Since(t0), err
}

// failLocked records a failed request; l.mu is held.
func (l *loader) failLocked(kind opKind, key string, status int, err error) {
	cause := failureCause(status, err)
	l.ops[kind].Failed++
	l.ops[kind].Failures[cause]++
	if len(l.examples) < maxFailureExamples {
		msg := fmt.Sprintf("%s %s at %s: %s", opNames[kind], key, time.Now().UTC().Format("15:04:05.000"), cause)
		if err != nil {
			msg += ": " + truncate(err.Error(), 200)
		}
		l.examples = append(l.examples, msg)
	}
}

// failureCause names why a request failed, in a few classes.
func failureCause(status int, err error) string {
	var ne net.Error
	switch {
	case err == nil:
		return fmt.Sprintf("status %d", status)
	case errors.Is(err, errWrongValue):
		return "wrong value"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "closed without a response (EOF)"
	case strings.Contains(err.Error(), "server closed idle connection"):
		return "server closed idle connection (not resent)"
	}
	return "other transport error"
}

// ackedWrites returns a copy of the acknowledged writes.
func (l *loader) ackedWrites() map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := make(map[string]string, len(l.acked))
	for k, v := range l.acked {
		m[k] = v
	}
	return m
}

// totals returns requests done and failed so far.
func (l *loader) totals() (done, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, o := range l.ops {
		done += o.OK + o.Failed
		failed += o.Failed
	}
	return done, failed
}

// loadReport is what the load saw.
type loadReport struct {
	Requests map[string]opStats `json:"requests"`
	Total    int                `json:"total"`
	Failed   int                `json:"failed"`
	// KeepAliveClients, KeepAliveDials and Reconnects: every TCP
	// connection a keep-alive client opened after its first is a
	// reconnect.
	KeepAliveClients int      `json:"keepalive_clients"`
	KeepAliveDials   int64    `json:"keepalive_dials"`
	Reconnects       int64    `json:"reconnects"`
	Retried          int      `json:"retried"`
	LatencyMS        []pctRow `json:"latency_ms"`
	FailureExamples  []string `json:"failure_examples,omitempty"`
	AckedWrites      int      `json:"acked_writes"`
}

// pctRow is one kind of request's latency percentiles.
type pctRow struct {
	Op string `json:"op"`
	dist
}

func (l *loader) report() loadReport {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := loadReport{Requests: map[string]opStats{}, KeepAliveClients: len(l.dials), AckedWrites: len(l.acked)}
	for i, o := range l.ops {
		r.Requests[opNames[i]] = o
		r.Total += o.OK + o.Failed
		r.Failed += o.Failed
		r.Retried += o.Retried
		if len(o.lat) > 0 {
			r.LatencyMS = append(r.LatencyMS, pctRow{Op: opNames[i], dist: distOf(o.lat)})
		}
	}
	for _, d := range l.dials {
		n := d.Load()
		r.KeepAliveDials += n
		if n > 1 {
			r.Reconnects += n - 1
		}
	}
	r.FailureExamples = append([]string(nil), l.examples...)
	return r
}

// dist is a distribution of durations in milliseconds.
type dist struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func distOf(ds []time.Duration) dist {
	if len(ds) == 0 {
		return dist{}
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(p float64) float64 {
		i := int(p*float64(len(s))+0.5) - 1
		i = max(0, min(i, len(s)-1))
		return msOf(s[i])
	}
	return dist{N: len(s), P50: at(0.50), P99: at(0.99), Max: msOf(s[len(s)-1])}
}

func msOf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
