package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/crash"
	"github.com/handoff-go/handoff/internal/testutil"
)

// kvdProc is kvd started by hand (a cold start) as a child process.
type kvdProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string
	logs   *syncBuffer
	exited chan struct{} // closed once cmd.Wait returned
	err    error         // cmd.Wait's
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

var servingAddr = regexp.MustCompile(`msg="serving soon" .*addr=(\S+)`)

// startKVDProc starts the test binary as kvd on dir with env added, and
// waits for the address it serves on (from its log).
func startKVDProc(t *testing.T, dir string, env []string, args ...string) *kvdProc {
	t.Helper()
	args = append([]string{"--data", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0", "--control", filepath.Join(dir, "control.sock")}, args...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), "KVD_TEST_MAIN=1"), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &kvdProc{t: t, cmd: cmd, logs: &syncBuffer{}, exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.logs.Write(append(sc.Bytes(), '\n'))
			if m := servingAddr.FindSubmatch(sc.Bytes()); m != nil {
				select {
				case addr <- string(m[1]):
				default:
				}
			}
		}
		io.Copy(io.Discard, stderr)
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("kvd %v logs:\n%s", env, p.logs.String())
		}
	})
	select {
	case p.addr = <-addr:
	case <-p.exited:
		t.Fatalf("kvd exited before serving: %v\n%s", p.err, p.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("kvd did not serve within 30 s:\n%s", p.logs.String())
	}
	return p
}

// waitExit waits for the process to exit and returns cmd.Wait's error.
func (p *kvdProc) waitExit(bound time.Duration) error {
	p.t.Helper()
	select {
	case <-p.exited:
		return p.err
	case <-time.After(bound):
		p.t.Fatalf("kvd did not exit within %v", bound)
		return nil
	}
}

// TestCrashCompaction kills kvd at each crash point of its background
// compaction (and of a log rotation) while clients write, restarts it,
// and checks that every acknowledged write is there, served and on disk.
// It needs the crash points compiled in:
//
//	go test -tags handoff_crashpoints -run Crash ./examples/kvd
func TestCrashCompaction(t *testing.T) {
	if !crash.Enabled {
		t.Skip("crash points are not compiled in (go test -tags handoff_crashpoints)")
	}
	points := []string{
		"kvd-rotate-created",
		"kvd-compact-written",
		"kvd-compact-synced",
		"kvd-compact-renamed",
		"kvd-compact-between-deletions",
	}
	for _, point := range points {
		t.Run(point, func(t *testing.T) {
			dir := testutil.ShortDir(t)
			// Small segments: rotations and compactions after a few
			// kilobytes of writes. A first run compacts a few times and
			// stops, so that the crash is in a compaction that merges
			// an existing snapshot.
			first := startKVDProc(t, dir, nil, "--segment-bytes", "4096")
			acked := writeN(t, first.addr, "before", 300)
			first.cmd.Process.Signal(syscall.SIGTERM)
			if err := first.waitExit(30 * time.Second); err != nil {
				t.Fatalf("the first kvd stopped with %v", err)
			}
			p := startKVDProc(t, dir, []string{"HANDOFF_CRASH_AT=" + point}, "--segment-bytes", "4096")
			maps.Copy(acked, writeUntilDeath(t, p.addr, p.exited))
			err := p.waitExit(10 * time.Second)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("kvd ended with %v, want killed at the crash point", err)
			}
			t.Logf("killed at %s, %d acknowledged writes in all", point, len(acked))

			r := startKVDProc(t, dir, nil, "--segment-bytes", "4096")
			client := &http.Client{Timeout: 10 * time.Second}
			for k, v := range acked {
				resp, err := client.Get("http://" + r.addr + "/kv/" + k)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || string(body) != v {
					t.Fatalf("after the restart acknowledged %s reads %d %q, want %q", k, resp.StatusCode, body, v)
				}
			}
			// A graceful stop, then a dump (a cold start's recovery once
			// more): everything is on disk.
			r.cmd.Process.Signal(syscall.SIGTERM)
			if err := r.waitExit(30 * time.Second); err != nil {
				t.Fatalf("the restarted kvd stopped with %v", err)
			}
			if tmp, _ := filepath.Glob(filepath.Join(dir, "data", "kv.snap.tmp-*")); len(tmp) > 0 {
				t.Errorf("temporary snapshots left after the restart and a stop: %v", tmp)
			}
			var out bytes.Buffer
			dumpCmd := exec.Command(os.Args[0], "--data", filepath.Join(dir, "data"), "--dump")
			dumpCmd.Env = append(os.Environ(), "KVD_TEST_MAIN=1")
			dumpCmd.Stdout = &out
			if err := dumpCmd.Run(); err != nil {
				t.Fatalf("--dump: %v", err)
			}
			var got struct {
				Data map[string][]byte `json:"data"`
			}
			if err := json.Unmarshal(out.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			for k, v := range acked {
				if string(got.Data[k]) != v {
					t.Fatalf("on disk acknowledged %s is %q, want %q", k, got.Data[k], v)
				}
			}
		})
	}
}

// writeN writes n keys and fails the test unless all are acknowledged.
func writeN(t *testing.T, addr, prefix string, n int) map[string]string {
	t.Helper()
	acked := map[string]string{}
	client := &http.Client{Timeout: 10 * time.Second}
	for i := range n {
		key := fmt.Sprintf("%s-%05d", prefix, i)
		value := strings.Repeat(key+";", 12)
		req, _ := http.NewRequest("PUT", "http://"+addr+"/kv/"+key, strings.NewReader(value))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("PUT %s: %s", key, resp.Status)
		}
		acked[key] = value
	}
	return acked
}

// writeUntilDeath writes unique keys with a few concurrent clients until
// the daemon dies (exited is closed), and returns the acknowledged ones.
// It fails the test if the daemon outlives a bound of writes.
func writeUntilDeath(t *testing.T, addr string, exited <-chan struct{}) map[string]string {
	t.Helper()
	const writers, bound = 8, 20_000
	var mu sync.Mutex
	acked := map[string]string{}
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for g := range writers {
		wg.Go(func() {
			for i := 0; i < bound/writers; i++ {
				key := fmt.Sprintf("crash-%d-%05d", g, i)
				value := strings.Repeat(fmt.Sprintf("%s;", key), 12)
				req, _ := http.NewRequestWithContext(ctx, "PUT", "http://"+addr+"/kv/"+key, strings.NewReader(value))
				resp, err := client.Do(req)
				if err != nil {
					return // the daemon died (or is dying)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					mu.Lock()
					acked[key] = value
					mu.Unlock()
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-exited:
		cancel()
		<-done
	case <-done:
		// Every writer stopped: at the bound, or because requests failed
		// (the daemon is dying).
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Fatalf("the daemon did not reach its crash point in %d writes", bound)
		}
	}
	return acked
}
