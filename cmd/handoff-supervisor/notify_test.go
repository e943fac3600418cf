package main

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff"
)

// notifySocket listens on a unixgram socket set as NOTIFY_SOCKET, as
// systemd does, and returns a function that reads the next message
// (bounded).
func notifySocket(t *testing.T) func() string {
	t.Helper()
	path := filepath.Join(shortDir(t), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return func() string {
		t.Helper()
		buf := make([]byte, 4096)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no sd_notify message: %v", err)
		}
		return string(buf[:n])
	}
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
	n.onEvent(handoff.Event{Kind: handoff.EventHandoffStarted, HandoffID: "h1", PID: 10})
	f := fields(t, next())
	if f["RELOADING"] != "1" || !strings.Contains(f["STATUS"], "handoff h1 started") || f["EXTEND_TIMEOUT_USEC"] != "15000000" {
		t.Fatalf("handoff start: %v", f)
	}
	mono, err := strconv.ParseInt(f["MONOTONIC_USEC"], 10, 64)
	if err != nil || mono < before || mono > monotonicNow(t) {
		t.Fatalf("MONOTONIC_USEC=%q is not CLOCK_MONOTONIC now (%d..)", f["MONOTONIC_USEC"], before)
	}

	n.onEvent(handoff.Event{Kind: handoff.EventPhase, HandoffID: "h1", Phase: handoff.PhaseDraining})
	f = fields(t, next())
	if f["STATUS"] != "handoff h1: draining" || f["EXTEND_TIMEOUT_USEC"] != "15000000" {
		t.Fatalf("phase: %v", f)
	}

	n.onEvent(handoff.Event{Kind: handoff.EventHeartbeat, HandoffID: "h1"})
	if msg := next(); msg != "EXTEND_TIMEOUT_USEC=15000000" {
		t.Fatalf("heartbeat: %q", msg)
	}

	n.onEvent(handoff.Event{Kind: handoff.EventHandoffFinished, HandoffID: "h1", Outcome: &handoff.HandoffOutcome{
		ID: "h1", Committed: true, Child: &os.Process{Pid: 11}, BuildID: "v2", Phases: handoff.PhaseTimings{Total: 1500 * time.Millisecond},
	}})
	f = fields(t, next())
	if f["READY"] != "1" || f["STATUS"] != "serving: pid 11, build v2 (handoff h1 committed in 1.5s)" {
		t.Fatalf("handoff end: %v", f)
	}

	n.onEvent(handoff.Event{Kind: handoff.EventHandoffFinished, HandoffID: "h2", Outcome: &handoff.HandoffOutcome{
		ID: "h2", AbortReason: "the incumbent's seal failed:\ndisk full", BuildID: "v1",
	}})
	f = fields(t, next())
	if f["READY"] != "1" || f["STATUS"] != "serving: build v1 (handoff h2 rolled back: the incumbent's seal failed: disk full)" {
		t.Fatalf("rolled back: %v", f)
	}

	n.onEvent(handoff.Event{Kind: handoff.EventIncumbentExited, PID: 11, Exit: &handoff.IncumbentExit{PID: 11, Running: time.Second}})
	if f = fields(t, next()); !strings.HasPrefix(f["STATUS"], "daemon pid 11 exited") {
		t.Fatalf("exit: %v", f)
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
	n.reloading("re-executing", 0)
	f := fields(t, next())
	if f["RELOADING"] != "1" || f["MONOTONIC_USEC"] == "" || f["STATUS"] != "re-executing" {
		t.Fatalf("reloading: %v", f)
	}
	if _, ok := f["EXTEND_TIMEOUT_USEC"]; ok {
		t.Errorf("reloading with no bound extended the timeout: %v", f)
	}
}

// TestNotifyWithoutSocket: without NOTIFY_SOCKET nothing is sent and
// nothing fails.
func TestNotifyWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := newNotifier(testLogger(t), time.Second)
	n.ready("x")
	n.onEvent(handoff.Event{Kind: handoff.EventHandoffStarted})
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
