//go:build linux

// Package wire is the framed control channel between the supervisor and the
// daemons: length-prefixed frames carrying a protocol version and one JSON
// message, read and written with deadlines, optionally carrying file
// descriptors (SCM_RIGHTS).
//
// Frame layout (all integers little-endian):
//
//	offset 0  uint32  n: length of what follows (2 + len(payload)), at most MaxFrame
//	offset 4  uint16  protocol version of the payload
//	offset 6  [n-2]   payload: one JSON object {"type":..., "id":..., "body":{...}}
//
// The JSON is read strictly: exactly one object per payload and nothing
// after it; keys match field names exactly (case-sensitive), appear at most
// once, and unknown keys are rejected.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MaxFrame is the largest accepted value of the length prefix: 1 MiB.
const MaxFrame = 1 << 20

// HeaderLen is the size of the length prefix plus the version field.
const HeaderLen = 6

// MaxFDs is the largest number of descriptors one frame may carry: the
// kernel's SCM_MAX_FD, the most one sendmsg can pass.
const MaxFDs = 253

// AppendFrame appends one frame holding payload at version v to dst.
func AppendFrame(dst []byte, v uint16, payload []byte) ([]byte, error) {
	n := 2 + len(payload)
	if n > MaxFrame {
		return dst, fmt.Errorf("%w: %d bytes, maximum %d", ErrFrameTooLarge, n, MaxFrame)
	}
	dst = binary.LittleEndian.AppendUint32(dst, uint32(n))
	dst = binary.LittleEndian.AppendUint16(dst, v)
	return append(dst, payload...), nil
}

// ParseHeader validates a 6-byte header and returns the payload length and version.
func ParseHeader(h []byte) (payloadLen int, v uint16, err error) {
	n := binary.LittleEndian.Uint32(h[0:4])
	if n > MaxFrame {
		return 0, 0, fmt.Errorf("%w: length prefix %d, maximum %d", ErrFrameTooLarge, n, MaxFrame)
	}
	if n < 2 {
		return 0, 0, fmt.Errorf("%w: length prefix %d is shorter than the version field", ErrMalformed, n)
	}
	return int(n) - 2, binary.LittleEndian.Uint16(h[4:6]), nil
}

// readFunc fills b completely or fails. atBoundary says that b starts a
// frame, so that an end of stream before its first byte is a clean close.
type readFunc func(b []byte, atBoundary bool) error

// decodeFrame reads one frame through read and checks it in order: the
// length prefix, the version (it must lie in lo..hi), then the message. It
// is the whole of Conn.Recv except the socket, and what FuzzDecode drives.
// Every error matches ErrProtocol, except ErrPeerClosed for a stream that
// ends cleanly before the frame, ErrTimeout, and the reader's own errors.
func decodeFrame(read readFunc, lo, hi uint16) (Frame, error) {
	var h [HeaderLen]byte
	if err := read(h[:], true); err != nil {
		return Frame{}, err
	}
	n, v, err := ParseHeader(h[:])
	if err != nil {
		return Frame{}, err
	}
	if v < lo || v > hi {
		return Frame{}, fmt.Errorf("%w: frame version %d, expected %s", ErrUnknownVersion, v, versionRange(lo, hi))
	}
	payload := make([]byte, n)
	if err := read(payload, false); err != nil {
		return Frame{}, err
	}
	m, id, err := Unmarshal(payload)
	if err != nil {
		return Frame{}, err
	}
	return Frame{Version: v, ID: id, Msg: m}, nil
}

func versionRange(lo, hi uint16) string {
	if lo == hi {
		return strconv.Itoa(int(lo))
	}
	return fmt.Sprintf("%d..%d", lo, hi)
}

// ReadFrame reads and decodes one frame from r (no descriptors), accepting
// versions MinVersion..MaxVersion. It returns ErrPeerClosed on a clean end
// of stream before the first byte and ErrTruncated when the stream ends
// inside a frame.
func ReadFrame(r io.Reader) (Frame, error) {
	return decodeFrame(func(b []byte, atBoundary bool) error {
		n, err := io.ReadFull(r, b)
		if err != nil {
			return readErr(err, atBoundary && n == 0)
		}
		return nil
	}, MinVersion, MaxVersion)
}

func readErr(err error, atBoundary bool) error {
	switch {
	case errors.Is(err, io.EOF) && atBoundary:
		return ErrPeerClosed
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ErrTruncated
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w: no frame from peer in time: %w", ErrTimeout, err)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("%w: %w", ErrPeerClosed, err)
	}
	return err
}

