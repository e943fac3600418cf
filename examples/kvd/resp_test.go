package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/examples/kvd/store"
	"github.com/handoff-go/handoff/internal/testutil"
)

func words(ws ...string) [][]byte {
	out := make([][]byte, len(ws))
	for i, w := range ws {
		out[i] = []byte(w)
	}
	return out
}

func TestParseCommand(t *testing.T) {
	big := fmt.Sprintf("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n", maxBulkLen+1)
	for _, tc := range []struct {
		name, in string
		want     [][]byte // nil with n == 0: incomplete
		n        int
		err      string
	}{
		{"array", "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", words("GET", "k"), 20, ""},
		{"array then more", "*1\r\n$4\r\nPING\r\n*1\r\n", words("PING"), 14, ""},
		{"empty bulk", "*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", words("ECHO", ""), 20, ""},
		{"binary bulk", "*2\r\n$4\r\nECHO\r\n$4\r\n\r\n\x00\n\r\n", words("ECHO", "\r\n\x00\n"), 24, ""},
		{"empty array", "*0\r\n", nil, 4, ""},
		{"null array", "*-1\r\n", nil, 5, ""},
		{"incomplete header", "*2", nil, 0, ""},
		{"incomplete bulk header", "*2\r\n$3", nil, 0, ""},
		{"incomplete bulk", "*2\r\n$3\r\nGE", nil, 0, ""},
		{"bulk without CRLF yet", "*1\r\n$4\r\nPING\r", nil, 0, ""},
		{"inline", "set k  v\r\n", words("set", "k", "v"), 10, ""},
		{"inline LF", "PING\n", words("PING"), 5, ""},
		{"inline quotes", `SET "a b" 'c\'d' "\x41\n"` + "\n", words("SET", "a b", "c'd", "A\n"), 26, ""},
		{"inline empty quoted", `ECHO ""` + "\n", words("ECHO", ""), 8, ""},
		{"inline empty line", "\r\n", nil, 2, ""},
		{"inline incomplete", "GET k", nil, 0, ""},
		{"inline unbalanced", "GET \"k\n", nil, 0, "unbalanced quotes"},
		{"inline quote then word", "GET \"k\"x\n", nil, 0, "unbalanced quotes"},
		{"not a bulk", "*1\r\n+PING\r\n", nil, 0, "expected '$', got '+'"},
		{"bad count", "*x\r\n", nil, 0, "invalid multibulk length"},
		{"count without CR", "*1\n", nil, 0, "invalid multibulk length"},
		{"too many args", fmt.Sprintf("*%d\r\n", maxArgs+1), nil, 0, "invalid multibulk length"},
		{"negative bulk", "*1\r\n$-1\r\n", nil, 0, "invalid bulk length"},
		{"bulk too big", big, nil, 0, "invalid bulk length"},
		{"bulk not terminated", "*1\r\n$1\r\nab\r\n", nil, 0, "not terminated by CRLF"},
		{"endless count", "*" + strings.Repeat("1", 40), nil, 0, "too big multibulk count"},
		{"endless inline", strings.Repeat("a", maxInlineLen+1), nil, 0, "too big inline request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args, n, err := parseCommand([]byte(tc.in))
			if tc.err != "" {
				var pe protoError
				if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("parseCommand(%q) = %v, want a protocol error %q", tc.in, err, tc.err)
				}
				return
			}
			if err != nil || n != tc.n || !slices.EqualFunc(args, tc.want, bytes.Equal) {
				t.Fatalf("parseCommand(%q) = %q, %d, %v; want %q, %d", tc.in, args, n, err, tc.want, tc.n)
			}
		})
	}
}

// TestParseCommandTooBig: a command whose arguments together pass
// maxCommandLen is refused before it is buffered whole.
func TestParseCommandTooBig(t *testing.T) {
	var b []byte
	b = fmt.Appendf(b, "*4\r\n$3\r\nSET\r\n$%d\r\n%s\r\n", maxBulkLen, bytes.Repeat([]byte("v"), maxBulkLen))
	b = fmt.Appendf(b, "$%d\r\n", 64<<10+1)
	if _, _, err := parseCommand(b); err == nil || !strings.Contains(err.Error(), "command too big") {
		t.Fatalf("got %v, want command too big", err)
	}
}

