//go:build !linux

package handoff

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
)

// Run, on systems other than Linux, runs the daemon without handoff: it
// binds Config.Listen, calls Open and Start, serves until ctx ends and
// shuts the service down. Nothing is inherited, no lock is taken, no
// control socket is bound; it logs that once. So a cross-platform daemon
// written against Run compiles and runs everywhere.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	log.Info("handoff: not supported on " + runtime.GOOS + ": running without handoff (a plain start, no lock, no control socket)")
	il := &InheritedListeners{socks: map[string]any{}}
	for _, name := range slices.Sorted(maps.Keys(cfg.Listen)) {
		sock, err := listenAddr(cfg.Listen[name])
		if err != nil {
			il.Close()
			return fmt.Errorf("handoff: listener %q: %w", name, err)
		}
		il.names = append(il.names, name)
		il.socks[name] = sock
	}
	svc, err := cfg.Open(ctx, il)
	if err != nil {
		il.Close()
		return fmt.Errorf("handoff: open: %w", err)
	}
	if svc == nil {
		il.Close()
		return errors.New("handoff: Config.Open returned a nil Service and no error")
	}
	if err := svc.Start(); err != nil {
		return fmt.Errorf("handoff: start: %w", err)
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	if err := svc.Shutdown(sctx); err != nil {
		return fmt.Errorf("handoff: shutdown: %w", err)
	}
	return nil
}

// InheritedListeners holds the sockets of a process by name. On this
// system nothing is inherited: it holds what Run bound from Config.Listen.
type InheritedListeners struct {
	mu    sync.Mutex
	names []string
	socks map[string]any // net.Listener or net.PacketConn
}

// Names returns the names in order.
func (il *InheritedListeners) Names() []string {
	il.mu.Lock()
	defer il.mu.Unlock()
	return slices.Clone(il.names)
}

func (il *InheritedListeners) lookup(name string) (any, error) {
	il.mu.Lock()
	defer il.mu.Unlock()
	s, ok := il.socks[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q (have %v)", ErrNotInherited, name, il.names)
	}
	return s, nil
}

// Listener returns the stream listener bound as name.
func (il *InheritedListeners) Listener(name string) (net.Listener, error) {
	s, err := il.lookup(name)
	if err != nil {
		return nil, err
	}
	l, ok := s.(net.Listener)
	if !ok {
		return nil, fmt.Errorf("handoff: %q is not a stream socket", name)
	}
	return l, nil
}

// PacketConn returns the datagram socket bound as name.
func (il *InheritedListeners) PacketConn(name string) (net.PacketConn, error) {
	s, err := il.lookup(name)
	if err != nil {
		return nil, err
	}
	c, ok := s.(net.PacketConn)
	if !ok {
		return nil, fmt.Errorf("handoff: %q is not a datagram socket", name)
	}
	return c, nil
}

// File is not supported on this system: nothing is inherited.
func (il *InheritedListeners) File(name string) (*os.File, error) {
	return nil, fmt.Errorf("%w: %q (descriptors are not inherited on %s)", ErrNotInherited, name, runtime.GOOS)
}

// Close closes every socket the set holds.
func (il *InheritedListeners) Close() error {
	il.mu.Lock()
	defer il.mu.Unlock()
	var errs []error
	for _, n := range il.names {
		if c, ok := il.socks[n].(interface{ Close() error }); ok {
			errs = append(errs, c.Close())
		}
	}
	il.names, il.socks = nil, map[string]any{}
	return errors.Join(errs...)
}
