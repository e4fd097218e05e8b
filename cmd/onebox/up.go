package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/onebox-dev/onebox/internal/config"
)

func upCmd() *cobra.Command {
	var noBuild bool
	c := &cobra.Command{
		Use:   "up",
		Short: "Run everything in one process: broker, invoker, HTTP, file and cron bridges",
		Long: `up runs the embedded default: the MQTT broker, the invoker and the three bridges
in one process. The parts still talk to each other over MQTT only, exactly as
they do when each runs on its own. With no onebox.yaml it serves the demo
handlers (hello, goodbye, echo, inbox-ls, shell), building their images first
if the engine lacks them. The config file is watched: edit a handler's image and
the next trigger runs the new one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := loadOptions(cmd)
			if err != nil {
				return err
			}
			log := logger()
			ctx := cmd.Context()
			rt, err := newRuntime(log)
			if err != nil {
				return err
			}
			if _, err := rt.Info(ctx); err != nil {
				return err
			}
			if !noBuild {
				if err := ensureDemoImages(ctx, rt, o, os.Stderr, log); err != nil {
					return err
				}
			}
			b, err := startBroker(o)
			if err != nil {
				return err
			}
			defer b.Close()
			o.BrokerURL = b.URL()

			inv, err := startInvoker(ctx, o)
			if err != nil {
				return err
			}
			br, err := startBridges(ctx, o, bridgeSet{http: !listenOff(o.HTTP.Listen), file: !listenOff(o.File.Inbox), cron: true})
			if err != nil {
				stopInvoker(inv)
				return err
			}
			if o.Path != "" {
				config.Watch(ctx, o.Path, log, reloadable(o, func(n *config.Options) { inv.Reload(n.Handlers) }))
			}
			for _, c := range o.Cron {
				if o.Handlers[c.Handler] == nil {
					log.Warn("cron entry names a handler that is not configured: its ticks will be rejected", "entry", c.Name, "handler", c.Handler)
				}
			}
			banner(os.Stderr, o, b.Addr(), br)
			<-ctx.Done()
			fmt.Fprintln(os.Stderr, "onebox: shutting down…")
			br.close()
			stopInvoker(inv)
			return nil
		},
	}
	brokerFlags(c)
	invokerFlags(c)
	bridgeFlags(c)
	metricsFlags(c)
	c.Flags().BoolVar(&noBuild, "no-build", false, "do not build missing demo handler images")
	return c
}

func banner(w io.Writer, o *config.Options, brokerAddr string, br *bridges) {
	names := make([]string, 0, len(o.Handlers))
	for n := range o.Handlers {
		names = append(names, n)
	}
	sort.Strings(names)
	src := "embedded default"
	if o.Path != "" {
		src = o.Path + " (watched)"
	}
	host, port := "localhost", brokerAddr[strings.LastIndex(brokerAddr, ":")+1:]
	pflag := ""
	if port != "1883" {
		pflag = " -p " + port
	}
	ex := "hello"
	if o.Handlers["echo"] != nil {
		ex = "echo"
	} else if len(names) > 0 && o.Handlers["hello"] == nil {
		ex = names[0]
	}
	fmt.Fprintf(w, "\nonebox is up (%s): MQTT on %s, handlers: %s\n", src, brokerAddr, strings.Join(names, ", "))
	fmt.Fprintf(w, "  watch:    mosquitto_sub -h %s%s -v -t 'result/#' -t 'status/#'\n", host, pflag)
	fmt.Fprintf(w, "  trigger:  mosquitto_pub -h %s%s -t trigger/%s -m hi\n", host, pflag, map[bool]string{true: "hello", false: ex}[o.Handlers["hello"] != nil])
	bflag := ""
	if o.BrokerURL != config.URLFor(config.DefaultBrokerListen) {
		bflag = " --broker-url " + o.BrokerURL
	}
	fmt.Fprintf(w, "  invoke:   onebox invoke%s %s 'hello there'\n", bflag, ex)
	if br != nil && br.httpAddr != "" {
		fmt.Fprintf(w, "  http:     curl http://localhost:%s/run/%s\n", br.httpAddr[strings.LastIndex(br.httpAddr, ":")+1:], ex)
	}
	if br != nil && br.inbox != "" {
		rel := br.inbox
		if wd, err := os.Getwd(); err == nil {
			if r, err := filepath.Rel(wd, br.inbox); err == nil && !strings.HasPrefix(r, "..") {
				rel = r
			}
		}
		fmt.Fprintf(w, "  file:     cp README.md %s/%s/   (the result lands in %s)\n", rel, ex, filepath.Join(filepath.Dir(rel), "done", ex))
	}
	fmt.Fprintln(w, "  stop:     Ctrl-C")
	fmt.Fprintln(w)
}
