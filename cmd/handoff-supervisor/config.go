package main

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/handoff-go/handoff/supervisor"
	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// Defaults for optional configuration keys.
const (
	defaultDrainGrace = supervisor.DefaultDrainGrace
	defaultDeadline   = supervisor.DefaultDeadline
	defaultLogFormat  = "text"
	// maxSecs bounds every *_secs key: a day is already far beyond any
	// sensible handoff.
	maxSecs = 24 * 60 * 60
	// minSecs is the shortest *_secs value, a millisecond.
	minSecs = 0.001
)

// Config is the supervisor's TOML configuration. Every key is documented
// in the help text (usage.go); validate checks all of them in one place.
type Config struct {
	ControlSocket   string     `toml:"control_socket"`
	TriggerSocket   string     `toml:"trigger_socket"`
	Binary          string     `toml:"binary"`
	Args            []string   `toml:"args"`
	Env             []string   `toml:"env"`
	DrainGraceSecs  float64    `toml:"drain_grace_secs"`
	DeadlineSecs    float64    `toml:"deadline_secs"`
	Journal         string     `toml:"journal"`
	AllowedBinaries []string   `toml:"allowed_binaries"`
	AllowedUIDs     []uint32   `toml:"allowed_uids"`
	MetricsAddr     string     `toml:"metrics_addr"`
	LogFormat       string     `toml:"log_format"`
	Listeners       []Listener `toml:"listeners"`

	// path is the file the configuration was read from, doc its text
	// (passed to a re-executed supervisor, which falls back to it when the
	// file no longer loads).
	path string
	doc  []byte
	// listenAddrs holds the parsed addr of each listener, by index.
	listenAddrs []listenAddr
	// lines locates keys for errors found after parsing.
	lines keyLines
}

// Listener is one [[listeners]] table.
type Listener struct {
	Name string `toml:"name"`
	Addr string `toml:"addr"`
}

// ConfigError is a problem with one key of the configuration file. Line is
// 0 when the key is missing from the file.
type ConfigError struct {
	File string
	Line int
	Key  string
	Msg  string
	Err  error // the underlying error, if any
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": key %s", e.Key)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the underlying error.
func (e *ConfigError) Unwrap() error { return e.Err }

// loadConfig reads, decodes and validates the file at path. The error
// joins one *ConfigError per problem found.
func loadConfig(path string) (*Config, error) {
	doc, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return parseConfig(path, doc)
}

// parseConfig decodes doc strictly and validates it; path names the file
// in errors.
func parseConfig(path string, doc []byte) (*Config, error) {
	var c Config
	kl := newKeyLines(doc)
	dec := toml.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, decodeErrors(path, kl, err)
	}
	c.path, c.doc, c.lines = path, doc, kl
	if err := c.validate(c.lines); err != nil {
		return nil, err
	}
	return &c, nil
}

// decodeErrors turns go-toml's errors into ConfigErrors naming key (with
// the index of an array-of-tables entry) and line, in terms of TOML rather
// than of Go types.
func decodeErrors(path string, kl keyLines, err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		errs := make([]error, 0, len(strict.Errors))
		for i := range strict.Errors {
			de := &strict.Errors[i]
			line, _ := de.Position()
			errs = append(errs, &ConfigError{File: path, Line: line, Key: displayKey(kl.entryKey(de.Key(), line)), Msg: "unknown key", Err: de})
		}
		return errors.Join(errs...)
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		return &ConfigError{File: path, Line: line, Key: displayKey(kl.entryKey(de.Key(), line)), Msg: typeMessage(de.Error()), Err: de}
	}
	return &ConfigError{File: path, Msg: "cannot decode", Err: err}
}

// go-toml's type errors name Go types: "cannot decode TOML integer into
// struct field main.Listener.Name of type string", "negative integer
// value -1 cannot be stored in uint32".
var (
	goTypeError  = regexp.MustCompile(`cannot decode TOML (\w+) into .* of type (\S+)`)
	goRangeError = regexp.MustCompile(`integer value (-?\d+) cannot be stored in (\S+)`)
)

