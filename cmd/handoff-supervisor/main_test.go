package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/supervisor"
	"github.com/prometheus/client_golang/prometheus"
)

// runCmd runs the command line args in-process.
func runCmd(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	code = exitCode(err, &errOut)
	return out.String(), errOut.String(), code
}

// TestHelpDocumentsEverything: every configuration key (read from the
// toml tags) starts an indented line of the help, and every metric of the
// supervisor's registry is named in it.
func TestHelpDocumentsEverything(t *testing.T) {
	out, _, code := runCmd(t, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	documented := func(key string) bool {
		return regexp.MustCompile(`(?m)^ +` + regexp.QuoteMeta(key) + `( |$)`).MatchString(out)
	}
	var keys func(typ reflect.Type)
	keys = func(typ reflect.Type) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			key := tag
			if f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct {
				key = "[[" + tag + "]]"
				keys(f.Type.Elem())
			}
			if !documented(key) {
				t.Errorf("help has no line starting with the key %q", key)
			}
		}
	}
	keys(reflect.TypeFor[Config]())

	m := newMetrics()
	for _, c := range m.own() {
		ch := make(chan *prometheus.Desc, 16)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			name := regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(d.String())
			if name == nil {
				t.Fatalf("cannot read the name of %s", d)
			}
			if !regexp.MustCompile(`(?m)^ +` + regexp.QuoteMeta(name[1]) + `\b`).MatchString(out) {
				t.Errorf("help does not list the metric %s", name[1])
			}
		}
	}
	for _, want := range []string{
		"run", "upgrade", "status", "version", "--config", "--binary", "--timeout", "--json",
		"SIGHUP", "SIGTERM", "SIGUSR2", "Type=notify-reload",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q", want)
		}
	}
	for _, args := range [][]string{{"-h"}, {"-help"}, {"help"}} {
		if o, _, code := runCmd(t, args...); code != 0 || o != helpText {
			t.Errorf("%q: exit %d, not the help", args, code)
		}
	}
}

// commandFlagSets returns, for each command with its own usage, its flag
// set (run's is runDaemon's: only --config).
func commandFlagSets() map[string]*flag.FlagSet {
	up, _ := upgradeFlags()
	st, _ := statusFlags()
	run := newFlagSet("run")
	run.String("config", "", "configuration `file` (required)") // as runDaemon's
	return map[string]*flag.FlagSet{"run": run, "upgrade": up, "status": st, "version": versionFlags()}
}

// TestCommandHelp: COMMAND -h, -help and --help, also after other flags,
// and help COMMAND print that command's own usage to stdout (not the
// whole help) and exit 0: its synopsis, its one-line summary and each of
// its flags, each named in the synopsis too.
func TestCommandHelp(t *testing.T) {
	for name, fs := range commandFlagSets() {
		doc, ok := commandDocs[name]
		if !ok {
			t.Fatalf("no commandDoc for %s", name)
		}
		var want []string
		fs.VisitAll(func(f *flag.Flag) {
			flagName := "--" + f.Name
			if placeholder, _ := flag.UnquoteUsage(f); placeholder != "" {
				flagName += " " + strings.ToUpper(placeholder)
			}
			want = append(want, flagName)
			if !regexp.MustCompile(regexp.QuoteMeta(flagName) + `\b`).MatchString(doc.synopsis) {
				t.Errorf("%s: the synopsis %q lacks %s", name, doc.synopsis, flagName)
			}
		})
		var first string
		for _, args := range [][]string{
			{name, "-h"}, {name, "-help"}, {name, "--help"}, {name, "--config", "x.toml", "--help"}, {"help", name},
		} {
			if name == "version" && len(args) == 4 {
				continue
			}
			out, stderr, code := runCmd(t, args...)
			if code != 0 || stderr != "" {
				t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
			}
			if !strings.HasPrefix(out, "Usage: "+doc.synopsis+"\n") || strings.Contains(out, "Configuration (TOML") {
				t.Errorf("%q: not %s's own usage:\n%s", args, name, out)
			}
			one := strings.Join(strings.Fields(out), " ")
			if !strings.Contains(one, doc.summary) || !strings.Contains(out, "-h, --help") {
				t.Errorf("%q: the usage lacks the summary %q or -h:\n%s", args, doc.summary, out)
			}
			for _, w := range want {
				if !regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(w) + `\b`).MatchString(out) {
					t.Errorf("%q: the usage lists no flag %s:\n%s", args, w, out)
				}
			}
			for _, line := range strings.Split(out, "\n") {
				if len(line) > usageWidth {
					t.Errorf("%q: line longer than %d columns: %q", args, usageWidth, line)
				}
			}
			if first == "" {
				first = out
			} else if out != first {
				t.Errorf("%q prints another usage than %s -h", args, name)
			}
		}
	}
	if _, stderr, code := runCmd(t, "help", "frobnicate"); code != 2 || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("help frobnicate: exit %d, %q", code, stderr)
	}
}

