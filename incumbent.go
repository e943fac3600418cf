package handoff

import "context"

// Incumbent is the serving daemon's side of the control channel.
type Incumbent struct{}

func BindColdStart(controlSocket string, lock *DataDirLock) (*Incumbent, error) {
	return nil, errNotYet
}
func (i *Incumbent) SetBuildID(id string)                         {}
func (i *Incumbent) Serve(ctx context.Context, d Drainable) error { return errNotYet }
func (i *Incumbent) Close() error                                 { return nil }
