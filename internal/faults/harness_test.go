package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/proc"
	"github.com/handoff-go/handoff/internal/testutil"
	"golang.org/x/sys/unix"
)

// Bounds of every wait in these tests.
const (
	buildTimeout  = 3 * time.Minute
	startTimeout  = 20 * time.Second // the supervisor and its daemon answering
	cliTimeout    = 30 * time.Second // one upgrade or status command
	stopTimeout   = 20 * time.Second // the supervisor's exit after SIGTERM
	requestBound  = 10 * time.Second // one HTTP request
	restartBound  = 20 * time.Second // a killed daemon replaced by a new one
	dumpTimeout   = 20 * time.Second
	pollInterval  = 10 * time.Millisecond
	drainGrace    = "2"
	deadlineSecs  = "8"
	valueSize     = 300 // bytes: a few writes fill a page of a full tmpfs
	initialWrites = 40
)

// bins are the binaries under test, built once per test binary.
type bins struct {
	kvd, supervisor string
	err             error
}

var (
	buildOnce sync.Once
	built     bins
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// binaries builds kvd and handoff-supervisor (once), or skips the test
// when it cannot run here: these tests mount filesystems and change other
// processes' limits, which needs root on Linux.
func binaries(t *testing.T) bins {
	t.Helper()
	if runtime.GOOS != "linux" {
		skip(t, "resource faults are Linux-only")
	}
	if os.Geteuid() != 0 {
		skip(t, "the resource-fault tests mount filesystems and set other processes' limits: they need root")
	}
	buildOnce.Do(func() {
		var err error
		if buildDir, err = os.MkdirTemp("", "faults-bin"); err != nil {
			built.err = err
			return
		}
		root, err := moduleRoot()
		if err != nil {
			built.err = err
			return
		}
		built.kvd = os.Getenv("FAULTS_KVD")
		targets := map[string]string{"handoff-supervisor": "./cmd/handoff-supervisor"}
		if built.kvd == "" {
			built.kvd = filepath.Join(buildDir, "kvd")
			targets["kvd"] = "./examples/kvd"
		}
		built.supervisor = filepath.Join(buildDir, "handoff-supervisor")
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		for name, pkg := range targets {
			cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(buildDir, name), pkg)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				built.err = fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
				return
			}
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built
}

// envRequired makes a test that cannot run here fail instead of skipping:
// CI sets it, so that the set is not skipped without anyone noticing.
const envRequired = "FAULTS_REQUIRED"

// skip skips the test with the reason, or fails it when envRequired is
// set.
func skip(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv(envRequired) != "" {
		t.Fatalf("%s is set, but: "+format, append([]any{envRequired}, args...)...)
	}
	t.Skipf(format, args...)
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the module")
	}
	return filepath.Dir(mod), nil
}

// mountTmpfs mounts a tmpfs with opts (e.g. "size=1m") on dir, which it
// creates, and unmounts it when the test ends; it skips the test if the
// mount fails. Register it before anything that uses dir, so that its
// cleanup runs after theirs.
func mountTmpfs(t *testing.T, dir, opts string) {
	t.Helper()
	testutil.Must(t, os.MkdirAll(dir, 0o755))
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, opts); err != nil {
		skip(t, "mount a tmpfs (%s) on %s: %v", opts, dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// fill writes a file in dir until the filesystem is full and returns its
// path: remove it to free the space again.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	testutil.Must(t, err)
	defer f.Close()
	chunk := bytes.Repeat([]byte{'x'}, 4096)
	for i := 0; ; i++ {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			return path
		}
		if i > 1<<16 {
			t.Fatalf("filling %s: 256 MiB written and no ENOSPC", dir)
		}
	}
}

// options are what a test changes in the cluster's setup.
type options struct {
	data, journalDir, controlDir string   // default: inside the cluster's directory
	args                         []string // the daemon's, after --data
	scripts                      map[string]string
}

// cluster is handoff-supervisor, a process of its own started from a TOML
// config, running kvd on a TCP listener.
type cluster struct {
	t                      *testing.T
	bins                   bins
	dir                    string
	cfg, data, journal     string
	control, trigger, logs string
	addr                   string
	binary                 string            // the configured binary: kvd
	scripts                map[string]string // name → path of each wrapper script
	sup                    *exec.Cmd
	exited                 chan struct{}
	client                 *http.Client
	acked                  map[string]string // every write kvd acknowledged, and its value
	next                   int               // for unique keys
}

// newCluster writes the config and starts the supervisor, and waits until
// kvd answers. The scripts (name → shell body) become wrapper scripts in
// the binaries' directory, allowed as successors; "$KVD" in a body is the
// kvd binary.
func newCluster(t *testing.T, dir string, o options) *cluster {
	t.Helper()
	b := binaries(t)
	c := &cluster{t: t, bins: b, dir: dir, acked: map[string]string{}, scripts: map[string]string{},
		client: &http.Client{Timeout: requestBound, Transport: &http.Transport{DisableKeepAlives: true}}}
	c.data = o.data
	if c.data == "" {
		c.data = filepath.Join(dir, "data")
	}
	jdir, cdir := o.journalDir, o.controlDir
	if jdir == "" {
		jdir = dir
	}
	if cdir == "" {
		cdir = dir
	}
	c.journal, c.control = filepath.Join(jdir, "journal"), filepath.Join(cdir, "control.sock")
	c.trigger, c.cfg, c.logs = filepath.Join(dir, "trigger.sock"), filepath.Join(dir, "handoff.toml"), filepath.Join(dir, "processes.log")
	bin := filepath.Join(dir, "bin")
	testutil.Must(t, os.MkdirAll(bin, 0o755))
	testutil.Must(t, os.MkdirAll(c.data, 0o700))
	// The configured binary is a link to kvd, so that the supervisor's
	// pin of the known-good binary names a file of this test.
	c.binary = filepath.Join(bin, "kvd")
	testutil.Must(t, os.Symlink(b.kvd, c.binary))
	allowed := []string{}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range o.scripts {
			if !yield(k) {
				return
			}
		}
	}) {
		p := filepath.Join(bin, name)
		body := strings.ReplaceAll(o.scripts[name], "$KVD", strconv.Quote(b.kvd))
		testutil.Must(t, os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755))
		c.scripts[name] = p
		allowed = append(allowed, p)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	testutil.Must(t, err)
	c.addr = ln.Addr().String()
	ln.Close()
	args := append([]string{"--data", c.data}, o.args...)
	doc := fmt.Sprintf(`control_socket   = %s
trigger_socket   = %s
binary           = %s
args             = %s
allowed_binaries = %s
drain_grace_secs = %s
deadline_secs    = %s
journal          = %s

[[listeners]]
name = "http"
addr = %s
`, tomlString(c.control), tomlString(c.trigger), tomlString(c.binary), tomlList(args), tomlList(allowed),
		drainGrace, deadlineSecs, tomlString(c.journal), tomlString(c.addr))
	testutil.Must(t, os.WriteFile(c.cfg, []byte(doc), 0o644))
	c.start()
	return c
}

