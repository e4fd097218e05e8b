// Package httpbridge is onebox's HTTP bridge: an HTTP server that turns a request
// into a trigger and answers with the run's result. It is an ordinary MQTT 3.1.1
// client with no private API to the invoker: everything it does, mosquitto_pub
// and mosquitto_sub could do.
//
// # Routes
//
//	POST|GET /run/<handler>      run <handler> with the request body (or nothing) as stdin
//	GET|POST /run                run Options.DefaultHandler (the workshop's step 2)
//	         ?async=1            answer 202 {"id":"…"} with Location: /runs/<id> at once
//	GET      /runs/<id>          the latest run record (JSON, as on status/<id>)
//	GET      /runs/<id>/result   the run's stdout, answered as /run would have answered
//	GET      /healthz            200 "ok", or 503 with the reason
//	GET      /metrics            a few counters (Prometheus text format)
//
// # One run
//
// The bridge picks the run id "http-" + topics.NewID(). The "http-" prefix is how the
// invoker fills the record's source (http); the file and cron bridges use "file-" and
// "cron-"; any other id, or none, is source mqtt. The bridge registers the id with its
// one status/+ and result/+ subscription (internal/runwait), then publishes the body
// with QoS 1 on trigger/<handler>/<id>, and waits for the final record (and
// result/<id>) for the handler's timeout, read from the retained onebox/handlers list
// (Options.DefaultTimeout when it is not listed), plus Options.Margin.
//
// The handler name is checked after URL decoding: it must match
// [a-z0-9][a-z0-9_-]{0,62}, so %2F, %2e%2e, +, #, NUL and upper case are 400 and never
// reach a topic level. The body may be at most Options.MaxBody (the broker's packet
// limit) less the MQTT header of the trigger packet (at most 150 bytes), so that the
// PUBLISH always fits the broker's limit; a larger body is 413, refused on its
// Content-Length before it is read, or as soon as a chunked body passes the limit.
//
// # Status codes
//
//	200  succeeded: the body is stdout, verbatim (application/octet-stream)
//	502  failed with an exit code: the body is stdout; X-Onebox-Exit-Code has the code
//	502  failed otherwise (image missing, oom, wrong platform…): a plain-text reason
//	504  the run timed out (record state timeout), or the bridge's wait ran out: the run
//	     goes on; the body names the id, and GET /runs/<id> follows it
//	404  rejected: unknown handler (and unknown paths and run ids)
//	429  rejected: busy (with Retry-After: 1)
//	413  rejected: too large, or the body is larger than the bridge allows
//	400  a bad handler name or run id
//	503  the bridge is not connected to the broker, or no invoker is online (no retained
//	     onebox/invoker/<name> with state online), or the trigger was not acknowledged,
//	     or a rejection for shutdown, interruption or an engine that is down; answered
//	     at once, with the reason
//	202  ?async=1 accepted; GET /runs/<id>/result of a run not finished yet
//	410  GET /runs/<id>/result of a run whose stdout is no longer kept
//
// Every run answer carries X-Onebox-Id, X-Onebox-State and, when the record has them,
// X-Onebox-Exit-Code, X-Onebox-Duration-Ms and X-Onebox-Reason. Error messages written
// by the bridge are text/plain; stdout is application/octet-stream.
//
// # A client that goes away
//
// A trigger that was published is not taken back: like an asynchronous Lambda
// invocation, the run goes on when the HTTP client hangs up or the bridge's wait runs
// out (504). The bridge stops waiting and forgets the waiter; the run's record stays
// readable at GET /runs/<id> while the bridge keeps it.
//
// # Kept runs
//
// The bridge keeps the latest record of its recent runs (sync and async) and the stdout
// of async runs and of sync runs answered 504, bounded to 256 runs and 16 MiB of stdout;
// the oldest are evicted first. Before the invoker's first status arrives, GET
// /runs/<id> shows state "published". Runs are kept in memory only: a restarted bridge
// knows none.
package httpbridge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/onebox-dev/onebox/internal/config"
	"github.com/onebox-dev/onebox/internal/mqttc"
	"github.com/onebox-dev/onebox/internal/runwait"
	"github.com/onebox-dev/onebox/internal/state"
	"github.com/onebox-dev/onebox/internal/topics"
)

