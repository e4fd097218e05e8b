// Package cronbridge is onebox's cron bridge: it publishes trigger/<handler>/<id>
// (QoS 1, id "cron-"+topics.NewID(), the entry's payload) on a schedule. Like
// every bridge it is an ordinary MQTT 3.1.1 client with no private API to the
// invoker; it learns how a run ended from status/<id> through one shared runwait
// subscription.
//
// Schedules are github.com/robfig/cron/v3 specs: 5 fields (minute hour
// day-of-month month day-of-week), 6 fields with seconds first, descriptors
// (@yearly @monthly @weekly @daily @midnight @hourly), "@every <duration>", and
// a "CRON_TZ=<zone> " (or "TZ=<zone> ") prefix; the zone database is embedded
// (time/tzdata) so a minimal image has zones. Without a zone, the box's local
// time is used.
//
// The schedule runs in the bridge's own loop over Schedule.Next behind a Clock
// (a fake one in tests), one goroutine per entry:
//
//   - The next run is always computed from the current time: after downtime, a
//     long sleep or a clock jump there is one run, never a burst of missed ones.
//     The loop sleeps at most a minute at a time so a wall-clock change is seen.
//   - A tick while the entry's previous run has no final status yet is skipped
//     and logged (overlap: skip, the default). With overlap: queue, one such tick
//     is kept and runs as soon as the previous run ends; further ticks while one
//     is pending are skipped.
//   - A tick while the broker is unreachable is logged as missed (not replayed).
//   - The wait for a run's final status is bounded (AnswerTimeout, else the
//     handler's timeout from onebox/handlers plus a minute, else five minutes;
//     each queued or running record restarts it), so a lost answer cannot block
//     an entry forever.
//   - A rejected run (unknown handler, busy, …) is logged at Warn with the entry's
//     name; the entry keeps its schedule.
package cronbridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	_ "time/tzdata" // zones on a minimal image

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/robfig/cron/v3"

	"github.com/onebox-dev/onebox/internal/config"
	"github.com/onebox-dev/onebox/internal/mqttc"
	"github.com/onebox-dev/onebox/internal/record"
	"github.com/onebox-dev/onebox/internal/runwait"
	"github.com/onebox-dev/onebox/internal/state"
	"github.com/onebox-dev/onebox/internal/topics"
)

// Defaults and names.
const (
	IDPrefix             = "cron-"
	DefaultAnswerTimeout = 5 * time.Minute
	answerMargin         = time.Minute
	// maxSleep caps one wait of the loop so that a wall-clock change is noticed.
	maxSleep = time.Minute

	OverlapSkip  = "skip"
	OverlapQueue = "queue"
)

// Clock is the time source of the schedule loop.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// RealClock is the wall clock.
type RealClock struct{}

func (RealClock) Now() time.Time                         { return time.Now() }
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Kinds of Event.
const (
	EventTriggered = "triggered" // published (the broker acknowledged it)
	EventSkipped   = "skipped"   // the previous run was still going
	EventQueued    = "queued"    // the previous run was still going; runs when it ends (overlap: queue)
	EventMissed    = "missed"    // the broker was unreachable
	EventFinished  = "finished"  // the final record arrived (Record is set)
	EventNoAnswer  = "no answer" // no final record within the bound
)

// Event is what happened to an entry, for tests and metrics.
type Event struct {
	Entry  int    // index in Options.Entries
	Name   string // the entry's name
	Kind   string
	ID     string // run id (triggered, finished, no answer)
	At     time.Time
	Record *record.Record // finished
}

// Options configure a Bridge.
type Options struct {
	Entries                                 []config.CronEntry
	BrokerURL, ClientID, Username, Password string
	Clock                                   Clock // default RealClock
	Logger                                  *slog.Logger
	// AnswerTimeout bounds the wait for a run's final record (see package doc).
	AnswerTimeout time.Duration
	// OnEvent, when set, is called for every Event (synchronously: keep it short).
	OnEvent func(Event)
}

