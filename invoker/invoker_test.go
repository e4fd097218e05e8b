package invoker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/onebox-dev/onebox/internal/config"
	"github.com/onebox-dev/onebox/internal/record"
	"github.com/onebox-dev/onebox/invoker/container"
)

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	os.Exit(m.Run())
}

// fakeRuntime runs nothing: each run answers through fn, and can be held until
// released.
type fakeRuntime struct {
	mu      sync.Mutex
	specs   []container.Spec
	running int32
	maxRun  int32
	hold    chan struct{} // when non-nil, runs wait for it to close (or ctx)
	fn      func(container.Spec) (container.Result, error)
}

func (f *fakeRuntime) Run(ctx context.Context, s container.Spec, started func(time.Time)) (container.Result, error) {
	f.mu.Lock()
	f.specs = append(f.specs, s)
	hold := f.hold
	f.mu.Unlock()
	if f.fn != nil {
		if r, err := f.fn(s); err != nil {
			return r, err
		}
	}
	n := atomic.AddInt32(&f.running, 1)
	defer atomic.AddInt32(&f.running, -1)
	for {
		m := atomic.LoadInt32(&f.maxRun)
		if n <= m || atomic.CompareAndSwapInt32(&f.maxRun, m, n) {
			break
		}
	}
	start := time.Now()
	started(start)
	res := container.Result{StartedAt: start, Stdout: append([]byte("out:"), s.Stdin...), StdoutBytes: int64(4 + len(s.Stdin)), StartMs: 1}
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			res.TimedOut, res.ExitCode = true, 143
		}
	}
	if f.fn != nil {
		r, _ := f.fn(s)
		if r.ExitCode != 0 || r.OOMKilled || r.TimedOut {
			res.ExitCode, res.OOMKilled, res.TimedOut = r.ExitCode, r.OOMKilled, r.TimedOut
		}
	}
	res.FinishedAt = time.Now()
	return res, nil
}
func (f *fakeRuntime) Image(context.Context, string) (container.ImageInfo, error) {
	return container.ImageInfo{}, nil
}
func (f *fakeRuntime) Info(context.Context) (container.EngineInfo, error) {
	return container.EngineInfo{Name: "fake", MemoryLimit: true}, nil
}
func (f *fakeRuntime) Cleanup(context.Context, string) (int, error) { return 0, nil }
func (f *fakeRuntime) images() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, s := range f.specs {
		out = append(out, s.Image)
	}
	return out
}

type msg struct {
	topic   string
	payload []byte
}

type fakePub struct {
	mu   sync.Mutex
	msgs []msg
}

func (p *fakePub) Publish(topic string, payload []byte, _ bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.msgs = append(p.msgs, msg{topic, append([]byte(nil), payload...)})
	return nil
}

// records returns the records published for id, in order.
func (p *fakePub) records(id string) []record.Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []record.Record
	for _, m := range p.msgs {
		if m.topic == "status/"+id {
			r, _ := record.Parse(m.payload)
			out = append(out, r)
		}
	}
	return out
}

func (p *fakePub) finals() map[string]record.Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]record.Record{}
	for _, m := range p.msgs {
		if strings.HasPrefix(m.topic, "status/") {
			r, _ := record.Parse(m.payload)
			if record.Final(r.State) {
				out[r.ID] = r
			}
		}
	}
	return out
}

func (p *fakePub) index(topic string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, m := range p.msgs {
		if m.topic == topic {
			return i
		}
	}
	return -1
}

func handlers(kv ...any) map[string]*config.Handler {
	m := map[string]*config.Handler{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1].(*config.Handler)
	}
	for _, h := range m {
		o := config.Options{Handlers: map[string]*config.Handler{"x": h}}
		o.ApplyDefaults()
	}
	return m
}

