package main

import (
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/supervisor"
)

// notifySocket listens on a unixgram socket set as NOTIFY_SOCKET, as
// systemd does, and returns a function that reads the next message
// (bounded).
func notifySocket(t *testing.T) func() string {
	t.Helper()
	next, _ := notifySocketQueue(t)
	return next
}

// notifySocketQueue is notifySocket that also returns a function reading
// the messages already queued, without waiting for more.
func notifySocketQueue(t *testing.T) (next func() string, queued func() []string) {
	t.Helper()
	path := filepath.Join(shortDir(t), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	next = func() string {
		t.Helper()
		buf := make([]byte, 4096)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no sd_notify message: %v", err)
		}
		return string(buf[:n])
	}
	queued = func() []string {
		var out []string
		buf := make([]byte, 4096)
		for {
			// A past deadline would fail before reading: give queued
			// messages a moment that they do not need.
			c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			n, err := c.Read(buf)
			if err != nil {
				return out
			}
			out = append(out, string(buf[:n]))
		}
	}
	return next, queued
}

// fields splits an sd_notify message into its assignments.
func fields(t *testing.T, msg string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(msg, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("message %q: line %q is no assignment", msg, line)
		}
		out[k] = v
	}
	return out
}

func monotonicNow(t *testing.T) int64 {
	t.Helper()
	m := monotonicUsec()
	v, err := strconv.ParseInt(strings.TrimPrefix(m, "MONOTONIC_USEC="), 10, 64)
	if err != nil {
		t.Fatalf("MONOTONIC_USEC: %q", m)
	}
	return v
}

func TestNotifyHandoffSequence(t *testing.T) {
	next := notifySocket(t)
	n := newNotifier(testLogger(t), 15*time.Second)

	before := monotonicNow(t)
	n.reloading("handoff to /bin/d (SIGHUP)", n.extend)
	f := fields(t, next())
	if f["RELOADING"] != "1" || f["STATUS"] != "handoff to /bin/d (SIGHUP)" || f["EXTEND_TIMEOUT_USEC"] != "15000000" {
		t.Fatalf("handoff start: %v", f)
	}
	mono, err := strconv.ParseInt(f["MONOTONIC_USEC"], 10, 64)
	if err != nil || mono < before || mono > monotonicNow(t) {
		t.Fatalf("MONOTONIC_USEC=%q is not CLOCK_MONOTONIC now (%d..)", f["MONOTONIC_USEC"], before)
	}

	n.onEvent(supervisor.Event{Kind: supervisor.EventHandoffStarted, HandoffID: "h1", PID: 10})
	f = fields(t, next())
	if _, ok := f["RELOADING"]; ok || f["STATUS"] != "handoff h1 started (incumbent pid 10)" || f["EXTEND_TIMEOUT_USEC"] != "15000000" {
		t.Fatalf("handoff started event: %v", f)
	}

	n.onEvent(supervisor.Event{Kind: supervisor.EventPhase, HandoffID: "h1", Phase: supervisor.PhaseDraining})
	f = fields(t, next())
	if f["STATUS"] != "handoff h1: draining" || f["EXTEND_TIMEOUT_USEC"] != "15000000" {
		t.Fatalf("phase: %v", f)
	}

	n.onEvent(supervisor.Event{Kind: supervisor.EventHeartbeat, HandoffID: "h1"})
	if msg := next(); msg != "EXTEND_TIMEOUT_USEC=15000000" {
		t.Fatalf("heartbeat: %q", msg)
	}

	// The loop, not the event, reports the end (READY=1): nothing is sent.
	n.onEvent(supervisor.Event{Kind: supervisor.EventHandoffFinished, HandoffID: "h1", Outcome: &supervisor.Outcome{ID: "h1", Committed: true}})
	n.onEvent(supervisor.Event{Kind: supervisor.EventIncumbentExited, PID: 11, Exit: &supervisor.IncumbentExit{PID: 11, Running: time.Second}})
	if f = fields(t, next()); !strings.HasPrefix(f["STATUS"], "daemon pid 11 exited") {
		t.Fatalf("after the finished event, want the exit's status: %v", f)
	}
}

