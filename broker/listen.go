package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// closeSafeNet is mochi's TCP listener with a shutdown that cannot deadlock.
// mochi v2.7.9 disconnects a listener's clients on Close through
// Clients.GetByListener, which takes the clients' read lock twice (it calls
// Len under its own RLock): a client leaving at that moment (Clients.Delete,
// waiting for the write lock) blocks the second RLock, and Close hangs forever.
// closeSafeNet takes one snapshot (GetAll, one RLock) instead.
type closeSafeNet struct {
	*listeners.Net
	srv *mqtt.Server
}

func (l closeSafeNet) Close(listeners.CloseFn) {
	l.Net.Close(func(id string) { disconnectListenerClients(l.srv, id) })
}

// disconnectListenerClients disconnects every open client of listener id.
func disconnectListenerClients(srv *mqtt.Server, id string) {
	for _, cl := range srv.Clients.GetAll() {
		if cl.Net.Listener == id && !cl.Closed() {
			_ = srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// connectTimeout is how long a new connection may take to send its CONNECT
// (TLS and WebSocket handshakes included). mochi itself waits forever, so a
// client that opens a connection and says nothing would hold it. After CONNECT
// the client's keepalive (×1.5) takes over.
var connectTimeout = 10 * time.Second

// TLSOptions configure the MQTT over TLS listener.
type TLSOptions struct {
	Listen   string // e.g. ":8883"
	CertFile string // PEM certificate chain; re-read when the file changes (certificate renewal)
	KeyFile  string // PEM private key
}

// deadlineListener gives every accepted connection connectTimeout to send CONNECT.
type deadlineListener struct{ net.Listener }

func (l deadlineListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(connectTimeout))
	}
	return c, err
}

// listen opens a TCP listener, errors naming the config key to change.
func listen(addr, key, flag string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err == nil {
		return ln, nil
	}
	if flag != "" {
		key += " in onebox.yaml or " + flag
	} else {
		key += " in onebox.yaml"
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("%w: %s (is another MQTT broker such as mosquitto running?): set another address with %s",
			ErrAddrInUse, addr, key)
	}
	return nil, fmt.Errorf("%w on %q: %v: set %s to host:port", ErrListen, addr, err, key)
}

// certReloader serves the certificate in CertFile/KeyFile, re-reading both when
// the certificate file's modification time changes; a failed re-read keeps the
// certificate in use.
type certReloader struct {
	o   TLSOptions
	mu  sync.Mutex
	mod time.Time
	c   *tls.Certificate
}

func (r *certReloader) load() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fi, err := os.Stat(r.o.CertFile)
	if err == nil && r.c != nil && fi.ModTime().Equal(r.mod) {
		return r.c, nil
	}
	c, lerr := tls.LoadX509KeyPair(r.o.CertFile, r.o.KeyFile)
	if lerr != nil {
		if r.c != nil {
			return r.c, nil
		}
		return nil, fmt.Errorf("%w: TLS certificate %s / key %s: %v (set broker.tls.cert and broker.tls.key in onebox.yaml to PEM files)",
			ErrOptions, r.o.CertFile, r.o.KeyFile, lerr)
	}
	if err == nil {
		r.mod = fi.ModTime()
	}
	r.c = &c
	return r.c, nil
}

func (r *certReloader) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.load()
		},
	}
}

// wsListener is a net.Listener whose connections are MQTT over WebSocket (the
// "mqtt" subprotocol, binary frames), served by mochi through listeners.NewNet.
// mochi's own Websocket listener reports neither the bound port nor a listen
// error, and accepts any Origin.
type wsListener struct {
	ln        net.Listener
	srv       *http.Server
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

// newWSListener serves WebSocket upgrades on ln. With sameOrigin, a browser
// (a request with an Origin header) must come from the page's own host: in open
// mode any web page a LAN user visits could otherwise publish triggers.
func newWSListener(ln net.Listener, sameOrigin bool) *wsListener {
	l := &wsListener{ln: ln, conns: make(chan net.Conn), done: make(chan struct{})}
	up := &websocket.Upgrader{
		Subprotocols:     []string{"mqtt"},
		HandshakeTimeout: connectTimeout,
		CheckOrigin: func(r *http.Request) bool {
			origin := r.Header.Get("Origin")
			if origin == "" || !sameOrigin {
				return true
			}
			u, err := url.Parse(origin)
			return err == nil && u.Host == r.Host
		},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return // Upgrade has answered with an HTTP error
		}
		raw := c.UnderlyingConn()
		_ = raw.SetDeadline(time.Now().Add(connectTimeout))
		select {
		case l.conns <- &wsConn{Conn: raw, c: c}:
		case <-l.done:
			_ = c.Close()
		}
	})
	l.srv = &http.Server{Handler: mux, ReadHeaderTimeout: connectTimeout, ErrorLog: nil}
	go func() { _ = l.srv.Serve(ln) }()
	return l
}

