package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// handoffRecord is one triggered handoff as the demo saw it.
type handoffRecord struct {
	n          int
	to         string // "v1", "v2", "broken"
	start, end time.Duration
	res        triggerResult
	expectOK   bool
}

func (d *demo) run(ctx context.Context) (*report, error) {
	t0 := time.Now()
	d.say("handoff demo: building kvd v1, v2, a broken kvd and handoff-supervisor into %s", filepath.Join(d.dir, "bin"))
	if err := d.build(ctx); err != nil {
		return nil, err
	}
	buildTime := time.Since(t0)
	d.say("built in %.1fs", buildTime.Seconds())
	if err := d.writeConfig(); err != nil {
		return nil, err
	}
	if err := d.startSupervisor(ctx); err != nil {
		return nil, err
	}
	d.say("supervisor up after %.1fs; kvd v1 serving on %s; load: %d req/s for %v, %d handoffs + 1 to a broken binary",
		time.Since(t0).Seconds(), d.addr, d.o.rate, d.o.duration, d.o.handoffs)

	l := newLoader(d.addr)
	lctx, cancel := context.WithTimeout(ctx, d.o.duration)
	defer cancel()
	loadDone := make(chan struct{})
	go func() { l.run(lctx, d.o.workers, d.o.rate); close(loadDone) }()

	var mu sync.Mutex
	var recs []handoffRecord
	progressDone := make(chan struct{})
	stopProgress := make(chan struct{})
	go func() {
		defer close(progressDone)
		d.progress(l, &mu, &recs, stopProgress)
	}()

	total := d.o.handoffs + 1
	broken := total / 2
	interval := d.o.duration / time.Duration(total+1)
	next := "v2"
	var runErr error
	for i := range total {
		at := time.Until(l.began.Add(time.Duration(i+1) * interval))
		select {
		case <-time.After(at):
		case <-lctx.Done():
		}
		if lctx.Err() != nil {
			runErr = fmt.Errorf("the load ended after %d of %d handoffs; raise -duration", i, total)
			break
		}
		to := next
		if i == broken {
			to = "broken"
		}
		rec := handoffRecord{n: i + 1, to: to, start: time.Since(l.began), expectOK: to != "broken"}
		probing, stopProbe, probeDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
		go func() { l.probe(rec.n, probing, stopProbe); close(probeDone) }()
		<-probing
		res, err := d.handoff(d.bin[to])
		rec.end, rec.res = time.Since(l.began), res
		close(stopProbe)
		<-probeDone
		if err != nil {
			runErr = fmt.Errorf("handoff %d to %s: %w", i+1, to, err)
			break
		}
		mu.Lock()
		recs = append(recs, rec)
		mu.Unlock()
		if to != "broken" && res.committed {
			next = map[string]string{"v1": "v2", "v2": "v1"}[to]
		}
	}
	<-loadDone
	loadTime := time.Since(l.began)
	close(stopProgress)
	<-progressDone
	if runErr != nil {
		return nil, runErr
	}
	rep := newReport(l, recs, d.o.handoffs)
	rep.buildTime, rep.loadTime = buildTime, loadTime

	d.say("load finished; reading back every acknowledged write ...")
	vctx, vcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer vcancel()
	var err error
	if rep.checked, rep.lost, err = l.verify(vctx); err != nil {
		return nil, err
	}
	rep.supErr = d.stopSupervisor()
	if rep.supErr == nil {
		// The daemon drained and sealed on the way out: read the data
		// directory as the next start would, without any daemon running.
		rep.dumpRev, rep.dumpChecked, rep.dumpLost, rep.dumpErr = d.checkDataDir(vctx, l.ackedWrites())
	}
	rep.elapsed = time.Since(t0)
	return rep, nil
}

// progress prints a live status line (rewritten in place on a terminal,
// one line per handoff otherwise) until stop is closed.
func (d *demo) progress(l *loader, mu *sync.Mutex, recs *[]handoffRecord, stop <-chan struct{}) {
	tty := false
	if f, ok := d.stdout.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	shown := 0
	line := func() string {
		mu.Lock()
		defer mu.Unlock()
		committed, rolled := 0, 0
		for _, r := range *recs {
			if r.res.committed {
				committed++
			} else {
				rolled++
			}
		}
		return fmt.Sprintf("  %5.1fs  requests ok %-6d failed %-3d  handoffs committed %d, rolled back %d",
			time.Since(l.began).Seconds(), l.okN.Load(), l.failN.Load(), committed, rolled)
	}
	for {
		select {
		case <-stop:
			if tty {
				fmt.Fprintf(d.stdout, "\r%s\n", line())
			}
			return
		case <-tick.C:
		}
		if tty {
			fmt.Fprintf(d.stdout, "\r%s", line())
			continue
		}
		mu.Lock()
		n := len(*recs)
		mu.Unlock()
		if n > shown {
			shown = n
			fmt.Fprintln(d.stdout, line())
		}
	}
}
