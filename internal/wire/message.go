package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
)

// Protocol versions this build speaks. Hello and HelloAck are always framed
// with HandshakeVersion; every later frame carries the negotiated version.
const (
	MinVersion       uint16 = 1
	MaxVersion       uint16 = 3
	HandshakeVersion uint16 = 1
)

// WarmUpVersion is the first version with the successor's warm-up: from
// it on, a successor sends ReadyToBegin after its handshake and the
// supervisor asks the incumbent to drain only once it arrived.
const WarmUpVersion uint16 = 2

// ConnsVersion is the first version that passes established connections:
// the successor states its room in ReadyToBegin, the supervisor bounds the
// incumbent with PrepareHandoff.MaxConns, and Conns frames carry them.
const ConnsVersion uint16 = 3

// MaxConnState bounds one connection's state blob.
const MaxConnState = 16 << 10

// Type names a message on the wire.
type Type string

// The message types.
const (
	TypeHello            Type = "hello"
	TypeHelloAck         Type = "hello_ack"
	TypePrepareHandoff   Type = "prepare_handoff"
	TypeDrained          Type = "drained"
	TypeDrainFailed      Type = "drain_failed"
	TypeSealRequest      Type = "seal_request"
	TypeSealComplete     Type = "seal_complete"
	TypeSealFailed       Type = "seal_failed"
	TypeReadyToBegin     Type = "ready_to_begin"
	TypeBegin            Type = "begin"
	TypeReady            Type = "ready"
	TypeCommit           Type = "commit"
	TypeAbort            Type = "abort"
	TypeResumeAfterAbort Type = "resume_after_abort"
	TypeResumed          Type = "resumed"
	TypeHeartbeat        Type = "heartbeat"
	TypeListenersRequest Type = "listeners_request"
	TypeListeners        Type = "listeners"
	TypeError            Type = "error"
	TypeConns            Type = "conns"
)

// Message is one of the typed messages below.
type Message interface {
	// Type names the message on the wire (the envelope's "type").
	Type() Type
}

// Roles in Hello.
const (
	RoleIncumbent  = "incumbent"
	RoleSuccessor  = "successor"
	RoleSupervisor = "supervisor"
)

// Hello opens a session; the daemon side sends it first.
type Hello struct {
	Role       string `json:"role"`        // RoleIncumbent, RoleSuccessor or RoleSupervisor
	PID        int    `json:"pid"`         // the sender's process id
	BuildID    string `json:"build_id"`    // the sender's build, for logs and status
	MinVersion uint16 `json:"min_version"` // lowest protocol version the sender speaks
	MaxVersion uint16 `json:"max_version"` // highest protocol version the sender speaks
}

// HelloAck answers Hello with the chosen version; the frame's id is the handoff id.
type HelloAck struct {
	Version    uint16 `json:"version"`               // the negotiated version every later frame carries
	DeadlineMS int64  `json:"deadline_ms,omitempty"` // the handoff's overall deadline, in milliseconds
	LivenessMS int64  `json:"liveness_ms,omitempty"` // longest silence the supervisor tolerates, in milliseconds
	// ExpectConns (to a successor, version 3 on) is about how many
	// established connections the incumbent may pass: the successor makes
	// room for them in its descriptor table while it warms up.
	ExpectConns int `json:"expect_conns,omitempty"`
}

// PrepareHandoff asks the incumbent to drain.
type PrepareHandoff struct {
	DeadlineMS   int64 `json:"deadline_ms"`    // the handoff's remaining deadline, in milliseconds
	DrainGraceMS int64 `json:"drain_grace_ms"` // how long Drain may take, in milliseconds
	// MaxConns is how many established connections the incumbent may
	// pass (version 3 on; 0: none, close them as before).
	MaxConns int `json:"max_conns,omitempty"`
}

// Drained reports a finished drain.
type Drained struct {
	OpenConnsRemaining int   `json:"open_conns_remaining"`   // DrainReport.OpenConnsRemaining
	AcceptClosed       bool  `json:"accept_closed"`          // DrainReport.AcceptClosed
	TookNS             int64 `json:"took_ns"`                // how long Drain took, in nanoseconds
	PassedConns        int   `json:"passed_conns,omitempty"` // connections sent in Conns frames before this one
}

// DrainFailed reports a failed drain; the incumbent still holds its lock.
type DrainFailed struct {
	Reason string `json:"reason"` // Drain's error text
}

// SealRequest asks the incumbent to seal and release the lock.
type SealRequest struct{}

