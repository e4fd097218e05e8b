package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	cronbridge "github.com/onebox-dev/onebox/bridges/cron"
	filebridge "github.com/onebox-dev/onebox/bridges/file"
	httpbridge "github.com/onebox-dev/onebox/bridges/http"
	"github.com/onebox-dev/onebox/internal/acl"
	"github.com/onebox-dev/onebox/internal/config"
)

func bridgeFlags(c *cobra.Command) {
	c.Flags().String("http-listen", config.DefaultHTTPListen, "HTTP bridge listen address, or off (env ONEBOX_HTTP_LISTEN)")
	c.Flags().String("inbox", config.DefaultInbox, "file bridge inbox folder: a file in <inbox>/<handler>/ triggers <handler>; or off (env ONEBOX_INBOX)")
}

type bridgeSet struct{ http, file, cron bool }

type bridges struct {
	httpAddr string
	inbox    string
	closers  []func() error
}

func (b *bridges) close() {
	for i := len(b.closers) - 1; i >= 0; i-- {
		b.closers[i]()
	}
}

// startBridges starts the chosen bridges against o.BrokerURL.
func startBridges(ctx context.Context, o *config.Options, set bridgeSet) (*bridges, error) {
	log := logger()
	out := &bridges{}
	fail := func(err error) (*bridges, error) {
		out.close()
		return nil, err
	}
	if set.http {
		ho := httpbridge.FromConfig(o)
		ho.Logger = log
		ho.Username, ho.Password = credsFor(acl.HTTP)
		hb, err := httpbridge.New(ho)
		if err != nil {
			return fail(err)
		}
		if err := hb.Start(ctx); err != nil {
			return fail(err)
		}
		out.closers = append(out.closers, hb.Close)
		out.httpAddr = hb.Addr()
		// Be ready (connected, an invoker seen) before saying so, for a while.
		if err := hb.WaitReady(5 * time.Second); err != nil {
			log.Warn("HTTP bridge not ready yet; it answers 503 until it is", "why", err)
		}
	}
	if set.file {
		inbox, _ := filepath.Abs(o.File.Inbox)
		// By convention inbox/<handler>/ triggers <handler>: make the folders.
		for n := range o.Handlers {
			if err := os.MkdirAll(filepath.Join(inbox, n), 0o755); err != nil {
				return fail(fmt.Errorf("inbox folder: %w (set --inbox or file.inbox)", err))
			}
		}
		user, pass := credsFor(acl.File)
		fb, err := filebridge.New(filebridge.Options{Inbox: inbox, Folders: o.File.Folders, BrokerURL: o.BrokerURL, Username: user, Password: pass, MaxPayload: int64(o.Broker.MaxPacket), Logger: log})
		if err != nil {
			return fail(err)
		}
		if err := fb.Start(ctx); err != nil {
			return fail(err)
		}
		out.closers = append(out.closers, fb.Close)
		out.inbox = inbox
	}
	if set.cron && len(o.Cron) > 0 {
		user, pass := credsFor(acl.Cron)
		cb, err := cronbridge.New(cronbridge.Options{Entries: o.Cron, BrokerURL: o.BrokerURL, Username: user, Password: pass, Logger: log})
		if err != nil {
			return fail(err)
		}
		if err := cb.Start(ctx); err != nil {
			return fail(err)
		}
		out.closers = append(out.closers, cb.Close)
	}
	return out, nil
}

func bridgeCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "bridge http|file|cron",
		Short: "Run one bridge on its own: an ordinary MQTT client that publishes triggers",
	}
	for _, kind := range []string{"http", "file", "cron"} {
		kind := kind
		sub := &cobra.Command{
			Use:   kind,
			Short: map[string]string{"http": "HTTP bridge: POST/GET /run/<handler> answers with the run's stdout", "file": "File bridge: a complete file in <inbox>/<handler>/ triggers <handler>", "cron": "Cron bridge: the schedules under cron: in onebox.yaml"}[kind],
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				o, err := loadOptions(cmd)
				if err != nil {
					return err
				}
				if kind == "cron" && len(o.Cron) == 0 {
					return fmt.Errorf("no cron entries: add them under cron: in onebox.yaml (see deploy/onebox.example.yaml)")
				}
				br, err := startBridges(cmd.Context(), o, bridgeSet{http: kind == "http", file: kind == "file", cron: kind == "cron"})
				if err != nil {
					return err
				}
				<-cmd.Context().Done()
				br.close()
				return nil
			},
		}
		bridgeFlags(sub)
		c.AddCommand(sub)
	}
	return c
}
