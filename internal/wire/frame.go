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
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// MaxFrame is the largest accepted value of the length prefix: 1 MiB.
const MaxFrame = 1 << 20

// HeaderLen is the size of the length prefix plus the version field.
const HeaderLen = 6

// MaxFDs is the largest number of descriptors one frame may carry.
const MaxFDs = 64

// Errors of the wire layer. Every decoding error also matches ErrProtocol.
var (
	ErrProtocol        = errors.New("handoff: protocol violation")
	ErrFrameTooLarge   = fmt.Errorf("%w: frame too large", ErrProtocol)
	ErrTruncated       = fmt.Errorf("%w: truncated frame", ErrProtocol)
	ErrMalformed       = fmt.Errorf("%w: malformed message", ErrProtocol)
	ErrUnknownVersion  = fmt.Errorf("%w: unknown protocol version", ErrProtocol)
	ErrUnknownType     = fmt.Errorf("%w: unknown message type", ErrProtocol)
	ErrVersionMismatch = errors.New("handoff: no common protocol version")
	ErrPeerClosed      = errors.New("handoff: peer closed the control channel")
	ErrTimeout         = errors.New("handoff: timed out")
)

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

// ReadFrame reads one whole frame from r (no descriptors). It returns
// ErrPeerClosed on a clean end of stream before the first byte and
// ErrTruncated when the stream ends inside a frame.
func ReadFrame(r io.Reader) (v uint16, payload []byte, err error) {
	var h [HeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, readErr(err, true)
	}
	n, v, err := ParseHeader(h[:])
	if err != nil {
		return 0, nil, err
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, readErr(err, false)
	}
	return v, payload, nil
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
type Conn struct {
	c       *net.UnixConn
	wmu     sync.Mutex
	version uint16 // negotiated; 0 before HelloAck

	// pending descriptors received but not yet attached to a frame
	fds []int
}

// NewConn wraps c.
func NewConn(c *net.UnixConn) *Conn { return &Conn{c: c} }

// UnixConn returns the underlying socket.
func (c *Conn) UnixConn() *net.UnixConn { return c.c }

// SetVersion fixes the negotiated version: later frames are sent with it and
// received frames must carry it.
func (c *Conn) SetVersion(v uint16) { c.version = v }

// Version returns the negotiated version (0 before negotiation).
func (c *Conn) Version() uint16 { return c.version }

// Close closes the socket and any received descriptors not yet handed out.
func (c *Conn) Close() error {
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = nil
	return c.c.Close()
}

// Send writes one message with the handoff id, attaching fds (if any) with
// SCM_RIGHTS. It fails if the write does not complete within timeout.
func (c *Conn) Send(m Message, id string, timeout time.Duration, fds ...int) error {
	if len(fds) > MaxFDs {
		return fmt.Errorf("handoff: %d descriptors in one frame, maximum %d", len(fds), MaxFDs)
	}
	payload, err := Marshal(m, id)
	if err != nil {
		return err
	}
	v := c.version
	if v == 0 {
		v = HandshakeVersion
	}
	buf, err := AppendFrame(make([]byte, 0, HeaderLen+len(payload)), v, payload)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.c.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("handoff: set write deadline: %w", err)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for len(buf) > 0 {
		n, _, err := c.c.WriteMsgUnix(buf, oob, nil)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("%w: sending %s: %w", ErrTimeout, m.Type(), err)
			}
			if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
				return fmt.Errorf("%w: sending %s: %w", ErrPeerClosed, m.Type(), err)
			}
			return fmt.Errorf("handoff: sending %s: %w", m.Type(), err)
		}
		buf, oob = buf[n:], nil
	}
	return nil
}

// Frame is one received message.
type Frame struct {
	Version uint16
	ID      string // handoff id ("" before one is assigned)
	Msg     Message
	FDs     []int // descriptors received with the frame; the caller owns them
}

// Recv reads one frame, waiting at most timeout (zero: no limit).
func (c *Conn) Recv(timeout time.Duration) (Frame, error) {
	var dl time.Time
	if timeout > 0 {
		dl = time.Now().Add(timeout)
	}
	if err := c.c.SetReadDeadline(dl); err != nil {
		return Frame{}, fmt.Errorf("handoff: set read deadline: %w", err)
	}
	var h [HeaderLen]byte
	if err := c.readFull(h[:], true); err != nil {
		return Frame{}, err
	}
	n, v, err := ParseHeader(h[:])
	if err != nil {
		return Frame{}, err
	}
	if !c.versionOK(v) {
		return Frame{}, fmt.Errorf("%w: frame version %d, expected %s", ErrUnknownVersion, v, c.expect())
	}
	payload := make([]byte, n)
	if err := c.readFull(payload, false); err != nil {
		return Frame{}, err
	}
	m, id, err := Unmarshal(payload)
	if err != nil {
		return Frame{}, err
	}
	f := Frame{Version: v, ID: id, Msg: m, FDs: c.fds}
	c.fds = nil
	return f, nil
}

func (c *Conn) versionOK(v uint16) bool {
	if c.version != 0 {
		return v == c.version
	}
	return v >= MinVersion && v <= MaxVersion
}

func (c *Conn) expect() string {
	if c.version != 0 {
		return fmt.Sprintf("%d (negotiated)", c.version)
	}
	return fmt.Sprintf("%d..%d", MinVersion, MaxVersion)
}

// readFull reads len(b) bytes with recvmsg so that descriptors sent with
// SCM_RIGHTS are collected, not dropped.
func (c *Conn) readFull(b []byte, atBoundary bool) error {
	oob := make([]byte, unix.CmsgSpace(4*MaxFDs))
	got := 0
	for got < len(b) {
		n, oobn, _, _, err := c.c.ReadMsgUnix(b[got:], oob)
		if oobn > 0 {
			c.collectFDs(oob[:oobn])
		}
		got += n
		if err != nil {
			if errors.Is(err, io.EOF) && got > 0 {
				return ErrTruncated
			}
			return readErr(err, atBoundary && got == 0)
		}
		if n == 0 {
			if atBoundary && got == 0 {
				return ErrPeerClosed
			}
			return ErrTruncated
		}
	}
	return nil
}

func (c *Conn) collectFDs(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err == nil {
			c.fds = append(c.fds, fds...)
		}
	}
}
