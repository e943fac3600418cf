// Command kvd is an example stateful daemon for handoff: an HTTP key-value
// store that acknowledges a write only once it is fsync'd to its log.
// Under handoff-supervisor it can be replaced by a new binary without
// dropping a connection or losing an acknowledged write.
//
//	PUT    /kv/{key}   store the request body; answers {"revision": N} once durable
//	GET    /kv/{key}   the value (header X-Kvd-Revision: the store's revision)
//	DELETE /kv/{key}   delete; answers {"revision": N} once durable
//	GET    /healthz    200 while the store takes writes
//	GET    /stats      revision, key count, build id and pid, as JSON
//
// Flags:
//
//	--data DIR        data directory (required)
//	--listen ADDR     TCP address to bind when no listener "http" was inherited
//	--control SOCK    control socket path (default DIR/control.sock)
//	--build-id ID     announced to the supervisor (default set with -ldflags -X main.buildID=ID)
//	--dump            print the stored data as JSON and exit, without serving
//
// The dump, {"revision": N, "data": {"key": "base64 value", ...}}, is for
// checks while no daemon runs (it takes the data-directory lock, so it
// fails rather than read a directory a daemon owns); it recovers the store
// like a cold start does.
//
// Test knobs, off by default: --fail-before-ready (a successor exits with
// status 1 after Begin, holding the lock and the opened store, before
// announcing Ready), --slow-drain DURATION, --slow-seal DURATION.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/handoff-go/handoff"
	"github.com/handoff-go/handoff/examples/kvd/store"
)

// Link-time defaults: go build -ldflags "-X main.buildID=v2". The demo
// builds a deliberately broken kvd with -X main.failBeforeReady=true, so a
// handoff to that binary (same arguments) must roll back.
var (
	buildID         = "dev"
	failBeforeReady = "false"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kvd:", err)
		os.Exit(1)
	}
}

// config is what the flags say.
type config struct {
	dataDir         string
	listen          string
	control         string
	buildID         string
	failBeforeReady bool
	slowDrain       time.Duration
	slowSeal        time.Duration
	dump            bool
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("kvd", flag.ContinueOnError)
	fs.StringVar(&c.dataDir, "data", "", "data `directory` (required)")
	fs.StringVar(&c.listen, "listen", "127.0.0.1:8080", "TCP `address` to bind when no listener \"http\" was inherited")
	fs.StringVar(&c.control, "control", "", "control socket `path` (default DIR/control.sock)")
	fs.StringVar(&c.buildID, "build-id", buildID, "build `id` announced to the supervisor")
	fs.BoolVar(&c.failBeforeReady, "fail-before-ready", failBeforeReady == "true", "test knob: as a successor, exit 1 after Begin, before Ready")
	fs.DurationVar(&c.slowDrain, "slow-drain", 0, "test knob: make every drain take this much longer")
	fs.DurationVar(&c.slowSeal, "slow-seal", 0, "test knob: make every seal take this much longer")
	fs.BoolVar(&c.dump, "dump", false, "print the stored data as JSON and exit")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.dataDir == "" {
		return config{}, errors.New("--data is required")
	}
	if c.control == "" {
		c.control = filepath.Join(c.dataDir, "control.sock")
	}
	return c, nil
}

func run(ctx context.Context, args []string) error {
	cfg, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("pid", os.Getpid(), "build", cfg.buildID)
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	if cfg.dump {
		return dump(cfg.dataDir, log, os.Stdout)
	}

	role, err := handoff.DetectRole()
	if err != nil {
		return fmt.Errorf("detect role: %w", err)
	}
	switch r := role.(type) {
	case *handoff.ColdStart:
		return coldStart(ctx, cfg, log, r)
	case *handoff.Successor:
		return succeed(ctx, cfg, log, r)
	default:
		return fmt.Errorf("unknown role %T", role)
	}
}

