// Package invoker turns one trigger message into one container run. It takes
// triggers from MQTT (QoS 1, persistent session), checks them against the handler
// list, queues them per handler under a concurrency limit and a global limit,
// drops redeliveries, runs each through a container.Runtime and publishes
// result/<id> (stdout) and status/<id> (the run record).
//
// Delivery: a trigger is acknowledged to the broker only when its run has ended
// (or it was rejected). If the invoker dies mid-run, the broker delivers the
// trigger again at the next start, the leftover container is removed, and the
// trigger runs again with its record marked "redelivered": at least once, and
// once per id within the dedupe window.
package invoker

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/onebox-dev/onebox/internal/config"
	"github.com/onebox-dev/onebox/internal/record"
	"github.com/onebox-dev/onebox/internal/state"
	"github.com/onebox-dev/onebox/internal/topics"
	"github.com/onebox-dev/onebox/invoker/container"
)

// Publisher sends one message (QoS 1). The MQTT client implements it; tests fake it.
type Publisher interface {
	Publish(topic string, payload []byte, retained bool) error
}

// Options configure an Invoker.
type Options struct {
	Name        string            // instance name: labels, client id, records
	Runtime     container.Runtime // the engine
	Concurrency int               // global limit on running containers
	StdoutCap   int64
	// MaxPacket is the broker's packet size limit (broker.max_packet, default
	// 1 MiB): result/<id> is cut to fit in it, since a broker closes the
	// connection of a client that publishes a larger packet.
	MaxPacket   int64
	StderrTail  int
	Grace       time.Duration // SIGTERM to SIGKILL
	DedupeCount int
	DedupeAge   time.Duration
	EngineWait  time.Duration // how long a trigger waits for an unreachable engine
	Logger      *slog.Logger
	Now         func() time.Time
	// Observer, when set, sees every run record as it is published (metrics).
	Observer func(record.Record)
}

// Trigger is one message taken from trigger/<handler>[/<id>].
type Trigger struct {
	Topic     string
	Handler   string
	ID        string // "" = make one
	Payload   []byte
	Duplicate bool   // the MQTT DUP flag
	MessageID uint16 // the MQTT packet id
	// Ack acknowledges the message to the broker; called once the trigger is
	// rejected, deduplicated or its run has ended. May be nil.
	Ack func()
}

// job is a trigger on its way through the queue.
type job struct {
	Trigger
	key         string // dedupe key
	pkt         string // dedupe key of an id-less trigger's packet, or ""
	seq         uint64
	source      string
	queuedAt    time.Time
	image       string
	redelivered bool
}

type handlerQ struct {
	queue   []*job
	running int
}

// Invoker runs triggers.
type Invoker struct {
	o   Options
	log *slog.Logger
	pub Publisher

	mu       sync.Mutex
	handlers map[string]config.Handler
	queues   map[string]*handlerQ
	running  int
	seq      uint64
	closing  bool
	wg       sync.WaitGroup
	runCtx   context.Context
	stopRuns context.CancelFunc
	dd       *dedupe
	stats    Stats
}

// Stats are counters for tests, logs and metrics.
type Stats struct {
	Received, Started, Finished, Rejected, Duplicates, Retained, Invalid uint64
	MaxRunning                                                           int
}

// ErrClosed is returned by Handle after Shutdown began.
var ErrClosed = errors.New("invoker is shutting down")