// IDPrefix starts every run id the HTTP bridge makes; the invoker reads it as source http.
const IDPrefix = "http-"

// Defaults.
const (
	DefaultMaxBody        = 1 << 20
	DefaultMargin         = 10 * time.Second
	DefaultDefaultTimeout = 30 * time.Second
	DefaultBrokerURL      = "tcp://127.0.0.1:1883"

	defaultKeepRuns  = 256
	defaultKeepBytes = 16 << 20
	publishWait      = 5 * time.Second
	subscribeWait    = 10 * time.Second
	maxHeaderBytes   = 64 << 10
	// maxTriggerOverhead bounds the MQTT header of a trigger PUBLISH: fixed header
	// (1), remaining length (≤4), topic length (2), topic (≤ 8+63+1+64), packet id (2).
	maxTriggerOverhead = 1 + 4 + 2 + len("trigger/") + topics.MaxHandlerLen + 1 + topics.MaxIDLen + 2
)

// Options configure a Bridge. Zero values take the defaults.
type Options struct {
	Listen    string // default :8080
	BrokerURL string // default tcp://127.0.0.1:1883
	ClientID  string // default onebox-http-<host>-<rand>
	Username  string
	Password  string
	// DefaultHandler is what GET /run runs (the workshop's step 2); "" disables /run.
	DefaultHandler string
	// MaxBody is the broker's packet limit (default 1 MiB). A body that would not
	// fit in one trigger PUBLISH under it is refused with 413 before it is read whole.
	MaxBody int64
	// Margin is added to the handler's timeout for the wait (default 10s; never
	// negative, so the wait is never shorter than the handler's timeout).
	Margin time.Duration
	// DefaultTimeout is the handler timeout assumed when the handler is not in the
	// retained onebox/handlers list (default 30s).
	DefaultTimeout time.Duration
	// Tokens, when any are set, are the bearer tokens a request must carry
	// (Authorization: Bearer <token>) on every route but /healthz. Without tokens
	// the bridge is open, and says so at start.
	Tokens []string
	Logger *slog.Logger
}

// FromConfig returns the bridge's options from onebox's configuration.
func FromConfig(c *config.Options) Options {
	return Options{
		Listen:         c.HTTP.Listen,
		BrokerURL:      c.BrokerURL,
		DefaultHandler: c.HTTP.DefaultHandler,
		MaxBody:        int64(c.Broker.MaxPacket),
		DefaultTimeout: config.DefaultTimeout,
		Tokens:         c.HTTP.Tokens,
	}
}

// Bridge is the HTTP bridge.
type Bridge struct {
	o      Options
	log    *slog.Logger
	waiter *runwait.Waiter
	runs   *runStore
	client mqtt.Client

	readTimeout  time.Duration // derived from MaxBody; tests may lower it before Start
	writeTimeout time.Duration // for all but run requests, which set their own

	mu         sync.Mutex
	handlers   state.Handlers
	invokers   map[string]state.Invoker
	gen        atomic.Uint64 // connection generation, bumped by every OnConnect
	subscribed atomic.Bool

	srv    *http.Server
	ln     net.Listener
	ctx    context.Context // cancelled by Close: waiting requests answer at once
	cancel context.CancelFunc

	closeOnce sync.Once
	closeErr  error
	metrics   metrics
}

