package handoff

import "context"

// Drainable is what a daemon implements so the library can hand it off.
// The library calls Drain, then Seal, on the incumbent; if the handoff does
// not commit it calls ResumeAfterAbort. Calls never overlap.
//
// Drain must not close the listening sockets (connections that arrive
// meanwhile wait in the kernel's accept queue for whoever serves next) and
// must answer every connection it already accepted. Do not drain a
// net/http server with http.Server.Shutdown: once Shutdown began, net/http
// closes a connection whose request arrives afterwards instead of
// answering it, so a client that connected just before the drain sees a
// failed request. Use package httphandoff, which ends Accept with a
// deadline and turns keep-alives off instead; for another protocol, stop
// accepting the same way and finish each connection at a request boundary.
//
// Drain and Seal run inside the pause clients see, so their cost must not
// grow with the data. The pattern for a store (examples/kvd follows it):
// the successor warms up before the drain (Config.Prepare: read the newest
// snapshot and the log up to where it ends, without the lock), Seal only
// makes the log durable and closes the writer, snapshots and compaction run
// in the background while serving (cancelled by Drain or Seal, written
// atomically so that the log alone always recovers), and the successor's
// Open, and ResumeAfterAbort, apply only what was written after the
// position they had already read.
type Drainable interface {
	// Drain stops accepting, finishes in-flight requests before ctx's
	// deadline (the drain grace), rejects new writes and fsyncs. An error
	// aborts the handoff; the daemon keeps its lock and is resumed.
	Drain(ctx context.Context) (DrainReport, error)

	// Seal flushes and closes writer state and fsyncs, in constant time
	// (no snapshot here: see above). The library releases the DataDirLock
	// right after a nil return. An error aborts the handoff and the lock
	// stays held.
	Seal(ctx context.Context) (SealReport, error)

	// ResumeAfterAbort reopens writer state from disk (a successor that
	// died after the seal may have written: catch up from the sealed
	// position rather than reload) and accepts again. It must be
	// idempotent: it may follow a failed Drain, a failed Seal or a
	// successful Seal, and may be called twice.
	ResumeAfterAbort(ctx context.Context) error
}

// DrainReport is what Drain returns.
type DrainReport struct {
	// OpenConnsRemaining counts connections still open when Drain returned.
	OpenConnsRemaining int
	// AcceptClosed reports that the daemon stopped accepting.
	AcceptClosed bool
}

// SealReport is what Seal returns: the last durable revision of each shard
// and a fingerprint of the data directory as sealed. Both may be empty: a
// daemon without shards or revisions reports nothing, and the supervisor
// then has nothing to compare the successor's Ready with.
type SealReport struct {
	// LastRevisionPerShard is the last durable revision of each shard, by shard index.
	LastRevisionPerShard []uint64
	// DataDirFingerprint identifies the data directory's sealed contents.
	DataDirFingerprint string
}

// ReadinessSnapshot is what a successor announces with Ready. The
// supervisor accepts it only if HealthzOK is true and every advertised
// revision is at least the sealed one.
type ReadinessSnapshot struct {
	// ListeningOn lists what the successor accepts on, for logs (Run fills
	// in the listener names when it is empty).
	ListeningOn []string
	// HealthzOK reports that the successor's own health check passed.
	HealthzOK bool
	// AdvertisedRevisionPerShard is the revision of each shard the
	// successor serves, by shard index; each must be at least the sealed one.
	AdvertisedRevisionPerShard []uint64
}
