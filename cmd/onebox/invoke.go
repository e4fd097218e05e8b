package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/spf13/cobra"

	"github.com/onebox-dev/onebox/internal/mqttc"
	"github.com/onebox-dev/onebox/internal/record"
	"github.com/onebox-dev/onebox/internal/runwait"
	"github.com/onebox-dev/onebox/internal/topics"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func invokeCmd() *cobra.Command {
	var (
		asJSON  bool
		id      string
		timeout time.Duration
	)
	c := &cobra.Command{
		Use:   "invoke <handler> [payload|-]",
		Short: "Trigger a handler once, wait, print its stdout and exit with its exit code",
		Long: `invoke publishes trigger/<handler>/<id> (the payload, or stdin with "-"),
waits for result/<id> and status/<id>, prints the run's stdout and exits with the
run's exit code (124 on timeout, 125 when the run was rejected or could not start).
It is a plain MQTT client: mosquitto_pub and mosquitto_sub can do the same.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			o, err := loadOptions(cmd)
			if err != nil {
				return err
			}
			handler := args[0]
			if !topics.ValidHandler(handler) {
				return fmt.Errorf("handler %q: %w", handler, topics.ErrBadHandler)
			}
			var payload []byte
			if len(args) == 2 {
				if args[1] == "-" {
					payload, err = io.ReadAll(io.LimitReader(os.Stdin, int64(o.Broker.MaxPacket)+1))
					if err != nil {
						return err
					}
				} else {
					payload = []byte(args[1])
				}
			}
			if int64(len(payload)) > int64(o.Broker.MaxPacket)-512 {
				return fmt.Errorf("payload of %d bytes is larger than the broker's packet limit (%d bytes, broker.max_packet)", len(payload), o.Broker.MaxPacket)
			}
			if id == "" {
				id = topics.NewID()
			} else if !topics.ValidID(id) {
				return fmt.Errorf("--id %q: %w", id, topics.ErrBadID)
			}
			if timeout == 0 {
				if h := o.Handlers[handler]; h != nil {
					timeout = h.Timeout.D() + 30*time.Second
				} else {
					timeout = 2 * time.Minute
				}
			}
			rec, out, err := invokeOnce(cmd.Context(), o.BrokerURL, handler, id, payload, timeout)
			if err != nil {
				return err
			}
			if asJSON {
				cmd.OutOrStdout().Write(rec.Marshal())
				fmt.Fprintln(cmd.OutOrStdout())
			} else {
				cmd.OutOrStdout().Write(out)
				// As docker run does: the handler's stderr (the record keeps its tail).
				if rec.Stderr != "" {
					cmd.ErrOrStderr().Write([]byte(rec.Stderr))
				}
			}
			switch {
			case rec.State == record.Succeeded:
				return nil
			case rec.State == record.Timeout:
				fmt.Fprintf(os.Stderr, "onebox: run %s timed out\n", rec.ID)
				return exitCode(124)
			case rec.ExitCode != nil && *rec.ExitCode != 0:
				switch rec.Reason {
				case record.ReasonOOM:
					fmt.Fprintf(os.Stderr, "onebox: run %s was killed: out of memory\n", rec.ID)
				case record.ReasonExit, "":
				default:
					fmt.Fprintf(os.Stderr, "onebox: run %s %s (%s), exit code %d\n", rec.ID, rec.State, rec.Reason, *rec.ExitCode)
				}
				return exitCode(*rec.ExitCode)
			default:
				msg := rec.Reason
				if rec.Error != "" {
					msg = rec.Error
				}
				fmt.Fprintf(os.Stderr, "onebox: run %s %s: %s\n", rec.ID, rec.State, msg)
				return exitCode(125)
			}
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the run record (JSON) instead of stdout")
	c.Flags().StringVar(&id, "id", "", "run id to use (default: a new one)")
	c.Flags().DurationVar(&timeout, "timeout", 0, "how long to wait for the answer (default: the handler's timeout + 30s)")
	return c
}

// invokeOnce publishes one trigger and waits for its answer, subscribing first.
func invokeOnce(ctx context.Context, url, handler, id string, payload []byte, timeout time.Duration) (record.Record, []byte, error) {
	w := runwait.New()
	wait := w.Register(id)
	defer wait.Cancel()
	subscribed := make(chan error, 1)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := mqttc.Connect(cctx, mqttc.Options{
		URL: url, ClientID: "onebox-invoke-" + randHex(6), Username: g.username, Password: g.password, CleanSession: true, FailFast: true,
		OnConnect: func(c mqtt.Client) {
			// Only this run's topics: a client need not see every result.
			t := c.SubscribeMultiple(map[string]byte{topics.Result(id): 1, topics.Status(id): 1}, w.Handle)
			go func() { subscribed <- mqttc.Wait(t, 10*time.Second) }()
		},
	})
	if err != nil {
		c.Disconnect(0)
		return record.Record{}, nil, err
	}
	defer c.Disconnect(100)
	select {
	case err := <-subscribed:
		if err != nil {
			return record.Record{}, nil, fmt.Errorf("subscribe: %w", err)
		}
	case <-ctx.Done():
		return record.Record{}, nil, ctx.Err()
	}
	if err := mqttc.Wait(c.Publish(topics.Trigger(handler, id), 1, false, payload), 10*time.Second); err != nil {
		return record.Record{}, nil, fmt.Errorf("publish %s: %w", topics.Trigger(handler, id), err)
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-wait.Done():
		a := wait.Answer()
		return a.Record, a.Result, nil
	case <-timer.C:
		return record.Record{}, nil, fmt.Errorf("no answer for run %s within %s: is an invoker running? (`onebox up` or `onebox invoker`; watch with mosquitto_sub -v -t 'status/#'). An id already used within invoker.dedupe_age (10m by default) is not run again: use a new --id", id, timeout)
	case <-ctx.Done():
		return record.Record{}, nil, ctx.Err()
	}
}
