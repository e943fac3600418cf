package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/supervisor"
)

// respCluster is a kvdCluster whose supervisor also holds a listener
// "resp", so that every kvd serves RESP there.
type respCluster struct {
	*kvdCluster
	respAddr string
}

// startKVDRESP is startKVD with a listener "resp" beside "http".
func startKVDRESP(t *testing.T) *respCluster {
	t.Helper()
	c, addrs := startKVDOn(t, "http", "resp")
	return &respCluster{kvdCluster: c, respAddr: addrs["resp"]}
}

// needTool skips the test when a program it runs is not installed, or
// fails it when HANDOFF_TOOLS_REQUIRED=1 (CI installs them).
func needTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("%s is not installed (Debian: apt-get install redis-tools): %v", name, err)
	if os.Getenv("HANDOFF_TOOLS_REQUIRED") == "1" {
		t.Fatal(msg + "; HANDOFF_TOOLS_REQUIRED=1")
	}
	t.Skip(msg)
	return ""
}

// lineReader delivers a child's output line by line (a carriage return
// ends a line too: redis-benchmark redraws its progress with one).
func lineReader(r io.Reader) <-chan string {
	ch := make(chan string, 1024)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		sc.Split(func(data []byte, atEOF bool) (int, []byte, error) {
			if i := strings.IndexAny(string(data), "\r\n"); i >= 0 {
				return i + 1, data[:i], nil
			}
			if atEOF && len(data) > 0 {
				return len(data), data, nil
			}
			return 0, nil, nil
		})
		for sc.Scan() {
			if l := strings.TrimSpace(sc.Text()); l != "" {
				ch <- l
			}
		}
	}()
	return ch
}

// TestRedisBenchmarkThroughHandoffs: redis-benchmark -t set,get with 16
// pipelining connections runs while handoffs commit (and one aborts): it
// sees no error (it exits at the first one, a closed connection included)
// and never reconnects: each handoff passes its connections, and the
// processes together accept no more than the benchmark opens without a
// handoff (one to read the configuration, 16 a test).
func TestRedisBenchmarkThroughHandoffs(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns daemons")
	}
	bench := needTool(t, "redis-benchmark")
	c := startKVDRESP(t)
	host, port, _ := net.SplitHostPort(c.respAddr)
	n := 150000 // a SET test long enough for the handoffs, under -race too
	if v, err := strconv.Atoi(os.Getenv("KVD_REDIS_N")); err == nil && v > 0 {
		n = v // a longer run, to measure by hand
	}
	const clients = 16
	cmd := exec.Command(bench, "-h", host, "-p", port, "-t", "set,get", "-n", strconv.Itoa(n), "-c", strconv.Itoa(clients), "-P", "16", "-q")
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); pw.Close() }()
	lines := lineReader(pr)
	t.Cleanup(func() {
		cmd.Process.Kill()
		go func() {
			for range lines {
			}
		}()
		<-exited
	})
	var out []string
	// waitLine reads the output until match says so (true), the
	// benchmark ends its output (false), or the timeout.
	waitLine := func(what string, timeout time.Duration, match func(string) bool) bool {
		timer := time.NewTimer(timeout)
		defer timer.Stop()
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					return false
				}
				out = append(out, l)
				if match(l) {
					return true
				}
			case <-timer.C:
				t.Fatalf("no %s from redis-benchmark within %v; output: %q", what, timeout, out)
			}
		}
	}
	if !waitLine("progress", time.Minute, func(l string) bool { return strings.Contains(l, "rps=") }) {
		t.Fatalf("redis-benchmark ended before it ran: %q", out)
	}

	// accepted: RESP connections each process accepted, by pid (read
	// before it hands off: a reconnect in between shows as more passed).
	accepted := map[int]int64{}
	note := func() {
		st := c.stats()
		accepted[st.PID] = max(accepted[st.PID], st.RESPAccepted)
	}
	specs := []supervisor.SpawnSpec{c.spec("v2"), c.spec("v3"), c.spec("bad", "--fail-before-ready"), c.spec("v4"), c.spec("v5")}
	full := 0 // handoffs that passed every benchmark connection
	for i, spec := range specs {
		select {
		case err := <-exited:
			exited <- err
			t.Logf("redis-benchmark finished before handoff %d", i)
		default:
		}
		note()
		o := c.handoff(spec)
		if want := spec.Args[len(spec.Args)-1] != "--fail-before-ready"; o.Committed != want {
			t.Fatalf("handoff %d to %v: committed %v (%s), want %v", i, spec.Args, o.Committed, o.AbortReason, want)
		}
		if o.PassedConns > clients {
			t.Errorf("handoff %d passed %d connections; the benchmark has %d", i, o.PassedConns, clients)
		}
		if o.PassedConns == clients {
			full++
		}
		t.Logf("handoff %d (%s): committed %v, %d connections passed, accept gap %v", i, spec.Args[3], o.Committed, o.PassedConns, o.Phases.AcceptGap)
	}
	waitLine("the end", 5*time.Minute, func(string) bool { return false })
	err := <-exited
	exited <- err // for the cleanup
	if err != nil {
		t.Fatalf("redis-benchmark: %v; output: %q", err, out)
	}
	note()
	var summaries []string
	for _, l := range out {
		if strings.Contains(strings.ToLower(l), "error") {
			t.Errorf("redis-benchmark reported: %s", l)
		}
		if strings.Contains(l, "requests per second") {
			summaries = append(summaries, l)
		}
	}
	if len(summaries) != 2 {
		t.Errorf("redis-benchmark printed %d results, want 2 (SET, GET): %q", len(summaries), out)
	}
	total := int64(0)
	for _, a := range accepted {
		total += a
	}
	if want := int64(1 + 2*clients); total > want {
		t.Errorf("the processes accepted %d RESP connections (by pid: %v); without reconnects the benchmark opens %d", total, accepted, want)
	}
	if full < 2 {
		t.Errorf("only %d handoffs came while the benchmark's %d connections were open; raise KVD_REDIS_N", full, clients)
	}
	t.Logf("%s; %d RESP connections accepted in all (by pid %v), %d handoffs passed all %d", strings.Join(summaries, "; "), total, accepted, full, clients)
}

