package supervisor

import (
	"context"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/wire"
)

// connMargin is the number of descriptors the supervisor keeps free for
// its own work when it bounds how many connections may be passed.
const connMargin = 256

// heldConns are the supervisor's copies of passed connections: one
// descriptor per entry of metas.
type heldConns struct {
	metas []wire.ConnMeta
	fds   []int
}

func (h *heldConns) count() int { return len(h.fds) }

func (h *heldConns) add(metas []wire.ConnMeta, fds []int) {
	h.metas = append(h.metas, metas...)
	h.fds = append(h.fds, fds...)
}

// take moves o's connections to h.
func (h *heldConns) take(o *heldConns) {
	h.add(o.metas, o.fds)
	o.metas, o.fds = nil, nil
}

// close closes our copies (never shutdown(2): another process serves
// the connections).
func (h *heldConns) close() {
	closeFDs(h.fds)
	h.metas, h.fds = nil, nil
}

// connsSocket makes the socketpair a cold-started daemon receives held
// connections on: it returns the child's end and starts sending on ours.
// The frames go out on a goroutine (the child reads them while it starts),
// then our end closes; our copies close once sent, or after timeout.
func (s *Supervisor) connsSocket(h *heldConns, timeout time.Duration) (childFD int, start func(), err error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, nil, err
	}
	f := os.NewFile(uintptr(pair[0]), "held-conns")
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(pair[1])
		return -1, nil, err
	}
	conn := wire.NewConn(nc.(*net.UnixConn))
	conn.SetVersion(wire.ConnsVersion)
	held := *h
	*h = heldConns{}
	start = func() {
		go func() {
			defer held.close()
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			for i := 0; i < len(held.fds); {
				j := wire.ConnBatchEnd(held.metas, i)
				if err := conn.Send(wire.EncodeConns(held.metas[i:j]), "", time.Until(deadlineOf(ctx)), held.fds[i:j]...); err != nil {
					s.log.Error("handoff: passing the held connections to the cold-started daemon failed", "sent", i, "of", len(held.fds), "err", err)
					return
				}
				i = j
			}
			s.log.Info("handoff: passed the held connections to the cold-started daemon", "conns", len(held.fds))
		}()
	}
	return pair[1], start, nil
}

func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

func connsEnv(fd int) string { return wire.EnvConnsFD + "=" + strconv.Itoa(fd) }
