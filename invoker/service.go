package invoker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/onebox-dev/onebox/internal/config"
	"github.com/onebox-dev/onebox/internal/mqttc"
	"github.com/onebox-dev/onebox/internal/state"
	"github.com/onebox-dev/onebox/internal/topics"
	"github.com/onebox-dev/onebox/invoker/container"
)

// MQTTOptions say where the invoker takes triggers from.
type MQTTOptions struct {
	URL        string
	Username   string
	Password   string
	ClientID   string // default onebox-invoker-<name>; stable, as the session is persistent
	ShareGroup string // when set, subscribe through $share/<group>/ to share the work
}

// Service is an Invoker connected to a broker.
type Service struct {
	*Invoker
	client mqtt.Client
	mo     MQTTOptions
	engine container.EngineInfo
	log    *slog.Logger
}

type mqttPublisher struct{ c mqtt.Client }

func (p mqttPublisher) Publish(topic string, payload []byte, retained bool) error {
	t := p.c.Publish(topic, 1, retained, payload)
	select {
	case <-t.Done():
		return t.Error()
	default:
		return nil // in flight; paho sends in call order
	}
}

// Filters returns the trigger filters, shared when group is set.
func Filters(group string) map[string]byte {
	pre := ""
	if group != "" {
		pre = "$share/" + group + "/"
	}
	return map[string]byte{pre + topics.TriggerFilter: 1, pre + topics.TriggerIDFilter: 1}
}

// Start checks the engine, removes this instance's leftover containers,
// connects to the broker with a persistent session and starts taking triggers.
func Start(ctx context.Context, o Options, mo MQTTOptions, handlers map[string]*config.Handler) (*Service, error) {
	if o.Runtime == nil {
		return nil, errors.New("invoker: no container runtime")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	log := o.Logger.With("part", "invoker")
	info, err := o.Runtime.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("invoker: %w", err)
	}
	st := state.Invoker{Invoker: o.Name, State: state.Online, Engine: info.Name + " " + info.Version, MemoryLimit: &info.MemoryLimit}
	if !info.MemoryLimit {
		st.Warning = "the engine cannot enforce memory limits (memory cgroup off): handlers run without a memory limit; on Raspberry Pi OS add cgroup_enable=memory cgroup_memory=1 to /boot/firmware/cmdline.txt and reboot"
		log.Warn(st.Warning)
	}
	if n, err := o.Runtime.Cleanup(ctx, o.Name); err != nil {
		log.Warn("cannot remove leftover containers", "instance", o.Name, "err", err)
	} else if n > 0 {
		log.Info("removed leftover containers of an earlier run", "instance", o.Name, "count", n)
	}
	if mo.ClientID == "" {
		mo.ClientID = "onebox-invoker-" + o.Name
	}
	s := &Service{mo: mo, engine: info, log: log}
	pub := &lazyPublisher{}
	s.Invoker = New(o, pub)
	s.Invoker.SetHandlers(handlers)

	offline := state.Invoker{Invoker: o.Name, State: state.Offline}
	ready := make(chan struct{})
	var readyOnce sync.Once
	s.client = mqttc.New(mqttc.Options{
		URL: mo.URL, ClientID: mo.ClientID, Username: mo.Username, Password: mo.Password,
		CleanSession: false, ManualAck: true, Logger: o.Logger,
		Will:    &mqttc.Will{Topic: topics.InvokerState(o.Name), Payload: state.Marshal(offline), Retained: true},
		Default: s.onMessage,
		OnConnect: func(c mqtt.Client) {
			sub := c.SubscribeMultiple(Filters(mo.ShareGroup), s.onMessage)
			st.At = time.Now().UTC()
			online := c.Publish(topics.InvokerState(o.Name), 1, true, state.Marshal(st))
			s.publishHandlers()
			go func() {
				// Start returns once the subscription and the online state are in.
				sub.WaitTimeout(10 * time.Second)
				online.WaitTimeout(10 * time.Second)
				readyOnce.Do(func() { close(ready) })
			}()
		},
	})
	pub.c = s.client
	tok := s.client.Connect()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
wait:
	for {
		select {
		case <-tok.Done():
			if err := tok.Error(); err != nil {
				s.client.Disconnect(0)
				return nil, fmt.Errorf("invoker: %w at %s: %v", mqttc.ErrConnect, mo.URL, err)
			}
			break wait
		case <-tick.C:
			log.Warn("waiting for the MQTT broker (is it running? `onebox broker` or `onebox up` starts one)", "broker", mo.URL)
		case <-ctx.Done():
			s.client.Disconnect(0)
			return nil, fmt.Errorf("invoker: %w at %s: %v (is the broker running? `onebox broker` or `onebox up` starts one)", mqttc.ErrConnect, mo.URL, ctx.Err())
		}
	}
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		log.Warn("the broker has not confirmed the trigger subscription yet", "broker", mo.URL)
	}
	log.Info("invoker ready", "name", o.Name, "broker", mo.URL, "engine", st.Engine, "platform", info.OS+"/"+info.Architecture, "concurrency", s.Invoker.o.Concurrency)
	return s, nil
}

// lazyPublisher publishes through a client set after construction.
type lazyPublisher struct{ c mqtt.Client }

func (p *lazyPublisher) Publish(topic string, payload []byte, retained bool) error {
	return mqttPublisher{p.c}.Publish(topic, payload, retained)
}

// Engine describes the engine found at start.
func (s *Service) Engine() container.EngineInfo { return s.engine }

// Reload swaps the handler list and republishes it.
func (s *Service) Reload(handlers map[string]*config.Handler) {
	s.SetHandlers(handlers)
	s.publishHandlers()
}

func (s *Service) publishHandlers() {
	s.client.Publish(topics.HandlersTopic, 1, true, state.Marshal(s.HandlerList()))
}

func (s *Service) onMessage(_ mqtt.Client, m mqtt.Message) {
	if m.Retained() {
		// A retained trigger replayed to a new subscription is not an event.
		s.mu.Lock()
		s.stats.Retained++
		s.mu.Unlock()
		s.log.Info("retained trigger ignored: clear it with an empty retained message", "topic", m.Topic())
		m.Ack()
		return
	}
	h, id, err := topics.ParseTrigger(m.Topic())
	if err != nil {
		s.mu.Lock()
		s.stats.Invalid++
		s.mu.Unlock()
		s.log.Warn("invalid trigger ignored", "topic", m.Topic(), "err", err)
		m.Ack()
		return
	}
	_ = s.Handle(Trigger{Topic: m.Topic(), Handler: h, ID: id, Payload: m.Payload(), Duplicate: m.Duplicate(), MessageID: m.MessageID(), Ack: m.Ack})
}

// Shutdown stops taking triggers, lets runs finish until ctx ends (then stops
// them), marks this invoker offline and disconnects.
func (s *Service) Shutdown(ctx context.Context) error {
	err := s.Invoker.Shutdown(ctx)
	offline := state.Invoker{Invoker: s.o.Name, State: state.Offline, At: time.Now().UTC()}
	t := s.client.Publish(topics.InvokerState(s.o.Name), 1, true, state.Marshal(offline))
	t.WaitTimeout(2 * time.Second)
	s.client.Disconnect(500)
	return err
}
