package main

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"
)

// Mode names, in the order they run.
const (
	modeHandoff   = "handoff"
	modeRestart   = "restart"
	modeReusePort = "reuseport"
)

var modeTitles = map[string]string{
	modeHandoff:   "handoff (library)",
	modeRestart:   "restart (stop, then start)",
	modeReusePort: "SO_REUSEPORT overlap",
}

// result is the whole run; its JSON form is the -json output.
type result struct {
	Date       string           `json:"date"`
	CPUs       int              `json:"cpus"`
	OS         string           `json:"os"`
	Go         string           `json:"go"`
	Handoffs   int              `json:"handoffs"`
	Rate       int              `json:"rate"`
	Clients    int              `json:"clients"`
	Every      time.Duration    `json:"every_ns"`
	Modes      []modeResult     `json:"modes"`
	Supervisor supervisorResult `json:"supervisor"`
}

// modeResult is one mode's figures.
type modeResult struct {
	Mode      string `json:"mode"`
	Restarts  int    `json:"restarts"`  // handoffs or restarts performed
	Committed int    `json:"committed"` // of the handoffs; = Restarts for the baselines
	// AbortReasons of handoffs that did not commit.
	AbortReasons   []string         `json:"abort_reasons,omitempty"`
	RequestsOK     int64            `json:"requests_ok"`
	RequestsFailed int64            `json:"requests_failed"`
	FailedPercent  float64          `json:"failed_percent"`
	Failures       map[string]int64 `json:"failures"` // by kind
	// FailureExamples are the first few errors, as the client saw them.
	FailureExamples []string `json:"failure_examples,omitempty"`
	Latency         dist     `json:"latency"` // of successful requests
	Took            dist     `json:"took"`    // whole handoff (spawn to commit) or restart
	// Gap: handoff: the accept gap (nobody accepts; connections queue);
	// restart: the refused window (old listener closed to new one bound).
	Gap *dist `json:"gap,omitempty"`
	// LibraryOverhead is the library's share of the accept gap (the gap
	// minus the daemons' reported drain, seal and open); DaemonWork the rest.
	LibraryOverhead *dist `json:"library_overhead,omitempty"`
	DaemonWork      *dist `json:"daemon_work,omitempty"`
	// Breakdown splits the handoff's gap further (handoff only).
	Breakdown *breakdown `json:"breakdown,omitempty"`
}

// breakdown splits the handoff's accept gap with the daemons' own
// timings. The hops are the library's share, message by message.
type breakdown struct {
	// DaemonSeenGap: from the old daemon closing its listener to the new
	// one accepting, by their clocks.
	DaemonSeenGap dist `json:"daemon_seen_gap"`
	// DrainHop: PrepareHandoff sent to Drained received, minus Drain.
	DrainHop dist `json:"drain_hop"`
	// SealHop: SealRequest sent to SealComplete received, minus Seal
	// (it includes the lock's release).
	SealHop dist `json:"seal_hop"`
	// BeginHop: Begin sent to Ready received, minus the successor's
	// lock and open.
	BeginHop dist `json:"begin_hop"`
	// BetweenHops: the supervisor's own steps between the hops (journal,
	// phase events, the Ready check, sending Commit).
	BetweenHops dist `json:"between_hops"`
	// Lock: AcquireDataDirLock in the successor, which the library counts
	// as the daemon's open time.
	Lock dist `json:"lock"`
}

// supervisorResult: the supervisor process (the embedded Supervisor and
// nothing else; the daemons are other processes).
type supervisorResult struct {
	Peak    procStats     `json:"at_end"`  // after the handoffs: VmRSS and VmHWM
	Idle    time.Duration `json:"idle_ns"` // the idle window
	CPU     time.Duration `json:"idle_cpu_ns"`
	Wakeups int64         `json:"idle_context_switches"`
	// The serving daemon in the same window (the library's Incumbent.Serve
	// runs in it).
	Daemon        procStats     `json:"daemon"`
	DaemonCPU     time.Duration `json:"daemon_idle_cpu_ns"`
	DaemonWakeups int64         `json:"daemon_idle_context_switches"`
}