func TestRESPStateRoundTrip(t *testing.T) {
	for _, st := range []respState{
		{},
		{DB: 15, ID: 1 << 60, Name: strings.Repeat("n", maxClientName), Unparsed: []byte("*3\r\n$3\r\nSET\r\n$1")},
	} {
		b := st.encode()
		if len(st.Unparsed) <= maxUnparsed && len(b) > handoff.MaxConnState {
			t.Fatalf("state of %d unparsed bytes encodes to %d bytes, more than MaxConnState", len(st.Unparsed), len(b))
		}
		got, err := decodeRESPState(b)
		if err != nil || got.DB != st.DB || got.ID != st.ID || got.Name != st.Name || !bytes.Equal(got.Unparsed, st.Unparsed) {
			t.Fatalf("decode(encode(%+v)) = %+v, %v", st, got, err)
		}
	}
	for _, bad := range [][]byte{nil, {2}, {1, 16}, {1, 0}, {1, 0, 0, 5, 'a'}} {
		if _, err := decodeRESPState(bad); !errors.Is(err, errBadState) {
			t.Errorf("decodeRESPState(%q) = %v, want errBadState", bad, err)
		}
	}
}

func FuzzRESPParse(f *testing.F) {
	for _, s := range []string{"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", "PING\r\n", `SET "a\x41" 'b'` + "\n", "*-1\r\n", "*1\r\n$-1\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		args, n, err := parseCommand(in)
		if err != nil {
			if n != 0 || args != nil {
				t.Fatalf("error %v with %d bytes taken", err, n)
			}
			return
		}
		if n < 0 || n > len(in) {
			t.Fatalf("took %d of %d bytes", n, len(in))
		}
		if len(args) > maxArgs {
			t.Fatalf("%d arguments", len(args))
		}
		if n == 0 {
			return
		}
		// Encoded as an array, the arguments parse back the same.
		if len(args) == 0 {
			return
		}
		enc := appendArrayLen(nil, len(args))
		for _, a := range args {
			enc = appendBulk(enc, a)
		}
		again, m, err := parseCommand(enc)
		if err != nil || m != len(enc) || !slices.EqualFunc(again, args, bytes.Equal) {
			t.Fatalf("re-encoded %q parses as %q, %d, %v", args, again, m, err)
		}
	})
}

func FuzzRESPState(f *testing.F) {
	f.Add(respState{DB: 3, ID: 7, Name: "x", Unparsed: []byte("*1\r\n")}.encode())
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeRESPState(b)
		if err != nil {
			return
		}
		if st.DB < 0 || st.DB >= respDatabases || len(st.Name) > maxClientName {
			t.Fatalf("decoded %+v", st)
		}
		again, err := decodeRESPState(st.encode())
		if err != nil || again.DB != st.DB || again.ID != st.ID || again.Name != st.Name || !bytes.Equal(again.Unparsed, st.Unparsed) {
			t.Fatalf("%q decodes to %+v, whose encoding decodes to %+v, %v", b, st, again, err)
		}
	})
}

// checkLeaks checks, once the test's cleanups ran, that the test left no
// goroutine (the process tests before it may still be reaping children).
func checkLeaks(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// respHarness is a daemon with only a store and a RESP server on a
// loopback listener, in this process.
type respHarness struct {
	t   *testing.T
	d   *daemon
	srv *respServer
}

func newRESPHarness(t *testing.T, st *store.Store, ln net.Listener, hooks respHooks) *respHarness {
	t.Helper()
	d := &daemon{cfg: config{buildID: "test"}, log: testutil.TLogger(t), store: st}
	srv := newRESPServer(d, ln)
	srv.hooks = hooks
	d.resp = srv
	if err := srv.start(); err != nil {
		t.Fatal(err)
	}
	return &respHarness{t: t, d: d, srv: srv}
}

// respClient is a connection written by hand: each reply is read whole
// from the same socket.
type respClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRESP(t *testing.T, addr string) *respClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &respClient{t: t, c: c, br: bufio.NewReader(c)}
}

func (rc *respClient) send(raw string) {
	rc.t.Helper()
	rc.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if _, err := rc.c.Write([]byte(raw)); err != nil {
		rc.t.Fatalf("write on %s: %v", rc.c.LocalAddr(), err)
	}
}

// reply reads one reply and returns it flattened: "+OK", "-ERR ...",
// ":3", "$value", "$nil" or "*N" followed by the elements, space-separated.
func (rc *respClient) reply() string {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	s, err := readReply(rc.br)
	if err != nil {
		rc.t.Fatalf("reading a reply on %s: %v", rc.c.LocalAddr(), err)
	}
	return s
}