// SealComplete reports a seal; the lock was released before it was sent.
type SealComplete struct {
	LastRevisionPerShard []uint64 `json:"last_revision_per_shard"` // SealReport.LastRevisionPerShard
	DataDirFingerprint   string   `json:"data_dir_fingerprint"`    // SealReport.DataDirFingerprint
	TookNS               int64    `json:"took_ns"`                 // how long Seal took, in nanoseconds
}

// SealFailed reports a failed seal; the incumbent kept its lock.
type SealFailed struct {
	Reason string `json:"reason"` // Seal's error text, or why sealing was refused
}

// ReadyToBegin ends the successor's warm-up (version 2 on): it prepared
// what it could without the lock and waits for Begin. The supervisor
// starts the incumbent's drain only after it.
type ReadyToBegin struct {
	WarmUpNS int64 `json:"warm_up_ns"` // how long the warm-up took, in nanoseconds
	// ConnRoom is how many passed connections the successor can take
	// within its descriptor limit (version 3 on).
	ConnRoom int `json:"conn_room,omitempty"`
}

// Begin tells the successor the lock is free: take it and open the data.
type Begin struct{}

// Ready is the successor's readiness snapshot.
type Ready struct {
	ListeningOn                []string `json:"listening_on"`                  // ReadinessSnapshot.ListeningOn
	HealthzOK                  bool     `json:"healthz_ok"`                    // ReadinessSnapshot.HealthzOK
	AdvertisedRevisionPerShard []uint64 `json:"advertised_revision_per_shard"` // ReadinessSnapshot.AdvertisedRevisionPerShard
	OpenTookNS                 int64    `json:"open_took_ns"`                  // from Begin to Ready, in nanoseconds
}

// Commit: to the successor, Ready was accepted; to the incumbent, exit.
type Commit struct {
	// Conns (to the successor, version 3 on) is how many passed
	// connections follow on this session, in Conns frames: the supervisor
	// sends them once the successor serves, out of the accept gap.
	Conns int `json:"conns,omitempty"`
}

// Abort tells the successor to exit without serving.
type Abort struct {
	Reason string `json:"reason"` // why the handoff was aborted
}

// ResumeAfterAbort tells the incumbent to retake the lock and serve again.
type ResumeAfterAbort struct {
	Reason string `json:"reason"` // why the handoff was aborted
}

// Resumed is the incumbent's answer to ResumeAfterAbort.
type Resumed struct {
	Error string `json:"error,omitempty"` // empty on success, else why the incumbent could not resume
}

// Heartbeat keeps the receiver's liveness timer fed.
type Heartbeat struct{}

// ListenersRequest asks the incumbent for duplicates of its inherited listeners.
type ListenersRequest struct{}

// Listeners answers ListenersRequest; the frame carries one descriptor per name.
type Listeners struct {
	Names []string `json:"names"` // one name per descriptor, in the frame's descriptor order
}

// Conns carries established client connections (version 3 on), one
// descriptor per entry in the frame's descriptor order: from the incumbent
// to the supervisor after its drain, from the supervisor to the successor
// before Begin, or to a cold-started daemon over HANDOFF_CONNS_FD.
//
// The entries are packed, not one JSON object each: ten thousand
// connections pass inside the accept gap, and encoding/json spends about a
// microsecond per object on each side of each hop. Entries holds, per
// connection, the uvarint index of its listener in Listeners, the uvarint
// length of its state, and the state.
type Conns struct {
	Listeners []string `json:"listeners"`         // the listener addresses the entries refer to
	Entries   []byte   `json:"entries,omitempty"` // packed entries (base64 in JSON)
}

// EncodeConns packs metas into a Conns message.
func EncodeConns(metas []ConnMeta) Conns {
	var m Conns
	index := map[string]uint64{}
	size := 0
	for _, c := range metas {
		size += 2 + len(c.State)
	}
	m.Entries = make([]byte, 0, size)
	for _, c := range metas {
		i, ok := index[c.Listener]
		if !ok {
			i = uint64(len(m.Listeners))
			index[c.Listener] = i
			m.Listeners = append(m.Listeners, c.Listener)
		}
		m.Entries = binary.AppendUvarint(m.Entries, i)
		m.Entries = binary.AppendUvarint(m.Entries, uint64(len(c.State)))
		m.Entries = append(m.Entries, c.State...)
	}
	return m
}