// Conn is a framed control channel over a unix stream socket. Writes are
// serialised (heartbeats may be sent from another goroutine); reads must
// come from one goroutine at a time. Writes to a closed peer return an
// error (EPIPE) instead of raising SIGPIPE: the Go runtime only lets SIGPIPE
// kill the process for writes to standard output and error.
//
// Timeouts: Send and Recv take a timeout that bounds the whole frame. Zero
// means no limit; a negative timeout has already expired, so the call fails
// at once with ErrTimeout.
//
// A frame that fails half-way (a Send or Recv that times out or breaks
// after part of the frame went through) leaves the byte stream out of step.
// The Conn remembers it: every later Send, or Recv, fails with an error
// matching ErrBrokenStream and the original cause. A received frame that
// breaks the protocol counts as such a failure for Recv.
type Conn struct {
	c       *net.UnixConn
	wmu     sync.Mutex
	werr    error         // guarded by wmu: why the write side is out of step
	rerr    error         // owned by the reading goroutine: why the read side is out of step
	version atomic.Uint32 // negotiated; 0 before HelloAck (a heartbeat goroutine may send meanwhile)

	// fdmu guards fds: the reading goroutine collects descriptors while
	// Close, from any goroutine, may close them.
	fdmu sync.Mutex
	fds  []int // received but not yet attached to a frame

	recvFDs int // room for descriptors per recvmsg; 0: MaxFDs (tests lower it)
}

// NewConn wraps c.
func NewConn(c *net.UnixConn) *Conn { return &Conn{c: c} }

// UnixConn returns the underlying socket.
func (c *Conn) UnixConn() *net.UnixConn { return c.c }

// SetVersion fixes the negotiated version: later frames are sent with it and
// received frames must carry it.
func (c *Conn) SetVersion(v uint16) { c.version.Store(uint32(v)) }

// Version returns the negotiated version (0 before negotiation).
func (c *Conn) Version() uint16 { return uint16(c.version.Load()) }

// Close closes the socket and any received descriptors not yet handed out.
// It may be called from any goroutine, also while another one is in Recv:
// the socket is closed first, so a Recv in progress fails and closes what
// it collected itself.
func (c *Conn) Close() error {
	err := c.c.Close()
	c.closePending()
	return err
}

// closePending closes the received descriptors not yet handed out.
func (c *Conn) closePending() {
	c.fdmu.Lock()
	defer c.fdmu.Unlock()
	c.closePendingLocked()
}

func (c *Conn) closePendingLocked() {
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = nil
}

func deadline(timeout time.Duration) time.Time {
	if timeout == 0 {
		return time.Time{}
	}
	return time.Now().Add(timeout)
}

// Send writes one message with the handoff id, attaching fds (if any) with
// SCM_RIGHTS. It fails with ErrTimeout if the frame is not written within
// timeout (zero: no limit).
func (c *Conn) Send(m Message, id string, timeout time.Duration, fds ...int) error {
	if len(fds) > MaxFDs {
		return fmt.Errorf("handoff: %d descriptors in one frame, maximum %d", len(fds), MaxFDs)
	}
	payload, err := Marshal(m, id)
	if err != nil {
		return err
	}
	v := c.Version()
	if v == 0 {
		v = HandshakeVersion
	}
	buf, err := AppendFrame(make([]byte, 0, HeaderLen+len(payload)), v, payload)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return fmt.Errorf("%w: not sending %s: %w", ErrBrokenStream, m.Type(), c.werr)
	}
	if err := c.c.SetWriteDeadline(deadline(timeout)); err != nil {
		return fmt.Errorf("handoff: set write deadline: %w", err)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	sent := 0
	for sent < len(buf) {
		n, _, err := c.c.WriteMsgUnix(buf[sent:], oob, nil)
		sent += n
		if n > 0 {
			oob = nil
		}
		if err != nil {
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				err = fmt.Errorf("%w: sending %s: %w", ErrTimeout, m.Type(), err)
			case errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNRESET):
				err = fmt.Errorf("%w: sending %s: %w", ErrPeerClosed, m.Type(), err)
			default:
				err = fmt.Errorf("handoff: sending %s: %w", m.Type(), err)
			}
			if sent > 0 {
				c.werr = fmt.Errorf("%d of %d bytes of a frame sent: %w", sent, len(buf), err)
			}
			return err
		}
	}
	return nil
}

// Frame is one received message.
type Frame struct {
	Version uint16  // protocol version the frame carried
	ID      string  // handoff id ("" before one is assigned)
	Msg     Message // the decoded message, a value of one of the message types
	FDs     []int   // descriptors received with the frame; the caller owns them
}

