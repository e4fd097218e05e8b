package cronbridge

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/onebox-dev/onebox/internal/config"
	"github.com/onebox-dev/onebox/internal/mqtttest"
	"github.com/onebox-dev/onebox/internal/record"
)

// fakeClock fires After channels only when the test advances it.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{now: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{c.now.Add(d), ch})
	return ch
}

// Advance moves the clock and fires every waiter that is due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	keep := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			keep = append(keep, w)
		}
	}
	c.waiters = keep
}

func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

type events struct {
	mu  sync.Mutex
	all []Event
}

func (e *events) add(ev Event) {
	e.mu.Lock()
	e.all = append(e.all, ev)
	e.mu.Unlock()
}

func (e *events) count(kind string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.all {
		if ev.Kind == kind {
			n++
		}
	}
	return n
}

type cenv struct {
	t     *testing.T
	url   string
	inv   *mqtttest.Invoker
	clock *fakeClock
	ev    *events
	logs  *mqtttest.LogBuf
	b     *Bridge
	gate  chan struct{}
}

// newCenv runs a broker, a fake invoker (echo: instant; gated: waits for
// gate; nope: unknown handler) and a bridge on a fake clock.
func newCenv(t *testing.T, start time.Time, entries ...config.CronEntry) *cenv {
	t.Helper()
	e := &cenv{t: t, clock: newFakeClock(start), ev: &events{}, logs: &mqtttest.LogBuf{}, gate: make(chan struct{})}
	e.url, _ = mqtttest.StartBroker(t, "127.0.0.1:0")
	e.inv = mqtttest.StartInvoker(t, e.url, func(h string) mqtttest.Behavior {
		switch h {
		case "gated":
			return mqtttest.Behavior{Gate: e.gate}
		case "nope":
			return mqtttest.Behavior{Reject: record.ReasonUnknownHandler}
		}
		return mqtttest.Behavior{}
	})
	e.b = e.start(Options{Entries: entries, BrokerURL: e.url, Clock: e.clock, Logger: e.logs.Logger(), OnEvent: e.ev.add, AnswerTimeout: 10 * time.Second})
	return e
}

func (e *cenv) start(o Options) *Bridge {
	e.t.Helper()
	b, err := New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = b.Close() })
	mqtttest.WaitFor(e.t, 5*time.Second, "cron bridge connected", func() bool { return b.client.IsConnectionOpen() })
	mqtttest.WaitFor(e.t, 5*time.Second, "loops waiting", func() bool { return e.clock.pending() == len(o.Entries) })
	return b
}

// step advances the fake clock and waits until every loop waits again and,
// when idle is set, until no run is going.
func (e *cenv) step(d time.Duration, idle bool) {
	e.t.Helper()
	e.clock.Advance(d)
	mqtttest.WaitFor(e.t, 5*time.Second, "loops waiting again", func() bool { return e.clock.pending() == len(e.b.entries) })
	if idle {
		mqtttest.WaitFor(e.t, 5*time.Second, "runs finished", e.b.idle)
	}
}

var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

func TestParseSchedules(t *testing.T) {
	paris, _ := time.LoadLocation("Europe/Paris")
	for _, c := range []struct {
		spec     string
		from, to time.Time
	}{
		{"30 9 * * *", t0, time.Date(2026, 3, 11, 9, 30, 0, 0, time.UTC)},
		{"*/10 * * * * *", t0.Add(3 * time.Second), t0.Add(10 * time.Second)},
		{"0 0 9 * * 1-5", time.Date(2026, 3, 14, 10, 0, 0, 0, time.UTC), time.Date(2026, 3, 16, 9, 0, 0, 0, time.UTC)}, // Sat -> Mon
		{"@hourly", t0.Add(time.Minute), t0.Add(time.Hour)},
		{"@every 1s", t0, t0.Add(time.Second)},
		{"@every 90s", t0, t0.Add(90 * time.Second)},
		{"CRON_TZ=Europe/Paris 0 9 * * *", time.Date(2026, 1, 15, 7, 0, 0, 0, time.UTC), time.Date(2026, 1, 15, 8, 0, 0, 0, time.UTC)},  // CET
		{"CRON_TZ=Europe/Paris  0 9 * * *", time.Date(2026, 7, 15, 6, 0, 0, 0, time.UTC), time.Date(2026, 7, 15, 7, 0, 0, 0, time.UTC)}, // CEST
		{"TZ=Europe/Paris 0 9 * * *", time.Date(2026, 7, 15, 6, 0, 0, 0, paris), time.Date(2026, 7, 15, 9, 0, 0, 0, paris)},
	} {
		s, err := ParseSchedule(c.spec)
		if err != nil {
			t.Fatalf("%q: %v", c.spec, err)
		}
		if got := s.Next(c.from); !got.Equal(c.to) {
			t.Errorf("%q: next after %s = %s, want %s", c.spec, c.from, got, c.to)
		}
	}
}