// Parser accepts 5 fields, 6 with seconds first, descriptors and @every.
var Parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// ParseSchedule parses one spec; the error names the faulty field when it can.
func ParseSchedule(spec string) (s cron.Schedule, err error) {
	spec = strings.Join(strings.Fields(spec), " ")
	if spec == "" {
		return nil, errors.New("empty schedule")
	}
	body := spec
	if strings.HasPrefix(spec, "TZ=") || strings.HasPrefix(spec, "CRON_TZ=") {
		_, rest, ok := strings.Cut(spec, " ")
		if !ok {
			return nil, fmt.Errorf("%q names a zone but no schedule after it", spec)
		}
		body = rest
	}
	defer func() { // robfig/cron must not take the process down on odd input
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("cannot parse: %v", r)
		}
	}()
	s, err = Parser.Parse(spec)
	if err != nil {
		if f := badField(body); f != "" {
			return nil, fmt.Errorf("%s: %v", f, err)
		}
		return nil, err
	}
	return s, nil
}

// badField names the first field of a 5- or 6-field spec that does not parse.
func badField(body string) string {
	if strings.HasPrefix(body, "@") {
		return ""
	}
	fields := strings.Fields(body)
	var names []string
	switch len(fields) {
	case 5:
		names = []string{"minute", "hour", "day of month", "month", "day of week"}
	case 6:
		names = []string{"second", "minute", "hour", "day of month", "month", "day of week"}
	default:
		return fmt.Sprintf("want 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, got %d", len(fields))
	}
	for i, f := range fields {
		probe := make([]string, len(fields))
		for j := range probe {
			probe[j] = "*"
		}
		probe[i] = f
		if _, err := Parser.Parse(strings.Join(probe, " ")); err != nil {
			return fmt.Sprintf("field %d (%s) %q", i+1, names[i], f)
		}
	}
	return ""
}

// entry is one schedule and its run state.
type entry struct {
	idx   int
	name  string
	cfg   config.CronEntry
	sched cron.Schedule
	zone  *time.Location // CRON_TZ zone, nil for the clock's

	mu      sync.Mutex
	running bool // a run has no final record yet
	pending bool // overlap queue: one tick waits for the run to end
}

// Bridge runs the schedules.
type Bridge struct {
	o        Options
	log      *slog.Logger
	clock    Clock
	entries  []*entry
	waiter   *runwait.Waiter
	client   mqtt.Client
	handlers atomic.Pointer[state.Handlers]

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
}

// New parses every entry; an error names the entry (index and name) and what is
// wrong with it.
func New(o Options) (*Bridge, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = RealClock{}
	}
	if o.ClientID == "" {
		o.ClientID = mqttc.ClientID("onebox-cron-")
	}
	if o.BrokerURL == "" {
		return nil, errors.New("cron bridge: no broker URL")
	}
	entries, err := parseEntries(o.Entries, o.Clock.Now())
	if err != nil {
		return nil, err
	}
	return &Bridge{o: o, log: o.Logger.With("bridge", "cron"), clock: o.Clock, waiter: runwait.New(), entries: entries}, nil
}

// Check reports the first entry that cannot run (a bad schedule, handler name or
// overlap), naming the entry and the field: config loading calls it, so a typo
// is found before anything starts.
func Check(entries []config.CronEntry) error {
	_, err := parseEntries(entries, time.Now())
	return err
}

func parseEntries(cfg []config.CronEntry, now time.Time) ([]*entry, error) {
	var out []*entry
	for i, c := range cfg {
		name := c.Name
		if name == "" {
			name = fmt.Sprintf("%s#%d", c.Handler, i)
		}
		where := fmt.Sprintf("cron entry %d (%q)", i, name)
		if !topics.ValidHandler(c.Handler) {
			return nil, fmt.Errorf("%s: handler %q: %w", where, c.Handler, topics.ErrBadHandler)
		}
		switch c.Overlap {
		case "", OverlapSkip, OverlapQueue:
		default:
			return nil, fmt.Errorf("%s: overlap %q: want skip or queue", where, c.Overlap)
		}
		s, err := ParseSchedule(c.Schedule)
		if err != nil {
			return nil, fmt.Errorf("%s: schedule %q: %w", where, c.Schedule, err)
		}
		e := &entry{idx: i, name: name, cfg: c, sched: s}
		if ss, ok := s.(*cron.SpecSchedule); ok && ss.Location != time.Local {
			e.zone = ss.Location
		}
		if s.Next(now).IsZero() {
			return nil, fmt.Errorf("%s: schedule %q never fires", where, c.Schedule)
		}
		out = append(out, e)
	}
	return out, nil
}

