package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/handoff-go/handoff/internal/okline"
	"github.com/handoff-go/handoff/supervisor"
	"github.com/pelletier/go-toml/v2"
	"github.com/rogpeppe/go-internal/txtar"
)

// The decoders of what reaches the supervisor from outside: its TOML
// configuration, the trigger socket's lines and commands, and the
// replies the client commands parse. Found inputs are kept under
// testdata/fuzz/<FuzzName>; CI runs each target briefly.

// fuzzConfigPath is the file name parseConfig is given in FuzzParseConfig.
const fuzzConfigPath = "/etc/handoff/h.toml"

// FuzzParseConfig: the configuration loader never panics; every error is
// a *ConfigError naming the file and where (a key or a line); a config
// accepted validates again unchanged, and written back as TOML it is
// accepted as the same config.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(validConfig))
	f.Add([]byte("control_socket = \"/run/c\"\ntrigger_socket = \"/run/t\"\nbinary = \"/bin/d\"\n"))
	f.Add([]byte("control_socket = \"/run/c\"\ntrigger_socket = \"/run/t\"\nbinary = \"/bin/d\"\nlisteners = [{name = \"a\", addr = \"unix:/run/a\"}]\n"))
	f.Add([]byte("control_socket = \"/run/c\"\ntrigger_socket = \"/run/c\"\nbinary = \"bin/d\"\ndrain_grace_secs = 1e30\n[[listeners]]\nname = \"a:b\"\naddr = \"localhost\"\nport = 3\n"))
	f.Add([]byte("control_socket = \"/run/c\"\ntrigger_socket = \"/etc/handoff/h.toml\"\nbinary = \"/bin/d\"\njournal = \"/run/c/j\"\n"))
	f.Add([]byte("[listeners]\nname = 1\n[[listeners]]\n"))
	f.Add([]byte("allowed_uids = [-1, 4294967296]\ndeadline_secs = \"60\"\n"))
	if raw, err := os.ReadFile(filepath.Join("testdata", "script", "config_errors.txtar")); err == nil {
		for _, file := range txtar.Parse(raw).Files {
			f.Add(file.Data)
		}
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		c, err := parseConfig(fuzzConfigPath, doc)
		if err != nil {
			if c != nil {
				t.Fatalf("a config with the error %v", err)
			}
			for _, e := range leafErrors(err) {
				var ce *ConfigError
				if !errors.As(e, &ce) || ce.File != fuzzConfigPath || ce.Msg == "" || (ce.Key == "" && ce.Line == 0) {
					t.Fatalf("error %q (%T) does not name the file and a key or line", e, e)
				}
			}
			return
		}
		if err := c.validate(c.lines); err != nil {
			t.Fatalf("accepted, then refused on validating again: %v", err)
		}
		again, err := toml.Marshal(c)
		if err != nil {
			t.Fatalf("accepted config does not encode: %v", err)
		}
		c2, err := parseConfig(fuzzConfigPath, again)
		if err != nil {
			t.Fatalf("accepted config, written back, is refused: %v\n%s", err, again)
		}
		if back, _ := toml.Marshal(c2); !bytes.Equal(back, again) {
			t.Fatalf("accepted config changed on the way back:\n%s\nbecame\n%s", again, back)
		}
		if len(c.listenAddrs) != len(c.Listeners) {
			t.Fatalf("%d listener addresses for %d listeners", len(c.listenAddrs), len(c.Listeners))
		}
		if c.drainGrace() <= 0 || c.drainGrace() >= c.deadline() {
			t.Fatalf("drain grace %v, deadline %v", c.drainGrace(), c.deadline())
		}
	})
}

// leafErrors unwraps joined errors.
func leafErrors(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, leafErrors(e)...)
		}
		return out
	}
	return []error{err}
}

