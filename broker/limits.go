package broker

import (
	"bytes"
	"errors"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// writeTimeout bounds one write to a client. mochi sets no write deadline, so a
// client that stops reading (its TCP window full) blocks its writer forever and,
// with keepalive 0, is never dropped: its queue (up to writesPending messages,
// each up to max_packet bytes) stays in memory. With the deadline the write
// fails, and at the next packet for it the client is disconnected.
const writeTimeout = 30 * time.Second

// errSlowClient ends the connection of a client that does not read.
var errSlowClient = errors.New("client does not read: write timed out")

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
	writing map[*mqtt.Client]time.Time // start of the oldest write not yet confirmed
	dropped map[*mqtt.Client]uint64    // messages dropped for a slow client
}

func (h *limitsHook) ID() string { return "onebox-limits" }

func (h *limitsHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnDisconnect, mqtt.OnPublishDropped, mqtt.OnPacketEncode, mqtt.OnPacketSent}, []byte{b})
}

func (h *limitsHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.mu.Lock()
	n := h.dropped[cl]
	delete(h.writing, cl)
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

// OnPacketEncode runs before each write to cl: it sets the write deadline, and
// disconnects cl when an earlier write has not completed within writeTimeout.
func (h *limitsHook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.Net.Conn == nil || cl.Closed() {
		return pk
	}
	now := time.Now()
	h.mu.Lock()
	if h.writing == nil {
		h.writing = map[*mqtt.Client]time.Time{}
	}
	since, pending := h.writing[cl]
	if !pending {
		h.writing[cl] = now
	}
	h.mu.Unlock()
	if pending && now.Sub(since) > writeTimeout {
		h.b.log.Warn("client does not read: disconnected", "client", cl.ID, "remote", cl.Net.Remote, "write_timeout", writeTimeout)
		cl.Stop(errSlowClient)
		return pk
	}
	_ = cl.Net.Conn.SetWriteDeadline(now.Add(writeTimeout))
	return pk
}

func (h *limitsHook) OnPacketSent(cl *mqtt.Client, _ packets.Packet, _ []byte) {
	h.mu.Lock()
	delete(h.writing, cl)
	h.mu.Unlock()
}
