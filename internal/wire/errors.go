package wire

import (
	"errors"
	"fmt"
)

// Errors of the wire layer. Every decoding error also matches ErrProtocol.
var (
	ErrProtocol        = errors.New("handoff: protocol violation")
	ErrFrameTooLarge   = fmt.Errorf("%w: frame too large", ErrProtocol)
	ErrTruncated       = fmt.Errorf("%w: truncated frame", ErrProtocol)
	ErrMalformed       = fmt.Errorf("%w: malformed message", ErrProtocol)
	ErrUnknownVersion  = fmt.Errorf("%w: unknown protocol version", ErrProtocol)
	ErrUnknownType     = fmt.Errorf("%w: unknown message type", ErrProtocol)
	ErrVersionMismatch = errors.New("handoff: no common protocol version")
	ErrPeerClosed      = errors.New("handoff: peer closed the control channel")
	ErrTimeout         = errors.New("handoff: timed out")
	// ErrBadControlData: descriptors arrived truncated (MSG_CTRUNC), with
	// unparsable control data or with a control message other than SCM_RIGHTS.
	ErrBadControlData = fmt.Errorf("%w: bad control data", ErrProtocol)
	// ErrBrokenStream: an earlier frame failed half-way, so the byte
	// stream is out of step and the Conn refuses to send (or receive) more.
	ErrBrokenStream = errors.New("handoff: control channel broken by a partial frame")
)