// typeMessage says what a type error means for the key, without Go's names.
func typeMessage(msg string) string {
	msg = strings.TrimPrefix(msg, "toml: ")
	want := func(goType string) string {
		if w, ok := map[string]string{
			"string": "a string", "float64": "a number", "uint32": "a user id (an integer from 0 to 4294967295)",
			"[]string": "an array of strings", "[]uint32": "an array of user ids", "[]main.Listener": "[[listeners]] tables",
		}[goType]; ok {
			return w
		}
		return "another type"
	}
	if m := goTypeError.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("want %s, got %s", want(m[2]), m[1])
	}
	if m := goRangeError.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("want %s, got %s", want(m[2]), m[1])
	}
	return msg
}

// entryKey numbers a key inside an array of tables ("listeners", "port")
// by the entry that holds line: "listeners.1.port".
func (kl keyLines) entryKey(key []string, line int) string {
	if len(key) < 2 {
		return strings.Join(key, ".")
	}
	idx := -1
	for i := 0; ; i++ {
		l, ok := kl[key[0]+"."+strconv.Itoa(i)]
		if !ok || l > line {
			break
		}
		idx = i
	}
	if idx < 0 {
		return strings.Join(key, ".")
	}
	return key[0] + "." + strconv.Itoa(idx) + "." + strings.Join(key[1:], ".")
}

// keyLines maps dotted key paths to the line that sets them. Entries of an
// array of tables are numbered: "listeners.0.addr".
type keyLines map[string]int

func newKeyLines(doc []byte) keyLines {
	lines := keyLines{}
	var p unstable.Parser
	p.Reset(doc)
	prefix := ""
	arrays := map[string]int{}
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.KeyValue:
			k, r := keyOf(e)
			lines[prefix+k] = p.Shape(r).Start.Line
		case unstable.Table:
			k, r := keyOf(e)
			lines[k] = p.Shape(r).Start.Line
			prefix = k + "."
		case unstable.ArrayTable:
			k, r := keyOf(e)
			i := arrays[k]
			arrays[k]++
			entry := k + "." + strconv.Itoa(i)
			lines[entry] = p.Shape(r).Start.Line
			prefix = entry + "."
		}
	}
	return lines
}

func keyOf(n *unstable.Node) (string, unstable.Range) {
	var parts []string
	var r unstable.Range
	it := n.Key()
	for it.Next() {
		if len(parts) == 0 {
			r = it.Node().Raw
		}
		parts = append(parts, string(it.Node().Data))
	}
	return strings.Join(parts, "."), r
}