// FuzzReadLine: the trigger socket's line reader never panics, returns
// what precedes the first newline (or the whole input when the client
// closed without one) within its bound, reports a longer line as too
// long, and reads the same however the bytes arrive.
func FuzzReadLine(f *testing.F) {
	for _, s := range []string{"status\n", "handoff /usr/bin/d\nmore", "status", "", "\n", "\r\n", "handoff\r\n", strings.Repeat("x", 40) + "\n"} {
		f.Add([]byte(s), uint8(16))
		f.Add([]byte(s), uint8(0))
	}
	f.Fuzz(func(t *testing.T, data []byte, bound uint8) {
		max := maxLine
		if bound > 0 {
			max = int(bound)
		}
		line, err := readLine(bytes.NewReader(data), max)
		for _, r := range []io.Reader{iotest.OneByteReader(bytes.NewReader(data)), iotest.HalfReader(bytes.NewReader(data))} {
			line2, err2 := readLine(r, max)
			if line2 != line || !errors.Is(err2, err) && !(err2 == nil && err == nil) {
				t.Fatalf("read in pieces: %q, %v; at once: %q, %v", line2, err2, line, err)
			}
		}
		nl := bytes.IndexByte(data, '\n')
		switch {
		case nl >= 0 && nl <= max:
			if err != nil || line != string(data[:nl]) {
				t.Fatalf("got %q, %v; want %q", line, err, data[:nl])
			}
		case nl < 0 && len(data) > 0 && len(data) <= max:
			if err != nil || line != string(data) {
				t.Fatalf("without a newline: got %q, %v; want %q", line, err, data)
			}
		case len(data) == 0:
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("empty input: %q, %v", line, err)
			}
		default:
			if !errors.Is(err, errLineTooLong) {
				t.Fatalf("a line over %d bytes: %q, %v", max, line, err)
			}
		}
	})
}

// FuzzParseCommand: the command parser never panics; what it accepts is
// a known verb with a trimmed argument, parses again the same when
// written back, and every refusal fits on the reply line.
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"handoff", "handoff\r", "  handoff   /usr/bin/d v2 ", "status", "status now", "", "reboot", "handoff\t/x", "\x00", "status\r\r"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		cmd, err := parseCommand(line)
		if err != nil {
			if reply := errReply(err); strings.ContainsAny(reply, "\r\n") {
				t.Fatalf("refusal spans lines: %q", reply)
			}
			return
		}
		switch {
		case cmd.verb == "status" && cmd.binary == "":
		case cmd.verb == "handoff" && cmd.binary == strings.TrimSpace(cmd.binary):
		default:
			t.Fatalf("%q parsed as %+v", line, cmd)
		}
		again := cmd.verb
		if cmd.binary != "" {
			again += " " + cmd.binary
		}
		if cmd2, err := parseCommand(again); err != nil || cmd2 != cmd {
			t.Fatalf("%q parsed as %+v; written back as %q it parses as %+v, %v", line, cmd, again, cmd2, err)
		}
	})
}

// FuzzUpgradeAnswer: the upgrade command's reading of a reply never
// panics, exits 0 only for an "ok:" reply with committed=true, and
// refuses what it cannot read naming the reply.
func FuzzUpgradeAnswer(f *testing.F) {
	f.Add(handoffReply(supervisor.Outcome{ID: "a1", Committed: true, PID: 42, BuildID: "v2", Phases: supervisor.PhaseTimings{AcceptGap: time.Millisecond}}))
	f.Add(handoffReply(supervisor.Outcome{ID: "b2", AbortReason: "the successor (pid 43) exited:\nexit status 3 \"quoted\""}))
	for _, s := range []string{"err: permission denied", "ok: committed=maybe", `ok: id="unterminated`, "ok: ", "", "hello", `ok: a=1 a=2 committed=true`, "ok: committed=true reason=\"\\x00\""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, reply string) {
		answer, code, err := upgradeAnswer(reply)
		switch {
		case err != nil:
			if code != exitFailure || !strings.Contains(err.Error(), strconv.Quote(reply)) {
				t.Fatalf("%q: exit %d, error %q does not quote the reply", reply, code, err)
			}
		case code == exitOK:
			rest, ok := strings.CutPrefix(reply, "ok: ")
			fields, ferr := okline.Fields(rest)
			if !ok || ferr != nil || fields["committed"] != "true" || !strings.HasPrefix(answer, "committed: ") {
				t.Fatalf("%q: exit 0 with %q", reply, answer)
			}
		case code != exitFailure:
			t.Fatalf("%q: exit %d", reply, code)
		}
	})
}

