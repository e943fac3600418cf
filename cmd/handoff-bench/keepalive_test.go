package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The short keep-alive run: 4 pool connections, 3 handoffs and restarts
// each, then 0 and 10 idle connections; run once for the tests below.
const (
	kaTestPool     = 4
	kaTestHandoffs = 3
	kaTestIdle     = 10
)

var kaShort struct {
	once sync.Once
	res  kaResult
	text string // the same result, printed
	err  error
	log  string
}

func keepAliveShort(t *testing.T) *kaResult {
	t.Helper()
	if testing.Short() {
		t.Skip("starts processes and runs load")
	}
	// Under the race detector a process sleeps 1 s at exit by default: the
	// baselines' restarts would last that long.
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	kaShort.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		var out, errb bytes.Buffer
		kaShort.err = run(ctx, []string{"-keepalive", "4", "-handoffs", "3", "-rate", "200", "-every", "50ms", "-idle-conns", "10", "-json"}, &out, &errb)
		kaShort.log = errb.String()
		if kaShort.err != nil {
			return
		}
		if kaShort.err = json.Unmarshal(out.Bytes(), &kaShort.res); kaShort.err != nil {
			kaShort.log += "\n" + out.String()
			return
		}
		var text bytes.Buffer
		kaShort.res.print(&text)
		kaShort.text = text.String()
	})
	if kaShort.err != nil {
		t.Fatalf("bench -keepalive: %v\n%s", kaShort.err, kaShort.log)
	}
	return &kaShort.res
}

// TestKeepAliveShort checks the report's shape and what holds for the
// baselines on any machine, nothing about time.
func TestKeepAliveShort(t *testing.T) {
	res := keepAliveShort(t)
	t.Logf("\n%s", kaShort.text)
	if res.Pool != kaTestPool || res.Handoffs != kaTestHandoffs || res.NoFile == 0 {
		t.Errorf("header: pool %d, handoffs %d, RLIMIT_NOFILE %d", res.Pool, res.Handoffs, res.NoFile)
	}
	var modes []string
	for _, m := range res.Modes {
		modes = append(modes, m.Mode)
		if m.Restarts != kaTestHandoffs || m.Committed != kaTestHandoffs {
			t.Errorf("%s: %d/%d done, want %d/%d: %v", m.Mode, m.Committed, m.Restarts, kaTestHandoffs, kaTestHandoffs, m.AbortReasons)
		}
		if m.RequestsOK == 0 || m.Requests != m.RequestsOK+m.RequestsFailed {
			t.Errorf("%s: requests %d = %d ok + %d failed", m.Mode, m.Requests, m.RequestsOK, m.RequestsFailed)
		}
		var failed, causes int64
		for _, n := range m.Failures {
			failed += n
		}
		for _, n := range m.ReconnectCauses {
			causes += n
		}
		if failed != m.RequestsFailed || causes != m.Reconnects {
			t.Errorf("%s: failures %v do not add up to %d, or causes %v to %d", m.Mode, m.Failures, m.RequestsFailed, m.ReconnectCauses, m.Reconnects)
		}
		if m.Gap.N != kaTestHandoffs || m.Gap.Median <= 0 {
			t.Errorf("%s: gap %+v, want one per handoff or restart", m.Mode, m.Gap)
		}
	}
	if !slices.Equal(modes, []string{modeHandoff, modeRestart, modeReusePort}) {
		t.Fatalf("modes %v", modes)
	}
	if h := res.mode(modeHandoff); h.AcceptGap == nil || h.AcceptGap.N != kaTestHandoffs || h.LibraryOverhead == nil || h.PassedConns == nil {
		t.Errorf("handoff: accept gap %+v, library %+v, passed %+v", h.AcceptGap, h.LibraryOverhead, h.PassedConns)
	}
	// Both baselines close every keep-alive connection at each restart:
	// the pool re-dialed (after the overlap, where a server always
	// listens) or failed (after stop-then-start, whose next restart may
	// come before the new server is reached on a slow machine).
	if m := res.mode(modeReusePort); m.Reconnects == 0 {
		t.Errorf("reuseport: no reconnect in %d restarts of a server that closes its connections", kaTestHandoffs)
	}
	if m := res.mode(modeRestart); m.Reconnects+m.RequestsFailed == 0 {
		t.Errorf("restart: no reconnect and no failed request in %d restarts", kaTestHandoffs)
	}
	var idle []int
	for _, ir := range res.Idle {
		idle = append(idle, ir.Idle)
		if ir.Skipped != "" {
			t.Errorf("%d idle: skipped: %s", ir.Idle, ir.Skipped)
			continue
		}
		if ir.Restarts != kaTestHandoffs || ir.AcceptGap == nil || ir.AcceptGap.N != ir.Committed || ir.Probes.Requests == 0 || ir.Probes.Gap.N != kaTestHandoffs {
			t.Errorf("%d idle: %+v", ir.Idle, ir)
		}
		if ir.OpenFailed != 0 || ir.Checked != ir.Idle || ir.SameConn+ir.Redialed > ir.Checked {
			t.Errorf("%d idle: opened %d, checked %d, same connection %d, re-dialed %d", ir.Idle, ir.Idle-ir.OpenFailed, ir.Checked, ir.SameConn, ir.Redialed)
		}
	}
	if !slices.Equal(idle, []int{0, kaTestIdle}) {
		t.Errorf("idle rows %v, want [0 %d]", idle, kaTestIdle)
	}
	if r := res.Idle[0]; r.AcceptGapRatio != 1 || r.LibraryRatio != 1 {
		t.Errorf("ratios at 0 idle: %v, %v", r.AcceptGapRatio, r.LibraryRatio)
	}
	for _, want := range []string{"strategy", "reconnects", "gap p99", "idle answered on the same connection", "RLIMIT_NOFILE"} {
		if !strings.Contains(kaShort.text, want) {
			t.Errorf("printed report has no %q", want)
		}
	}
}