// Start connects (retrying in the background while the broker is away), logs
// each entry's next run and starts the schedules. It returns at once; the bridge
// runs until ctx ends or Close is called.
func (b *Bridge) Start(ctx context.Context) error {
	b.ctx, b.cancel = context.WithCancel(ctx)
	b.client = mqttc.New(mqttc.Options{
		URL: b.o.BrokerURL, ClientID: b.o.ClientID, Username: b.o.Username, Password: b.o.Password,
		CleanSession: true, Logger: b.o.Logger,
		OnConnect: func(c mqtt.Client) {
			b.waiter.Subscribe(c)
			c.Subscribe(topics.HandlersTopic, 1, func(_ mqtt.Client, m mqtt.Message) {
				var h state.Handlers
				if json.Unmarshal(m.Payload(), &h) == nil {
					b.handlers.Store(&h)
				}
			})
		},
	})
	b.client.Connect()
	now := b.clock.Now()
	for _, e := range b.entries {
		next := e.sched.Next(now)
		b.log.Info("cron entry scheduled", "entry", e.name, "handler", e.cfg.Handler, "schedule", e.cfg.Schedule,
			"next", e.local(next).Format("2006-01-02 15:04:05 MST"), "zone", e.local(next).Location().String())
		b.wg.Add(1)
		go b.loop(e)
	}
	return nil
}

// Close stops the schedules and waits for them.
func (b *Bridge) Close() error {
	if b.closed.Swap(true) || b.cancel == nil {
		return nil
	}
	b.cancel()
	b.wg.Wait()
	b.client.Disconnect(250)
	return nil
}

func (e *entry) local(t time.Time) time.Time {
	if e.zone != nil {
		return t.In(e.zone)
	}
	return t
}

func (b *Bridge) emit(ev Event) {
	if b.o.OnEvent != nil {
		b.o.OnEvent(ev)
	}
}

// loop waits for each next time of e, computed from now (never catching up).
func (b *Bridge) loop(e *entry) {
	defer b.wg.Done()
	now := b.clock.Now()
	next := e.sched.Next(now)
	for {
		if next.IsZero() {
			b.log.Warn("cron entry never fires again", "entry", e.name)
			return
		}
		d := next.Sub(now)
		if d > maxSleep {
			d = maxSleep
		}
		select {
		case <-b.ctx.Done():
			return
		case <-b.clock.After(d):
		}
		now = b.clock.Now()
		if now.Before(next) {
			continue
		}
		if late := now.Sub(next); late > 2*time.Second {
			b.log.Info("cron tick is late (downtime, sleep or clock jump); running once, not catching up",
				"entry", e.name, "scheduled", e.local(next).Format(time.RFC3339), "late", late.Round(time.Second).String())
		}
		b.tick(e, now)
		now = b.clock.Now()
		next = e.sched.Next(now)
	}
}

func (b *Bridge) tick(e *entry, at time.Time) {
	e.mu.Lock()
	if e.running {
		if e.cfg.Overlap == OverlapQueue && !e.pending {
			e.pending = true
			e.mu.Unlock()
			b.log.Info("previous run still going; tick queued to run after it", "entry", e.name, "handler", e.cfg.Handler)
			b.emit(Event{Entry: e.idx, Name: e.name, Kind: EventQueued, At: at})
			return
		}
		e.mu.Unlock()
		b.log.Warn("previous run still going; tick skipped", "entry", e.name, "handler", e.cfg.Handler, "overlap", e.overlap())
		b.emit(Event{Entry: e.idx, Name: e.name, Kind: EventSkipped, At: at})
		return
	}
	e.running = true
	e.mu.Unlock()
	if !b.fire(e, at) {
		b.ended(e)
	}
}