func readReply(br *bufio.Reader) (string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("empty reply line")
	}
	switch line[0] {
	case '+', '-', ':':
		return line, nil
	case '$':
		var n int
		if _, err := fmt.Sscanf(line, "$%d", &n); err != nil {
			return "", err
		}
		if n < 0 {
			return "$nil", nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(br, b); err != nil {
			return "", err
		}
		return "$" + string(b[:n]), nil
	case '*':
		var n int
		if _, err := fmt.Sscanf(line, "*%d", &n); err != nil {
			return "", err
		}
		parts := []string{line}
		for range n {
			p, err := readReply(br)
			if err != nil {
				return "", err
			}
			parts = append(parts, p)
		}
		return strings.Join(parts, " "), nil
	}
	return "", fmt.Errorf("bad reply line %q", line)
}

func (rc *respClient) do(cmd string, want string) {
	rc.t.Helper()
	rc.send(cmd + "\r\n")
	if got := rc.reply(); got != want {
		rc.t.Fatalf("%s: got %q, want %q", cmd, got, want)
	}
}

func TestRESPCommands(t *testing.T) {
	checkLeaks(t)
	st, err := store.Open(t.TempDir())
	testutil.Must(t, err)
	defer st.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	testutil.Must(t, err)
	h := newRESPHarness(t, st, ln, respHooks{})
	defer h.srv.shutdown(context.Background())

	c := dialRESP(t, ln.Addr().String())
	for _, step := range []struct{ cmd, want string }{
		{"PING", "+PONG"},
		{"ping hi", "$hi"},
		{"ECHO", "-ERR wrong number of arguments for 'echo' command"},
		{"SET k v0", "+OK"},
		{"GET k", "$v0"},
		{"SELECT 3", "+OK"},
		{"GET k", "$nil"},
		{"SET k v3", "+OK"},
		{"GET k", "$v3"},
		{"EXISTS k nope", ":1"},
		{"SELECT 16", "-ERR DB index is out of range"},
		{"SELECT x", "-ERR value is not an integer or out of range"},
		{"SET k v EX 10", "-ERR syntax error (kvd's SET takes no options)"},
		{"SET \"\\x00k\" v", "-ERR store: invalid key: keys starting with the byte 0 are reserved"},
		{"CLIENT GETNAME", "$nil"},
		{"CLIENT SETNAME x", "+OK"},
		{"CLIENT SETNAME \"a b\"", "-ERR Client names cannot contain spaces, newlines or special characters."},
		{"CLIENT GETNAME", "$x"},
		{"CLIENT KILL", "-ERR unknown subcommand 'KILL'. Try CLIENT HELP."},
		{"HELLO 3", "-NOPROTO this server speaks RESP2 only"},
		{"COMMAND DOCS", "*0"},
		{"CONFIG GET save", "*2 $save $"},
		{"FLUSHALL", "-ERR unknown command 'FLUSHALL', with args beginning with: "},
		{"DEL k k2", ":1"},
		{"GET k", "$nil"},
		{"SELECT 0", "+OK"},
		{"GET k", "$v0"},
	} {
		c.do(step.cmd, step.want)
	}
	if got, ok := st.Get("\x003\x00k"); ok {
		t.Errorf("db 3's k is still in the store: %q", got)
	}

	// Pipelined: one write, every reply in order.
	var pipe strings.Builder
	for i := range 100 {
		fmt.Fprintf(&pipe, "*3\r\n$3\r\nSET\r\n$2\r\np%d\r\n$1\r\n%d\r\n", i%10, i%10)
		fmt.Fprintf(&pipe, "GET p%d\r\n", i%10)
	}
	c.send(pipe.String())
	for i := range 100 {
		if r := c.reply(); r != "+OK" {
			t.Fatalf("pipelined SET %d: %q", i, r)
		}
		if r := c.reply(); r != fmt.Sprintf("$%d", i%10) {
			t.Fatalf("pipelined GET %d: %q", i, r)
		}
	}

	// A protocol error is answered, and the connection closed.
	c.send("*1\r\n$x\r\n")
	if r := c.reply(); r != "-ERR Protocol error: invalid bulk length" {
		t.Fatalf("protocol error answered %q", r)
	}
	if _, err := c.br.ReadByte(); err == nil {
		t.Fatal("the connection is still open after a protocol error")
	}
	q := dialRESP(t, ln.Addr().String())
	q.do("QUIT", "+OK")
	if _, err := q.br.ReadByte(); err == nil {
		t.Fatal("the connection is still open after QUIT")
	}
}

