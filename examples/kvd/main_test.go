package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/examples/kvd/store"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    config
		wantErr bool
	}{
		{"defaults", []string{"--data", "/d"},
			config{dataDir: "/d", listen: "127.0.0.1:8080", buildID: buildID, valueSize: 1024}, false},
		{"everything", []string{"--data", "/d", "--listen", ":9", "--control", "/c.sock", "--build-id", "v2",
			"--fail-before-ready", "--fail-prepare", "--slow-prepare", "1s", "--slow-drain", "2s", "--slow-seal", "3s",
			"--segment-bytes", "4096"},
			config{dataDir: "/d", listen: ":9", control: "/c.sock", buildID: "v2", failBeforeReady: true, failPrepare: true,
				slowPrepare: time.Second, slowDrain: 2 * time.Second, slowSeal: 3 * time.Second, segmentBytes: 4096, valueSize: 1024}, false},
		{"no data dir", []string{"--listen", ":9"}, config{}, true},
		{"stray argument", []string{"--data", "/d", "extra"}, config{}, true},
		{"bad duration", []string{"--data", "/d", "--slow-seal", "soon"}, config{}, true},
		{"negative segment size", []string{"--data", "/d", "--segment-bytes", "-1"}, config{}, true},
		{"value too large", []string{"--data", "/d", "--populate", "1", "--value-size", "2000000"}, config{}, true},
		{"dump", []string{"--data", "/d", "--dump"},
			config{dataDir: "/d", listen: "127.0.0.1:8080", buildID: buildID, dump: true, valueSize: 1024}, false},
		{"populate", []string{"--data", "/d", "--populate", "1000", "--value-size", "10"},
			config{dataDir: "/d", listen: "127.0.0.1:8080", buildID: buildID, populate: 1000, valueSize: 10}, false},
		{"fail an fsync", []string{"--data", "/d", "--fail-fsync-at", "seal"},
			config{dataDir: "/d", listen: "127.0.0.1:8080", buildID: buildID, failFsyncAt: store.SyncSeal, valueSize: 1024}, false},
		{"fail an fsync in no phase", []string{"--data", "/d", "--fail-fsync-at", "later"}, config{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(tt.args)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseFlags(%q) = %+v, %v; want %+v, error %v", tt.args, got, err, tt.want, tt.wantErr)
			}
		})
	}
	if _, err := parseFlags([]string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v, want flag.ErrHelp", err)
	}
}

func newTestDaemon(t *testing.T, dir string) *daemon {
	t.Helper()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &daemon{cfg: config{dataDir: dir, buildID: "test-build"}, log: slog.New(slog.DiscardHandler), store: st}
}

func do(t *testing.T, h http.Handler, method, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	return rec
}

func TestAPI(t *testing.T) {
	d := newTestDaemon(t, t.TempDir())
	h := d.routes()
	steps := []struct {
		method, path, body string
		wantCode           int
		wantBody           string // substring
	}{
		{"GET", "/kv/a", "", 404, "not found"},
		{"PUT", "/kv/a", "one", 200, `"revision":1`},
		{"GET", "/kv/a", "", 200, "one"},
		{"PUT", "/kv/a", "two", 200, `"revision":2`},
		{"PUT", "/kv/b", "", 200, `"revision":3`},
		{"GET", "/kv/b", "", 200, ""},
		{"DELETE", "/kv/a", "", 200, `"revision":4`},
		{"GET", "/kv/a", "", 404, "not found"},
		{"PUT", "/kv/big", strings.Repeat("x", store.MaxValueLen+1), 413, "error"},
		{"POST", "/kv/a", "", 405, ""},
		{"GET", "/healthz", "", 200, "ok"},
		{"GET", "/stats", "", 200, `"revision":4,"keys":1,"build_id":"test-build"`},
	}
	for _, s := range steps {
		rec := do(t, h, s.method, s.path, s.body)
		if rec.Code != s.wantCode || !strings.Contains(rec.Body.String(), s.wantBody) {
			t.Errorf("%s %s = %d %q; want %d containing %q", s.method, s.path, rec.Code, rec.Body, s.wantCode, s.wantBody)
		}
	}
	var st statsReply
	if err := json.Unmarshal(do(t, h, "GET", "/stats", "").Body.Bytes(), &st); err != nil || st.PID != os.Getpid() {
		t.Errorf("stats = %+v, %v; want pid %d", st, err, os.Getpid())
	}
}