func tomlString(s string) string { return strconv.Quote(s) }

func tomlList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// start runs the supervisor and waits until kvd answers.
func (c *cluster) start() {
	t := c.t
	t.Helper()
	logs, err := os.OpenFile(c.logs, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	testutil.Must(t, err)
	c.sup = exec.Command(c.bins.supervisor, "run", "--config", c.cfg)
	c.sup.Stdout, c.sup.Stderr = logs, logs
	testutil.Must(t, c.sup.Start())
	logs.Close()
	c.exited = make(chan struct{})
	go func() {
		c.sup.Wait()
		close(c.exited)
	}()
	t.Cleanup(c.cleanup)
	deadline := time.Now().Add(startTimeout)
	for {
		if _, err := c.statsErr(); err == nil {
			return
		}
		select {
		case <-c.exited:
			t.Fatalf("the supervisor exited at start: %v\n%s", c.sup.ProcessState, c.logTail())
		case <-time.After(pollInterval):
		}
		if time.Now().After(deadline) {
			t.Fatalf("kvd did not answer within %v\n%s", startTimeout, c.logTail())
		}
	}
}

// cleanup kills whatever is left (a test that failed half-way) and shows
// the processes' logs of a failed test.
func (c *cluster) cleanup() {
	select {
	case <-c.exited:
	default:
		kids, _ := proc.Children(c.sup.Process.Pid)
		c.sup.Process.Kill()
		<-c.exited
		for _, pid := range kids {
			proc.KillGroup(pid, syscall.SIGKILL)
		}
	}
	if c.t.Failed() {
		c.t.Logf("processes' log:\n%s", c.logTail())
	}
}

// logTail is the end of the processes' log.
func (c *cluster) logTail() string {
	b, _ := os.ReadFile(c.logs)
	const keep = 12 << 10
	if len(b) > keep {
		b = b[len(b)-keep:]
	}
	return string(b)
}

// log returns the whole processes' log.
func (c *cluster) log() string {
	b, err := os.ReadFile(c.logs)
	testutil.Must(c.t, err)
	return string(b)
}

// stop sends SIGTERM to the supervisor and waits for it to exit.
func (c *cluster) stop() {
	c.t.Helper()
	testutil.Must(c.t, c.sup.Process.Signal(syscall.SIGTERM))
	select {
	case <-c.exited:
	case <-time.After(stopTimeout):
		c.t.Fatalf("the supervisor did not exit within %v of SIGTERM", stopTimeout)
	}
}

// do sends one HTTP request to kvd.
func (c *cluster) do(method, path, body string) (int, string, error) {
	req, err := http.NewRequest(method, "http://"+c.addr+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// stats is kvd's GET /stats.
type stats struct {
	Revision   uint64 `json:"revision"`
	Keys       int    `json:"keys"`
	BuildID    string `json:"build_id"`
	PID        int    `json:"pid"`
	Writable   bool   `json:"writable"`
	WriteError string `json:"write_error"`
}

func (c *cluster) statsErr() (stats, error) {
	code, body, err := c.do("GET", "/stats", "")
	if err != nil {
		return stats{}, err
	}
	if code != http.StatusOK {
		return stats{}, fmt.Errorf("GET /stats: %d %s", code, body)
	}
	var st stats
	err = json.Unmarshal([]byte(body), &st)
	return st, err
}

func (c *cluster) stats() stats {
	c.t.Helper()
	st, err := c.statsErr()
	if err != nil {
		c.t.Fatalf("kvd does not answer: %v", err)
	}
	return st
}

// value is the value of the i-th key a test writes.
func value(i int) string {
	return fmt.Sprintf("%06d-%s", i, strings.Repeat("v", valueSize-7))
}

// put writes a fresh key and records it if kvd acknowledged it. It
// returns the status and body.
func (c *cluster) put() (int, string) {
	c.t.Helper()
	i := c.next
	c.next++
	key := fmt.Sprintf("k%06d", i)
	code, body, err := c.do("PUT", "/kv/"+key, value(i))
	if err != nil {
		c.t.Fatalf("PUT %s: %v", key, err)
	}
	if code == http.StatusOK {
		c.acked[key] = value(i)
	}
	return code, body
}

// putOK writes n fresh keys, each of which must be acknowledged.
func (c *cluster) putOK(n int) {
	c.t.Helper()
	for range n {
		if code, body := c.put(); code != http.StatusOK {
			c.t.Fatalf("PUT = %d %s, want 200", code, body)
		}
	}
}

// putUntilRefused writes until kvd refuses a write, at most limit times,
// and returns the refusal.
func (c *cluster) putUntilRefused(limit int) (code int, body string, acked int) {
	c.t.Helper()
	for range limit {
		code, body := c.put()
		if code != http.StatusOK {
			return code, body, acked
		}
		acked++
	}
	c.t.Fatalf("kvd acknowledged %d writes on a disk that takes none", limit)
	return 0, "", 0
}

// checkReads reads every acknowledged write back from the live daemon.
func (c *cluster) checkReads() {
	c.t.Helper()
	for k, v := range c.acked {
		code, body, err := c.do("GET", "/kv/"+k, "")
		if err != nil || code != http.StatusOK || body != v {
			c.t.Fatalf("GET %s = %d %.40q, %v; want the acknowledged value (%d acknowledged)", k, code, body, err, len(c.acked))
		}
	}
}

// checkDump stops nothing: with the supervisor stopped, it runs kvd
// --dump on dir and checks every acknowledged write is there.
func (c *cluster) checkDump(dir string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dumpTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bins.kvd, "--dump", "--data", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		c.t.Fatalf("kvd --dump: %v\n%s", err, stderr.String())
	}
	var d struct {
		Revision uint64            `json:"revision"`
		Data     map[string][]byte `json:"data"`
	}
	testutil.Must(c.t, json.Unmarshal(out, &d))
	for k, v := range c.acked {
		if string(d.Data[k]) != v {
			c.t.Fatalf("kvd --dump: %s = %.40q, want the acknowledged value (%d acknowledged, %d dumped)", k, d.Data[k], len(c.acked), len(d.Data))
		}
	}
	c.t.Logf("kvd --dump: all %d acknowledged writes there, %d keys at revision %d", len(c.acked), len(d.Data), d.Revision)
}

// upgrade runs handoff-supervisor upgrade to binary and returns its line
// and whether the handoff committed (exit status 0).
func (c *cluster) upgrade(binary string) (line string, committed bool) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bins.supervisor, "upgrade", "--config", c.cfg, "--binary", binary)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if ctx.Err() != nil || (err != nil && !errors.As(err, &ee)) {
		c.t.Fatalf("handoff-supervisor upgrade: %v (%v): %s", err, ctx.Err(), stderr.String())
	}
	line = strings.TrimSpace(out.String() + stderr.String())
	return line, err == nil
}

