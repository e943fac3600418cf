//go:build linux

package handoff

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"syscall"

	"github.com/handoff-go/handoff/internal/fdutil"
	"github.com/handoff-go/handoff/internal/wire"
)

// connMargin is the number of descriptors a process keeps free for its
// own work when it states its room for passed connections.
const connMargin = 256

// connRoom is how many passed connections this process can take.
func connRoom() int { return fdutil.Room(connMargin) }

// sendConns sends conns in Conns frames (wire.ConnBatchEnd sizes them).
// The descriptors stay open here: the kernel gives the receiver its own.
// It returns how many were sent.
func sendConns(c *wire.Conn, id string, conns []PassedConn) (int, error) {
	metas := make([]wire.ConnMeta, len(conns))
	fds := make([]int, len(conns))
	for i, pc := range conns {
		sc, ok := pc.Conn.(syscall.Conn)
		if !ok {
			return 0, fmt.Errorf("handoff: passed connection %d (%T) has no descriptor", i, pc.Conn)
		}
		rc, err := sc.SyscallConn()
		if err != nil {
			return 0, fmt.Errorf("handoff: passed connection %d: %w", i, err)
		}
		// The descriptor stays valid after Control: the conn belongs to
		// the library now, and nothing else closes it.
		if err := rc.Control(func(f uintptr) { fds[i] = int(f) }); err != nil {
			return 0, fmt.Errorf("handoff: passed connection %d: %w", i, err)
		}
		metas[i] = wire.ConnMeta{Listener: pc.Listener, State: pc.State}
	}
	sent := 0
	for sent < len(conns) {
		end := wire.ConnBatchEnd(metas, sent)
		if err := c.Send(wire.Conns{Conns: metas[sent:end]}, id, wire.WriteTimeout, fds[sent:end]...); err != nil {
			return sent, err
		}
		sent = end
	}
	return sent, nil
}

// connsFromFrame turns a received Conns frame into connections. The
// frame's descriptors are consumed whatever the outcome.
func connsFromFrame(m wire.Conns, fds []int) ([]PassedConn, error) {
	if len(fds) != len(m.Conns) {
		for _, fd := range fds {
			closeFD(fd)
		}
		return nil, wire.Violation("conns frame with %d entries and %d descriptors", len(m.Conns), len(fds))
	}
	out := make([]PassedConn, 0, len(fds))
	var firstErr error
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "passed-conn")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("handoff: passed connection %d: %w", i, err)
			}
			continue
		}
		out = append(out, PassedConn{Listener: m.Conns[i].Listener, Conn: c, State: m.Conns[i].State})
	}
	return out, firstErr
}

// closeConns closes conns: only this process's descriptors, never
// shutdown(2), which would end the connection for whoever serves it.
func closeConns(conns []PassedConn) {
	for _, pc := range conns {
		if pc.Conn != nil {
			pc.Conn.Close()
		}
	}
}

// validConns drops (and closes) the connections that cannot travel: no
// descriptor or too much state. Each is logged.
func validConns(conns []PassedConn, log *slog.Logger) []PassedConn {
	out := conns[:0]
	for _, pc := range conns {
		_, isSys := pc.Conn.(syscall.Conn)
		switch {
		case pc.Conn == nil:
			continue
		case !isSys:
			log.Warn("handoff: a connection without a descriptor cannot be passed; closed", "type", fmt.Sprintf("%T", pc.Conn), "remote", pc.Conn.RemoteAddr())
			pc.Conn.Close()
			continue
		case len(pc.State) > MaxConnState:
			log.Warn("handoff: connection state too large to pass; closed", "bytes", len(pc.State), "max", MaxConnState, "remote", pc.Conn.RemoteAddr())
			pc.Conn.Close()
			continue
		}
		out = append(out, pc)
	}
	return out
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		closeFD(fd)
	}
}
