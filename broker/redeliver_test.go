package broker

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// rawSession connects with clean session false and subscribes filter at QoS 1.
func rawSession(t *testing.T, b *Broker, id string, subscribe string) (net.Conn, *bufio.Reader, byte) {
	t.Helper()
	c, err := net.DialTimeout("tcp", b.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	body := append(mqttString("MQTT"), 4, 0x00, 0x00, 60)
	body = append(body, mqttString(id)...)
	c.Write(append(append([]byte{0x10}, varint(len(body))...), body...))
	r := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	ack := make([]byte, 4)
	if _, err := io.ReadFull(r, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		t.Logf("CONNACK %x %v", ack, err)
		return nil, nil, 0xff
	}
	if subscribe != "" {
		sb := append([]byte{0, 1}, mqttString(subscribe)...)
		sb = append(sb, 1)
		c.Write(append(append([]byte{0x82}, varint(len(sb))...), sb...))
	}
	return c, r, ack[2]
}

// readPublishes reads PUBLISH packets (skipping others) until d passes.
func readPublishes(c net.Conn, r *bufio.Reader, d time.Duration) (n, dups int) {
	c.SetReadDeadline(time.Now().Add(d))
	for {
		h, err := r.ReadByte()
		if err != nil {
			return
		}
		l, mul := 0, 1
		for {
			x, err := r.ReadByte()
			if err != nil {
				return
			}
			l += int(x&0x7f) * mul
			mul *= 128
			if x&0x80 == 0 {
				break
			}
		}
		if _, err := io.ReadFull(r, make([]byte, l)); err != nil {
			return
		}
		if h>>4 == 3 {
			n++
			if h&0x08 != 0 {
				dups++
			}
		}
	}
}

// A persistent QoS 1 subscriber that dies without acknowledging gets every
// unacknowledged message again, with DUP, when it comes back.
func TestUnackedRedeliveredAfterCrash(t *testing.T) {
	for _, tc := range []struct{ persist, immediate bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		persist := tc.persist
		t.Run(fmt.Sprintf("persist=%v,immediate=%v", tc.persist, tc.immediate), func(t *testing.T) {
			o := Options{}
			if persist {
				o.DataDir = t.TempDir()
			}
			b, _ := startBroker(t, o, slog.LevelWarn)
			id := "onebox-invoker-" + shortID()
			c, r, _ := rawSession(t, b, id, "trigger/#")
			c.Close()
			for i := 0; i < 20; i++ {
				if c, r, _ = rawSession(t, b, id, "trigger/#"); c != nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			time.Sleep(200 * time.Millisecond)
			pub, _, _ := client(t, b, "pub-"+shortID(), true)
			for i := 0; i < 20; i++ {
				publish(t, pub, fmt.Sprintf("trigger/echo/r%d", i), "x", false)
			}
			n, _ := readPublishes(c, r, time.Second)
			if n != 20 {
				t.Fatalf("first delivery: %d of 20", n)
			}
			c.(*net.TCPConn).SetLinger(0)
			c.Close() // a crash: nothing acknowledged
			if !tc.immediate {
				time.Sleep(200 * time.Millisecond)
			}
			var sp byte
			for i := 0; i < 20; i++ {
				if c, r, sp = rawSession(t, b, id, ""); c != nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			n, dups := readPublishes(c, r, 2*time.Second)
			t.Logf("session present %d, redelivered %d, with DUP %d", sp, n, dups)
			if n != 20 || dups != 20 {
				t.Fatalf("redelivered %d (DUP %d) of 20", n, dups)
			}
		})
	}
}

// waiting counts the messages to cl that wait for its PUBACK.
func waiting(cl *mqtt.Client) int {
	n := 0
	for _, p := range cl.State.Inflight.GetAll(false) {
		if p.FixedHeader.Type == packets.Publish {
			n++
		}
	}
	return n
}

// mochi v2.7.9 keeps the acks of a client's QoS 1 publishes in the same map as
// the messages waiting for the client's PUBACK: a client that holds messages
// unacknowledged (the invoker) and publishes at QoS 1 meanwhile lost them.
// inflight.go puts them back.
func TestInflightKeptWhenClientPublishes(t *testing.T) {
	for _, persist := range []bool{false, true} {
		t.Run(fmt.Sprint("persist=", persist), func(t *testing.T) {
			o := Options{}
			if persist {
				o.DataDir = t.TempDir()
			}
			b, _ := startBroker(t, o, slog.LevelWarn)
			id := "onebox-invoker-" + shortID()
			got := make(chan paho.Message, 100)
			po := paho.NewClientOptions().AddBroker(b.URL()).SetClientID(id).SetCleanSession(false).SetProtocolVersion(4).
				SetAutoAckDisabled(true).SetOrderMatters(false).SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { got <- m })
			c := paho.NewClient(po)
			if tk := c.Connect(); !tk.WaitTimeout(5*time.Second) || tk.Error() != nil {
				t.Fatal(tk.Error())
			}
			defer c.Disconnect(0)
			c.Subscribe("trigger/+/+", 1, nil).Wait()
			pub, _, _ := client(t, b, "pub-"+shortID(), true)
			for i := 0; i < 30; i++ {
				publish(t, pub, fmt.Sprintf("trigger/echo/m%d", i), "x", false)
			}
			for i := 0; i < 30; i++ {
				select {
				case <-got:
				case <-time.After(5 * time.Second):
					t.Fatalf("received %d of 30", i)
				}
			}
			if cl, _ := b.srv.Clients.Get(id); true {
				t.Logf("before: in flight %d", cl.State.Inflight.Len())
			}
			// The client publishes at QoS 1 (packet ids 1…40) while holding all 30.
			for i := 0; i < 40; i++ {
				if tk := c.Publish(fmt.Sprintf("status/m%d", i), 1, false, "r"); !tk.WaitTimeout(5*time.Second) || tk.Error() != nil {
					t.Fatal(tk.Error())
				}
			}
			// Only the waiting messages count: the ack of the client's last publish
			// may still be there for a moment after the client got it.
			cl, _ := b.srv.Clients.Get(id)
			if n := waiting(cl); n != 30 {
				t.Fatalf("in flight for the client: %d, want 30", n)
			}
			if persist {
				// And in the store: a restarted broker has them for the session.
				c.Disconnect(0)
				b.Close()
				b2, _ := startBroker(t, o, slog.LevelWarn)
				cl, ok := b2.srv.Clients.Get(id)
				if !ok {
					t.Fatal("after a restart: no session")
				}
				if n := waiting(cl); n != 30 {
					t.Fatalf("after a restart: in flight %d, want 30", n)
				}
			}
		})
	}
}

// A publisher whose PUBACK was lost resends with DUP: a trigger it already
// delivered is not delivered twice; a DUP publish never seen is delivered.
func TestResentTriggerDeliveredOnce(t *testing.T) {
	b, _ := startBroker(t, Options{}, slog.LevelWarn)
	sub, ch, _ := client(t, b, "sub-"+shortID(), true)
	subscribe(t, sub, "trigger/#", 1)
	pubID := "raw-" + shortID()
	publish := func(topic string, id uint16, dup bool) {
		c, r, _ := rawSession(t, b, pubID, "")
		if c == nil {
			t.Fatal("connect refused")
		}
		first := byte(0x32)
		if dup {
			first |= 0x08
		}
		body := append(mqttString(topic), byte(id>>8), byte(id))
		body = append(body, "x"...)
		c.Write(append(append([]byte{first}, varint(len(body))...), body...))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		ack := make([]byte, 4)
		if _, err := io.ReadFull(r, ack); err != nil || ack[0] != 0x40 {
			t.Fatalf("PUBACK %x %v", ack, err)
		}
		c.Close()
	}
	publish("trigger/echo", 7, false)
	publish("trigger/echo", 7, true)       // the resend: dropped
	publish("trigger/echo/fresh", 9, true) // never seen: delivered
	publish("trigger/echo", 7, false)      // the id reused for a new message: delivered
	got := until(t, ch, "trigger/echo/fresh", 500*time.Millisecond)
	if n := len(got); n != 3 {
		t.Fatalf("delivered %d, want 3: %v", n, topicsOf(got))
	}
}

// A client that subscribes and then never reads is disconnected once a write to
// it stalls, instead of holding its queue for good; others are not held up.
func TestClientThatDoesNotReadIsDisconnected(t *testing.T) {
	old := writeTimeout
	writeTimeout = time.Second
	t.Cleanup(func() { writeTimeout = old }) // after the broker is closed
	b, logs := startBroker(t, Options{MaxPacket: 1 << 20}, slog.LevelWarn)
	c, _, _ := rawSession(t, b, "slow-"+shortID(), "result/#") // keepalive 60, never reads
	defer c.Close()
	sub, ch, _ := client(t, b, "fast-"+shortID(), true)
	subscribe(t, sub, "result/#", 1)
	pub, _, _ := client(t, b, "pub-"+shortID(), true)
	big := strings.Repeat("r", 200_000)
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; b.SlowDisconnected() == 0; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("the slow client was not disconnected after %d messages", i)
		}
		publish(t, pub, fmt.Sprintf("result/s%d", i), big, false)
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("the reading client got nothing for message %d", i)
		}
	}
	if !strings.Contains(logs.String(), "client does not read") {
		t.Fatalf("no log line: %s", logs.String())
	}
}
