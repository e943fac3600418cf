package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// kaResult is one run of the keep-alive mode; its JSON form is the -json
// output.
type kaResult struct {
	Date     string        `json:"date"`
	CPUs     int           `json:"cpus"`
	OS       string        `json:"os"`
	Go       string        `json:"go"`
	Handoffs int           `json:"handoffs"` // per strategy, and per number of idle connections
	Rate     int           `json:"rate"`     // requests per second across the pool
	Pool     int           `json:"pool"`     // persistent connections sending requests
	Every    time.Duration `json:"every_ns"`
	// IdleWait: the rest after the handoffs before the idle connections
	// are checked.
	IdleWait time.Duration `json:"idle_wait_ns"`
	// NoFile is the soft RLIMIT_NOFILE every process of the run had (the
	// bench raised it to the hard one, NoFileMax, and the others inherit it).
	NoFile    uint64         `json:"rlimit_nofile"`
	NoFileMax uint64         `json:"rlimit_nofile_max"`
	Modes     []kaModeResult `json:"modes"`
	Idle      []kaIdleResult `json:"idle"`
}

// kaModeResult is one strategy under the keep-alive pool.
type kaModeResult struct {
	Mode         string   `json:"mode"`
	Restarts     int      `json:"restarts"`  // handoffs or restarts performed
	Committed    int      `json:"committed"` // of the handoffs; = Restarts for the baselines
	AbortReasons []string `json:"abort_reasons,omitempty"`
	// Requests = RequestsOK + RequestsFailed; failed: a transport error
	// (even after the one resend) or a status other than 2xx.
	Requests        int64            `json:"requests"`
	RequestsOK      int64            `json:"requests_ok"`
	RequestsFailed  int64            `json:"requests_failed"`
	FailedPercent   float64          `json:"failed_percent"`
	Failures        map[string]int64 `json:"failures"` // by kind
	FailureExamples []string         `json:"failure_examples,omitempty"`
	// Reconnects: connections of the pool dialed again after the first
	// (the server closed or reset one, or the client gave one up), by cause.
	Reconnects      int64            `json:"reconnects"`
	ReconnectCauses map[string]int64 `json:"reconnect_causes"`
	// Gap: per handoff or restart, the longest any one connection waited
	// for a 2xx answer (from its request, or the first of its failed
	// ones, to the next answer) among those waiting while it ran.
	Gap     dist `json:"gap"`
	Latency dist `json:"latency"` // of successful requests, a resend included
	Took    dist `json:"took"`
	// Handoff only, from Outcome: the accept gap, the library's share,
	// and the connections passed per handoff.
	AcceptGap       *dist    `json:"accept_gap,omitempty"`
	LibraryOverhead *dist    `json:"library_overhead,omitempty"`
	PassedConns     *intDist `json:"passed_conns,omitempty"`
}

// kaIdleResult is one number of idle connections held through the handoffs.
type kaIdleResult struct {
	Idle    int    `json:"idle"`
	Skipped string `json:"skipped,omitempty"` // why it was not measured
	// Open: time to open every idle connection and have each answer once;
	// OpenFailed: those that did not (left out of the rest).
	Open         time.Duration `json:"open_ns"`
	OpenFailed   int           `json:"open_failed"`
	OpenErrors   []string      `json:"open_errors,omitempty"`
	Restarts     int           `json:"handoffs"`
	Committed    int           `json:"committed"`
	AbortReasons []string      `json:"abort_reasons,omitempty"`
	// From Outcome: the accept gap, the library's share, passed connections.
	AcceptGap       *dist    `json:"accept_gap,omitempty"`
	LibraryOverhead *dist    `json:"library_overhead,omitempty"`
	PassedConns     *intDist `json:"passed_conns,omitempty"`
	// Medians over the medians at 0 idle connections.
	AcceptGapRatio float64 `json:"accept_gap_ratio"`
	LibraryRatio   float64 `json:"library_overhead_ratio"`
	// Probes: the pool, measuring the gap.
	Probes probeFigures `json:"probes"`
	// After the handoffs, one request on each idle connection: Checked
	// sent, SameConn answered on the same connection (no re-dial, same
	// local port), Redialed answered only on a new one, CheckFailed not
	// answered.
	Checked      int      `json:"checked"`
	SameConn     int      `json:"same_conn"`
	Redialed     int      `json:"redialed"`
	CheckFailed  int      `json:"check_failed"`
	CheckErrors  []string `json:"check_errors,omitempty"`
	CheckLatency dist     `json:"check_latency"`
}