// Decode unpacks the entries. A listener index out of range, a state over
// MaxConnState or a truncated entry is an error naming the entry.
func (m Conns) Decode() ([]ConnMeta, error) {
	var out []ConnMeta
	b := m.Entries
	for len(b) > 0 {
		i, n := binary.Uvarint(b)
		if n <= 0 {
			return nil, fmt.Errorf("conns entry %d: bad listener index", len(out))
		}
		b = b[n:]
		if i >= uint64(len(m.Listeners)) {
			return nil, fmt.Errorf("conns entry %d: listener %d of %d", len(out), i, len(m.Listeners))
		}
		l, n := binary.Uvarint(b)
		if n <= 0 {
			return nil, fmt.Errorf("conns entry %d: bad state length", len(out))
		}
		b = b[n:]
		if l > MaxConnState {
			return nil, fmt.Errorf("conns entry %d: state of %d bytes, at most %d", len(out), l, MaxConnState)
		}
		if l > uint64(len(b)) {
			return nil, fmt.Errorf("conns entry %d: state of %d bytes, %d left", len(out), l, len(b))
		}
		c := ConnMeta{Listener: m.Listeners[i]}
		if l > 0 {
			c.State = bytes.Clone(b[:l])
		}
		b = b[l:]
		out = append(out, c)
	}
	return out, nil
}

// ConnMeta describes one passed connection.
type ConnMeta struct {
	Listener string // address of the listener that accepted it
	State    []byte // the daemon's opaque state
}

// Error tells the peer why the session is being closed.
type Error struct {
	Reason string `json:"reason"` // human-readable, for logs
}

// Type returns TypeHello.
func (Hello) Type() Type { return TypeHello }

// Type returns TypeHelloAck.
func (HelloAck) Type() Type { return TypeHelloAck }

// Type returns TypePrepareHandoff.
func (PrepareHandoff) Type() Type { return TypePrepareHandoff }

// Type returns TypeDrained.
func (Drained) Type() Type { return TypeDrained }

// Type returns TypeDrainFailed.
func (DrainFailed) Type() Type { return TypeDrainFailed }

// Type returns TypeSealRequest.
func (SealRequest) Type() Type { return TypeSealRequest }

// Type returns TypeSealComplete.
func (SealComplete) Type() Type { return TypeSealComplete }

// Type returns TypeSealFailed.
func (SealFailed) Type() Type { return TypeSealFailed }

// Type returns TypeReadyToBegin.
func (ReadyToBegin) Type() Type { return TypeReadyToBegin }

// Type returns TypeBegin.
func (Begin) Type() Type { return TypeBegin }

// Type returns TypeReady.
func (Ready) Type() Type { return TypeReady }

// Type returns TypeCommit.
func (Commit) Type() Type { return TypeCommit }

// Type returns TypeAbort.
func (Abort) Type() Type { return TypeAbort }

// Type returns TypeResumeAfterAbort.
func (ResumeAfterAbort) Type() Type { return TypeResumeAfterAbort }

// Type returns TypeResumed.
func (Resumed) Type() Type { return TypeResumed }

// Type returns TypeHeartbeat.
func (Heartbeat) Type() Type { return TypeHeartbeat }

// Type returns TypeListenersRequest.
func (ListenersRequest) Type() Type { return TypeListenersRequest }

// Type returns TypeListeners.
func (Listeners) Type() Type { return TypeListeners }

// Type returns TypeConns.
func (Conns) Type() Type { return TypeConns }

// Type returns TypeError.
func (Error) Type() Type { return TypeError }

var factories = map[Type]func() Message{
	TypeHello:            func() Message { return &Hello{} },
	TypeHelloAck:         func() Message { return &HelloAck{} },
	TypePrepareHandoff:   func() Message { return &PrepareHandoff{} },
	TypeDrained:          func() Message { return &Drained{} },
	TypeDrainFailed:      func() Message { return &DrainFailed{} },
	TypeSealRequest:      func() Message { return &SealRequest{} },
	TypeSealComplete:     func() Message { return &SealComplete{} },
	TypeSealFailed:       func() Message { return &SealFailed{} },
	TypeReadyToBegin:     func() Message { return &ReadyToBegin{} },
	TypeBegin:            func() Message { return &Begin{} },
	TypeReady:            func() Message { return &Ready{} },
	TypeCommit:           func() Message { return &Commit{} },
	TypeAbort:            func() Message { return &Abort{} },
	TypeResumeAfterAbort: func() Message { return &ResumeAfterAbort{} },
	TypeResumed:          func() Message { return &Resumed{} },
	TypeHeartbeat:        func() Message { return &Heartbeat{} },
	TypeListenersRequest: func() Message { return &ListenersRequest{} },
	TypeListeners:        func() Message { return &Listeners{} },
	TypeError:            func() Message { return &Error{} },
	TypeConns:            func() Message { return &Conns{} },
}

