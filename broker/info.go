package broker

import "github.com/mochi-mqtt/server/v2/system"

// Info is a snapshot of the broker's counters (mochi's server.Info, the values
// behind $SYS): clients, messages, bytes, retained, in flight. Metrics read it.
func (b *Broker) Info() *system.Info {
	return b.srv.Info.Clone()
}
