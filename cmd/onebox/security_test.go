package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/crypto/bcrypt"

	"github.com/onebox-dev/onebox/internal/acl"
	"github.com/onebox-dev/onebox/internal/config"
)

// `onebox passwd` reads stdin when it is not a terminal and prints a bcrypt hash.
func TestPasswd(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	_, _ = w.Write([]byte("s3cret pw\n"))
	w.Close()
	pw, err := readPassword(r, &bytes.Buffer{})
	if err != nil || string(pw) != "s3cret pw" {
		t.Fatalf("readPassword = %q %v", pw, err)
	}
	h, err := hashPassword(pw, bcrypt.MinCost)
	if err != nil || bcrypt.CompareHashAndPassword([]byte(h), []byte("s3cret pw")) != nil {
		t.Fatalf("hash %q %v", h, err)
	}
	if _, err := config.Parse([]byte("users:\n  a: {password: \"" + h + "\", publish: [x]}\n")); err != nil {
		t.Errorf("the hash is not accepted in onebox.yaml: %v", err)
	}
	for _, bad := range []string{"", strings.Repeat("x", 73)} {
		if _, err := hashPassword([]byte(bad), bcrypt.MinCost); err == nil {
			t.Errorf("password of %d bytes accepted", len(bad))
		}
	}
}

// startBroker with users: anonymous clients are refused, the parts started in
// the same process get internal users with only their rights, and a configured
// part user (for a part run on its own) gets its part's rights and client ids.
func TestBrokerUsersAndPartCredentials(t *testing.T) {
	t.Cleanup(func() {
		credsMu.Lock()
		internalCreds = map[acl.Part][2]string{}
		credsMu.Unlock()
	})
	h, _ := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	o, err := config.Parse([]byte(`
broker: {listen: "127.0.0.1:0", data_dir: ""}
users:
  alice: {password: "` + string(h) + `", publish: ["trigger/hello/+"], subscribe: ["result/+"]}
  pi-inv: {password: "` + string(h) + `", part: invoker}
`))
	if err != nil {
		t.Fatal(err)
	}
	o.Broker.DataDir = ""
	b, err := startBroker(o)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.Open() {
		t.Fatal("broker with users is open")
	}
	connect := func(id, user, pass string) (paho.Client, error) {
		c := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL()).SetClientID(id).SetUsername(user).SetPassword(pass).
			SetAutoReconnect(false).SetConnectTimeout(3 * time.Second))
		tok := c.Connect()
		tok.WaitTimeout(5 * time.Second)
		if tok.Error() == nil {
			t.Cleanup(func() { c.Disconnect(50) })
		}
		return c, tok.Error()
	}
	if _, err := connect("anon", "", ""); err == nil {
		t.Errorf("anonymous client connected to a broker with users")
	}
	user, pass := credsFor(acl.Invoker)
	if user != config.InternalUserPrefix+"invoker" || len(pass) < 32 {
		t.Fatalf("internal invoker credentials %q / %d chars", user, len(pass))
	}
	inv, err := connect("onebox-invoker-test", user, pass)
	if err != nil {
		t.Fatalf("internal invoker user: %v", err)
	}
	tok := inv.Subscribe("$share/g/trigger/+", 1, nil)
	tok.WaitTimeout(3 * time.Second)
	if r := tok.(*paho.SubscribeToken).Result(); r["trigger/+"] != 1 {
		t.Errorf("internal invoker $share/g/trigger/+ SUBACK %v", r)
	}
	hu, hp := credsFor(acl.HTTP)
	if _, err := connect("onebox-invoker-test", hu, hp); err == nil {
		t.Errorf("the internal http user took the invoker's client id")
	}
	if _, err := connect("onebox-http-1", hu, hp); err != nil {
		t.Errorf("internal http user: %v", err)
	}
	if _, err := connect("onebox-invoker-pi", "pi-inv", "alice-pw"); err != nil {
		t.Errorf("configured invoker part user: %v", err)
	}
	if _, err := connect("onebox-invoker-pi2", "alice", "alice-pw"); err == nil {
		t.Errorf("alice used an invoker client id")
	}
	if _, err := connect("alice-1", "alice", "alice-pw"); err != nil {
		t.Errorf("alice: %v", err)
	}
}
