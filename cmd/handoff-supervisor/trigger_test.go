package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/okline"
	"github.com/handoff-go/handoff/internal/peercred"
	"github.com/handoff-go/handoff/internal/testutil"
	"github.com/handoff-go/handoff/supervisor"
	"golang.org/x/sys/unix"
)

var (
	shortDir   = testutil.ShortDir
	testLogger = testutil.TLogger
)

// startTrigger serves a trigger socket with handle; permit nil allows all.
func startTrigger(t *testing.T, handle triggerHandler, permit func(uint32) bool) *triggerServer {
	t.Helper()
	s := newTestTrigger(t, handle, permit)
	s.start()
	return s
}

// newTestTrigger is startTrigger without the start.
func newTestTrigger(t *testing.T, handle triggerHandler, permit func(uint32) bool) *triggerServer {
	t.Helper()
	path := filepath.Join(shortDir(t), "trigger")
	ln, err := listenTrigger(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := newTriggerServer(ln, path, peerPolicy{self: uint32(os.Getuid())}, handle, testLogger(t))
	if permit != nil {
		s.permit = permit
	}
	s.lineTimeout = 300 * time.Millisecond
	t.Cleanup(func() { s.close(errShuttingDown) })
	return s
}

func echoHandler(_ context.Context, cmd command) string {
	return "ok: " + cmd.verb + " " + cmd.binary
}

// exchange writes raw to the trigger socket and returns the reply line,
// bounded by a generous timeout.
func exchange(t *testing.T, path, raw string) string {
	t.Helper()
	line, err := exchangeErr(path, raw)
	if err != nil {
		t.Fatal(err)
	}
	return line
}

func exchangeErr(path, raw string) (string, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, raw)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading the reply: %w (got %q)", err, line)
	}
	return strings.TrimSuffix(line, "\n"), nil
}

func TestParseCommand(t *testing.T) {
	tests := []struct {
		line    string
		want    command
		wantErr string
	}{
		{line: "handoff", want: command{verb: "handoff"}},
		{line: "handoff\r", want: command{verb: "handoff"}},
		{line: "  handoff   /usr/bin/d v2 ", want: command{verb: "handoff", binary: "/usr/bin/d v2"}},
		{line: "status", want: command{verb: "status"}},
		{line: "status now", wantErr: "no argument"},
		{line: "", wantErr: "empty command"},
		{line: "reboot", wantErr: `unknown command "reboot"`},
	}
	for _, tt := range tests {
		got, err := parseCommand(tt.line)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: got %+v, %v; want error containing %q", tt.line, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: got %+v, %v; want %+v", tt.line, got, err, tt.want)
		}
	}
}

func TestReadLine(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr error
	}{
		{in: "status\n", want: "status"},
		{in: "status\nmore\n", want: "status"},
		{in: "status", want: "status"}, // closed after the line
		{in: strings.Repeat("x", maxLine) + "\n", want: strings.Repeat("x", maxLine)},
		{in: strings.Repeat("x", maxLine+1) + "\n", wantErr: errLineTooLong},
		{in: strings.Repeat("x", 3*maxLine), wantErr: errLineTooLong},
		{in: "", wantErr: io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		got, err := readLine(strings.NewReader(tt.in), maxLine)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("%.20q: got %.20q, %v; want %v", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%.20q: got %.20q, %v; want %.20q", tt.in, got, err, tt.want)
		}
	}
}

func TestTriggerProtocol(t *testing.T) {
	s := startTrigger(t, echoHandler, nil)
	tests := []struct {
		name, send, want string
	}{
		{"handoff", "handoff\n", "ok: handoff "},
		{"handoff binary", "handoff /opt/d\n", "ok: handoff /opt/d"},
		{"status", "status\n", "ok: status "},
		{"no newline then close", "status", "ok: status "},
		{"bad command", "frobnicate\n", `err: unknown command "frobnicate"`},
		{"empty line", "\n", "err: empty command"},
		{"oversized line", strings.Repeat("a", maxLine+1) + "\n", "err: line longer than 4096 bytes"},
		{"oversized without newline", strings.Repeat("a", 64<<10), "err: line longer than 4096 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if tt.send == "status" {
				got = exchangeHalfClosed(t, s.path, tt.send)
			} else {
				got = exchange(t, s.path, tt.send)
			}
			if !strings.HasPrefix(got, tt.want) {
				t.Fatalf("got %q, want prefix %q", got, tt.want)
			}
		})
	}
}

// exchangeHalfClosed sends raw, closes the writing side and reads the reply.
func exchangeHalfClosed(t *testing.T, path, raw string) string {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, raw)
	c.CloseWrite()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the reply: %v", err)
	}
	return strings.TrimSuffix(line, "\n")
}

