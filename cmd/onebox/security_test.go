package main

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
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

// onebox up with users: anonymous clients are refused, a user runs what its
// rules allow, and up's own parts (internal users) still take triggers, publish
// results and serve HTTP. Without users, up says loudly that it is open.
func TestE2EUsers(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("alice-pw"), bcrypt.MinCost)
	users := "users:\n  alice: {password: \"" + string(h) + "\", publish: [\"trigger/hello/+\"], subscribe: [\"result/+\"]}\n"
	b := startBox(t, "  hello:\n    image: onebox/hello:latest\n  echo:\n    image: onebox/echo:latest\n", users)
	if strings.Contains(b.logs(), "no users configured") {
		t.Errorf("a box with users warns that it is open")
	}
	mq := func(bin string, args ...string) (string, error) {
		out, err := exec.Command(bin, append([]string{"-h", "127.0.0.1", "-p", b.port}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := mq("mosquitto_pub", "-q", "1", "-t", "trigger/hello/anon1", "-m", "x"); err == nil {
		t.Errorf("anonymous publish accepted: %q", out)
	}
	res := make(chan string, 1)
	go func() {
		out, _ := mq("mosquitto_sub", "-u", "alice", "-P", "alice-pw", "-C", "1", "-W", "30", "-t", "result/u1")
		res <- out
	}()
	time.Sleep(500 * time.Millisecond)
	if out, err := mq("mosquitto_pub", "-u", "alice", "-P", "alice-pw", "-q", "1", "-t", "trigger/hello/u1", "-m", "hi"); err != nil {
		t.Fatalf("alice's trigger: %v %q", err, out)
	}
	if out := <-res; !strings.Contains(out, `"message":"hello"`) {
		t.Errorf("alice's result: %q", out)
	}
	// A trigger alice may not publish: MQTT 5 gets 0x87, and nothing runs.
	if out, _ := mq("mosquitto_pub", "-V", "5", "-u", "alice", "-P", "alice-pw", "-q", "1", "-t", "trigger/echo/Denied-U2", "-m", "no"); !strings.Contains(out, "Not authorized") {
		t.Errorf("alice's denied trigger: %q", out)
	}
	resp, err := http.Get("http://" + b.http + "/run/echo")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("HTTP bridge through its internal user: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	time.Sleep(500 * time.Millisecond)
	denied := 0
	for _, l := range strings.Split(b.logs(), "\n") {
		if !strings.Contains(l, "Denied-U2") {
			continue
		}
		if !strings.Contains(l, `msg="publish denied"`) {
			t.Errorf("the denied trigger got past the broker: %s", l)
		}
		denied++
	}
	if denied == 0 {
		t.Errorf("no \"publish denied\" line names trigger/echo/Denied-U2:\n%s", b.logs())
	}
	if strings.Contains(b.logs(), "alice-pw") {
		t.Errorf("a password reached the log")
	}

	open := startBox(t, "  hello:\n    image: onebox/hello:latest\n", "")
	if !strings.Contains(open.logs(), "no users configured: anyone who can reach mqtt://") || !strings.Contains(open.logs(), "can run containers; add users: to onebox.yaml") {
		t.Errorf("an open box does not say so:\n%s", open.logs())
	}
}
