package handoff

import (
	"context"
	"errors"
	"net"
	"os"
)

var errNotYet = errors.New("handoff: not implemented yet")

// Supervisor holds the listeners and drives handoffs.
type Supervisor struct{ cfg SupervisorConfig }

// NamedFile is a listener descriptor with its name.
type NamedFile struct {
	Name string
	File *os.File
}

func NewSupervisor(cfg SupervisorConfig) (*Supervisor, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Supervisor{cfg: cfg}, nil
}
func (s *Supervisor) AddListener(name string, l net.Listener) error     { return errNotYet }
func (s *Supervisor) AddPacketConn(name string, c net.PacketConn) error { return errNotYet }
func (s *Supervisor) AddFile(name string, f *os.File) error             { return errNotYet }
func (s *Supervisor) ColdStart(ctx context.Context, spec SpawnSpec) (*os.Process, error) {
	return nil, errNotYet
}
func (s *Supervisor) ResumeFromJournal(ctx context.Context) error { return errNotYet }
func (s *Supervisor) PerformHandoff(ctx context.Context, spec SpawnSpec) (HandoffOutcome, error) {
	return HandoffOutcome{}, errNotYet
}
func (s *Supervisor) Adopt(ctx context.Context, pid int, spec SpawnSpec) error { return errNotYet }
func (s *Supervisor) Status() Status                                           { return Status{} }
func (s *Supervisor) IncumbentExits() <-chan IncumbentExit                     { return nil }
func (s *Supervisor) ListenerFiles() ([]NamedFile, error)                      { return nil, errNotYet }
func (s *Supervisor) Stop(ctx context.Context) error                           { return errNotYet }
func (s *Supervisor) Close() error                                             { return nil }