// TestHandoffHooks drives the adapter's hooks the way the library does in
// an aborted handoff: sync, seal (writes now get 503), a successor writes
// and dies, reopen (the successor's write is visible, writes go on).
func TestHandoffHooks(t *testing.T) {
	dir := t.TempDir()
	d := newTestDaemon(t, dir)
	h := d.routes()
	ctx := context.Background()
	do(t, h, "PUT", "/kv/k", "v1")

	if err := d.sync(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := d.seal(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.LastRevisionPerShard) != 1 || rep.LastRevisionPerShard[0] != 1 || rep.DataDirFingerprint == "" {
		t.Errorf("SealReport = %+v, want revision [1] and a fingerprint", rep)
	}
	if rec := do(t, h, "PUT", "/kv/k", "v2"); rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Errorf("PUT on a sealed store = %d (Retry-After %q), want 503 with Retry-After", rec.Code, rec.Header().Get("Retry-After"))
	}
	if rec := do(t, h, "GET", "/healthz", ""); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("healthz on a sealed store = %d, want 503", rec.Code)
	}
	if rec := do(t, h, "GET", "/kv/k", ""); rec.Code != http.StatusOK || rec.Body.String() != "v1" {
		t.Errorf("GET on a sealed store = %d %q, want the sealed value", rec.Code, rec.Body)
	}

	succ, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := succ.Put("from-successor", []byte("x")); err != nil {
		t.Fatal(err)
	}
	succ.Close()

	for range 2 { // idempotent
		if err := d.reopen(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if rec := do(t, h, "GET", "/kv/from-successor", ""); rec.Code != http.StatusOK {
		t.Errorf("the successor's write is not visible after reopen: %d", rec.Code)
	}
	if rec := do(t, h, "PUT", "/kv/k", "v3"); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `"revision":3`) {
		t.Errorf("PUT after reopen = %d %q, want revision 3", rec.Code, rec.Body)
	}
	if got := d.store.Revisions(); len(got) != 1 || got[0] != 3 {
		t.Errorf("revisions = %v, want [3]", got)
	}
}

