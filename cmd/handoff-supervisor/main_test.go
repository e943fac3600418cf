package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

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
	// Every subcommand's --help prints it too.
	for _, cmd := range []string{"run", "upgrade", "status"} {
		if o, _, code := runCmd(t, cmd, "--help"); code != 0 || o != helpText {
			t.Errorf("%s --help: exit %d", cmd, code)
		}
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

func TestVersion(t *testing.T) {
	out, _, code := runCmd(t, "version")
	if code != 0 || !strings.HasPrefix(out, "handoff-supervisor ") {
		t.Fatalf("exit %d, %q", code, out)
	}
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

// TestClientWithoutSupervisor: upgrade and status fail clearly when
// nothing serves the trigger socket.
func TestClientWithoutSupervisor(t *testing.T) {
	dir := shortDir(t)
	cfg := filepath.Join(dir, "c.toml")
	os.WriteFile(cfg, []byte("control_socket = \""+dir+"/c\"\ntrigger_socket = \""+dir+"/t\"\nbinary = \"/bin/true\"\n"), 0o644)
	for _, cmd := range []string{"upgrade", "status"} {
		_, stderr, code := runCmd(t, cmd, "--config", cfg)
		if code != 1 || !strings.Contains(stderr, "connect to the supervisor's trigger socket") {
			t.Errorf("%s: exit %d, stderr %q", cmd, code, stderr)
		}
	}
}
