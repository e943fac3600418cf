//go:build linux

package handoff

import (
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/fdutil"
)

// InheritedListeners holds the sockets and files a process was started
// with, by name. Lookups of a name that was not passed return an error
// matching ErrNotInherited, so a daemon started by hand can bind its own.
// Each lookup returns a new object on a duplicate descriptor; the set keeps
// its own copies (so the incumbent can hand them back to a restarted
// supervisor) until Close.
type InheritedListeners struct {
	mu    sync.Mutex
	names []string
	files map[string]*os.File
}

func newInheritedListeners() *InheritedListeners {
	return &InheritedListeners{files: map[string]*os.File{}}
}

// Names returns the inherited names in fd order.
func (il *InheritedListeners) Names() []string {
	il.mu.Lock()
	defer il.mu.Unlock()
	return slices.Clone(il.names)
}

func (il *InheritedListeners) lookup(name string) (*os.File, error) {
	il.mu.Lock()
	defer il.mu.Unlock()
	f, ok := il.files[name]
	if !ok {
		if il.files == nil {
			return nil, fmt.Errorf("%w: %q (listener set closed)", ErrNotInherited, name)
		}
		return nil, fmt.Errorf("%w: %q (have %v)", ErrNotInherited, name, il.names)
	}
	return f, nil
}

// Listener returns the stream listener (TCP or unix) passed as name.
func (il *InheritedListeners) Listener(name string) (net.Listener, error) {
	f, err := il.lookup(name)
	if err != nil {
		return nil, err
	}
	if typ, err := sockType(f); err != nil || typ != unix.SOCK_STREAM {
		return nil, fmt.Errorf("handoff: inherited %q is not a stream socket: %w", name, kindErr(typ, err))
	}
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("handoff: inherited %q: %w", name, err)
	}
	return l, nil
}

// PacketConn returns the datagram socket (UDP or unixgram) passed as name.
func (il *InheritedListeners) PacketConn(name string) (net.PacketConn, error) {
	f, err := il.lookup(name)
	if err != nil {
		return nil, err
	}
	if typ, err := sockType(f); err != nil || typ != unix.SOCK_DGRAM {
		return nil, fmt.Errorf("handoff: inherited %q is not a datagram socket: %w", name, kindErr(typ, err))
	}
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("handoff: inherited %q: %w", name, err)
	}
	return c, nil
}

// File returns a duplicate of the descriptor passed as name (any kind).
// The caller owns and closes it.
func (il *InheritedListeners) File(name string) (*os.File, error) {
	f, err := il.lookup(name)
	if err != nil {
		return nil, err
	}
	nfd, err := fdutil.Dup(f)
	if err != nil {
		return nil, fmt.Errorf("handoff: inherited %q: %w", name, err)
	}
	return os.NewFile(uintptr(nfd), name), nil
}

// Close closes the set's own copies. Listeners and files already returned
// stay open.
func (il *InheritedListeners) Close() error {
	il.mu.Lock()
	defer il.mu.Unlock()
	var first error
	for _, n := range il.names {
		if err := il.files[n].Close(); err != nil && first == nil {
			first = err
		}
	}
	il.files, il.names = nil, nil
	return first
}

// add takes ownership of f under name.
func (il *InheritedListeners) add(name string, f *os.File) error {
	il.mu.Lock()
	defer il.mu.Unlock()
	if _, dup := il.files[name]; dup {
		return fmt.Errorf("handoff: listener name %q passed twice", name)
	}
	il.files[name] = f
	il.names = append(il.names, name)
	return nil
}

// dupFDs returns close-on-exec duplicates of every descriptor, in order.
func (il *InheritedListeners) dupFDs() (names []string, fds []int, err error) {
	il.mu.Lock()
	defer il.mu.Unlock()
	for _, n := range il.names {
		nfd, err := fdutil.Dup(il.files[n])
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return nil, nil, fmt.Errorf("handoff: inherited %q: %w", n, err)
		}
		names, fds = append(names, n), append(fds, nfd)
	}
	return names, fds, nil
}

func sockType(f *os.File) (int, error) {
	var typ int
	err := fdutil.Control(f, func(fd int) error {
		var err error
		typ, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		return err
	})
	return typ, err
}

func kindErr(typ int, err error) error {
	if err != nil {
		return fmt.Errorf("not a socket: %w", err)
	}
	switch typ {
	case unix.SOCK_STREAM:
		return fmt.Errorf("it is a stream socket; use Listener")
	case unix.SOCK_DGRAM:
		return fmt.Errorf("it is a datagram socket; use PacketConn")
	}
	return fmt.Errorf("socket type %d", typ)
}

// bind binds addr (a Config.Listen address) and keeps a duplicate of its
// descriptor under name, as if it had been inherited. The bound socket
// itself is closed (a unix one without unlinking its path).
func (il *InheritedListeners) bind(name, addr string) error {
	sock, err := listenAddr(addr)
	if err != nil {
		return fmt.Errorf("handoff: listener %q: %w", name, err)
	}
	if u, ok := sock.(interface{ SetUnlinkOnClose(bool) }); ok {
		u.SetUnlinkOnClose(false)
	}
	defer sock.(io.Closer).Close()
	fd, err := fdutil.Dup(sock.(syscall.Conn))
	if err != nil {
		return fmt.Errorf("handoff: listener %q: %w", name, err)
	}
	if err := il.add(name, os.NewFile(uintptr(fd), name)); err != nil {
		unix.Close(fd)
		return err
	}
	return nil
}
