// Package broker is onebox's embedded MQTT broker: mochi-mqtt/server v2 with a TCP
// listener, trigger-topic validation, a packet size limit, bounded per-client
// queues and, when a data directory is given, bolt persistence of sessions,
// subscriptions, queued QoS 1/2 messages and retained messages.
//
// Each behaviour is a mochi hook in its own file (auth.go, triggers.go, limits.go),
// so that users and ACLs can later replace the allow-all hook without touching
// the rest.
package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"go.etcd.io/bbolt"

	"github.com/onebox-dev/onebox/internal/config"
)

// Defaults and fixed limits.
const (
	DefaultListen    = ":1883"
	DefaultMaxPacket = 1 << 20 // 1 MiB

	// DataFile is the bolt file inside Options.DataDir.
	DataFile = "broker.db"

	// maxPacketLimit is the largest packet MQTT can describe (256 MiB remaining
	// length plus a 5-byte fixed header).
	maxPacketLimit = 268435455 + 5

	// writesPending bounds each client's outbound queue: a slow consumer has QoS 0
	// messages dropped (and QoS 1/2 kept for resend) instead of growing memory.
	writesPending = 1024
	// maxInflight bounds the QoS 1/2 messages held per session, including those
	// queued for an offline persistent session (e.g. an invoker that is down).
	maxInflight = 4096
	// sessionExpiry is how long a disconnected persistent session (clean session
	// false) and its queue are kept: 30 days. MQTT 5 clients may ask for less.
	sessionExpiry = 30 * 24 * 3600
	// messageExpiry drops queued messages older than a day.
	messageExpiry = 24 * 3600
	// sysInterval is how often mochi refreshes $SYS (and, with persistence, writes
	// its counters to disk). mochi cannot turn this off; once an hour keeps the SD
	// card of a Pi quiet. $SYS is not readable from the network anyway (auth.go).
	sysInterval = 3600

	listenerID = "tcp"
)

// Errors. Each is wrapped with the value at fault and what to change.
var (
	ErrOptions    = errors.New("broker: bad options")
	ErrListen     = errors.New("broker: cannot listen")
	ErrAddrInUse  = errors.New("broker: address already in use")
	ErrDataDir    = errors.New("broker: cannot use data directory")
	ErrDataLocked = errors.New("broker: data file is locked by another process")
	ErrStarted    = errors.New("broker: already started")
	ErrClosed     = errors.New("broker: closed")

	// errWillRefused ends a connection whose will is on an invalid trigger topic.
	errWillRefused = errors.New("will on an invalid trigger topic refused")
)

// Options configure a Broker. Every field is optional.
type Options struct {
	Listen    string       // TCP address, e.g. ":1883" or "127.0.0.1:0"; default ":1883"
	MaxPacket int64        // bytes, default 1 MiB; enforced from the fixed header, before the payload is buffered
	DataDir   string       // bolt persistence file lives here (DataDir/broker.db); "" = in memory
	Logger    *slog.Logger // nil = slog.Default(); mochi's own logs pass at Warn and above

	// Users, by user name (auth.go). With no user holding a PasswordHash the
	// broker is open: clients without a known user name connect anonymously.
	Users     map[string]User
	Sys       bool        // let clients read $SYS (anonymous ones in open mode, users with a $SYS/# rule)
	TLS       *TLSOptions // optional MQTT over TLS listener (listen.go)
	WebSocket string      // optional MQTT over WebSocket listen address, e.g. ":9001"
}

// Broker is a running (or ready to run) embedded MQTT broker.
type Broker struct {
	opts        Options
	log         *slog.Logger
	srv         *mqtt.Server
	invalid     atomic.Uint64 // trigger publishes refused or dropped
	dupes       *dupes        // QoS 1 trigger resends (dupes.go)
	slowDropped atomic.Uint64 // messages dropped for clients too slow to read (limits.go)
	slowCut     atomic.Uint64 // clients disconnected for not reading (limits.go)
	mu          sync.Mutex
	listener    net.Listener // TCP; with tlsLn and wsLn: the bound addresses
	tlsLn       net.Listener
	wsLn        net.Listener
	auth        *authHook
	store       *boltStore // nil without a DataDir
	started     bool
	closed      bool
}

