package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/onebox-dev/onebox/internal/acl"
	"github.com/onebox-dev/onebox/internal/config"
	"github.com/onebox-dev/onebox/invoker"
)

var shutdownGrace time.Duration

func invokerFlags(c *cobra.Command) {
	c.Flags().String("name", "", "invoker instance name: labels its containers and its persistent session (default: the host name; env ONEBOX_NAME)")
	c.Flags().String("share-group", "", "share triggers with other invokers through $share/<group>/trigger/…")
	c.Flags().StringVar(&runtimeHost, "runtime", "", "container engine socket, e.g. unix:///run/podman/podman.sock (default: DOCKER_HOST or the Docker socket)")
	c.Flags().DurationVar(&shutdownGrace, "shutdown-grace", 10*time.Second, "at SIGINT/SIGTERM, how long runs in flight may finish before they are stopped")
}

// startInvoker connects an invoker to o.BrokerURL and keeps its handlers in step
// with the config file.
func startInvoker(ctx context.Context, o *config.Options) (*invoker.Service, error) {
	log := logger()
	rt, err := newRuntime(log)
	if err != nil {
		return nil, err
	}
	user, pass := credsFor(acl.Invoker)
	s, err := invoker.Start(ctx, invoker.Options{
		Name: o.Invoker.Name, Runtime: rt, Concurrency: o.Invoker.Concurrency,
		StdoutCap: int64(o.Invoker.StdoutCap), MaxPacket: int64(o.Broker.MaxPacket), Grace: o.Invoker.Grace.D(),
		DedupeCount: o.Invoker.DedupeCount, DedupeAge: o.Invoker.DedupeAge.D(), Logger: log, Observer: invMetrics.Observe,
	}, invoker.MQTTOptions{URL: o.BrokerURL, Username: user, Password: pass, ShareGroup: o.Invoker.ShareGroup}, o.Handlers)
	if err != nil {
		return nil, err
	}
	invMetrics.Attach(s.Invoker)
	return s, nil
}

func stopInvoker(s *invoker.Service) {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		logger().Warn("invoker shutdown", "err", err)
	}
}

func invokerCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "invoker",
		Short: "Run only the invoker, against any MQTT broker (--broker-url)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := loadOptions(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			s, err := startInvoker(ctx, o)
			if err != nil {
				return err
			}
			if o.Path != "" {
				config.Watch(ctx, o.Path, logger(), reloadable(o, func(n *config.Options) { s.Reload(n.Handlers) }))
			}
			<-ctx.Done()
			stopInvoker(s)
			return nil
		},
	}
	invokerFlags(c)
	metricsFlags(c)
	return c
}