// redisCLI is redis-cli run as a child with its standard input a pipe:
// it reads one command a line and prints each reply (raw, as it does when
// not on a terminal).
type redisCLI struct {
	t     *testing.T
	in    io.WriteCloser
	lines <-chan string
	seq   int
}

// do runs cmd and returns the lines of its reply: it sends an ECHO after
// it and reads up to that ECHO's reply.
func (r *redisCLI) do(cmd string) []string {
	r.t.Helper()
	r.seq++
	marker := fmt.Sprintf("sync-%d", r.seq)
	if _, err := fmt.Fprintf(r.in, "%s\nECHO %s\n", cmd, marker); err != nil {
		r.t.Fatalf("redis-cli %s: %v", cmd, err)
	}
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	var got []string
	for {
		select {
		case l, ok := <-r.lines:
			if !ok {
				r.t.Fatalf("redis-cli exited during %s; it printed %q", cmd, got)
			}
			if l == marker {
				return got
			}
			got = append(got, l)
		case <-timer.C:
			r.t.Fatalf("redis-cli %s: no reply within 30s; it printed %q", cmd, got)
		}
	}
}

func (r *redisCLI) want(cmd string, want ...string) {
	r.t.Helper()
	if got := r.do(cmd); strings.Join(got, "\n") != strings.Join(want, "\n") {
		r.t.Fatalf("redis-cli %s: %q, want %q", cmd, got, want)
	}
}

var clientInfoRE = regexp.MustCompile(`^id=(\d+) addr=(\S+) .* db=(\d+) pid=(\d+)$`)

// info is CLIENT INFO: the connection's id, its client address as the
// server sees it, and the server's pid.
func (r *redisCLI) info() (id, addr, db, pid string) {
	r.t.Helper()
	got := r.do("CLIENT INFO")
	if len(got) != 1 {
		r.t.Fatalf("CLIENT INFO: %q", got)
	}
	m := clientInfoRE.FindStringSubmatch(got[0])
	if m == nil {
		r.t.Fatalf("CLIENT INFO: %q", got[0])
	}
	return m[1], m[2], m[3], m[4]
}

