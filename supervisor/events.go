package supervisor

import (
	"os"
	"time"
)

// Phase is where the supervisor is in a handoff.
type Phase string

// Phases of a handoff, in order; PhaseRollingBack replaces the later ones
// when it does not commit.
const (
	PhaseIdle        Phase = "idle"
	PhaseSpawning    Phase = "spawning"     // successor started, waiting for its Hello
	PhaseWarmingUp   Phase = "warming_up"   // successor preparing read-only; the incumbent serves
	PhaseDraining    Phase = "draining"     // PrepareHandoff sent
	PhaseSealing     Phase = "sealing"      // SealRequest sent
	PhaseBegun       Phase = "begun"        // Begin sent, waiting for Ready
	PhaseCommitting  Phase = "committing"   // Ready accepted
	PhaseRollingBack Phase = "rolling_back" // aborting; the incumbent resumes
)

// EventKind says what an Event reports.
type EventKind string

// Event kinds.
const (
	EventColdStarted     EventKind = "cold_started"     // a daemon was cold-started and answered
	EventHandoffStarted  EventKind = "handoff_started"  // PerformHandoff began
	EventPhase           EventKind = "phase"            // a handoff entered Phase
	EventHeartbeat       EventKind = "heartbeat"        // a daemon is still working (drain, seal, start-up)
	EventHandoffFinished EventKind = "handoff_finished" // Outcome is set
	EventIncumbentExited EventKind = "incumbent_exited" // the serving daemon exited outside a commit
)

// Event is a notification for Config.OnEvent.
type Event struct {
	Kind      EventKind      // what happened
	Time      time.Time      // when the supervisor saw it
	HandoffID HandoffID      // the handoff it belongs to; zero outside a handoff
	Phase     Phase          // the handoff's phase when it happened
	PID       int            // the daemon concerned, if any
	Outcome   *Outcome       // EventHandoffFinished
	Exit      *IncumbentExit // EventIncumbentExited
}

// IncumbentExit describes a serving daemon that exited without being
// replaced by a commit. The supervisor has reaped it.
type IncumbentExit struct {
	PID     int              // the daemon that exited
	Binary  string           // the binary it ran (SpawnSpec.Binary)
	State   *os.ProcessState // nil if the process was not our child
	Time    time.Time        // when the supervisor saw it exit
	Running time.Duration    // how long it ran as incumbent
}

// Status is a snapshot of the supervisor for status commands.
type Status struct {
	Phase            Phase     // PhaseIdle when no handoff runs
	HandoffID        HandoffID // of the running handoff, if any
	IncumbentPID     int       // 0 when no daemon runs
	IncumbentBinary  string    // the serving daemon's binary
	IncumbentBuildID string    // the build id the serving daemon sent in Hello
	IncumbentSince   time.Time // when the serving daemon started
	SuccessorPID     int       // 0 when no successor runs
	SuccessorBuildID string    // the build id the successor sent in Hello
	Listeners        []string  // names of the listeners passed to daemons, in fd order
	Handoffs         int       // finished since start
	LastOutcomes     []Outcome // newest last, at most 10
}