// dist summarises durations.
type dist struct {
	N      int           `json:"n"`
	Median time.Duration `json:"median_ns"`
	P90    time.Duration `json:"p90_ns"`
	P99    time.Duration `json:"p99_ns"`
	Max    time.Duration `json:"max_ns"`
}

func newDist(ds []time.Duration) dist {
	if len(ds) == 0 {
		return dist{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) time.Duration { return s[int(q*float64(len(s)-1)+0.5)] }
	return dist{N: len(s), Median: at(0.5), P90: at(0.9), P99: at(0.99), Max: s[len(s)-1]}
}

func newModeResult(mode string, samples []opSample, ld *load) modeResult {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	r := modeResult{Mode: mode, Restarts: len(samples), RequestsOK: ld.ok, Failures: map[string]int64{},
		FailureExamples: slices.Clone(ld.examples), Latency: newDist(ld.lat)}
	for _, k := range failKinds {
		r.Failures[k] = ld.failed[k]
		r.RequestsFailed += ld.failed[k]
	}
	if n := r.RequestsOK + r.RequestsFailed; n > 0 {
		r.FailedPercent = 100 * float64(r.RequestsFailed) / float64(n)
	}
	var took, gap, lib, work []time.Duration
	for _, s := range samples {
		if s.failed != "" {
			r.AbortReasons = append(r.AbortReasons, s.failed)
			continue
		}
		r.Committed++
		took, gap, lib, work = append(took, s.took), append(gap, s.gap), append(lib, s.lib), append(work, s.work)
	}
	r.Took = newDist(took)
	switch mode {
	case modeHandoff:
		g, l, w := newDist(gap), newDist(lib), newDist(work)
		r.Gap, r.LibraryOverhead, r.DaemonWork = &g, &l, &w
	case modeRestart:
		g := newDist(gap)
		r.Gap = &g
	}
	return r
}

func (r *result) mode(name string) *modeResult {
	for i := range r.Modes {
		if r.Modes[i].Mode == name {
			return &r.Modes[i]
		}
	}
	return nil
}

func (r *result) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}