// New checks o, fills the defaults and returns a Bridge that is not started.
func New(o Options) (*Bridge, error) {
	if o.Listen == "" {
		o.Listen = config.DefaultHTTPListen
	}
	if o.BrokerURL == "" {
		o.BrokerURL = DefaultBrokerURL
	}
	if o.ClientID == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "onebox"
		}
		o.ClientID = mqttc.ClientID("onebox-http-" + host + "-")
	}
	if o.MaxBody == 0 {
		o.MaxBody = DefaultMaxBody
	}
	if o.MaxBody <= int64(maxTriggerOverhead) {
		return nil, fmt.Errorf("httpbridge: max body %d bytes leaves no room for a payload: use at least 1k (the broker's packet limit)", o.MaxBody)
	}
	if o.Margin == 0 {
		o.Margin = DefaultMargin
	}
	if o.Margin < 0 {
		o.Margin = 0
	}
	if o.DefaultTimeout <= 0 {
		o.DefaultTimeout = DefaultDefaultTimeout
	}
	if o.DefaultHandler != "" && !topics.ValidHandler(o.DefaultHandler) {
		return nil, fmt.Errorf("httpbridge: default handler %q: %w", o.DefaultHandler, topics.ErrBadHandler)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Bridge{
		o:           o,
		log:         o.Logger.With("part", "http"),
		waiter:      runwait.New(),
		runs:        newRunStore(defaultKeepRuns, defaultKeepBytes),
		readTimeout: 15*time.Second + time.Duration(o.MaxBody/(64<<10))*time.Second,
		invokers:    map[string]state.Invoker{},
		ctx:         ctx,
		cancel:      cancel,
	}
	b.writeTimeout = b.readTimeout + 15*time.Second
	b.metrics.codes = map[int]uint64{}
	return b, nil
}

// Start listens on Options.Listen and connects to the broker in the background: it
// does not fail when the broker is down (it answers 503 until it is connected, and
// reconnects by itself). When ctx ends, the bridge is closed.
func (b *Bridge) Start(ctx context.Context) error {
	if b.ln != nil {
		return errors.New("httpbridge: already started")
	}
	ln, err := net.Listen("tcp", b.o.Listen)
	if err != nil {
		return fmt.Errorf("httpbridge: listen on %s: %w", b.o.Listen, err)
	}
	b.ln = ln
	b.client = mqttc.New(mqttc.Options{
		URL:          b.o.BrokerURL,
		ClientID:     b.o.ClientID,
		Username:     b.o.Username,
		Password:     b.o.Password,
		CleanSession: true, // answers to a vanished bridge are of no use to anyone
		OnConnect:    b.onConnect,
		Logger:       b.log,
	})
	b.client.Connect() // retries by itself; readiness is checked per request
	b.srv = &http.Server{
		Handler:           b.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       b.readTimeout,
		// Run requests move their own write deadline past their wait.
		WriteTimeout:   b.writeTimeout,
		IdleTimeout:    120 * time.Second,
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(b.log.Handler(), slog.LevelDebug),
	}
	go func() {
		if err := b.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			b.log.Error("HTTP server stopped", "err", err)
		}
	}()
	context.AfterFunc(ctx, func() { _ = b.Close() })
	b.log.Info("HTTP bridge listening", "addr", ln.Addr().String(), "broker", b.o.BrokerURL, "tokens", len(b.o.Tokens))
	if len(b.o.Tokens) == 0 {
		b.log.Warn("the HTTP bridge is OPEN: anyone who can reach "+ln.Addr().String()+" can run handlers; set http.tokens in onebox.yaml", "addr", ln.Addr().String())
	}
	return nil
}

// Addr is the address the bridge listens on ("" before Start).
func (b *Bridge) Addr() string {
	if b.ln == nil {
		return ""
	}
	return b.ln.Addr().String()
}

// Close stops the HTTP server (waiting requests answer 503 at once; their runs go
// on) and disconnects from the broker.
func (b *Bridge) Close() error {
	b.closeOnce.Do(func() {
		b.cancel()
		if b.srv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := b.srv.Shutdown(ctx); err != nil {
				b.closeErr = b.srv.Close()
			}
			cancel()
		}
		if b.client != nil {
			b.client.Disconnect(250)
		}
	})
	return b.closeErr
}