// coldStart runs a daemon started by hand or cold-started by the
// supervisor: it binds or inherits its listener, takes the lock (breaking
// a stale one left by a crash), recovers the store and serves.
func coldStart(ctx context.Context, cfg config, log *slog.Logger, r *handoff.ColdStart) error {
	ln, err := r.Inherited.Listener("http")
	if errors.Is(err, handoff.ErrNotInherited) {
		log.Info("no inherited listener, binding one", "addr", cfg.listen)
		ln, err = net.Listen("tcp", cfg.listen)
	}
	if err != nil {
		return fmt.Errorf("listener: %w", err)
	}
	lock, err := handoff.AcquireDataDirLockOrBreakStale(cfg.dataDir)
	if err != nil {
		ln.Close()
		return fmt.Errorf("data-directory lock: %w", err)
	}
	st, err := openStore(cfg.dataDir, log)
	if err != nil {
		ln.Close()
		lock.Release()
		return err
	}
	inc, err := handoff.BindColdStart(cfg.control, lock)
	if err != nil {
		ln.Close()
		st.Close()
		lock.Release()
		return fmt.Errorf("bind control socket: %w", err)
	}
	inc.SetBuildID(cfg.buildID)
	inc.SetLogger(log)
	log.Info("cold start", "addr", ln.Addr(), "control", cfg.control, "revision", st.Revision())
	return serve(ctx, cfg, log, st, ln, inc)
}

// succeed runs a successor: it handshakes early, waits for Begin (the
// incumbent has sealed its store and released the lock), opens the store,
// and announces Ready. Only if the supervisor accepts does it serve.
func succeed(ctx context.Context, cfg config, log *slog.Logger, s *handoff.Successor) error {
	h, err := s.Handshake(cfg.buildID)
	if err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	b, err := h.WaitForBegin(ctx)
	if err != nil {
		return fmt.Errorf("waiting for Begin: %w", err)
	}
	log.Info("successor: begin", "handoff", b.HandoffID())

	g := b.StartHeartbeats()
	defer g.Stop()
	lock, err := handoff.AcquireDataDirLock(cfg.dataDir)
	if err != nil {
		return fmt.Errorf("data-directory lock: %w", err)
	}
	st, err := openStore(cfg.dataDir, log)
	if err != nil {
		lock.Release()
		return err
	}
	g.Stop()
	if cfg.failBeforeReady {
		// Simulates a crash: no cleanup, the kernel drops the lock.
		log.Error("successor: --fail-before-ready: exiting before Ready")
		os.Exit(1)
	}
	ln, err := b.Listeners().Listener("http")
	if err != nil {
		st.Close()
		lock.Release()
		return fmt.Errorf("listener: %w", err)
	}
	ready := handoff.ReadinessSnapshot{
		ListeningOn:                []string{ln.Addr().String()},
		HealthzOK:                  st.Check() == nil,
		AdvertisedRevisionPerShard: st.Revisions(),
	}
	inc, err := b.AnnounceAndBind(ready, cfg.control, lock)
	if err != nil {
		// Not committed: the incumbent serves on. Nothing was written.
		ln.Close()
		st.Close()
		return fmt.Errorf("announce ready: %w", err)
	}
	inc.SetLogger(log)
	log.Info("successor: committed, serving", "addr", ln.Addr(), "revision", st.Revision())
	return serve(ctx, cfg, log, st, ln, inc)
}

// dump writes the store's revision and data to w as JSON.
func dump(dir string, log *slog.Logger, w io.Writer) error {
	lock, err := handoff.AcquireDataDirLock(dir)
	if err != nil {
		return fmt.Errorf("data-directory lock: %w", err)
	}
	defer lock.Release()
	st, err := openStore(dir, log)
	if err != nil {
		return err
	}
	defer st.Close()
	rev, data := st.Contents()
	return json.NewEncoder(w).Encode(struct {
		Revision uint64            `json:"revision"`
		Data     map[string][]byte `json:"data"`
	}{rev, data})
}

func openStore(dir string, log *slog.Logger) (*store.Store, error) {
	st, err := store.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	logRecovery(log, st)
	return st, nil
}

func logRecovery(log *slog.Logger, st *store.Store) {
	rc := st.Recovery()
	log.Info("store opened", "revision", st.Revision(), "keys", st.Len(),
		"snapshot_revision", rc.SnapshotRevision, "replayed", rc.Replayed)
	if rc.TornTailBytes > 0 {
		log.Warn("store: cut a torn log tail (a write interrupted by a crash, never acknowledged)",
			"offset", rc.TornTailAt, "bytes", rc.TornTailBytes)
	}
}