func (e *entry) overlap() string {
	if e.cfg.Overlap == "" {
		return OverlapSkip
	}
	return e.cfg.Overlap
}

// fire publishes one trigger for e and waits for its answer in the background.
// It reports whether a run is now going.
func (b *Bridge) fire(e *entry, at time.Time) bool {
	if !b.client.IsConnectionOpen() {
		b.log.Warn("cron tick missed: broker unreachable", "entry", e.name, "handler", e.cfg.Handler)
		b.emit(Event{Entry: e.idx, Name: e.name, Kind: EventMissed, At: at})
		return false
	}
	id := IDPrefix + topics.NewID()
	w := b.waiter.Register(id)
	err := mqttc.Wait(b.client.Publish(topics.Trigger(e.cfg.Handler, id), 1, false, []byte(e.cfg.Payload)), 10*time.Second)
	if err != nil {
		w.Cancel()
		b.log.Warn("cron tick missed: publish failed", "entry", e.name, "handler", e.cfg.Handler, "err", err)
		b.emit(Event{Entry: e.idx, Name: e.name, Kind: EventMissed, At: at})
		return false
	}
	b.log.Debug("cron trigger published", "entry", e.name, "handler", e.cfg.Handler, "id", id)
	b.emit(Event{Entry: e.idx, Name: e.name, Kind: EventTriggered, ID: id, At: at})
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer w.Cancel()
		b.await(e, id, w)
		b.ended(e)
	}()
	return true
}

// ended marks e's run over and runs a queued tick.
func (b *Bridge) ended(e *entry) {
	e.mu.Lock()
	if !e.pending || b.ctx.Err() != nil {
		e.running, e.pending = false, false
		e.mu.Unlock()
		return
	}
	e.pending = false // stays running: the queued tick runs now
	e.mu.Unlock()
	if !b.fire(e, b.clock.Now()) {
		e.mu.Lock()
		e.running = false
		e.mu.Unlock()
	}
}

func (b *Bridge) answerTimeout(handler string) time.Duration {
	if b.o.AnswerTimeout > 0 {
		return b.o.AnswerTimeout
	}
	if h := b.handlers.Load(); h != nil {
		if t := h.Timeout(handler); t > 0 {
			return t + answerMargin
		}
	}
	return DefaultAnswerTimeout
}

func (b *Bridge) await(e *entry, id string, w *runwait.Wait) {
	t := time.NewTimer(b.answerTimeout(e.cfg.Handler))
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case r := <-w.Updates():
			if !record.Final(r.State) {
				t.Reset(b.answerTimeout(e.cfg.Handler))
			}
		case <-t.C:
			b.log.Warn("no final status for a cron run in time; the entry is free again", "entry", e.name, "handler", e.cfg.Handler, "id", id)
			b.emit(Event{Entry: e.idx, Name: e.name, Kind: EventNoAnswer, ID: id, At: b.clock.Now()})
			return
		case <-w.Done():
			r := w.Answer().Record
			args := []any{"entry", e.name, "handler", e.cfg.Handler, "id", id, "state", r.State}
			switch r.State {
			case record.Succeeded:
				b.log.Info("cron run succeeded", append(args, "duration_ms", r.DurationMs)...)
			case record.Rejected:
				b.log.Warn("cron run rejected by the invoker", append(args, "reason", r.Reason, "error", r.Error)...)
			default:
				if r.ExitCode != nil {
					args = append(args, "exit_code", *r.ExitCode)
				}
				b.log.Warn("cron run did not succeed", append(args, "reason", r.Reason)...)
			}
			b.emit(Event{Entry: e.idx, Name: e.name, Kind: EventFinished, ID: id, At: b.clock.Now(), Record: &r})
			return
		}
	}
}

// idle reports whether no entry has a run going (for tests).
func (b *Bridge) idle() bool {
	for _, e := range b.entries {
		e.mu.Lock()
		r := e.running
		e.mu.Unlock()
		if r {
			return false
		}
	}
	return true
}