func (l *wsListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *wsListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.srv.Close()
}

func (l *wsListener) Addr() net.Addr { return l.ln.Addr() }

// wsConn is a WebSocket connection as a net.Conn: MQTT bytes in binary messages.
type wsConn struct {
	net.Conn // the underlying connection: addresses, deadlines, Close
	c        *websocket.Conn
	r        io.Reader
	wmu      sync.Mutex
}

func (ws *wsConn) Read(p []byte) (int, error) {
	for {
		if ws.r == nil {
			op, r, err := ws.c.NextReader()
			if err != nil {
				return 0, err
			}
			if op != websocket.BinaryMessage {
				return 0, errors.New("websocket: MQTT needs binary messages")
			}
			ws.r = r
		}
		n, err := ws.r.Read(p)
		if errors.Is(err, io.EOF) {
			ws.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (ws *wsConn) Write(p []byte) (int, error) {
	ws.wmu.Lock()
	defer ws.wmu.Unlock()
	if err := ws.c.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// listenAll opens the TCP listener and the optional TLS and WebSocket ones and
// hands them to mochi. On an error none stays open.
func (b *Broker) listenAll() (err error) {
	var opened []net.Listener
	defer func() {
		if err != nil {
			for _, l := range opened {
				_ = l.Close()
			}
		}
	}()
	ln, err := listen(b.opts.Listen, "broker.listen", "--broker-listen")
	if err != nil {
		return err
	}
	opened = append(opened, ln)
	var tlsLn, wsLn net.Listener
	if t := b.opts.TLS; t != nil {
		r := &certReloader{o: *t}
		if _, err := r.load(); err != nil {
			return err
		}
		raw, err := listen(t.Listen, "broker.tls.listen", "")
		if err != nil {
			return err
		}
		opened = append(opened, raw)
		tlsLn = tls.NewListener(deadlineListener{raw}, r.config())
	}
	if b.opts.WebSocket != "" {
		raw, err := listen(b.opts.WebSocket, "broker.websocket.listen", "")
		if err != nil {
			return err
		}
		opened = append(opened, raw)
		wsLn = newWSListener(raw, b.auth.open)
		opened = append(opened, wsLn)
	}
	add := func(id string, l net.Listener) error {
		if err := b.srv.AddListener(closeSafeNet{Net: listeners.NewNet(id, l), srv: b.srv}); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrListen, id, err)
		}
		return nil
	}
	if err := add(listenerID, deadlineListener{ln}); err != nil {
		return err
	}
	if tlsLn != nil {
		if err := add("tls", tlsLn); err != nil {
			return err
		}
	}
	if wsLn != nil {
		if err := add("ws", wsLn); err != nil {
			return err
		}
	}
	b.listener, b.tlsLn, b.wsLn = ln, tlsLn, wsLn
	return nil
}

// TLSAddr is the bound address of the TLS listener, "" without one (or before Start).
func (b *Broker) TLSAddr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tlsLn == nil {
		return ""
	}
	return b.tlsLn.Addr().String()
}

// WebSocketAddr is the bound address of the WebSocket listener, "" without one.
func (b *Broker) WebSocketAddr() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.wsLn == nil {
		return ""
	}
	return b.wsLn.Addr().String()
}

// Open reports whether anonymous clients may connect (no configured user).
func (b *Broker) Open() bool { return b.auth.open }
