package broker

import (
	"bytes"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// authHook lets every client connect and use every topic, except $SYS (mochi's broker
// statistics), which clients can neither read nor write. Users and ACLs will replace
// this hook: mochi allows an action when any hook providing OnACLCheck allows it, so
// the replacement must be the only hook that provides it.
type authHook struct {
	mqtt.HookBase
}

func (h *authHook) ID() string { return "onebox-auth-allow-all" }

func (h *authHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	return true
}

// OnACLCheck is asked for subscribe filters and for each delivery (write false) and
// for publishes (write true). $SYS is neither readable nor writable by clients.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	return !isSys(topic)
}

// isSys reports whether a topic or filter names $SYS, shared subscriptions included.
func isSys(topic string) bool {
	if rest, ok := strings.CutPrefix(topic, "$share/"); ok {
		if _, f, ok := strings.Cut(rest, "/"); ok {
			topic = f
		}
	}
	return topic == "$SYS" || strings.HasPrefix(topic, "$SYS/")
}
