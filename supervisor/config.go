package supervisor

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/handoff-go/handoff/internal/wire"
)

// Documented defaults: a zero value in Config or SpawnSpec means these.
const (
	// DefaultLiveness bounds every receive from a peer: any frame,
	// heartbeats included, resets it.
	DefaultLiveness = wire.DefaultLiveness
	// DefaultHeartbeatInterval is how often daemons send heartbeats while
	// drain, seal or a successor's start-up run, unless the liveness the
	// supervisor announces in HelloAck asks for more: daemons beat every
	// min(DefaultHeartbeatInterval, liveness/4), never more often than
	// MinHeartbeatInterval.
	DefaultHeartbeatInterval = wire.DefaultHeartbeatInterval
	// MinHeartbeatInterval is the shortest heartbeat interval a daemon uses.
	MinHeartbeatInterval = wire.MinHeartbeatInterval
	// MinLiveness is the shortest accepted Config.Liveness: four
	// heartbeats at MinHeartbeatInterval fit in it, so one late beat does
	// not abort a handoff.
	MinLiveness = 4 * MinHeartbeatInterval
	// DefaultHelloTimeout bounds the Hello/HelloAck exchange.
	DefaultHelloTimeout = wire.DefaultHelloTimeout
	// DefaultDrainGrace is how long the incumbent may take to drain.
	DefaultDrainGrace = 25 * time.Second
	// DefaultDeadline bounds a whole handoff.
	DefaultDeadline = wire.DefaultDeadline
	// DefaultStartTimeout bounds how long ColdStart waits for the daemon to
	// answer on its control socket.
	DefaultStartTimeout = 30 * time.Second
	// DefaultStopTimeout bounds Stop before it kills the daemon.
	DefaultStopTimeout = 30 * time.Second
	// replySlack is added to waits for a reply that may already be in flight.
	replySlack = wire.ReplySlack
	// writeTimeout bounds every frame write.
	writeTimeout = wire.WriteTimeout
)

// Config configures a Supervisor. Only ControlSocket is required.
type Config struct {
	// ControlSocket is the path where the incumbent listens for the supervisor.
	ControlSocket string
	// Journal is the path of the state journal; empty disables it.
	Journal string
	// Logger receives the library's logs; nil discards them.
	Logger *slog.Logger

	// Liveness bounds each receive from a daemon (DefaultLiveness; at
	// least MinLiveness). It is sent to the daemons in HelloAck; they beat
	// every min(DefaultHeartbeatInterval, Liveness/4).
	Liveness time.Duration
	// HelloTimeout bounds the handshake with each daemon (DefaultHelloTimeout).
	HelloTimeout time.Duration
	// StartTimeout bounds ColdStart's wait for the daemon (DefaultStartTimeout).
	StartTimeout time.Duration

	// Stdout and Stderr of spawned daemons; nil means the supervisor's own.
	Stdout, Stderr *os.File

	// OnEvent, if set, is called for every Event, from the goroutine that
	// caused it, never while the supervisor holds its own lock (so it may
	// call Status). It must return quickly, and it must not call Close:
	// events of a handoff, cold start or resume are emitted before that
	// operation has ended, and Close waits for it to end, so a handler
	// calling Close deadlocks. Call Close from another goroutine.
	OnEvent func(Event)
}

