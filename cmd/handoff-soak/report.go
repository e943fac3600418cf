package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// minHandoffsForDrift: below this many handoffs the drift is reported
// but not judged (a few samples say nothing about a trend).
const minHandoffsForDrift = 50

// Drift thresholds: a series drifts when both the fitted rise over the
// handoffs after the first 10% and the median at rest over the last 10%
// minus the median from 10% to 20% reach them.
const (
	fdDriftLimit        = 1
	goroutineDriftLimit = 1
	rssDriftLimit       = 1 << 20
	// zombieLifeLimit: a zombie seen for this long was not reaped.
	zombieLifeLimit = time.Second
)

// report is everything a soak found.
type report struct {
	Date     string   `json:"date"`
	Machine  machine  `json:"machine"`
	Command  string   `json:"command"`
	Source   source   `json:"source"`
	Settings settings `json:"settings"`
	WorkDir  string   `json:"work_dir,omitempty"`

	Handoffs   handoffSummary `json:"handoffs"`
	FinalPhase string         `json:"final_phase"`
	FinalBuild string         `json:"final_build_id"`
	Load       loadReport     `json:"load"`
	Writes     struct {
		Acked int       `json:"acked"`
		Live  liveCheck `json:"live"`
		Disk  diskCheck `json:"disk"`
	} `json:"writes"`

	Supervisor struct {
		FDs        series `json:"fds"`
		RSS        series `json:"rss_bytes"`
		Goroutines series `json:"goroutines"`
	} `json:"supervisor"`
	Daemon struct {
		FDs series `json:"fds"`
		RSS series `json:"rss_bytes"`
	} `json:"daemon"`
	Zombies zombieSummary `json:"zombies"`
	KVD     kvdSummary    `json:"kvd_processes"`
	Log     logCounts     `json:"log"`

	Samples      int      `json:"samples"`
	RestSamples  int      `json:"rest_samples"`
	LoadSeconds  float64  `json:"load_seconds"`
	TotalSeconds float64  `json:"total_seconds"`
	Problems     []string `json:"problems"`
}

