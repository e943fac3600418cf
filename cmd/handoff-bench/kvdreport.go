package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// kvdResult is a whole kvd-mode run; its JSON form is the -kvd -json output.
type kvdResult struct {
	Date string `json:"date"`
	CPUs int    `json:"cpus"`
	OS   string `json:"os"`
	Go   string `json:"go"`
	// KVD is the revision examples/kvd was built from.
	KVD        string        `json:"kvd"`
	Handoffs   int           `json:"handoffs"` // per size, and as many restarts
	Every      time.Duration `json:"every_ns"` // rest before each handoff or restart
	ValueSize  int           `json:"value_size"`
	ProbeEvery time.Duration `json:"probe_every_ns"`
	WriteRate  int           `json:"write_rate"` // PUTs per second
	Sizes      []sizeResult  `json:"sizes"`
}

// sizeResult is one data size: the handoffs, the restarts, and how they
// compare.
type sizeResult struct {
	Keys      int           `json:"keys"`
	ValueSize int           `json:"value_size"`
	DiskBytes int64         `json:"disk_bytes"` // the data directory after population
	Populate  time.Duration `json:"populate_ns"`
	Handoff   kvdModeResult `json:"handoff"`
	Restart   kvdModeResult `json:"restart"`
	// Ratios of medians: the accept gap and the probe pause at this size
	// to those at the smallest size; the restart to the accept gap and to
	// the handoff's probe pause at this size.
	GapVsSmallest    float64 `json:"gap_vs_smallest"`
	PauseVsSmallest  float64 `json:"pause_vs_smallest"`
	RestartVsGap     float64 `json:"restart_vs_gap"`
	RestartVsPause   float64 `json:"restart_vs_pause"`
	HandoffFailed    int64   `json:"handoff_failed_requests"` // probes and writes
	HandoffLostWrite int     `json:"handoff_lost_writes"`     // live or on disk
}

// kvdModeResult is one mode at one size.
type kvdModeResult struct {
	Attempts int `json:"attempts"`
	Done     int `json:"done"` // committed handoffs, or restarts
	// AbortReasons of handoffs that did not commit.
	AbortReasons []string `json:"abort_reasons,omitempty"`
	// ColdStart: the first start, until kvd serves (handoff: the
	// supervisor process's start included).
	ColdStart time.Duration `json:"cold_start_ns"`

	// Handoff only, from supervisor.Outcome.Phases of committed handoffs.
	AcceptGap       *dist `json:"accept_gap,omitempty"`
	WarmUp          *dist `json:"warm_up,omitempty"`
	Drain           *dist `json:"drain,omitempty"`
	Seal            *dist `json:"seal,omitempty"`
	BeginToReady    *dist `json:"begin_to_ready,omitempty"`
	LibraryOverhead *dist `json:"library_overhead,omitempty"`
	Total           *dist `json:"total,omitempty"`

	// StopToHealthy (restart only): SIGTERM sent to the new process's
	// first 200 on /healthz.
	StopToHealthy *dist `json:"stop_to_healthy,omitempty"`

	// Pause: around each handoff or restart, the longest time between two
	// successful probes. IdlePause: the same in the middle of each rest
	// between them, the machine's own noise.
	Pause     dist `json:"probe_pause"`
	IdlePause dist `json:"idle_probe_pause"`
	// GapPause (handoff only): the longest time without a successful
	// probe that overlaps the accept gap, the pause the gap itself caused.
	GapPause *dist `json:"gap_probe_pause,omitempty"`
	// Aborts (handoff only): the planned rollbacks after the handoffs.
	Aborts []abortRecord `json:"aborts,omitempty"`
	// Ops are the handoffs or restarts one by one.
	Ops    []opRecord `json:"ops"`
	Probes reqCounts  `json:"probes"`
	Writes reqCounts  `json:"writes"`
	Acked  int        `json:"writes_acked"`
	// LostLive: acknowledged writes the serving kvd did not return after
	// the last handoff or restart.
	LostLive []string  `json:"lost_live,omitempty"`
	Disk     diskCheck `json:"disk"`

	pauses []pause // around each op, in order
}

