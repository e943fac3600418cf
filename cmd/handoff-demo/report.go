package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

type report struct {
	samples  []sample
	handoffs []handoffRecord
	planned  int // handoffs that should commit; one more should roll back
	ok, fail int
	retried  int
	errs     map[string]int
	steady   []time.Duration
	during   []time.Duration // requests in flight during a handoff
	probed   int             // of them, sent by the probe

	checked int      // acknowledged writes read back from the live daemon
	lost    []string // of them, missing or changed

	supErr      error // the supervisor's exit, if not clean
	dumpErr     error // reading the stopped daemon's data directory
	dumpRev     uint64
	dumpChecked int
	dumpLost    []string

	buildTime, loadTime, elapsed time.Duration
}

func newReport(l *loader, recs []handoffRecord, planned int) *report {
	r := &report{samples: l.samples, handoffs: recs, planned: planned, errs: map[string]int{}}
	for _, s := range l.samples {
		if s.retried {
			r.retried++
		}
		if !s.ok {
			r.fail++
			r.errs[s.err]++
			continue
		}
		r.ok++
		if r.inHandoff(s) {
			r.during = append(r.during, s.latency)
			if s.probe {
				r.probed++
			}
		} else {
			r.steady = append(r.steady, s.latency)
		}
	}
	return r
}

// overlaps reports whether a request was in flight during handoff h, from
// the trigger to the outcome.
func overlaps(s sample, h handoffRecord) bool {
	return s.start < h.end && s.start+s.latency > h.start
}

func (r *report) inHandoff(s sample) bool {
	for _, h := range r.handoffs {
		if overlaps(s, h) {
			return true
		}
	}
	return false
}

func (r *report) outcomes() (committed, rolled int) {
	for _, h := range r.handoffs {
		if h.res.committed {
			committed++
		} else {
			rolled++
		}
	}
	return committed, rolled
}