// TestCommandUsageErrorPointsAtItsHelp: a bad flag of a command names
// that command's --help.
func TestCommandUsageErrorPointsAtItsHelp(t *testing.T) {
	for _, cmd := range []string{"upgrade", "status", "run", "version"} {
		_, stderr, code := runCmd(t, cmd, "--bogus")
		if code != 2 || !strings.Contains(stderr, "Run 'handoff-supervisor "+cmd+" --help' for usage.") {
			t.Errorf("%s --bogus: exit %d, stderr %q", cmd, code, stderr)
		}
	}
	if _, stderr, _ := runCmd(t, "frobnicate"); !strings.Contains(stderr, "Run 'handoff-supervisor --help' for usage.") {
		t.Errorf("an unknown command: %q", stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"run"},
		{"--config"},
		{"upgrade", "--bogus"},
		{"status", "--config", "x", "extra"},
		{"version", "x"},
	} {
		_, stderr, code := runCmd(t, args...)
		if code != 2 || !strings.Contains(stderr, "handoff-supervisor:") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
}

// TestVersion: version and --version print the same line, from the
// binary's build information.
func TestVersion(t *testing.T) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		t.Fatal("the test binary holds no build information")
	}
	want := "handoff-supervisor " + formatVersion(bi) + "\n"
	for _, arg := range []string{"version", "--version", "-version"} {
		out, stderr, code := runCmd(t, arg)
		if code != 0 || out != want || stderr != "" {
			t.Errorf("%s: exit %d, %q %q, want %q", arg, code, out, stderr, want)
		}
	}
	if !strings.Contains(want, runtime.Version()) {
		t.Errorf("%q lacks the Go version %s", want, runtime.Version())
	}
}