// opRecord is one handoff or restart.
type opRecord struct {
	Took time.Duration `json:"took_ns"` // PerformHandoff, or SIGTERM to healthy
	// Pause: the longest time without a successful probe around it, and
	// when it began from the handoff's or restart's start.
	Pause     time.Duration `json:"pause_ns"`
	PauseFrom time.Duration `json:"pause_from_ns"`
	// GapPause: the longest time without a successful probe that
	// overlaps the accept gap.
	GapPause  time.Duration `json:"gap_pause_ns,omitempty"`
	Committed bool          `json:"committed,omitempty"`
	AcceptGap time.Duration `json:"accept_gap_ns,omitempty"`
	WarmUp    time.Duration `json:"warm_up_ns,omitempty"`
	// GapFrom: when the accept gap began, from the handoff's start (the
	// phases before it, as the supervisor measured them).
	GapFrom time.Duration `json:"gap_from_ns,omitempty"`
}

// abortRecord is one planned abort: a successor that fails in its
// warm-up, or after Begin holding the lock; the incumbent must serve on.
type abortRecord struct {
	Kind       string        `json:"kind"`
	RolledBack bool          `json:"rolled_back"` // with the same daemon serving
	Reason     string        `json:"reason"`
	AcceptGap  time.Duration `json:"accept_gap_ns"` // 0 when the incumbent was never drained
}

// setHandoffs sets the handoff figures; call it after setLoad. inGap are
// the pauses that overlap each accept gap.
func (m *kvdModeResult) setHandoffs(outcomes []supOutcome, inGap []pause) {
	m.Attempts = len(outcomes)
	var gap, warm, drain, seal, begin, lib, total, gapPause []time.Duration
	for i, o := range outcomes {
		p := o.Phases
		op := opRecord{
			Took: p.Total, Committed: o.Committed, AcceptGap: p.AcceptGap, WarmUp: p.WarmUp,
			GapFrom: p.Spawn + p.IncumbentHello + p.WarmUp,
		}
		if i < len(m.pauses) {
			op.Pause, op.PauseFrom = m.pauses[i].Len, m.pauses[i].From
		}
		if o.Committed && i < len(inGap) {
			op.GapPause = inGap[i].Len
			gapPause = append(gapPause, op.GapPause)
		}
		m.Ops = append(m.Ops, op)
		if !o.Committed {
			m.AbortReasons = append(m.AbortReasons, o.AbortReason)
			continue
		}
		m.Done++
		gap, warm, drain = append(gap, p.AcceptGap), append(warm, p.WarmUp), append(drain, p.Drain)
		seal, begin = append(seal, p.Seal), append(begin, p.BeginToReady)
		lib, total = append(lib, p.LibraryOverhead), append(total, p.Total)
	}
	d := func(ds []time.Duration) *dist { x := newDist(ds); return &x }
	m.AcceptGap, m.WarmUp, m.Drain, m.Seal = d(gap), d(warm), d(drain), d(seal)
	m.BeginToReady, m.LibraryOverhead, m.Total, m.GapPause = d(begin), d(lib), d(total), d(gapPause)
}

// setRestarts sets the restart figures; call it after setLoad.
func (m *kvdModeResult) setRestarts(took []time.Duration) {
	m.Attempts, m.Done = len(took), len(took)
	d := newDist(took)
	m.StopToHealthy = &d
	for i, t := range took {
		op := opRecord{Took: t}
		if i < len(m.pauses) {
			op.Pause, op.PauseFrom = m.pauses[i].Len, m.pauses[i].From
		}
		m.Ops = append(m.Ops, op)
	}
}

// setLoad sets what the load saw; windows are the handoffs or restarts.
func (m *kvdModeResult) setLoad(probes, writes reqCounts, windows [][2]time.Time, around, idle []pause, acked int) {
	probes.countInOps(windows)
	writes.countInOps(windows)
	m.Probes, m.Writes, m.Acked, m.pauses = probes, writes, acked, around
	lens := func(ps []pause) []time.Duration {
		var ds []time.Duration
		for _, p := range ps {
			ds = append(ds, p.Len)
		}
		return ds
	}
	m.Pause, m.IdlePause = newDist(lens(around)), newDist(lens(idle))
}

// failed counts failed probes and writes.
func (m *kvdModeResult) failed() int64 { return m.Probes.Failed + m.Writes.Failed }

// lost counts acknowledged writes missing live or on disk.
func (m *kvdModeResult) lost() int { return len(m.LostLive) + len(m.Disk.Lost) }