// New returns an Invoker that publishes through pub.
func New(o Options, pub Publisher) *Invoker {
	if o.Concurrency <= 0 {
		o.Concurrency = config.BoxConcurrency()
	}
	if o.StdoutCap <= 0 {
		o.StdoutCap = config.DefaultStdoutCap
	}
	if o.MaxPacket <= 0 {
		o.MaxPacket = config.DefaultMaxPacket
	}
	if o.StderrTail <= 0 {
		o.StderrTail = 4096
	}
	if o.Grace <= 0 {
		o.Grace = config.DefaultGrace
	}
	if o.DedupeCount <= 0 {
		o.DedupeCount = config.DefaultDedupeCount
	}
	if o.DedupeAge <= 0 {
		o.DedupeAge = config.DefaultDedupeAge
	}
	if o.EngineWait <= 0 {
		o.EngineWait = 60 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Invoker{
		o: o, log: o.Logger.With("part", "invoker"), pub: pub,
		handlers: map[string]config.Handler{}, queues: map[string]*handlerQ{},
		runCtx: ctx, stopRuns: cancel,
		dd: newDedupe(o.DedupeCount, o.DedupeAge, o.Now),
	}
}

// SetHandlers replaces the handler list (a config reload). Queued triggers run
// with the handler as it is when their run starts: after a swap of image the
// next run uses the new image.
func (iv *Invoker) SetHandlers(hs map[string]*config.Handler) {
	m := make(map[string]config.Handler, len(hs))
	for n, h := range hs {
		if h != nil {
			m[n] = *h
		}
	}
	iv.mu.Lock()
	iv.handlers = m
	iv.mu.Unlock()
	iv.dispatch()
}

// HandlerList is the retained onebox/handlers payload.
func (iv *Invoker) HandlerList() state.Handlers {
	iv.mu.Lock()
	defer iv.mu.Unlock()
	out := state.Handlers{Invoker: iv.o.Name, At: iv.o.Now().UTC()}
	for n, h := range iv.handlers {
		out.Handlers = append(out.Handlers, state.HandlerInfo{Name: n, Image: h.Image, TimeoutMs: h.Timeout.D().Milliseconds(), Concurrency: h.Concurrency, Queue: h.Queue})
	}
	sort.Slice(out.Handlers, func(i, j int) bool { return out.Handlers[i].Name < out.Handlers[j].Name })
	return out
}

// Stats returns a copy of the counters.
func (iv *Invoker) Stats() Stats {
	iv.mu.Lock()
	defer iv.mu.Unlock()
	return iv.stats
}

// SourceOf derives a record's source from the id a bridge chose.
func SourceOf(id string) string {
	for _, s := range []string{record.SourceHTTP, record.SourceFile, record.SourceCron} {
		if strings.HasPrefix(id, s+"-") {
			return s
		}
	}
	return record.SourceMQTT
}

// Handle takes one trigger. It never blocks on a run: the trigger is rejected,
// dropped as a duplicate, started or queued, and Handle returns.
func (iv *Invoker) Handle(t Trigger) error {
	ack := func() {
		if t.Ack != nil {
			t.Ack()
		}
	}
	iv.mu.Lock()
	if iv.closing {
		iv.mu.Unlock()
		// Not acknowledged: the broker delivers it again after the restart.
		return ErrClosed
	}
	iv.stats.Received++
	iv.mu.Unlock()

	// Triggers with an id are deduplicated by id. One without an id gets a new
	// id; a DUP redelivery of its packet is recognised by topic, packet id and
	// payload (a fresh message that reuses the packet id carries no DUP, and one
	// that carries DUP but was never seen still runs).
	key, pkt := t.ID, ""
	if t.ID == "" {
		h := fnv.New64a()
		h.Write(t.Payload)
		pkt = fmt.Sprintf("pkt:%s:%d:%x", t.Topic, t.MessageID, h.Sum64())
		if t.Duplicate {
			key = pkt
		} else {
			iv.dd.forget(pkt) // the packet id is reused by a new message
			t.ID = topics.NewID()
			key = t.ID
		}
	}
	added, done := iv.dd.add(key)
	if !added {
		iv.mu.Lock()
		iv.stats.Duplicates++
		iv.mu.Unlock()
		if t.Duplicate || t.ID == "" {
			iv.log.Debug("duplicate trigger dropped (a redelivery of a run already taken)", "id", t.ID, "topic", t.Topic, "dup", t.Duplicate, "ended", done)
		} else {
			// Not the broker's redelivery: someone published the id again.
			iv.log.Info("trigger not run: its id was already used within the dedupe window (a repeat of the same event; use a new id for a new run)",
				"id", t.ID, "topic", t.Topic, "ended", done)
		}
		if done {
			ack()
		} // else the first delivery's run acknowledges the packet when it ends
		return nil
	}
	switch {
	case t.ID == "": // a DUP packet never seen: it runs, under a new id
		t.ID = topics.NewID()
	case pkt != "": // a new id-less trigger: remember its packet
		iv.dd.add(pkt)
	}
	if key == pkt {
		pkt = ""
	}
	j := &job{Trigger: t, key: key, pkt: pkt, source: SourceOf(t.ID), queuedAt: iv.o.Now(), redelivered: t.Duplicate}

	iv.mu.Lock()
	h, ok := iv.handlers[t.Handler]
	if !ok {
		iv.stats.Rejected++
		iv.mu.Unlock()
		iv.reject(j, record.ReasonUnknownHandler, fmt.Sprintf("no handler named %q: add it under handlers: in onebox.yaml", t.Handler))
		return nil
	}
	j.image = h.Image
	q := iv.queues[t.Handler]
	if q == nil {
		q = &handlerQ{}
		iv.queues[t.Handler] = q
	}
	if len(q.queue) >= h.Queue && !(len(q.queue) == 0 && q.running < h.Concurrency && iv.running < iv.o.Concurrency) {
		iv.stats.Rejected++
		iv.mu.Unlock()
		iv.reject(j, record.ReasonBusy, fmt.Sprintf("handler %q is busy: %d running and %d queued (raise concurrency or queue for it in onebox.yaml)", t.Handler, h.Concurrency, h.Queue))
		return nil
	}
	iv.seq++
	j.seq = iv.seq
	q.queue = append(q.queue, j)
	// The queued record goes out before the run can start (and publish running).
	iv.publishRecord(iv.baseRecord(j, record.Queued))
	starts, rejects := iv.takeLocked()
	iv.mu.Unlock()
	iv.launch(starts, rejects)
	return nil
}

func (iv *Invoker) baseRecord(j *job, st string) record.Record {
	return record.Record{
		ID: j.ID, Handler: j.Handler, Image: j.image, Source: j.source, State: st,
		QueuedAt: record.TimePtr(j.queuedAt), Invoker: iv.o.Name, Redelivered: j.redelivered,
	}
}

func (iv *Invoker) reject(j *job, reason, msg string) {
	r := iv.baseRecord(j, record.Rejected)
	r.Reason, r.Error = reason, msg
	now := iv.o.Now()
	r.FinishedAt = record.TimePtr(now)
	iv.log.Debug("trigger rejected", "id", j.ID, "handler", j.Handler, "reason", reason)
	iv.publishRecord(r)
	iv.finishKeys(j)
	if j.Ack != nil {
		j.Ack()
	}
}

// finishKeys marks a job's dedupe keys as ended: a redelivery within the window
// is acknowledged and dropped.
func (iv *Invoker) finishKeys(j *job) {
	iv.dd.finish(j.key)
	if j.pkt != "" {
		iv.dd.finish(j.pkt)
	}
}

func (iv *Invoker) publishRecord(r record.Record) {
	if iv.o.Observer != nil {
		iv.o.Observer(r)
	}
	if err := iv.pub.Publish(topics.Status(r.ID), r.Marshal(), false); err != nil {
		iv.log.Warn("cannot publish a run record", "id", r.ID, "state", r.State, "err", err)
	}
}

type startItem struct {
	j    *job
	name string
	h    config.Handler
}

// dispatch starts queued jobs while limits allow, oldest first across handlers.
func (iv *Invoker) dispatch() {
	iv.mu.Lock()
	starts, rejects := iv.takeLocked()
	iv.mu.Unlock()
	iv.launch(starts, rejects)
}

func (iv *Invoker) launch(starts []startItem, rejects []*job) {
	for _, j := range rejects {
		iv.reject(j, record.ReasonUnknownHandler, fmt.Sprintf("handler %q was removed from the config before its run started", j.Handler))
	}
	for _, s := range starts {
		go iv.run(s.j, s.name, s.h)
	}
}

// takeLocked moves the jobs that may start now out of the queues and counts
// them as running; iv.mu is held.
func (iv *Invoker) takeLocked() (starts []startItem, rejects []*job) {
	for !iv.closing && iv.running < iv.o.Concurrency {
		var best *handlerQ
		var bestName string
		for name, q := range iv.queues {
			if len(q.queue) == 0 {
				continue
			}
			conc := 1
			if h, ok := iv.handlers[name]; ok {
				conc = h.Concurrency
			}
			if q.running >= conc {
				continue
			}
			if best == nil || q.queue[0].seq < best.queue[0].seq {
				best, bestName = q, name
			}
		}
		if best == nil {
			return
		}
		j := best.queue[0]
		best.queue[0] = nil
		best.queue = best.queue[1:]
		h, ok := iv.handlers[bestName]
		if !ok {
			iv.stats.Rejected++
			rejects = append(rejects, j)
			continue
		}
		best.running++
		iv.running++
		iv.stats.Started++
		if iv.running > iv.stats.MaxRunning {
			iv.stats.MaxRunning = iv.running
		}
		iv.wg.Add(1)
		starts = append(starts, startItem{j, bestName, h})
	}
	return
}

func (iv *Invoker) done(name string) {
	iv.mu.Lock()
	if q := iv.queues[name]; q != nil {
		q.running--
		if q.running == 0 && len(q.queue) == 0 {
			delete(iv.queues, name)
		}
	}
	iv.running--
	iv.stats.Finished++
	iv.mu.Unlock()
	iv.wg.Done()
	iv.dispatch()
}

// spec builds the container spec of one run.
func (iv *Invoker) spec(j *job, h config.Handler) container.Spec {
	env := []string{"ONEBOX_ID=" + j.ID, "ONEBOX_HANDLER=" + j.Handler, "ONEBOX_TOPIC=" + j.Topic}
	keys := make([]string, 0, len(h.Env))
	for k := range h.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+h.Env[k])
	}
	var mounts []container.Mount
	for _, m := range h.Mounts {
		ms, err := config.ParseMount(m)
		if err != nil {
			continue // validated at load
		}
		src, _ := filepath.Abs(ms.Source)
		mounts = append(mounts, container.Mount{Source: src, Target: ms.Target, ReadOnly: ms.ReadOnly})
	}
	return container.Spec{
		ID: j.ID, Handler: j.Handler, Instance: iv.o.Name, Image: h.Image, Cmd: h.Cmd,
		Env: env, Stdin: j.Payload, Timeout: h.Timeout.D(), Grace: iv.o.Grace,
		MemoryBytes: int64(h.Memory), NanoCPUs: int64(h.CPUs * 1e9), PidsLimit: h.Pids,
		Network: h.Network, Mounts: mounts, User: h.User, Privileged: h.Privileged && h.Unsafe,
		StdoutCap: iv.o.StdoutCap, StderrTailCap: iv.o.StderrTail,
	}
}

