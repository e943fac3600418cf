package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestWrkKeepAliveThroughHandoffs sizes and bounds.
const (
	wrkThreads  = 2
	wrkConns    = 16
	wrkHandoffs = 25
	// wrkDuration is wrk's own bound; the test stops it with SIGINT (wrk
	// then prints its summary) once the handoffs are done.
	wrkDuration = 3 * time.Minute
	// wrkTimeout is wrk's per-request timeout: a request not answered
	// within it counts as a timeout error. A handoff pauses a request for
	// its accept gap, milliseconds.
	wrkTimeout = 5 * time.Second
	// wrkProgressTimeout bounds the wait for wrk's acknowledged writes to
	// grow (before the first handoff, and after the last).
	wrkProgressTimeout = 30 * time.Second
	// wrkExitTimeout bounds wrk's exit after SIGINT.
	wrkExitTimeout = 30 * time.Second
)

// putScript makes wrk send PUTs with keys distinct across threads and
// requests (w<thread>-<n>, value v<thread>-<n>) and record the key of
// every 200 answer in acked-<thread>.txt in the directory given as the
// script's argument, one line each, written as it comes.
const putScript = `-- written by the e2e tests
local n = 0

function setup(thread)
  n = n + 1
  thread:set("tid", n)
end

function init(args)
  counter = 0
  acked = assert(io.open(args[1] .. "/acked-" .. tid .. ".txt", "w"))
  acked:setvbuf("line")
end

function request()
  counter = counter + 1
  return wrk.format("PUT", "/kv/w" .. tid .. "-" .. counter, nil, "v" .. tid .. "-" .. counter)
end

function response(status, headers, body)
  if status == 200 then
    local key = string.match(body, '"key":"([^"]*)"')
    if key then acked:write(key, "\n") end
  end
end
`

// needTool returns the path of the program name, or skips the test when
// it is missing, unless HANDOFF_TOOLS_REQUIRED=1 (then the test fails).
func needTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv("HANDOFF_TOOLS_REQUIRED") == "1" {
		t.Fatalf("%s is required (HANDOFF_TOOLS_REQUIRED=1) but not found: %v", name, err)
	}
	t.Skipf("%s not found (%v); install it (Debian: apt-get install %s) to run this test, or set HANDOFF_TOOLS_REQUIRED=1 to make its absence fail", name, err, name)
	return ""
}