func TestFormatVersion(t *testing.T) {
	rev := "0123456789abcdef0123456789abcdef01234567"
	for _, tc := range []struct {
		name string
		bi   *debug.BuildInfo
		want string
	}{
		{"release", &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Version: "v1.2.3"}}, "v1.2.3 (go1.26.1)"},
		{"release with vcs", &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Version: "v1.2.3"},
			Settings: []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: "false"}}},
			"v1.2.3 (revision " + rev + ", go1.26.1)"},
		{"modified tree", &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Version: "v0.0.0-20260101000000-0123456789ab+dirty"},
			Settings: []debug.BuildSetting{{Key: "vcs.modified", Value: "true"}, {Key: "vcs.revision", Value: rev}}},
			"v0.0.0-20260101000000-0123456789ab+dirty (revision " + rev + ", modified, go1.26.1)"},
		{"devel without vcs", &debug.BuildInfo{GoVersion: "go1.26.1", Main: debug.Module{Version: "(devel)"}}, "(devel) (go1.26.1)"},
		{"no main version", &debug.BuildInfo{GoVersion: "go1.26.1"}, "(devel) (go1.26.1)"},
		{"no build information", nil, "(unknown version: the binary holds no build information) (" + runtime.Version() + ")"},
	} {
		if got := formatVersion(tc.bi); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestVersionOfBuiltBinary builds handoff-supervisor (with VCS stamping
// where the checkout allows it) and checks that version prints the
// module version, the revision, whether the tree was modified and the Go
// version, as go version -m reads them from the binary.
func TestVersionOfBuiltBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	exe := filepath.Join(t.TempDir(), "handoff-supervisor")
	build := exec.Command(gobin, "build", "-buildvcs=auto", "-o", exe, ".")
	build.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	meta, err := exec.Command(gobin, "version", "-m", exe).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	var goVersion, modVersion, revision, modified string
	for i, line := range strings.Split(string(meta), "\n") {
		f := strings.Fields(line)
		switch {
		case i == 0 && len(f) == 2:
			goVersion = f[1]
		case len(f) >= 3 && f[0] == "mod":
			modVersion = f[2]
		case len(f) == 2 && f[0] == "build":
			if v, ok := strings.CutPrefix(f[1], "vcs.revision="); ok {
				revision = v
			}
			if v, ok := strings.CutPrefix(f[1], "vcs.modified="); ok {
				modified = v
			}
		}
	}
	if goVersion == "" || modVersion == "" {
		t.Fatalf("cannot read go version -m:\n%s", meta)
	}
	out, err := exec.Command(exe, "version").Output()
	if err != nil {
		t.Fatalf("version: %v", err)
	}
	line := strings.TrimSuffix(string(out), "\n")
	if !strings.HasPrefix(line, "handoff-supervisor "+modVersion+" (") || !strings.HasSuffix(line, goVersion+")") {
		t.Errorf("version: %q, want the module version %s and %s", line, modVersion, goVersion)
	}
	if (revision != "") != strings.Contains(line, "revision "+revision+",") {
		t.Errorf("version: %q, want the revision %q (from go version -m) exactly when there is one", line, revision)
	}
	if (modified == "true") != strings.Contains(line, ", modified,") {
		t.Errorf("version: %q, vcs.modified=%q", line, modified)
	}
	if long, err := exec.Command(exe, "--version").Output(); err != nil || string(long) != string(out) {
		t.Errorf("--version: %v, %q, want %q", err, long, out)
	}
	t.Logf("%s", line)
}

// TestConfigErrorsNameKeyAndLine runs each command on a bad config.
func TestConfigErrorsNameKeyAndLine(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte("control_socket = \"/run/c\"\ntrigger_socket = \"/run/t\"\nbinary = \"/bin/true\"\n\n[[listeners]]\nname = \"web\"\naddr = \"localhost\"\nport = 8080\n"), 0o644)
	for _, args := range [][]string{{"--config", bad}, {"run", "--config", bad}, {"upgrade", "--config", bad}, {"status", "--config", bad}} {
		_, stderr, code := runCmd(t, args...)
		if code != 1 || !strings.Contains(stderr, bad+":8: key listeners[0].port: unknown key") {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
		}
	}
	os.WriteFile(bad, []byte("control_socket = \"/run/c\"\ntrigger_socket = \"/run/t\"\nbinary = \"/bin/true\"\n\n[[listeners]]\nname = \"web\"\naddr = \"localhost\"\n"), 0o644)
	_, stderr, code := runCmd(t, "--config", bad)
	if code != 1 || !strings.Contains(stderr, bad+":7: key listeners[0].addr: bad address \"localhost\"") {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
}

// TestClientWithoutSupervisor: upgrade and status say that no supervisor
// answers at the trigger socket, and what to check, and exit 3, both when
// the socket file is missing and when nothing listens on it (left by a
// supervisor that crashed).
func TestClientWithoutSupervisor(t *testing.T) {
	dir := shortDir(t)
	cfg := filepath.Join(dir, "c.toml")
	trigger := filepath.Join(dir, "t")
	if err := os.WriteFile(cfg, []byte("control_socket = \""+dir+"/c\"\ntrigger_socket = \""+trigger+"\"\nbinary = \"/bin/true\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	check := func(why string) {
		t.Helper()
		for _, cmd := range []string{"upgrade", "status"} {
			out, stderr, code := runCmd(t, cmd, "--config", cfg)
			if code != exitNoSupervisor || out != "" ||
				!strings.Contains(stderr, "handoff-supervisor: no supervisor answers at "+trigger+" ("+why) ||
				!strings.Contains(stderr, "Check that the supervisor runs (e.g. systemctl status") || !strings.Contains(stderr, cfg) {
				t.Errorf("%s, %s: exit %d, stdout %q, stderr %q", why, cmd, code, out, stderr)
			}
		}
	}
	check("the socket file does not exist")

	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: trigger, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	check("nothing listens on the socket file")
}

// TestUpgradeAnswer: the trigger protocol's answers to a handoff, worded
// for a person, and the exit status: only a committed handoff exits 0,
// and no "ok:" line is printed.
func TestUpgradeAnswer(t *testing.T) {
	committed := handoffReply(supervisor.Outcome{ID: "a1", Committed: true, PID: 42, BuildID: "v2",
		Phases: supervisor.PhaseTimings{AcceptGap: 1500 * time.Microsecond, LibraryOverhead: 300 * time.Microsecond}})
	passing := handoffReply(supervisor.Outcome{ID: "a2", Committed: true, PID: 44, BuildID: "v3", PassedConns: 16,
		Phases: supervisor.PhaseTimings{AcceptGap: 2 * time.Millisecond, LibraryOverhead: time.Millisecond}})
	rolledBack := handoffReply(supervisor.Outcome{ID: "b2", AbortReason: "the successor (pid 43) exited: exit status 3"})
	resumeFailed := handoffReply(withResumeFailure(supervisor.Outcome{ID: "c3", AbortReason: "the drain timed out"}, errors.New("no Resumed")))
	for _, tc := range []struct {
		reply, want string
		code        int
	}{
		{committed, "committed: handoff a1, now serving pid 42, build v2 (accept gap 1.5ms, library overhead 300µs)", 0},
		{passing, "committed: handoff a2, now serving pid 44, build v3 (accept gap 2ms, library overhead 1ms, 16 established connections passed)", 0},
		{rolledBack, "rolled back: the successor (pid 43) exited: exit status 3 (handoff b2)", 1},
		{resumeFailed, "rolled back: the drain timed out; the old daemon did not resume (no Resumed) and will be restarted (handoff c3)", 1},
		{`ok: id=d4 committed=false pid=0 build_id="" reason=""`, "rolled back: no reason given (handoff d4)", 1},
		{"err: the binary /bin/sh is not allowed", "err: the binary /bin/sh is not allowed", 1},
	} {
		got, code, err := upgradeAnswer(tc.reply)
		if err != nil || got != tc.want || code != tc.code {
			t.Errorf("%q: %q, exit %d, %v; want %q, exit %d", tc.reply, got, code, err, tc.want, tc.code)
		}
		if strings.HasPrefix(got, "ok:") {
			t.Errorf("%q: printed as %q", tc.reply, got)
		}
	}
	for _, bad := range []string{"", "hello", "ok: committed=maybe", `ok: id="unterminated`} {
		if got, code, err := upgradeAnswer(bad); err == nil || code == 0 {
			t.Errorf("%q: %q, exit %d, no error", bad, got, code)
		}
	}
}

// TestUnitExamples: the Type=notify unit is the Type=notify-reload one
// with Type=notify, ExecReload= for ReloadSignal= and its own comments;
// each says at the top which systemd versions it is for, and the help
// names the notify variant with the same ExecReload= line.
func TestUnitExamples(t *testing.T) {
	raw, err := os.ReadFile("handoff-supervisor-notify.service.example")
	if err != nil {
		t.Fatal(err)
	}
	notifyUnit := string(raw)
	directives := func(unit string) []string {
		var out []string
		for _, line := range strings.Split(unit, "\n") {
			if line != "" && !strings.HasPrefix(line, "#") {
				out = append(out, line)
			}
		}
		return out
	}
	var want []string
	for _, d := range directives(unitExample) {
		switch d {
		case "Type=notify-reload":
			want = append(want, "Type=notify")
		case "ReloadSignal=SIGHUP":
			want = append(want, "ExecReload=/bin/kill -HUP $MAINPID")
		default:
			want = append(want, d)
		}
	}
	if got := directives(notifyUnit); !reflect.DeepEqual(got, want) {
		t.Errorf("the notify unit's directives:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	top := func(unit string) string {
		return strings.Join(strings.Fields(unit[:strings.Index(unit, "[Unit]")]), " ")
	}
	if h := top(unitExample); !strings.Contains(h, "systemd 253 and later") || !strings.Contains(h, "handoff-supervisor-notify.service.example") {
		t.Errorf("the notify-reload unit's top comment: %q", h)
	}
	if h := top(notifyUnit); !strings.Contains(h, "systemd 236 to 252") || !strings.Contains(h, "handoff-supervisor.service.example") {
		t.Errorf("the notify unit's top comment: %q", h)
	}
	help := strings.Join(strings.Fields(helpText), " ")
	for _, want := range []string{"Type=notify-reload (systemd 253 and later)", "Type=notify with ExecReload=/bin/kill -HUP $MAINPID", "handoff-supervisor-notify.service.example"} {
		if !strings.Contains(help, want) {
			t.Errorf("the help lacks %q", want)
		}
	}
}