type machine struct {
	CPUs      int    `json:"cpus"`
	CPU       string `json:"cpu"`
	MemoryMiB int64  `json:"memory_mib"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	// LoadAvg is /proc/loadavg's 1-minute figure at the start and at the
	// end: the machine is shared.
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
}

type settings struct {
	Handoffs       int     `json:"handoffs"`
	Every          string  `json:"every"`
	Sample         string  `json:"sample"`
	FreshRate      float64 `json:"fresh_rate"`
	FreshWorkers   int     `json:"fresh_workers"`
	KeepAlive      int     `json:"keepalive"`
	KeepAliveRate  float64 `json:"keepalive_rate"`
	IdempotentPuts bool    `json:"idempotent_puts"`
}

type handoffSummary struct {
	Planned    int `json:"planned"`
	Performed  int `json:"performed"`
	Committed  int `json:"committed"`
	RolledBack int `json:"rolled_back"`
	// Errors: the trigger exchange failed or answered "err:".
	Errors        int            `json:"errors"`
	WrongBuild    int            `json:"wrong_build"`
	AbortReasons  map[string]int `json:"abort_reasons,omitempty"`
	ErrorExamples []string       `json:"error_examples,omitempty"`
	// From the supervisor's /metrics at the end.
	MetricCommitted  int `json:"metric_committed"`
	MetricRolledBack int `json:"metric_rolled_back"`
	Restarts         int `json:"restarts"`
	StartFailures    int `json:"start_failures"`
	// StatusErrors: status commands that failed; PIDChanges: the
	// incumbent's pid changed between two handoffs (a restart).
	StatusErrors      int  `json:"status_errors"`
	PIDChanges        int  `json:"pid_changes"`
	RoundTripMS       dist `json:"round_trip_ms"`
	AcceptGapMS       dist `json:"accept_gap_ms"`
	LibraryOverheadMS dist `json:"library_overhead_ms"`
}

// series sums up one sampled quantity: start, end and the drift from the
// samples at rest (before each handoff, and after the last), min and max
// from every sample.
type series struct {
	Start float64 `json:"start"`
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
	End   float64 `json:"end"`
	// After10 is the value at rest after the first 10% of the handoffs;
	// EndMinus10 is End minus it.
	After10    float64 `json:"after_10pct"`
	EndMinus10 float64 `json:"end_minus_after_10pct"`
	// SlopePer100 is the least-squares slope over the samples at rest
	// after the first 10%, per 100 handoffs.
	SlopePer100 float64 `json:"slope_per_100_handoffs"`
	// EarlyMedian is the median at rest over the handoffs from 10% to 20%
	// of the run, LateMedian over the last 10%: single samples at rest
	// catch a goroutine or a descriptor of the last handoff still going.
	EarlyMedian float64 `json:"early_median"`
	LateMedian  float64 `json:"late_median"`
	// Drift: "no", "yes" or "not judged" (too few handoffs).
	Drift string `json:"drift"`
}

type zombieSummary struct {
	// Max: most zombie children of the supervisor in one sample.
	Max         int `json:"max"`
	SamplesWith int `json:"samples_with"`
	Distinct    int `json:"distinct"`
	// LongestSeenMS: the longest time between the first and the last
	// sample that showed the same zombie (0 if seen once).
	LongestSeenMS float64 `json:"longest_seen_ms"`
	AtEnd         int     `json:"at_end"`
}

type kvdSummary struct {
	Max           int   `json:"max"`
	AtRestMin     int   `json:"at_rest_min"`
	AtRestMax     int   `json:"at_rest_max"`
	AtRestOver1   int   `json:"at_rest_over_1"` // samples at rest with more than one alive
	AtEnd         int   `json:"at_end"`
	AfterStop     int   `json:"after_stop"`
	AfterStopPIDs []int `json:"after_stop_pids,omitempty"`
}

func newReport(s *soak) *report {
	o := s.o
	r := &report{
		Date:    s.began.UTC().Format(time.RFC3339),
		Machine: readMachine(),
		Command: commandLine(s.args),
		Source:  s.src,
		Settings: settings{
			Handoffs: o.handoffs, Every: o.every.String(), Sample: o.sample.String(),
			FreshRate: o.freshRate, FreshWorkers: o.freshWorkers, KeepAlive: o.keepAlive,
			KeepAliveRate: o.keepAliveRate, IdempotentPuts: o.idempotentPuts,
		},
		Problems: []string{},
	}
	r.Handoffs.Planned = o.handoffs
	return r
}

func (r *report) problem(format string, a ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, a...))
}

func readMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), LoadAvgStart: loadAvg()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb int64
				fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
				m.MemoryMiB = kb >> 10
			}
		}
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// finish computes the summaries from what the run collected and lists
// the checks that failed.
func (r *report) finish(recs []handoffRecord, all, rest []sample, zombieLife map[int]time.Duration, total time.Duration) {
	r.Machine.LoadAvgEnd = loadAvg()
	r.TotalSeconds = total.Seconds()
	r.Samples, r.RestSamples = len(all), len(rest)
	r.summarizeHandoffs(recs)
	r.Writes.Acked = r.Load.AckedWrites

	n := len(rest) - 1 // handoffs between the first and the last sample at rest
	r.Supervisor.FDs = seriesOf(all, rest, n, fdDriftLimit, func(s sample) float64 { return float64(s.SupFDs) })
	r.Supervisor.RSS = seriesOf(all, rest, n, rssDriftLimit, func(s sample) float64 { return float64(s.SupRSS) })
	r.Supervisor.Goroutines = seriesOf(all, rest, n, goroutineDriftLimit, func(s sample) float64 { return float64(s.Goroutines) })
	// The daemon is a new process after every handoff, holding the
	// load's connections and a growing store: reported, not judged.
	r.Daemon.FDs = seriesOf(all, rest, n, 0, func(s sample) float64 { return float64(s.DaemonFDs) })
	r.Daemon.RSS = seriesOf(all, rest, n, 0, func(s sample) float64 { return float64(s.DaemonRSS) })

	r.KVD.AtRestMin = math.MaxInt
	for _, s := range all {
		r.Zombies.Max = max(r.Zombies.Max, len(s.Zombies))
		if len(s.Zombies) > 0 {
			r.Zombies.SamplesWith++
		}
		r.KVD.Max = max(r.KVD.Max, s.KVD)
	}
	for _, s := range rest {
		if s.KVD < 0 {
			continue
		}
		r.KVD.AtRestMin = min(r.KVD.AtRestMin, s.KVD)
		r.KVD.AtRestMax = max(r.KVD.AtRestMax, s.KVD)
		if s.KVD > 1 {
			r.KVD.AtRestOver1++
		}
	}
	if r.KVD.AtRestMin == math.MaxInt {
		r.KVD.AtRestMin = -1
	}
	if len(rest) > 0 {
		last := rest[len(rest)-1]
		r.KVD.AtEnd, r.Zombies.AtEnd = last.KVD, len(last.Zombies)
	}
	r.Zombies.Distinct = len(zombieLife)
	var longest time.Duration
	for _, d := range zombieLife {
		longest = max(longest, d)
	}
	r.Zombies.LongestSeenMS = msOf(longest)
	r.judge(longest)
}

func (r *report) summarizeHandoffs(recs []handoffRecord) {
	h := &r.Handoffs
	h.AbortReasons = map[string]int{}
	var rt, gap, lib []time.Duration
	for _, rec := range recs {
		h.Performed++
		rt = append(rt, rec.Took)
		switch {
		case rec.Err != "":
			h.Errors++
			if len(h.ErrorExamples) < 5 {
				h.ErrorExamples = append(h.ErrorExamples, fmt.Sprintf("handoff %d: %s", rec.N, rec.Err))
			}
		case rec.Reply.Committed:
			h.Committed++
			gap = append(gap, rec.Reply.AcceptGap)
			lib = append(lib, rec.Reply.LibraryOverhead)
			if rec.Reply.BuildID != rec.Want {
				h.WrongBuild++
			}
		default:
			h.RolledBack++
			h.AbortReasons[rec.Reply.Reason]++
		}
	}
	h.RoundTripMS, h.AcceptGapMS, h.LibraryOverheadMS = distOf(rt), distOf(gap), distOf(lib)
}

// seriesOf sums up the quantity v (negative: not read); limit 0 means
// reported, not judged.
func seriesOf(all, rest []sample, handoffs int, limit float64, v func(sample) float64) series {
	var s series
	first := true
	for _, smp := range all {
		x := v(smp)
		if x < 0 {
			continue
		}
		if first {
			s.Min, s.Max, first = x, x, false
		}
		s.Min, s.Max = math.Min(s.Min, x), math.Max(s.Max, x)
	}
	var xs, ys []float64
	for i, smp := range rest {
		if y := v(smp); y >= 0 {
			xs, ys = append(xs, float64(i)), append(ys, y)
		}
	}
	if len(ys) == 0 {
		s.Drift = "not judged"
		return s
	}
	s.Start, s.End = ys[0], ys[len(ys)-1]
	from := int(math.Ceil(float64(handoffs) / 10))
	k := min(sort.SearchFloat64s(xs, float64(from)), len(ys)-1)
	s.After10 = ys[k]
	s.EndMinus10 = s.End - s.After10
	s.SlopePer100 = slope(xs[k:], ys[k:]) * 100
	early := min(sort.SearchFloat64s(xs, float64(2*from)+0.5), len(ys))
	late := min(sort.SearchFloat64s(xs, float64(handoffs-from)), len(ys)-1)
	s.EarlyMedian = median(ys[k:max(early, k+1)])
	s.LateMedian = median(ys[late:])
	switch {
	case limit == 0 || handoffs < minHandoffsForDrift:
		s.Drift = "not judged"
	case s.LateMedian-s.EarlyMedian >= limit && s.SlopePer100*float64(handoffs-from)/100 >= limit:
		s.Drift = "yes"
	default:
		s.Drift = "no"
	}
	return s
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// slope is the least-squares slope of y over x.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	if n < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

// judge lists the checks that failed.
func (r *report) judge(longestZombie time.Duration) {
	h := r.Handoffs
	if h.Performed < h.Planned {
		r.problem("%d of %d handoffs performed", h.Performed, h.Planned)
	}
	if h.RolledBack > 0 {
		r.problem("%d handoffs rolled back: %v", h.RolledBack, h.AbortReasons)
	}
	if h.Errors > 0 {
		r.problem("%d handoffs failed at the trigger socket: %s", h.Errors, strings.Join(h.ErrorExamples, "; "))
	}
	if h.WrongBuild > 0 {
		r.problem("%d handoffs committed to another build than asked for", h.WrongBuild)
	}
	if h.Restarts > 0 || h.StartFailures > 0 || h.PIDChanges > 0 {
		r.problem("the daemon was restarted outside a handoff: %d restarts, %d failed starts, %d pid changes between handoffs",
			h.Restarts, h.StartFailures, h.PIDChanges)
	}
	if h.StatusErrors > 0 {
		r.problem("%d status commands failed", h.StatusErrors)
	}
	if h.MetricCommitted != h.Committed || h.MetricRolledBack != h.RolledBack {
		r.problem("/metrics counts %d committed and %d rolled back, the trigger replies %d and %d",
			h.MetricCommitted, h.MetricRolledBack, h.Committed, h.RolledBack)
	}
	if r.FinalPhase != "idle" {
		r.problem("the supervisor's phase at the end is %q, not idle", r.FinalPhase)
	}
	if r.Load.Failed > 0 {
		r.problem("%d requests failed", r.Load.Failed)
	}
	w := r.Writes
	switch {
	case w.Acked == 0:
		r.problem("no write was acknowledged: nothing was checked")
	case w.Live.LostN > 0:
		r.problem("%d acknowledged writes lost on the live daemon, e.g. %v", w.Live.LostN, w.Live.Lost)
	case w.Live.Errors > 0 || w.Live.Checked != w.Acked:
		r.problem("%d of %d acknowledged writes could not be read back from the live daemon", w.Acked-w.Live.Checked, w.Acked)
	}
	switch {
	case w.Disk.Error != "":
		r.problem("data directory: %s", w.Disk.Error)
	case w.Disk.LostN > 0:
		r.problem("%d acknowledged writes missing from the data directory, e.g. %v", w.Disk.LostN, w.Disk.Lost)
	}
	for _, c := range []struct {
		name string
		s    series
	}{{"descriptors", r.Supervisor.FDs}, {"RSS (bytes)", r.Supervisor.RSS}, {"goroutines", r.Supervisor.Goroutines}} {
		if c.s.Drift == "yes" {
			r.problem("the supervisor's %s drift: median %g at rest from 10%% to 20%% of the handoffs, %g over the last 10%%, %+.3g per 100 handoffs",
				c.name, c.s.EarlyMedian, c.s.LateMedian, c.s.SlopePer100)
		}
	}
	if longestZombie >= zombieLifeLimit {
		r.problem("a zombie child of the supervisor was seen for %v (not reaped)", longestZombie.Round(time.Millisecond))
	}
	if r.Zombies.AtEnd > 0 {
		r.problem("%d zombie children of the supervisor at the end", r.Zombies.AtEnd)
	}
	if r.KVD.AtEnd != 1 {
		r.problem("%d kvd processes alive at the end, want 1", r.KVD.AtEnd)
	}
	if r.KVD.AfterStop != 0 {
		r.problem("%d kvd processes alive after the supervisor stopped: pids %v", r.KVD.AfterStop, r.KVD.AfterStopPIDs)
	}
}

func (r *report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func (r *report) writeText(w io.Writer) {
	h := r.Handoffs
	fmt.Fprintf(w, "handoff-soak, %s\n", r.Date)
	fmt.Fprintf(w, "  machine:  %d CPUs (%s), %d MiB, Linux %s, %s; load average %s at the start, %s at the end\n",
		r.Machine.CPUs, r.Machine.CPU, r.Machine.MemoryMiB, r.Machine.Kernel, r.Machine.Go, r.Machine.LoadAvgStart, r.Machine.LoadAvgEnd)
	fmt.Fprintf(w, "  command:  %s\n", r.Command)
	fmt.Fprintf(w, "  measured: commit %s (%s)\n", r.Source.Commit, r.Source.Tree)
	fmt.Fprintf(w, "  load:     fresh connections %g req/s over %d workers; %d keep-alive clients at %g req/s each; PUT/GET alternating; %.0f s\n",
		r.Settings.FreshRate, r.Settings.FreshWorkers, r.Settings.KeepAlive, r.Settings.KeepAliveRate, r.LoadSeconds)
	fmt.Fprintln(w)

	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "handoffs\t%d of %d performed: %d committed, %d rolled back, %d errors; %d restarts outside handoffs\n",
		h.Performed, h.Planned, h.Committed, h.RolledBack, h.Errors, h.Restarts)
	fmt.Fprintf(tw, "accept gap\tp50 %s  p99 %s  max %s ms  (library overhead p50 %s  p99 %s ms)\n",
		f3(h.AcceptGapMS.P50), f3(h.AcceptGapMS.P99), f3(h.AcceptGapMS.Max), f3(h.LibraryOverheadMS.P50), f3(h.LibraryOverheadMS.P99))
	fmt.Fprintf(tw, "handoff round trip\tp50 %s  p99 %s  max %s ms\n", f3(h.RoundTripMS.P50), f3(h.RoundTripMS.P99), f3(h.RoundTripMS.Max))
	fmt.Fprintf(tw, "requests\t%d, %d failed\n", r.Load.Total, r.Load.Failed)
	names := make([]string, 0, len(r.Load.Requests))
	for n := range r.Load.Requests {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		o := r.Load.Requests[n]
		line := fmt.Sprintf("  %s\t%d ok, %d failed", n, o.OK, o.Failed)
		if o.Retried > 0 {
			line += fmt.Sprintf(", %d resent by net/http on a new connection", o.Retried)
		}
		if len(o.Failures) > 0 {
			line += fmt.Sprintf(" %v", o.Failures)
		}
		fmt.Fprintln(tw, line)
	}
	fmt.Fprintf(tw, "keep-alive reconnects\t%d (%d clients opened %d connections)\n", r.Load.Reconnects, r.Load.KeepAliveClients, r.Load.KeepAliveDials)
	for _, l := range r.Load.LatencyMS {
		fmt.Fprintf(tw, "  latency %s\tp50 %s  p99 %s  max %s ms\n", l.Op, f3(l.P50), f3(l.P99), f3(l.Max))
	}
	wr := r.Writes
	fmt.Fprintf(tw, "acknowledged writes\t%d; live daemon: %d checked, %d lost, %d unreadable; data dir: %d checked, %d lost (revision %d, %d keys, %d unacknowledged)\n",
		wr.Acked, wr.Live.Checked, wr.Live.LostN, wr.Live.Errors, wr.Disk.Checked, wr.Disk.LostN, wr.Disk.Revision, wr.Disk.Keys, wr.Disk.Unacked)
	fmt.Fprintln(tw, "\tstart\tmax\tend\tafter 10%\tend−10%\tslope/100\tmedian 10-20%\tlast 10%\tdrift")
	row := func(name string, s series, scale float64, unit string) {
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, unit, g(s.Start/scale), g(s.Max/scale), g(s.End/scale),
			g(s.After10/scale), g(s.EndMinus10/scale), g(s.SlopePer100/scale), g(s.EarlyMedian/scale), g(s.LateMedian/scale), s.Drift)
	}
	row("supervisor fds", r.Supervisor.FDs, 1, "")
	row("supervisor RSS", r.Supervisor.RSS, 1<<20, " (MiB)")
	row("supervisor goroutines", r.Supervisor.Goroutines, 1, "")
	row("daemon fds", r.Daemon.FDs, 1, "")
	row("daemon RSS", r.Daemon.RSS, 1<<20, " (MiB)")
	tw.Flush()
	fmt.Fprintf(w, "zombies: max %d in one sample, %d samples with any, %d distinct, longest seen %s ms, %d at the end\n",
		r.Zombies.Max, r.Zombies.SamplesWith, r.Zombies.Distinct, f3(r.Zombies.LongestSeenMS), r.Zombies.AtEnd)
	fmt.Fprintf(w, "kvd processes: max %d; at rest %d..%d (%d of %d samples at rest with more than one); %d at the end, %d after the stop\n",
		r.KVD.Max, r.KVD.AtRestMin, r.KVD.AtRestMax, r.KVD.AtRestOver1, r.RestSamples, r.KVD.AtEnd, r.KVD.AfterStop)
	fmt.Fprintf(w, "log: %d warnings, %d errors (supervisor and daemons)\n", r.Log.Warnings, r.Log.Errors)
	for _, e := range r.Log.Examples {
		fmt.Fprintf(w, "  %s\n", e)
	}
	for _, e := range r.Load.FailureExamples {
		fmt.Fprintf(w, "failed: %s\n", e)
	}
	fmt.Fprintf(w, "samples: %d (%d at rest); total %.1f s\n", r.Samples, r.RestSamples, r.TotalSeconds)
	if r.WorkDir != "" {
		fmt.Fprintf(w, "working directory: %s\n", r.WorkDir)
	}
	if len(r.Problems) == 0 {
		fmt.Fprintln(w, "PASS: every check held")
		return
	}
	fmt.Fprintf(w, "FAIL: %d checks failed\n", len(r.Problems))
	for _, p := range r.Problems {
		fmt.Fprintf(w, "  - %s\n", p)
	}
}

func f3(v float64) string { return fmt.Sprintf("%.3f", v) }

func g(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e9 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}
