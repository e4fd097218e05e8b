// Package mqtttest is for tests only: an in-process MQTT broker (mochi-mqtt,
// allow-all) and a fake invoker that speaks onebox's topics, answering
// trigger/<handler>[/<id>] the way the real invoker does (status queued,
// running, result, final status). It also has a log buffer to assert on and a
// polling WaitFor. Production code must not import it.
package mqtttest

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/onebox-dev/onebox/internal/record"
	"github.com/onebox-dev/onebox/internal/topics"
)

// StartBroker runs a broker on addr ("127.0.0.1:0" for any port) and returns
// its tcp:// URL and a func that stops it (also called at cleanup; idempotent).
func StartBroker(t testing.TB, addr string) (string, func()) {
	t.Helper()
	srv := mochi.New(&mochi.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "t", Address: addr})
	if err := srv.AddListener(l); err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve() }()
	var once sync.Once
	stop := func() { once.Do(func() { _ = srv.Close() }) }
	t.Cleanup(stop)
	return "tcp://" + l.Address(), stop
}

// FreeAddr returns a 127.0.0.1 address nothing listens on (yet).
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

// Behavior is how the fake invoker treats one handler. The zero value runs at
// once and succeeds.
type Behavior struct {
	Delay  time.Duration // sleep before answering the result
	Exit   int           // exit code; non-zero ends the run failed
	Reject string        // reason: answer a rejected record without running
	Gate   chan struct{} // when set, the run ends when it is closed
	Silent bool          // never answer
}

// Run is one distinct trigger the fake invoker received.
type Run struct {
	Handler, ID string
	Payload     []byte
}

// Invoker is a fake invoker: an MQTT client subscribed to the trigger topics
// that records each distinct run and answers it as its Behavior says. The
// result payload is the trigger payload upper-cased.
type Invoker struct {
	c      mqtt.Client
	behave func(handler string) Behavior

	mu   sync.Mutex
	runs []Run
	seen map[string]bool
	dups int
}

// StartInvoker connects a fake invoker to the broker at url; behave (nil: the
// zero Behavior for every handler) picks how each handler is answered. It is
// disconnected at cleanup.
func StartInvoker(t testing.TB, url string, behave func(handler string) Behavior) *Invoker {
	t.Helper()
	if behave == nil {
		behave = func(string) Behavior { return Behavior{} }
	}
	f := &Invoker{behave: behave, seen: map[string]bool{}}
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID("fake-invoker-" + topics.NewID()).
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(100 * time.Millisecond).SetOrderMatters(false)
	o.SetOnConnectHandler(func(c mqtt.Client) {
		c.SubscribeMultiple(map[string]byte{topics.TriggerFilter: 1, topics.TriggerIDFilter: 1}, func(_ mqtt.Client, m mqtt.Message) {
			if m.Retained() {
				return
			}
			go f.handle(m.Topic(), append([]byte(nil), m.Payload()...))
		}).WaitTimeout(5 * time.Second)
	})
	f.c = mqtt.NewClient(o)
	if !f.c.Connect().WaitTimeout(5*time.Second) || !f.c.IsConnectionOpen() {
		t.Fatal("fake invoker: cannot connect")
	}
	t.Cleanup(func() { f.c.Disconnect(100) })
	return f
}

func (f *Invoker) pub(topic string, b []byte) {
	f.c.Publish(topic, 1, false, b).WaitTimeout(5 * time.Second)
}

func (f *Invoker) handle(topic string, payload []byte) {
	h, id, err := topics.ParseTrigger(topic)
	if err != nil {
		return
	}
	if id == "" {
		id = topics.NewID()
	}
	f.mu.Lock()
	if f.seen[id] {
		f.dups++
		f.mu.Unlock()
		return
	}
	f.seen[id] = true
	f.runs = append(f.runs, Run{h, id, payload})
	f.mu.Unlock()

	src := record.SourceMQTT
	switch {
	case strings.HasPrefix(id, "file-"):
		src = record.SourceFile
	case strings.HasPrefix(id, "cron-"):
		src = record.SourceCron
	}
	bh := f.behave(h)
	if bh.Silent {
		return
	}
	now := time.Now()
	rec := record.Record{ID: id, Handler: h, Image: "fake/" + h, Source: src, State: record.Queued, QueuedAt: record.TimePtr(now), Invoker: "fake"}
	f.pub(topics.Status(id), rec.Marshal())
	if bh.Reject != "" {
		rec.State, rec.Reason, rec.FinishedAt = record.Rejected, bh.Reject, record.TimePtr(time.Now())
		f.pub(topics.Status(id), rec.Marshal())
		return
	}
	rec.State, rec.StartedAt = record.Running, record.TimePtr(time.Now())
	f.pub(topics.Status(id), rec.Marshal())
	if bh.Gate != nil {
		<-bh.Gate
	}
	time.Sleep(bh.Delay)
	out := bytes.ToUpper(payload)
	f.pub(topics.Result(id), out)
	rec.FinishedAt = record.TimePtr(time.Now())
	rec.ExitCode = record.IntPtr(bh.Exit)
	rec.StdoutBytes = int64(len(out))
	rec.State = record.Succeeded
	if bh.Exit != 0 {
		rec.State, rec.Reason = record.Failed, record.ReasonExit
	}
	f.pub(topics.Status(id), rec.Marshal())
}

// Runs returns a copy of the distinct runs received so far, in arrival order.
func (f *Invoker) Runs() []Run {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Run(nil), f.runs...)
}

// RunsOf counts the distinct runs whose payload is p.
func (f *Invoker) RunsOf(p []byte) int {
	n := 0
	for _, r := range f.Runs() {
		if bytes.Equal(r.Payload, p) {
			n++
		}
	}
	return n
}

// Dups counts the triggers ignored because their id was already seen.
func (f *Invoker) Dups() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dups
}

// LogBuf collects log lines for assertions; the zero value is ready to use.
type LogBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LogBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LogBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Count counts the occurrences of sub in what was logged so far.
func (l *LogBuf) Count(sub string) int { return strings.Count(l.String(), sub) }

// Logger returns a debug-level text logger writing into l.
func (l *LogBuf) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// WaitFor polls cond every 20ms until it holds or d passes, then fails t.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