func (r *kvdResult) setRatios() {
	if len(r.Sizes) == 0 {
		return
	}
	first := r.Sizes[0].Handoff
	for i := range r.Sizes {
		s := &r.Sizes[i]
		h, rs := s.Handoff, s.Restart
		s.GapVsSmallest = ratio(h.AcceptGap.Median, first.AcceptGap.Median)
		s.PauseVsSmallest = ratio(h.Pause.Median, first.Pause.Median)
		s.RestartVsGap = ratio(rs.StopToHealthy.Median, h.AcceptGap.Median)
		s.RestartVsPause = ratio(rs.StopToHealthy.Median, h.Pause.Median)
		s.HandoffFailed, s.HandoffLostWrite = h.failed(), h.lost()
	}
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func (r *kvdResult) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}

// msShort formats d in milliseconds with a precision that suits it.
func msShort(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.0f", v)
	case v >= 100:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// p50p99 formats a distribution's median and p99 as "p50/p99".
func p50p99(d *dist) string {
	if d == nil || d.N == 0 {
		return "-"
	}
	return msShort(d.Median) + "/" + msShort(d.P99)
}

func med(d *dist) string {
	if d == nil || d.N == 0 {
		return "-"
	}
	return msShort(d.Median)
}

// times formats a ratio.
func times(r float64) string {
	if r >= 10 {
		return fmt.Sprintf("%.0f×", r)
	}
	return fmt.Sprintf("%.2f×", r)
}

func keysLabel(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

func (r *kvdResult) print(w io.Writer) {
	fmt.Fprintf(w, "handoff-bench -kvd  %s  %s, %d CPUs, %s, loopback 127.0.0.1\n", r.Date, r.OS, r.CPUs, r.Go)
	fmt.Fprintf(w, "examples/kvd built from %s\n", r.KVD)
	fmt.Fprintf(w, "per size: a fresh data directory of N keys of %d bytes; %d handoffs (embedded supervisor.Supervisor), then %d restarts\n", r.ValueSize, r.Handoffs, r.Handoffs)
	fmt.Fprintf(w, "(SIGTERM, start again on the same data), %v of rest before each; load: GET /healthz on a fresh connection every %v, %d PUT/s\n", r.Every, r.ProbeEvery, r.WriteRate)
	fmt.Fprintf(w, "times in ms, p50/p99 or median; pause: the longest time without a successful probe around each handoff or restart\n")
	fmt.Fprintf(w, "(in gap: the one that overlaps the accept gap; idle: in the middle of the rests between handoffs, the machine's own noise)\n\n")

	cols := []struct {
		head string
		val  func(s *sizeResult) string
	}{
		{"keys", func(s *sizeResult) string { return keysLabel(s.Keys) }},
		{"MiB", func(s *sizeResult) string { return fmt.Sprintf("%.0f", float64(s.DiskBytes)/(1<<20)) }},
		{"gap", func(s *sizeResult) string { return p50p99(s.Handoff.AcceptGap) }},
		{"drain", func(s *sizeResult) string { return med(s.Handoff.Drain) }},
		{"seal", func(s *sizeResult) string { return med(s.Handoff.Seal) }},
		{"begin→ready", func(s *sizeResult) string { return med(s.Handoff.BeginToReady) }},
		{"library", func(s *sizeResult) string { return med(s.Handoff.LibraryOverhead) }},
		{"warm-up", func(s *sizeResult) string { return med(s.Handoff.WarmUp) }},
		{"pause", func(s *sizeResult) string { return p50p99(&s.Handoff.Pause) }},
		{"in gap", func(s *sizeResult) string { return p50p99(s.Handoff.GapPause) }},
		{"idle", func(s *sizeResult) string { return p50p99(&s.Handoff.IdlePause) }},
		{"|", func(*sizeResult) string { return "|" }},
		{"restart", func(s *sizeResult) string { return p50p99(s.Restart.StopToHealthy) }},
		{"pause", func(s *sizeResult) string { return p50p99(&s.Restart.Pause) }},
		{"|", func(*sizeResult) string { return "|" }},
		{"gap/gap₀", func(s *sizeResult) string { return times(s.GapVsSmallest) }},
		{"restart/gap", func(s *sizeResult) string { return times(s.RestartVsGap) }},
		{"restart/pause", func(s *sizeResult) string { return times(s.RestartVsPause) }},
	}
	cells := [][]string{make([]string, len(cols))}
	for i, c := range cols {
		cells[0][i] = c.head
	}
	for i := range r.Sizes {
		row := make([]string, len(cols))
		for j, c := range cols {
			row[j] = c.val(&r.Sizes[i])
		}
		cells = append(cells, row)
	}
	writeTable(w, cells,
		span{2, 10, "handoff: accept gap, its phases (Outcome.Phases), probe pauses"},
		span{12, 13, "stop-then-start"},
		span{15, 17, "ratios of medians"})

	fmt.Fprintf(w, "\nrequests and writes (failed: refused, reset, timed out or not 200; in ops: of them, in flight during a handoff or restart;\n")
	fmt.Fprintf(w, "lost: acknowledged, then missing live or on disk; cold start: the first start until kvd serves)\n")
	cells = [][]string{{"keys", "mode", "done", "probes ok", "failed", "in ops", "skipped", "PUTs acked", "failed", "in ops", "lost live", "lost disk", "populated bad", "cold start"}}
	for _, s := range r.Sizes {
		for _, m := range []struct {
			name string
			r    kvdModeResult
		}{{"handoff", s.Handoff}, {"restart", s.Restart}} {
			cells = append(cells, []string{
				keysLabel(s.Keys), m.name, fmt.Sprintf("%d/%d", m.r.Done, m.r.Attempts),
				fmt.Sprint(m.r.Probes.OK), fmt.Sprint(m.r.Probes.Failed), fmt.Sprint(m.r.Probes.FailedInOps), fmt.Sprint(m.r.Probes.Skipped),
				fmt.Sprint(m.r.Acked), fmt.Sprint(m.r.Writes.Failed), fmt.Sprint(m.r.Writes.FailedInOps),
				fmt.Sprint(len(m.r.LostLive)), fmt.Sprint(len(m.r.Disk.Lost)), fmt.Sprint(m.r.Disk.PopulatedBad),
				msShort(m.r.ColdStart),
			})
		}
	}
	writeTable(w, cells)
	for _, s := range r.Sizes {
		for _, a := range s.Handoff.Aborts {
			verdict := "rolled back, the incumbent serving on"
			if !a.RolledBack {
				verdict = "NOT rolled back as planned"
			}
			fmt.Fprintf(w, "%s keys: planned %s: %s (accept gap %s): %s\n", keysLabel(s.Keys), a.Kind, verdict, msShort(a.AcceptGap), a.Reason)
		}
		for _, reason := range s.Handoff.AbortReasons {
			fmt.Fprintf(w, "%s keys: handoff rolled back: %s\n", keysLabel(s.Keys), reason)
		}
		for _, e := range s.Handoff.Probes.Examples {
			fmt.Fprintf(w, "%s keys: handoff: failed probe: %s\n", keysLabel(s.Keys), e)
		}
		for _, e := range s.Handoff.Writes.Examples {
			fmt.Fprintf(w, "%s keys: handoff: failed write: %s\n", keysLabel(s.Keys), e)
		}
	}
}

// span labels columns from..to (inclusive) above a table's head.
type span struct {
	from, to int
	label    string
}

// writeTable prints cells in columns, the first one left-aligned and the
// others right-aligned, two spaces apart, under the spans' labels.
func writeTable(w io.Writer, cells [][]string, spans ...span) {
	widths := make([]int, len(cells[0]))
	for _, row := range cells {
		for i, c := range row {
			widths[i] = max(widths[i], len([]rune(c)))
		}
	}
	if len(spans) > 0 {
		// Column i starts at start[i]; a label starts with its first column.
		start := make([]int, len(widths)+1)
		for i, wd := range widths {
			start[i+1] = start[i] + wd + 2
		}
		var line []rune
		for _, sp := range spans {
			at := start[sp.from]
			if sp.from > 0 {
				at += 2
			}
			for len(line) < at {
				line = append(line, ' ')
			}
			line = append(line, []rune(sp.label)...)
		}
		fmt.Fprintln(w, string(line))
	}
	for _, row := range cells {
		var b strings.Builder
		for i, c := range row {
			pad := strings.Repeat(" ", widths[i]-len([]rune(c)))
			if i == 0 {
				b.WriteString(c + pad)
			} else {
				b.WriteString("  " + pad + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}
