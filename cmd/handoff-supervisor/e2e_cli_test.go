package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for a writer goroutine and readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// logRecord is one line of the supervisor's JSON log.
type logRecord map[string]any

func (r logRecord) msg() string { s, _ := r["msg"].(string); return s }

// int returns the number attribute key, or -1.
func (r logRecord) int(key string) int {
	if v, ok := r[key].(float64); ok {
		return int(v)
	}
	return -1
}

func (r logRecord) str(key string) string { s, _ := r[key].(string); return s }

// startSupervisorLogged is startSupervisor with log_format = "json" and
// the supervisor's stderr captured: records returns its log records,
// complete once the supervisor has exited. Lines that are no JSON
// object (the test daemons write to the same stderr) are left out.
func (f *fixture) startSupervisorLogged(t *testing.T) (*supervisorProc, func() []logRecord) {
	t.Helper()
	return f.startSupervisorLoggedVia(t, nil)
}

// startSupervisorLoggedVia is startSupervisorLogged with the command
// line run through a wrapper (e.g. prlimit ... --), if any.
func (f *fixture) startSupervisorLoggedVia(t *testing.T, wrapper []string) (*supervisorProc, func() []logRecord) {
	t.Helper()
	f.editConfig(t, "journal ", "log_format       = \"json\"\njournal ")
	cmd := supervisorCmd(t.Context(), t, "--config", f.cfg)
	if len(wrapper) > 0 {
		cmd.Path, cmd.Args = wrapper[0], append(wrapper, cmd.Args...)
	}
	var stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	// The daemons share the pipe: do not wait for them past the
	// supervisor's exit for long.
	cmd.WaitDelay = 10 * time.Second
	// Registered first, so it runs after launch has stopped everything.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("supervisor output:\n%s", stderr.String())
		}
	})
	s := f.launch(t, cmd)
	records := func() []logRecord {
		t.Helper()
		var out []logRecord
		sc := bufio.NewScanner(strings.NewReader(stderr.String()))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var r logRecord
			if json.Unmarshal(sc.Bytes(), &r) == nil && r.msg() != "" {
				out = append(out, r)
			}
		}
		return out
	}
	return s, records
}

// count returns the records that match, and says which in a failure.
func count(recs []logRecord, match func(logRecord) bool) (n int, which string) {
	var b strings.Builder
	for _, r := range recs {
		if match(r) {
			n++
			raw, _ := json.Marshal(r)
			b.WriteString("\n  " + string(raw))
		}
	}
	return n, b.String()
}

var (
	committedLine  = regexp.MustCompile(`^committed: handoff (\S+), now serving pid (\d+), build (\S+) \(accept gap \S+, library overhead \S+\)\n$`)
	rolledBackLine = regexp.MustCompile(`^rolled back: (.+) \(handoff (\S+)\)\n$`)
)

// noProtocolLines fails if out has a line of the trigger protocol's "ok:"
// answers.
func noProtocolLines(t *testing.T, what, out string) {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "ok:") || strings.Contains(line, "committed=") {
			t.Errorf("%s printed the protocol line %q", what, line)
		}
	}
}

