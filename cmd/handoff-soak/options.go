package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"time"
)

// errFlagsShown: the flags did not parse and the flag package has said why.
var errFlagsShown = errors.New("bad flags")

// options are the command line.
type options struct {
	handoffs       int
	every          time.Duration
	minRest        time.Duration
	plotDir        string
	json           bool
	rev            string
	dir            string
	keep           bool
	freshRate      float64
	freshWorkers   int
	keepAlive      int
	keepAliveRate  float64
	idempotentPuts bool
	sample         time.Duration
	warmup         time.Duration
	requestTimeout time.Duration
	timeout        time.Duration
	quiet          bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("handoff-soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: go run ./cmd/handoff-soak [flags]\n\n"+
			"Hands examples/kvd off -handoffs times under handoff-supervisor with a mixed load,\n"+
			"then checks every acknowledged write and reports drift, zombies and failures.\n\n")
		fs.PrintDefaults()
	}
	fs.IntVar(&o.handoffs, "handoffs", 1000, "consecutive handoffs to perform")
	fs.DurationVar(&o.every, "every", 500*time.Millisecond, "start a handoff this often (start to start; at once if the previous took longer)")
	fs.DurationVar(&o.minRest, "min-rest", 200*time.Millisecond, "but start no handoff sooner than this after the previous one ended (the samples at rest are taken then)")
	fs.StringVar(&o.plotDir, "plot", "", "write soak-supervisor.{svg,png} and soak-daemon.{svg,png} to `DIR`")
	fs.BoolVar(&o.json, "json", false, "print the report as JSON")
	fs.StringVar(&o.rev, "rev", "", "build the binaries from this git `revision` (git archive) instead of the working tree")
	fs.StringVar(&o.dir, "dir", "", "working `directory` (default: a new temporary one, removed unless -keep or a check fails)")
	fs.BoolVar(&o.keep, "keep", false, "keep the working directory (binaries, data, supervisor log)")
	fs.Float64Var(&o.freshRate, "fresh-rate", 40, "requests per second over fresh connections, all fresh workers together")
	fs.IntVar(&o.freshWorkers, "fresh-workers", 4, "fresh-connection workers")
	fs.IntVar(&o.keepAlive, "keepalive", 16, "keep-alive clients, one persistent connection each")
	fs.Float64Var(&o.keepAliveRate, "keepalive-rate", 5, "requests per second of each keep-alive client")
	fs.BoolVar(&o.idempotentPuts, "idempotent-puts", true, "keep-alive PUTs carry an Idempotency-Key, so net/http may resend them on a new connection when the server closed the reused one")
	fs.DurationVar(&o.sample, "sample", 100*time.Millisecond, "sampling interval of descriptors, RSS, goroutines and processes")
	fs.DurationVar(&o.warmup, "warmup", time.Second, "load before the first handoff and after the last")
	fs.DurationVar(&o.requestTimeout, "request-timeout", 10*time.Second, "bound of one request")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "bound of the whole run; handoffs stop there and the checks run")
	fs.BoolVar(&o.quiet, "q", false, "no progress lines on stderr")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, errFlagsShown
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch {
	case o.handoffs < 1:
		return o, fmt.Errorf("-handoffs %d: want at least 1", o.handoffs)
	case o.every < 0 || o.minRest < 0:
		return o, fmt.Errorf("-every %v and -min-rest %v must not be negative", o.every, o.minRest)
	case o.freshRate < 0 || o.keepAliveRate < 0:
		return o, errors.New("-fresh-rate and -keepalive-rate must not be negative")
	case o.freshWorkers < 0 || o.keepAlive < 0:
		return o, errors.New("-fresh-workers and -keepalive must not be negative")
	case o.freshRate > 0 && o.freshWorkers == 0:
		return o, errors.New("-fresh-rate needs -fresh-workers > 0")
	case o.freshRate > 10000 || o.keepAliveRate > 1000 || o.keepAlive > 1000:
		return o, errors.New("the load is bounded: -fresh-rate ≤ 10000, -keepalive ≤ 1000, -keepalive-rate ≤ 1000")
	case o.sample < 10*time.Millisecond:
		return o, fmt.Errorf("-sample %v: want at least 10ms", o.sample)
	case o.requestTimeout <= 0 || o.timeout <= 0:
		return o, errors.New("-request-timeout and -timeout must be positive")
	case o.warmup < 0:
		return o, fmt.Errorf("-warmup %v is negative", o.warmup)
	}
	return o, nil
}
