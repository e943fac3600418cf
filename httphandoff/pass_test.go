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