// TestOutcomeStatus: the STATUS= line after a handoff names who serves,
// from the Supervisor's status (a rolled-back outcome has no build id).
func TestOutcomeStatus(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    supervisor.Outcome
		st   supervisor.Status
		want string
	}{
		{"committed", supervisor.Outcome{ID: "h1", Committed: true, PID: 11, BuildID: "v2", Phases: supervisor.PhaseTimings{Total: 1500 * time.Millisecond}},
			supervisor.Status{IncumbentPID: 11, IncumbentBuildID: "v2"}, "serving: pid 11, build v2 (handoff h1 committed in 1.5s)"},
		{"rolled back", supervisor.Outcome{ID: "h2", AbortReason: "the incumbent's seal failed: disk full"},
			supervisor.Status{IncumbentPID: 10, IncumbentBuildID: "v1"}, "serving: pid 10, build v1 (handoff h2 rolled back: the incumbent's seal failed: disk full)"},
		{"nobody serves", supervisor.Outcome{ID: "h3", AbortReason: "resume failed"},
			supervisor.Status{}, "no daemon is serving; restarting it (handoff h3 rolled back: resume failed)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := outcomeStatus(tc.o, tc.st); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestNotifyReadyStopping(t *testing.T) {
	next := notifySocket(t)
	n := newNotifier(testLogger(t), time.Second)
	n.ready("serving: pid 5")
	if msg := next(); msg != "READY=1\nSTATUS=serving: pid 5" {
		t.Fatalf("ready: %q", msg)
	}
	n.stopping("stopping: terminated", 60*time.Second)
	if msg := next(); msg != "STOPPING=1\nEXTEND_TIMEOUT_USEC=60000000\nSTATUS=stopping: terminated" {
		t.Fatalf("stopping: %q", msg)
	}
	n = newNotifier(testLogger(t), time.Second) // one that has not stopped
	n.reloading("re-executing", 0)
	f := fields(t, next())
	if f["RELOADING"] != "1" || f["MONOTONIC_USEC"] == "" || f["STATUS"] != "re-executing" {
		t.Fatalf("reloading: %v", f)
	}
	if _, ok := f["EXTEND_TIMEOUT_USEC"]; ok {
		t.Errorf("reloading with no bound extended the timeout: %v", f)
	}
}

// TestNotifyNothingReadyAfterStopping: once STOPPING=1 is sent, a handoff
// cancelled by the stop updates STATUS= only.
func TestNotifyNothingReadyAfterStopping(t *testing.T) {
	next := notifySocket(t)
	n := newNotifier(testLogger(t), time.Second)
	n.stopping("stopping: terminated", time.Minute)
	next()
	n.ready("serving: pid 5 (handoff h1 rolled back: cancelled)")
	if msg := next(); msg != "STATUS=serving: pid 5 (handoff h1 rolled back: cancelled)" {
		t.Fatalf("ready after stopping: %q", msg)
	}
	n.reloading("handoff", time.Second)
	if msg := next(); msg != "STATUS=handoff" {
		t.Fatalf("reloading after stopping: %q", msg)
	}
}

// TestNotifyWithoutSocket: without NOTIFY_SOCKET nothing is sent and
// nothing fails.
func TestNotifyWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := newNotifier(testLogger(t), time.Second)
	n.ready("x")
	n.onEvent(supervisor.Event{Kind: supervisor.EventHandoffStarted})
}

func TestNotifySendErrorIsLogged(t *testing.T) {
	n := newNotifier(testLogger(t), time.Second)
	var sent []string
	n.send = func(s string) error { sent = append(sent, s); return errors.New("boom") }
	n.status("a\nb")
	if len(sent) != 1 || sent[0] != "STATUS=a b" {
		t.Fatalf("sent %q", sent)
	}
}
