// Command handoff-demo shows handoff doing its whole job: it builds the
// example key-value daemon kvd in two versions and a broken one, starts
// handoff-supervisor with it, puts it under load, hands it off again and
// again (and once to the broken binary, which must roll back), then reads
// every acknowledged write back and prints a report.
//
// The load's workers start at random phases and wait jittered intervals;
// on top, a probe writes over fresh connections back to back from each
// trigger to its outcome, so requests are in flight during every accept
// gap. Acknowledged writes are read back from the live daemon, then, after
// the supervisor stopped it (it must exit 0), from the data directory with
// kvd --dump. The run fails unless every handoff went as planned, at least
// one request succeeded and one acknowledged write was checked, nothing
// failed and nothing was lost.
//
//	go run ./cmd/handoff-demo [-duration 12s] [-handoffs 12] [-rate 400] [-plot latency.svg] [-keep-dir]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "handoff-demo:", err)
		os.Exit(1)
	}
}

type options struct {
	duration time.Duration
	handoffs int
	rate     int
	workers  int
	plot     string
	keepDir  bool
	dir      string
	verbose  bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("handoff-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&o.duration, "duration", 12*time.Second, "how long the load runs")
	fs.IntVar(&o.handoffs, "handoffs", 12, "successful handoffs to perform (alternating v1 and v2), plus one to a broken binary that must roll back")
	fs.IntVar(&o.rate, "rate", 400, "requests per second across all workers")
	fs.IntVar(&o.workers, "workers", 8, "concurrent client workers (half on fresh connections, half keep-alive)")
	fs.StringVar(&o.plot, "plot", "", "write a latency-over-time plot with handoff markers to this SVG file")
	fs.BoolVar(&o.keepDir, "keep-dir", false, "keep the working directory (binaries, config, data, logs) and print its path")
	fs.StringVar(&o.dir, "dir", "", "working directory (default: a new temporary directory)")
	fs.BoolVar(&o.verbose, "v", false, "show the supervisor's and daemons' logs")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	switch {
	case o.duration < 2*time.Second || o.duration > time.Hour:
		return o, fmt.Errorf("-duration %v: must be between 2s and 1h", o.duration)
	case o.handoffs < 1 || o.handoffs > 10000:
		return o, fmt.Errorf("-handoffs %d: must be between 1 and 10000", o.handoffs)
	case o.rate < 1 || o.rate > 20000:
		return o, fmt.Errorf("-rate %d: must be between 1 and 20000 requests per second", o.rate)
	case o.workers < 2 || o.workers > 256:
		return o, fmt.Errorf("-workers %d: must be between 2 and 256", o.workers)
	}
	if o.plot != "" {
		if err := checkPlotPath(o.plot); err != nil {
			return o, fmt.Errorf("-plot %s: %w", o.plot, err)
		}
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	d, err := newDemo(o, stdout, stderr)
	if err != nil {
		return err
	}
	defer d.cleanup()
	rep, err := d.run(ctx)
	if err != nil {
		return err
	}
	rep.print(stdout)
	if o.plot != "" {
		if err := writePlot(o.plot, rep); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		fmt.Fprintf(stdout, "plot written to %s\n", o.plot)
	}
	if o.keepDir {
		fmt.Fprintf(stdout, "working directory kept: %s\n", d.dir)
	}
	if p := rep.problems(); len(p) > 0 {
		return fmt.Errorf("the demo failed: %s", strings.Join(p, "; "))
	}
	return nil
}
