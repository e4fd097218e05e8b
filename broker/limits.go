package broker

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// writeTimeout bounds one write to a client. mochi's only write deadline is the
// keepalive one (none with keepalive 0), so a client that stops reading (its
// TCP window full) blocked its writer for good and, with keepalive 0, was never
// dropped: its queue (up to writesPending messages, each up to max_packet bytes)
// stayed in memory. A write that does not finish within writeTimeout now closes
// the connection.
var writeTimeout = 30 * time.Second // a variable for tests

// limitsHook reports what the size limit did, counts messages dropped for slow
// clients and disconnects clients that stop reading. The size limit itself is
// mochi's Capabilities.MaximumPacketSize: Client.ReadFixedHeader compares the
// remaining length from the fixed header with it and fails before the body is
// read, so an oversized packet is never buffered; the connection is closed,
// without a DISCONNECT even for MQTT 5. mochi compares remaining length + 1 with
// the limit, not counting the 1-4 bytes of the length itself, so a packet may
// exceed the limit by up to 4 bytes. mochi does not advertise the limit in
// CONNACK (its property encoder has no Maximum Packet Size), so MQTT 5 clients
// learn of it only by being cut off.
type limitsHook struct {
	mqtt.HookBase
	b *Broker

	mu      sync.Mutex
	dropped map[*mqtt.Client]uint64 // messages dropped for a slow client
}

func (h *limitsHook) ID() string { return "onebox-limits" }

func (h *limitsHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnect, mqtt.OnDisconnect, mqtt.OnPublishDropped}, []byte{b})
}

func (h *limitsHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.mu.Lock()
	n := h.dropped[cl]
	delete(h.dropped, cl)
	h.mu.Unlock()
	if n > 0 {
		h.b.log.Warn("slow client disconnected", "client", cl.ID, "remote", cl.Net.Remote, "dropped", n, "err", err)
	}
	if errors.Is(err, packets.ErrPacketTooLarge) {
		h.b.log.Warn("packet over the size limit: connection closed; raise broker.max_packet in onebox.yaml if this was meant",
			"client", cl.ID,
			"remote", cl.Net.Remote,
			"max_packet", h.b.opts.MaxPacket)
	}
}

// OnPublishDropped counts a message mochi dropped because the client's queue
// (writesPending) is full; it logs the first and then every 1000th.
func (h *limitsHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.b.slowDropped.Add(1)
	h.mu.Lock()
	if h.dropped == nil {
		h.dropped = map[*mqtt.Client]uint64{}
	}
	h.dropped[cl]++
	n := h.dropped[cl]
	h.mu.Unlock()
	if n == 1 || n%1000 == 0 {
		h.b.log.Warn("client too slow: message dropped",
			"client", cl.ID, "remote", cl.Net.Remote, "topic", clip(pk.TopicName), "pending_max", writesPending, "dropped", n)
	}
}

// OnConnect puts a write deadline on the client's connection (see writeTimeout).
func (h *limitsHook) OnConnect(cl *mqtt.Client, _ packets.Packet) error {
	if cl.Net.Conn != nil && !cl.Net.Inline {
		cl.Net.Conn = &deadlineConn{Conn: cl.Net.Conn, h: h, cl: cl}
	}
	return nil
}

// deadlineConn bounds each write to a client by writeTimeout; a write that times
// out (the client stopped reading) closes the connection, so the client is
// disconnected and what was queued for it is released. A torn write leaves the
// stream unusable anyway.
type deadlineConn struct {
	net.Conn
	h  *limitsHook
	cl *mqtt.Client
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	n, err := c.Conn.Write(p)
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		c.h.b.slowCut.Add(1)
		c.h.b.log.Warn("client does not read: disconnected", "client", c.cl.ID, "remote", c.cl.Net.Remote, "write_timeout", writeTimeout)
		_ = c.Conn.Close()
	}
	return n, err
}