// TestTriggerSlowClient: a client that sends nothing is answered and cut
// off after the line timeout, while other clients are served meanwhile.
func TestTriggerSlowClient(t *testing.T) {
	s := startTrigger(t, echoHandler, nil)
	slow, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	io.WriteString(slow, "hand") // a partial line, then silence
	if got := exchange(t, s.path, "status\n"); got != "ok: status " {
		t.Fatalf("a second client got %q while the first stalled", got)
	}
	slow.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(slow)
	line, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "err: no command line within") {
		t.Fatalf("slow client got %q, %v", line, err)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("slow client not cut off: %v", err)
	}
}

// TestTriggerRefusesPastBound: past the bound on connections a client is
// answered with one err: line at once, whether it sent its command or
// not, and the accept loop never waits for it: 50 refused clients that
// stay silent and keep their connections open are answered within a
// second in all, and a slot that frees serves the next client.
func TestTriggerRefusesPastBound(t *testing.T) {
	testutil.CheckLeaks(t)
	fds := testutil.CountFDs(t)
	t.Cleanup(func() {
		if n := testutil.CountFDs(t); n != fds {
			t.Errorf("%d descriptors open after the test, %d before", n, fds)
		}
	})
	s := newTestTrigger(t, echoHandler, nil)
	s.lineTimeout = time.Minute // the silent clients keep their slots
	s.limitConns(2)
	s.start()
	served := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.conns)
	}
	var open []net.Conn
	t.Cleanup(func() {
		for _, c := range open {
			c.Close()
		}
	})
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("unix", s.path)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
		return c
	}
	first := dial()
	dial()
	testutil.WaitFor(t, "two connections served", func() bool { return served() == 2 })

	const want = "err: too many trigger connections (2 open); retry\n"
	start := time.Now()
	for i := range 50 {
		c := dial()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != want {
			t.Fatalf("refused client %d got %q, %v after %v", i+1, line, err, time.Since(start))
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("50 refusals took %v", took)
	}
	// One that sent its command before being refused reads the answer.
	c := dial()
	io.WriteString(c, "status\n")
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != want {
		t.Fatalf("refused client with a command got %q, %v", line, err)
	}

	first.Close()
	testutil.WaitFor(t, "a slot to free", func() bool { return served() == 1 })
	if got := exchange(t, s.path, "status\n"); got != "ok: status " {
		t.Fatalf("after a slot freed: %q", got)
	}
}

func TestTriggerPermissionDenied(t *testing.T) {
	var mu sync.Mutex
	var seen []uint32
	handled := false
	s := startTrigger(t, func(ctx context.Context, cmd command) string {
		mu.Lock()
		handled = true
		mu.Unlock()
		return "ok: should not run"
	}, func(uid uint32) bool {
		mu.Lock()
		seen = append(seen, uid)
		mu.Unlock()
		return false
	})
	if got := exchange(t, s.path, "handoff\n"); got != "err: permission denied" {
		t.Fatalf("got %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if handled {
		t.Error("the handler ran for a denied peer")
	}
	if len(seen) != 1 || seen[0] != uint32(os.Getuid()) {
		t.Errorf("policy saw uids %v, want [%d]", seen, os.Getuid())
	}
}

func TestPeerPolicy(t *testing.T) {
	p := peerPolicy{self: 1000, allowed: []uint32{2000, 2001}}
	for uid, want := range map[uint32]bool{0: true, 1000: true, 2000: true, 2001: true, 1001: false, 65534: false} {
		if got := p.permits(uid); got != want {
			t.Errorf("permits(%d) = %t, want %t", uid, got, want)
		}
	}
}

func TestPeerCred(t *testing.T) {
	path := filepath.Join(shortDir(t), "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	cred, err := peercred.Get(sc)
	if err != nil {
		t.Fatal(err)
	}
	if int(cred.Uid) != os.Getuid() || int(cred.Pid) != os.Getpid() {
		t.Fatalf("peer cred %+v, want uid %d pid %d", cred, os.Getuid(), os.Getpid())
	}
}

func TestListenTrigger(t *testing.T) {
	dir := shortDir(t)
	path := filepath.Join(dir, "trigger")
	// A stale socket file (nothing listens) is replaced.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	ln, err := listenTrigger(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("trigger socket mode %v, want a 0600 socket", fi.Mode())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary names left behind: %v", entries)
	}
	// A live one (another supervisor) is refused.
	if _, err := listenTrigger(path, nil); err == nil || !strings.Contains(err.Error(), "another process answers") {
		t.Fatalf("second listen: %v", err)
	}
}

// TestTriggerPauseKeepsSocket: while paused, the socket stays open and a
// client that connects is served once serving resumes.
func TestTriggerPauseKeepsSocket(t *testing.T) {
	s := startTrigger(t, echoHandler, nil)
	s.pause(errReexecuting)
	c, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatalf("dial while paused: %v", err)
	}
	defer c.Close()
	io.WriteString(c, "status\n")
	s.start()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "ok: status \n" {
		t.Fatalf("got %q, %v", line, err)
	}
}

