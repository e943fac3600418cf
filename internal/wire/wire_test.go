package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
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
	ReadyToBegin{WarmUpNS: 1234567, ConnRoom: 9000},
	EncodeConns([]ConnMeta{{Listener: "127.0.0.1:8080", State: []byte{0, 1, 2}}, {Listener: "/run/x.sock"}, {Listener: "127.0.0.1:8080"}}),
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
			f, err := ReadFrame(bytes.NewReader(frame))
			if err != nil || f.Version != 1 {
				t.Fatalf("ReadFrame: %+v, %v", f, err)
			}
			if f.ID != "h1" || !reflect.DeepEqual(f.Msg, m) {
				t.Fatalf("round trip: got %#v id %q, want %#v", f.Msg, f.ID, m)
			}
		})
	}
	for _, typ := range Types() {
		if !seen[typ] {
			t.Errorf("message type %s has no round-trip sample", typ)
		}
	}
}

// distinct are the errors a reader can tell apart; each failure must match
// exactly one of them.
var distinct = []error{
	ErrPeerClosed, ErrTruncated, ErrFrameTooLarge, ErrMalformed, ErrUnknownVersion,
	ErrUnknownType, ErrTimeout, ErrBadControlData, ErrBrokenStream, ErrVersionMismatch,
}

func hdr(n uint32, v uint16) []byte {
	b := binary.LittleEndian.AppendUint32(nil, n)
	return binary.LittleEndian.AppendUint16(b, v)
}

func rawFrame(v uint16, payload string) []byte {
	return append(hdr(uint32(2+len(payload)), v), payload...)
}

// badFrames are inputs that must fail, with the one distinct error each must match.
var badFrames = []struct {
	name string
	in   []byte
	want error
}{
	{"empty stream", nil, ErrPeerClosed},
	{"short header", []byte{1, 0}, ErrTruncated},
	{"oversized", hdr(MaxFrame+1, 1), ErrFrameTooLarge},
	{"length below version field", hdr(1, 1), ErrMalformed},
	{"unknown version", rawFrame(MaxVersion+1, `{"type":"begin"}`), ErrUnknownVersion},
	{"version zero", rawFrame(0, `{"type":"begin"}`), ErrUnknownVersion},
	{"truncated payload", append(hdr(40, 1), `{"type":"heartbeat"}`...), ErrTruncated},
	{"not json", rawFrame(1, "abc"), ErrMalformed},
	{"not an object", rawFrame(1, `["begin"]`), ErrMalformed},
	{"null envelope", rawFrame(1, `null`), ErrMalformed},
	{"unknown type", rawFrame(1, `{"type":"nope"}`), ErrUnknownType},
	{"type differs in case", rawFrame(1, `{"type":"Begin"}`), ErrUnknownType},
	{"unknown field", rawFrame(1, `{"type":"begin","body":{"x":1}}`), ErrMalformed},
	{"trailing object", rawFrame(1, `{"type":"begin"} {}`), ErrMalformed},
	{"trailing close brace", rawFrame(1, `{"type":"begin"}}`), ErrMalformed},
	{"trailing close brackets", rawFrame(1, `{"type":"begin"}]]]`), ErrMalformed},
	{"trailing comma", rawFrame(1, `{"type":"begin",}`), ErrMalformed},
	{"envelope key in other case", rawFrame(1, `{"Type":"begin"}`), ErrMalformed},
	{"envelope key twice, case-folded", rawFrame(1, `{"type":"begin","Type":"commit"}`), ErrMalformed},
	{"envelope key twice", rawFrame(1, `{"type":"begin","type":"commit"}`), ErrMalformed},
	{"body key in other case", rawFrame(1, `{"type":"hello","body":{"PID":2}}`), ErrMalformed},
	{"body key twice, case-folded", rawFrame(1, `{"type":"hello","body":{"pid":1,"PID":2}}`), ErrMalformed},
	{"body key twice", rawFrame(1, `{"type":"hello","body":{"pid":1,"pid":2}}`), ErrMalformed},
	{"body not an object", rawFrame(1, `{"type":"hello","body":[1]}`), ErrMalformed},
	{"wrong field type", rawFrame(1, `{"type":"hello","body":{"pid":"x"}}`), ErrMalformed},
}