// line returns the line of key, or of the nearest enclosing key that the
// file sets (an inline table sets its fields on the line of its parent).
func (kl keyLines) line(key string) int {
	for k := key; k != ""; {
		if l, ok := kl[k]; ok {
			return l
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

// displayKey writes an internal key path ("listeners.0.addr") the way a
// person reads it ("listeners[0].addr").
func displayKey(key string) string {
	var b strings.Builder
	for i, part := range strings.Split(key, ".") {
		if _, err := strconv.Atoi(part); err == nil && i > 0 {
			b.WriteString("[" + part + "]")
			continue
		}
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(part)
	}
	return b.String()
}

// validate checks every key, applies defaults and parses the listener
// addresses. It reports every problem, not just the first.
func (c *Config) validate(kl keyLines) error {
	var errs []error
	fail := func(key, format string, args ...any) {
		errs = append(errs, &ConfigError{File: c.path, Line: kl.line(key), Key: displayKey(key), Msg: fmt.Sprintf(format, args...)})
	}
	failErr := func(key string, err error, format string, args ...any) {
		errs = append(errs, &ConfigError{File: c.path, Line: kl.line(key), Key: displayKey(key), Msg: fmt.Sprintf(format, args...) + ": " + err.Error(), Err: err})
	}
	absPath := func(key, p string, required bool) {
		switch {
		case p == "" && required:
			fail(key, "is required")
		case p == "":
		case !filepath.IsAbs(p):
			fail(key, "%q must be an absolute path", p)
		case filepath.Clean(p) != p:
			fail(key, "%q is not a clean path (did you mean %q?)", p, filepath.Clean(p))
		}
	}

	absPath("control_socket", c.ControlSocket, true)
	absPath("trigger_socket", c.TriggerSocket, true)
	if err := checkSocketPathLen(c.ControlSocket, controlTmpExtra, "the daemon"); err != nil {
		failErr("control_socket", err, "%.40q...", c.ControlSocket)
	}
	if err := checkSocketPathLen(c.TriggerSocket, triggerTmpExtra, "the supervisor"); err != nil {
		failErr("trigger_socket", err, "%.40q...", c.TriggerSocket)
	}
	absPath("binary", c.Binary, true)
	absPath("journal", c.Journal, false)
	for _, b := range c.AllowedBinaries {
		absPath("allowed_binaries", b, true)
	}
	for i, kv := range c.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			fail("env", "entry %d (%q) is not of the form KEY=value", i, kv)
		}
	}

	secs := func(key string, v float64, def time.Duration) time.Duration {
		switch {
		case v == 0:
			return def
		case math.IsNaN(v) || v < 0 || v > maxSecs:
			fail(key, "%v is out of range (0 < secs <= %d)", v, maxSecs)
			return def
		case v < minSecs:
			// It would round to nothing, and 0 means the default.
			fail(key, "%v is too short (at least %v; leave the key out for the default)", v, minSecs)
			return def
		}
		return time.Duration(v * float64(time.Second))
	}
	drain := secs("drain_grace_secs", c.DrainGraceSecs, defaultDrainGrace)
	deadline := secs("deadline_secs", c.DeadlineSecs, defaultDeadline)
	if drain >= deadline {
		fail("drain_grace_secs", "%v must be shorter than deadline_secs (%v)", drain.Seconds(), deadline.Seconds())
	}
	c.DrainGraceSecs, c.DeadlineSecs = drain.Seconds(), deadline.Seconds()

	if c.MetricsAddr != "" {
		if err := checkHostPort(c.MetricsAddr); err != nil {
			failErr("metrics_addr", err, "%q is not host:port", c.MetricsAddr)
		}
	}
	switch c.LogFormat {
	case "":
		c.LogFormat = defaultLogFormat
	case "text", "json":
	default:
		fail("log_format", "%q is neither \"text\" nor \"json\"", c.LogFormat)
	}

	names := map[string]int{}
	addrs := map[listenAddr]int{}
	c.listenAddrs = make([]listenAddr, len(c.Listeners))
	for i, l := range c.Listeners {
		key := fmt.Sprintf("listeners.%d", i)
		if err := checkListenerName(l.Name); err != nil {
			failErr(key+".name", err, "listener %d", i+1)
		} else if j, dup := names[l.Name]; dup {
			fail(key+".name", "duplicate listener name %q (also listener %d, line %d)", l.Name, j+1, kl.line(fmt.Sprintf("listeners.%d.name", j)))
		} else {
			names[l.Name] = i
		}
		if l.Addr == "" {
			fail(key+".addr", "is required")
			continue
		}
		a, err := parseListenAddr(l.Addr)
		if err != nil {
			failErr(key+".addr", err, "bad address %q", l.Addr)
			continue
		}
		if j, dup := addrs[a]; dup {
			fail(key+".addr", "address %q is also used by listener %d", l.Addr, j+1)
		}
		addrs[a] = i
		c.listenAddrs[i] = a
	}
	for _, e := range c.pathClashes() {
		fail(e.key, "%s", e.msg)
	}
	return errors.Join(errs...)
}

// A unix socket path must fit in a socket address: sun_path holds 108
// bytes, the terminating NUL included. The trigger and control sockets
// are first bound under a temporary name beside their path, which must
// fit too: ".t<pid>-<name>" (listenTrigger) and ".<name>.tmp-<pid>" (the
// handoff package, in the daemon). A Linux pid has at most 7 digits
// (pid_max is at most 4194304).
const (
	sunPathMax      = 107
	maxPIDDigits    = 7
	triggerTmpExtra = len(".t") + maxPIDDigits + len("-")
	controlTmpExtra = len(".") + len(".tmp-") + maxPIDDigits
)

// checkSocketPathLen checks that p, and the temporary name extra bytes
// longer that binder binds first, fit in a socket address.
func checkSocketPathLen(p string, extra int, binder string) error {
	if len(p)+extra <= sunPathMax {
		return nil
	}
	return fmt.Errorf("is %d bytes long; at most %d fit: a unix socket address holds %d bytes, and %s first binds a temporary name up to %d bytes longer beside it",
		len(p), sunPathMax-extra, sunPathMax, binder, extra)
}

// pathClash is a path key that names the same file as another key, or a
// file inside it.
type pathClash struct{ key, msg string }

// pathClashes checks that the files the supervisor and its daemons create
// or replace (the sockets, the journal, the unix listeners) and the
// configuration file are all distinct, and that none lies inside another:
// each is a file, not a directory. It reports each clash once, at the
// later key. Listeners on the same address are reported by validate.
func (c *Config) pathClashes() []pathClash {
	type file struct {
		key, what, path string
		addr            listenAddr // for a listener
	}
	var files []file
	if c.path != "" {
		if abs, err := filepath.Abs(c.path); err == nil {
			files = append(files, file{what: "the configuration file", path: abs})
		}
	}
	for _, k := range []struct{ key, path string }{{"control_socket", c.ControlSocket}, {"trigger_socket", c.TriggerSocket}, {"journal", c.Journal}} {
		files = append(files, file{key: k.key, what: k.key, path: k.path})
	}
	for i, a := range c.listenAddrs {
		if a.Network == "unix" || a.Network == "unixgram" {
			key := fmt.Sprintf("listeners.%d.addr", i)
			files = append(files, file{key, fmt.Sprintf("%s (listener %q)", displayKey(key), c.Listeners[i].Name), a.Address, a})
		}
	}
	usable := func(p string) bool { return p != "/" && filepath.IsAbs(p) && filepath.Clean(p) == p }
	clash := func(a, b file) string {
		switch {
		case !usable(a.path) || !usable(b.path):
			return ""
		case a.path == b.path && a.addr != (listenAddr{}) && a.addr == b.addr:
			return ""
		case a.path == b.path:
			return fmt.Sprintf("%q is also %s; each needs a path of its own", b.path, a.what)
		case strings.HasPrefix(b.path, a.path+"/"):
			return fmt.Sprintf("%q lies inside %s (%s), which is a file, not a directory", b.path, a.what, a.path)
		case strings.HasPrefix(a.path, b.path+"/"):
			return fmt.Sprintf("%q would have to be a directory holding %s (%s)", b.path, a.what, a.path)
		}
		return ""
	}
	var out []pathClash
	for j, b := range files {
		for _, a := range files[:j] {
			if msg := clash(a, b); msg != "" {
				out = append(out, pathClash{b.key, msg})
				break
			}
		}
	}
	return out
}

// checkListenerName enforces what LISTEN_FDNAMES and our re-exec
// environment can carry.
func checkListenerName(name string) error {
	if name == "" {
		return errors.New("name is required")
	}
	if len(name) > 255 {
		return fmt.Errorf("name %.20q... is longer than 255 characters", name)
	}
	for _, r := range name {
		if r <= ' ' || r > '~' || r == ':' || r == ',' || r == '=' {
			return fmt.Errorf("name %q may hold only printable ASCII without spaces, ':', ',' or '='", name)
		}
	}
	return nil
}

// listenAddr is a parsed listener address.
type listenAddr struct {
	Network string // tcp, udp, unix or unixgram
	Address string // host:port or an absolute path
}

func (a listenAddr) String() string {
	if a.Network == "tcp" {
		return a.Address
	}
	return a.Network + ":" + a.Address
}

// stream reports whether the address is for a stream listener.
func (a listenAddr) stream() bool { return a.Network == "tcp" || a.Network == "unix" }

// parseListenAddr parses "host:port" (TCP), "tcp:host:port",
// "udp:host:port", "unix:/path" and "unixgram:/path".
func parseListenAddr(s string) (listenAddr, error) {
	network, rest, ok := strings.Cut(s, ":")
	switch {
	case ok && (network == "unix" || network == "unixgram"):
		if !filepath.IsAbs(rest) {
			return listenAddr{}, fmt.Errorf("%s socket path %q must be absolute", network, rest)
		}
		if filepath.Clean(rest) != rest {
			return listenAddr{}, fmt.Errorf("%s socket path %q is not clean", network, rest)
		}
		// sun_path holds 108 bytes including the terminating NUL.
		if len(rest) > 107 {
			return listenAddr{}, fmt.Errorf("%s socket path is %d bytes long; at most 107 fit in a socket address", network, len(rest))
		}
		return listenAddr{network, rest}, nil
	case ok && (network == "tcp" || network == "udp"):
		if err := checkHostPort(rest); err != nil {
			return listenAddr{}, err
		}
		return listenAddr{network, rest}, nil
	}
	if err := checkHostPort(s); err != nil {
		return listenAddr{}, fmt.Errorf("%w (want host:port, tcp:host:port, udp:host:port, unix:/path or unixgram:/path)", err)
	}
	return listenAddr{"tcp", s}, nil
}

// checkHostPort accepts host:port with a numeric port and a host that is
// empty, an IP address or a name.
func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("host %q is not an address or a name", host)
	}
	return nil
}