// FuzzParseFields: the key=value reader of "ok:" replies never panics,
// and what it reads, written back (values quoted, keys sorted), reads the
// same.
func FuzzParseFields(f *testing.F) {
	for _, s := range []string{`id=a1 committed=true pid=42 build_id="v2" reason=""`, `reason="a \"b\" c"`, `x=`, `=x`, `a b`, `a="\u00e9\n"`, `k=v  k2="w"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fields, err := okline.Fields(s)
		if err != nil {
			return
		}
		var b strings.Builder
		for _, k := range slices.Sorted(maps.Keys(fields)) {
			b.WriteString(k + "=" + strconv.Quote(fields[k]) + " ")
		}
		again, err := okline.Fields(b.String())
		if err != nil || !maps.Equal(again, fields) {
			t.Fatalf("%q read as %q; written back as %q it reads as %q, %v", s, fields, b.String(), again, err)
		}
	})
}

// FuzzHandoffReply: whatever a handoff's outcome holds, its reply line is
// one line that the upgrade command reads back with the right exit
// status and the same id, build id and reason.
func FuzzHandoffReply(f *testing.F) {
	f.Add("a1b2", "v2 (x)", "", true, 42, int64(1500000))
	f.Add("cd34", "", "the successor exited:\nexit status 3 \"quoted\"", false, 0, int64(0))
	f.Add("", "\x00", "\\", false, -1, int64(-1))
	f.Fuzz(func(t *testing.T, id, build, reason string, committed bool, pid int, gap int64) {
		o := supervisor.Outcome{ID: supervisor.HandoffID(id), Committed: committed, PID: pid, BuildID: build, AbortReason: reason,
			Phases: supervisor.PhaseTimings{AcceptGap: time.Duration(gap), LibraryOverhead: time.Duration(-gap)}}
		line := handoffReply(o)
		if strings.ContainsAny(line, "\r\n") {
			t.Fatalf("reply spans lines: %q", line)
		}
		_, code, err := upgradeAnswer(line)
		if want := map[bool]int{true: exitOK, false: exitFailure}[committed]; err != nil || code != want {
			t.Fatalf("%q: exit %d, %v; want exit %d", line, code, err, want)
		}
		fields, err := okline.Fields(strings.TrimPrefix(line, "ok: "))
		if err != nil || fields["id"] != id || fields["build_id"] != build || fields["reason"] != oneLine(reason) || fields["pid"] != strconv.Itoa(pid) {
			t.Fatalf("%q read back as %q, %v", line, fields, err)
		}
	})
}

// FuzzStatusAnswer: the status command's reading of a reply never
// panics; what it accepts prints without error.
func FuzzStatusAnswer(f *testing.F) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := supervisor.Status{Phase: supervisor.PhaseIdle, IncumbentPID: 42, IncumbentBinary: "/bin/d", IncumbentBuildID: "v1", IncumbentSince: now.Add(-time.Hour),
		Listeners: []string{"web"}, Handoffs: 1, LastOutcomes: []supervisor.Outcome{{ID: "a1", Committed: true, Started: now}, {ID: "b2", AbortReason: "x"}}}
	body, err := json.Marshal(buildStatus(st, loopStatus{pid: 7, started: now, knownGood: "/bin/d", restart: &restartStatus{At: now, Reason: "died"}}, now))
	if err != nil {
		f.Fatal(err)
	}
	f.Add("ok: " + string(body))
	body, _ = json.Marshal(buildStatus(supervisor.Status{}, loopStatus{}, now))
	f.Add("ok: " + string(body))
	for _, s := range []string{"err: permission denied", "ok: {", "ok: null", "ok: []", `ok: {"supervisor":{"uptime_secs":1e300},"incumbent":{"uptime_secs":-1e300}}`, ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, reply string) {
		body, r, err := statusAnswer(reply)
		if err != nil {
			if !errors.Is(err, errNotOK) && !strings.HasPrefix(err.Error(), "decode the supervisor's status") {
				t.Fatalf("%q: %v", reply, err)
			}
			return
		}
		if !strings.HasSuffix(reply, body) {
			t.Fatalf("%q: body %q", reply, body)
		}
		if err := writeStatus(io.Discard, r); err != nil {
			t.Fatalf("%q: print: %v", reply, err)
		}
	})
}