// New builds a broker and, with a DataDir, opens its bolt file. It does not listen
// yet: call Start.
func New(o Options) (*Broker, error) {
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if o.MaxPacket == 0 {
		o.MaxPacket = DefaultMaxPacket
	}
	if o.MaxPacket < 0 || o.MaxPacket > maxPacketLimit {
		return nil, fmt.Errorf("%w: max packet size %d bytes is out of range: use 1 to %d (broker.max_packet in onebox.yaml)",
			ErrOptions, o.MaxPacket, int64(maxPacketLimit))
	}
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(o.MaxPacket)
	caps.MaximumClientWritesPending = writesPending
	caps.MaximumInflight = maxInflight
	caps.MaximumSessionExpiryInterval = sessionExpiry
	caps.MaximumMessageExpiryInterval = messageExpiry

	b := &Broker{opts: o, log: log, dupes: newDupes()}
	b.srv = mqtt.New(&mqtt.Options{
		Capabilities:           caps,
		Logger:                 slog.New(&mochiLogs{next: log.Handler()}),
		SysTopicResendInterval: sysInterval,
	})

	type hook struct {
		h   mqtt.Hook
		cfg any
	}
	// Auth first: it must be the only hook providing OnConnectAuthenticate and
	// OnACLCheck, and its OnConnect must run before triggerHook's.
	b.auth = newAuthHook(b, o.Users, o.Sys)
	guard := &inflightGuard{b: b} // inflight.go
	hooks := []hook{{b.auth, nil}, {&protocolHook{b: b}, nil}, {&triggerHook{b: b}, nil}, {&limitsHook{b: b}, nil}}
	if o.DataDir != "" {
		h, cfg, err := b.boltHook()
		if err != nil {
			return nil, err
		}
		hooks = append(hooks, hook{h, cfg})
		b.store, _ = h.(*boltStore)
	}
	hooks = append(hooks, hook{guard, nil})
	for _, h := range hooks {
		if err := b.srv.AddHook(h.h, h.cfg); err != nil {
			_ = b.srv.Close()
			if errors.Is(err, bbolt.ErrTimeout) {
				return nil, fmt.Errorf("%w: %s: is another onebox broker running with the same data directory? Stop it or set another broker.data_dir in onebox.yaml",
					ErrDataLocked, filepath.Join(o.DataDir, DataFile))
			}
			if o.DataDir != "" && h.h.ID() == "bolt-db" {
				return nil, fmt.Errorf("%w %s: opening %s: %v", ErrDataDir, o.DataDir, DataFile, err)
			}
			return nil, fmt.Errorf("broker: adding hook %s: %w", h.h.ID(), err)
		}
	}
	return b, nil
}

// boltHook prepares DataDir (0700) and the bolt hook's options.
func (b *Broker) boltHook() (mqtt.Hook, any, error) {
	dir := b.opts.DataDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("%w %s: %v (set broker.data_dir in onebox.yaml to a writable directory, or \"\" to keep state in memory)",
			ErrDataDir, dir, err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, nil, fmt.Errorf("%w %s: not a directory (set broker.data_dir in onebox.yaml to a directory)", ErrDataDir, dir)
	}
	return &boltStore{Hook: &bolt.Hook{}}, &bolt.Options{
		Path:    filepath.Join(dir, DataFile),
		Options: &bbolt.Options{Timeout: 500 * time.Millisecond},
	}, nil
}

// Start listens on Options.Listen and serves in the background. It returns listen
// errors (address in use, bad address) and persistence read errors.
func (b *Broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	if b.started {
		return ErrStarted
	}
	if err := b.listenAll(); err != nil {
		return err
	}
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("broker: starting: %w", err)
	}
	b.started = true
	attrs := []any{"addr", b.listener.Addr().String()}
	if b.tlsLn != nil {
		attrs = append(attrs, "tls", b.tlsLn.Addr().String())
	}
	if b.wsLn != nil {
		attrs = append(attrs, "websocket", b.wsLn.Addr().String())
	}
	attrs = append(attrs, "max_packet", b.opts.MaxPacket)
	if b.auth.open {
		attrs = append(attrs, "auth", "open")
	} else {
		attrs = append(attrs, "auth", "users", "users", len(b.opts.Users))
	}
	if b.opts.DataDir != "" {
		attrs = append(attrs, "data", filepath.Join(b.opts.DataDir, DataFile))
	} else {
		attrs = append(attrs, "data", "memory")
	}
	b.log.Info("broker listening", attrs...)
	return nil
}

// Addr is the address the broker listens on, with the actual port (useful with
// Listen ":0"). Before Start it is Options.Listen.
func (b *Broker) Addr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.listener != nil {
		return b.listener.Addr().String()
	}
	return b.opts.Listen
}

// URL is a broker URL a local client can dial, e.g. tcp://127.0.0.1:1883.
func (b *Broker) URL() string {
	return config.URLFor(b.Addr())
}

// InvalidTriggers counts publishes under trigger/ that were refused (MQTT 5) or
// dropped (MQTT 3.1.1) because their topic is not trigger/<handler>[/<id>].
func (b *Broker) InvalidTriggers() uint64 {
	return b.invalid.Load()
}

// SlowDropped counts the messages dropped because a client's queue was full
// (a client that reads too slowly or not at all).
func (b *Broker) SlowDropped() uint64 {
	return b.slowDropped.Load()
}

// SlowDisconnected counts the clients disconnected because a write to them did
// not finish within 30 s (they stopped reading).
func (b *Broker) SlowDisconnected() uint64 {
	return b.slowCut.Load()
}

// Close disconnects every client, stops listening and closes the data file. It
// is safe to call more than once.
func (b *Broker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	// Stop accepting first: mochi's Close waits on its connection WaitGroup, which
	// a connection accepted meanwhile would Add to (a data race in mochi).
	for _, l := range []net.Listener{b.listener, b.tlsLn, b.wsLn} {
		if l != nil {
			_ = l.Close()
		}
	}
	err := b.srv.Close()
	addr := b.opts.Listen
	if b.listener != nil {
		addr = b.listener.Addr().String()
	}
	b.log.Debug("broker stopped", "addr", addr)
	return err
}

// clip shortens s for a log line.
func clip(s string) string {
	const n = 120
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s… (%d bytes)", s[:n], len(s))
}
