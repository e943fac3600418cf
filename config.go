package handoff

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// DefaultShutdownTimeout bounds Service.Shutdown when Config.ShutdownTimeout is zero.
const DefaultShutdownTimeout = 30 * time.Second

// Config is what Run needs from a daemon: where its data lives, how to
// open it on its listeners, and what to bind when started by hand. Only
// DataDir and Open are required.
type Config struct {
	// DataDir is the data directory. Run holds its lock (flock on
	// DataDir/.handoff.lock) whenever this process may write.
	DataDir string

	// Prepare, if set, readies what can be readied without writing: load
	// the last snapshot, build indexes, warm caches. Run calls it before
	// Open in every role, without the data-directory lock, so it must only
	// read. A successor runs it after its handshake and before the
	// incumbent is asked to drain, with heartbeats running and ctx bounded
	// by the handoff's deadline: its time is not part of the pause clients
	// see. Open then only catches up with what the incumbent wrote since
	// (see Drainable). An error aborts the handoff before the incumbent
	// was touched.
	Prepare func(ctx context.Context) error

	// Open opens the daemon's state on the listeners and returns the
	// Service, not serving yet. A successor calls it after the lock is
	// taken, with heartbeats running; its errors abort the handoff. Open
	// runs inside the pause: with Prepare set, it should only apply what
	// changed since Prepare ran.
	Open func(ctx context.Context, ls *InheritedListeners) (Service, error)

	// Listen maps listener names to the address to bind when that name was
	// not inherited (started by hand, or a name the supervisor does not
	// pass): "host:port" (TCP), "unix:/path", "udp:host:port",
	// "unixgram:/path", as in the supervisor's [[listeners]].
	Listen map[string]string

	// ControlSocket is where this daemon answers the supervisor. Empty: the
	// path the supervisor passes in the environment (its control_socket),
	// or, started by hand, DataDir/.handoff.sock.
	ControlSocket string

	// BuildID is announced to the supervisor (default: the module's VCS
	// revision or version).
	BuildID string

	// Logger receives Run's logs; nil discards them.
	Logger *slog.Logger

	// ShutdownTimeout bounds Service.Shutdown (DefaultShutdownTimeout).
	ShutdownTimeout time.Duration
}

// Service is the daemon as Run drives it: a Drainable that can start
// serving and shut down. A Service may also have a method
// Readiness() ReadinessSnapshot, which a successor's Ready then reports
// (without it: healthy, with no revisions to compare).
type Service interface {
	Drainable
	// Start begins serving on the listeners and returns. Run calls it
	// once: at a cold start, or for a successor after the supervisor
	// accepted its Ready.
	Start() error
	// Shutdown ends the process's service: after a committed handoff
	// (drain and seal already ran) or when Run's ctx ended (finish
	// in-flight work and make it durable: the next start must find it).
	// The data-directory lock is held, if at all, until it returns.
	Shutdown(ctx context.Context) error
}

func (c *Config) validate() error {
	if c.DataDir == "" {
		return errors.New("handoff: Config.DataDir is empty")
	}
	if c.Open == nil {
		return errors.New("handoff: Config.Open is nil")
	}
	if c.ShutdownTimeout < 0 {
		return fmt.Errorf("handoff: Config.ShutdownTimeout is negative (%v)", c.ShutdownTimeout)
	}
	for name, addr := range c.Listen {
		if name == "" {
			return fmt.Errorf("handoff: Config.Listen has an empty name (address %q)", addr)
		}
		if _, _, err := splitAddr(addr); err != nil {
			return fmt.Errorf("handoff: Config.Listen[%q]: %w", name, err)
		}
	}
	return nil
}