func (r *result) print(w io.Writer) {
	fmt.Fprintf(w, "handoff-bench  %s  %s, %d CPUs, %s, loopback 127.0.0.1\n", r.Date, r.OS, r.CPUs, r.Go)
	fmt.Fprintf(w, "load: %d clients, %d req/s in all, each on a fresh connection (connect, request, reply, close)\n", r.Clients, r.Rate)
	fmt.Fprintf(w, "%d handoffs or restarts per mode, one every %v\n\n", r.Handoffs, r.Every)

	fmt.Fprintf(w, "%-28s %9s %11s %7s %9s %8s %6s %8s %5s %6s\n",
		"mode", "done", "requests ok", "failed", "failed %", "refused", "reset", "timeout", "bad", "other")
	for _, m := range r.Modes {
		fmt.Fprintf(w, "%-28s %9s %11d %7d %8.3f%%", modeTitles[m.Mode], fmt.Sprintf("%d/%d", m.Committed, m.Restarts),
			m.RequestsOK, m.RequestsFailed, m.FailedPercent)
		for i, k := range failKinds {
			fmt.Fprintf(w, " %*d", []int{8, 6, 8, 5, 6}[i], m.Failures[k])
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintf(w, "\n%-62s %10s %10s %10s\n", "time", "median", "p90", "max")
	row := func(name string, d *dist) {
		if d != nil && d.N > 0 {
			fmt.Fprintf(w, "%-62s %10s %10s %10s\n", name, ms(d.Median), ms(d.P90), ms(d.Max))
		}
	}
	if h := r.mode(modeHandoff); h != nil {
		row("handoff: accept gap (PrepareHandoff sent → Commit sent)", h.Gap)
		row("  library's share (Outcome.LibraryOverhead)", h.LibraryOverhead)
		if bd := h.Breakdown; bd != nil {
			row("    drain hop: → Drained, minus the daemon's Drain", &bd.DrainHop)
			row("    seal hop: → SealComplete, minus Seal (has lock release)", &bd.SealHop)
			row("    begin hop: Begin → Ready, minus lock and open", &bd.BeginHop)
			row("    supervisor between the hops", &bd.BetweenHops)
		}
		row("  daemons' work: drain + seal + open", h.DaemonWork)
		if bd := h.Breakdown; bd != nil {
			row("    of it AcquireDataDirLock in the successor", &bd.Lock)
			row("handoff: gap seen by the daemons (old stops → new accepts)", &bd.DaemonSeenGap)
		}
		row("handoff: whole (spawn, handshake, gap, commit)", &h.Took)
	}
	if m := r.mode(modeRestart); m != nil {
		row("restart: refused window (old listener closed → new bound)", m.Gap)
		row("restart: whole (SIGTERM → new process listening)", &m.Took)
	}
	if m := r.mode(modeReusePort); m != nil {
		row("reuseport: whole (new process listening → old one gone)", &m.Took)
	}
	for _, m := range r.Modes {
		row("request latency, "+modeTitles[m.Mode], &m.Latency)
	}

	s := r.Supervisor
	fmt.Fprintf(w, "\nsupervisor process (embedded supervisor.Supervisor; the daemons are other processes):\n")
	fmt.Fprintf(w, "  after the handoffs: VmRSS %s, VmHWM %s (target: < 15 MiB)\n", mib(s.Peak.RSS), mib(s.Peak.HWM))
	fmt.Fprintf(w, "  idle for %v after the load: CPU %v (%s of one CPU), %d context switches; serving daemon: CPU %v, %d context switches\n",
		s.Idle, s.CPU, share(s.CPU, s.Idle), s.Wakeups, s.DaemonCPU, s.DaemonWakeups)
	fmt.Fprintf(w, "  (CPU time is utime+stime from /proc/<pid>/stat, in steps of %v)\n", time.Second/userHZ)

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
	r.printRatios(w)
}

// printRatios compares the baselines with the library.
func (r *result) printRatios(w io.Writer) {
	h, rs, rp := r.mode(modeHandoff), r.mode(modeRestart), r.mode(modeReusePort)
	if h == nil || rs == nil || rp == nil {
		return
	}
	fmt.Fprintf(w, "\nratios (medians):\n")
	fmt.Fprintf(w, "  failed requests per 10,000: handoff %.1f, restart %.1f, reuseport %.1f\n",
		100*h.FailedPercent, 100*rs.FailedPercent, 100*rp.FailedPercent)
	ratio := func(what string, a, b time.Duration, note string) {
		if b > 0 {
			fmt.Fprintf(w, "  %s: %.2f×%s\n", what, float64(a)/float64(b), note)
		}
	}
	if h.Gap != nil && rs.Gap != nil {
		ratio("handoff accept gap / restart refused window", h.Gap.Median, rs.Gap.Median,
			" (in the gap connections wait in the accept queue; in the window they are refused)")
	}
	if h.Gap != nil && h.LibraryOverhead != nil {
		ratio("library's share / accept gap", h.LibraryOverhead.Median, h.Gap.Median, "")
		ratio("library's share / 1 ms target", h.LibraryOverhead.Median, time.Millisecond, "")
	}
	ratio("whole handoff / whole restart", h.Took.Median, rs.Took.Median, " (spawn and handshake come before the gap)")
	if r.Supervisor.Peak.HWM > 0 {
		fmt.Fprintf(w, "  supervisor VmHWM / 15 MiB target: %.2f×\n", float64(r.Supervisor.Peak.HWM)/(15<<20))
	}
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}

func share(part, whole time.Duration) string {
	if whole <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f%%", 100*float64(part)/float64(whole))
}

func mib(b int64) string {
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}