func TestSlowKnobsHonourTheDeadline(t *testing.T) {
	d := newTestDaemon(t, t.TempDir())
	d.cfg.slowDrain, d.cfg.slowSeal = time.Hour, time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.sync(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("sync = %v, want context.Canceled", err)
	}
	if _, err := d.seal(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("seal = %v, want context.Canceled", err)
	}
	if _, err := d.store.Put("still", []byte("open")); err != nil {
		t.Errorf("a seal that gave up must leave the store open: %v", err)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	if err := run(context.Background(), []string{"--listen", ":0"}); err == nil {
		t.Error("run without --data succeeded")
	}
	if err := run(context.Background(), []string{"-h"}); err != nil {
		t.Errorf("run -h = %v, want nil", err)
	}
}

// TestDump: --dump prints what a sealed data directory holds, and refuses
// a directory whose lock is held.
func TestDump(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range [][2]string{{"a", "1"}, {"b", "2"}, {"a", "3"}} {
		if _, err := st.Put(kv[0], []byte(kv[1])); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Seal(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := dump(config{dataDir: dir}, slog.New(slog.DiscardHandler), &out); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Revision uint64            `json:"revision"`
		Data     map[string][]byte `json:"data"`
	}
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
		t.Fatalf("dump %q: %v", out.String(), err)
	}
	if got.Revision != 3 || len(got.Data) != 2 || string(got.Data["a"]) != "3" || string(got.Data["b"]) != "2" {
		t.Errorf("dump = %+v, want revision 3, a=3, b=2", got)
	}

	lock, err := handoff.AcquireDataDirLock(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release()
	if err := dump(config{dataDir: dir}, slog.New(slog.DiscardHandler), io.Discard); !errors.Is(err, handoff.ErrLockHeld) {
		t.Errorf("dump of a locked directory = %v, want ErrLockHeld", err)
	}
}

// TestPopulate: --populate fills the directory with keys a snapshot holds.
func TestPopulate(t *testing.T) {
	dir := t.TempDir()
	var out strings.Builder
	cfg := config{dataDir: dir, populate: 500, valueSize: 100}
	if err := populate(cfg, slog.New(slog.DiscardHandler), &out); err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Keys     int    `json:"keys"`
		Revision uint64 `json:"revision"`
	}
	if err := json.Unmarshal([]byte(out.String()), &rep); err != nil || rep.Keys != 500 || rep.Revision != 500 {
		t.Fatalf("populate reported %q (%v), want 500 keys at revision 500", out.String(), err)
	}
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if rc := st.Recovery(); rc.SnapshotRevision != 500 || rc.Replayed != 0 {
		t.Errorf("Recovery = %+v, want everything in the snapshot", rc)
	}
	for _, i := range []int64{0, 499} {
		if v, ok := st.Get(populateKey(i)); !ok || string(v) != string(populateValue(i, 100)) {
			t.Errorf("%s = %q, %v", populateKey(i), v, ok)
		}
	}
	if v := populateValue(7, 20); string(v) != "00000007000000070000" {
		t.Errorf("populateValue(7, 20) = %q", v)
	}
}

// TestOpenCatchesUpFromTheWarmUp: the store kvd opens is the warm-up's,
// with only what was written after it applied.
func TestOpenCatchesUpFromTheWarmUp(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	inc, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer inc.Close()
	for _, k := range []string{"a", "b", "c"} {
		if _, err := inc.Put(k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	w, err := prepare(context.Background(), config{dataDir: dir}, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inc.Put("d", []byte("after the warm-up")); err != nil {
		t.Fatal(err)
	}
	if err := inc.Seal(); err != nil {
		t.Fatal(err)
	}
	st, err := openStore(config{dataDir: dir}, log, w)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if rc := st.Recovery(); st.Revision() != 4 || rc.WarmRecords != 3 || rc.CaughtUpRecords != 1 {
		t.Errorf("opened at revision %d with %+v; want 4, three records in the warm-up and one caught up", st.Revision(), rc)
	}
	if st.Fingerprint() != inc.Fingerprint() {
		t.Errorf("fingerprint %s, sealed %s", st.Fingerprint(), inc.Fingerprint())
	}
}

func TestSlowPrepareHonoursTheDeadline(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := prepare(ctx, config{dataDir: t.TempDir(), slowPrepare: time.Hour}, slog.New(slog.DiscardHandler))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("prepare = %v, want context.Canceled", err)
	}
}

func TestWriteStatus(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{store.ErrSealed, http.StatusServiceUnavailable},
		{store.ErrClosed, http.StatusServiceUnavailable},
		{fmt.Errorf("%w: writing the log: %w", store.ErrWriteFailed, syscall.ENOSPC), http.StatusInsufficientStorage},
		{fmt.Errorf("%w: writing the log: %w", store.ErrWriteFailed, syscall.EDQUOT), http.StatusInsufficientStorage},
		{fmt.Errorf("%w: writing the log: %w", store.ErrWriteFailed, syscall.EROFS), http.StatusServiceUnavailable},
		{fmt.Errorf("%w: writing the log: %w", store.ErrFailed, syscall.EIO), http.StatusInternalServerError},
		{store.ErrInvalidKey, http.StatusBadRequest},
		{store.ErrValueTooLarge, http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		if got := writeStatus(tt.err); got != tt.want {
			t.Errorf("writeStatus(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

// TestFailedFsyncHooks: --fail-fsync-at drain fails the drain's fsync; the
// daemon then serves reads, refuses writes with 500 saying why, reports
// itself unhealthy and not writable, and resumes after the aborted
// handoff without an error.
func TestFailedFsyncHooks(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	st, err := store.OpenWith(dir, store.Options{FailSync: failFsyncAt(store.SyncDrain, log)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	d := &daemon{cfg: config{dataDir: dir, buildID: "test-build"}, log: log, store: st}
	h := d.routes()
	ctx := context.Background()
	if rec := do(t, h, "PUT", "/kv/k", "v1"); rec.Code != http.StatusOK {
		t.Fatalf("PUT = %d %s", rec.Code, rec.Body)
	}
	if err := d.sync(ctx); !errors.Is(err, store.ErrFailed) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("sync with a failing fsync = %v, want ErrFailed wrapping EIO", err)
	}
	if err := d.reopen(ctx); err != nil {
		t.Fatalf("reopen of the failed store = %v, want nil", err)
	}
	rec := do(t, h, "PUT", "/kv/k", "v2")
	if rec.Code != http.StatusInternalServerError || !strings.Contains(rec.Body.String(), "--fail-fsync-at drain") {
		t.Errorf("PUT on the failed store = %d %s, want 500 naming the failed fsync", rec.Code, rec.Body)
	}
	if rec := do(t, h, "GET", "/kv/k", ""); rec.Code != http.StatusOK || rec.Body.String() != "v1" {
		t.Errorf("GET on the failed store = %d %q, want the acknowledged value", rec.Code, rec.Body)
	}
	if rec := do(t, h, "GET", "/healthz", ""); rec.Code != http.StatusServiceUnavailable {
		t.Errorf("healthz on the failed store = %d, want 503", rec.Code)
	}
	var sr statsReply
	if err := json.Unmarshal(do(t, h, "GET", "/stats", "").Body.Bytes(), &sr); err != nil || sr.Writable || !strings.Contains(sr.WriteError, "--fail-fsync-at drain") {
		t.Errorf("/stats on the failed store = %+v, %v; want not writable, saying why", sr, err)
	}
}
