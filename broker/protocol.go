package broker

import (
	"bytes"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// protocolHook closes two gaps in mochi v2.7.9's processPublish, which returns
// without a word for a PUBLISH whose topic has a wildcard or starts with $SYS:
// no PUBACK, so a QoS 1 publisher waits forever, and no disconnect, although a
// wildcard in a topic name is a protocol violation [MQTT-3.3.2-2].
//   - A wildcard in a PUBLISH topic ends the connection (MQTT 5: DISCONNECT 0x90
//     first), as the spec asks.
//   - A publish to $SYS at QoS 1/2 is refused like any publish the ACL denies:
//     MQTT 5 gets PUBACK/PUBREC 0x87, MQTT 3.1.1 (which has no refusal in its
//     acks) is disconnected. At QoS 0 it is dropped.
//
// (Malformed packets — bad remaining length, invalid UTF-8, truncated fields —
// already end the connection in mochi's decoder, before any hook.)
type protocolHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *protocolHook) ID() string { return "onebox-protocol" }

func (h *protocolHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPacketRead}, []byte{b})
}

func (h *protocolHook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	// mochi checks the ACL before it resolves an MQTT 5 topic alias, so a publish
	// that names only its alias would be checked as "" and denied: resolve it here.
	// (An alias is only ever set for a topic the ACL allowed.)
	if pk.TopicName == "" && pk.Properties.TopicAliasFlag && pk.Properties.TopicAlias > 0 {
		pk.TopicName = cl.State.TopicAliases.Inbound.Set(pk.Properties.TopicAlias, "")
	}
	topic := pk.TopicName
	switch {
	case strings.ContainsAny(topic, "+#"):
		h.b.log.Warn("wildcard in a PUBLISH topic (protocol violation): connection closed",
			"client", cl.ID, "remote", cl.Net.Remote, "topic", clip(topic), "mqtt", protoName(cl.Properties.ProtocolVersion))
		_ = h.b.srv.DisconnectClient(cl, packets.ErrTopicNameInvalid)
		return pk, packets.ErrRejectPacket
	case len(topic) >= 4 && strings.EqualFold(topic[:4], "$SYS") && pk.FixedHeader.Qos > 0: // as mochi tests it
		h.b.log.Warn("publish to $SYS refused", "client", cl.ID, "remote", cl.Net.Remote, "topic", clip(topic))
		if cl.Properties.ProtocolVersion < 5 {
			_ = h.b.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
			return pk, packets.ErrRejectPacket
		}
		ack := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID, ReasonCode: packets.ErrNotAuthorized.Code}
		if pk.FixedHeader.Qos == 2 {
			ack.FixedHeader.Type = packets.Pubrec
		}
		_ = cl.WritePacket(ack)
	}
	return pk, nil // mochi drops a $SYS publish itself
}
