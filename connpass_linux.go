//go:build linux

package handoff

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"syscall"

	"github.com/handoff-go/handoff/internal/crash"
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
	for i, pc := range conns {
		metas[i] = wire.ConnMeta{Listener: pc.Listener, State: pc.State}
	}
	fds := make([]int, 0, wire.MaxFDs)
	sent := 0
	for sent < len(conns) {
		end := wire.ConnBatchEnd(metas, sent)
		fds = fds[:0]
		for i := sent; i < end; i++ {
			fd, err := connFD(conns[i].Conn)
			if err != nil {
				return sent, fmt.Errorf("handoff: passed connection %d: %w", i, err)
			}
			fds = append(fds, fd)
		}
		if err := c.Send(wire.EncodeConns(metas[sent:end]), id, wire.WriteTimeout, fds...); err != nil {
			return sent, err
		}
		sent = end
	}
	return sent, nil
}

// connFD is c's descriptor. It stays valid after Control: a passed
// connection belongs to the library, and nothing else closes it.
func connFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T has no descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, err
	}
	return fd, nil
}

// rawConns are passed connections still as received: a descriptor and the
// frame's entry for each. Turning a descriptor into a net.Conn (dup, epoll
// registration) costs microseconds; a successor does it once it serves,
// so that it does not lengthen the accept gap.
type rawConns struct {
	metas []wire.ConnMeta
	fds   []int
}

// add takes the descriptors of one Conns frame; they are consumed (kept or
// closed) whatever the outcome.
func (r *rawConns) add(m wire.Conns, fds []int) error {
	metas, err := frameMetas(m, fds)
	if err != nil {
		return err
	}
	r.metas = append(r.metas, metas...)
	r.fds = append(r.fds, fds...)
	return nil
}

func (r *rawConns) count() int {
	if r == nil {
		return 0
	}
	return len(r.fds)
}

// take turns the first n (at most) into connections and forgets them. A
// descriptor that is no socket is closed and reported in err.
func (r *rawConns) take(n int) (out []PassedConn, err error) {
	if r == nil {
		return nil, nil
	}
	n = min(n, len(r.fds))
	out = make([]PassedConn, 0, n)
	for i := range n {
		f := os.NewFile(uintptr(r.fds[i]), "passed-conn")
		c, cerr := net.FileConn(f)
		f.Close()
		if cerr != nil {
			if err == nil {
				err = fmt.Errorf("handoff: passed connection on %s: %w", r.metas[i].Listener, cerr)
			}
			continue
		}
		out = append(out, PassedConn{Listener: r.metas[i].Listener, Conn: c, State: r.metas[i].State})
	}
	r.metas, r.fds = r.metas[n:], r.fds[n:]
	return out, err
}

// adoptBatch is how many passed connections a daemon is given at a time
// once it serves: the first are served while the rest arrive.
const adoptBatch = 256

// connStream receives the connections the supervisor passes on the
// handoff session after the successor's Commit: the successor serves
// already, so that taking them does not lengthen the accept gap.
type connStream struct {
	conn *wire.Conn
	id   string
	want int // Commit.Conns
}

func (c *connStream) count() int {
	if c == nil {
		return 0
	}
	return c.want
}

// close gives up on them: the supervisor's sends fail and it closes its
// copies.
func (c *connStream) close() {
	if c != nil {
		c.conn.Close()
	}
}

// each receives Conns frames until every connection arrived, calling fn
// with each batch (made net.Conns, at most adoptBatch), then closes the
// session. A connection that cannot be made a net.Conn is closed and
// logged.
func (c *connStream) each(fn func([]PassedConn), log *slog.Logger) error {
	if c == nil {
		return nil
	}
	defer c.conn.Close()
	got := 0
	var raw rawConns
	for got < c.want {
		f, err := c.conn.Recv(wire.DefaultLiveness)
		if err != nil {
			return fmt.Errorf("handoff: %d of the %d passed connections arrived: %w", got, c.want, err)
		}
		m, ok := f.Msg.(wire.Conns)
		if !ok || f.ID != c.id || got+len(f.FDs) > c.want {
			closeFDs(f.FDs)
			return wire.Violation("after the commit: %s frame for handoff %q with %d descriptors (%d of %d connections arrived)", f.Msg.Type(), f.ID, len(f.FDs), got, c.want)
		}
		if err := raw.add(m, f.FDs); err != nil {
			return err
		}
		got += raw.count()
		crash.Point("successor-after-conns")
		for raw.count() > 0 {
			batch, err := raw.take(adoptBatch)
			if err != nil && log != nil {
				log.Warn("handoff: a passed connection could not be served; closed", "err", err)
			}
			if len(batch) > 0 {
				fn(batch)
			}
		}
	}
	return nil
}

func (c *connStream) adoptInto(svc Service, log *slog.Logger) {
	if c.count() == 0 {
		return
	}
	cp, ok := svc.(ConnPasser)
	if !ok {
		log.Warn("handoff: connections were passed, but the service is no ConnPasser; closing them", "conns", c.count())
		c.close()
		return
	}
	if err := c.each(cp.AdoptConns, log); err != nil {
		log.Warn("handoff: not every passed connection arrived", "err", err)
	}
}

// pendingConns are passed connections a daemon serves once it serves.
type pendingConns interface {
	adoptInto(svc Service, log *slog.Logger)
	close()
	count() int
}

// readyConns are passed connections already made net.Conns (a cold start
// gets them so, before it serves).
type readyConns []PassedConn

func (c readyConns) count() int { return len(c) }
func (c readyConns) close()     { closeConns(c) }

func (c readyConns) adoptInto(svc Service, log *slog.Logger) {
	if len(c) == 0 {
		return
	}
	if cp, ok := svc.(ConnPasser); ok {
		cp.AdoptConns(c)
		return
	}
	log.Warn("handoff: connections were passed, but the service is no ConnPasser; closing them", "conns", len(c))
	c.close()
}

// connsFromFrame turns a received Conns frame into connections. The
// frame's descriptors are consumed whatever the outcome.
func connsFromFrame(m wire.Conns, fds []int) ([]PassedConn, error) {
	metas, err := frameMetas(m, fds)
	if err != nil {
		return nil, err
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
		out = append(out, PassedConn{Listener: metas[i].Listener, Conn: c, State: metas[i].State})
	}
	return out, firstErr
}

// frameMetas decodes a Conns frame's entries, one per descriptor; on an
// error the descriptors are closed.
func frameMetas(m wire.Conns, fds []int) ([]wire.ConnMeta, error) {
	metas, err := m.Decode()
	if err != nil {
		closeFDs(fds)
		return nil, wire.Violation("%v", err)
	}
	if len(metas) != len(fds) {
		closeFDs(fds)
		return nil, wire.Violation("conns frame with %d entries and %d descriptors", len(metas), len(fds))
	}
	return metas, nil
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
