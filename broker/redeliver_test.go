package broker

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
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
	if _, err := io.ReadFull(r, ack); err != nil || ack[0] != 0x20 {
		t.Fatalf("CONNACK %x %v", ack, err)
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
	for _, persist := range []bool{false, true} {
		t.Run(fmt.Sprint("persist=", persist), func(t *testing.T) {
			o := Options{}
			if persist {
				o.DataDir = t.TempDir()
			}
			b, _ := startBroker(t, o, slog.LevelWarn)
			c, r, _ := rawSession(t, b, "inv-"+shortID(), "trigger/#")
			id := "inv-" + shortID()
			c.Close()
			c, r, _ = rawSession(t, b, id, "trigger/#")
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
			time.Sleep(200 * time.Millisecond)
			c, r, sp := rawSession(t, b, id, "")
			n, dups := readPublishes(c, r, 2*time.Second)
			t.Logf("session present %d, redelivered %d, with DUP %d", sp, n, dups)
			if n != 20 || dups != 20 {
				t.Fatalf("redelivered %d (DUP %d) of 20", n, dups)
			}
		})
	}
}
