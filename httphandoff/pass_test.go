package httphandoff

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestPassIdleKeepAliveConnection: a keep-alive connection idle after a
// response is stopped by Drain, handed over by PassConns and served by a
// second Server on the same listener (AdoptConns): the client's next
// request is answered on the same TCP connection, with no reconnect.
func TestPassIdleKeepAliveConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serve := func(name string) *Server {
		s, err := New(Config{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, name)
		})}, ln)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	first := serve("first")
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", ln.Addr().String(), waitBound)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func() string {
		t.Helper()
		c.SetDeadline(time.Now().Add(waitBound))
		if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response on the same connection: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := get(); got != "first" {
		t.Fatalf("first answer %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	if _, err := first.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	passed := first.PassConns(10)
	if len(passed) != 1 || passed[0].Listener != ln.Addr().String() {
		t.Fatalf("PassConns = %+v, want the one idle connection on %s", passed, ln.Addr())
	}
	second := serve("second")
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	second.AdoptConns(passed)
	if got := get(); got != "second" {
		t.Fatalf("answer after the pass %q, want it from the second server", got)
	}
	if err := first.Shutdown(ctx); err != nil {
		t.Errorf("first Shutdown: %v", err)
	}
	// The first server's shutdown must not have cut the passed connection.
	if got := get(); got != "second" {
		t.Fatalf("answer after the first server shut down %q", got)
	}
	second.Shutdown(ctx)
}

// TestAdoptedConnectionWaitsAsIdle: net/http takes an adopted connection
// for a new one, but it was idle between requests: its header and write
// deadlines start with its next request, not at the adoption, and until
// then it waits for as long as an idle keep-alive connection does
// (IdleTimeout), after which the server closes it.
func TestAdoptedConnectionWaitsAsIdle(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const (
		headerTimeout = 50 * time.Millisecond
		idleTimeout   = 400 * time.Millisecond
	)
	serve := func(name string) *Server {
		s, err := New(Config{NewServer: func() *http.Server {
			return &http.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					io.WriteString(w, name)
				}),
				ReadHeaderTimeout: headerTimeout,
				WriteTimeout:      headerTimeout,
				IdleTimeout:       idleTimeout,
			}
		}}, ln)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	first := serve("first")
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", ln.Addr().String(), waitBound)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	get := func() (string, error) {
		c.SetDeadline(time.Now().Add(waitBound))
		if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
			return "", err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	if got, err := get(); got != "first" {
		t.Fatalf("first answer %q (%v)", got, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	if _, err := first.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	passed := first.PassConns(10)
	if len(passed) != 1 {
		t.Fatalf("PassConns = %+v, want the one idle connection", passed)
	}
	defer first.Shutdown(ctx)
	second := serve("second")
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	defer second.Shutdown(ctx)
	adopted := time.Now()
	second.AdoptConns(passed)
	// The client stays idle for several header timeouts, well inside the
	// idle timeout: what is measured here is an idle client.
	time.Sleep(6 * headerTimeout)
	if got, err := get(); got != "second" {
		t.Fatalf("answer %v after the adoption, idle past the header timeout: %q (%v)", time.Since(adopted), got, err)
	}
	// Idle again, now as any keep-alive connection of the second server:
	// it closes the connection after its idle timeout.
	c.SetReadDeadline(time.Now().Add(waitBound))
	start := time.Now()
	if n, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: read %q, %v; want the server's close", n, err)
	}
	if d := time.Since(start); d < idleTimeout/2 {
		t.Fatalf("an idle connection closed after %v, before its idle timeout %v", d, idleTimeout)
	}
}

// TestRequestDuringHandoffWaitsForSuccessor: a request sent on an idle
// connection after Drain stopped it is not read by the draining server:
// its bytes wait in the socket and the server that adopts the connection
// answers it.
func TestRequestDuringHandoffWaitsForSuccessor(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serve := func(name string) *Server {
		s, err := New(Config{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, name+" "+r.URL.Path)
		})}, ln)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	first := serve("first")
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 20)
	readers := make([]*bufio.Reader, len(conns))
	read := func(i int) string {
		t.Helper()
		conns[i].SetDeadline(time.Now().Add(waitBound))
		resp, err := http.ReadResponse(readers[i], nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	for i := range conns {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), waitBound)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i], readers[i] = c, bufio.NewReader(c)
		fmt.Fprintf(c, "GET /before HTTP/1.1\r\nHost: test\r\n\r\n")
		if got := read(i); got != "first /before" {
			t.Fatalf("connection %d: %q", i, got)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	if _, err := first.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	// Every connection sends its next request while it is stopped.
	for i, c := range conns {
		if _, err := fmt.Fprintf(c, "GET /during/%d HTTP/1.1\r\nHost: test\r\n\r\n", i); err != nil {
			t.Fatal(err)
		}
	}
	passed := first.PassConns(len(conns))
	if len(passed) != len(conns) {
		t.Fatalf("PassConns = %d, want %d", len(passed), len(conns))
	}
	second := serve("second")
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	defer second.Shutdown(ctx)
	second.AdoptConns(passed)
	for i := range conns {
		if got, want := read(i), fmt.Sprintf("second /during/%d", i); got != want {
			t.Fatalf("connection %d answered %q, want %q", i, got, want)
		}
	}
	if err := first.Shutdown(ctx); err != nil {
		t.Errorf("first Shutdown: %v", err)
	}
}

func TestRecentFirst(t *testing.T) {
	now := time.Now()
	mk := func(ago time.Duration) *passConn {
		c := &passConn{}
		c.lastIdle.Store(now.Add(-ago).UnixNano())
		return c
	}
	a, b, c, d := mk(time.Hour), mk(time.Millisecond), mk(time.Minute), mk(0)
	got := recentFirst([]*passConn{a, b, c, d}, now.Add(-recentUse))
	want := []*passConn{b, d, a, c}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("position %d: got the connection idle since %v, want %v", i, time.Unix(0, got[i].lastIdle.Load()), time.Unix(0, want[i].lastIdle.Load()))
		}
	}
}
