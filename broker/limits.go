package broker

import (
	"bytes"
	"errors"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// limitsHook reports what the size limit did. The limit itself is mochi's
// Capabilities.MaximumPacketSize: Client.ReadFixedHeader compares the remaining
// length from the fixed header with it and fails before the body is read, so an
// oversized packet is never buffered; the connection is closed, without a
// DISCONNECT even for MQTT 5. mochi compares remaining length + 1 with the limit,
// not counting the 1-4 bytes of the length itself, so a packet may exceed the
// limit by up to 4 bytes. mochi does not advertise the limit in CONNACK (its
// property encoder has no Maximum Packet Size), so MQTT 5 clients learn of it
// only by being cut off.
type limitsHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *limitsHook) ID() string { return "onebox-limits" }

func (h *limitsHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnDisconnect, mqtt.OnPublishDropped}, []byte{b})
}

func (h *limitsHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if errors.Is(err, packets.ErrPacketTooLarge) {
		h.b.log.Warn("packet over the size limit: connection closed; raise broker.max_packet in onebox.yaml if this was meant",
			"client", cl.ID,
			"remote", cl.Net.Remote,
			"max_packet", h.b.opts.MaxPacket)
	}
}

func (h *limitsHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.b.log.Warn("client too slow: message dropped",
		"client", cl.ID, "remote", cl.Net.Remote, "topic", clip(pk.TopicName), "pending_max", writesPending)
}