// TestWrkKeepAliveThroughHandoffs: wrk, a keep-alive client we did not
// write, sends PUTs on 16 connections while 25 handoffs commit one after
// another. Issue 11's acceptance: no socket error of any kind (connect,
// read, write, timeout), no non-2xx answer; each handoff passes wrk's
// connections; and every write wrk saw acknowledged is in the data
// directory afterwards.
func TestWrkKeepAliveThroughHandoffs(t *testing.T) {
	needBinaries(t) // skips with -short, whether wrk is there or not
	wrk := needTool(t, "wrk")
	s := startSupervisor(t, supOptions{})
	dir := t.TempDir()
	script := filepath.Join(dir, "put.lua")
	if err := os.WriteFile(script, []byte(putScript), 0o600); err != nil {
		t.Fatal(err)
	}
	// wrk writes to a file (read once it exited), not to a buffer
	// copied by a goroutine of ours.
	outPath := filepath.Join(dir, "wrk.out")
	outFile, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer outFile.Close()
	cmd := exec.Command(wrk, "-t"+strconv.Itoa(wrkThreads), "-c"+strconv.Itoa(wrkConns),
		"-d"+strconv.Itoa(int(wrkDuration/time.Second))+"s", "--timeout", strconv.Itoa(int(wrkTimeout/time.Second))+"s",
		"-s", script, "http://"+s.addr, dir)
	cmd.Stdout, cmd.Stderr = outFile, outFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("start wrk: %v", err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	// stopWrk ends wrk with SIGINT (it prints its summary then) and
	// returns its output.
	stopWrk := func() (string, error) {
		select {
		case <-exited:
		default:
			cmd.Process.Signal(syscall.SIGINT)
		}
		var err error
		select {
		case <-exited:
			err = waitErr
		case <-time.After(wrkExitTimeout):
			cmd.Process.Kill()
			<-exited
			err = fmt.Errorf("wrk did not exit within %v of SIGINT", wrkExitTimeout)
		}
		b, rerr := os.ReadFile(outPath)
		if rerr != nil {
			err = errors.Join(err, rerr)
		}
		return string(b), err
	}
	t.Cleanup(func() { stopWrk() })
	fail := func(format string, args ...any) {
		t.Helper()
		out, err := stopWrk()
		t.Fatalf("%s\nwrk (%v):\n%s", fmt.Sprintf(format, args...), err, out)
	}

	// Load first: wrk's connections are open and answered.
	if err := waitAcked(dir, 1, exited); err != nil {
		fail("before the handoffs: %v", err)
	}
	var gaps []time.Duration
	var passed []int
	for h := range wrkHandoffs {
		o := s.handoff()
		if !o.committed {
			fail("handoff %d under wrk rolled back: %s", h+1, o.reason)
		}
		p := s.passedConns(o.id)
		gaps, passed = append(gaps, o.acceptGap), append(passed, p)
		if p == 0 {
			t.Errorf("handoff %d (%s) passed no connection; wrk holds %d", h+1, o.id, wrkConns)
		}
		// Each successor serves the load before the next handoff: as
		// many more acknowledged writes as wrk has connections.
		if n, err := countAcked(dir); err != nil {
			fail("%v", err)
		} else if err := waitAcked(dir, n+wrkConns, exited); err != nil {
			fail("after handoff %d: %v", h+1, err)
		}
	}
	out, err := stopWrk()
	if err != nil {
		t.Fatalf("wrk: %v\n%s", err, out)
	}
	t.Logf("wrk -t%d -c%d through %d handoffs:\n%s", wrkThreads, wrkConns, wrkHandoffs, out)
	t.Logf("connections passed per handoff: %v; accept gap %s", passed, summarize(gaps))

	res, err := parseWrk(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if res.requests == 0 {
		t.Error("wrk made no request")
	}
	if res.connect+res.read+res.write+res.timeout != 0 {
		t.Errorf("wrk saw socket errors: connect %d, read %d, write %d, timeout %d", res.connect, res.read, res.write, res.timeout)
	}
	if res.non2xx != 0 {
		t.Errorf("wrk saw %d non-2xx or 3xx responses", res.non2xx)
	}

	// Every acknowledged write is durable: read the data directory with
	// kvd --dump once nothing serves it.
	s.mustStop()
	acked, err := readAcked(dir)
	if err != nil {
		t.Fatal(err)
	}
	dump := exec.Command(kvdBin, "--data", s.data, "--dump")
	var stderr bytes.Buffer
	dump.Stderr = &stderr
	raw, err := dump.Output()
	if err != nil {
		t.Fatalf("kvd --dump: %v\n%s", err, stderr.String())
	}
	var d struct {
		Revision uint64            `json:"revision"`
		Data     map[string][]byte `json:"data"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("kvd --dump: %v", err)
	}
	var lost []string
	for _, key := range acked {
		want := "v" + strings.TrimPrefix(key, "w")
		if got, ok := d.Data[key]; !ok || string(got) != want {
			lost = append(lost, key)
		}
	}
	t.Logf("%d acknowledged writes checked in the data directory (revision %d)", len(acked), d.Revision)
	if len(lost) > 0 {
		t.Errorf("%d acknowledged writes missing or wrong after the handoffs, e.g. %v", len(lost), lost[:min(len(lost), 5)])
	}
}

// wrkResult is what the tests read of wrk's summary.
type wrkResult struct {
	requests                      int64
	connect, read, write, timeout int64
	non2xx                        int64
}

var (
	wrkRequests = regexp.MustCompile(`(?m)^\s*(\d+) requests in `)
	wrkSocket   = regexp.MustCompile(`(?m)^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`(?m)^\s*Non-2xx or 3xx responses: (\d+)`)
)

// parseWrk reads wrk's summary: "N requests in …", and the lines wrk
// prints only when they are not zero, "Socket errors: …" and "Non-2xx or
// 3xx responses: N".
func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := wrkRequests.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no request count in wrk's output")
	}
	r.requests, _ = strconv.ParseInt(m[1], 10, 64)
	if m := wrkSocket.FindStringSubmatch(out); m != nil {
		for i, p := range []*int64{&r.connect, &r.read, &r.write, &r.timeout} {
			*p, _ = strconv.ParseInt(m[i+1], 10, 64)
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		r.non2xx, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return r, nil
}

// readAcked returns the keys wrk's script recorded as acknowledged.
func readAcked(dir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "acked-*.txt"))
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if k := sc.Text(); k != "" {
				keys = append(keys, k)
			}
		}
	}
	return keys, nil
}

// countAcked counts the acknowledged writes recorded so far.
func countAcked(dir string) (int, error) {
	keys, err := readAcked(dir)
	return len(keys), err
}

// waitAcked waits until wrk has recorded at least n acknowledged writes,
// for at most wrkProgressTimeout; wrk's exit ends the wait.
func waitAcked(dir string, n int, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), wrkProgressTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond) // wrk says nothing until its end: its files are polled
	defer tick.Stop()
	for {
		got, err := countAcked(dir)
		if err != nil {
			return err
		}
		if got >= n {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("wrk exited with %d acknowledged writes, waiting for %d", got, n)
		case <-ctx.Done():
			return fmt.Errorf("%d acknowledged writes after %v, waiting for %d", got, wrkProgressTimeout, n)
		case <-tick.C:
		}
	}
}

// TestParseWrk reads the summary lines wrk prints only when they are not
// zero.
func TestParseWrk(t *testing.T) {
	out := `Running 14s test @ http://127.0.0.1:8080
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.11ms    1.78ms  12.21ms   87.31%
    Req/Sec     4.27k     1.00k    6.67k    67.86%
  118910 requests in 14.00s, 18.60MB read
  Socket errors: connect 1, read 41, write 2, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:   8474.23
Transfer/sec:      1.32MB
`
	got, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	want := wrkResult{requests: 118910, connect: 1, read: 41, write: 2, timeout: 3, non2xx: 5}
	if got != want {
		t.Errorf("parseWrk = %+v, want %+v", got, want)
	}
	clean := strings.Replace(strings.Replace(out, "  Socket errors: connect 1, read 41, write 2, timeout 3\n", "", 1), "  Non-2xx or 3xx responses: 5\n", "", 1)
	if got, err := parseWrk(clean); err != nil || got != (wrkResult{requests: 118910}) {
		t.Errorf("parseWrk without error lines = %+v, %v", got, err)
	}
	if _, err := parseWrk("wrk: unable to connect\n"); err == nil {
		t.Error("parseWrk accepted output without a request count")
	}
}