// mustCommit hands off to binary and fails unless it committed.
func (c *cluster) mustCommit(binary string) {
	c.t.Helper()
	before := c.stats().PID
	line, ok := c.upgrade(binary)
	if !ok {
		c.t.Fatalf("handoff to %s did not commit: %s", filepath.Base(binary), line)
	}
	after := c.stats().PID
	if after == before {
		c.t.Fatalf("handoff committed (%s) but pid %d still serves", line, before)
	}
	c.awaitOnlyChild(after)
	c.t.Logf("handoff to %s: %s", filepath.Base(binary), line)
}

// awaitOnlyChild waits until pid is the supervisor's only child: the
// daemon a handoff replaced finishes its requests and exits.
func (c *cluster) awaitOnlyChild(pid int) {
	c.t.Helper()
	deadline := time.Now().Add(restartBound)
	for {
		kids := c.children()
		if len(kids) == 1 && kids[0] == pid {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the supervisor's children are %v %v after the commit, want only %d", kids, restartBound, pid)
		}
		time.Sleep(pollInterval)
	}
}

// mustAbort hands off to binary and fails unless it rolled back with a
// reason containing every one of want, the incumbent serving on: the same
// process, holding its supervisor's descriptors as before, and no new
// child left behind.
func (c *cluster) mustAbort(binary string, want ...string) string {
	c.t.Helper()
	before := c.stats().PID
	fds, kids, incFDs := c.supervisorFDs(), c.children(), countFDs(c.t, before)
	line, ok := c.upgrade(binary)
	if ok {
		c.t.Fatalf("handoff to %s committed, want a rollback: %s", filepath.Base(binary), line)
	}
	for _, w := range want {
		if !strings.Contains(line, w) {
			c.t.Fatalf("handoff to %s: %q does not say %q", filepath.Base(binary), line, w)
		}
	}
	if after := c.stats().PID; after != before {
		c.t.Fatalf("after the rollback pid %d serves, not the incumbent %d: %s", after, before, line)
	}
	if got := c.children(); !slices.Equal(got, kids) {
		c.t.Fatalf("the supervisor's children were %v before the handoff, %v after", kids, got)
	}
	c.checkFDs(fds)
	c.checkIncumbentFDs(before, incFDs)
	c.t.Logf("handoff to %s: %s", filepath.Base(binary), line)
	return line
}

