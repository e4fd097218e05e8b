package httpbridge

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"github.com/onebox-dev/onebox/internal/mqttc"
	"github.com/onebox-dev/onebox/internal/record"
	"github.com/onebox-dev/onebox/internal/state"
	"github.com/onebox-dev/onebox/internal/topics"
)

const testMaxPacket = 1 << 20

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return quiet
}

// testBroker is an in-process mochi-mqtt broker with allow-all auth and the
// broker's 1 MiB packet limit.
type testBroker struct {
	srv  *mochi.Server
	addr string
	once sync.Once
}

func startBroker(t *testing.T, addr string) *testBroker {
	t.Helper()
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = testMaxPacket
	s := mochi.New(&mochi.Options{Capabilities: caps, Logger: quiet})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})
	var err error
	for i := 0; i < 50; i++ { // a restart on the same port may race the old socket
		if err = s.AddListener(l); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("broker listener: %v", err)
	}
	go func() { _ = s.Serve() }()
	b := &testBroker{srv: s, addr: l.Address()}
	t.Cleanup(b.stop)
	return b
}

func (b *testBroker) url() string { return "tcp://" + b.addr }
func (b *testBroker) stop()       { b.once.Do(func() { _ = b.srv.Close() }) }

// fakeInvoker stands in for the invoker: it serves trigger/+/+ and answers by
// handler name, as the real one would on status/<id> and result/<id>.
type fakeInvoker struct {
	t        *testing.T
	c        mqtt.Client
	handlers []state.HandlerInfo

	mu       sync.Mutex
	triggers []string // topics received
	payloads map[string][]byte
	finished map[string]bool // ids whose last message was published
}

var fakeHandlers = []state.HandlerInfo{
	{Name: "echo", Image: "fake/echo", TimeoutMs: 5000},
	{Name: "rev", Image: "fake/rev", TimeoutMs: 5000},
	{Name: "fail", Image: "fake/fail", TimeoutMs: 5000},
	{Name: "slow", Image: "fake/slow", TimeoutMs: 1000}, // runs 2.5s, then "times out"
	{Name: "sleepy", Image: "fake/sleepy", TimeoutMs: 4000},
	{Name: "late", Image: "fake/late", TimeoutMs: 5000},
	{Name: "busy", Image: "fake/busy", TimeoutMs: 5000},
	{Name: "big", Image: "fake/big", TimeoutMs: 5000},
	{Name: "oops", Image: "fake/oops", TimeoutMs: 5000},
}

func startFake(t *testing.T, brokerURL string) *fakeInvoker {
	t.Helper()
	f := &fakeInvoker{t: t, handlers: fakeHandlers, payloads: map[string][]byte{}, finished: map[string]bool{}}
	f.c = mqttc.New(mqttc.Options{
		URL:          brokerURL,
		ClientID:     "fake-invoker-" + strconv.FormatInt(time.Now().UnixNano(), 36),
		CleanSession: true,
		Will:         &mqttc.Will{Topic: topics.InvokerState("fake"), Payload: state.Marshal(state.Invoker{Invoker: "fake", State: state.Offline}), Retained: true},
		Logger:       quiet,
		OnConnect: func(c mqtt.Client) {
			_ = mqttc.Wait(c.Subscribe(topics.TriggerIDFilter, 1, f.onTrigger), 5*time.Second)
			_ = mqttc.Wait(c.Publish(topics.HandlersTopic, 1, true, state.Marshal(state.Handlers{Invoker: "fake", At: time.Now(), Handlers: f.handlers})), 5*time.Second)
			f.setState(state.Online)
		},
	})
	if err := mqttc.Wait(f.c.Connect(), 5*time.Second); err != nil {
		t.Fatalf("fake invoker: %v", err)
	}
	t.Cleanup(func() { f.c.Disconnect(50) })
	return f
}

func (f *fakeInvoker) setState(s string) {
	_ = mqttc.Wait(f.c.Publish(topics.InvokerState("fake"), 1, true, state.Marshal(state.Invoker{Invoker: "fake", State: s, At: time.Now()})), 5*time.Second)
}

func (f *fakeInvoker) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.triggers)
}

func (f *fakeInvoker) topicsSeen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.triggers...)
}

func (f *fakeInvoker) payload(id string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.payloads[id]
}

func (f *fakeInvoker) done(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.finished[id]
}

func (f *fakeInvoker) onTrigger(_ mqtt.Client, m mqtt.Message) {
	h, id, err := topics.ParseTrigger(m.Topic())
	if err != nil {
		f.t.Errorf("fake invoker got a bad trigger topic %q: %v", m.Topic(), err)
		return
	}
	p := append([]byte{}, m.Payload()...) // non-nil: an empty stdout is still published
	f.mu.Lock()
	f.triggers = append(f.triggers, m.Topic())
	f.payloads[id] = p
	f.mu.Unlock()
	go f.answer(h, id, p) // never block in a paho handler
}

func (f *fakeInvoker) pub(topic string, b []byte) {
	// An answer may still be going out when its test has ended and the broker is
	// gone (a slow handler's): a failed publish is not the test's to report, and
	// t.Errorf after the end would panic. The tests assert on what arrives.
	_ = mqttc.Wait(f.c.Publish(topic, 1, false, b), 5*time.Second)
}