func TestBadEntriesNameEntryAndField(t *testing.T) {
	for _, c := range []struct {
		e    config.CronEntry
		want []string
	}{
		{config.CronEntry{Name: "nightly", Schedule: "*/5 * * * x", Handler: "echo"}, []string{`cron entry 1 ("nightly")`, "field 5 (day of week)", `"x"`}},
		{config.CronEntry{Name: "nightly", Schedule: "61 * * * *", Handler: "echo"}, []string{`cron entry 1 ("nightly")`, "field 1 (minute)", "61"}},
		{config.CronEntry{Name: "sec", Schedule: "0 0 25 * * *", Handler: "echo"}, []string{"field 3 (hour)"}},
		{config.CronEntry{Name: "short", Schedule: "* * *", Handler: "echo"}, []string{`("short")`, "want 5 fields", "got 3"}},
		{config.CronEntry{Name: "zone", Schedule: "CRON_TZ=Mars/Olympus 0 9 * * *", Handler: "echo"}, []string{`("zone")`, "Mars/Olympus"}},
		{config.CronEntry{Name: "zone2", Schedule: "CRON_TZ=Europe/Paris", Handler: "echo"}, []string{`("zone2")`, "no schedule"}},
		{config.CronEntry{Name: "desc", Schedule: "@fortnightly", Handler: "echo"}, []string{`("desc")`, "@fortnightly"}},
		{config.CronEntry{Schedule: "@hourly", Handler: "Bad Name"}, []string{`cron entry 1 ("Bad Name#1")`, "handler"}},
		{config.CronEntry{Name: "o", Schedule: "@hourly", Handler: "echo", Overlap: "parallel"}, []string{"overlap", "skip or queue"}},
		{config.CronEntry{Name: "feb30", Schedule: "0 0 30 2 *", Handler: "echo"}, []string{`("feb30")`, "never fires"}},
	} {
		_, err := New(Options{BrokerURL: "tcp://127.0.0.1:1", Entries: []config.CronEntry{{Name: "ok", Schedule: "@hourly", Handler: "echo"}, c.e}})
		if err == nil {
			t.Errorf("%+v: no error", c.e)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%+v: error %q lacks %q", c.e, err, w)
			}
		}
	}
}

func TestFiveAndSixFieldsOnFakeClock(t *testing.T) {
	e := newCenv(t, t0,
		config.CronEntry{Name: "every10s", Schedule: "*/10 * * * * *", Handler: "echo", Payload: "six"},
		config.CronEntry{Name: "every2m", Schedule: "*/2 * * * *", Handler: "echo", Payload: "five"},
	)
	for i := 0; i < 12; i++ { // two minutes in 10 s steps: 12 + 1 (at 12:02)
		e.step(10*time.Second, true)
	}
	mqtttest.WaitFor(t, 5*time.Second, "13 runs", func() bool { return len(e.inv.Runs()) >= 13 })
	if six, five := e.inv.RunsOf([]byte("six")), e.inv.RunsOf([]byte("five")); six != 12 || five != 1 {
		t.Fatalf("6-field entry ran %d times (want 12), 5-field %d (want 1)", six, five)
	}
	if n := e.ev.count(EventFinished); n != 13 {
		t.Fatalf("%d finished events, want 13", n)
	}
	for _, r := range e.inv.Runs() {
		if !strings.HasPrefix(r.ID, IDPrefix) || r.Handler != "echo" {
			t.Fatalf("run %+v", r)
		}
	}
}

func TestCronTZOnFakeClock(t *testing.T) {
	start := time.Date(2026, 1, 15, 7, 0, 0, 0, time.UTC) // 08:00 in Paris
	e := newCenv(t, start, config.CronEntry{Name: "paris9", Schedule: "CRON_TZ=Europe/Paris 0 9 * * *", Handler: "echo"})
	if !strings.Contains(e.logs.String(), "next=\"2026-01-15 09:00:00 CET\"") || !strings.Contains(e.logs.String(), "zone=Europe/Paris") {
		t.Fatalf("start log lacks the next run in its zone:\n%s", e.logs)
	}
	for i := 0; i < 59; i++ {
		e.step(time.Minute, true)
	}
	if n := len(e.inv.Runs()); n != 0 {
		t.Fatalf("ran %d times before 09:00 Paris", n)
	}
	e.step(time.Minute, true) // 08:00 UTC = 09:00 CET
	mqtttest.WaitFor(t, 5*time.Second, "the 09:00 run", func() bool { return len(e.inv.Runs()) == 1 })
}

func TestSkipOverlap(t *testing.T) {
	e := newCenv(t, t0, config.CronEntry{Name: "long", Schedule: "@every 1m", Handler: "gated"})
	e.step(time.Minute, false)
	mqtttest.WaitFor(t, 5*time.Second, "first run", func() bool { return len(e.inv.Runs()) == 1 })
	e.step(time.Minute, false)
	e.step(time.Minute, false)
	if n, s := len(e.inv.Runs()), e.ev.count(EventSkipped); n != 1 || s != 2 {
		t.Fatalf("a run spanning 3 ticks: %d triggers (want 1), %d skips (want 2)", n, s)
	}
	if n := e.logs.Count("tick skipped"); n != 2 {
		t.Fatalf("%d skips logged, want 2", n)
	}
	close(e.gate)
	mqtttest.WaitFor(t, 5*time.Second, "run finished", e.b.idle)
	e.step(time.Minute, true)
	if n := len(e.inv.Runs()); n != 2 {
		t.Fatalf("after the long run: %d triggers, want 2", n)
	}
}

