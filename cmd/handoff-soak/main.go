// Command handoff-soak hands examples/kvd over to a new binary many times
// in a row under the real handoff-supervisor, with a mixed load running
// throughout, and reports whether anything degrades: failed requests,
// lost acknowledged writes, zombies, and drift of the supervisor's
// descriptors, memory and goroutines.
//
//	go run ./cmd/handoff-soak                   # 1000 handoffs
//	go run ./cmd/handoff-soak -handoffs 50 -every 300ms -plot /tmp/soak
//
// It builds the supervisor and kvd in two versions (build ids soak-v1 and
// soak-v2) into a working directory, from the working tree or, with -rev,
// from a commit (git archive), starts the supervisor with a TOML config
// (loopback listener, trigger socket, journal, metrics on a free port)
// and performs -handoffs consecutive handoffs through the trigger socket,
// alternating the binaries, one every -every (start to start), each at
// least -min-rest after the previous one ended.
//
// The load, bounded in rate, runs from before the first handoff to after
// the last: fresh-connection clients (one TCP connection per request) and a
// fixed pool of keep-alive clients (net/http, one persistent connection
// each), all alternating a PUT of a unique key with a GET of a key
// acknowledged earlier (its value checked). Every acknowledged PUT is read
// back from the live daemon at the end and, after the supervisor stopped
// on SIGTERM, from the data directory with kvd --dump.
//
// What counts as what:
//   - a failed request: a transport error (no response), a status other
//     than 200, or a GET whose body is not the acknowledged value;
//   - a reconnect: a keep-alive client opening a TCP connection after its
//     first one (a handoff closes persistent connections today);
//   - a retried request: one that net/http sent again on a new connection,
//     by itself, after the reused one turned out closed by the server
//     (GETs, and PUTs, which carry an Idempotency-Key unless
//     -idempotent-puts=false); it counts as a success with a reconnect.
//
// Every -sample, and at rest just before each handoff, it samples the
// supervisor's descriptors (/proc/PID/fd), RSS (VmRSS) and goroutines
// (go_goroutines on /metrics), the serving daemon's descriptors and RSS,
// the supervisor's zombie children and the kvd processes alive. The drift
// figures are computed from the samples at rest.
//
// With -plot DIR it writes soak-supervisor.svg/.png and
// soak-daemon.svg/.png there; -json prints the report as JSON. It exits
// with status 1 when a check fails (the report lists which).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, errFlagsShown) {
			fmt.Fprintln(os.Stderr, "handoff-soak:", err)
		}
		os.Exit(1)
	}
}
