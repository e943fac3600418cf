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
// Keys are any bytes but the byte 0 first: keys that start with it are
// reserved for the RESP databases (below), and HTTP refuses them (400).
//
// # RESP: the Redis protocol
//
// On a listener "resp" (inherited from the supervisor, or bound with
// --resp) kvd also speaks RESP2, the Redis protocol, over the same store,
// with what redis-cli and redis-benchmark need: PING, ECHO, SET key value
// (no options), GET, DEL, EXISTS, SELECT 0..15, CLIENT SETNAME, GETNAME,
// ID, INFO (id, addr: the client's address, name, db, pid) and SETINFO,
// QUIT, CONFIG GET (save, appendonly...), INFO, and COMMAND (an empty
// table); HELLO answers NOPROTO, so clients go on in RESP2. Inline
// commands (a line of words, as telnet sends) work as well as arrays, and
// so does pipelining. Database 0 holds the keys HTTP sees; database N > 0
// keeps its keys in the store as "\x00" N "\x00" key, which neither
// protocol lets a client name (see /stats and --dump for what they count
// and show). SET and DEL answer once the write is durable, as PUT and
// DELETE do; a write the store refuses answers TRYAGAIN (a handoff or
// shutdown in progress), MISCONF (the disk does not take it) or ERR.
// Input that is not RESP, or breaks a bound (an argument of more than
// 1 MiB, more than 1024 arguments, an inline line of more than 64 KiB),
// is answered -ERR Protocol error and the connection closed.
//
// During a handoff each RESP connection is stopped at a command boundary
// (every complete command it sent is answered) and passed to the
// successor with its state: its database, name, id, and the bytes of an
// incomplete command it has sent so far (up to about 15 KiB; a connection
// with more buffered is stopped once that command is answered).
//
// Flags:
//
//	--data DIR        data directory (required)
//	--listen ADDR     TCP address to bind when no listener "http" was inherited
//	--resp ADDR       TCP address to bind for RESP when no listener "resp" was inherited (default: no RESP)
//	--control SOCK    control socket path (default: the one the supervisor passes, or DIR/.handoff.sock)
//	--build-id ID     announced to the supervisor (default set with -ldflags -X main.buildID=ID)
//	--dump            print the stored data as JSON and exit, without serving
//
// The dump, {"revision": N, "data": {"key": "base64 value", ...}}, is for
// checks while no daemon runs (it takes the data-directory lock, so it
// fails rather than read a directory a daemon owns); it recovers the store
// like a cold start does.
//
// The store is made ready in two steps (see handoff.Config.Prepare): the
// warm-up loads the snapshot and the log read-only, while an incumbent may
// still serve; Open, with the lock, applies only what was written since.
// Both log what they read (keys, records, bytes, durations).
//
// For benchmarks, --populate N fills the data directory with N keys
// pop-00000000, pop-00000001, ... whose values are --value-size bytes
// (default 1024; the key's digits repeated), compacts it so that a
// snapshot holds everything, prints {"keys", "revision", "seconds"} as
// JSON and exits without serving. It takes the lock like --dump, and adds
// to what the directory holds.
//
// Test knobs, off by default: --fail-before-ready (a successor exits with
// status 1 after Begin, holding the lock and the opened store, before
// announcing Ready), --fail-prepare (exit with status 1 during the warm-up,
// in any role), --slow-prepare DURATION (the warm-up takes this much
// longer), --slow-drain DURATION, --slow-seal DURATION, --segment-bytes N
// (start a new log segment past N bytes, so that tests see rotations and
// compactions with little data), --fail-fsync-at PHASE (the first fsync
// of the log in PHASE, drain, seal or commit, fails with EIO, as a failing
// disk's would: see below).
//
// # A disk that fails
//
// kvd keeps serving reads whatever the disk does: the store holds every
// acknowledged write in memory. Writes fail with a reason naming the
// cause, and /healthz answers 503 with it:
//
//   - A full or read-only disk (a write of the log fails, or the log cannot
//     be opened for writing at start): the write is not applied and what it
//     appended is cut off the log; PUT and DELETE answer 507 Insufficient
//     Storage for ENOSPC and EDQUOT, 503 otherwise. Each write tries again,
//     so writes work again by themselves once the disk takes them, without
//     a restart. A cold start on such a disk serves reads. A handoff
//     commits if the disk lets the successor open the log, and aborts in
//     the drain (the incumbent serving on) if the incumbent's log is not
//     open for writing.
//   - A failed fsync: the kernel may have dropped what it could not
//     write, so the store never retries it and refuses writes (500) until
//     the process is restarted and recovers from disk (kill it: the
//     supervisor starts it again). A handoff that meets it, or whose drain
//     or seal fsync fails, aborts, and the incumbent serves reads on.
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
	"runtime"
	"sync"
	"sync/atomic"
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
	resp            string
	control         string
	buildID         string
	failBeforeReady bool
	failPrepare     bool
	slowPrepare     time.Duration
	slowDrain       time.Duration
	slowSeal        time.Duration
	segmentBytes    int64
	failFsyncAt     store.SyncPhase
	dump            bool
	populate        int
	successor       bool // spawned by the supervisor for a handoff
	valueSize       int
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("kvd", flag.ContinueOnError)
	fs.StringVar(&c.dataDir, "data", "", "data `directory` (required)")
	fs.StringVar(&c.listen, "listen", "127.0.0.1:8080", "TCP `address` to bind when no listener \"http\" was inherited")
	fs.StringVar(&c.resp, "resp", "", "TCP `address` to bind for RESP (the Redis protocol) when no listener \"resp\" was inherited; empty: none")
	fs.StringVar(&c.control, "control", "", "control socket `path` (default: the supervisor's, or DIR/.handoff.sock)")
	fs.StringVar(&c.buildID, "build-id", buildID, "build `id` announced to the supervisor")
	fs.BoolVar(&c.failBeforeReady, "fail-before-ready", failBeforeReady == "true", "test knob: as a successor, exit 1 after Begin, before Ready")
	fs.BoolVar(&c.failPrepare, "fail-prepare", false, "test knob: exit 1 during the warm-up")
	fs.DurationVar(&c.slowPrepare, "slow-prepare", 0, "test knob: make the warm-up take this much longer")
	fs.DurationVar(&c.slowDrain, "slow-drain", 0, "test knob: make every drain take this much longer")
	fs.DurationVar(&c.slowSeal, "slow-seal", 0, "test knob: make every seal take this much longer")
	fs.Int64Var(&c.segmentBytes, "segment-bytes", 0, "test knob: start a new log segment past this many `bytes` (default 64 MiB)")
	fs.Func("fail-fsync-at", "test knob: the first fsync of the log in `phase` drain, seal or commit fails with EIO", func(v string) error {
		switch p := store.SyncPhase(v); p {
		case store.SyncDrain, store.SyncSeal, store.SyncCommit:
			c.failFsyncAt = p
			return nil
		}
		return fmt.Errorf("want drain, seal or commit, not %q", v)
	})
	fs.BoolVar(&c.dump, "dump", false, "print the stored data as JSON and exit")
	fs.IntVar(&c.populate, "populate", 0, "fill the data directory with `N` keys, compact, and exit (for benchmarks)")
	fs.IntVar(&c.valueSize, "value-size", 1024, "with --populate: the size of each value in `bytes`")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.dataDir == "" {
		return config{}, errors.New("--data is required")
	}
	if c.segmentBytes < 0 {
		return config{}, fmt.Errorf("--segment-bytes %d is negative", c.segmentBytes)
	}
	if c.populate < 0 {
		return config{}, fmt.Errorf("--populate %d is negative", c.populate)
	}
	if c.valueSize < 0 || c.valueSize > store.MaxValueLen {
		return config{}, fmt.Errorf("--value-size %d is not within 0..%d", c.valueSize, store.MaxValueLen)
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
		return dump(cfg, log, os.Stdout)
	}
	if cfg.populate > 0 {
		return populate(cfg, log, os.Stdout)
	}

	var warm *store.Warm // from Prepare to Open
	// The supervisor spawns a successor with HANDOFF_ROLE=successor (Run
	// reads the variable and clears it).
	cfg.successor = os.Getenv("HANDOFF_ROLE") == "successor"
	listen := map[string]string{"http": cfg.listen}
	if cfg.resp != "" {
		listen["resp"] = cfg.resp
	}
	return handoff.Run(ctx, handoff.Config{
		DataDir:       cfg.dataDir,
		ControlSocket: cfg.control,
		Listen:        listen,
		BuildID:       cfg.buildID,
		Logger:        log,
		Prepare: func(ctx context.Context) error {
			w, err := prepare(ctx, cfg, log)
			if err != nil {
				return err
			}
			if warm != nil {
				warm.Close()
			}
			warm = w
			return nil
		},
		Open: func(_ context.Context, ls *handoff.InheritedListeners) (handoff.Service, error) {
			w := warm
			warm = nil
			return open(cfg, log, ls, w)
		},
	})
}

