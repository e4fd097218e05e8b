package broker

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawDial opens a TCP connection without saying anything.
func rawDial(t *testing.T, b *Broker) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", b.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// connectPacket is a CONNECT (level 4 or 5) with a clean session and keepalive.
func connectPacket(level byte, id string, keepalive uint16) []byte {
	body := append(mqttString("MQTT"), level, 0x02, byte(keepalive>>8), byte(keepalive))
	if level == 5 {
		body = append(body, 0x00)
	}
	body = append(body, mqttString(id)...)
	return append(append([]byte{0x10}, varint(len(body))...), body...)
}

// publishPacket is a QoS 1 PUBLISH with packet id 1 and raw topic bytes.
func publishPacket(level byte, topic []byte, payload string) []byte {
	body := append([]byte{byte(len(topic) >> 8), byte(len(topic))}, topic...)
	body = append(body, 0x00, 0x01)
	if level == 5 {
		body = append(body, 0x00)
	}
	body = append(body, payload...)
	return append(append([]byte{0x32}, varint(len(body))...), body...)
}

// outcome waits up to limit for the broker to end c and says what it sent first.
func outcome(c net.Conn, limit time.Duration) (closed bool, after time.Duration, sent []byte) {
	t0 := time.Now()
	_ = c.SetReadDeadline(t0.Add(limit))
	sent, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false, time.Since(t0), sent
	}
	return true, time.Since(t0), sent // EOF or reset: the broker hung up
}

