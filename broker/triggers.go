package broker

import (
	"bytes"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/onebox-dev/onebox/internal/topics"
)

// triggerHook polices the trigger/ topic space: a publish under trigger/ must be
// trigger/<handler> or trigger/<handler>/<id> (topics.ParseTrigger).
//
// What mochi v2.7.9 does with OnPublish's error (server.go processPublish):
//   - packets.ErrRejectPacket: drops the message and sends no ack at all, so a
//     QoS 1/2 publisher waits forever; never used here.
//   - packets.CodeSuccessIgnore: acks normally (PUBACK/PUBREC success), does not
//     deliver, does not retain.
//   - a packets.Code, MQTT 5 publisher, QoS > 0: a PUBACK with that reason code, not
//     delivered. For QoS 2 mochi still sends a PUBACK (not a PUBREC), which the
//     client cannot match, so QoS 2 gets CodeSuccessIgnore instead.
//   - any other error (including a Code for QoS 0 or for MQTT 3.1.1): the message
//     goes through as if nothing happened.
//
// So: MQTT 5 at QoS 1 gets 0x90 "topic name invalid"; everything else is acked
// (where the QoS has an ack) and dropped. Every case is counted and logged.
type triggerHook struct {
	mqtt.HookBase
	b *Broker
}

func (h *triggerHook) ID() string { return "onebox-trigger-topics" }

func (h *triggerHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPublish, mqtt.OnConnect}, []byte{b})
}

func (h *triggerHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if !topics.IsTrigger(pk.TopicName) {
		return pk, nil
	}
	_, _, err := topics.ParseTrigger(pk.TopicName)
	if err == nil {
		if h.b.dupes.resent(cl, pk) {
			h.b.log.Info("resent trigger dropped: the same QoS 1 publish (packet id, DUP set) was already taken",
				"topic", clip(pk.TopicName), "client", cl.ID, "packet_id", pk.PacketID)
			return pk, packets.CodeSuccessIgnore
		}
		if pk.FixedHeader.Retain && len(pk.Payload) == 0 {
			h.clearRetained(cl, pk)
			return pk, packets.CodeSuccessIgnore
		}
		return pk, nil
	}
	refuse := cl.Properties.ProtocolVersion == 5 && pk.FixedHeader.Qos == 1
	h.refused(cl, pk.TopicName, "publish", err, refuse)
	if refuse {
		return pk, packets.ErrTopicNameInvalid
	}
	return pk, packets.CodeSuccessIgnore
}

// clearRetained handles an empty retained publish on a trigger topic: MQTT's way
// to delete the retained trigger. It deletes it (from memory and the data file)
// and delivers nothing, so clearing a retained trigger never runs the handler
// with an empty payload. (An empty publish without the retain flag is an
// ordinary trigger and runs.)
func (h *triggerHook) clearRetained(cl *mqtt.Client, pk packets.Packet) {
	if h.b.srv.Options.Capabilities.RetainAvailable == 0 {
		return
	}
	r := h.b.srv.Topics.RetainMessage(pk.Copy(false))
	if h.b.store != nil {
		h.b.store.OnRetainMessage(cl, pk, r)
	}
	atomic.StoreInt64(&h.b.srv.Info.Retained, int64(h.b.srv.Topics.Retained.Len()))
	h.b.log.Info("retained trigger cleared (an empty retained publish): nothing runs",
		"topic", clip(pk.TopicName), "client", cl.ID, "existed", r == -1)
}

// OnConnect refuses a will message on an invalid trigger topic: mochi publishes
// wills without OnPublish, so this is the only place to stop one.
func (h *triggerHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if !pk.Connect.WillFlag || !topics.IsTrigger(pk.Connect.WillTopic) {
		return nil
	}
	_, _, err := topics.ParseTrigger(pk.Connect.WillTopic)
	if err == nil {
		return nil
	}
	h.refused(cl, pk.Connect.WillTopic, "will", err, true)
	code := packets.ErrTopicNameInvalid
	if cl.Properties.ProtocolVersion < 5 {
		code = packets.Err3NotAuthorized // 3.1.1 has no better CONNACK code
	}
	_ = h.b.srv.SendConnack(cl, code, false, nil)
	return errWillRefused
}

func (h *triggerHook) refused(cl *mqtt.Client, topic, what string, err error, refused bool) {
	h.b.invalid.Add(1)
	action := "dropped"
	if refused {
		action = "refused"
	}
	h.b.log.Warn("invalid trigger topic "+action+": use trigger/<handler> or trigger/<handler>/<id>",
		"topic", clip(topic),
		"kind", what,
		"client", cl.ID,
		"remote", cl.Net.Remote,
		"mqtt", protoName(cl.Properties.ProtocolVersion),
		"reason", err.Error(),
		"count", h.b.invalid.Load())
}

func protoName(v byte) string {
	switch v {
	case 3:
		return "3.1"
	case 4:
		return "3.1.1"
	case 5:
		return "5"
	}
	return "inline"
}