// prepare is the warm-up: it loads the store read-only, without the lock,
// while an incumbent may still write.
func prepare(ctx context.Context, cfg config, log *slog.Logger) (*store.Warm, error) {
	if cfg.failPrepare {
		// Simulates a crash: no cleanup.
		log.Error("--fail-prepare: exiting during the warm-up")
		os.Exit(1)
	}
	if err := pause(ctx, cfg.slowPrepare); err != nil {
		return nil, fmt.Errorf("--slow-prepare: %w", err)
	}
	if cfg.successor {
		// One CPU for the warm-up: the incumbent serves beside it, and a
		// load of the whole store (and its garbage collection) on every
		// CPU would slow the incumbent's requests for the warm-up's
		// length. A cold start has nobody beside it and uses them all.
		procs := runtime.GOMAXPROCS(1)
		defer runtime.GOMAXPROCS(procs)
	}
	w, err := store.Prepare(cfg.dataDir)
	if err != nil {
		return nil, fmt.Errorf("prepare store: %w", err)
	}
	// Loading allocated about the size of the data: collect now, in the
	// warm-up, rather than in a GC cycle that would run inside the pause.
	t0 := time.Now()
	runtime.GC()
	rc := w.Recovery()
	log.Info("store warmed up", "revision", w.Revision(), "keys", w.Len(),
		"snapshot_revision", rc.SnapshotRevision, "records", rc.WarmRecords, "bytes", rc.WarmBytes, "took", rc.WarmDuration,
		"gc", time.Since(t0))
	return w, nil
}

