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

	"github.com/handoff-go/handoff"
)

// passListener is a loopback listener for the pass tests, closed at the end.
func passListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// namedServer starts a Server on ln whose answer is its name and the
// request's path; tune, if set, sets the http.Server's timeouts.
func namedServer(t *testing.T, ln net.Listener, name string, tune func(*http.Server)) *Server {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name+" "+r.URL.Path)
	})
	cfg := Config{Handler: h}
	if tune != nil {
		cfg = Config{NewServer: func() *http.Server {
			srv := &http.Server{Handler: h}
			tune(srv)
			return srv
		}}
	}
	s, err := New(cfg, ln)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	return s
}

// client is one persistent client connection, written by hand so that a
// reconnect cannot hide.
type client struct {
	net.Conn
	br *bufio.Reader
}

func dialClient(t *testing.T, ln net.Listener) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), waitBound)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{Conn: c, br: bufio.NewReader(c)}
}

// send writes a GET of path on the connection.
func (c *client) send(path string) error {
	c.SetDeadline(time.Now().Add(waitBound))
	_, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path)
	return err
}

// answer reads the next answer's body on the same connection.
func (c *client) answer() (string, error) {
	c.SetDeadline(time.Now().Add(waitBound))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func (c *client) get(path string) (string, error) {
	if err := c.send(path); err != nil {
		return "", err
	}
	return c.answer()
}

// drained drains s and returns what it passes, wanting n connections.
func drained(t *testing.T, ctx context.Context, s *Server, n int) []handoff.PassedConn {
	t.Helper()
	if _, err := s.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	passed := s.PassConns(n + 10)
	if len(passed) != n {
		t.Fatalf("PassConns = %d connections, want %d", len(passed), n)
	}
	return passed
}

// TestPassIdleKeepAliveConnection: a keep-alive connection idle after a
// response is stopped by Drain, handed over by PassConns and served by a
// second Server on the same listener (AdoptConns): the client's next
// request is answered on the same TCP connection, with no reconnect.
func TestPassIdleKeepAliveConnection(t *testing.T) {
	ln := passListener(t)
	first := namedServer(t, ln, "first", nil)
	c := dialClient(t, ln)
	if got, err := c.get("/"); got != "first /" {
		t.Fatalf("first answer %q (%v)", got, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	passed := drained(t, ctx, first, 1)
	if passed[0].Listener != ln.Addr().String() {
		t.Fatalf("passed on %q, want %s", passed[0].Listener, ln.Addr())
	}
	second := namedServer(t, ln, "second", nil)
	second.AdoptConns(passed)
	if got, err := c.get("/"); got != "second /" {
		t.Fatalf("answer after the pass %q (%v), want it from the second server", got, err)
	}
	if err := first.Shutdown(ctx); err != nil {
		t.Errorf("first Shutdown: %v", err)
	}
	// The first server's shutdown must not have cut the passed connection.
	if got, err := c.get("/"); got != "second /" {
		t.Fatalf("answer after the first server shut down %q (%v)", got, err)
	}
	second.Shutdown(ctx)
}

// TestAdoptedConnectionWaitsAsIdle: net/http takes an adopted connection
// for a new one, but it was idle between requests: its header and write
// deadlines start with its next request, not at the adoption, and until
// then it waits for as long as an idle keep-alive connection does
// (IdleTimeout), after which the server closes it.
func TestAdoptedConnectionWaitsAsIdle(t *testing.T) {
	ln := passListener(t)
	const (
		headerTimeout = 50 * time.Millisecond
		idleTimeout   = 400 * time.Millisecond
	)
	tune := func(srv *http.Server) {
		srv.ReadHeaderTimeout, srv.WriteTimeout, srv.IdleTimeout = headerTimeout, headerTimeout, idleTimeout
	}
	first := namedServer(t, ln, "first", tune)
	c := dialClient(t, ln)
	if got, err := c.get("/"); got != "first /" {
		t.Fatalf("first answer %q (%v)", got, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	passed := drained(t, ctx, first, 1)
	defer first.Shutdown(ctx)
	second := namedServer(t, ln, "second", tune)
	defer second.Shutdown(ctx)
	adopted := time.Now()
	second.AdoptConns(passed)
	// The client stays idle for several header timeouts, well inside the
	// idle timeout: what is measured here is an idle client.
	time.Sleep(6 * headerTimeout)
	if got, err := c.get("/"); got != "second /" {
		t.Fatalf("answer %v after the adoption, idle past the header timeout: %q (%v)", time.Since(adopted), got, err)
	}
	// Idle again, now as any keep-alive connection of the second server:
	// it closes the connection after its idle timeout.
	c.SetReadDeadline(time.Now().Add(waitBound))
	start := time.Now()
	if n, err := c.br.ReadByte(); err != io.EOF {
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
	ln := passListener(t)
	first := namedServer(t, ln, "first", nil)
	conns := make([]*client, 20)
	for i := range conns {
		conns[i] = dialClient(t, ln)
		if got, err := conns[i].get("/before"); got != "first /before" {
			t.Fatalf("connection %d: %q (%v)", i, got, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitBound)
	defer cancel()
	if _, err := first.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	// Every connection sends its next request while it is stopped.
	for i, c := range conns {
		if err := c.send(fmt.Sprintf("/during/%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	passed := first.PassConns(len(conns))
	if len(passed) != len(conns) {
		t.Fatalf("PassConns = %d, want %d", len(passed), len(conns))
	}
	second := namedServer(t, ln, "second", nil)
	defer second.Shutdown(ctx)
	second.AdoptConns(passed)
	for i, c := range conns {
		if got, err := c.answer(); got != fmt.Sprintf("second /during/%d", i) {
			t.Fatalf("connection %d answered %q (%v), want it from the second server", i, got, err)
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