func (f *fakeInvoker) answer(h, id string, p []byte) {
	defer func() {
		f.mu.Lock()
		f.finished[id] = true
		f.mu.Unlock()
	}()
	src := record.SourceMQTT
	if strings.HasPrefix(id, "http-") {
		src = record.SourceHTTP
	}
	now := time.Now()
	rec := record.Record{ID: id, Handler: h, Image: "fake/" + h, Source: src, Invoker: "fake", QueuedAt: record.TimePtr(now)}
	status := func(state string) {
		rec.State = state
		f.pub(topics.Status(id), rec.Marshal())
	}
	reject := func(reason string) {
		rec.Reason = reason
		status(record.Rejected)
	}
	start := func() {
		status(record.Queued)
		rec.StartedAt = record.TimePtr(time.Now())
		status(record.Running)
	}
	end := func(state string, exit *int, out []byte) {
		rec.FinishedAt = record.TimePtr(time.Now())
		rec.DurationMs = max(1, rec.FinishedAt.Sub(*rec.StartedAt).Milliseconds())
		rec.ExitCode = exit
		rec.StdoutBytes = int64(len(out))
		if out != nil {
			f.pub(topics.Result(id), out)
		}
		status(state)
	}
	switch h {
	case "echo":
		start()
		end(record.Succeeded, record.IntPtr(0), p)
	case "rev":
		start()
		r := make([]byte, len(p))
		for i := range p {
			r[len(p)-1-i] = p[i]
		}
		end(record.Succeeded, record.IntPtr(0), r)
	case "fail":
		start()
		rec.Reason = record.ReasonExit
		end(record.Failed, record.IntPtr(3), []byte("partial output\n"))
	case "slow":
		start()
		time.Sleep(2500 * time.Millisecond)
		end(record.Timeout, nil, []byte("cut short"))
	case "sleepy":
		start()
		time.Sleep(2 * time.Second)
		end(record.Succeeded, record.IntPtr(0), []byte("slept"))
	case "late": // the final status first, stdout after it
		start()
		rec.FinishedAt = record.TimePtr(time.Now())
		rec.ExitCode = record.IntPtr(0)
		rec.StdoutBytes = int64(len("late result"))
		status(record.Succeeded)
		time.Sleep(300 * time.Millisecond)
		f.pub(topics.Result(id), []byte("late result"))
	case "busy":
		reject(record.ReasonBusy)
	case "big":
		reject(record.ReasonTooLarge)
	case "oops":
		status(record.Queued)
		rec.Reason, rec.Error = record.ReasonImageMissing, "no such image: fake/oops"
		rec.FinishedAt = record.TimePtr(time.Now())
		status(record.Failed)
	default:
		reject(record.ReasonUnknownHandler)
	}
}

// env is one broker, optionally the fake invoker, and a started bridge.
type env struct {
	broker *testBroker
	fake   *fakeInvoker
	b      *Bridge
	base   string // http://127.0.0.1:port
}

func newEnv(t *testing.T, withFake bool, mod func(*Options)) *env {
	t.Helper()
	e := &env{broker: startBroker(t, "127.0.0.1:0")}
	if withFake {
		e.fake = startFake(t, e.broker.url())
	}
	o := Options{
		Listen:         "127.0.0.1:0",
		BrokerURL:      e.broker.url(),
		DefaultHandler: "echo",
		MaxBody:        testMaxPacket,
		Margin:         500 * time.Millisecond,
		DefaultTimeout: 2 * time.Second,
		Logger:         testLogger(t),
	}
	if mod != nil {
		mod(&o)
	}
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	e.start(t, b)
	if withFake {
		e.waitHealth(t, http.StatusOK, 5*time.Second)
	}
	return e
}

func (e *env) start(t *testing.T, b *Bridge) {
	t.Helper()
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	e.b, e.base = b, "http://"+b.Addr()
}

// waitHealth polls /healthz until it answers want.
func (e *env) waitHealth(t *testing.T, want int, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for {
		code, body := get(t, e.base+"/healthz")
		if code == want {
			return body
		}
		last = strconv.Itoa(code) + " " + body
		if time.Now().After(deadline) {
			t.Fatalf("/healthz did not answer %d within %s; last: %s", want, within, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// curlResult is what curl got.
type curlResult struct {
	code   int
	header http.Header
	body   []byte
	exit   int           // curl's exit code (28: timed out)
	took   time.Duration // curl's time_total
}

// curl runs the real curl with args and the URL last.
func curl(t *testing.T, url string, args ...string) curlResult {
	t.Helper()
	dir := t.TempDir()
	bodyF, hdrF := filepath.Join(dir, "body"), filepath.Join(dir, "headers")
	all := append([]string{"-sS", "--path-as-is", "-o", bodyF, "-D", hdrF, "-w", "%{http_code} %{time_total}"}, args...)
	all = append(all, url)
	cmd := exec.Command("curl", all...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := curlResult{header: http.Header{}}
	if ee, ok := err.(*exec.ExitError); ok {
		r.exit = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("curl: %v", err)
	}
	// took is curl's own time_total: the answer's latency, not curl's start-up.
	code, secs, _ := strings.Cut(strings.TrimSpace(out.String()), " ")
	r.code, _ = strconv.Atoi(code)
	if f, err := strconv.ParseFloat(secs, 64); err == nil {
		r.took = time.Duration(f * float64(time.Second))
	}
	r.body, _ = os.ReadFile(bodyF)
	hb, _ := os.ReadFile(hdrF)
	for _, line := range strings.Split(string(hb), "\n") {
		if k, v, ok := strings.Cut(strings.TrimRight(line, "\r"), ":"); ok && !strings.HasPrefix(k, "HTTP/") {
			r.header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
		}
	}
	return r
}

// freeAddr returns a 127.0.0.1 address nobody listens on (now).
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	_ = l.Close()
	return a
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