func (c *Config) validate() error {
	if c.ControlSocket == "" {
		return fmt.Errorf("handoff: Config.ControlSocket is empty")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"Liveness", c.Liveness}, {"HelloTimeout", c.HelloTimeout}, {"StartTimeout", c.StartTimeout}} {
		if d.v < 0 {
			return fmt.Errorf("handoff: Config.%s is negative (%v)", d.name, d.v)
		}
	}
	if c.Liveness == 0 {
		c.Liveness = DefaultLiveness
	}
	if c.Liveness < MinLiveness {
		return fmt.Errorf("handoff: Config.Liveness (%v) is below MinLiveness (%v): daemons could not beat often enough", c.Liveness, MinLiveness)
	}
	if c.HelloTimeout == 0 {
		c.HelloTimeout = DefaultHelloTimeout
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// SpawnSpec says what to start. Args are the arguments after the program
// name (like exec.Command's); Env entries ("K=V") are added to the
// supervisor's own environment. Zero durations mean DefaultDrainGrace and
// DefaultDeadline.
type SpawnSpec struct {
	Binary     string
	Args, Env  []string
	DrainGrace time.Duration
	Deadline   time.Duration
}

func (s *SpawnSpec) validate() error {
	if s.Binary == "" {
		return fmt.Errorf("handoff: SpawnSpec.Binary is empty")
	}
	if s.DrainGrace < 0 || s.Deadline < 0 {
		return fmt.Errorf("handoff: SpawnSpec durations must not be negative (DrainGrace %v, Deadline %v)", s.DrainGrace, s.Deadline)
	}
	if s.DrainGrace == 0 {
		s.DrainGrace = DefaultDrainGrace
	}
	if s.Deadline == 0 {
		s.Deadline = DefaultDeadline
	}
	if s.DrainGrace >= s.Deadline {
		return fmt.Errorf("handoff: SpawnSpec.DrainGrace (%v) must be shorter than Deadline (%v)", s.DrainGrace, s.Deadline)
	}
	for _, kv := range s.Env {
		if len(kv) == 0 || kv[0] == '=' || !containsByte(kv, '=') {
			return fmt.Errorf("handoff: SpawnSpec.Env entry %q is not of the form K=V", kv)
		}
	}
	return nil
}

func containsByte(s string, b byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == b {
			return true
		}
	}
	return false
}

// HandoffID names one handoff on the wire, in logs and in the journal.
type HandoffID string

func newHandoffID() HandoffID {
	var b [8]byte
	rand.Read(b[:])
	return HandoffID(hex.EncodeToString(b[:]))
}

// PhaseTimings are the durations of a handoff's phases as the supervisor saw them.
type PhaseTimings struct {
	Spawn          time.Duration // spawn to the successor's Hello
	IncumbentHello time.Duration // connect to the incumbent's Hello
	// WarmUp: the successor's Hello acknowledged to its ReadyToBegin (it
	// prepared read-only meanwhile, the incumbent serving). Zero for a
	// successor that speaks protocol version 1, which has no warm-up.
	WarmUp       time.Duration
	Drain        time.Duration // PrepareHandoff sent to Drained (or DrainFailed) received
	Seal         time.Duration // Drained to SealComplete (or SealFailed) received
	BeginToReady time.Duration // Begin sent to Ready received
	Total        time.Duration // PerformHandoff call to its return
	// AcceptGap: from PrepareHandoff (the incumbent stops accepting) to the
	// successor being told it may serve, or, for a rollback, to the
	// incumbent confirming it serves again (zero if it was never asked to
	// drain). Connections wait in the kernel's accept queue meanwhile;
	// none is refused.
	AcceptGap time.Duration
	// DaemonWork is the part of AcceptGap the daemons spent in Drain, Seal
	// and the successor's open (as they reported); LibraryOverhead is the rest.
	DaemonWork      time.Duration
	LibraryOverhead time.Duration
}

// Outcome is the result of PerformHandoff.
type Outcome struct {
	ID          HandoffID
	Committed   bool
	AbortReason string // why it did not commit, in words for a person
	// Err is nil for a commit; otherwise it matches ErrAborted and the kind
	// of failure (ErrSuccessorFailed, ErrIncumbentFailed, ErrDrainFailed,
	// ErrSealFailed, ErrReadyRejected; also ErrTimeout or ErrProtocol
	// when those were the cause) with errors.Is.
	Err    error
	PID    int // the new incumbent when Committed
	Phases PhaseTimings
	// Binary and BuildID of the process serving after the handoff.
	Binary  string
	BuildID string
	Started time.Time
	// PassedConns counts the established connections the incumbent
	// passed: served by the successor after a commit, by the incumbent
	// again after a rollback.
	PassedConns int
}
