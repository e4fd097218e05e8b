package broker

import (
	"container/list"
	"crypto/sha256"
	"strconv"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Bounds of the resend memory.
const (
	dupesMax = 4096
	dupesAge = 10 * time.Minute
)

// dupes recognises a publisher's resend of a QoS 1 trigger it already sent.
//
// MQTT 3.1.1 QoS 1 is at least once: a client whose PUBACK was lost (the
// connection dropped first) sends the same PUBLISH again, same packet id, DUP
// set. The broker forwards it as a new message with its own packet id and no
// DUP, so the invoker cannot tell: a trigger with a run id is caught by the
// invoker's dedupe on that id, but one without (trigger/<handler>) would run
// twice. So the broker remembers, per client and packet id, the digest of the
// last QoS 1 trigger it took (bounded: dupesMax entries, dupesAge old), and a
// DUP publish that matches is acknowledged but not delivered. A DUP publish that
// matches nothing (a fresh message that happens to carry DUP, or whose first
// attempt never arrived) is delivered. A new publish (no DUP) with the same
// packet id replaces the entry: the client has reused the id, so the earlier
// message was acknowledged.
type dupes struct {
	mu    sync.Mutex
	items map[string]*list.Element
	order *list.List // front = oldest
	now   func() time.Time
}

type dupEntry struct {
	key string
	sum [32]byte
	at  time.Time
}

func newDupes() *dupes {
	return &dupes{items: map[string]*list.Element{}, order: list.New(), now: time.Now}
}

func digest(pk packets.Packet) [32]byte {
	h := sha256.New()
	h.Write([]byte(pk.TopicName))
	h.Write([]byte{0})
	h.Write(pk.Payload)
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// resent reports whether pk, a QoS 1 publish from cl, is a resend of one already
// taken; otherwise it remembers pk.
func (d *dupes) resent(cl *mqtt.Client, pk packets.Packet) bool {
	if pk.FixedHeader.Qos != 1 || pk.PacketID == 0 {
		return false
	}
	key := cl.ID + "\x00" + strconv.Itoa(int(pk.PacketID))
	sum := digest(pk)
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	for e := d.order.Front(); e != nil; e = d.order.Front() {
		if now.Sub(e.Value.(*dupEntry).at) < dupesAge && d.order.Len() <= dupesMax {
			break
		}
		delete(d.items, e.Value.(*dupEntry).key)
		d.order.Remove(e)
	}
	if e, ok := d.items[key]; ok {
		de := e.Value.(*dupEntry)
		if pk.FixedHeader.Dup && de.sum == sum {
			return true
		}
		de.sum, de.at = sum, now
		d.order.MoveToBack(e)
		return false
	}
	d.items[key] = d.order.PushBack(&dupEntry{key: key, sum: sum, at: now})
	return false
}
