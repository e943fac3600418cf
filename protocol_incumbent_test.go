//go:build linux

package handoff

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/wire"
)

// newTestIncumbent binds an Incumbent on a fresh control socket with a
// held lock.
func newTestIncumbent(t *testing.T) (*Incumbent, string) {
	t.Helper()
	dir := shortDir(t)
	lock, err := AcquireDataDirLock(dir)
	must(t, err)
	t.Cleanup(func() { lock.Release() })
	path := filepath.Join(dir, "ctl.sock")
	inc, err := newIncumbent(path, lock, "test")
	must(t, err)
	t.Cleanup(func() { inc.Close() })
	return inc, path
}

// takePath binds another socket over path, as a successor would.
func takePath(t *testing.T, path string) {
	t.Helper()
	ln, _, err := bindControlSocket(path)
	must(t, err)
	t.Cleanup(func() { ln.Close() })
}

// Serve, waiting for the next supervisor (one session done, back in
// accept), returns when its context is cancelled. The context is cancelled
// only once Serve has answered a session, so the cancellation must reach a
// blocked accept: an already-cancelled context would not test that.
func TestServeReturnsWhenCancelledWhileWaiting(t *testing.T) {
	checkLeaks(t)
	inc, path := newTestIncumbent(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- inc.Serve(ctx, nil) }()
	// A probe: read the incumbent's Hello and hang up, as a supervisor
	// checking who answers does.
	nc, err := net.DialTimeout("unix", path, 10*time.Second)
	must(t, err)
	conn := wire.NewConn(nc.(*net.UnixConn))
	f, err := conn.Recv(10 * time.Second)
	conn.Close()
	if err != nil {
		t.Fatalf("hello from Serve: %v", err)
	}
	if h, ok := f.Msg.(wire.Hello); !ok || h.Role != wire.RoleIncumbent {
		t.Fatalf("got %#v, want the incumbent's hello", f.Msg)
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned after a probe: %v", err)
	default:
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve: %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve ignored the cancellation of its context")
	}
}

// A control socket taken back after the context was cancelled carries the
// cancellation: accepting on it returns at once.
func TestReclaimedControlSocketKeepsCancellation(t *testing.T) {
	inc, path := newTestIncumbent(t)
	takePath(t, path)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	must(t, inc.reclaimPath(ctx))
	if !ownsPath(path, inc.ino) {
		t.Fatal("the path was not taken back")
	}
	_, err := inc.ln.AcceptUnix()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("accept on the reclaimed socket: %v, want a timeout", err)
	}
}

// After Close nothing binds the control socket path again.
func TestReclaimAfterCloseBindsNothing(t *testing.T) {
	inc, path := newTestIncumbent(t)
	must(t, inc.Close())
	must(t, os.Remove(path))
	must(t, inc.reclaimPath(context.Background()))
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the path was bound again after Close: %v", err)
	}
}