func (iv *Invoker) run(j *job, name string, h config.Handler) {
	defer iv.done(name)
	j.image = h.Image
	spec := iv.spec(j, h)
	log := iv.log.With("id", j.ID, "handler", name, "image", h.Image)

	var res container.Result
	var err error
	deadline := iv.o.Now().Add(iv.o.EngineWait)
	for {
		res, err = iv.o.Runtime.Run(iv.runCtx, spec, func(at time.Time) {
			r := iv.baseRecord(j, record.Running)
			r.StartedAt = record.TimePtr(at)
			iv.publishRecord(r)
		})
		if !errors.Is(err, container.ErrEngineUnavailable) || iv.o.Now().After(deadline) || iv.runCtx.Err() != nil {
			break
		}
		r := iv.baseRecord(j, record.Queued)
		r.Reason, r.Error = record.ReasonEngine, err.Error()
		iv.publishRecord(r)
		log.Warn("container engine unavailable; the trigger waits", "err", err, "until", deadline)
		select {
		case <-time.After(2 * time.Second):
		case <-iv.runCtx.Done():
		}
	}

	r := iv.baseRecord(j, record.Failed)
	r.FinishedAt = record.TimePtr(iv.o.Now())
	if err != nil {
		switch {
		case errors.Is(err, container.ErrImageMissing):
			r.Reason = record.ReasonImageMissing
		case errors.Is(err, container.ErrWrongPlatform):
			r.Reason = record.ReasonWrongPlatform
		case errors.Is(err, container.ErrEngineUnavailable):
			r.Reason = record.ReasonEngine
		case iv.runCtx.Err() != nil:
			r.Reason = record.ReasonShutdown
		default:
			r.Reason = record.ReasonRuntime
		}
		r.Error = err.Error()
		log.Warn("run failed before its container ran", "reason", r.Reason, "err", err)
		iv.publishRecord(r)
		iv.finishKeys(j)
		if j.Ack != nil {
			j.Ack()
		}
		return
	}

	r.ExitCode = record.IntPtr(res.ExitCode)
	r.StartedAt = record.TimePtr(res.StartedAt)
	r.FinishedAt = record.TimePtr(res.FinishedAt)
	if !res.StartedAt.IsZero() && !res.FinishedAt.IsZero() {
		r.DurationMs = res.FinishedAt.Sub(res.StartedAt).Milliseconds()
	}
	r.StartMs = res.StartMs
	r.MaxMemoryBytes = res.MaxMemoryBytes
	r.CPUMs = res.CPUMs
	// The result must fit in one packet: fixed header (≤5), topic length (2),
	// topic, packet id (2), payload; mochi also counts one byte more.
	if room := iv.o.MaxPacket - int64(len(topics.Result(j.ID))) - 10; int64(len(res.Stdout)) > room && room >= 0 {
		res.Stdout = res.Stdout[:room]
	}
	r.StdoutBytes = res.StdoutBytes
	r.Truncated = res.Truncated || res.StdoutBytes > int64(len(res.Stdout))
	r.Stderr = string(res.Stderr)
	switch {
	case iv.runCtx.Err() != nil && (res.TimedOut || res.ExitCode != 0):
		// Stopped because onebox is shutting down.
		r.State, r.Reason = record.Failed, record.ReasonShutdown
	case res.TimedOut:
		r.State = record.Timeout
	case res.OOMKilled:
		r.State, r.Reason = record.Failed, record.ReasonOOM
	case res.ExitCode != 0:
		r.State, r.Reason = record.Failed, record.ReasonExit
	default:
		r.State = record.Succeeded
	}
	// result/<id> first, then the final record: a waiter that sees the final
	// record knows the result was published before it.
	if err := iv.pub.Publish(topics.Result(j.ID), res.Stdout, false); err != nil {
		log.Warn("cannot publish a result", "err", err)
	}
	iv.publishRecord(r)
	log.Debug("run ended", "state", r.State, "exit_code", res.ExitCode, "duration_ms", r.DurationMs, "start_ms", r.StartMs)
	iv.finishKeys(j)
	if j.Ack != nil {
		j.Ack()
	}
}

