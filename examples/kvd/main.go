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
//	--control SOCK    control socket path (default: the one the supervisor passes, or DIR/.handoff.sock)
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
	"os"
	"os/signal"
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
	fs.StringVar(&c.control, "control", "", "control socket `path` (default: the supervisor's, or DIR/.handoff.sock)")
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

	return handoff.Run(ctx, handoff.Config{
		DataDir:       cfg.dataDir,
		ControlSocket: cfg.control,
		Listen:        map[string]string{"http": cfg.listen},
		BuildID:       cfg.buildID,
		Logger:        log,
		Open: func(_ context.Context, ls *handoff.InheritedListeners) (handoff.Service, error) {
			return open(cfg, log, ls)
		},
	})
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