// Types lists every message type, for tests and documentation.
func Types() []Type {
	out := make([]Type, 0, len(factories))
	for t := range factories {
		out = append(out, t)
	}
	return out
}

type envelope struct {
	Type Type            `json:"type"`
	ID   string          `json:"id,omitempty"`
	Body json.RawMessage `json:"body,omitempty"`
}

// Marshal encodes m with handoff id into a frame payload.
func Marshal(m Message, id string) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("handoff: encode %s: %w", m.Type(), err)
	}
	return json.Marshal(envelope{Type: m.Type(), ID: id, Body: body})
}

// Unmarshal decodes a frame payload. The returned message is a value (not a
// pointer) of one of the types above.
func Unmarshal(payload []byte) (Message, string, error) {
	var env envelope
	if err := strictDecode(payload, &env); err != nil {
		return nil, "", fmt.Errorf("%w: envelope: %w", ErrMalformed, err)
	}
	mk, ok := factories[env.Type]
	if !ok {
		return nil, "", fmt.Errorf("%w: %q", ErrUnknownType, env.Type)
	}
	p := mk()
	if len(env.Body) > 0 && !bytes.Equal(env.Body, []byte("null")) {
		if err := strictDecode(env.Body, p); err != nil {
			return nil, "", fmt.Errorf("%w: %s body: %w", ErrMalformed, env.Type, err)
		}
	}
	return deref(p), env.ID, nil
}

// strictDecode decodes the JSON object b into the struct v. Beyond
// encoding/json's own checks it requires exactly one object and nothing
// after it, and every key to be an exact (case-sensitive) json name of one
// of v's fields, at most once: encoding/json alone would accept "Type" for
// "type" and let the last of two equal keys win, which a peer written in
// another language may read differently.
func strictDecode(b []byte, v any) error {
	if err := checkKeys(b, jsonNames(reflect.TypeOf(v).Elem())); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// checkKeys walks the top level of the JSON object b: each key must be in
// allowed and appear once. Values are only skipped here (no message nests
// objects).
func checkKeys(b []byte, allowed map[string]bool) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil {
		return err
	} else if tok != json.Delim('{') {
		return fmt.Errorf("not a JSON object: starts with %v", tok)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("object key %v is not a string", tok)
		}
		if !allowed[key] {
			return fmt.Errorf("unknown field %q (field names are case-sensitive)", key)
		}
		if seen[key] {
			return fmt.Errorf("duplicate field %q", key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// names caches jsonNames by struct type.
var names sync.Map // reflect.Type -> map[string]bool

// jsonNames returns the json names of struct type t's exported fields.
func jsonNames(t reflect.Type) map[string]bool {
	if m, ok := names.Load(t); ok {
		return m.(map[string]bool)
	}
	m := map[string]bool{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		m[name] = true
	}
	names.Store(t, m)
	return m
}

func deref(p Message) Message {
	switch m := p.(type) {
	case *Hello:
		return *m
	case *HelloAck:
		return *m
	case *PrepareHandoff:
		return *m
	case *Drained:
		return *m
	case *DrainFailed:
		return *m
	case *SealRequest:
		return *m
	case *SealComplete:
		return *m
	case *SealFailed:
		return *m
	case *ReadyToBegin:
		return *m
	case *Begin:
		return *m
	case *Ready:
		return *m
	case *Commit:
		return *m
	case *Abort:
		return *m
	case *ResumeAfterAbort:
		return *m
	case *Resumed:
		return *m
	case *Heartbeat:
		return *m
	case *ListenersRequest:
		return *m
	case *Listeners:
		return *m
	case *Error:
		return *m
	case *Conns:
		return *m
	}
	return p
}

// Negotiate returns the highest version in both ranges.
func Negotiate(localMin, localMax, peerMin, peerMax uint16) (uint16, error) {
	if localMin > localMax || peerMin > peerMax {
		return 0, fmt.Errorf("%w: invalid range (local %d..%d, peer %d..%d)", ErrVersionMismatch, localMin, localMax, peerMin, peerMax)
	}
	hi := min(localMax, peerMax)
	if hi < max(localMin, peerMin) {
		return 0, fmt.Errorf("%w: local %d..%d, peer %d..%d", ErrVersionMismatch, localMin, localMax, peerMin, peerMax)
	}
	return hi, nil
}
