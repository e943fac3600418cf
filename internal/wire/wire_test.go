package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"reflect"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sample holds one value of every message type, with fields set.
var sample = []Message{
	Hello{Role: RoleSuccessor, PID: 42, BuildID: "v2", MinVersion: 1, MaxVersion: 3},
	HelloAck{Version: 1, DeadlineMS: 60000, LivenessMS: 10000},
	PrepareHandoff{DeadlineMS: 60000, DrainGraceMS: 25000},
	Drained{OpenConnsRemaining: 2, AcceptClosed: true, TookNS: 12345},
	DrainFailed{Reason: "drain: context deadline exceeded"},
	SealRequest{},
	SealComplete{LastRevisionPerShard: []uint64{7, 0, 1 << 63}, DataDirFingerprint: "abc", TookNS: 99},
	SealFailed{Reason: "fsync: input/output error"},
	Begin{},
	Ready{ListeningOn: []string{"127.0.0.1:8080"}, HealthzOK: true, AdvertisedRevisionPerShard: []uint64{7}, OpenTookNS: 5},
	Commit{},
	Abort{Reason: "ready rejected"},
	ResumeAfterAbort{Reason: "successor died"},
	Resumed{Error: "lock held"},
	Heartbeat{},
	ListenersRequest{},
	Listeners{Names: []string{"http", "dns"}},
	Error{Reason: "wrong handoff id"},
}

func TestEveryMessageRoundTrips(t *testing.T) {
	seen := map[Type]bool{}
	for _, m := range sample {
		t.Run(string(m.Type()), func(t *testing.T) {
			seen[m.Type()] = true
			p, err := Marshal(m, "h1")
			if err != nil {
				t.Fatal(err)
			}
			frame, err := AppendFrame(nil, 1, p)
			if err != nil {
				t.Fatal(err)
			}
			v, payload, err := ReadFrame(bytes.NewReader(frame))
			if err != nil || v != 1 {
				t.Fatalf("ReadFrame: v=%d err=%v", v, err)
			}
			got, id, err := Unmarshal(payload)
			if err != nil {
				t.Fatal(err)
			}
			if id != "h1" || !reflect.DeepEqual(got, m) {
				t.Fatalf("round trip: got %#v id %q, want %#v", got, id, m)
			}
		})
	}
	for _, typ := range Types() {
		if !seen[typ] {
			t.Errorf("message type %s has no round-trip sample", typ)
		}
	}
}

func TestFrameErrorsAreDistinct(t *testing.T) {
	good, _ := Marshal(Heartbeat{}, "x")
	hdr := func(n uint32, v uint16) []byte {
		b := binary.LittleEndian.AppendUint32(nil, n)
		return binary.LittleEndian.AppendUint16(b, v)
	}
	raw := func(payload string) []byte { return append(hdr(uint32(2+len(payload)), 1), payload...) }
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty stream", nil, ErrPeerClosed},
		{"short header", []byte{1, 0}, ErrTruncated},
		{"oversized", hdr(MaxFrame+1, 1), ErrFrameTooLarge},
		{"length below version field", hdr(1, 1), ErrMalformed},
		{"truncated payload", append(hdr(uint32(2+len(good)), 1), good[:3]...), ErrTruncated},
		{"not json", raw("abc"), ErrMalformed},
		{"unknown type", raw(`{"type":"nope"}`), ErrUnknownType},
		{"unknown field", raw(`{"type":"begin","body":{"x":1}}`), ErrMalformed},
		{"trailing data", raw(`{"type":"begin"} {}`), ErrMalformed},
		{"wrong field type", raw(`{"type":"hello","body":{"pid":"x"}}`), ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, p, err := ReadFrame(bytes.NewReader(tc.in))
			if err == nil {
				_, _, err = Unmarshal(p)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if tc.want != ErrPeerClosed && !errors.Is(err, ErrProtocol) {
				t.Fatalf("%v does not match ErrProtocol", err)
			}
		})
	}
	if _, err := AppendFrame(nil, 1, make([]byte, MaxFrame)); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized write: %v", err)
	}
}