// TestKeepAliveHandoffKeepsConnections: with connection passing
// (httphandoff.Server is a handoff.ConnPasser), a handoff closes no
// keep-alive connection: the pool never re-dials, every connection is
// passed at every handoff, and every idle one answers afterwards on the
// same connection.
func TestKeepAliveHandoffKeepsConnections(t *testing.T) {
	res := keepAliveShort(t)
	h := res.mode(modeHandoff)
	if h.Committed != kaTestHandoffs {
		t.Fatalf("handoff: %d of %d committed: %v", h.Committed, kaTestHandoffs, h.AbortReasons)
	}
	if h.Reconnects != 0 || h.RequestsFailed != 0 {
		t.Errorf("handoff: %d reconnects %v and %d failed requests %v (%q), want 0", h.Reconnects, h.ReconnectCauses, h.RequestsFailed, h.Failures, h.FailureExamples)
	}
	if h.PassedConns == nil || h.PassedConns.Min != kaTestPool {
		t.Errorf("handoff: passed %+v per handoff, want all %d", h.PassedConns, kaTestPool)
	}
	for _, ir := range res.Idle {
		if ir.Committed != kaTestHandoffs {
			t.Errorf("%d idle: %d of %d committed: %v", ir.Idle, ir.Committed, kaTestHandoffs, ir.AbortReasons)
		}
		if ir.Probes.Reconnects != 0 || ir.Probes.Failed != 0 {
			t.Errorf("%d idle: probes re-dialed %d times, %d failed (%q)", ir.Idle, ir.Probes.Reconnects, ir.Probes.Failed, ir.Probes.FailureExamples)
		}
		if ir.PassedConns == nil || ir.PassedConns.Min != ir.Idle+kaTestPool {
			t.Errorf("%d idle: passed %+v per handoff, want all %d", ir.Idle, ir.PassedConns, ir.Idle+kaTestPool)
		}
		if ir.SameConn != ir.Idle {
			t.Errorf("%d idle: %d answered on the same connection, %d re-dialed, %d not answered (%q)", ir.Idle, ir.SameConn, ir.Redialed, ir.CheckFailed, ir.CheckErrors)
		}
	}
}

// tinyServer answers each request on a connection with 200 "pong" and then
// does what after says with the connection: nil keeps it.
func tinyServer(t *testing.T, after func(net.Conn)) (string, <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{}, 16) // one per connection the server ended
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\npong\n"); err != nil {
						return
					}
					if after != nil {
						after(c)
						done <- struct{}{}
						return
					}
				}
			})
		}
	})
	return ln.Addr().String(), done
}

// TestKAConnCountsReconnects: the client counts a re-dial when the server
// closed or reset the connection, and none while it keeps it.
func TestKAConnCountsReconnects(t *testing.T) {
	for _, tc := range []struct {
		name       string
		after      func(net.Conn)
		reconnects int
		causes     []string // any of them
	}{
		{name: "keeps", after: nil, reconnects: 0},
		{name: "closes", after: func(c net.Conn) { c.Close() }, reconnects: 1, causes: []string{causeClosed, causeReset}},
		{name: "resets", after: func(c net.Conn) { c.(*net.TCPConn).SetLinger(0); c.Close() }, reconnects: 1, causes: []string{causeReset}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, ended := tinyServer(t, tc.after)
			kc := newKAConn(addr, 5*time.Second)
			defer kc.close()
			first := kc.do()
			if first.err != nil || first.redialed {
				t.Fatalf("first request: %v, re-dialed %v", first.err, first.redialed)
			}
			if tc.after != nil {
				<-ended // the server closed it, and the client does not know yet
			}
			second := kc.do()
			if second.err != nil {
				t.Fatalf("second request: %v (%s)", second.err, second.kind)
			}
			if kc.reconnects != tc.reconnects || second.redialed != (tc.reconnects > 0) {
				t.Errorf("%d reconnects (second request re-dialed: %v), want %d", kc.reconnects, second.redialed, tc.reconnects)
			}
			if same := second.port == first.port; same != (tc.reconnects == 0) {
				t.Errorf("local ports %d then %d", first.port, second.port)
			}
			for cause, n := range kc.causes {
				if n > 0 && !slices.Contains(tc.causes, cause) {
					t.Errorf("cause %q ×%d, want one of %v", cause, n, tc.causes)
				}
			}
		})
	}
}