// checkIncumbentFDs checks that the incumbent pid, back from a rollback,
// holds at most the before descriptors it held before the handoff (the
// connection of a request just answered may still be closing).
func (c *cluster) checkIncumbentFDs(pid, before int) {
	c.t.Helper()
	deadline := time.Now().Add(requestBound)
	for {
		got := countFDs(c.t, pid)
		if got <= before {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the incumbent held %d descriptors before the handoff, %d for %v after", before, got, requestBound)
		}
		time.Sleep(pollInterval)
	}
}

// checkFDs checks that the supervisor holds at most the before
// descriptors it held before a handoff: a leak stays, while a trigger
// connection being closed is gone in a moment, so it waits for that.
func (c *cluster) checkFDs(before int) {
	c.t.Helper()
	deadline := time.Now().Add(requestBound)
	for {
		got := c.supervisorFDs()
		if got <= before {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the supervisor held %d descriptors before the handoff, %d for %v after", before, got, requestBound)
		}
		time.Sleep(pollInterval)
	}
}

// supervisorFDs is the number of descriptors the supervisor holds.
func (c *cluster) supervisorFDs() int {
	c.t.Helper()
	return countFDs(c.t, c.sup.Process.Pid)
}

func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	testutil.Must(t, err)
	return len(ents)
}