// TestTriggerPauseWakesWaiters: a handler waiting for the loop returns
// the pause's cause at once.
func TestTriggerPauseWakesWaiters(t *testing.T) {
	entered := make(chan struct{})
	s := startTrigger(t, func(ctx context.Context, cmd command) string {
		close(entered)
		<-ctx.Done()
		return errReply(context.Cause(ctx))
	}, nil)
	type result struct {
		line string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		line, err := exchangeErr(s.path, "handoff\n")
		got <- result{line, err}
	}()
	<-entered
	s.pause(errReexecuting)
	if r := <-got; r.err != nil || r.line != "err: "+errReexecuting.Error() {
		t.Fatalf("got %q, %v", r.line, r.err)
	}
}

func TestCloseRemovesOnlyOwnSocket(t *testing.T) {
	s := startTrigger(t, echoHandler, nil)
	if err := s.close(errShuttingDown); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("trigger socket still there after close: %v", err)
	}

	s2 := startTrigger(t, echoHandler, nil)
	// Someone else's socket now sits at the path: close must leave it.
	other := s2.path + ".other"
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: other, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.Rename(other, s2.path); err != nil {
		t.Fatal(err)
	}
	s2.close(errShuttingDown)
	if _, err := os.Stat(s2.path); err != nil {
		t.Fatalf("close removed a socket that was not its own: %v", err)
	}
}

func TestHandoffReplyRoundTrip(t *testing.T) {
	p := 4242
	tests := []supervisor.Outcome{
		{ID: "ab12", Committed: true, PID: p, BuildID: "v2 (x)"},
		{ID: "cd34", AbortReason: "the successor exited:\nexit status 3 \"quoted\""},
	}
	for _, o := range tests {
		line := handoffReply(o)
		if strings.ContainsAny(line, "\n\r") {
			t.Fatalf("reply spans lines: %q", line)
		}
		rest, ok := strings.CutPrefix(line, "ok: ")
		if !ok {
			t.Fatalf("reply %q", line)
		}
		f, err := okline.Fields(rest)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		want := map[string]string{"id": string(o.ID), "build_id": o.BuildID, "reason": oneLine(o.AbortReason), "committed": "false", "pid": "0"}
		if o.Committed {
			want["committed"], want["pid"] = "true", "4242"
		}
		for k, v := range want {
			if f[k] != v {
				t.Errorf("%q: field %s = %q, want %q", line, k, f[k], v)
			}
		}
	}
	if _, err := okline.Fields(`id=1 reason="unterminated`); err == nil {
		t.Error("unterminated quote parsed")
	}
}

// TestTriggerACL checks the encoding of the trigger socket's access ACL
// (what setfacl -m u:UID:rw would store) and that the kernel takes it.
func TestTriggerACL(t *testing.T) {
	got := triggerACL([]uint32{1000, 65534, 1000})
	want := []byte{
		2, 0, 0, 0, // version
		0x01, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, // USER_OBJ rw
		0x02, 0, 6, 0, 0xe8, 0x03, 0, 0, // USER 1000 rw
		0x02, 0, 6, 0, 0xfe, 0xff, 0, 0, // USER 65534 rw
		0x04, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, // GROUP_OBJ none
		0x10, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, // MASK rw
		0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, // OTHER none
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("ACL\n got % x\nwant % x", got, want)
	}

	path := filepath.Join(shortDir(t), "trigger")
	ln, err := listenTrigger(path, []uint32{65534})
	if errors.Is(err, unix.EOPNOTSUPP) {
		t.Skipf("no POSIX ACLs here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	buf := make([]byte, 256)
	n, err := unix.Getxattr(path, aclXattr, buf)
	if err != nil || !bytes.Equal(buf[:n], triggerACL([]uint32{65534})) {
		t.Fatalf("stored ACL % x (%v)", buf[:max(n, 0)], err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o660 { // group bits show the mask
		t.Fatalf("mode %v (%v), want 0660 (owner rw, mask rw)", fi.Mode(), err)
	}

	// Without allowed_uids (a re-exec that dropped them) the ACL goes and
	// the mode is 0600 again, not the 0660 the mask left.
	if err := setTriggerACL(path, path, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Getxattr(path, aclXattr, buf); !errors.Is(err, unix.ENODATA) {
		t.Fatalf("the ACL after its removal: %v, want ENODATA", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode after the ACL's removal %v (%v), want 0600", fi.Mode(), err)
	}
}
