package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// failStatus: a keep-alive request answered with a status other than 2xx.
const failStatus = "status"

var kaFailKinds = append(append([]string(nil), failKinds...), failStatus)

// Why a keep-alive connection had to be re-dialed.
const (
	causeClosed      = "closed"       // the server closed it (EOF before any byte of the answer)
	causeReset       = "reset"        // the server reset it (ECONNRESET, EPIPE)
	causeCloseHeader = "close-header" // the server answered "Connection: close"
	causeError       = "after-error"  // the client gave it up after a timeout or a bad answer
)

var kaCauses = []string{causeClosed, causeReset, causeCloseHeader, causeError}

// kaRequest is the request of the keep-alive load.
const kaRequest = "GET " + kaPath + " HTTP/1.1\r\nHost: handoff-bench\r\nUser-Agent: handoff-bench\r\n\r\n"

// kaConn is one persistent HTTP/1.1 connection, written on net.Conn so
// that every re-dial is seen: no transport reconnects behind its back. A
// request on a reused connection that the server closed or reset before
// any byte of the answer is sent once more on a new connection (as
// net/http's Transport does for an idempotent request); every dial after
// the first is counted as a reconnect, with its cause.
type kaConn struct {
	addr    string
	timeout time.Duration // bounds each request, dial included

	c       net.Conn // nil: the next request dials
	cr      countingReader
	br      *bufio.Reader
	port    int    // local port of c
	pending string // why c was dropped: the cause of the next dial

	dials      int            // successful dials
	reconnects int            // successful dials after the first
	causes     map[string]int // of the reconnects
}

func newKAConn(addr string, timeout time.Duration) *kaConn {
	return &kaConn{addr: addr, timeout: timeout, causes: map[string]int{}}
}

// countingReader counts the bytes read from the connection, to tell a
// connection closed before its answer from one closed in the middle.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// kaReply is one request as the client saw it.
type kaReply struct {
	start, end time.Time
	err        error  // nil: answered 2xx
	kind       string // failure kind (failKinds, failStatus)
	redialed   bool   // this request made a reconnect
	port       int    // local port it was answered on
}

// dial opens a new connection; it counts a reconnect when one was open before.
func (k *kaConn) dial(deadline time.Time) error {
	d := net.Dialer{Deadline: deadline}
	c, err := d.Dial("tcp", k.addr)
	if err != nil {
		return err
	}
	k.c = c
	k.cr = countingReader{r: c}
	k.br = bufio.NewReaderSize(&k.cr, 4<<10)
	k.port = c.LocalAddr().(*net.TCPAddr).Port
	k.dials++
	if k.dials > 1 {
		k.reconnects++
		k.causes[k.pending]++
	}
	k.pending = ""
	return nil
}

// drop closes the connection; the next request dials, for cause.
func (k *kaConn) drop(cause string) {
	if k.c != nil {
		k.c.Close()
		k.c, k.br = nil, nil
	}
	k.pending = cause
}

// close closes the connection for good.
func (k *kaConn) close() { k.drop("") }

// do sends one request and reads its answer, dialing first if the
// connection is not open, and once more if the server closed a reused one
// before answering.
func (k *kaConn) do() kaReply {
	r := kaReply{start: time.Now()}
	deadline := r.start.Add(k.timeout)
	for attempt := 0; ; attempt++ {
		reused := k.c != nil
		if !reused {
			if err := k.dial(deadline); err != nil {
				r.err, r.kind = err, classify(err)
				break
			}
			r.redialed = r.redialed || k.dials > 1
		}
		before := k.cr.n
		status, closeAfter, err := k.roundTrip(deadline)
		if err == nil {
			r.port = k.port
			if closeAfter {
				k.drop(causeCloseHeader)
			}
			if status < 200 || status > 299 {
				r.err, r.kind = fmt.Errorf("status %d", status), failStatus
			}
			break
		}
		cause, byPeer := dropCause(err)
		k.drop(cause)
		if reused && byPeer && k.cr.n == before && attempt == 0 {
			continue // closed while idle: a new connection, the same request
		}
		r.err, r.kind = err, classify(err)
		break
	}
	r.end = time.Now()
	return r
}