// TestUpgradeOutcomesAndLogLines drives a supervisor process through a
// committed upgrade, a rolled-back one, a SIGHUP handoff and a restart
// after the daemon was killed. The upgrade command words each outcome
// for a person (no "ok: ..." line) with the right exit status, and the
// supervisor's log, read after it exited, has each event once: every
// handoff's start and outcome, the signal, each trigger request, the
// daemon's exit and its restart.
func TestUpgradeOutcomesAndLogLines(t *testing.T) {
	f := newFixture(t)
	sup, records := f.startSupervisorLogged(t)
	_, pid1 := f.hello(t)

	// A committed upgrade: one line on stdout, exit 0.
	out, stderr, code := f.cli(t, "upgrade", "--config", f.cfg)
	m := committedLine.FindStringSubmatch(out)
	if code != 0 || m == nil || m[3] != "daemon-v1" || stderr != "" {
		t.Fatalf("committed upgrade: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	noProtocolLines(t, "a committed upgrade", out)
	idCommitted := m[1]
	f.await(t, "READY=1", "committed")
	st := f.status(t)
	if st.Incumbent == nil || strconv.Itoa(st.Incumbent.PID) != m[2] || st.Incumbent.PID == pid1 {
		t.Fatalf("the upgrade says pid %s serves; status: %+v (was pid %d)", m[2], st.Incumbent, pid1)
	}
	pid2 := st.Incumbent.PID

	// A rolled-back upgrade (the successor exits): exit 1, the reason.
	out, stderr, code = f.cli(t, "upgrade", "--config", f.cfg, "--binary", f.bad)
	m = rolledBackLine.FindStringSubmatch(out)
	if code != 1 || m == nil || !strings.Contains(m[1], "exited") {
		t.Fatalf("rolled-back upgrade: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
	noProtocolLines(t, "a rolled-back upgrade", out+stderr)
	reason, idRolledBack := m[1], m[2]
	f.await(t, "READY=1", "rolled back")
	if _, pid := f.hello(t); pid != pid2 {
		t.Fatalf("after the rollback pid %d serves, want %d", pid, pid2)
	}

	// SIGHUP.
	sup.signal(t, syscall.SIGHUP)
	f.await(t, "RELOADING=1")
	f.await(t, "READY=1", "committed")
	st = f.awaitStatus(t, "the SIGHUP handoff", func(st statusReport) bool { return st.Handoffs == 3 })
	idHUP := st.LastOutcomes[len(st.LastOutcomes)-1].ID
	pid3 := st.Incumbent.PID

	// The daemon is killed and restarted.
	if err := syscall.Kill(pid3, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	f.await(t, "READY=1", "restarted")
	st = f.status(t)
	if st.Incumbent == nil || st.Incumbent.PID == pid3 {
		t.Fatalf("after the kill: %+v", st.Incumbent)
	}
	pid4 := st.Incumbent.PID
	f.stopAndCheck(t, sup, pid4)

	recs := records()
	once := func(what string, match func(logRecord) bool) {
		t.Helper()
		if n, which := count(recs, match); n != 1 {
			t.Errorf("%s: logged %d times, want once:%s", what, n, which)
		}
	}
	for _, h := range []struct{ id, outcome string }{
		{idCommitted, "committed"}, {idRolledBack, "rolled back"}, {idHUP, "committed"},
	} {
		once("the start of handoff "+h.id, func(r logRecord) bool {
			return r.str("id") == h.id && strings.Contains(r.msg(), "start")
		})
		once("the outcome of handoff "+h.id, func(r logRecord) bool {
			return r.str("id") == h.id && (strings.Contains(r.msg(), "committed") || strings.Contains(r.msg(), "rolled back"))
		})
		once("handoff "+h.id+" "+h.outcome, func(r logRecord) bool {
			return r.str("id") == h.id && strings.Contains(r.msg(), h.outcome)
		})
	}
	once("the rollback's reason", func(r logRecord) bool {
		return r.str("id") == idRolledBack && r.str("reason") == reason
	})
	once("SIGHUP", func(r logRecord) bool { return strings.Contains(r.msg(), "SIGHUP") })
	once(fmt.Sprintf("the exit of daemon pid %d", pid3), func(r logRecord) bool {
		return r.int("pid") == pid3 && strings.Contains(r.msg(), "exited")
	})
	once(fmt.Sprintf("the start of daemon pid %d", pid4), func(r logRecord) bool {
		return r.int("pid") == pid4 && strings.Contains(r.msg(), "start")
	})
	once("the restart's schedule", func(r logRecord) bool { return strings.Contains(r.msg(), "restart") })
	if n, which := count(recs, func(r logRecord) bool { return strings.Contains(r.msg(), "handoff requested") }); n != 2 {
		t.Errorf("trigger requests: logged %d times, want 2 (two upgrades):%s", n, which)
	}
	// And no record of a handoff twice, whatever it says.
	seen := map[string]bool{}
	for _, r := range recs {
		if r.str("id") == "" {
			continue
		}
		delete(r, "time")
		raw, _ := json.Marshal(r)
		if seen[string(raw)] {
			t.Errorf("logged twice: %s", raw)
		}
		seen[string(raw)] = true
	}
}