// probeFigures: the pool's requests during one number of idle connections.
type probeFigures struct {
	Requests        int64    `json:"requests"`
	Failed          int64    `json:"failed"`
	Reconnects      int64    `json:"reconnects"`
	Gap             dist     `json:"gap"`
	FailureExamples []string `json:"failure_examples,omitempty"`
}

// intDist summarises counts.
type intDist struct {
	N      int `json:"n"`
	Min    int `json:"min"`
	Median int `json:"median"`
	Max    int `json:"max"`
}

func newIntDist(xs []int) *intDist {
	if len(xs) == 0 {
		return nil
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return &intDist{N: len(s), Min: s[0], Median: s[(len(s)-1)/2], Max: s[len(s)-1]}
}

func newKAModeResult(mode string, samples []opSample, ld *kaLoad) kaModeResult {
	gaps := ld.gaps(samples)
	ld.mu.Lock()
	defer ld.mu.Unlock()
	r := kaModeResult{Mode: mode, Restarts: len(samples), RequestsOK: ld.ok, Failures: map[string]int64{},
		FailureExamples: slices.Clone(ld.examples), Latency: newDist(ld.lat), Gap: newDist(gaps),
		Reconnects: ld.reconnects, ReconnectCauses: map[string]int64{}}
	for _, k := range kaFailKinds {
		r.Failures[k] = ld.failed[k]
		r.RequestsFailed += ld.failed[k]
	}
	for _, c := range kaCauses {
		r.ReconnectCauses[c] = ld.causes[c]
	}
	r.Requests = r.RequestsOK + r.RequestsFailed
	if r.Requests > 0 {
		r.FailedPercent = 100 * float64(r.RequestsFailed) / float64(r.Requests)
	}
	var took, gap, lib []time.Duration
	var passed []int
	for _, s := range samples {
		if s.failed != "" {
			r.AbortReasons = append(r.AbortReasons, s.failed)
			continue
		}
		r.Committed++
		took, gap, lib = append(took, s.took), append(gap, s.gap), append(lib, s.lib)
		passed = append(passed, s.handoff.PassedConns)
	}
	r.Took = newDist(took)
	if mode == modeHandoff {
		g, l := newDist(gap), newDist(lib)
		r.AcceptGap, r.LibraryOverhead, r.PassedConns = &g, &l, newIntDist(passed)
	}
	return r
}

// setRatios compares each number of idle connections with none.
func (r *kaResult) setRatios() {
	var base *kaIdleResult
	for i := range r.Idle {
		if ir := &r.Idle[i]; ir.Idle == 0 && ir.Skipped == "" && ir.AcceptGap != nil && ir.AcceptGap.N > 0 {
			base = ir
		}
	}
	if base == nil {
		return
	}
	for i := range r.Idle {
		ir := &r.Idle[i]
		if ir.AcceptGap == nil || ir.AcceptGap.N == 0 {
			continue
		}
		if base.AcceptGap.Median > 0 {
			ir.AcceptGapRatio = float64(ir.AcceptGap.Median) / float64(base.AcceptGap.Median)
		}
		if base.LibraryOverhead.Median > 0 {
			ir.LibraryRatio = float64(ir.LibraryOverhead.Median) / float64(base.LibraryOverhead.Median)
		}
	}
}

func (r *kaResult) mode(name string) *kaModeResult {
	for i := range r.Modes {
		if r.Modes[i].Mode == name {
			return &r.Modes[i]
		}
	}
	return nil
}

func (r *kaResult) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}