// openLocked opens the store for a command that runs without serving
// (--dump, --populate): it takes the data-directory lock, so it fails
// rather than touch a directory a daemon owns. done closes the store and
// releases the lock.
func openLocked(cfg config, log *slog.Logger) (st *store.Store, done func(), err error) {
	lock, err := handoff.AcquireDataDirLock(cfg.dataDir)
	if err != nil {
		return nil, nil, fmt.Errorf("data-directory lock: %w", err)
	}
	if st, err = openStore(cfg, log, nil); err != nil {
		lock.Release()
		return nil, nil, err
	}
	return st, func() { st.Close(); lock.Release() }, nil
}

// dump writes the store's revision and data to w as JSON.
func dump(cfg config, log *slog.Logger, w io.Writer) error {
	st, done, err := openLocked(cfg, log)
	if err != nil {
		return err
	}
	defer done()
	rev, data := st.Contents()
	return json.NewEncoder(w).Encode(struct {
		Revision uint64            `json:"revision"`
		Data     map[string][]byte `json:"data"`
	}{rev, data})
}

// openStore makes the warmed-up store writable (the lock is held): it
// applies what was written after the warm-up. Without a warm-up (nil) it
// loads everything now.
func openStore(cfg config, log *slog.Logger, w *store.Warm) (*store.Store, error) {
	if w == nil {
		var err error
		if w, err = prepare(context.Background(), config{dataDir: cfg.dataDir}, log); err != nil {
			return nil, err
		}
	}
	st, err := w.OpenWith(store.Options{SegmentBytes: cfg.segmentBytes, FailSync: failFsyncAt(cfg.failFsyncAt, log)})
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	logRecovery(log, st)
	return st, nil
}