// roundTrip writes the request and reads the whole answer.
func (k *kaConn) roundTrip(deadline time.Time) (status int, closeAfter bool, err error) {
	if k.br.Buffered() > 0 {
		return 0, false, errors.New("bytes the server sent unasked")
	}
	if err := k.c.SetDeadline(deadline); err != nil {
		return 0, false, err
	}
	if _, err := io.WriteString(k.c, kaRequest); err != nil {
		return 0, false, err
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return 0, false, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, false, err
	}
	return resp.StatusCode, resp.Close, nil
}

// dropCause says why a failed connection is dropped, and whether the
// server closed or reset it.
func dropCause(err error) (string, bool) {
	switch {
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return causeReset, true
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return causeClosed, true
	}
	return causeError, false
}

// kaLoad is the keep-alive load: a fixed pool of persistent connections,
// each sending its share of the rate in a loop.
type kaLoad struct {
	timeout time.Duration // per request

	mu         sync.Mutex
	ok         int64
	failed     map[string]int64
	examples   []string
	lat        []time.Duration // of successful requests
	reconnects int64
	causes     map[string]int64
	// pauses: for each successful request, from the start of the first
	// request on its connection since the previous success to its
	// answer: what that client waited for an answer.
	pauses []interval
}

// interval is a stretch of time.
type interval struct{ from, to time.Time }

func newKALoad(timeout time.Duration) *kaLoad {
	return &kaLoad{timeout: timeout, failed: map[string]int64{}, causes: map[string]int64{}}
}

// run drives clients persistent connections to addr at rate requests per
// second in all until ctx ends or each has sent maxPerClient requests; it
// returns once every connection has finished its request and is closed.
func (l *kaLoad) run(ctx context.Context, addr string, clients, rate, maxPerClient int) {
	period := time.Duration(float64(time.Second) * float64(clients) / float64(rate))
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			start := time.NewTimer(period * time.Duration(c) / time.Duration(clients))
			select {
			case <-ctx.Done():
				start.Stop()
				return
			case <-start.C:
			}
			kc := newKAConn(addr, l.timeout)
			defer func() {
				kc.close()
				l.mu.Lock()
				l.reconnects += int64(kc.reconnects)
				for k, n := range kc.causes {
					l.causes[k] += int64(n)
				}
				l.mu.Unlock()
			}()
			tick := time.NewTicker(period)
			defer tick.Stop()
			var waiting time.Time // start of the first request since the last success
			var last time.Time
			defer func() {
				if !waiting.IsZero() { // no success since: the wait lasted to the end
					l.mu.Lock()
					l.pauses = append(l.pauses, interval{waiting, last})
					l.mu.Unlock()
				}
			}()
			for range maxPerClient {
				r := kc.do()
				if waiting.IsZero() {
					waiting = r.start
				}
				last = r.end
				l.record(r, waiting)
				if r.err == nil {
					waiting = time.Time{}
				}
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	wg.Wait()
}

func (l *kaLoad) record(r kaReply, waiting time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.err == nil {
		l.ok++
		l.lat = append(l.lat, r.end.Sub(r.start))
		l.pauses = append(l.pauses, interval{waiting, r.end})
		return
	}
	l.failed[r.kind]++
	if len(l.examples) < 5 {
		l.examples = append(l.examples, r.err.Error())
	}
}

// gaps returns, for each op, the longest pause that overlaps it: the
// longest any one client waited for an answer around that handoff or
// restart.
func (l *kaLoad) gaps(samples []opSample) []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]time.Duration, 0, len(samples))
	for _, s := range samples {
		var longest time.Duration
		for _, p := range l.pauses {
			if p.from.After(s.end) || p.to.Before(s.start) {
				continue
			}
			longest = max(longest, p.to.Sub(p.from))
		}
		out = append(out, longest)
	}
	return out
}
