package invoker

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/onebox-dev/onebox/broker"
	"github.com/onebox-dev/onebox/internal/config"
	"github.com/onebox-dev/onebox/internal/mqttc"
	"github.com/onebox-dev/onebox/internal/state"
	"github.com/onebox-dev/onebox/internal/topics"
	"github.com/onebox-dev/onebox/invoker/container"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// noMemcgRuntime is a fakeRuntime on an engine whose memory cgroup is off.
type noMemcgRuntime struct{ fakeRuntime }

func (f *noMemcgRuntime) Info(context.Context) (container.EngineInfo, error) {
	return container.EngineInfo{Name: "fake", Version: "1", OS: "linux", Architecture: "arm", MemoryLimit: false}, nil
}

// The memory cgroup off case is found at start and told in the retained
// onebox/invoker/<name> state (and the log).
func TestStartReportsMemoryCgroupOff(t *testing.T) {
	b, err := broker.New(broker.Options{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	name := "memcg-" + topics.NewID()[:6]
	var logs syncBuf
	log := slog.New(slog.NewTextHandler(&logs, nil))
	s, err := Start(ctx, Options{Name: name, Runtime: &noMemcgRuntime{}, Logger: log}, MQTTOptions{URL: b.URL()},
		map[string]*config.Handler{"echo": {Image: "x"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())

	got := make(chan []byte, 4)
	c, err := mqttc.Connect(ctx, mqttc.Options{URL: b.URL(), ClientID: "memcg-watch", CleanSession: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(0)
	c.Subscribe(topics.InvokerState(name), 1, func(_ mqtt.Client, m mqtt.Message) {
		if m.Retained() {
			got <- append([]byte(nil), m.Payload()...)
		}
	}).Wait()
	select {
	case p := <-got:
		var st state.Invoker
		if err := json.Unmarshal(p, &st); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if st.State != state.Online || st.MemoryLimit == nil || *st.MemoryLimit || st.Warning == "" {
			t.Fatalf("retained state %s", p)
		}
		t.Logf("retained state: %s", p)
		if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "memory cgroup off") {
			t.Fatalf("no warning in the log: %s", logs.String())
		}
	case <-ctx.Done():
		t.Fatal("no retained invoker state")
	}
}

// A result as large as the stdout cap would not fit in one packet of the
// broker's limit (a broker closes the connection of a client that publishes a
// larger one): it is cut to fit and the record says truncated.
func TestResultFitsInOnePacket(t *testing.T) {
	rt := &fakeRuntime{}
	iv, pub := newTest(t, rt, 2, handlers("echo", &config.Handler{Image: "img/echo"}))
	payload := bytes.Repeat([]byte("p"), 1<<20) // the fake prints "out:" + stdin
	iv.Handle(Trigger{Topic: "trigger/echo/big1", Handler: "echo", ID: "big1", Payload: payload})
	waitFor(t, "final record", func() bool { return len(pub.finals()) == 1 })
	res := pub.msgs[pub.index("result/big1")].payload
	if room := config.DefaultMaxPacket - len("result/big1") - 10; len(res) > room {
		t.Fatalf("result of %d bytes, room for %d", len(res), room)
	}
	if r := pub.finals()["big1"]; !r.Truncated || r.StdoutBytes != 4+1<<20 {
		t.Fatalf("record %+v", r)
	}
}
