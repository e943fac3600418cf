package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"
)

// keepAlive is one persistent client connection, written by hand so that
// a reconnect cannot hide: every request goes on the same socket.
type keepAlive struct {
	c  net.Conn
	br *bufio.Reader
}

func (k *keepAlive) put(t *testing.T, key, val string) {
	t.Helper()
	k.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(k.c, "PUT /kv/%s HTTP/1.1\r\nHost: kvd\r\nContent-Length: %d\r\n\r\n%s", key, len(val), val); err != nil {
		t.Fatalf("PUT %s on %s: %v", key, k.c.LocalAddr(), err)
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		t.Fatalf("PUT %s on the same connection %s: %v", key, k.c.LocalAddr(), err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 || resp.Close {
		t.Fatalf("PUT %s on %s: %s (close=%v)", key, k.c.LocalAddr(), resp.Status, resp.Close)
	}
}

// TestKeepAliveConnsSurviveHandoffs: persistent connections opened before
// a series of handoffs are passed at each one (Outcome.PassedConns) and
// answer afterwards on the same TCP connection; after an aborted handoff
// the incumbent serves every one of them again.
func TestKeepAliveConnsSurviveHandoffs(t *testing.T) {
	c := startKVD(t)
	n := 50
	if v, err := strconv.Atoi(os.Getenv("KVD_PASS_CONNS")); err == nil && v > 0 {
		n = v // a bigger pool, to measure by hand
	}
	conns := make([]*keepAlive, n)
	for i := range conns {
		nc, err := net.DialTimeout("tcp", c.addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		conns[i] = &keepAlive{c: nc, br: bufio.NewReader(nc)}
		conns[i].put(t, fmt.Sprintf("c%d-start", i), "v")
	}
	round := func(tag string) {
		for i, k := range conns {
			k.put(t, fmt.Sprintf("c%d-%s", i, tag), tag)
		}
	}
	for h := range 3 {
		out := c.handoff(c.spec(fmt.Sprintf("v%d", h+2)))
		if !out.Committed {
			t.Fatalf("handoff %d: %s", h, out.AbortReason)
		}
		if out.PassedConns != n {
			t.Errorf("handoff %d passed %d connections, want %d", h, out.PassedConns, n)
		}
		t.Logf("handoff %d: %d connections passed, accept gap %v, library overhead %v", h, out.PassedConns, out.Phases.AcceptGap, out.Phases.LibraryOverhead)
		round(fmt.Sprintf("h%d", h))
	}
	out := c.handoff(c.spec("bad", "--fail-before-ready"))
	if out.Committed {
		t.Fatal("a successor that exits before Ready committed")
	}
	if out.PassedConns != n {
		t.Errorf("the aborted handoff passed %d connections, want %d", out.PassedConns, n)
	}
	round("after-abort")
	for i := range conns {
		code, body, err := c.do("GET", fmt.Sprintf("/kv/c%d-after-abort", i), "")
		if err != nil || code != 200 || body != "after-abort" {
			t.Fatalf("GET c%d-after-abort = %d %q %v", i, code, body, err)
		}
	}
}
