package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// executable writes an executable file in dir and returns its path.
func executable(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

const validConfig = `# a full configuration
control_socket    = "/run/d/handoff.sock"
trigger_socket    = "/run/d/handoff.trigger"
binary            = "/usr/local/bin/d"
args              = ["--data", "/var/lib/d"]
env               = ["GOGC=200", "EMPTY="]
drain_grace_secs  = 2.5
deadline_secs     = 30
journal           = "/var/lib/d/handoff.journal"
allowed_binaries  = ["/usr/local/bin/d-v2"]
allowed_uids      = [1000, 1001]
metrics_addr      = "127.0.0.1:9464"
log_format        = "json"

[[listeners]]
name = "http"
addr = "0.0.0.0:8080"

[[listeners]]
name = "admin"
addr = "unix:/run/d/admin.sock"

[[listeners]]
name = "dns"
addr = "udp:[::1]:53"

[[listeners]]
name = "events"
addr = "unixgram:/run/d/events.sock"
`

func TestParseConfigValid(t *testing.T) {
	c, err := parseConfig("d.toml", []byte(validConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.drainGrace() != 2500*time.Millisecond || c.deadline() != 30*time.Second {
		t.Errorf("durations: drain %v deadline %v", c.drainGrace(), c.deadline())
	}
	if c.LogFormat != "json" || len(c.AllowedUIDs) != 2 || c.AllowedUIDs[1] != 1001 {
		t.Errorf("decoded %+v", c)
	}
	want := []listenAddr{{"tcp", "0.0.0.0:8080"}, {"unix", "/run/d/admin.sock"}, {"udp", "[::1]:53"}, {"unixgram", "/run/d/events.sock"}}
	for i, w := range want {
		if c.listenAddrs[i] != w {
			t.Errorf("listener %d: got %+v, want %+v", i, c.listenAddrs[i], w)
		}
	}
	spec := c.spawnSpec("/x")
	if spec.Binary != "/x" || len(spec.Args) != 2 || len(spec.Env) != 2 || spec.DrainGrace != c.drainGrace() {
		t.Errorf("spawn spec %+v", spec)
	}
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := parseConfig("d.toml", []byte(`
control_socket = "/run/c"
trigger_socket = "/run/t"
binary = "/bin/d"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.drainGrace() != defaultDrainGrace || c.deadline() != defaultDeadline || c.LogFormat != "text" {
		t.Errorf("defaults: drain %v deadline %v format %q", c.drainGrace(), c.deadline(), c.LogFormat)
	}
}

// TestParseConfigErrors checks that each mistake is reported with the
// file, the line and the key.
func TestParseConfigErrors(t *testing.T) {
	const head = "control_socket = \"/run/c\"\ntrigger_socket = \"/run/t\"\nbinary = \"/bin/d\"\n"
	tests := []struct {
		name string
		doc  string
		want []string // substrings of the error, in order
	}{
		{"unknown key", head + "drain_grace = 3\n", []string{"d.toml:4: key drain_grace: unknown key"}},
		{"unknown key in listener", head + "[[listeners]]\nname = \"a\"\naddr = \":1\"\nport = 3\n", []string{"d.toml:7: key listeners[0].port: unknown key"}},
		{"unknown key in second listener", head + "[[listeners]]\nname = \"a\"\naddr = \":1\"\n[[listeners]]\nname = \"b\"\naddr = \":2\"\nport = 3\n", []string{"d.toml:10: key listeners[1].port: unknown key"}},
		{"listener name type", head + "[[listeners]]\nname = 5\naddr = \":1\"\n", []string{"d.toml:5: key listeners[0].name: want a string, got integer"}},
		{"secs type", head + "deadline_secs = \"60\"\n", []string{"d.toml:4: key deadline_secs: want a number, got string"}},
		{"uid range", head + "allowed_uids = [-1]\n", []string{"d.toml:4: key allowed_uids: want a user id (an integer from 0 to 4294967295), got -1"}},
		{"listeners type", head + "listeners = 3\n", []string{"d.toml:4: key listeners: want [[listeners]] tables, got integer"}},
		{"two unknown keys", head + "a = 1\nb = 2\n", []string{"d.toml:4: key a: unknown key", "d.toml:5: key b: unknown key"}},
		{"bad type", head + "deadline_secs = \"60\"\n", []string{"d.toml:4: key deadline_secs:", "string"}},
		{"bad type in array", head + "allowed_uids = [1, \"x\"]\n", []string{"d.toml:4: key allowed_uids:"}},
		{"syntax", head + "binary = \n", []string{"d.toml:4"}},
		{"duplicate key", head + "binary = \"/bin/e\"\n", []string{"d.toml:4: key binary:", "already defined"}},
		{"missing binary", "control_socket = \"/run/c\"\ntrigger_socket = \"/run/t\"\n", []string{"d.toml: key binary: is required"}},
		{"missing sockets", "binary = \"/bin/d\"\n", []string{"key control_socket: is required", "key trigger_socket: is required"}},
		{"relative binary", "control_socket = \"/run/c\"\ntrigger_socket = \"/run/t\"\nbinary = \"bin/d\"\n", []string{"d.toml:3: key binary:", "absolute"}},
		{"unclean path", head + "journal = \"/var/lib/../j\"\n", []string{"d.toml:4: key journal:", "clean"}},
		{"relative allowed", head + "allowed_binaries = [\"/ok\", \"rel\"]\n", []string{"d.toml:4: key allowed_binaries:", "\"rel\" must be an absolute path"}},
		{"same sockets", "control_socket = \"/run/c\"\ntrigger_socket = \"/run/c\"\nbinary = \"/bin/d\"\n", []string{"d.toml:2: key trigger_socket: \"/run/c\" is also control_socket"}},
		{"trigger is the journal", "journal = \"/run/t\"\n" + head, []string{"d.toml:1: key journal: \"/run/t\" is also trigger_socket"}},
		{"journal is the control socket", head + "journal = \"/run/c\"\n", []string{"d.toml:4: key journal: \"/run/c\" is also control_socket"}},
		{"trigger is a listener", head + "[[listeners]]\nname = \"a\"\naddr = \"unix:/run/t\"\n", []string{"d.toml:6: key listeners[0].addr: \"/run/t\" is also trigger_socket"}},
		{"trigger inside a listener", "control_socket = \"/run/c\"\ntrigger_socket = \"/run/l.sock/t\"\nbinary = \"/bin/d\"\n[[listeners]]\nname = \"a\"\naddr = \"unixgram:/run/l.sock\"\n",
			[]string{"d.toml:6: key listeners[0].addr: \"/run/l.sock\" would have to be a directory holding trigger_socket (/run/l.sock/t)"}},
		{"journal inside the control socket", head + "journal = \"/run/c/j\"\n", []string{"d.toml:4: key journal: \"/run/c/j\" lies inside control_socket (/run/c), which is a file, not a directory"}},
		{"control is a listener", head + "[[listeners]]\nname = \"web\"\naddr = \"unix:/run/c\"\n", []string{"d.toml:6: key listeners[0].addr: \"/run/c\" is also control_socket"}},
		{"long trigger", "control_socket = \"/run/c\"\ntrigger_socket = \"/" + strings.Repeat("t", 97) + "\"\nbinary = \"/bin/d\"\n",
			[]string{"d.toml:2: key trigger_socket: ", "is 98 bytes long; at most 97 fit: a unix socket address holds 107 bytes, and the supervisor first binds a temporary name up to 10 bytes longer beside it"}},
		{"long control", "control_socket = \"/" + strings.Repeat("c", 94) + "\"\ntrigger_socket = \"/run/t\"\nbinary = \"/bin/d\"\n",
			[]string{"d.toml:1: key control_socket: ", "is 95 bytes long; at most 94 fit: a unix socket address holds 107 bytes, and the daemon first binds a temporary name up to 13 bytes longer beside it"}},
		{"long listener", head + "[[listeners]]\nname = \"a\"\naddr = \"unix:/" + strings.Repeat("l", 107) + "\"\n",
			[]string{"d.toml:6: key listeners[0].addr: ", "unix socket path is 108 bytes long; at most 107 fit"}},
		{"bad env", head + "env = [\"NOEQUALS\"]\n", []string{"d.toml:4: key env:", "KEY=value"}},
		{"drain too long", head + "drain_grace_secs = 60\ndeadline_secs = 60\n", []string{"d.toml:4: key drain_grace_secs:", "shorter than deadline_secs"}},
		{"negative secs", head + "deadline_secs = -1\n", []string{"d.toml:4: key deadline_secs:", "out of range"}},
		{"huge secs", head + "deadline_secs = 1e30\n", []string{"d.toml:4: key deadline_secs:", "out of range"}},
		{"tiny secs", head + "drain_grace_secs = 1e-300\ndeadline_secs = 10\n", []string{"d.toml:4: key drain_grace_secs: 1e-300 is too short (at least 0.001; leave the key out for the default)"}},
		{"bad log format", head + "log_format = \"xml\"\n", []string{"d.toml:4: key log_format:"}},
		{"bad metrics addr", head + "metrics_addr = \"9464\"\n", []string{"d.toml:4: key metrics_addr:"}},
		{"bad address", head + "[[listeners]]\nname = \"a\"\naddr = \"localhost\"\n", []string{"d.toml:6: key listeners[0].addr: bad address \"localhost\""}},
		{"bad port", head + "[[listeners]]\nname = \"a\"\naddr = \"udp::99999\"\n", []string{"d.toml:6: key listeners[0].addr:", "port"}},
		{"relative unix", head + "[[listeners]]\nname = \"a\"\naddr = \"unix:x.sock\"\n", []string{"d.toml:6: key listeners[0].addr:", "absolute"}},
		{"missing addr", head + "[[listeners]]\nname = \"a\"\n", []string{"d.toml:4: key listeners[0].addr: is required"}},
		{"missing name", head + "[[listeners]]\naddr = \":1\"\n", []string{"d.toml:4: key listeners[0].name:", "name is required"}},
		{"bad name", head + "[[listeners]]\nname = \"a:b\"\naddr = \":1\"\n", []string{"d.toml:5: key listeners[0].name:"}},
		{"duplicate names", head + "[[listeners]]\nname = \"a\"\naddr = \":1\"\n[[listeners]]\nname = \"a\"\naddr = \":2\"\n",
			[]string{"d.toml:8: key listeners[1].name: duplicate listener name \"a\" (also listener 1, line 5)"}},
		{"duplicate addrs", head + "[[listeners]]\nname = \"a\"\naddr = \":1\"\n[[listeners]]\nname = \"b\"\naddr = \":1\"\n",
			[]string{"d.toml:9: key listeners[1].addr: address \":1\" is also used by listener 1"}},
		{"inline table", head + "listeners = [{name = \"a\", addr = \"nope\"}]\n", []string{"d.toml:4: key listeners[0].addr:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig("d.toml", []byte(tt.doc))
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			rest := msg
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("error %q lacks %q (in order)", msg, w)
				}
				rest = rest[i+len(w):]
			}
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Errorf("error %q holds no *ConfigError", msg)
			}
		})
	}
}

// TestParseConfigNamesItself: a socket or journal path that is the
// configuration file itself is refused.
func TestParseConfigNamesItself(t *testing.T) {
	for _, key := range []string{"trigger_socket", "control_socket", "journal"} {
		paths := map[string]string{"control_socket": "/run/c", "trigger_socket": "/run/t", "journal": "/var/lib/j"}
		paths[key] = "/etc/handoff/h.toml"
		doc := fmt.Sprintf("control_socket = %q\ntrigger_socket = %q\njournal = %q\nbinary = \"/bin/d\"\n", paths["control_socket"], paths["trigger_socket"], paths["journal"])
		_, err := parseConfig("/etc/handoff/h.toml", []byte(doc))
		if want := "key " + key + ": \"/etc/handoff/h.toml\" is also the configuration file"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s is the config file: %v, want %q", key, err, want)
		}
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	_, err := loadConfig(filepath.Join(t.TempDir(), "none.toml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v, want ErrNotExist", err)
	}
}

func TestCheckBinary(t *testing.T) {
	dir := t.TempDir()
	doc := "control_socket = \"/run/c\"\ntrigger_socket = \"/run/t\"\nbinary = \"" + filepath.Join(dir, "missing") + "\"\n"
	c, err := parseConfig("d.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	err = c.checkBinary()
	if err == nil || !strings.HasPrefix(err.Error(), "d.toml:3: key binary:") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v", err)
	}
}

func TestParseListenAddr(t *testing.T) {
	tests := []struct {
		in      string
		want    listenAddr
		wantErr string
	}{
		{in: "0.0.0.0:8080", want: listenAddr{"tcp", "0.0.0.0:8080"}},
		{in: ":8080", want: listenAddr{"tcp", ":8080"}},
		{in: "[::]:80", want: listenAddr{"tcp", "[::]:80"}},
		{in: "localhost:0", want: listenAddr{"tcp", "localhost:0"}},
		{in: "tcp:127.0.0.1:1", want: listenAddr{"tcp", "127.0.0.1:1"}},
		{in: "udp:0.0.0.0:53", want: listenAddr{"udp", "0.0.0.0:53"}},
		{in: "unix:/run/x.sock", want: listenAddr{"unix", "/run/x.sock"}},
		{in: "unixgram:/run/x.sock", want: listenAddr{"unixgram", "/run/x.sock"}},
		{in: "", wantErr: "missing port"},
		{in: "8080", wantErr: "missing port"},
		{in: "host:http", wantErr: "not a number"},
		{in: "host:65536", wantErr: "not a number"},
		{in: "udp:53", wantErr: "missing port"},
		{in: "unix:", wantErr: "absolute"},
		{in: "unix:rel/x", wantErr: "absolute"},
		{in: "unix:/a/../b", wantErr: "clean"},
		{in: "unix:/" + strings.Repeat("x", 120), wantErr: "at most 107"},
		{in: "sctp:1.2.3.4:5", wantErr: "want host:port"},
		{in: "a b:1", wantErr: "host"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseListenAddr(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %+v, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
			}
			if back, err := parseListenAddr(got.String()); err != nil || back != got {
				t.Errorf("String() %q does not parse back: %+v, %v", got.String(), back, err)
			}
		})
	}
}

func TestAllowedBinary(t *testing.T) {
	dir := t.TempDir()
	v1 := executable(t, dir, "d-v1")
	v2 := executable(t, dir, "d-v2")
	other := executable(t, dir, "other")
	link := filepath.Join(dir, "d")
	if err := os.Symlink(v1, link); err != nil {
		t.Fatal(err)
	}
	v2link := filepath.Join(dir, "d-v2-link")
	if err := os.Symlink(v2, v2link); err != nil {
		t.Fatal(err)
	}
	notExec := filepath.Join(dir, "notexec")
	if err := os.WriteFile(notExec, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c := &Config{Binary: link, AllowedBinaries: []string{v2, filepath.Join(dir, "not-installed-yet"), notExec}}
	tests := []struct {
		req, want, wantErr string
	}{
		{req: "", want: v1},
		{req: link, want: v1},
		{req: v1, want: v1},
		{req: v2, want: v2},
		{req: v2link, want: v2}, // resolved before comparing
		{req: other, wantErr: "neither binary nor allowed_binaries"},
		{req: "d-v2", wantErr: "absolute"},
		{req: filepath.Join(dir, "missing"), wantErr: "no such file"},
		{req: notExec, wantErr: "not an executable file"},
	}
	for _, tt := range tests {
		t.Run(filepath.Base(tt.req), func(t *testing.T) {
			got, err := c.allowedBinary(tt.req)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %q, %v; want error containing %q", got, err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.req) {
					t.Errorf("error %q does not name %q", err, tt.req)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	// A package manager moves the symlink: the configured binary now means v2.
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(v2, link); err != nil {
		t.Fatal(err)
	}
	if got, err := c.allowedBinary(""); err != nil || got != v2 {
		t.Fatalf("after the symlink moved: got %q, %v; want %q", got, err, v2)
	}
}