// failFsyncAt is the --fail-fsync-at knob: the first fsync of the log in
// phase fails with EIO. Nil without the knob.
func failFsyncAt(phase store.SyncPhase, log *slog.Logger) func(store.SyncPhase) error {
	if phase == "" {
		return nil
	}
	var fired atomic.Bool
	return func(p store.SyncPhase) error {
		if p != phase || !fired.CompareAndSwap(false, true) {
			return nil
		}
		log.Warn("--fail-fsync-at: failing an fsync of the log", "phase", p)
		return fmt.Errorf("fsync failure injected by --fail-fsync-at %s: %w", p, syscall.EIO)
	}
}

func logRecovery(log *slog.Logger, st *store.Store) {
	rc := st.Recovery()
	log.Info("store opened", "revision", st.Revision(), "keys", st.Len(),
		"caught_up_records", rc.CaughtUpRecords, "caught_up_bytes", rc.CaughtUpBytes, "took", rc.CatchUpDuration,
		"snapshot_revision", rc.SnapshotRevision, "replayed", rc.Replayed)
	if rc.FullLoad {
		log.Warn("store: the log did not continue from the warm-up; loaded it in full", "reason", rc.FullLoadReason)
	}
	if rc.TornTailBytes > 0 {
		log.Warn("store: cut a torn log tail (a write interrupted by a crash, never acknowledged)",
			"file", rc.TornTailFile, "offset", rc.TornTailAt, "bytes", rc.TornTailBytes)
	}
	if rc.WriteErr != nil {
		log.Error("store: opened without a writable log: serving reads, refusing writes", "reason", rc.WriteErr)
	}
}

// populateWriters is how many writers --populate runs: enough that each
// group commit carries hundreds of records.
const populateWriters = 256

// populate fills the store with cfg.populate keys through concurrent
// writers (group commit), compacts it, and reports as JSON.
func populate(cfg config, log *slog.Logger, w io.Writer) error {
	st, done, err := openLocked(cfg, log)
	if err != nil {
		return err
	}
	defer done()
	start := time.Now()
	var next atomic.Int64
	errs := make(chan error, populateWriters)
	var wg sync.WaitGroup
	for range populateWriters {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(cfg.populate); i = next.Add(1) - 1 {
				if _, err := st.Put(populateKey(i), populateValue(i, cfg.valueSize)); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return fmt.Errorf("populate: %w", err)
	}
	if err := st.Compact(); err != nil {
		return fmt.Errorf("populate: compact: %w", err)
	}
	took := time.Since(start)
	stats := st.Stats()
	log.Info("populated", "keys", stats.Keys, "revision", stats.Revision, "snapshot_bytes", stats.SnapshotBytes, "took", took)
	return json.NewEncoder(w).Encode(struct {
		Keys     int     `json:"keys"`
		Revision uint64  `json:"revision"`
		Seconds  float64 `json:"seconds"`
	}{stats.Keys, stats.Revision, took.Seconds()})
}

// populateKey is the i-th key --populate writes.
func populateKey(i int64) string { return fmt.Sprintf("pop-%08d", i) }

// populateValue is the value --populate writes under populateKey(i): the
// key's digits repeated to size bytes.
func populateValue(i int64, size int) []byte {
	digits := fmt.Appendf(nil, "%08d", i)
	v := make([]byte, size)
	for j := range v {
		v[j] = digits[j%len(digits)]
	}
	return v
}
