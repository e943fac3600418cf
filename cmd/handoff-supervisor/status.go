package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/handoff-go/handoff/supervisor"
)

// statusReport is what the trigger socket's status command returns (one
// JSON object) and what `handoff-supervisor status` prints.
type statusReport struct {
	Supervisor supervisorStatus `json:"supervisor"`
	Phase      string           `json:"phase"`
	HandoffID  string           `json:"handoff_id,omitempty"`
	Incumbent  *processStatus   `json:"incumbent,omitempty"`
	Successor  *processStatus   `json:"successor,omitempty"`
	KnownGood  string           `json:"known_good_binary"`
	// KnownGoodReplaced: the file at KnownGood is no longer the one that
	// proved good; a restart starts the pinned file.
	KnownGoodReplaced bool           `json:"known_good_replaced,omitempty"`
	Restart           *restartStatus `json:"restart,omitempty"`
	// ReexecPending: a SIGUSR2 waits for the running operation to end.
	ReexecPending bool            `json:"reexec_pending,omitempty"`
	Listeners     []string        `json:"listeners"`
	Handoffs      int             `json:"handoffs"`
	LastOutcomes  []outcomeReport `json:"last_outcomes"`
}

type supervisorStatus struct {
	PID        int       `json:"pid"`
	Version    string    `json:"version"`
	Started    time.Time `json:"started"`
	UptimeSecs float64   `json:"uptime_secs"`
}

type processStatus struct {
	PID        int        `json:"pid"`
	Binary     string     `json:"binary,omitempty"`
	BuildID    string     `json:"build_id,omitempty"`
	Since      *time.Time `json:"since,omitempty"`
	UptimeSecs float64    `json:"uptime_secs,omitempty"`
}

// restartStatus is set while the daemon is down and a restart is due.
type restartStatus struct {
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
}

type outcomeReport struct {
	ID             string    `json:"id"`
	Committed      bool      `json:"committed"`
	AbortReason    string    `json:"abort_reason,omitempty"`
	Binary         string    `json:"binary,omitempty"`
	BuildID        string    `json:"build_id,omitempty"`
	Started        time.Time `json:"started"`
	TotalMS        float64   `json:"total_ms"`
	DrainMS        float64   `json:"drain_ms"`
	SealMS         float64   `json:"seal_ms"`
	BeginToReadyMS float64   `json:"begin_to_ready_ms"`
	AcceptGapMS    float64   `json:"accept_gap_ms"`
	PassedConns    int       `json:"passed_conns"` // established connections the incumbent passed
}

// loopStatus is what the daemon loop adds to the library's Status.
type loopStatus struct {
	pid       int
	started   time.Time
	knownGood string
	replaced  bool // the file at knownGood is not the pinned one
	restart   *restartStatus
	reexec    bool // a re-exec waits for the running operation
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// buildStatus combines the library's Status with the loop's own state.
func buildStatus(st supervisor.Status, ls loopStatus, now time.Time) statusReport {
	r := statusReport{
		Supervisor:        supervisorStatus{PID: ls.pid, Version: version(), Started: ls.started, UptimeSecs: now.Sub(ls.started).Seconds()},
		Phase:             string(st.Phase),
		HandoffID:         string(st.HandoffID),
		KnownGood:         ls.knownGood,
		KnownGoodReplaced: ls.replaced,
		Restart:           ls.restart,
		ReexecPending:     ls.reexec,
		Listeners:         st.Listeners,
		Handoffs:          st.Handoffs,
	}
	if r.Listeners == nil {
		r.Listeners = []string{}
	}
	if st.IncumbentPID != 0 {
		since := st.IncumbentSince
		r.Incumbent = &processStatus{PID: st.IncumbentPID, Binary: st.IncumbentBinary, BuildID: st.IncumbentBuildID, Since: &since, UptimeSecs: now.Sub(since).Seconds()}
	}
	if st.SuccessorPID != 0 {
		r.Successor = &processStatus{PID: st.SuccessorPID, BuildID: st.SuccessorBuildID}
	}
	r.LastOutcomes = make([]outcomeReport, 0, len(st.LastOutcomes))
	for _, o := range st.LastOutcomes {
		r.LastOutcomes = append(r.LastOutcomes, outcomeReport{
			ID: string(o.ID), Committed: o.Committed, AbortReason: o.AbortReason,
			Binary: o.Binary, BuildID: o.BuildID, Started: o.Started,
			TotalMS: ms(o.Phases.Total), DrainMS: ms(o.Phases.Drain), SealMS: ms(o.Phases.Seal),
			BeginToReadyMS: ms(o.Phases.BeginToReady), AcceptGapMS: ms(o.Phases.AcceptGap),
			PassedConns: o.PassedConns,
		})
	}
	return r
}

func secs(s float64) time.Duration {
	return time.Duration(s * float64(time.Second)).Round(time.Second)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeStatus prints r for a person.
func writeStatus(w io.Writer, r statusReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "supervisor:\tpid %d, up %v, %s\n", r.Supervisor.PID, secs(r.Supervisor.UptimeSecs), r.Supervisor.Version)
	phase := r.Phase
	if r.HandoffID != "" {
		phase += " (handoff " + r.HandoffID + ")"
	}
	fmt.Fprintf(tw, "phase:\t%s\n", phase)
	if i := r.Incumbent; i != nil {
		fmt.Fprintf(tw, "incumbent:\tpid %d, build %s, up %v, %s\n", i.PID, orDash(i.BuildID), secs(i.UptimeSecs), i.Binary)
	} else {
		fmt.Fprintf(tw, "incumbent:\tnone\n")
	}
	if s := r.Successor; s != nil {
		fmt.Fprintf(tw, "successor:\tpid %d, build %s\n", s.PID, orDash(s.BuildID))
	}
	if rs := r.Restart; rs != nil {
		fmt.Fprintf(tw, "restart:\tat %s (%s)\n", rs.At.Format(time.RFC3339), rs.Reason)
	}
	if r.ReexecPending {
		fmt.Fprintln(tw, "re-exec:\tpending, once the running handoff or start ends")
	}
	if r.KnownGoodReplaced {
		fmt.Fprintf(tw, "known good:\t%s (replaced on disk since; a restart starts the file that proved good)\n", r.KnownGood)
	} else {
		fmt.Fprintf(tw, "known good:\t%s\n", orDash(r.KnownGood))
	}
	fmt.Fprintf(tw, "listeners:\t%s\n", orDash(strings.Join(r.Listeners, ", ")))
	fmt.Fprintf(tw, "handoffs:\t%d since start\n", r.Handoffs)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.LastOutcomes) == 0 {
		return nil
	}
	fmt.Fprintln(w, "last handoffs (newest last):")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  started\tid\toutcome\tbuild\ttotal\tdrain\tseal\tbegin→ready\taccept gap\treason")
	for _, o := range r.LastOutcomes {
		outcome := outcomeCommitted
		if !o.Committed {
			outcome = outcomeRolledBack
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%.1fms\t%.1fms\t%.1fms\t%.1fms\t%.2fms\t%s\n",
			o.Started.Local().Format(time.DateTime), o.ID, outcome, orDash(o.BuildID),
			o.TotalMS, o.DrainMS, o.SealMS, o.BeginToReadyMS, o.AcceptGapMS, orDash(o.AbortReason))
	}
	return tw.Flush()
}