func TestNegotiate(t *testing.T) {
	tests := []struct {
		lmin, lmax, pmin, pmax uint16
		want                   uint16
		ok                     bool
	}{
		{1, 1, 1, 1, 1, true},
		{1, 3, 2, 5, 3, true},
		{2, 5, 1, 3, 3, true},
		{1, 1, 2, 3, 0, false},
		{3, 4, 1, 2, 0, false},
		{2, 1, 1, 2, 0, false},
	}
	for _, tc := range tests {
		got, err := Negotiate(tc.lmin, tc.lmax, tc.pmin, tc.pmax)
		if tc.ok && (err != nil || got != tc.want) {
			t.Errorf("Negotiate(%d..%d, %d..%d) = %d, %v; want %d", tc.lmin, tc.lmax, tc.pmin, tc.pmax, got, err, tc.want)
		}
		if !tc.ok && !errors.Is(err, ErrVersionMismatch) {
			t.Errorf("Negotiate(%d..%d, %d..%d) = %d, %v; want ErrVersionMismatch", tc.lmin, tc.lmax, tc.pmin, tc.pmax, got, err)
		}
	}
}

func pair(t *testing.T) (*Conn, *Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(fd int) *Conn {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		return NewConn(c.(*net.UnixConn))
	}
	a, b := mk(fds[0]), mk(fds[1])
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestConnCarriesDescriptors(t *testing.T) {
	a, b := pair(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	var wfd int
	rc, _ := w.SyscallConn()
	rc.Control(func(fd uintptr) { wfd = int(fd) })
	if err := a.Send(Listeners{Names: []string{"pipe"}}, "id", time.Second, wfd); err != nil {
		t.Fatal(err)
	}
	f, err := b.Recv(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.FDs) != 1 {
		t.Fatalf("got %d descriptors, want 1", len(f.FDs))
	}
	got := os.NewFile(uintptr(f.FDs[0]), "passed")
	if _, err := got.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	got.Close()
	buf := make([]byte, 1)
	if _, err := r.Read(buf); err != nil || buf[0] != 'x' {
		t.Fatalf("read through passed descriptor: %q %v", buf, err)
	}
}

func TestConnTimeoutsAndClose(t *testing.T) {
	a, b := pair(t)
	if _, err := b.Recv(20 * time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Recv on a silent peer: %v, want ErrTimeout", err)
	}
	a.Close()
	if _, err := b.Recv(time.Second); !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("Recv after peer close: %v, want ErrPeerClosed", err)
	}
	// Writing to a closed peer fails with an error, not SIGPIPE.
	var err error
	for range 4 {
		if err = b.Send(Heartbeat{}, "id", time.Second); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("Send to a closed peer: %v, want ErrPeerClosed", err)
	}
}

func TestConnRejectsOtherVersionAfterNegotiation(t *testing.T) {
	a, b := pair(t)
	b.SetVersion(1)
	p, _ := Marshal(Heartbeat{}, "id")
	frame, _ := AppendFrame(nil, 2, p)
	if _, err := a.UnixConn().Write(frame); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Recv(time.Second); !errors.Is(err, ErrUnknownVersion) {
		t.Fatalf("got %v, want ErrUnknownVersion", err)
	}
}

// FuzzDecode feeds arbitrary bytes to the frame reader and the message
// decoder: they may fail, never panic, and what decodes re-encodes.
func FuzzDecode(f *testing.F) {
	for _, m := range sample {
		p, _ := Marshal(m, "seed")
		frame, _ := AppendFrame(nil, 1, p)
		f.Add(frame)
	}
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		_, payload, err := ReadFrame(bytes.NewReader(in))
		if err != nil {
			return
		}
		m, id, err := Unmarshal(payload)
		if err != nil {
			return
		}
		p, err := Marshal(m, id)
		if err != nil {
			t.Fatalf("decoded %#v but cannot encode it: %v", m, err)
		}
		m2, id2, err := Unmarshal(p)
		if err != nil || id2 != id || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-encoding changed %#v into %#v (%v)", m, m2, err)
		}
	})
}