// problems lists every reason the run failed; none means it passed. A run
// that checked nothing fails too: it proves nothing.
func (r *report) problems() []string {
	var p []string
	committed, rolled := r.outcomes()
	if committed != r.planned || rolled != 1 {
		p = append(p, fmt.Sprintf("%d handoffs committed and %d rolled back, planned %d and 1", committed, rolled, r.planned))
	}
	for _, h := range r.handoffs {
		if h.res.committed != h.expectOK {
			p = append(p, fmt.Sprintf("handoff %d to %s: committed=%t, expected %t", h.n, h.to, h.res.committed, h.expectOK))
		}
	}
	if r.fail > 0 {
		p = append(p, fmt.Sprintf("%d requests failed", r.fail))
	}
	if r.ok == 0 {
		p = append(p, "no request succeeded")
	}
	if r.checked == 0 {
		p = append(p, "no acknowledged write was read back")
	}
	if len(r.lost) > 0 {
		p = append(p, fmt.Sprintf("%d acknowledged writes lost or changed on the live daemon", len(r.lost)))
	}
	if r.supErr != nil {
		p = append(p, r.supErr.Error())
	}
	switch {
	case r.dumpErr != nil:
		p = append(p, "reading the stopped daemon's data directory: "+r.dumpErr.Error())
	case r.supErr == nil && len(r.dumpLost) > 0:
		p = append(p, fmt.Sprintf("%d acknowledged writes lost or changed in the data directory", len(r.dumpLost)))
	}
	return p
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(p * float64(len(s)-1))
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func (r *report) print(w io.Writer) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "per handoff (window: trigger to outcome; accept gap: the supervisor's, measured on commit;")
	fmt.Fprintln(w, "passed: keep-alive connections handed to the new daemon, open and at a request boundary;")
	fmt.Fprintln(w, "requests: in flight during the window, probe included; client max: the slowest of them)")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  #\tto\toutcome\twindow\taccept gap\tlibrary share\tpassed\trequests\tclient max\tnote")
	for _, h := range r.handoffs {
		outcome, gap, share, passed := "committed", field(h.res, "accept_gap"), field(h.res, "library_overhead"), field(h.res, "passed_conns")
		if !h.res.committed {
			// The library measures the accept gap of a commit only; the
			// old daemon serves its connections on.
			outcome, gap, share, passed = "rolled back", "-", "-", "-"
		}
		n, worst := 0, time.Duration(0)
		for _, s := range r.samples {
			if s.ok && overlaps(s, h) {
				n++
				worst = max(worst, s.latency)
			}
		}
		worstS := "-"
		if n > 0 {
			worstS = ms(worst)
		}
		note := ""
		if h.res.committed != h.expectOK {
			note = "UNEXPECTED "
		}
		if !h.res.committed {
			note += h.res.reason
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", h.n, h.to, outcome, ms(h.end-h.start), gap, share, passed, n, worstS, note)
	}
	tw.Flush()

	committed, rolled := r.outcomes()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  handoffs\tcommitted %d, rolled back %d (planned %d and 1)\n", committed, rolled, r.planned)
	fmt.Fprintf(tw, "  requests\tok %d, failed %d\n", r.ok, r.fail)
	fmt.Fprintf(tw, "  during handoffs\t%d requests in flight, %d of them from the probe on fresh connections\n", len(r.during), r.probed)
	fmt.Fprintf(tw, "  client retries\t%d (requests Go's HTTP client resent on a new connection; each counted once)\n", r.retried)
	fmt.Fprintf(tw, "  acknowledged writes\tchecked %d, lost %d (read back from the live daemon)\n", r.checked, len(r.lost))
	switch {
	case r.dumpErr != nil:
		fmt.Fprintf(tw, "  in the data directory\tnot checked: %v\n", r.dumpErr)
	case r.supErr != nil:
		fmt.Fprintf(tw, "  in the data directory\tnot checked: the supervisor did not stop cleanly\n")
	default:
		fmt.Fprintf(tw, "  in the data directory\tchecked %d, lost %d (revision %d, read with kvd --dump after the stop)\n", r.dumpChecked, len(r.dumpLost), r.dumpRev)
	}
	fmt.Fprintf(tw, "  latency, steady\tp50 %s\tp99 %s\tmax %s\t(%d requests)\n", ms(pct(r.steady, .5)), ms(pct(r.steady, .99)), ms(pct(r.steady, 1)), len(r.steady))
	fmt.Fprintf(tw, "  latency, during handoffs\tp50 %s\tp99 %s\tmax %s\t(%d requests)\n", ms(pct(r.during, .5)), ms(pct(r.during, .99)), ms(pct(r.during, 1)), len(r.during))
	fmt.Fprintf(tw, "  wall time\t%.1fs (build %.1fs, load %.1fs)\n", r.elapsed.Seconds(), r.buildTime.Seconds(), r.loadTime.Seconds())
	tw.Flush()
	if r.retried > 0 {
		fmt.Fprintln(w, "\nGo's HTTP client resends a GET, or a PUT with an Idempotency-Key, when the server closed")
		fmt.Fprintln(w, "a reused keep-alive connection before answering; every HTTP client does something like it.")
	}
	if r.fail > 0 {
		fmt.Fprintln(w, "\nfailed requests by error:")
		for _, e := range slices.Sorted(maps.Keys(r.errs)) {
			fmt.Fprintf(w, "  %5d  %s\n", r.errs[e], e)
		}
	}
	if lost := append(slices.Clone(r.lost), r.dumpLost...); len(lost) > 0 {
		fmt.Fprintf(w, "\nlost writes (first 10): %s\n", strings.Join(lost[:min(10, len(lost))], ", "))
	}
	if p := r.problems(); len(p) > 0 {
		fmt.Fprintf(w, "\nFAIL: %s\n", strings.Join(p, "; "))
		return
	}
	fmt.Fprintln(w, "\nPASS: every handoff went as planned, no request failed, every acknowledged write survived")
}

// field returns a duration field of the supervisor's answer, if it sent one.
func field(r triggerResult, k string) string {
	v, ok := r.fields[k]
	if !ok {
		return "-"
	}
	if d, err := time.ParseDuration(v); err == nil {
		return ms(d)
	}
	return v
}