// Recv reads one frame, waiting at most timeout (zero: no limit). Before
// SetVersion it accepts versions MinVersion..MaxVersion, afterwards only the
// negotiated one. On error, descriptors that came with the failed frame are
// closed; after a protocol violation every later Recv fails too (the rest
// of the bad frame may still be in the stream).
func (c *Conn) Recv(timeout time.Duration) (Frame, error) {
	if c.rerr != nil {
		return Frame{}, fmt.Errorf("%w: not receiving: %w", ErrBrokenStream, c.rerr)
	}
	if err := c.c.SetReadDeadline(deadline(timeout)); err != nil {
		return Frame{}, fmt.Errorf("handoff: set read deadline: %w", err)
	}
	lo, hi := MinVersion, MaxVersion
	if v := c.Version(); v != 0 {
		lo, hi = v, v
	}
	f, err := decodeFrame(c.readFull, lo, hi)
	if err != nil {
		c.closePending()
		if c.rerr == nil && errors.Is(err, ErrProtocol) {
			c.rerr = err
		}
		return Frame{}, err
	}
	c.fdmu.Lock()
	f.FDs, c.fds = c.fds, nil
	c.fdmu.Unlock()
	return f, nil
}

// readFull reads len(b) bytes with recvmsg so that descriptors sent with
// SCM_RIGHTS are collected, not dropped. A failure after part of a frame
// was read marks the read side out of step.
func (c *Conn) readFull(b []byte, atBoundary bool) error {
	room := MaxFDs
	if c.recvFDs > 0 {
		room = c.recvFDs
	}
	oob := make([]byte, unix.CmsgSpace(4*room))
	got := 0
	for got < len(b) {
		n, oobn, flags, _, err := c.c.ReadMsgUnix(b[got:], oob)
		got += n
		if oobn > 0 || flags&unix.MSG_CTRUNC != 0 {
			if ferr := c.collectFDs(oob[:oobn], flags); ferr != nil {
				c.rerr = ferr
				return ferr
			}
		}
		if err == nil && n == 0 {
			err = io.EOF
		}
		if err != nil {
			if errors.Is(err, io.EOF) && (got > 0 || !atBoundary) {
				err = ErrTruncated
			} else {
				err = readErr(err, atBoundary && got == 0)
			}
			if got > 0 || !atBoundary {
				c.rerr = fmt.Errorf("%d of %d bytes read: %w", got, len(b), err)
			}
			return err
		}
	}
	return nil
}

// collectFDs takes the descriptors out of one recvmsg's control data. A
// truncated or unparsable control message, anything but SCM_RIGHTS, or
// more than MaxFDs descriptors for one frame is a protocol violation; the
// descriptors that did arrive are closed.
func (c *Conn) collectFDs(oob []byte, flags int) error {
	c.fdmu.Lock()
	defer c.fdmu.Unlock()
	var errs []error
	if flags&unix.MSG_CTRUNC != 0 {
		errs = append(errs, errors.New("control data truncated (MSG_CTRUNC)"))
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		errs = append(errs, fmt.Errorf("control data: %w", err))
	}
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_RIGHTS {
			errs = append(errs, fmt.Errorf("unexpected control message level %d type %d", m.Header.Level, m.Header.Type))
			continue
		}
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			errs = append(errs, fmt.Errorf("SCM_RIGHTS: %w", err))
			continue
		}
		c.fds = append(c.fds, fds...)
	}
	if len(c.fds) > MaxFDs {
		errs = append(errs, fmt.Errorf("%d descriptors for one frame, maximum %d", len(c.fds), MaxFDs))
	}
	if len(errs) > 0 {
		c.closePendingLocked()
		return fmt.Errorf("%w: %w", ErrBadControlData, errors.Join(errs...))
	}
	return nil
}

// connFrameBudget bounds the JSON of one Conns frame well under MaxFrame.
const connFrameBudget = MaxFrame / 2

// ConnBatchEnd returns the end of the batch of metas that starts at from:
// at most MaxFDs connections, and within the frame budget (always at
// least one, as one state is at most MaxConnState).
func ConnBatchEnd(metas []ConnMeta, from int) int {
	budget := 0
	i := from
	for ; i < len(metas) && i-from < MaxFDs; i++ {
		cost := 4*len(metas[i].State)/3 + len(metas[i].Listener) + 64
		if i > from && budget+cost > connFrameBudget {
			break
		}
		budget += cost
	}
	return i
}
