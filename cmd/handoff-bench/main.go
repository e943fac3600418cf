// Command handoff-bench measures what SPEC §8 promises, side by side in one
// run on loopback, under the same load of fresh connections:
//
//   - handoff: an embedded supervisor.Supervisor (in its own process) hands a
//     minimal daemon off to a new process again and again;
//   - restart: the same daemon without the library, stopped (SIGTERM: it
//     closes its listener and exits) and then started again;
//   - reuseport: a new process binds the port with SO_REUSEPORT while the old
//     one still listens, then the old one closes its listener and exits.
//
// It counts failed requests (refused, reset, timeout, bad reply) in each
// mode, reports the handoff's accept gap and the library's own share of it,
// the supervisor's memory and its CPU time while idle.
//
//	go run ./cmd/handoff-bench [-handoffs 100] [-rate 1000] [-clients 8] [-every 200ms] [-idle 5s] [-json]
//
// With -kvd it measures examples/kvd instead, for each data size: a fresh
// data directory of that many keys, kvd handed off under an embedded
// supervisor, then the same kvd on the same data stopped and started
// again, under a probe every millisecond and a light load of checked
// writes; it reports the accept gap and its phases, the pause the probes
// saw and the restart time side by side, and can plot them:
//
//	go run ./cmd/handoff-bench -kvd [-sizes 1k,10k,100k,1M] [-handoffs 10] [-every 500ms] [-plot DIR] [-kvd-rev REV] [-json]
//
// With -keepalive N it measures persistent connections instead: a pool of N
// keep-alive HTTP/1.1 connections (a client of its own that counts every
// re-dial) under the same three strategies, the daemon an HTTP server on
// httphandoff (which passes idle connections to its successor) or the same
// server without the library; it reports failed requests, reconnects and
// the longest wait for an answer around each handoff or restart. Then, for
// each -idle-conns number, that many idle keep-alive connections held open
// through the handoffs: the accept gap and the library's share against the
// number passed, and whether each idle one answers on the same connection
// afterwards:
//
//	go run ./cmd/handoff-bench -keepalive 8 [-idle-conns 0,100,1k,10k] [-handoffs 20] [-rate 1000] [-every 200ms] [-idle-wait 0s] [-json]
//
// The daemons are this binary re-executed in a role chosen by the
// HANDOFF_BENCH_ROLE environment variable.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if role, ok := os.LookupEnv(envRole); ok {
		os.Exit(runRole(role))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "handoff-bench:", err)
		os.Exit(1)
	}
}