// onConnect runs (in its own goroutine, see paho) after every (re)connect: it
// subscribes to the answers and to onebox's retained state, all with one handler.
func (b *Bridge) onConnect(c mqtt.Client) {
	gen := b.gen.Add(1)
	b.subscribed.Store(false)
	b.mu.Lock()
	clear(b.invokers) // the retained states come again with the subscription
	b.mu.Unlock()
	filters := map[string]byte{topics.HandlersTopic: 1, topics.InvokerStatePrefix + "+": 1}
	for f, q := range runwait.Filters {
		filters[f] = q
	}
	for attempt := 1; c.IsConnectionOpen() && gen == b.gen.Load(); attempt++ {
		err := mqttc.Wait(c.SubscribeMultiple(filters, b.onMessage), subscribeWait)
		if err == nil {
			if gen == b.gen.Load() {
				b.subscribed.Store(true)
			}
			b.log.Debug("subscribed", "broker", b.o.BrokerURL)
			return
		}
		b.log.Warn("cannot subscribe to the answers; retrying", "broker", b.o.BrokerURL, "err", err)
		select {
		case <-time.After(min(time.Duration(attempt)*500*time.Millisecond, 5*time.Second)):
		case <-b.ctx.Done():
			return
		}
	}
}

// onMessage is the paho handler of every subscription. It never blocks.
func (b *Bridge) onMessage(c mqtt.Client, m mqtt.Message) {
	t := m.Topic()
	switch {
	case t == topics.HandlersTopic:
		var h state.Handlers
		if len(m.Payload()) > 0 {
			if err := unmarshal(m.Payload(), &h); err != nil {
				b.log.Warn("ignoring a bad handler list", "topic", t, "err", err)
				return
			}
		}
		b.mu.Lock()
		b.handlers = h
		b.mu.Unlock()
	case len(t) > len(topics.InvokerStatePrefix) && t[:len(topics.InvokerStatePrefix)] == topics.InvokerStatePrefix:
		name := t[len(topics.InvokerStatePrefix):]
		b.mu.Lock()
		defer b.mu.Unlock()
		if len(m.Payload()) == 0 { // retained state cleared
			delete(b.invokers, name)
			return
		}
		var s state.Invoker
		if err := unmarshal(m.Payload(), &s); err != nil {
			b.log.Warn("ignoring a bad invoker state", "topic", t, "err", err)
			return
		}
		// Handlers run concurrently: an older state must not overwrite a newer one.
		if old, ok := b.invokers[name]; ok && !old.At.IsZero() && !s.At.IsZero() && s.At.Before(old.At) {
			return
		}
		b.invokers[name] = s
	default:
		b.waiter.Handle(c, m)
		b.runs.handle(t, m.Payload())
	}
}

// ready says why the bridge cannot take a run now ("" when it can).
func (b *Bridge) ready() string {
	if b.client == nil || !b.client.IsConnectionOpen() {
		return fmt.Sprintf("not connected to the MQTT broker at %s (reconnecting); is the broker running?", b.o.BrokerURL)
	}
	if !b.subscribed.Load() {
		return "connected to the MQTT broker but not subscribed to the answers yet"
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.invokers {
		if s.State == state.Online {
			return ""
		}
	}
	return "no invoker online (no retained onebox/invoker/<name> in state online): start one with `onebox invoker` or `onebox up`"
}

// waitFor is how long to wait for a run of handler.
func (b *Bridge) waitFor(handler string) time.Duration {
	b.mu.Lock()
	t := b.handlers.Timeout(handler)
	b.mu.Unlock()
	if t <= 0 {
		t = b.o.DefaultTimeout
	}
	return t + b.o.Margin
}

// maxPayload is the largest body that fits one trigger PUBLISH on topic within
// MaxBody bytes: fixed header (1), remaining length (1-4), topic length (2), topic,
// packet id (2), payload.
func (b *Bridge) maxPayload(topic string) int64 {
	fixed := int64(2 + len(topic) + 2)
	for rl, most := range []int64{127, 16383, 2097151, 268435455} {
		if r := b.o.MaxBody - 1 - int64(rl+1); r <= most {
			return r - fixed
		}
	}
	return 268435455 - fixed
}
