package broker

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/onebox-dev/onebox/internal/acl"
)

// testCA makes a CA and a server certificate for 127.0.0.1 and localhost signed
// by it, writes ca.pem, cert.pem and key.pem in dir, and returns their paths.
func testCA(t *testing.T, dir, name string) (ca, cert, key string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(srvKey)
	write := func(file, typ string, der []byte) string {
		p := filepath.Join(dir, name+"-"+file)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("cert.pem", "CERTIFICATE", srvDER), write("key.pem", "EC PRIVATE KEY", keyDER)
}

func pool(t *testing.T, caFile string) *x509.CertPool {
	b, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(b)
	return p
}

// TLS and WebSocket listeners serve the same users and ACL as TCP.
func TestTLSAndWebSocket(t *testing.T) {
	needMosquitto(t)
	dir := t.TempDir()
	ca, cert, key := testCA(t, dir, "good")
	otherCA, _, _ := testCA(t, dir, "other")
	b, logs := startBroker(t, Options{
		Users:     testUsers(t),
		TLS:       &TLSOptions{Listen: "127.0.0.1:0", CertFile: cert, KeyFile: key},
		WebSocket: "127.0.0.1:0",
	}, slog.LevelInfo)
	tlsPort := b.TLSAddr()[strings.LastIndex(b.TLSAddr(), ":")+1:]

	w, wch := mustDial(t, b, "watcher-1", "watcher", "watcher-pw")
	subscribe(t, w, "trigger/#", 1)
	subscribe(t, w, "zz/end", 1)

	alice := []string{"-u", "alice", "-P", "alice-pw", "-q", "1"}
	for _, v := range []string{"311", "5"} {
		// trusted CA: allowed publish works, a denied one is refused as on TCP
		if out, code := mosqAt(t, tlsPort, "mosquitto_pub", append([]string{"-V", v, "--cafile", ca, "-t", "trigger/hello/tls" + v, "-m", "via tls"}, alice...)...); code != 0 || out != "" {
			t.Errorf("-V %s over TLS: exit %d %q", v, code, out)
		}
		out, code := mosqAt(t, tlsPort, "mosquitto_pub", append([]string{"-V", v, "--cafile", ca, "-t", "trigger/goodbye", "-m", "no"}, alice...)...)
		if code == 0 && !strings.Contains(out, "Not authorized") {
			t.Errorf("-V %s denied publish over TLS: exit %d %q", v, code, out)
		}
		out, code = mosqAt(t, tlsPort, "mosquitto_pub", "-V", v, "--cafile", ca, "-u", "alice", "-P", "nope", "-t", "trigger/hello", "-m", "no")
		if code == 0 {
			t.Errorf("-V %s wrong password over TLS: exit 0 %q", v, out)
		}
		// a client trusting another CA does not connect
		out, code = mosqAt(t, tlsPort, "mosquitto_pub", append([]string{"-V", v, "--cafile", otherCA, "-t", "trigger/hello/bad", "-m", "no"}, alice...)...)
		t.Logf("-V %s with another CA: exit %d %q", v, code, out)
		if code == 0 {
			t.Errorf("-V %s: a client trusting another CA connected", v)
		}
	}
	// plain MQTT on the TLS port does not get in
	if out, code := mosqAt(t, tlsPort, "mosquitto_pub", append([]string{"-t", "trigger/hello/plain", "-m", "no"}, alice...)...); code == 0 {
		t.Errorf("plain MQTT on the TLS port: exit 0 %q", out)
	}

	// paho over ssl:// and ws://
	if _, _, err := dial(t, "ssl://"+b.TLSAddr(), "alice-tls", "alice", "alice-pw", &tls.Config{RootCAs: pool(t, ca)}); err != nil {
		t.Errorf("paho over TLS: %v", err)
	}
	if _, _, err := dial(t, "ssl://"+b.TLSAddr(), "alice-tls2", "alice", "alice-pw", &tls.Config{RootCAs: pool(t, otherCA)}); err == nil {
		t.Errorf("paho trusting another CA connected")
	}
	ws := "ws://" + b.WebSocketAddr() + "/mqtt"
	wa, wach, err := dial(t, ws, "alice-ws", "alice", "alice-pw", nil)
	if err != nil {
		t.Fatalf("paho over WebSocket: %v", err)
	}
	publish(t, wa, "trigger/hello/ws", "via ws", false)
	if code := subscribe(t, wa, "#", 1); code != 0x80 {
		t.Errorf("alice over WebSocket: # SUBACK %#x, want 0x80", code)
	}
	subscribe(t, wa, "result/+", 1)
	inv, _ := mustDial(t, b, "onebox-invoker-x", "inv", "inv-pw")
	publish(t, inv, "result/ws1", "r", false)
	select {
	case m := <-wach:
		if m.topic != "result/ws1" {
			t.Errorf("alice over WebSocket got %v", m)
		}
	case <-time.After(3 * time.Second):
		t.Errorf("alice over WebSocket got no result")
	}
	wa.Publish("trigger/goodbye", 1, false, "no").WaitTimeout(2 * time.Second)
	time.Sleep(200 * time.Millisecond)
	if wa.IsConnectionOpen() {
		t.Errorf("a denied QoS 1 publish over WebSocket left the 3.1.1 connection open")
	}
	if _, _, err := dial(t, ws, "mallory-ws", "alice", "wrong", nil); err == nil {
		t.Errorf("wrong password over WebSocket connected")
	}

	if l := logs.String(); strings.Contains(l, "alice-pw") || !strings.Contains(l, "tls=127.0.0.1:") || !strings.Contains(l, "websocket=127.0.0.1:") {
		t.Errorf("start line lacks the listeners, or a password reached the log:\n%s", l)
	}
	got := collectUntilEnd(t, b, wch)
	want := []string{"trigger/hello/tls311=via tls", "trigger/hello/tls5=via tls", "trigger/hello/ws=via ws"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("watcher got %q, want %q", got, want)
	}
}

// Open mode: a browser page from another origin may not use the WebSocket
// listener (any page a LAN user visits could run containers otherwise).
func TestWebSocketOrigin(t *testing.T) {
	for _, open := range []bool{true, false} {
		o := Options{WebSocket: "127.0.0.1:0"}
		if !open {
			o.Users = map[string]User{"u": {PasswordHash: hash(t, "p"), Rules: acl.Rules{Publish: []string{"#"}}}}
		}
		b, _ := startBroker(t, o, slog.LevelInfo)
		for origin, wantOK := range map[string]bool{"": true, "http://" + b.WebSocketAddr(): true, "http://evil.example": !open} {
			h := http.Header{}
			if origin != "" {
				h.Set("Origin", origin)
			}
			c := paho.NewClient(paho.NewClientOptions().AddBroker("ws://" + b.WebSocketAddr() + "/mqtt").SetClientID("ws-" + shortID()).
				SetUsername("u").SetPassword("p").SetHTTPHeaders(h).SetAutoReconnect(false).SetConnectTimeout(3 * time.Second))
			tok := c.Connect()
			ok := tok.WaitTimeout(5*time.Second) && tok.Error() == nil
			if ok != wantOK {
				t.Errorf("open=%v Origin %q: connected=%v (%v), want %v", open, origin, ok, tok.Error(), wantOK)
			}
			if ok {
				c.Disconnect(100)
			}
		}
		if open {
			if got := wsUpgrade(t, b.WebSocketAddr(), "http://evil.example"); got != http.StatusForbidden {
				t.Errorf("cross-origin upgrade: HTTP %d, want 403", got)
			}
		}
	}
}

// wsUpgrade sends a WebSocket upgrade request and returns the HTTP status.
func wsUpgrade(t *testing.T, addr, origin string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "GET /mqtt HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n"
	if origin != "" {
		req += "Origin: " + origin + "\r\n"
	}
	_, _ = c.Write([]byte(req + "\r\n"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	return resp.StatusCode
}

func TestListenErrors(t *testing.T) {
	dir := t.TempDir()
	_, cert, key := testCA(t, dir, "x")
	b, _ := startBroker(t, Options{}, slog.LevelInfo)
	for name, o := range map[string]Options{
		"broker.tls.cert":         {Listen: "127.0.0.1:0", TLS: &TLSOptions{Listen: "127.0.0.1:0", CertFile: filepath.Join(dir, "missing.pem"), KeyFile: key}},
		"broker.tls.listen":       {Listen: "127.0.0.1:0", TLS: &TLSOptions{Listen: b.Addr(), CertFile: cert, KeyFile: key}},
		"broker.websocket.listen": {Listen: "127.0.0.1:0", WebSocket: b.Addr()},
	} {
		o.Logger = slog.New(slog.DiscardHandler)
		nb, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		err = nb.Start()
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: Start error %v, want one naming %s", name, err, name)
		}
		_ = nb.Close()
	}
}
