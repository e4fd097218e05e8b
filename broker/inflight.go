package broker

import (
	"bytes"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// inflightGuard repairs a mochi v2.7.9 bug that loses queued QoS 1 messages.
//
// mochi keeps one in-flight map per client, keyed by packet id, for both
// directions: the messages it sent the client and that wait for the client's
// PUBACK, and the acks of the client's own QoS 1/2 publishes. But the two
// directions have separate packet id spaces (MQTT 3.1.1 §2.3.1). When a client
// publishes at QoS 1 with packet id 5 while the broker's message 5 to that client
// still waits for its PUBACK, processPublish deletes id 5 from the map, then
// stores its own PUBACK under id 5 (in the bolt store too), sends it and deletes
// it: the waiting message is gone, from memory and from the store, and is never
// delivered again. The invoker is exactly such a client: it holds triggers
// unacknowledged until their run ends and publishes QoS 1 records meanwhile, so
// after a crash most of the triggers it held were lost.
//
// The guard notes, when the client's PUBLISH has been read and before mochi
// processes it (OnPacketRead), the waiting message under the same id, and once
// mochi is done with the publish (OnPacketProcessed, whatever the outcome) puts
// it back, in memory and in the store. QoS 2 publishes from a client are left as
// they are (no onebox part uses QoS 2).
type inflightGuard struct {
	mqtt.HookBase
	b *Broker

	// saved holds, per client, the message put aside while one of its publishes
	// is processed (a client's packets are read and processed one at a time).
	saved sync.Map // *mqtt.Client → packets.Packet
}

func (h *inflightGuard) ID() string { return "onebox-inflight-guard" }

func (h *inflightGuard) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPacketRead, mqtt.OnPacketProcessed, mqtt.OnDisconnect}, []byte{b})
}

func (h *inflightGuard) OnDisconnect(cl *mqtt.Client, _ error, _ bool) { h.saved.Delete(cl) }

func (h *inflightGuard) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish || pk.FixedHeader.Qos != 1 || cl.Net.Inline {
		return pk, nil
	}
	if out, ok := cl.State.Inflight.Get(pk.PacketID); ok && out.FixedHeader.Type == packets.Publish {
		h.saved.Store(cl, out)
	}
	return pk, nil
}

func (h *inflightGuard) OnPacketProcessed(cl *mqtt.Client, pk packets.Packet, _ error) {
	if pk.FixedHeader.Type != packets.Publish {
		return
	}
	v, ok := h.saved.LoadAndDelete(cl)
	if !ok {
		return
	}
	out := v.(packets.Packet)
	if cur, taken := cl.State.Inflight.Get(out.PacketID); taken && cur.FixedHeader.Type == packets.Publish {
		return // still there, or the id went to a newer message (only after a wrap-around)
	}
	if cl.State.Inflight.Set(out) {
		atomic.AddInt64(&h.b.srv.Info.Inflight, 1)
	}
	if h.b.store != nil {
		h.b.store.OnQosPublish(cl, out, out.Created, 0)
	}
}