func newTest(t *testing.T, rt *fakeRuntime, conc int, hs map[string]*config.Handler) (*Invoker, *fakePub) {
	t.Helper()
	pub := &fakePub{}
	iv := New(Options{Name: "t1", Runtime: rt, Concurrency: conc}, pub)
	iv.SetHandlers(hs)
	t.Cleanup(func() {
		if rt.hold != nil {
			select {
			case <-rt.hold:
			default:
				close(rt.hold)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		iv.Shutdown(ctx)
	})
	return iv, pub
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestRunPublishesRecordsAndResultInOrder(t *testing.T) {
	rt := &fakeRuntime{}
	iv, pub := newTest(t, rt, 2, handlers("echo", &config.Handler{Image: "img/echo", Env: map[string]string{"A": "1"}}))
	var acks int32
	iv.Handle(Trigger{Topic: "trigger/echo/my1", Handler: "echo", ID: "my1", Payload: []byte("hi"), Ack: func() { atomic.AddInt32(&acks, 1) }})
	waitFor(t, "final record", func() bool { return len(pub.finals()) == 1 })
	recs := pub.records("my1")
	var states []string
	for _, r := range recs {
		states = append(states, r.State)
	}
	if got := strings.Join(states, ","); got != "queued,running,succeeded" {
		t.Fatalf("states = %s", got)
	}
	final := recs[2]
	if final.Image != "img/echo" || final.Source != "mqtt" || final.Invoker != "t1" || final.ExitCode == nil || *final.ExitCode != 0 || final.StdoutBytes != 6 {
		t.Fatalf("final record = %+v", final)
	}
	if ri, si := pub.index("result/my1"), len(pub.msgs)-1; ri < 0 || ri > si {
		t.Fatalf("result published at %d, want before the final record", ri)
	}
	if string(pub.msgs[pub.index("result/my1")].payload) != "out:hi" {
		t.Fatalf("result payload %q", pub.msgs[pub.index("result/my1")].payload)
	}
	waitFor(t, "ack", func() bool { return atomic.LoadInt32(&acks) == 1 })
	env := strings.Join(rt.specs[0].Env, " ")
	for _, want := range []string{"ONEBOX_ID=my1", "ONEBOX_HANDLER=echo", "ONEBOX_TOPIC=trigger/echo/my1", "A=1"} {
		if !strings.Contains(env, want) {
			t.Errorf("env %q lacks %s", env, want)
		}
	}
	if s := rt.specs[0]; s.MemoryBytes != config.DefaultMemory || s.Timeout != config.DefaultTimeout || s.Network != "none" || s.PidsLimit != config.DefaultPids {
		t.Errorf("spec defaults wrong: %+v", s)
	}
}

func TestUnknownHandlerRejectedWithoutRun(t *testing.T) {
	rt := &fakeRuntime{}
	iv, pub := newTest(t, rt, 2, handlers("echo", &config.Handler{Image: "img/echo"}))
	acked := false
	iv.Handle(Trigger{Topic: "trigger/nope/x1", Handler: "nope", ID: "x1", Ack: func() { acked = true }})
	f := pub.finals()["x1"]
	if f.State != record.Rejected || f.Reason != record.ReasonUnknownHandler || !acked {
		t.Fatalf("record %+v acked=%v", f, acked)
	}
	if len(rt.images()) != 0 {
		t.Fatalf("a container ran for an unknown handler")
	}
	if pub.index("result/x1") >= 0 {
		t.Fatalf("a rejected run published a result")
	}
}

func TestConcurrencyQueueAndBusy(t *testing.T) {
	rt := &fakeRuntime{hold: make(chan struct{})}
	iv, pub := newTest(t, rt, 8, handlers("slow", &config.Handler{Image: "img/slow", Concurrency: 4, Queue: 20}))
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			iv.Handle(Trigger{Topic: "trigger/slow", Handler: "slow", ID: fmt.Sprintf("r%02d", i)})
		}(i)
	}
	wg.Wait()
	waitFor(t, "4 running", func() bool { return atomic.LoadInt32(&rt.running) == 4 })
	busy := 0
	for _, r := range pub.finals() {
		if r.State == record.Rejected && r.Reason == record.ReasonBusy {
			busy++
		}
	}
	if busy != 26 {
		t.Fatalf("busy rejections = %d, want 26 (50 - 4 running - 20 queued)", busy)
	}
	close(rt.hold)
	waitFor(t, "all finals", func() bool { return len(pub.finals()) == 50 })
	ok := 0
	for _, r := range pub.finals() {
		if r.State == record.Succeeded {
			ok++
		}
	}
	if ok != 24 || atomic.LoadInt32(&rt.maxRun) != 4 {
		t.Fatalf("succeeded=%d maxRunning=%d, want 24 and 4", ok, rt.maxRun)
	}
}

func TestGlobalLimitAcrossHandlersAndArrivalOrder(t *testing.T) {
	rt := &fakeRuntime{hold: make(chan struct{})}
	iv, pub := newTest(t, rt, 1, handlers("a", &config.Handler{Image: "a", Concurrency: 4}, "b", &config.Handler{Image: "b", Concurrency: 4}))
	for i, h := range []string{"a", "b", "a", "b", "b", "a"} {
		iv.Handle(Trigger{Handler: h, ID: fmt.Sprintf("%s%d", h, i)})
	}
	waitFor(t, "1 running", func() bool { return atomic.LoadInt32(&rt.running) == 1 })
	time.Sleep(20 * time.Millisecond)
	if n := atomic.LoadInt32(&rt.running); n != 1 {
		t.Fatalf("running = %d with a global limit of 1", n)
	}
	close(rt.hold)
	waitFor(t, "all done", func() bool { return len(pub.finals()) == 6 })
	got := strings.Join(rt.images(), "")
	if got != "ababba" {
		t.Fatalf("start order %s, want arrival order ababba", got)
	}
}

func TestRedeliveryRunsOnce(t *testing.T) {
	rt := &fakeRuntime{}
	iv, pub := newTest(t, rt, 2, handlers("echo", &config.Handler{Image: "e"}))
	var acks int32
	ack := func() { atomic.AddInt32(&acks, 1) }
	iv.Handle(Trigger{Topic: "trigger/echo/same", Handler: "echo", ID: "same", Ack: ack})
	waitFor(t, "first run", func() bool { return len(pub.finals()) == 1 })
	// The same id again (a redelivery): dropped, and acknowledged.
	iv.Handle(Trigger{Topic: "trigger/echo/same", Handler: "echo", ID: "same", Duplicate: true, Ack: ack})
	// Without an id: packet 7 runs once; its DUP copies are dropped...
	iv.Handle(Trigger{Topic: "trigger/echo", Handler: "echo", MessageID: 7, Payload: []byte("p"), Ack: ack})
	waitFor(t, "second run", func() bool { return len(pub.finals()) == 2 })
	iv.Handle(Trigger{Topic: "trigger/echo", Handler: "echo", MessageID: 7, Payload: []byte("p"), Duplicate: true, Ack: ack})
	iv.Handle(Trigger{Topic: "trigger/echo", Handler: "echo", MessageID: 7, Payload: []byte("p"), Duplicate: true, Ack: ack})
	// ...a new message that reuses packet id 7 (no DUP) runs, and so does
	// a fresh message that happens to carry DUP.
	iv.Handle(Trigger{Topic: "trigger/echo", Handler: "echo", MessageID: 7, Payload: []byte("p"), Ack: ack})
	iv.Handle(Trigger{Topic: "trigger/echo", Handler: "echo", MessageID: 9, Payload: []byte("q"), Duplicate: true, Ack: ack})
	waitFor(t, "acks", func() bool { return atomic.LoadInt32(&acks) == 7 })
	time.Sleep(20 * time.Millisecond)
	if n := len(rt.images()); n != 4 {
		t.Fatalf("runs = %d, want 4 (id once, packet 7 once, its reuse once, packet 9 once)", n)
	}
	if st := iv.Stats(); st.Duplicates != 3 {
		t.Fatalf("duplicates = %d, want 3", st.Duplicates)
	}
}

func TestRedeliveryWhileRunningIsNotAcked(t *testing.T) {
	rt := &fakeRuntime{hold: make(chan struct{})}
	iv, pub := newTest(t, rt, 2, handlers("echo", &config.Handler{Image: "e"}))
	var first, second int32
	iv.Handle(Trigger{Handler: "echo", ID: "x", Ack: func() { atomic.AddInt32(&first, 1) }})
	waitFor(t, "running", func() bool { return atomic.LoadInt32(&rt.running) == 1 })
	iv.Handle(Trigger{Handler: "echo", ID: "x", Duplicate: true, Ack: func() { atomic.AddInt32(&second, 1) }})
	if atomic.LoadInt32(&second) != 0 {
		t.Fatal("a redelivery of a run still going was acknowledged: a crash now would lose the trigger")
	}
	close(rt.hold)
	waitFor(t, "final", func() bool { return len(pub.finals()) == 1 })
	waitFor(t, "ack", func() bool { return atomic.LoadInt32(&first) == 1 })
	if len(rt.images()) != 1 {
		t.Fatalf("ran %d times", len(rt.images()))
	}
}

func TestHotSwapImage(t *testing.T) {
	rt := &fakeRuntime{}
	iv, pub := newTest(t, rt, 2, handlers("hello", &config.Handler{Image: "onebox/hello"}))
	iv.Handle(Trigger{Handler: "hello", ID: "one"})
	waitFor(t, "one", func() bool { return len(pub.finals()) == 1 })
	iv.SetHandlers(handlers("hello", &config.Handler{Image: "onebox/goodbye"}))
	iv.Handle(Trigger{Handler: "hello", ID: "two"})
	waitFor(t, "two", func() bool { return len(pub.finals()) == 2 })
	if got := strings.Join(rt.images(), ","); got != "onebox/hello,onebox/goodbye" {
		t.Fatalf("images = %s", got)
	}
	if pub.finals()["two"].Image != "onebox/goodbye" {
		t.Fatalf("record image = %q", pub.finals()["two"].Image)
	}
}

func TestFinalStates(t *testing.T) {
	rt := &fakeRuntime{fn: func(s container.Spec) (container.Result, error) {
		switch s.Handler {
		case "fail":
			return container.Result{ExitCode: 3}, nil
		case "oom":
			return container.Result{ExitCode: 137, OOMKilled: true}, nil
		case "kill":
			return container.Result{ExitCode: 137}, nil
		case "slow":
			return container.Result{TimedOut: true, ExitCode: 137}, nil
		case "missing":
			return container.Result{}, fmt.Errorf("%w: image \"nope\"", container.ErrImageMissing)
		case "arch":
			return container.Result{}, fmt.Errorf("%w: arm64 on amd64", container.ErrWrongPlatform)
		}
		return container.Result{}, nil
	}}
	names := []string{"fail", "oom", "kill", "slow", "missing", "arch"}
	hs := map[string]*config.Handler{}
	for _, n := range names {
		hs[n] = &config.Handler{Image: n}
	}
	iv, pub := newTest(t, rt, 8, handlers())
	iv.SetHandlers(func() map[string]*config.Handler {
		o := config.Options{Handlers: hs}
		o.ApplyDefaults()
		return o.Handlers
	}())
	for _, n := range names {
		iv.Handle(Trigger{Handler: n, ID: n})
	}
	waitFor(t, "finals", func() bool { return len(pub.finals()) == len(names) })
	want := map[string]string{
		"fail": "failed/non-zero exit", "oom": "failed/oom", "kill": "failed/non-zero exit",
		"slow": "timeout/", "missing": "failed/image missing", "arch": "failed/wrong platform",
	}
	for n, w := range want {
		r := pub.finals()[n]
		if got := r.State + "/" + r.Reason; got != w {
			t.Errorf("%s: %s, want %s (%+v)", n, got, w, r)
		}
	}
	if pub.index("result/missing") >= 0 {
		t.Errorf("a run that never started published a result")
	}
	if r := pub.finals()["missing"]; !strings.Contains(r.Error, "nope") {
		t.Errorf("image-missing record does not name the image: %q", r.Error)
	}
}

func TestSourceFromIDPrefix(t *testing.T) {
	for id, want := range map[string]string{"http-1": "http", "file-x": "file", "cron-2": "cron", "my1": "mqtt", "httpx": "mqtt"} {
		if got := SourceOf(id); got != want {
			t.Errorf("SourceOf(%q) = %q, want %q", id, got, want)
		}
	}
}

func TestShutdownLeavesQueuedToBrokerAndStopsRuns(t *testing.T) {
	rt := &fakeRuntime{hold: make(chan struct{})}
	pub := &fakePub{}
	iv := New(Options{Name: "t1", Runtime: rt, Concurrency: 1}, pub)
	iv.SetHandlers(handlers("s", &config.Handler{Image: "s", Concurrency: 1}))
	var acked [3]int32
	for i := 0; i < 3; i++ {
		i := i
		iv.Handle(Trigger{Handler: "s", ID: fmt.Sprint("j", i), Ack: func() { atomic.AddInt32(&acked[i], 1) }})
	}
	waitFor(t, "running", func() bool { return atomic.LoadInt32(&rt.running) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := iv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	r := pub.finals()["j0"]
	if r.State != record.Failed || r.Reason != record.ReasonShutdown {
		t.Fatalf("run stopped at shutdown: %+v", r)
	}
	if acked[0] != 1 || acked[1] != 0 || acked[2] != 0 {
		t.Fatalf("acks = %v: the stopped run is acked, queued ones are left to the broker", acked)
	}
	if err := iv.Handle(Trigger{Handler: "s", ID: "late"}); err != ErrClosed {
		t.Fatalf("Handle after shutdown = %v", err)
	}
	if len(rt.images()) != 1 {
		t.Fatalf("queued triggers ran during shutdown")
	}
}

func TestDedupeWindowBounded(t *testing.T) {
	now := time.Unix(0, 0)
	d := newDedupe(3, time.Minute, func() time.Time { return now })
	for _, k := range []string{"a", "b", "c", "d"} {
		d.add(k)
		d.finish(k)
	}
	if d.len() != 3 {
		t.Fatalf("len = %d, want 3 (count bound)", d.len())
	}
	if ok, _ := d.add("a"); !ok {
		t.Fatalf("oldest id was not evicted by the count bound")
	}
	if ok, _ := d.add("d"); ok {
		t.Fatalf("recent id was forgotten")
	}
	now = now.Add(2 * time.Minute)
	if ok, _ := d.add("d"); !ok {
		t.Fatalf("id older than the window still blocks a run")
	}
}

// An id published again (not the broker's DUP redelivery) is not run twice, and
// the invoker says why at info level; a DUP redelivery stays quiet (debug).
func TestReusedIDIsLoggedNotRun(t *testing.T) {
	rt := &fakeRuntime{}
	var logs syncBuf
	pub := &fakePub{}
	iv := New(Options{Name: "t1", Runtime: rt, Concurrency: 2, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, pub)
	iv.SetHandlers(handlers("echo", &config.Handler{Image: "e"}))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		iv.Shutdown(ctx)
	})
	iv.Handle(Trigger{Topic: "trigger/echo/my1", Handler: "echo", ID: "my1"})
	waitFor(t, "first run", func() bool { return len(pub.finals()) == 1 })
	iv.Handle(Trigger{Topic: "trigger/echo/my1", Handler: "echo", ID: "my1", Duplicate: true})
	if strings.Contains(logs.String(), "already used") {
		t.Errorf("a DUP redelivery was logged at info level: %s", logs.String())
	}
	iv.Handle(Trigger{Topic: "trigger/echo/my1", Handler: "echo", ID: "my1"})
	time.Sleep(20 * time.Millisecond)
	if n := len(rt.images()); n != 1 {
		t.Fatalf("runs = %d, want 1", n)
	}
	if l := logs.String(); !strings.Contains(l, "already used") || !strings.Contains(l, "id=my1") {
		t.Fatalf("the reused id was not logged: %s", l)
	}
}