// TestRESPPassConns: a drain stops each connection at a command boundary
// with its state (database, name, id and the incomplete command it sent);
// another server adopts them and they go on, on the same TCP connections.
// After an abort the first server serves them again.
func TestRESPPassConns(t *testing.T) {
	checkLeaks(t)
	st, err := store.Open(t.TempDir())
	testutil.Must(t, err)
	defer st.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	testutil.Must(t, err)
	var busyAddr atomic.Value // the busy client's address
	var busyRead atomic.Int64 // bytes the server read from it
	readSome := make(chan struct{}, 1)
	h := newRESPHarness(t, st, ln, respHooks{afterRead: func(c *respConn, n int) {
		if c.nc.RemoteAddr().String() == busyAddr.Load() {
			busyRead.Add(int64(n))
			select {
			case readSome <- struct{}{}:
			default:
			}
		}
	}})
	defer h.srv.shutdown(context.Background())
	idle := dialRESP(t, ln.Addr().String())
	idle.do("SELECT 3", "+OK")
	idle.do("CLIENT SETNAME idle", "+OK")
	busy := dialRESP(t, ln.Addr().String())
	busyAddr.Store(busy.c.LocalAddr().String())
	busy.do("SET k v", "+OK")
	// A complete command then half of the next one, in one write: the
	// complete one is answered before the stop, the half travels.
	pipe := "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk"
	busy.send(pipe)
	if r := busy.reply(); r != "$v" {
		t.Fatalf("GET before the handoff: %q", r)
	}
	for busyRead.Load() < int64(len("SET k v\r\n")+len(pipe)) {
		<-readSome
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	passed := h.drain(ctx)
	if len(passed) != 2 {
		t.Fatalf("passed %d connections, want 2", len(passed))
	}
	var unparsed []string
	for _, pc := range passed {
		s, err := decodeRESPState(pc.State)
		testutil.Must(t, err)
		unparsed = append(unparsed, string(s.Unparsed))
	}
	if !slices.Contains(unparsed, "*3\r\n$3\r\nSET\r\n$1\r\nk") {
		t.Fatalf("states carry the unparsed input %q; want the incomplete SET", unparsed)
	}

	// The successor: a second server on a duplicate of the listener.
	f, err := ln.(*net.TCPListener).File()
	testutil.Must(t, err)
	ln2, err := net.FileListener(f)
	f.Close()
	testutil.Must(t, err)
	h2 := newRESPHarness(t, st, ln2, respHooks{})
	defer h2.srv.shutdown(context.Background())
	h2.d.AdoptConns(passed)

	busy.send("\r\n$2\r\nv2\r\n")
	if r := busy.reply(); r != "+OK" {
		t.Fatalf("the SET split across the handoff answered %q", r)
	}
	busy.do("GET k", "$v2")
	idle.do("CLIENT GETNAME", "$idle")
	idle.do("SET k v3", "+OK")
	busy.do("SELECT 3", "+OK")
	busy.do("GET k", "$v3")
	idleInfo := func(c *respClient) string {
		c.send("CLIENT INFO\r\n")
		return c.reply()
	}
	info := idleInfo(idle)
	if !strings.Contains(info, "addr="+idle.c.LocalAddr().String()+" ") || !strings.Contains(info, " db=3 ") {
		t.Fatalf("CLIENT INFO after the handoff: %q; want addr=%s db=3", info, idle.c.LocalAddr())
	}
	if h2.srv.adopted.Load() != 2 || h2.srv.accepted.Load() != 0 {
		t.Errorf("the second server adopted %d and accepted %d connections, want 2 and 0", h2.srv.adopted.Load(), h2.srv.accepted.Load())
	}

	// Now an aborted handoff: the second server drains and serves its
	// own connections again.
	passed = h2.drain(ctx)
	if len(passed) != 2 {
		t.Fatalf("the second drain passed %d connections, want 2", len(passed))
	}
	testutil.Must(t, h2.srv.resume())
	h2.d.AdoptConns(passed)
	idle.do("CLIENT GETNAME", "$idle")
	busy.do("GET k", "$v3")
}

// drain is the daemon's drain of RESP alone (its HTTP side is not there).
func (h *respHarness) drain(ctx context.Context) []handoff.PassedConn {
	h.srv.beginDrain()
	if left := h.srv.waitDrained(ctx); left != 0 {
		h.t.Fatalf("%d connections still served after the drain", left)
	}
	return h.srv.passConns(100)
}