// TestKAConnCloseHeader: an answer with "Connection: close" makes the next
// request re-dial.
func TestKAConnCloseHeader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "pong\n")
	})}
	go srv.Serve(ln)
	defer srv.Close()
	kc := newKAConn(ln.Addr().String(), 5*time.Second)
	defer kc.close()
	for i := range 3 {
		if r := kc.do(); r.err != nil {
			t.Fatalf("request %d: %v", i, r.err)
		}
	}
	if kc.reconnects != 2 || kc.causes[causeCloseHeader] != 2 {
		t.Errorf("%d reconnects %v, want 2 for Connection: close", kc.reconnects, kc.causes)
	}
}

// TestKAConnFailsWhenNobodyListens: a refused dial fails the request; the
// reconnect counts only once a connection is made again.
func TestKAConnFailsWhenNobodyListens(t *testing.T) {
	addr, ended := tinyServer(t, func(c net.Conn) { c.Close() })
	kc := newKAConn(addr, 5*time.Second)
	defer kc.close()
	if r := kc.do(); r.err != nil {
		t.Fatal(r.err)
	}
	<-ended
	// A port nobody listens on: the closed connection's retry is refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	kc.addr = ln.Addr().String()
	ln.Close()
	if r := kc.do(); r.err == nil || r.kind != failRefused {
		t.Fatalf("request to nobody: %v (%s), want refused", r.err, r.kind)
	}
	if kc.reconnects != 0 {
		t.Errorf("%d reconnects without a connection made", kc.reconnects)
	}
	kc.addr = addr
	if r := kc.do(); r.err != nil || !r.redialed || kc.reconnects != 1 {
		t.Errorf("request after: %v, re-dialed %v, %d reconnects, want 1", r.err, r.redialed, kc.reconnects)
	}
}

func TestKALoadGaps(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	l := newKALoad(time.Second)
	l.pauses = []interval{{at(0), at(1)}, {at(9), at(14)}, {at(12), at(13)}, {at(30), at(31)}, {at(40), at(52)}}
	got := l.gaps([]opSample{{start: at(10), end: at(20)}, {start: at(25), end: at(35)}, {start: at(50), end: at(60)}, {start: at(70), end: at(80)}})
	want := []time.Duration{5 * time.Millisecond, time.Millisecond, 12 * time.Millisecond, 0}
	if !slices.Equal(got, want) {
		t.Errorf("gaps %v, want %v", got, want)
	}
}

func TestKeepAliveFlags(t *testing.T) {
	o, err := parseFlags([]string{"-keepalive", "8"}, &bytes.Buffer{})
	if err != nil || o.handoffs != kaDefaultHandoffs || !slices.Equal(o.idleConns, []int{0, 100, 1000, 10000}) {
		t.Errorf("defaults: %+v, %v", o, err)
	}
	o, err = parseFlags([]string{"-keepalive", "2", "-idle-conns", "5k,7", "-handoffs", "4"}, &bytes.Buffer{})
	if err != nil || o.handoffs != 4 || !slices.Equal(o.idleConns, []int{0, 7, 5000}) {
		t.Errorf("-idle-conns 5k,7: %+v, %v", o, err)
	}
	for _, args := range [][]string{
		{"-keepalive", "-1"}, {"-keepalive", "2000"}, {"-keepalive", "4", "-clients", "2"}, {"-keepalive", "4", "-idle", "1s"},
		{"-keepalive", "4", "-kvd"}, {"-keepalive", "4", "-sizes", "1k"}, {"-idle-conns", "10"}, {"-kvd", "-idle-conns", "10"},
		{"-idle-wait", "1s"}, {"-keepalive", "4", "-idle-wait", "-1s"}, {"-keepalive", "4", "-idle-conns", "x"}, {"-keepalive", "4", "-idle-conns", "-3"}, {"-keepalive", "4", "-idle-conns", "2000k"},
	} {
		if _, err := parseFlags(args, &bytes.Buffer{}); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
