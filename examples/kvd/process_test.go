package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/examples/kvd/store"
	"github.com/handoff-go/handoff/internal/testutil"
	"github.com/handoff-go/handoff/supervisor"
)

// The test binary doubles as kvd: the supervisor in TestHandoffEndToEnd
// spawns it with KVD_TEST_MAIN=1.
func TestMain(m *testing.M) {
	if os.Getenv("KVD_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// kvdCluster is an embedded supervisor running kvd processes.
type kvdCluster struct {
	t      *testing.T
	data   string
	sock   string
	addr   string
	sup    *supervisor.Supervisor
	client *http.Client
}

func startKVD(t *testing.T) *kvdCluster {
	t.Helper()
	c, _ := startKVDOn(t, "http")
	return c
}

// startKVDOn starts kvd under a supervisor that holds a loopback listener
// for each name ("http" first); it returns their addresses by name.
func startKVDOn(t *testing.T, names ...string) (*kvdCluster, map[string]string) {
	t.Helper()
	dir := testutil.ShortDir(t) // holds the control socket
	logs, err := os.Create(filepath.Join(dir, "daemons.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		logs.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logs.Name())
			t.Logf("daemon logs:\n%s", b)
		}
	})
	sup, err := supervisor.New(supervisor.Config{ControlSocket: filepath.Join(dir, "control.sock"), Stdout: logs, Stderr: logs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sup.Close() })
	addrs := map[string]string{}
	for _, name := range names {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs[name] = ln.Addr().String()
		if err := sup.AddListener(name, ln); err != nil {
			t.Fatal(err)
		}
		ln.Close() // the supervisor holds its own duplicate
	}
	c := &kvdCluster{t: t, data: filepath.Join(dir, "data"), sock: filepath.Join(dir, "control.sock"), addr: addrs["http"], sup: sup,
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.sup.ColdStart(ctx, c.spec("v1")); err != nil {
		t.Fatalf("cold start: %v", err)
	}
	return c, addrs
}

func (c *kvdCluster) spec(build string, extra ...string) supervisor.SpawnSpec {
	return supervisor.SpawnSpec{
		Binary:     os.Args[0],
		Args:       append([]string{"--data", c.data, "--build-id", build}, extra...),
		Env:        []string{"KVD_TEST_MAIN=1"},
		DrainGrace: 10 * time.Second,
		Deadline:   30 * time.Second,
	}
}

func (c *kvdCluster) handoff(spec supervisor.SpawnSpec) supervisor.Outcome {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := c.sup.PerformHandoff(ctx, spec)
	if err != nil {
		c.t.Fatalf("handoff to %v: %v", spec.Args, err)
	}
	return out
}

func (c *kvdCluster) do(method, path, body string) (int, string, error) {
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

func (c *kvdCluster) stats() statsReply {
	c.t.Helper()
	code, body, err := c.do("GET", "/stats", "")
	var st statsReply
	if err == nil && code == http.StatusOK {
		err = json.Unmarshal([]byte(body), &st)
	}
	if err != nil || code != http.StatusOK {
		c.t.Fatalf("GET /stats = %d %q, %v", code, body, err)
	}
	return st
}

// writers PUT unique keys, each request on a fresh connection (so the
// client never resends one), until stopped, and keep the revision each
// acknowledged write was given.
type writers struct {
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	acked map[string]string
	revs  [][]uint64 // per writer, in the order its writes were acknowledged
	fails []string
}

func startWriters(c *kvdCluster, n int) *writers {
	w := &writers{stop: make(chan struct{}), acked: map[string]string{}, revs: make([][]uint64, n)}
	for g := range n {
		w.wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-w.stop:
					return
				default:
				}
				key, value := fmt.Sprintf("load-%d-%d", g, i), fmt.Sprintf("value-%d-%d", g, i)
				code, body, err := c.do("PUT", "/kv/"+key, value)
				var reply writeReply
				if err == nil && code == http.StatusOK {
					err = json.Unmarshal([]byte(body), &reply)
				}
				w.mu.Lock()
				if err != nil || code != http.StatusOK || reply.Key != key {
					w.fails = append(w.fails, fmt.Sprintf("PUT %s: %d %q %v", key, code, body, err))
				} else {
					w.acked[key] = value
					w.revs[g] = append(w.revs[g], reply.Revision)
				}
				w.mu.Unlock()
			}
		})
	}
	return w
}

// checkRevisions checks the revisions the writes were acknowledged with,
// after the store was at revision base and only the writers wrote: each
// writer's increase, and together they are exactly base+1 … base+N for N
// acknowledged writes (none repeated, none skipped), provided no write
// failed (a failed PUT may still have been applied).
func (w *writers) checkRevisions(t *testing.T, base uint64) {
	t.Helper()
	var all []uint64
	for g, revs := range w.revs {
		for i := 1; i < len(revs); i++ {
			if revs[i] <= revs[i-1] {
				t.Errorf("writer %d: revision %d acknowledged after %d", g, revs[i], revs[i-1])
			}
		}
		all = append(all, revs...)
	}
	slices.Sort(all)
	for i, rev := range all {
		if i > 0 && rev == all[i-1] {
			t.Errorf("revision %d acknowledged twice", rev)
		}
		if len(w.fails) == 0 && rev != base+uint64(i)+1 {
			t.Fatalf("acknowledged revisions are not %d…%d: number %d in order is %d", base+1, base+uint64(len(all)), i+1, rev)
		}
	}
}

