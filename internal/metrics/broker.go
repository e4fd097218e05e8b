package metrics

import (
	"github.com/mochi-mqtt/server/v2/system"
	"github.com/prometheus/client_golang/prometheus"
)

// BrokerCollector exposes the embedded broker's counters (mochi's server.Info,
// the values behind $SYS) at each scrape.
type BrokerCollector struct {
	info func() *system.Info
}

// NewBrokerCollector reads info at each scrape; info returns a snapshot
// (broker.Broker.Info).
func NewBrokerCollector(info func() *system.Info) *BrokerCollector {
	return &BrokerCollector{info: info}
}

type brokerMetric struct {
	desc *prometheus.Desc
	typ  prometheus.ValueType
	val  func(*system.Info) int64
}

func bm(name, help string, typ prometheus.ValueType, val func(*system.Info) int64) brokerMetric {
	return brokerMetric{prometheus.NewDesc(prometheus.BuildFQName(Namespace, "broker", name), help, nil, nil), typ, val}
}

var brokerMetrics = []brokerMetric{
	bm("clients_connected", "MQTT clients connected now.", prometheus.GaugeValue, func(i *system.Info) int64 { return i.ClientsConnected }),
	bm("clients_disconnected", "Persistent sessions whose client is disconnected (e.g. an invoker that is down).", prometheus.GaugeValue, func(i *system.Info) int64 { return i.ClientsDisconnected }),
	bm("clients_maximum", "Most clients connected at once since the broker started.", prometheus.GaugeValue, func(i *system.Info) int64 { return i.ClientsMaximum }),
	bm("messages_received_total", "PUBLISH packets received.", prometheus.CounterValue, func(i *system.Info) int64 { return i.MessagesReceived }),
	bm("messages_sent_total", "PUBLISH packets sent.", prometheus.CounterValue, func(i *system.Info) int64 { return i.MessagesSent }),
	bm("messages_dropped_total", "PUBLISH packets dropped for slow subscribers.", prometheus.CounterValue, func(i *system.Info) int64 { return i.MessagesDropped }),
	bm("retained_messages", "Retained messages held.", prometheus.GaugeValue, func(i *system.Info) int64 { return i.Retained }),
	bm("inflight_messages", "QoS 1/2 messages in flight (including those queued for offline sessions).", prometheus.GaugeValue, func(i *system.Info) int64 { return i.Inflight }),
	bm("inflight_dropped_total", "In-flight messages dropped (expired or over the limit).", prometheus.CounterValue, func(i *system.Info) int64 { return i.InflightDropped }),
	bm("subscriptions", "Active subscriptions.", prometheus.GaugeValue, func(i *system.Info) int64 { return i.Subscriptions }),
	bm("packets_received_total", "MQTT packets received.", prometheus.CounterValue, func(i *system.Info) int64 { return i.PacketsReceived }),
	bm("packets_sent_total", "MQTT packets sent.", prometheus.CounterValue, func(i *system.Info) int64 { return i.PacketsSent }),
	bm("received_bytes_total", "Bytes received from clients.", prometheus.CounterValue, func(i *system.Info) int64 { return i.BytesReceived }),
	bm("sent_bytes_total", "Bytes sent to clients.", prometheus.CounterValue, func(i *system.Info) int64 { return i.BytesSent }),
}

// Describe implements prometheus.Collector.
func (c *BrokerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range brokerMetrics {
		ch <- m.desc
	}
}

// Collect implements prometheus.Collector.
func (c *BrokerCollector) Collect(ch chan<- prometheus.Metric) {
	i := c.info()
	if i == nil {
		return
	}
	for _, m := range brokerMetrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.typ, float64(m.val(i)))
	}
}
