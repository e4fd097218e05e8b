package metrics

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/system"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestBrokerCollector(t *testing.T) {
	var info *system.Info
	c := NewBrokerCollector(func() *system.Info { return info })
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Fatalf("no broker yet: %d metrics, %v", n, err)
	}
	info = &system.Info{ClientsConnected: 3, MessagesReceived: 42, Retained: 7, Inflight: 2, BytesSent: 1000}
	want := `
# HELP onebox_broker_clients_connected MQTT clients connected now.
# TYPE onebox_broker_clients_connected gauge
onebox_broker_clients_connected 3
# HELP onebox_broker_messages_received_total PUBLISH packets received.
# TYPE onebox_broker_messages_received_total counter
onebox_broker_messages_received_total 42
# HELP onebox_broker_retained_messages Retained messages held.
# TYPE onebox_broker_retained_messages gauge
onebox_broker_retained_messages 7
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"onebox_broker_clients_connected", "onebox_broker_messages_received_total", "onebox_broker_retained_messages"); err != nil {
		t.Fatal(err)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(""), "nope"); err != nil {
		t.Fatal(err)
	}
	if n, _ := testutil.GatherAndCount(reg); n != len(brokerMetrics) {
		t.Fatalf("%d metrics, want %d", n, len(brokerMetrics))
	}
}

func TestServe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Serve(ctx, "127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "go_goroutines") || !strings.Contains(string(b), "process_start_time_seconds") {
		t.Fatalf("%s\n%.400s", resp.Status, b)
	}
	if r, err := http.Get("http://" + s.Addr() + "/nope"); err != nil || r.StatusCode != 404 {
		t.Fatalf("GET /nope: %v %v", r, err)
	}
	if _, err := Serve(ctx, s.Addr(), nil); err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Fatalf("second listener on %s: %v", s.Addr(), err)
	}
	cancel() // ctx ends: the listener closes
	for i := 0; i < 100; i++ {
		if _, err := http.Get("http://" + s.Addr() + "/metrics"); err != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("still serving after ctx ended")
}