// Shutdown stops taking triggers and waits for runs in flight until ctx ends;
// then it stops them (SIGTERM, grace, SIGKILL), records them as failed with
// reason shutdown, and waits for their removal. Queued triggers are not
// acknowledged, so the broker delivers them again at the next start.
func (iv *Invoker) Shutdown(ctx context.Context) error {
	iv.mu.Lock()
	iv.closing = true
	var dropped []*job
	for _, q := range iv.queues {
		dropped = append(dropped, q.queue...)
		q.queue = nil
	}
	iv.mu.Unlock()
	for _, j := range dropped {
		iv.dd.forget(j.key)
		if j.pkt != "" {
			iv.dd.forget(j.pkt)
		}
	}
	if len(dropped) > 0 {
		iv.log.Info("queued triggers left to the broker for the next start", "count", len(dropped))
	}
	done := make(chan struct{})
	go func() { iv.wg.Wait(); close(done) }()
	iv.mu.Lock()
	running := iv.running
	iv.mu.Unlock()
	if running > 0 {
		dl, _ := ctx.Deadline()
		iv.log.Info("waiting for runs in flight to finish before stopping them", "running", running, "until", dl.Format(time.TimeOnly))
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	iv.log.Warn("stopping runs still going at shutdown")
	iv.stopRuns()
	select {
	case <-done:
		return nil
	case <-time.After(iv.o.Grace + 30*time.Second):
		return errors.New("runs did not stop in time; leftover containers are removed at the next start")
	}
}