// checkDistinct fails unless err matches want and none of the other
// distinct errors, and matches ErrProtocol exactly when want does.
func checkDistinct(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got %v, want %v", err, want)
	}
	for _, other := range distinct {
		if other != want && errors.Is(err, other) {
			t.Errorf("%v also matches %v", err, other)
		}
	}
	if errors.Is(err, ErrProtocol) != errors.Is(want, ErrProtocol) {
		t.Errorf("%v: matches ErrProtocol %v, want %v", err, errors.Is(err, ErrProtocol), errors.Is(want, ErrProtocol))
	}
}

func TestFrameErrorsAreDistinct(t *testing.T) {
	for _, tc := range badFrames {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadFrame(bytes.NewReader(tc.in))
			checkDistinct(t, err, tc.want)
		})
		// The same bytes through a socket and Conn.Recv.
		t.Run(tc.name+"/conn", func(t *testing.T) {
			a, b := pair(t)
			go func() {
				a.UnixConn().Write(tc.in)
				a.UnixConn().CloseWrite()
			}()
			_, err := b.Recv(5 * time.Second)
			checkDistinct(t, err, tc.want)
		})
	}
	_, err := AppendFrame(nil, 1, make([]byte, MaxFrame))
	checkDistinct(t, err, ErrFrameTooLarge)
	_, err = Negotiate(1, 1, 2, 2)
	checkDistinct(t, err, ErrVersionMismatch)
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
		if tc.ok {
			continue
		}
		if !errors.Is(err, ErrVersionMismatch) {
			t.Errorf("Negotiate(%d..%d, %d..%d) = %d, %v; want ErrVersionMismatch", tc.lmin, tc.lmax, tc.pmin, tc.pmax, got, err)
			continue
		}
		local := fmt.Sprintf("local %d..%d", tc.lmin, tc.lmax)
		peer := fmt.Sprintf("peer %d..%d", tc.pmin, tc.pmax)
		if !strings.Contains(err.Error(), local) || !strings.Contains(err.Error(), peer) {
			t.Errorf("error %q does not name both ranges (%s, %s)", err, local, peer)
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
	r, wfd := pipeWriteFD(t)
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

// FuzzDecode feeds arbitrary bytes to decodeFrame, the code behind
// Conn.Recv less the socket: it may fail, never panic, every failure is a
// protocol violation (or a clean close for empty input), and what decodes
// re-encodes to the same message.
func FuzzDecode(f *testing.F) {
	for _, m := range sample {
		p, _ := Marshal(m, "seed")
		frame, _ := AppendFrame(nil, 1, p)
		f.Add(frame)
	}
	for _, tc := range badFrames {
		f.Add(tc.in)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		fr, err := ReadFrame(bytes.NewReader(in))
		if err != nil {
			if len(in) == 0 {
				checkDistinct(t, err, ErrPeerClosed)
			} else if !errors.Is(err, ErrProtocol) {
				t.Fatalf("%q: %v does not match ErrProtocol", in, err)
			}
			return
		}
		if fr.Version < MinVersion || fr.Version > MaxVersion {
			t.Fatalf("accepted version %d", fr.Version)
		}
		p, err := Marshal(fr.Msg, fr.ID)
		if err != nil {
			t.Fatalf("decoded %#v but cannot encode it: %v", fr.Msg, err)
		}
		m2, id2, err := Unmarshal(p)
		if err != nil || id2 != fr.ID || !reflect.DeepEqual(fr.Msg, m2) {
			t.Fatalf("re-encoding changed %#v into %#v (%v)", fr.Msg, m2, err)
		}
	})
}

// pipeWriteFD returns a pipe's read end and the descriptor of its write
// end, both open until the test ends.
func pipeWriteFD(t *testing.T) (*os.File, int) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	var wfd int
	rc, err := w.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { wfd = int(fd) })
	return r, wfd
}
