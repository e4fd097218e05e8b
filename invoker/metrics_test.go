package invoker

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/onebox-dev/onebox/internal/config"
	"github.com/onebox-dev/onebox/internal/metrics"
	"github.com/onebox-dev/onebox/invoker/container"
)

// scrape GETs /metrics and returns the value of each sample line, keyed by
// its name and labels as printed.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("Content-Type %q, want the text exposition format", ct)
	}
	b, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	line := regexp.MustCompile(`^(\S+(?:\{[^}]*\})?) (\S+)$`)
	for _, l := range strings.Split(string(b), "\n") {
		if m := line.FindStringSubmatch(l); m != nil && !strings.HasPrefix(l, "#") {
			v, err := strconv.ParseFloat(m[2], 64)
			if err == nil {
				out[m[1]] = v
			}
		}
	}
	return out
}

func TestMetricsWhileRunsGo(t *testing.T) {
	rt := &fakeRuntime{hold: make(chan struct{})}
	rt.fn = func(s container.Spec) (container.Result, error) {
		if s.Handler == "bad" {
			return container.Result{ExitCode: 3}, nil
		}
		return container.Result{}, nil
	}
	m := NewMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	srv := httptest.NewServer(metrics.HandlerFor(reg))
	defer srv.Close()
	url := srv.URL + "/metrics"

	pub := &fakePub{}
	iv := New(Options{Name: "t1", Runtime: rt, Concurrency: 8, Observer: m.Observe}, pub)
	m.Attach(iv)
	iv.SetHandlers(handlers("echo", &config.Handler{Image: "img/echo", Concurrency: 2, Queue: 5}, "bad", &config.Handler{Image: "img/bad"}))
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		iv.Shutdown(ctx)
	}()

	for i := 0; i < 3; i++ {
		iv.Handle(Trigger{Topic: "trigger/echo", Handler: "echo", Payload: []byte("x")})
	}
	iv.Handle(Trigger{Topic: "trigger/nope", Handler: "nope"})
	iv.Handle(Trigger{Topic: "trigger/nope2", Handler: "nope2"})
	waitFor(t, "two runs going", func() bool { return iv.Stats().Started == 2 })

	// While runs go: two running, one queued, two rejected as unknown handlers
	// under one label value.
	s := scrape(t, url)
	want := map[string]float64{
		`onebox_invoker_running{handler="echo"}`:                                     2,
		`onebox_invoker_queue_depth{handler="echo"}`:                                 1,
		`onebox_invoker_queue_depth{handler="bad"}`:                                  0,
		`onebox_invoker_runs_total{handler="_unknown",state="rejected"}`:             2,
		`onebox_invoker_rejected_total{handler="_unknown",reason="unknown handler"}`: 2,
		`onebox_invoker_triggers_total{outcome="received"}`:                          5,
		`onebox_invoker_concurrency_limit`:                                           8,
	}
	for k, v := range want {
		if got, ok := s[k]; !ok || got != v {
			t.Errorf("while running: %s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if _, ok := s[`onebox_invoker_runs_total{handler="echo",state="succeeded"}`]; ok {
		t.Errorf("a run counted as succeeded before any ended")
	}

	iv.Handle(Trigger{Topic: "trigger/bad", Handler: "bad"})
	close(rt.hold)
	waitFor(t, "all runs ended", func() bool { return len(pub.finals()) == 6 })

	s = scrape(t, url)
	want = map[string]float64{
		`onebox_invoker_running{handler="echo"}`:                               0,
		`onebox_invoker_queue_depth{handler="echo"}`:                           0,
		`onebox_invoker_runs_total{handler="echo",state="succeeded"}`:          3,
		`onebox_invoker_runs_total{handler="bad",state="failed"}`:              1,
		`onebox_invoker_rejected_total{handler="bad",reason="non-zero exit"}`:  1,
		`onebox_invoker_run_duration_seconds_count{handler="echo"}`:            3,
		`onebox_invoker_start_seconds_count{handler="echo"}`:                   3,
		`onebox_invoker_start_seconds_sum{handler="echo"}`:                     0.003, // the fake's StartMs is 1
		`onebox_invoker_run_duration_seconds_bucket{handler="echo",le="+Inf"}`: 3,
	}
	for k, v := range want {
		if got, ok := s[k]; !ok || got != v {
			t.Errorf("after the runs: %s = %v (present %v), want %v", k, got, ok, v)
		}
	}
}

// The process registry serves the Go runtime's metrics and whatever the parts
// register; registering the same collector twice is not an error.
func TestProcessRegistry(t *testing.T) {
	m := NewMetrics()
	if err := metrics.Register(m); err != nil {
		t.Fatal(err)
	}
	if err := metrics.Register(m); err != nil {
		t.Fatalf("registering again: %v", err)
	}
	defer metrics.Unregister(m)
	srv, err := metrics.Serve(context.Background(), "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	s := scrape(t, "http://"+srv.Addr()+"/metrics")
	if s["go_goroutines"] <= 0 {
		t.Errorf("go_goroutines missing: %v", len(s))
	}
	if _, ok := s[`onebox_invoker_triggers_total{outcome="received"}`]; ok {
		t.Errorf("an unattached Metrics has no invoker gauges")
	}
}