// reexecChange says why a re-executed supervisor could not take over with
// next in place of c, or returns "": the listeners and the control socket
// live on across a re-exec, so changing them needs a full restart.
func (c *Config) reexecChange(next *Config) string {
	if next.ControlSocket != c.ControlSocket {
		return fmt.Sprintf("control_socket changed from %s to %s; the running daemon listens on the old one (restart the service to change it)", c.ControlSocket, next.ControlSocket)
	}
	same := len(next.Listeners) == len(c.Listeners)
	for i := 0; same && i < len(c.Listeners); i++ {
		same = c.Listeners[i].Name == next.Listeners[i].Name && c.listenAddrs[i] == next.listenAddrs[i]
	}
	if !same {
		return "the [[listeners]] changed; the running daemon holds the old sockets (restart the service to change them)"
	}
	return ""
}

// spawnSpec is what a handoff or cold start of binary runs.
func (c *Config) spawnSpec(binary string) supervisor.SpawnSpec {
	return supervisor.SpawnSpec{
		Binary:     binary,
		Args:       c.Args,
		Env:        c.Env,
		DrainGrace: c.drainGrace(),
		Deadline:   c.deadline(),
	}
}

func (c *Config) drainGrace() time.Duration {
	return time.Duration(c.DrainGraceSecs * float64(time.Second))
}

