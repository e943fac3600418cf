package handoff

import "context"

type HandshookSuccessor struct{}
type BegunSuccessor struct{}
type HeartbeatGuard struct{}

func (s *Successor) Handshake(buildID string) (*HandshookSuccessor, error) { return nil, errNotYet }
func (s *HandshookSuccessor) WaitForBegin(ctx context.Context) (*BegunSuccessor, error) {
	return nil, errNotYet
}
func (s *BegunSuccessor) Listeners() *InheritedListeners   { return nil }
func (s *BegunSuccessor) StartHeartbeats() *HeartbeatGuard { return nil }
func (g *HeartbeatGuard) Stop()                            {}
func (s *BegunSuccessor) AnnounceAndBind(r ReadinessSnapshot, controlSocket string, lock *DataDirLock) (*Incumbent, error) {
	return nil, errNotYet
}
