package main

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/handoff-go/handoff/supervisor"
)

// notifier tells systemd (sd_notify over NOTIFY_SOCKET) what the supervisor
// is doing, so that it works as a Type=notify-reload service: READY=1 once
// the daemon serves, RELOADING=1 with MONOTONIC_USEC when a handoff (or a
// re-exec) starts and READY=1 when it ends (the loop sends both, so every
// RELOADING=1 is followed by READY=1), EXTEND_TIMEOUT_USEC while a handoff
// shows signs of life, STOPPING=1 on the way out (after which neither
// READY=1 nor RELOADING=1 is sent), and STATUS= lines throughout. Without
// NOTIFY_SOCKET every call does nothing.
type notifier struct {
	log     *slog.Logger
	stopped atomic.Bool // STOPPING=1 was sent
	// send delivers one notification; sddaemon.SdNotify outside tests.
	send func(state string) error
	// extend is how far each sign of life pushes systemd's timeout: the
	// supervisor's liveness bound plus slack, since a daemon that stops
	// sending heartbeats is given up on after one liveness period.
	extend time.Duration
}

func newNotifier(log *slog.Logger, extend time.Duration) *notifier {
	return &notifier{
		log:    log,
		extend: extend,
		send: func(state string) error {
			// Keep NOTIFY_SOCKET: a re-executed supervisor needs it too. The
			// library removes it from every daemon's environment.
			_, err := sddaemon.SdNotify(false, state)
			return err
		},
	}
}

// notify sends the given assignments as one message.
func (n *notifier) notify(lines ...string) {
	msg := strings.Join(lines, "\n")
	if err := n.send(msg); err != nil {
		n.log.Warn("sd_notify failed", "msg", msg, "err", err)
	}
}

// statusLine is a STATUS= assignment on one line.
func statusLine(format string, args ...any) string {
	s := fmt.Sprintf(format, args...)
	return "STATUS=" + strings.ReplaceAll(s, "\n", " ")
}

// monotonicUsec is the MONOTONIC_USEC= assignment systemd wants with
// RELOADING=1 (CLOCK_MONOTONIC in microseconds).
func monotonicUsec() string {
	return strings.TrimSuffix(sddaemon.SdNotifyMonotonicUsec(), "\n")
}

func extendTimeout(d time.Duration) string {
	return "EXTEND_TIMEOUT_USEC=" + strconv.FormatInt(d.Microseconds(), 10)
}

// ready reports that a daemon serves.
func (n *notifier) ready(status string) {
	if n.stopped.Load() {
		n.notify(statusLine("%s", status))
		return
	}
	n.notify(sddaemon.SdNotifyReady, statusLine("%s", status))
}

// reloading reports the start of a reload-like operation that may take up
// to d (a handoff, a re-exec).
func (n *notifier) reloading(status string, d time.Duration) {
	if n.stopped.Load() {
		n.notify(statusLine("%s", status))
		return
	}
	lines := []string{sddaemon.SdNotifyReloading}
	if m := monotonicUsec(); m != "" {
		lines = append(lines, m)
	}
	if d > 0 {
		lines = append(lines, extendTimeout(d))
	}
	n.notify(append(lines, statusLine("%s", status))...)
}

// status updates the STATUS= line only.
func (n *notifier) status(format string, args ...any) {
	n.notify(statusLine(format, args...))
}

// stopping reports that the supervisor is stopping the daemon, which may
// take up to d.
func (n *notifier) stopping(status string, d time.Duration) {
	n.stopped.Store(true)
	n.notify(sddaemon.SdNotifyStopping, extendTimeout(d), statusLine("%s", status))
}

// onEvent turns the Supervisor's events about handoffs into STATUS= lines
// and timeout extensions; RELOADING=1 and READY=1 come from the loop. It
// runs on the library's goroutines and only sends datagrams.
func (n *notifier) onEvent(e supervisor.Event) {
	switch e.Kind {
	case supervisor.EventHandoffStarted:
		n.notify(extendTimeout(n.extend), statusLine("handoff %s started (incumbent pid %d)", e.HandoffID, e.PID))
	case supervisor.EventPhase:
		if e.Phase != supervisor.PhaseIdle {
			n.notify(extendTimeout(n.extend), statusLine("handoff %s: %s", e.HandoffID, e.Phase))
		}
	case supervisor.EventHeartbeat:
		n.notify(extendTimeout(n.extend))
	case supervisor.EventIncumbentExited:
		n.status("daemon pid %d exited (%s); restarting it", e.PID, exitDescription(e.Exit))
	}
}

// outcomeStatus says in one line how a handoff ended and who serves now
// (st is the Supervisor's status after it).
func outcomeStatus(o supervisor.Outcome, st supervisor.Status) string {
	serving := fmt.Sprintf("serving: pid %d, build %s", st.IncumbentPID, st.IncumbentBuildID)
	if st.IncumbentPID == 0 {
		serving = "no daemon is serving; restarting it"
	}
	if o.Committed {
		return fmt.Sprintf("%s (handoff %s committed in %v)", serving, o.ID, o.Phases.Total.Round(time.Millisecond))
	}
	return fmt.Sprintf("%s (handoff %s rolled back: %s)", serving, o.ID, o.AbortReason)
}

// exitDescription says how a daemon ended, for logs and STATUS=.
func exitDescription(ex *supervisor.IncumbentExit) string {
	if ex == nil {
		return "exited"
	}
	if ex.State == nil {
		return fmt.Sprintf("gone after %v (not our child)", ex.Running.Round(time.Millisecond))
	}
	return fmt.Sprintf("%s after %v", ex.State, ex.Running.Round(time.Millisecond))
}
