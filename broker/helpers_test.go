package broker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

// syncBuffer is a log sink safe for the broker's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startBroker starts a broker on 127.0.0.1:0 logging at level into the returned
// buffer, and closes it when the test ends.
func startBroker(t *testing.T, o Options, level slog.Level) (*Broker, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level}))
	b, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := b.Start(); err != nil {
		_ = b.Close()
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		_ = b.Close()
		if t.Failed() {
			l := logs.String()
			if len(l) > 20000 {
				l = "…" + l[len(l)-20000:]
			}
			t.Logf("broker log:\n%s", l)
		}
	})
	return b, logs
}

func port(b *Broker) string {
	a := b.Addr()
	return a[strings.LastIndex(a, ":")+1:]
}

func needMosquitto(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"mosquitto_pub", "mosquitto_sub"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (Debian: apt-get install mosquitto-clients)", bin)
		}
	}
}

// mosq runs mosquitto_pub or mosquitto_sub against b and returns its combined
// output and exit code. A client that hangs (e.g. waiting for a PUBACK that never
// comes) fails the test.
func mosq(t *testing.T, b *Broker, bin string, args ...string) (string, int) {
	t.Helper()
	return mosqAt(t, port(b), bin, args...)
}

// mosqAt is mosq against another port of the broker (TLS).
func mosqAt(t *testing.T, port, bin string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"-h", "127.0.0.1", "-p", port, "-i", "t-" + bin[10:] + "-" + shortID()}, args...)...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: hung for 15s (no ack?); output %q", bin, clip(strings.Join(args, " ")), out)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	return string(out), 0
}

var idN atomic.Int64

func shortID() string { return strconv.FormatInt(idN.Add(1), 10) }

type msg struct {
	topic    string
	payload  string
	retained bool
}

// client connects a paho (MQTT 3.1.1) client whose every message, from a
// subscription or from a resumed session, lands in the returned channel.
func client(t *testing.T, b *Broker, id string, clean bool) (paho.Client, <-chan msg, bool) {
	t.Helper()
	ch := make(chan msg, 256)
	o := paho.NewClientOptions().
		AddBroker(b.URL()).
		SetClientID(id).
		SetCleanSession(clean).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			ch <- msg{m.Topic(), string(m.Payload()), m.Retained()}
		})
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("paho connect %s to %s: %v", id, b.URL(), tok.Error())
	}
	t.Cleanup(func() {
		if c.IsConnected() {
			c.Disconnect(100)
		}
	})
	return c, ch, tok.(*paho.ConnectToken).SessionPresent()
}

func subscribe(t *testing.T, c paho.Client, filter string, qos byte) byte {
	t.Helper()
	tok := c.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	// paho keys the result by the filter without a $share/<group>/ prefix.
	for _, code := range tok.(*paho.SubscribeToken).Result() {
		return code
	}
	t.Fatalf("subscribe %s: no result", filter)
	return 0
}

func publish(t *testing.T, c paho.Client, topic string, payload string, retained bool) {
	t.Helper()
	tok := c.Publish(topic, 1, retained, payload)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

// until collects messages until one on topic end arrives, then for grace more.
func until(t *testing.T, ch <-chan msg, end string, grace time.Duration) []msg {
	t.Helper()
	var got []msg
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-ch:
			got = append(got, m)
			if m.topic == end {
				timer := time.After(grace)
				for {
					select {
					case m := <-ch:
						got = append(got, m)
					case <-timer:
						return got
					}
				}
			}
		case <-deadline:
			t.Fatalf("no message on %s within 10s; got %v", end, topicsOf(got))
			return nil
		}
	}
}

func topicsOf(ms []msg) []string {
	var s []string
	for _, m := range ms {
		s = append(s, clip(m.topic))
	}
	return s
}

// ---- raw MQTT, for what no client library will send ----

func mqttString(s string) []byte {
	return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...)
}

func varint(n int) []byte {
	var b []byte
	for {
		d := byte(n % 128)
		n /= 128
		if n > 0 {
			d |= 0x80
		}
		b = append(b, d)
		if n == 0 {
			return b
		}
	}
}

// rawConnect opens a TCP connection and completes an MQTT CONNECT (level 4 =
// 3.1.1, 5 = MQTT 5) with a clean session.
func rawConnect(t *testing.T, b *Broker, level byte, id string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", b.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	body := append(mqttString("MQTT"), level, 0x02, 0x00, 60)
	if level == 5 {
		body = append(body, 0x00) // no properties
	}
	body = append(body, mqttString(id)...)
	pkt := append([]byte{0x10}, varint(len(body))...)
	if _, err := c.Write(append(pkt, body...)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(c, hdr); err != nil || hdr[0] != 0x20 {
		t.Fatalf("raw connect: want CONNACK, got %x %v", hdr, err)
	}
	rest := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, rest); err != nil {
		t.Fatal(err)
	}
	// 3.1.1: flags, return code; 5: flags, reason code, properties.
	if rest[1] != 0 {
		t.Fatalf("raw connect refused: %x", rest)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c
}
