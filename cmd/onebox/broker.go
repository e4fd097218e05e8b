package main

import (
	"github.com/spf13/cobra"

	"github.com/onebox-dev/onebox/broker"
	"github.com/onebox-dev/onebox/internal/config"
)

func brokerFlags(c *cobra.Command) {
	c.Flags().String("broker-listen", config.DefaultBrokerListen, "MQTT TCP listen address (env ONEBOX_BROKER_LISTEN)")
	c.Flags().String("data-dir", config.DefaultDataDir, "folder for the broker's persistent sessions and queued messages (env ONEBOX_DATA_DIR)")
}

func startBroker(o *config.Options) (*broker.Broker, error) {
	bo := broker.Options{Listen: o.Broker.Listen, MaxPacket: int64(o.Broker.MaxPacket), DataDir: o.Broker.DataDir, Logger: logger(),
		Users: brokerUsers(o), Sys: o.Broker.Sys}
	if t := o.Broker.TLS; t != nil {
		bo.TLS = &broker.TLSOptions{Listen: t.Listen, CertFile: t.Cert, KeyFile: t.Key}
	}
	if w := o.Broker.WebSocket; w != nil {
		bo.WebSocket = w.Listen
	}
	b, err := broker.New(bo)
	if err != nil {
		return nil, err
	}
	if err := b.Start(); err != nil {
		b.Close()
		return nil, err
	}
	curBroker.Store(b)
	warnIfOpen(b)
	return b, nil
}

func brokerCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "broker",
		Short: "Run only the embedded MQTT broker",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := loadOptions(cmd)
			if err != nil {
				return err
			}
			b, err := startBroker(o)
			if err != nil {
				return err
			}
			<-cmd.Context().Done()
			return b.Close()
		},
	}
	brokerFlags(c)
	metricsFlags(c)
	return c
}
