package invoker

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/onebox-dev/onebox/internal/record"
)

// unknownHandlerLabel stands for every handler name that the config lacks: a
// trigger on trigger/<anything> must not create a label value per name. It
// cannot clash with a handler, whose names start with [a-z0-9].
const unknownHandlerLabel = "_unknown"

// Metrics are the invoker's Prometheus metrics. Observe is the Options.Observer
// that sees every run record the invoker publishes; Attach adds the gauges read
// from the invoker at each scrape (queue depth, running).
//
//	onebox_invoker_runs_total{handler,state}          final records: succeeded, failed, timeout, rejected
//	onebox_invoker_rejected_total{handler,reason}     rejected and failed runs by reason
//	onebox_invoker_run_duration_seconds{handler}      started → finished of runs whose container ran
//	onebox_invoker_start_seconds{handler}             create → running: the cold start
//	onebox_invoker_queue_depth{handler}               triggers waiting in the handler's queue
//	onebox_invoker_running{handler}                   containers running now
//	onebox_invoker_triggers_total{outcome}            received, duplicate, retained, invalid
type Metrics struct {
	runs     *prometheus.CounterVec
	rejected *prometheus.CounterVec
	duration *prometheus.HistogramVec
	start    *prometheus.HistogramVec

	queueDesc, runningDesc, limitDesc, triggersDesc *prometheus.Desc

	mu sync.Mutex
	iv *Invoker
}

// NewMetrics returns the invoker's metrics, not registered anywhere yet.
func NewMetrics() *Metrics {
	const ns, sub = "onebox", "invoker"
	return &Metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "runs_total",
			Help: "Runs that ended, by handler and final state (succeeded, failed, timeout, rejected)."}, []string{"handler", "state"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "rejected_total",
			Help: "Runs rejected or failed, by handler and reason (busy, unknown handler, image missing, wrong platform, oom, non-zero exit…)."}, []string{"handler", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "run_duration_seconds",
			Help:    "Run duration, container started to finished.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}}, []string{"handler"}),
		start: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "start_seconds",
			Help:    "Cold start: container create to running.",
			Buckets: []float64{.025, .05, .1, .2, .3, .5, .75, 1, 1.5, 2, 3, 5, 10}}, []string{"handler"}),
		queueDesc:   prometheus.NewDesc("onebox_invoker_queue_depth", "Triggers waiting in the handler's queue.", []string{"handler"}, nil),
		runningDesc: prometheus.NewDesc("onebox_invoker_running", "Containers running now, by handler.", []string{"handler"}, nil),
		limitDesc:   prometheus.NewDesc("onebox_invoker_concurrency_limit", "The global limit on running containers.", nil, nil),
		triggersDesc: prometheus.NewDesc("onebox_invoker_triggers_total",
			"Trigger messages taken, by outcome: received (handled), duplicate (a redelivery dropped), retained (replay ignored), invalid (bad topic).",
			[]string{"outcome"}, nil),
	}
}

// Attach makes the scrape-time gauges read iv (nil detaches).
func (m *Metrics) Attach(iv *Invoker) {
	m.mu.Lock()
	m.iv = iv
	m.mu.Unlock()
}

// Observe counts one published run record; only final records count.
func (m *Metrics) Observe(r record.Record) {
	if !record.Final(r.State) {
		return
	}
	h := r.Handler
	if r.Reason == record.ReasonUnknownHandler {
		h = unknownHandlerLabel
	}
	m.runs.WithLabelValues(h, r.State).Inc()
	if r.Reason != "" {
		m.rejected.WithLabelValues(h, r.Reason).Inc()
	}
	if r.State == record.Rejected {
		return
	}
	if r.StartedAt != nil && r.FinishedAt != nil {
		// The engine's finished time can precede its started time by a few
		// hundred microseconds for a run shorter than that: count it as 0.
		m.duration.WithLabelValues(h).Observe(max(r.FinishedAt.Sub(*r.StartedAt).Seconds(), 0))
	}
	if r.StartMs > 0 {
		m.start.WithLabelValues(h).Observe(float64(r.StartMs) / 1000)
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.runs.Describe(ch)
	m.rejected.Describe(ch)
	m.duration.Describe(ch)
	m.start.Describe(ch)
	ch <- m.queueDesc
	ch <- m.runningDesc
	ch <- m.limitDesc
	ch <- m.triggersDesc
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.runs.Collect(ch)
	m.rejected.Collect(ch)
	m.duration.Collect(ch)
	m.start.Collect(ch)
	m.mu.Lock()
	iv := m.iv
	m.mu.Unlock()
	if iv == nil {
		return
	}
	type hq struct{ queued, running int }
	iv.mu.Lock()
	qs := make(map[string]hq, len(iv.handlers)+len(iv.queues))
	for n := range iv.handlers {
		qs[n] = hq{}
	}
	for n, q := range iv.queues {
		qs[n] = hq{len(q.queue), q.running}
	}
	limit := iv.o.Concurrency
	st := iv.stats
	iv.mu.Unlock()
	for n, q := range qs {
		ch <- prometheus.MustNewConstMetric(m.queueDesc, prometheus.GaugeValue, float64(q.queued), n)
		ch <- prometheus.MustNewConstMetric(m.runningDesc, prometheus.GaugeValue, float64(q.running), n)
	}
	ch <- prometheus.MustNewConstMetric(m.limitDesc, prometheus.GaugeValue, float64(limit))
	for _, o := range []struct {
		name string
		v    uint64
	}{{"received", st.Received}, {"duplicate", st.Duplicates}, {"retained", st.Retained}, {"invalid", st.Invalid}} {
		ch <- prometheus.MustNewConstMetric(m.triggersDesc, prometheus.CounterValue, float64(o.v), o.name)
	}
}
