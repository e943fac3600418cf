//go:build linux

package handoff

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-go/handoff/internal/proc"
	"github.com/handoff-go/handoff/internal/wire"
)

// bindControlSocket listens on path without ever leaving it missing: it
// binds a temporary name beside it, makes it 0600 and renames it over path.
// The listener never unlinks the path on Close: the path changes hands from
// incumbent to successor.
func bindControlSocket(path string) (*net.UnixListener, uint64, error) {
	p, err := prepareControlSocket(path)
	if err != nil {
		return nil, 0, err
	}
	if err := p.publish(); err != nil {
		return nil, 0, err
	}
	return p.ln, p.ino, nil
}

// preparedSocket is a control socket bound at its temporary name.
type preparedSocket struct {
	path, tmp string
	ln        *net.UnixListener
	ino       uint64
}

func prepareControlSocket(path string) (*preparedSocket, error) {
	if path == "" {
		return nil, errors.New("handoff: control socket path is empty")
	}
	prefix := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	removeStaleTemps(prefix)
	tmp := prefix + strconv.Itoa(os.Getpid())
	os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("handoff: bind control socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	p := &preparedSocket{path: path, tmp: tmp, ln: ln}
	if err := os.Chmod(tmp, 0o600); err != nil {
		p.discard()
		return nil, fmt.Errorf("handoff: chmod control socket: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(tmp, &st); err != nil {
		p.discard()
		return nil, fmt.Errorf("handoff: stat control socket: %w", err)
	}
	p.ino = st.Ino
	return p, nil
}

// removeStaleTemps removes the temporary control sockets (prefix<pid>)
// of processes that are gone: a successor that exited before its commit
// may leave its own behind.
func removeStaleTemps(prefix string) {
	dir, base := filepath.Split(prefix)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), base)
		if !ok {
			continue
		}
		if pid, err := strconv.Atoi(rest); err == nil && pid > 0 && pid != os.Getpid() && !proc.Alive(pid) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// publish renames the socket over its path.
func (p *preparedSocket) publish() error {
	if err := os.Rename(p.tmp, p.path); err != nil {
		p.discard()
		return fmt.Errorf("handoff: move control socket into place at %s: %w", p.path, err)
	}
	return nil
}

// discard closes the socket and removes its temporary name.
func (p *preparedSocket) discard() {
	p.ln.Close()
	os.Remove(p.tmp)
}

// ownsPath reports whether path is still the socket file with inode ino.
func ownsPath(path string, ino uint64) bool {
	var st unix.Stat_t
	return unix.Stat(path, &st) == nil && st.Ino == ino
}

// heartbeater sends Heartbeat frames on conn every interval until stopped.
type heartbeater struct {
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

func startHeartbeats(conn *wire.Conn, id string, interval time.Duration) *heartbeater {
	h := &heartbeater{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-t.C:
				if err := conn.Send(wire.Heartbeat{}, id, wire.WriteTimeout); err != nil {
					return
				}
			}
		}
	}()
	return h
}

// Stop ends the heartbeats and waits for the goroutine. Idempotent.
func (h *heartbeater) Stop() {
	if h == nil {
		return
	}
	h.once.Do(func() { close(h.stop) })
	<-h.done
}

func hello(role, buildID string) wire.Hello {
	return wire.Hello{Role: role, PID: os.Getpid(), BuildID: buildID, MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion}
}
