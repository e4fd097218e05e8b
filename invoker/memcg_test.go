package invoker

import (
	"context"
	"encoding/json"
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
	s, err := Start(ctx, Options{Name: name, Runtime: &noMemcgRuntime{}}, MQTTOptions{URL: b.URL()},
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
		println("got", m.Topic(), m.Retained(), string(m.Payload()))
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
	case <-ctx.Done():
		t.Fatal("no retained invoker state")
	}
}
