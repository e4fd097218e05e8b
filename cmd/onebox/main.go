// Command onebox is one binary for every part of onebox: `up` runs the embedded
// default (broker, invoker and bridges in one process, still talking MQTT to each
// other); `broker`, `invoker` and `bridge http|file|cron` run one part each;
// `invoke`, `handlers` and `version` are client verbs.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	cronbridge "github.com/onebox-dev/onebox/bridges/cron"
	"github.com/onebox-dev/onebox/internal/config"
	"github.com/onebox-dev/onebox/invoker/container"
)

// globals are the flags every subcommand shares.
type globals struct {
	configPath string
	logLevel   string
	brokerURL  string
	username   string
	password   string
}

var g globals

func main() {
	root := &cobra.Command{
		Use:   "onebox",
		Short: "One trigger = one container run: a small serverless box over MQTT",
		Long: `onebox turns a Linux box or Raspberry Pi with Docker (or Podman) into a small
serverless platform. A message on trigger/<handler> runs one fresh container of the
handler's image with the payload on stdin; its stdout is published on result/<id>
and its run record on status/<id>.

Start everything with the embedded defaults:  onebox up`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVarP(&g.configPath, "config", "c", "", "config file (default: ./onebox.yaml if present, else the embedded default; env ONEBOX_CONFIG)")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error (env ONEBOX_LOG_LEVEL)")
	pf.StringVar(&g.brokerURL, "broker-url", "", "MQTT broker the parts connect to, e.g. tcp://pi.local:1883 (env ONEBOX_BROKER_URL)")
	pf.StringVar(&g.username, "username", "", "MQTT user name (env ONEBOX_USERNAME)")
	pf.StringVar(&g.password, "password", "", "MQTT password (env ONEBOX_PASSWORD)")

	root.AddCommand(upCmd(), brokerCmd(), invokerCmd(), bridgeCmd(), invokeCmd(), handlersCmd(), versionCmd(), benchCmd(), passwdCmd())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	var ec exitCode
	if errors.As(err, &ec) {
		os.Exit(int(ec))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "onebox:", withHint(err))
		os.Exit(1)
	}
}

// engineHint says what to do when the container engine does not answer.
const engineHint = "onebox runs handlers in containers: start Docker (check that `docker info` answers), or point --runtime (or DOCKER_HOST) at Podman's socket, e.g. --runtime unix:///run/podman/podman.sock after `systemctl start podman.socket`"

// withHint adds what to do to errors that lack it.
func withHint(err error) error {
	if errors.Is(err, container.ErrEngineUnavailable) {
		return fmt.Errorf("%w\n%s", err, engineHint)
	}
	return err
}

// exitCode is returned by a command that wants a specific exit status.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// logger builds the process logger: text on stderr, quiet by default.
func logger() *slog.Logger {
	lv := g.logLevel
	if v := os.Getenv("ONEBOX_LOG_LEVEL"); v != "" && lv == "info" {
		lv = v
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(lv)); err != nil {
		level = slog.LevelInfo
	}
	l := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(l)
	return l
}

// loadOptions reads the config: --config, else $ONEBOX_CONFIG, else ./onebox.yaml
// if it exists, else the embedded default. Environment and flags apply on top.
func loadOptions(cmd *cobra.Command) (*config.Options, error) {
	path := g.configPath
	explicit := path != ""
	if !explicit {
		if p := os.Getenv("ONEBOX_CONFIG"); p != "" {
			path, explicit = p, true
		} else {
			path = "onebox.yaml"
		}
	}
	var o *config.Options
	if _, err := os.Stat(path); err == nil {
		o, err = config.Load(path)
		if err != nil {
			return nil, err
		}
	} else if explicit {
		return nil, fmt.Errorf("config file %s: %w (omit --config to run the embedded default)", path, err)
	} else {
		o = config.Default()
	}
	urlSet := o.BrokerURL != config.URLFor(o.Broker.Listen)
	o.Env(os.Getenv)
	if v := os.Getenv("ONEBOX_USERNAME"); v != "" && g.username == "" {
		g.username = v
	}
	if v := os.Getenv("ONEBOX_PASSWORD"); v != "" && g.password == "" {
		g.password = v
	}
	if os.Getenv("ONEBOX_BROKER_URL") != "" {
		urlSet = true
	}
	fl := cmd.Flags()
	str := func(name string, dst *string) {
		if f := fl.Lookup(name); f != nil && f.Changed {
			*dst = f.Value.String()
		}
	}
	str("broker-listen", &o.Broker.Listen)
	str("data-dir", &o.Broker.DataDir)
	str("http-listen", &o.HTTP.Listen)
	str("inbox", &o.File.Inbox)
	str("name", &o.Invoker.Name)
	str("share-group", &o.Invoker.ShareGroup)
	if g.brokerURL != "" {
		o.BrokerURL, urlSet = g.brokerURL, true
	}
	if !urlSet {
		o.BrokerURL = config.URLFor(o.Broker.Listen)
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if err := cronbridge.Check(o.Cron); err != nil {
		return nil, fmt.Errorf("%s: %w", configName(o), err)
	}
	return o, nil
}

func configName(o *config.Options) string {
	if o.Path == "" {
		return "config"
	}
	return o.Path
}

// reloadable applies a changed config file to a running invoker, and says what
// needs a restart instead.
func reloadable(old *config.Options, apply func(*config.Options)) func(*config.Options) error {
	return func(n *config.Options) error {
		log := logger()
		if err := cronbridge.Check(n.Cron); err != nil {
			return err
		}
		if !reflect.DeepEqual(old.Cron, n.Cron) {
			log.Warn("cron entries changed: they apply at the next start (handlers apply now)", "file", n.Path)
		}
		for _, c := range n.Cron {
			if n.Handlers[c.Handler] == nil {
				log.Warn("cron entry names a handler that is not configured: its ticks will be rejected", "entry", c.Name, "handler", c.Handler)
			}
		}
		apply(n)
		return nil
	}
}

// listenOff reports whether a listen address means "do not listen".
func listenOff(a string) bool {
	a = strings.TrimSpace(strings.ToLower(a))
	return a == "off" || a == "none" || a == "-"
}