func (w *writers) finish() {
	close(w.stop)
	w.wg.Wait()
}

// TestHandoffEndToEnd runs kvd under an embedded supervisor with writes in
// flight: a handoff commits, one to a successor that crashes before Ready
// rolls back, another commits, and a stop seals the store. No request
// fails and every acknowledged write survives.
func TestHandoffEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns daemons")
	}
	c := startKVD(t)
	first := c.stats()
	if first.BuildID != "v1" {
		t.Fatalf("cold-started build %q, want v1", first.BuildID)
	}

	w := startWriters(c, 4)
	steps := []struct {
		spec          supervisor.SpawnSpec
		wantCommitted bool
		wantBuild     string
	}{
		{c.spec("v2"), true, "v2"},
		{c.spec("broken", "--fail-before-ready"), false, "v2"},
		{c.spec("v3", "--slow-drain", "50ms", "--slow-seal", "50ms"), true, "v3"},
	}
	for _, s := range steps {
		before := c.stats()
		out := c.handoff(s.spec)
		if out.Committed != s.wantCommitted {
			t.Fatalf("handoff to %v: committed %v (%s), want %v", s.spec.Args, out.Committed, out.AbortReason, s.wantCommitted)
		}
		after := c.stats()
		if after.BuildID != s.wantBuild || (after.PID == before.PID) == s.wantCommitted {
			t.Errorf("after handoff to %v: serving build %s pid %d (was pid %d)", s.spec.Args, after.BuildID, after.PID, before.PID)
		}
		if after.Revision < before.Revision {
			t.Errorf("revision went back from %d to %d", before.Revision, after.Revision)
		}
	}
	w.finish()

	if len(w.fails) > 0 {
		t.Errorf("%d of %d writes failed, first: %s", len(w.fails), len(w.fails)+len(w.acked), w.fails[0])
	}
	w.checkRevisions(t, first.Revision)
	want := first.Revision + uint64(len(w.acked))
	if got := c.stats().Revision; len(w.fails) == 0 && got != want {
		t.Errorf("revision %d after %d acknowledged writes from %d, want %d", got, len(w.acked), first.Revision, want)
	}
	for k, v := range w.acked {
		if code, body, err := c.do("GET", "/kv/"+k, ""); err != nil || code != http.StatusOK || body != v {
			t.Fatalf("acknowledged %s=%s reads back as %d %q, %v", k, v, code, body, err)
		}
	}
	t.Logf("%d acknowledged writes across the handoffs", len(w.acked))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.sup.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	// Stopped means sealed and unlocked: the lock is free and the store
	// opens with every acknowledged write, its log intact.
	lock, err := handoff.AcquireDataDirLock(c.data)
	if err != nil {
		t.Fatalf("lock after stop: %v", err)
	}
	defer lock.Release()
	st, err := store.Open(c.data)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if rc := st.Recovery(); rc.TornTailBytes != 0 || rc.FullLoad {
		t.Errorf("after a graceful stop Open found %+v; want an intact log", rc)
	}
	if got := st.Revision(); len(w.fails) == 0 && got != want {
		t.Errorf("sealed store at revision %d, want %d", got, want)
	}
	for k, v := range w.acked {
		if got, ok := st.Get(k); !ok || string(got) != v {
			t.Fatalf("acknowledged %s=%s is %q (present %v) on disk", k, v, got, ok)
		}
	}
}

// TestWarmUpFailures: a successor that dies or hangs during its warm-up
// aborts a handoff that never drained the incumbent, which serves on
// without a failed request; the next handoff commits.
func TestWarmUpFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns daemons")
	}
	c := startKVD(t)
	first := c.stats()
	w := startWriters(c, 2)
	hang := c.spec("hangs", "--slow-prepare", "1h")
	hang.DrainGrace, hang.Deadline = time.Second, 3*time.Second
	for _, spec := range []supervisor.SpawnSpec{c.spec("dies", "--fail-prepare"), hang} {
		out := c.handoff(spec)
		if out.Committed {
			t.Fatalf("handoff to %v committed", spec.Args)
		}
		if out.Phases.Drain != 0 || out.Phases.Seal != 0 {
			t.Errorf("handoff to %v drained (%v) or sealed (%v) the incumbent; phases %+v", spec.Args, out.Phases.Drain, out.Phases.Seal, out.Phases)
		}
		if st := c.stats(); st.PID != first.PID || st.BuildID != "v1" {
			t.Errorf("after the handoff to %v: serving build %s pid %d, want the incumbent v1 pid %d", spec.Args, st.BuildID, st.PID, first.PID)
		}
		t.Logf("handoff to %v aborted: %s", spec.Args, out.AbortReason)
	}
	out := c.handoff(c.spec("v2"))
	if !out.Committed {
		t.Fatalf("the handoff after the failed warm-ups did not commit: %s", out.AbortReason)
	}
	w.finish()
	if len(w.fails) > 0 {
		t.Errorf("%d of %d writes failed, first: %s", len(w.fails), len(w.fails)+len(w.acked), w.fails[0])
	}
	w.checkRevisions(t, first.Revision)
	for k, v := range w.acked {
		if code, body, err := c.do("GET", "/kv/"+k, ""); err != nil || code != http.StatusOK || body != v {
			t.Fatalf("acknowledged %s=%s reads back as %d %q, %v", k, v, code, body, err)
		}
	}
	t.Logf("%d acknowledged writes; the commit's warm-up %v, accept gap %v", len(w.acked), out.Phases.WarmUp, out.Phases.AcceptGap)
}
