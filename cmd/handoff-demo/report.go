package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

type report struct {
	samples  []sample
	handoffs []handoffRecord
	ok, fail int
	errs     map[string]int
	checked  int
	lost     []string
	elapsed  time.Duration
	steady   []time.Duration
	during   []time.Duration
}

func newReport(l *loader, recs []handoffRecord, checked int, lost []string, elapsed time.Duration) *report {
	r := &report{samples: l.samples, handoffs: recs, checked: checked, lost: lost, elapsed: elapsed, errs: map[string]int{}}
	for _, s := range l.samples {
		if !s.ok {
			r.fail++
			r.errs[s.err]++
			continue
		}
		r.ok++
		if r.inHandoff(s) {
			r.during = append(r.during, s.latency)
		} else {
			r.steady = append(r.steady, s.latency)
		}
	}
	return r
}

// inHandoff reports whether a request overlapped a handoff window.
func (r *report) inHandoff(s sample) bool {
	for _, h := range r.handoffs {
		if s.start < h.end && s.start+s.latency > h.start {
			return true
		}
	}
	return false
}

func (r *report) unexpected() []handoffRecord {
	var out []handoffRecord
	for _, h := range r.handoffs {
		if h.res.committed != h.expectOK {
			out = append(out, h)
		}
	}
	return out
}

func (r *report) failed() bool {
	return r.fail > 0 || len(r.lost) > 0 || len(r.unexpected()) > 0
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
	committed, rolled := 0, 0
	for _, h := range r.handoffs {
		if h.res.committed {
			committed++
		} else {
			rolled++
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "per handoff (gap: the supervisor's accept gap; client max: slowest request overlapping it)")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  #\tto\toutcome\taccept gap\tlibrary share\tclient max\tnote")
	for _, h := range r.handoffs {
		outcome := "committed"
		if !h.res.committed {
			outcome = "rolled back"
		}
		var worst time.Duration
		for _, s := range r.samples {
			if s.ok && s.start < h.end && s.start+s.latency > h.start {
				worst = max(worst, s.latency)
			}
		}
		note := ""
		if h.res.committed != h.expectOK {
			note = "UNEXPECTED "
		}
		if !h.res.committed {
			note += h.res.reason
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\n", h.n, h.to, outcome, field(h.res, "accept_gap"), field(h.res, "library_overhead"), ms(worst), note)
	}
	tw.Flush()

	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  handoffs\tcommitted %d, rolled back %d (expected %d and 1)\n", committed, rolled, len(r.handoffs)-1)
	fmt.Fprintf(tw, "  requests\tok %d, failed %d\n", r.ok, r.fail)
	fmt.Fprintf(tw, "  acknowledged writes\tchecked %d, lost %d\n", r.checked, len(r.lost))
	fmt.Fprintf(tw, "  latency, steady\tp50 %s\tp99 %s\tmax %s\t(%d requests)\n", ms(pct(r.steady, .5)), ms(pct(r.steady, .99)), ms(pct(r.steady, 1)), len(r.steady))
	fmt.Fprintf(tw, "  latency, during handoffs\tp50 %s\tp99 %s\tmax %s\t(%d requests)\n", ms(pct(r.during, .5)), ms(pct(r.during, .99)), ms(pct(r.during, 1)), len(r.during))
	fmt.Fprintf(tw, "  wall time\t%.1fs\n", r.elapsed.Seconds())
	tw.Flush()
	if r.fail > 0 {
		fmt.Fprintln(w, "\nfailed requests by error:")
		for e, n := range r.errs {
			fmt.Fprintf(w, "  %5d  %s\n", n, e)
		}
	}
	if len(r.lost) > 0 {
		fmt.Fprintf(w, "\nlost writes (first 10): %s\n", strings.Join(r.lost[:min(10, len(r.lost))], ", "))
	}
	verdict := "PASS: no request failed and every acknowledged write survived"
	if r.failed() {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "\n%s\n", verdict)
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