func (r *kaResult) print(w io.Writer) {
	fmt.Fprintf(w, "handoff-bench -keepalive  %s  %s, %d CPUs, %s, loopback 127.0.0.1\n", r.Date, r.OS, r.CPUs, r.Go)
	fmt.Fprintf(w, "load: %d persistent HTTP/1.1 connections, %d req/s in all (GET, answer read, next request on the same connection;\n", r.Pool, r.Rate)
	fmt.Fprintf(w, "one the server closed or reset before answering is re-dialed and the request sent once more: a reconnect)\n")
	fmt.Fprintf(w, "%d handoffs or restarts per strategy, one every %v; RLIMIT_NOFILE %d (hard %d) in every process\n\n", r.Handoffs, r.Every, r.NoFile, r.NoFileMax)

	fmt.Fprintf(w, "%-28s %9s %9s %7s %9s %10s %10s %10s %10s\n",
		"strategy", "done", "requests", "failed", "failed %", "reconnects", "gap p50", "gap p99", "gap max")
	for _, m := range r.Modes {
		fmt.Fprintf(w, "%-28s %9s %9d %7d %8.3f%% %10d %10s %10s %10s\n", modeTitles[m.Mode], fmt.Sprintf("%d/%d", m.Committed, m.Restarts),
			m.Requests, m.RequestsFailed, m.FailedPercent, m.Reconnects, ms(m.Gap.Median), ms(m.Gap.P99), ms(m.Gap.Max))
	}
	fmt.Fprintf(w, "\n%-28s", "failed by kind; reconnects")
	for _, k := range kaFailKinds {
		fmt.Fprintf(w, " %7s", k)
	}
	fmt.Fprintf(w, "  |")
	for _, c := range kaCauses {
		fmt.Fprintf(w, " %12s", c)
	}
	fmt.Fprintln(w)
	for _, m := range r.Modes {
		fmt.Fprintf(w, "%-28s", modeTitles[m.Mode])
		for _, k := range kaFailKinds {
			fmt.Fprintf(w, " %7d", m.Failures[k])
		}
		fmt.Fprintf(w, "  |")
		for _, c := range kaCauses {
			fmt.Fprintf(w, " %12d", m.ReconnectCauses[c])
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "gap: around each handoff or restart, the longest any one connection waited for a 2xx answer (from its request,\n")
	fmt.Fprintf(w, "or the first of its failed ones, to the next answer); p50/p99/max over the handoffs or restarts\n")

	fmt.Fprintf(w, "\n%-62s %10s %10s %10s\n", "time", "median", "p90", "max")
	row := func(name string, d *dist) {
		if d != nil && d.N > 0 {
			fmt.Fprintf(w, "%-62s %10s %10s %10s\n", name, ms(d.Median), ms(d.P90), ms(d.Max))
		}
	}
	if h := r.mode(modeHandoff); h != nil {
		row("handoff: accept gap (Outcome.Phases.AcceptGap)", h.AcceptGap)
		row("  library's share (Outcome.Phases.LibraryOverhead)", h.LibraryOverhead)
		row("handoff: whole (spawn, handshake, gap, commit)", &h.Took)
	}
	if m := r.mode(modeRestart); m != nil {
		row("restart: whole (SIGTERM → new process listening)", &m.Took)
	}
	if m := r.mode(modeReusePort); m != nil {
		row("reuseport: whole (new process listening → old one gone)", &m.Took)
	}
	for _, m := range r.Modes {
		row("request latency, "+modeTitles[m.Mode], &m.Latency)
	}
	if h := r.mode(modeHandoff); h != nil && h.PassedConns != nil {
		fmt.Fprintf(w, "handoff: connections passed per handoff (Outcome.PassedConns): median %d, min %d, max %d, of %d in the pool\n",
			h.PassedConns.Median, h.PassedConns.Min, h.PassedConns.Max, r.Pool)
	}
	for _, m := range r.Modes {
		for _, reason := range m.AbortReasons {
			fmt.Fprintf(w, "%s: rolled back: %s\n", m.Mode, reason)
		}
		if m.Mode == modeHandoff {
			for _, e := range m.FailureExamples {
				fmt.Fprintf(w, "%s: failed request: %s\n", m.Mode, e)
			}
		}
	}
	r.printIdle(w)
}

// printIdle prints the idle connections' table.
func (r *kaResult) printIdle(w io.Writer) {
	if len(r.Idle) == 0 {
		return
	}
	fmt.Fprintf(w, "\nidle keep-alive connections held open through %d handoffs each (each answered once before, so it waits at a\n", r.Handoffs)
	after := "afterwards"
	if r.IdleWait > 0 {
		after = fmt.Sprintf("after %v of rest,", r.IdleWait)
	}
	fmt.Fprintf(w, "request boundary; the %d pool connections at %d req/s probe the gap); %s one request on each idle one\n", r.Pool, r.Rate, after)
	fmt.Fprintf(w, "times in ms, median unless p50/p99; passed: Outcome.PassedConns, min/median over the handoffs (idle + pool)\n\n")
	fmt.Fprintf(w, "%7s %7s %13s %10s %8s %9s %10s %13s %10s %7s  %s\n",
		"idle", "done", "passed", "accept gap", "library", "gap/gap₀", "lib/lib₀", "probe gap", "reconnects", "failed", "idle answered on the same connection")
	for _, ir := range r.Idle {
		if ir.Skipped != "" {
			fmt.Fprintf(w, "%7d  skipped: %s\n", ir.Idle, ir.Skipped)
			continue
		}
		passed := "-"
		if p := ir.PassedConns; p != nil {
			passed = fmt.Sprintf("%d/%d", p.Min, p.Median)
		}
		fmt.Fprintf(w, "%7d %7s %13s %10s %8s %9s %10s %13s %10d %7d  %s\n", ir.Idle, fmt.Sprintf("%d/%d", ir.Committed, ir.Restarts),
			passed, msShort(medianOf(ir.AcceptGap)), msShort(medianOf(ir.LibraryOverhead)), ratioStr(ir.AcceptGapRatio), ratioStr(ir.LibraryRatio),
			p50p99(&ir.Probes.Gap), ir.Probes.Reconnects, ir.Probes.Failed, ir.sameConnStr())
	}
	for _, ir := range r.Idle {
		for _, reason := range ir.AbortReasons {
			fmt.Fprintf(w, "%d idle: rolled back: %s\n", ir.Idle, reason)
		}
		for _, e := range ir.OpenErrors {
			fmt.Fprintf(w, "%d idle: could not open: %s\n", ir.Idle, e)
		}
		for _, e := range ir.CheckErrors {
			fmt.Fprintf(w, "%d idle: no answer afterwards: %s\n", ir.Idle, e)
		}
		for _, e := range ir.Probes.FailureExamples {
			fmt.Fprintf(w, "%d idle: failed probe: %s\n", ir.Idle, e)
		}
	}
}

func (ir kaIdleResult) sameConnStr() string {
	s := fmt.Sprintf("%d/%d", ir.SameConn, ir.Idle)
	var more []string
	if ir.Redialed > 0 {
		more = append(more, fmt.Sprintf("%d re-dialed", ir.Redialed))
	}
	if ir.CheckFailed > 0 {
		more = append(more, fmt.Sprintf("%d unanswered", ir.CheckFailed))
	}
	if ir.OpenFailed > 0 {
		more = append(more, fmt.Sprintf("%d never opened", ir.OpenFailed))
	}
	if n := ir.Idle - ir.OpenFailed - ir.Checked; n > 0 {
		more = append(more, fmt.Sprintf("%d not checked in time", n))
	}
	if len(more) > 0 {
		s += " (" + strings.Join(more, ", ") + ")"
	}
	return s
}

func medianOf(d *dist) time.Duration {
	if d == nil {
		return 0
	}
	return d.Median
}

func ratioStr(x float64) string {
	if x == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", x)
}
