package wire

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// bigListeners is a message whose frame is far larger than a socket buffer.
func bigListeners() Listeners {
	names := make([]string, 100)
	for i := range names {
		names[i] = strings.Repeat("n", 8<<10)
	}
	return Listeners{Names: names}
}

func TestSendTimesOutOnAPeerThatNeverReads(t *testing.T) {
	a, _ := pair(t) // the peer never reads
	start := time.Now()
	err := a.Send(bigListeners(), "id", 100*time.Millisecond)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Send to a peer that never reads: %v, want ErrTimeout", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Send took %v with a 100ms timeout", took)
	}
	// Part of the frame went out: the stream is out of step, and a
	// heartbeat sent now would be read as the rest of that frame.
	err = a.Send(Heartbeat{}, "id", time.Second)
	if !errors.Is(err, ErrBrokenStream) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("Send after a partial frame: %v, want ErrBrokenStream wrapping ErrTimeout", err)
	}
}

func TestSendTimeoutBeforeAnyByteKeepsTheStream(t *testing.T) {
	a, b := pair(t)
	if err := a.Send(Heartbeat{}, "id", -time.Second); !errors.Is(err, ErrTimeout) || errors.Is(err, ErrBrokenStream) {
		t.Fatalf("Send with an expired timeout: %v, want ErrTimeout only", err)
	}
	if err := a.Send(Heartbeat{}, "id", time.Second); err != nil {
		t.Fatalf("Send after a timeout that sent nothing: %v", err)
	}
	if f, err := b.Recv(time.Second); err != nil || f.Msg != (Heartbeat{}) {
		t.Fatalf("Recv: %+v, %v", f, err)
	}
}

// Zero means no limit for both directions; a negative timeout has expired.
func TestConnTimeoutRules(t *testing.T) {
	a, b := pair(t)
	if _, err := b.Recv(-time.Second); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Recv with an expired timeout: %v, want ErrTimeout", err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		a.Send(Heartbeat{}, "id", 0)
	}()
	f, err := b.Recv(0)
	if err != nil || f.Msg != (Heartbeat{}) {
		t.Fatalf("Recv(0): %+v, %v", f, err)
	}
	if err := b.Send(Commit{}, "id", 0); err != nil {
		t.Fatalf("Send(0): %v", err)
	}
	if f, err := a.Recv(time.Second); err != nil || f.Msg != (Commit{}) {
		t.Fatalf("Recv: %+v, %v", f, err)
	}
}

func TestRecvTimeoutMidFrameBreaksTheStream(t *testing.T) {
	a, b := pair(t)
	p, _ := Marshal(Heartbeat{}, "id")
	frame, _ := AppendFrame(nil, 1, p)
	if _, err := a.UnixConn().Write(frame[:HeaderLen+2]); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Recv(50 * time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Recv of half a frame: %v, want ErrTimeout", err)
	}
	if _, err := a.UnixConn().Write(frame[HeaderLen+2:]); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Recv(time.Second); !errors.Is(err, ErrBrokenStream) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("Recv after a timeout mid-frame: %v, want ErrBrokenStream wrapping ErrTimeout", err)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestRecvRejectsTruncatedControlData(t *testing.T) {
	a, b := pair(t)
	_, wfd := pipeWriteFD(t)
	b.recvFDs = 4                   // the kernel refuses more than MaxFDs in one sendmsg
	fds := make([]int, b.recvFDs+1) // one more than the receiver makes room for
	for i := range fds {
		fds[i] = wfd
	}
	p, _ := Marshal(Heartbeat{}, "id")
	frame, _ := AppendFrame(nil, 1, p)
	before := openFDs(t)
	if _, _, err := a.UnixConn().WriteMsgUnix(frame, unix.UnixRights(fds...), nil); err != nil {
		t.Fatal(err)
	}
	_, err := b.Recv(time.Second)
	checkDistinct(t, err, ErrBadControlData)
	if !strings.Contains(err.Error(), "MSG_CTRUNC") {
		t.Errorf("error %q does not say the control data was truncated", err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("%d descriptors open before, %d after: the ones that arrived were not closed", before, after)
	}
	if _, err := b.Recv(time.Second); !errors.Is(err, ErrBrokenStream) {
		t.Fatalf("Recv after bad control data: %v, want ErrBrokenStream", err)
	}
}