// children are the supervisor's child processes, sorted.
func (c *cluster) children() []int {
	c.t.Helper()
	kids, err := proc.Children(c.sup.Process.Pid)
	testutil.Must(c.t, err)
	slices.Sort(kids)
	return kids
}

// kill kills the serving daemon and waits until the supervisor has
// started another that answers.
func (c *cluster) kill() stats {
	c.t.Helper()
	old := c.stats().PID
	testutil.Must(c.t, syscall.Kill(old, syscall.SIGKILL))
	deadline := time.Now().Add(restartBound)
	for {
		if st, err := c.statsErr(); err == nil && st.PID != old {
			return st
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no daemon answered within %v of killing pid %d", restartBound, old)
		}
		time.Sleep(pollInterval)
	}
}

// prlimit lowers the soft descriptor limit of pid to n, as prlimit --pid
// PID --nofile=N: does (prlimit(2)), and returns a function that puts the
// old one back. The hard limit stays: lowering it for good is all a test
// could do here, since raising a hard limit needs CAP_SYS_RESOURCE in the
// initial user namespace, which a container's root lacks. Go raises its
// soft limit to the hard one only at start, so a running process keeps
// the lowered one.
func prlimit(t *testing.T, pid, n int) (restore func()) {
	t.Helper()
	var old unix.Rlimit
	testutil.Must(t, unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old))
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(n), Max: old.Max}, nil); err != nil {
		t.Fatalf("prlimit --pid %d --nofile=%d:%d: %v", pid, n, old.Max, err)
	}
	return func() {
		if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Errorf("prlimit --pid %d back to %d:%d: %v", pid, old.Cur, old.Max, err)
		}
	}
}

// outcome is one of the last outcomes status --json reports.
type outcome struct {
	ID          string  `json:"id"`
	Committed   bool    `json:"committed"`
	AbortReason string  `json:"abort_reason"`
	DrainMS     float64 `json:"drain_ms"`
	SealMS      float64 `json:"seal_ms"`
	AcceptGapMS float64 `json:"accept_gap_ms"`
}

// lastOutcome runs status --json and returns the last handoff's outcome.
func (c *cluster) lastOutcome() outcome {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cliTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.bins.supervisor, "status", "--config", c.cfg, "--json").Output()
	if err != nil {
		c.t.Fatalf("handoff-supervisor status --json: %v", err)
	}
	var st struct {
		LastOutcomes []outcome `json:"last_outcomes"`
	}
	testutil.Must(c.t, json.Unmarshal(out, &st))
	if len(st.LastOutcomes) == 0 {
		c.t.Fatalf("status reports no handoff: %s", out)
	}
	return st.LastOutcomes[len(st.LastOutcomes)-1]
}

// checkNotDrained checks that the last handoff never asked the incumbent
// to drain: no accept gap.
func (c *cluster) checkNotDrained() {
	c.t.Helper()
	if o := c.lastOutcome(); o.DrainMS != 0 || o.AcceptGapMS != 0 {
		c.t.Errorf("the incumbent was drained (drain %.1f ms, accept gap %.1f ms) for handoff %s: %s", o.DrainMS, o.AcceptGapMS, o.ID, o.AbortReason)
	}
}