func TestQueueOverlap(t *testing.T) {
	e := newCenv(t, t0, config.CronEntry{Name: "q", Schedule: "@every 1m", Handler: "gated", Overlap: "queue"})
	e.step(time.Minute, false)
	mqtttest.WaitFor(t, 5*time.Second, "first run", func() bool { return len(e.inv.Runs()) == 1 })
	e.step(time.Minute, false) // queued
	e.step(time.Minute, false) // one pending already: skipped
	e.step(time.Minute, false) // skipped
	if q, s := e.ev.count(EventQueued), e.ev.count(EventSkipped); q != 1 || s != 2 || len(e.inv.Runs()) != 1 {
		t.Fatalf("queued %d (want 1), skipped %d (want 2), runs %d (want 1)", q, s, len(e.inv.Runs()))
	}
	close(e.gate)
	mqtttest.WaitFor(t, 5*time.Second, "the queued tick runs", func() bool { return len(e.inv.Runs()) == 2 })
	mqtttest.WaitFor(t, 5*time.Second, "idle", e.b.idle)
	time.Sleep(200 * time.Millisecond)
	if n := len(e.inv.Runs()); n != 2 {
		t.Fatalf("%d runs, want 2 (at most one pending tick)", n)
	}
}

func TestNoBurstAfterJump(t *testing.T) {
	e := newCenv(t, t0, config.CronEntry{Name: "m", Schedule: "@every 1m", Handler: "echo"})
	e.step(time.Hour, true)
	mqtttest.WaitFor(t, 5*time.Second, "one run", func() bool { return len(e.inv.Runs()) >= 1 })
	time.Sleep(200 * time.Millisecond)
	if n := len(e.inv.Runs()); n != 1 {
		t.Fatalf("after a 1 h jump: %d runs, want 1 (no catch-up)", n)
	}
	if !strings.Contains(e.logs.String(), "not catching up") {
		t.Fatalf("late tick not logged:\n%s", e.logs)
	}
	e.step(time.Minute, true)
	mqtttest.WaitFor(t, 5*time.Second, "second run", func() bool { return len(e.inv.Runs()) == 2 })
}

func TestUnknownHandlerWarnsAndKeepsScheduling(t *testing.T) {
	e := newCenv(t, t0, config.CronEntry{Name: "typo-entry", Schedule: "@every 1m", Handler: "nope"})
	e.step(time.Minute, true)
	mqtttest.WaitFor(t, 5*time.Second, "rejected logged", func() bool { return e.logs.Count("cron run rejected by the invoker") == 1 })
	l := e.logs.String()
	if !strings.Contains(l, "level=WARN") || !strings.Contains(l, "entry=typo-entry") || !strings.Contains(l, `reason="unknown handler"`) {
		t.Fatalf("rejection not logged at Warn with the entry name:\n%s", l)
	}
	e.step(time.Minute, true)
	mqtttest.WaitFor(t, 5*time.Second, "second trigger", func() bool { return len(e.inv.Runs()) == 2 })
}

func TestMissedWhileBrokerDown(t *testing.T) {
	clock := newFakeClock(t0)
	logs, ev := &mqtttest.LogBuf{}, &events{}
	b, err := New(Options{Entries: []config.CronEntry{{Name: "m", Schedule: "@every 1m", Handler: "echo"}},
		BrokerURL: "tcp://" + mqtttest.FreeAddr(t), Clock: clock, Logger: logs.Logger(), OnEvent: ev.add})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	mqtttest.WaitFor(t, 5*time.Second, "loop waiting", func() bool { return clock.pending() == 1 })
	clock.Advance(time.Minute)
	mqtttest.WaitFor(t, 5*time.Second, "missed tick", func() bool { return ev.count(EventMissed) == 1 })
	if !strings.Contains(logs.String(), "missed: broker unreachable") {
		t.Fatalf("missed tick not logged:\n%s", logs)
	}
}

func TestRealClockEverySecond(t *testing.T) {
	url, _ := mqtttest.StartBroker(t, "127.0.0.1:0")
	inv := mqtttest.StartInvoker(t, url, nil)
	b, err := New(Options{Entries: []config.CronEntry{{Name: "tick", Schedule: "@every 1s", Handler: "echo", Payload: "tick"}},
		BrokerURL: url, Logger: (&mqtttest.LogBuf{}).Logger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	mqtttest.WaitFor(t, 3500*time.Millisecond, "2 triggers", func() bool { return inv.RunsOf([]byte("tick")) >= 2 })
}