// TestRedisCLIKeepsStateThroughHandoff: a redis-cli connection that ran
// SELECT 3 and CLIENT SETNAME x before a handoff answers on the same TCP
// connection after it (same client address and id, another server pid),
// with its database and name, and again after an aborted handoff.
func TestRedisCLIKeepsStateThroughHandoff(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns daemons")
	}
	cliPath := needTool(t, "redis-cli")
	c := startKVDRESP(t)
	host, port, _ := net.SplitHostPort(c.respAddr)
	cmd := exec.Command(cliPath, "-h", host, "-p", port)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); pw.Close() }()
	t.Cleanup(func() {
		in.Close()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	cli := &redisCLI{t: t, in: in, lines: lineReader(pr)}

	cli.want("SELECT 3", "OK")
	cli.want("CLIENT SETNAME x", "OK")
	cli.want("SET greeting hello-db3", "OK")
	id0, addr0, _, pid0 := cli.info()

	for i, step := range []struct {
		spec      supervisor.SpawnSpec
		committed bool
	}{
		{c.spec("v2"), true},
		{c.spec("bad", "--fail-before-ready"), false},
		{c.spec("v3"), true},
	} {
		o := c.handoff(step.spec)
		if o.Committed != step.committed {
			t.Fatalf("handoff %d: committed %v (%s), want %v", i, o.Committed, o.AbortReason, step.committed)
		}
		if o.PassedConns != 1 {
			t.Errorf("handoff %d passed %d connections, want redis-cli's", i, o.PassedConns)
		}
		cli.want("CLIENT GETNAME", "x")
		cli.want("GET greeting", "hello-db3")
		id, addr, db, pid := cli.info()
		if id != id0 || addr != addr0 || db != "3" {
			t.Fatalf("after handoff %d: CLIENT INFO id=%s addr=%s db=%s; before: id=%s addr=%s db=3: not the same connection", i, id, addr, db, id0, addr0)
		}
		if (pid != pid0) != step.committed {
			t.Errorf("after handoff %d (committed %v): served by pid %s, before by %s", i, step.committed, pid, pid0)
		}
		t.Logf("handoff %d (committed %v): redis-cli's connection %s (id %s) served by pid %s, before by %s", i, step.committed, addr, id, pid, pid0)
		pid0 = pid
	}
	if code, _, err := c.do("GET", "/kv/greeting", ""); err != nil || code != 404 {
		t.Errorf("HTTP GET of db 3's key in db 0: %d, %v; want 404", code, err)
	}
	cli.want("SELECT 0", "OK")
	cli.want("SET greeting hello-db0", "OK")
	if code, body, err := c.do("GET", "/kv/greeting", ""); err != nil || code != 200 || body != "hello-db0" {
		t.Errorf("HTTP GET of db 0's key: %d %q, %v", code, body, err)
	}
	in.Close()
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("redis-cli: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("redis-cli did not exit at the end of its input")
	}
}

// TestRESPPipelineSplitAcrossHandoff: a client pipelines commands and
// stops in the middle of one when the handoff comes: the commands it sent
// whole are answered before, the rest of the split one, sent after the
// handoff, completes it on the same connection in the successor.
func TestRESPPipelineSplitAcrossHandoff(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns daemons")
	}
	c := startKVDRESP(t)
	rc := dialRESP(t, c.respAddr)
	rc.do("SELECT 5", "+OK")
	rc.do("CLIENT SETNAME splitter", "+OK")
	rc.send("*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\nGET a\r\n*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$5\r\nval")
	for _, want := range []string{"+OK", "$1"} {
		if got := rc.reply(); got != want {
			t.Fatalf("pipelined reply before the handoff: %q, want %q", got, want)
		}
	}
	before := c.stats()
	o := c.handoff(c.spec("v2"))
	if !o.Committed || o.PassedConns != 1 {
		t.Fatalf("handoff: committed %v (%s), %d connections passed; want committed, 1", o.Committed, o.AbortReason, o.PassedConns)
	}
	rc.send("ue\r\nGET b\r\n*2\r\n$6\r\nCLIENT\r\n$7\r\nGETNAME\r\nCLIENT INFO\r\n")
	for _, want := range []string{"+OK", "$value", "$splitter"} {
		if got := rc.reply(); got != want {
			t.Fatalf("pipelined reply after the handoff: %q, want %q", got, want)
		}
	}
	info := rc.reply()
	if !strings.Contains(info, "addr="+rc.c.LocalAddr().String()+" ") || !strings.Contains(info, " db=5 ") || strings.Contains(info, fmt.Sprintf("pid=%d\n", before.PID)) {
		t.Fatalf("CLIENT INFO after the handoff: %q; want addr=%s, db 5, a pid other than %d", info, rc.c.LocalAddr(), before.PID)
	}
	if after := c.stats(); after.RESPAccepted != 0 || after.RESPAdopted != 1 {
		t.Errorf("the successor accepted %d and adopted %d RESP connections, want 0 and 1", after.RESPAccepted, after.RESPAdopted)
	}
}
