package main

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// Kinds of failed requests.
const (
	failRefused = "refused" // connect refused: nobody listened
	failReset   = "reset"   // connection reset, e.g. dropped from a closed accept queue
	failTimeout = "timeout" // no answer within connTimeout
	failBad     = "bad"     // closed early or answered something else
	failOther   = "other"
)

var failKinds = []string{failRefused, failReset, failTimeout, failBad, failOther}

// load is the client side: clients goroutines, each doing
// connect → request → reply → close at its share of the rate.
type load struct {
	mu       sync.Mutex
	ok       int64
	failed   map[string]int64
	examples []string        // the first few failures, for the log
	lat      []time.Duration // of successful requests
}

func newLoad() *load { return &load{failed: map[string]int64{}} }

// run sends requests to addr until ctx ends or each client has sent
// maxPerClient; it returns when every client has finished its request.
func (l *load) run(ctx context.Context, addr string, clients, rate, maxPerClient int) {
	period := time.Duration(float64(time.Second) * float64(clients) / float64(rate))
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Spread the clients over the period.
			start := time.NewTimer(period * time.Duration(c) / time.Duration(clients))
			select {
			case <-ctx.Done():
				start.Stop()
				return
			case <-start.C:
			}
			tick := time.NewTicker(period)
			defer tick.Stop()
			for range maxPerClient {
				lat, kind, err := doRequest(addr)
				l.record(lat, kind, err)
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	wg.Wait()
}

func (l *load) record(lat time.Duration, kind string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		l.ok++
		l.lat = append(l.lat, lat)
		return
	}
	l.failed[kind]++
	if len(l.examples) < 5 {
		l.examples = append(l.examples, err.Error())
	}
}

// doRequest makes one request on a fresh connection. It does not use the
// load's context: a request in flight when the load stops completes.
func doRequest(addr string) (time.Duration, string, error) {
	start := time.Now()
	deadline := start.Add(connTimeout)
	d := net.Dialer{Deadline: deadline}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return 0, classify(err), err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	if _, err := io.WriteString(c, request); err != nil {
		return 0, classify(err), err
	}
	var b [len(reply)]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, classify(err), err
	}
	if string(b[:]) != reply {
		return 0, failBad, errors.New("bad reply " + string(b[:]))
	}
	return time.Since(start), "", nil
}

func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return failRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return failReset
	case errors.As(err, &ne) && ne.Timeout():
		return failTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return failBad
	}
	return failOther
}
