package main

import (
	"os"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/system"
	"github.com/spf13/cobra"

	"github.com/onebox-dev/onebox/broker"
	"github.com/onebox-dev/onebox/internal/metrics"
	"github.com/onebox-dev/onebox/invoker"
)

// The process's metrics: the invoker's runs and the embedded broker's counters,
// registered once in metrics.Registry() (which the HTTP bridge may also serve).
var (
	metricsListen string // --metrics-listen
	invMetrics    = invoker.NewMetrics()
	curBroker     atomic.Pointer[broker.Broker]
	brokerMetrics = metrics.NewBrokerCollector(func() *system.Info {
		if b := curBroker.Load(); b != nil {
			return b.Info()
		}
		return nil
	})
)

func init() {
	if err := metrics.Register(invMetrics, brokerMetrics); err != nil {
		panic(err)
	}
}

// metricsFlags adds --metrics-listen to c and starts the /metrics listener
// before c runs when it is set.
func metricsFlags(c *cobra.Command) {
	c.Flags().StringVar(&metricsListen, "metrics-listen", "", "serve Prometheus metrics on http://<addr>/metrics, e.g. 127.0.0.1:9100 (default off; env ONEBOX_METRICS_LISTEN)")
	c.PreRunE = func(cmd *cobra.Command, _ []string) error {
		addr := metricsListen
		if f := cmd.Flags().Lookup("metrics-listen"); (f == nil || !f.Changed) && os.Getenv("ONEBOX_METRICS_LISTEN") != "" {
			addr = os.Getenv("ONEBOX_METRICS_LISTEN")
		}
		if addr == "" || listenOff(addr) {
			return nil
		}
		_, err := metrics.Serve(cmd.Context(), addr, logger())
		return err
	}
}
