package filebridge

// Test helpers: an in-process MQTT broker (mochi-mqtt, allow-all) and a fake
// invoker that answers triggers the way the real one does (status queued,
// running, result, final). Kept in sync with bridges/cron/mqtt_test.go.

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

// startBroker runs a broker on addr ("127.0.0.1:0" for any port) and returns
// its tcp:// URL.
func startBroker(t *testing.T, addr string) (string, func()) {
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

// freeAddr returns a 127.0.0.1 address nothing listens on (yet).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

// behavior is how the fake invoker treats one handler.
type behavior struct {
	delay  time.Duration
	exit   int
	reject string        // reason: answer a rejected record without running
	gate   chan struct{} // when set, the run ends when it is closed
	silent bool          // never answer
}

type run struct {
	handler, id string
	payload     []byte
}

type fakeInvoker struct {
	t      *testing.T
	c      mqtt.Client
	behave func(handler string) behavior

	mu   sync.Mutex
	runs []run
	seen map[string]bool
	dups int
}

func startInvoker(t *testing.T, url string, behave func(string) behavior) *fakeInvoker {
	t.Helper()
	if behave == nil {
		behave = func(string) behavior { return behavior{} }
	}
	f := &fakeInvoker{t: t, behave: behave, seen: map[string]bool{}}
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

func (f *fakeInvoker) pub(topic string, b []byte) {
	f.c.Publish(topic, 1, false, b).WaitTimeout(5 * time.Second)
}

func (f *fakeInvoker) handle(topic string, payload []byte) {
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
	f.runs = append(f.runs, run{h, id, payload})
	f.mu.Unlock()

	src := record.SourceMQTT
	switch {
	case strings.HasPrefix(id, "file-"):
		src = record.SourceFile
	case strings.HasPrefix(id, "cron-"):
		src = record.SourceCron
	}
	bh := f.behave(h)
	if bh.silent {
		return
	}
	now := time.Now()
	rec := record.Record{ID: id, Handler: h, Image: "fake/" + h, Source: src, State: record.Queued, QueuedAt: record.TimePtr(now), Invoker: "fake"}
	f.pub(topics.Status(id), rec.Marshal())
	if bh.reject != "" {
		rec.State, rec.Reason, rec.FinishedAt = record.Rejected, bh.reject, record.TimePtr(time.Now())
		f.pub(topics.Status(id), rec.Marshal())
		return
	}
	rec.State, rec.StartedAt = record.Running, record.TimePtr(time.Now())
	f.pub(topics.Status(id), rec.Marshal())
	if bh.gate != nil {
		<-bh.gate
	}
	time.Sleep(bh.delay)
	out := bytes.ToUpper(payload)
	f.pub(topics.Result(id), out)
	rec.FinishedAt = record.TimePtr(time.Now())
	rec.ExitCode = record.IntPtr(bh.exit)
	rec.StdoutBytes = int64(len(out))
	rec.State = record.Succeeded
	if bh.exit != 0 {
		rec.State, rec.Reason = record.Failed, record.ReasonExit
	}
	f.pub(topics.Status(id), rec.Marshal())
}

func (f *fakeInvoker) Runs() []run {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]run(nil), f.runs...)
}

// runsOf counts the distinct runs whose payload is p.
func (f *fakeInvoker) runsOf(p []byte) int {
	n := 0
	for _, r := range f.Runs() {
		if bytes.Equal(r.payload, p) {
			n++
		}
	}
	return n
}

// logBuf collects log lines for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) count(sub string) int { return strings.Count(l.String(), sub) }

func (l *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitFor polls cond every 20ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
