package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/handoff-go/handoff/supervisor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const metricsNamespace = "handoff"

// Outcome label values of handoff_handoffs_total and handoff_duration_seconds.
const (
	outcomeCommitted  = "committed"
	outcomeRolledBack = "rolled_back"
)

// metrics are the supervisor's Prometheus metrics, in a registry of its
// own (never the global one). The help text (usage.go) lists them.
type metrics struct {
	reg          *prometheus.Registry
	handoffs     *prometheus.CounterVec
	rollbacks    prometheus.Counter
	sealFailures prometheus.Counter
	restarts     prometheus.Counter
	startFails   prometheus.Counter
	inProgress   prometheus.Gauge
	duration     *prometheus.HistogramVec
	drain        prometheus.Histogram
	seal         prometheus.Histogram
	beginToReady prometheus.Histogram
	warmUp       prometheus.Histogram
	acceptGap    prometheus.Histogram
}

// Buckets: a handoff takes from milliseconds (an idle daemon) to a minute
// (a long drain); the accept gap should stay in the millisecond range.
var (
	phaseBuckets = prometheus.ExponentialBucketsRange(0.001, 120, 16)
	gapBuckets   = prometheus.ExponentialBucketsRange(0.0001, 30, 16)
)

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		handoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "handoffs_total",
			Help: "Handoffs finished, by outcome (committed or rolled_back).",
		}, []string{"outcome"}),
		rollbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "rollbacks_total",
			Help: "Handoffs that did not commit and were rolled back to the incumbent.",
		}),
		sealFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "seal_failures_total",
			Help: "Handoffs rolled back because the incumbent failed to seal its state.",
		}),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "daemon_restarts_total",
			Help: "Cold starts of the known-good binary after the daemon exited outside a handoff.",
		}),
		startFails: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: "daemon_start_failures_total",
			Help: "Starts of the known-good binary (after the daemon exited) that failed; each is retried with backoff.",
		}),
		inProgress: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: metricsNamespace, Name: "in_progress",
			Help: "1 while a handoff runs, else 0.",
		}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "duration_seconds",
			Help: "Duration of whole handoffs, by outcome.", Buckets: phaseBuckets,
		}, []string{"outcome"}),
		drain: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "drain_duration_seconds",
			Help: "Time the incumbent took to drain (PrepareHandoff to Drained).", Buckets: phaseBuckets,
		}),
		seal: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "seal_duration_seconds",
			Help: "Time the incumbent took to seal (SealRequest to SealComplete).", Buckets: phaseBuckets,
		}),
		beginToReady: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "begin_to_ready_seconds",
			Help: "Time the successor took from Begin to Ready.", Buckets: phaseBuckets,
		}),
		warmUp: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "warm_up_seconds",
			Help: "Time the successor prepared before the incumbent was asked to drain (its Hello acknowledged to ReadyToBegin).", Buckets: phaseBuckets,
		}),
		acceptGap: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "accept_gap_seconds",
			Help: "Time nobody accepted connections during a committed handoff (they waited in the kernel's queue).", Buckets: gapBuckets,
		}),
	}
	m.reg.MustRegister(m.own()...)
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// Both outcomes exist from the start, so rate() works before the first
	// rollback.
	m.handoffs.WithLabelValues(outcomeCommitted)
	m.handoffs.WithLabelValues(outcomeRolledBack)
	return m
}

// own returns the supervisor's own collectors (the handoff_ metrics).
func (m *metrics) own() []prometheus.Collector {
	return []prometheus.Collector{m.handoffs, m.rollbacks, m.sealFailures, m.restarts, m.startFails, m.inProgress,
		m.duration, m.drain, m.seal, m.beginToReady, m.warmUp, m.acceptGap}
}

// onEvent records handoffs from the Supervisor's events.
func (m *metrics) onEvent(e supervisor.Event) {
	switch e.Kind {
	case supervisor.EventHandoffStarted:
		m.inProgress.Set(1)
	case supervisor.EventHandoffFinished:
		m.inProgress.Set(0)
		if e.Outcome != nil {
			m.observe(*e.Outcome)
		}
	}
}

// observe records one finished handoff. Phases that did not run (zero
// duration) are not observed.
func (m *metrics) observe(o supervisor.Outcome) {
	outcome := outcomeCommitted
	if !o.Committed {
		outcome = outcomeRolledBack
		m.rollbacks.Inc()
		if isSealFailure(o) {
			m.sealFailures.Inc()
		}
	}
	m.handoffs.WithLabelValues(outcome).Inc()
	m.duration.WithLabelValues(outcome).Observe(o.Phases.Total.Seconds())
	for _, p := range []struct {
		h prometheus.Histogram
		d time.Duration
	}{{m.warmUp, o.Phases.WarmUp}, {m.drain, o.Phases.Drain}, {m.seal, o.Phases.Seal}, {m.beginToReady, o.Phases.BeginToReady}} {
		if p.d > 0 {
			p.h.Observe(p.d.Seconds())
		}
	}
	if o.Committed && o.Phases.AcceptGap > 0 {
		m.acceptGap.Observe(o.Phases.AcceptGap.Seconds())
	}
}

// isSealFailure tells whether a handoff failed because the incumbent's
// seal failed.
func isSealFailure(o supervisor.Outcome) bool {
	return errors.Is(o.Err, supervisor.ErrSealFailed)
}

// metricsServer serves /metrics on a listener it can pause without
// closing (for a re-exec, which passes the listener on).
type metricsServer struct {
	ln      *net.TCPListener
	handler http.Handler
	log     *slog.Logger
	srv     *http.Server
	done    chan error // Serve's result
}

func newMetricsServer(ln *net.TCPListener, m *metrics, log *slog.Logger) *metricsServer {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorLog: slogErrorLog{log}}))
	return &metricsServer{ln: ln, handler: mux, log: log}
}

// start serves until pause or close.
func (s *metricsServer) start() {
	s.ln.SetDeadline(time.Time{})
	s.srv = &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	s.done = make(chan error, 1)
	srv, done := s.srv, s.done
	go func() { done <- srv.Serve(keepOpenListener{s.ln}) }()
}

// pause stops serving and waits (within ctx) for requests in flight; the
// listener stays open and connections queue in the kernel meanwhile.
func (s *metricsServer) pause(ctx context.Context) {
	if s.srv == nil {
		return
	}
	if err := s.srv.Shutdown(ctx); err != nil {
		s.log.Warn("metrics server: requests still running at shutdown", "err", err)
		s.srv.Close()
	}
	if err := <-s.done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Warn("metrics server stopped", "err", err)
	}
	s.srv = nil
}

// close stops serving and closes the listener.
func (s *metricsServer) close(ctx context.Context) error {
	s.pause(ctx)
	return s.ln.Close()
}

// keepOpenListener makes http.Server's Close of the listener stop Accept
// without closing the socket.
type keepOpenListener struct{ *net.TCPListener }

func (l keepOpenListener) Close() error { return l.SetDeadline(time.Unix(1, 0)) }

// slogErrorLog adapts a slog.Logger to promhttp's Logger.
type slogErrorLog struct{ log *slog.Logger }

func (l slogErrorLog) Println(v ...any) { l.log.Error("metrics: " + fmt.Sprint(v...)) }