func (c *Config) deadline() time.Duration {
	return time.Duration(c.DeadlineSecs * float64(time.Second))
}

// canonicalBinary resolves p to an absolute path without symlinks and
// checks that it is an executable regular file.
func canonicalBinary(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("binary %s: %w", p, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("binary %s: %w", p, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("binary %s: %w", p, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("binary %s (%s) is not an executable file", p, real)
	}
	return real, nil
}

// checkBinary checks that the configured binary exists and is executable
// now; the run command calls it before starting anything.
func (c *Config) checkBinary() error {
	if _, err := canonicalBinary(c.Binary); err != nil {
		return &ConfigError{File: c.path, Line: c.lines.line("binary"), Key: "binary", Msg: err.Error(), Err: err}
	}
	return nil
}

// errNotAllowed marks a binary that neither binary nor allowed_binaries names.
var errNotAllowed = errors.New("not allowed")

// allowedBinary resolves requested (empty means the configured binary) and
// checks it against binary and allowed_binaries, both canonicalised now:
// a package manager may have moved a symlink since the config was read.
// It returns the canonical path to spawn.
func (c *Config) allowedBinary(requested string) (string, error) {
	if requested == "" {
		return canonicalBinary(c.Binary)
	}
	if !filepath.IsAbs(requested) {
		return "", fmt.Errorf("binary %q: %w: the path must be absolute", requested, errNotAllowed)
	}
	want, err := canonicalBinary(requested)
	if err != nil {
		return "", err
	}
	for _, a := range append([]string{c.Binary}, c.AllowedBinaries...) {
		if got, err := canonicalBinary(a); err == nil && got == want {
			return want, nil
		}
	}
	return "", fmt.Errorf("binary %s: %w: neither binary nor allowed_binaries names it", requested, errNotAllowed)
}