// The broker drops each hostile client and keeps serving a well-behaved paho
// client, checked after every case in the same test.
func TestHostileClients(t *testing.T) {
	defer func(d time.Duration) { connectTimeout = d }(connectTimeout)
	connectTimeout = time.Second
	b, logs := startBroker(t, Options{}, slog.LevelInfo)

	good, ch, _ := client(t, b, "good", true)
	subscribe(t, good, "trigger/#", 1)
	n := 0
	stillServing := func(after string) {
		t.Helper()
		n++
		topic := fmt.Sprintf("trigger/ok/n%d", n)
		publish(t, good, topic, "fine", false)
		for _, m := range until(t, ch, topic, 50*time.Millisecond) {
			if m.topic != topic {
				t.Errorf("after %s: a hostile message was delivered: %q %q", after, clip(m.topic), clip(m.payload))
			}
		}
		if !good.IsConnectionOpen() {
			t.Fatalf("after %s the well-behaved client lost its connection", after)
		}
	}

	type hostile struct {
		name   string
		level  byte   // CONNECT first at this level (0: nothing before)
		send   []byte // then this
		within time.Duration
	}
	cases := []hostile{
		{"remaining length with 5 continuation bytes (first packet)", 0, []byte{0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F}, 2 * time.Second},
		{"remaining length with 5 continuation bytes (after CONNECT)", 4, []byte{0x32, 0x80, 0x80, 0x80, 0x80, 0x01}, 2 * time.Second},
		{"remaining length 0x80×4 0x00: zero-length PUBLISH", 4, []byte{0x32, 0x80, 0x80, 0x80, 0x80, 0x00}, 2 * time.Second},
		{"declared length 256 MiB (CONNECT)", 0, []byte{0x10, 0xFF, 0xFF, 0xFF, 0x7F, 0x00, 0x04, 'M', 'Q', 'T', 'T'}, 2 * time.Second},
		{"declared length 256 MiB (PUBLISH, 3.1.1)", 4, []byte{0x32, 0xFF, 0xFF, 0xFF, 0x7F, 0x00, 0x09}, 2 * time.Second},
		{"declared length 256 MiB (PUBLISH, 5)", 5, []byte{0x32, 0xFF, 0xFF, 0xFF, 0x7F, 0x00, 0x09}, 2 * time.Second},
		{"invalid UTF-8 in a PUBLISH topic", 4, publishPacket(4, []byte("trigger/\xff\xfe"), "bad utf8"), 2 * time.Second},
		{"NUL in a PUBLISH topic", 4, publishPacket(4, []byte("trigger/a\x00b"), "nul"), 2 * time.Second},
		{"wildcard + in a PUBLISH topic (3.1.1)", 4, publishPacket(4, []byte("trigger/+"), "wild"), 2 * time.Second},
		{"wildcard # in a PUBLISH topic (5)", 5, publishPacket(5, []byte("trigger/#"), "wild"), 2 * time.Second},
		{"QoS 1 publish to $SYS (3.1.1)", 4, publishPacket(4, []byte("$SYS/broker/version"), "fake"), 2 * time.Second},
		{"PUBLISH before CONNECT", 0, publishPacket(4, []byte("trigger/echo"), "early"), 2 * time.Second},
		{"second CONNECT", 4, connectPacket(4, "again", 60), 2 * time.Second},
		{"reserved packet type 0", 4, []byte{0x00, 0x00}, 2 * time.Second},
		{"invalid CONNECT protocol name", 0, append([]byte{0x10, 0x0C}, append(mqttString("XQTT"), 4, 0x02, 0, 60, 0, 0)...), 2 * time.Second},
		{"no CONNECT at all (silence past the 1s connect timeout)", 0, nil, 4 * time.Second},
		{"half-open: CONNECT keepalive 1s then silence", 255, nil, 4 * time.Second},
	}
	for _, h := range cases {
		c := rawDial(t, b)
		switch h.level {
		case 4, 5:
			_, _ = c.Write(connectPacket(h.level, "hostile-"+shortID(), 60))
			expectConnack(t, c, h.name)
		case 255:
			_, _ = c.Write(connectPacket(4, "half-open-"+shortID(), 1))
			expectConnack(t, c, h.name)
		}
		if h.send != nil {
			_, _ = c.Write(h.send)
		}
		closed, after, sent := outcome(c, h.within)
		t.Logf("%-58s closed=%v after %v, broker sent %x", h.name, closed, after.Round(10*time.Millisecond), sent)
		if !closed {
			t.Errorf("%s: still open after %v", h.name, h.within)
		}
		if h.level == 255 && (after < 900*time.Millisecond) {
			t.Errorf("%s: closed after %v, before keepalive×1.5", h.name, after)
		}
		stillServing(h.name)
	}

	// A CONNECT flood: 200 connections at once, each a valid CONNECT, all
	// answered, then dropped; the broker's goroutines come back down.
	before := runtime.NumGoroutine()
	const flood = 200
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked, conns := 0, make([]net.Conn, 0, flood)
	t0 := time.Now()
	for i := 0; i < flood; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", b.Addr(), 5*time.Second)
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			_, _ = c.Write(connectPacket(4, fmt.Sprintf("flood-%d", i), 60))
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			hdr := make([]byte, 4)
			if _, err := io.ReadFull(c, hdr); err == nil && hdr[0] == 0x20 && hdr[3] == 0 {
				mu.Lock()
				acked++
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	t.Logf("CONNECT flood: %d of %d connections acked in %v", acked, flood, time.Since(t0).Round(time.Millisecond))
	if acked != flood {
		t.Errorf("flood: %d of %d acked", acked, flood)
	}
	stillServing("a CONNECT flood (connections open)")
	for _, c := range conns {
		_ = c.Close()
	}
	var after int
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if after = runtime.NumGoroutine(); after <= before+10 {
			break
		}
	}
	t.Logf("goroutines: %d before the flood, %d after it ended", before, after)
	if after > before+10 {
		t.Errorf("goroutines did not come back down: %d before, %d after", before, after)
	}
	stillServing("a CONNECT flood")

	l := logs.String()
	for _, s := range []string{"wildcard in a PUBLISH topic", "publish to $SYS refused"} {
		if !strings.Contains(l, s) {
			t.Errorf("log lacks %q", s)
		}
	}
	if strings.Contains(l, "pk=") {
		t.Errorf("a packet dump reached the log")
	}
}

func expectConnack(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(c, hdr); err != nil || hdr[0] != 0x20 {
		t.Fatalf("%s: want CONNACK, got %x %v", what, hdr, err)
	}
	rest := make([]byte, hdr[1])
	if _, err := io.ReadFull(c, rest); err != nil || rest[1] != 0 {
		t.Fatalf("%s: CONNACK %x %v", what, rest, err)
	}
	_ = c.SetReadDeadline(time.Time{})
}
