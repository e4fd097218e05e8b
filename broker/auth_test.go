package broker

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/crypto/bcrypt"

	"github.com/onebox-dev/onebox/internal/acl"
)

func hash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// testUsers: alice may trigger hello and read results; watcher reads every
// trigger; admin reads everything; inv is a configured invoker part.
func testUsers(t *testing.T) map[string]User {
	return map[string]User{
		"alice":          {PasswordHash: hash(t, "alice-pw"), Rules: acl.Rules{Publish: []string{"trigger/hello", "trigger/hello/+"}, Subscribe: []string{"result/+", "status/+"}}},
		"watcher":        {PasswordHash: hash(t, "watcher-pw"), Rules: acl.Rules{Subscribe: []string{"trigger/#", "zz/end"}, Publish: []string{"zz/end"}}},
		"admin":          {PasswordHash: hash(t, "admin-pw"), Rules: acl.Rules{Subscribe: []string{"#"}, Publish: []string{"#"}}},
		"inv":            {PasswordHash: hash(t, "inv-pw"), Part: acl.Invoker, Rules: acl.Invoker.Rules()},
		"onebox-up-http": {Password: "internal-secret", Part: acl.HTTP, Rules: acl.HTTP.Rules()},
	}
}

// dial connects a paho (3.1.1) client; url is tcp://, ssl:// or ws://.
func dial(t *testing.T, url, id, user, pass string, tc *tls.Config) (paho.Client, <-chan msg, error) {
	t.Helper()
	ch := make(chan msg, 256)
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(user).SetPassword(pass).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { ch <- msg{m.Topic(), string(m.Payload()), m.Retained()} })
	if tc != nil {
		o.SetTLSConfig(tc)
	}
	c := paho.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(6 * time.Second) {
		return nil, nil, errors.New("connect: no answer")
	}
	if tok.Error() != nil {
		return nil, nil, tok.Error()
	}
	t.Cleanup(func() {
		if c.IsConnected() {
			c.Disconnect(100)
		}
	})
	return c, ch, nil
}

func mustDial(t *testing.T, b *Broker, id, user, pass string) (paho.Client, <-chan msg) {
	t.Helper()
	c, ch, err := dial(t, b.URL(), id, user, pass, nil)
	if err != nil {
		t.Fatalf("connect %s as %s: %v", id, user, err)
	}
	return c, ch
}

// collect returns the messages until zz/end arrives (published by watcher).
func collectUntilEnd(t *testing.T, b *Broker, ch <-chan msg) []string {
	t.Helper()
	if out, code := mosq(t, b, "mosquitto_pub", "-u", "watcher", "-P", "watcher-pw", "-q", "1", "-t", "zz/end", "-m", "end"); code != 0 {
		t.Fatalf("end marker: exit %d %q", code, out)
	}
	var got []string
	for _, m := range until(t, ch, "zz/end", 200*time.Millisecond) {
		if m.topic != "zz/end" {
			got = append(got, m.topic+"="+m.payload)
		}
	}
	return got
}

// Users and ACL with real mosquitto clients, MQTT 3.1.1 and 5.
func TestUsersAndACL(t *testing.T) {
	needMosquitto(t)
	b, logs := startBroker(t, Options{Users: testUsers(t)}, slog.LevelInfo)
	if b.Open() {
		t.Fatal("a broker with users is open")
	}

	// watcher sees every trigger that gets through.
	w, wch := mustDial(t, b, "watcher-1", "watcher", "watcher-pw")
	if code := subscribe(t, w, "trigger/#", 1); code != 1 {
		t.Fatalf("watcher SUBACK %#x", code)
	}
	subscribe(t, w, "zz/end", 1)

	// Wrong password, unknown user, anonymous: CONNACK 5 (3.1.1) / 0x86 (5).
	for _, v := range []string{"311", "5"} {
		for _, cred := range [][]string{{"-u", "alice", "-P", "wrong"}, {"-u", "mallory", "-P", "x"}, {}} {
			args := append([]string{"-V", v, "-q", "1", "-t", "trigger/hello", "-m", "must not run"}, cred...)
			out, code := mosq(t, b, "mosquitto_pub", args...)
			want := map[string]string{"311": "not authorised", "5": "Bad User Name or Password"}[v]
			if code == 0 || !strings.Contains(out, want) {
				t.Errorf("-V %s %v: exit %d %q, want refused with %q", v, cred, code, out, want)
			}
		}
	}
	alice := []string{"-u", "alice", "-P", "alice-pw"}

	// Allowed publishes go through.
	for _, v := range []string{"311", "5"} {
		if out, code := mosq(t, b, "mosquitto_pub", append([]string{"-V", v, "-q", "1", "-t", "trigger/hello/ok" + v, "-m", "yes"}, alice...)...); code != 0 || out != "" {
			t.Errorf("-V %s allowed publish: exit %d %q", v, code, out)
		}
	}
	// A denied QoS 1 publish: 3.1.1 is disconnected (3.1.1 acks cannot refuse),
	// 5 gets PUBACK 0x87. Neither hangs (mosq fails the test after 15s).
	out, code := mosq(t, b, "mosquitto_pub", append([]string{"-V", "311", "-q", "1", "-t", "trigger/goodbye", "-m", "must not run"}, alice...)...)
	t.Logf("3.1.1 denied QoS 1 publish: exit %d %q", code, out)
	if code == 0 {
		t.Errorf("3.1.1 denied publish: exit 0 %q, want the connection dropped", out)
	}
	out, code = mosq(t, b, "mosquitto_pub", append([]string{"-V", "5", "-q", "1", "-t", "trigger/goodbye", "-m", "must not run"}, alice...)...)
	t.Logf("MQTT 5 denied QoS 1 publish: exit %d %q", code, out)
	if !strings.Contains(out, "Not authorized") {
		t.Errorf("-V 5 denied publish: exit %d %q, want PUBACK 0x87 (Not authorized)", code, out)
	}
	for _, q := range []string{"0", "2"} {
		out, code = mosq(t, b, "mosquitto_pub", append([]string{"-V", "5", "-q", q, "-t", "trigger/goodbye", "-m", "must not run"}, alice...)...)
		t.Logf("MQTT 5 denied QoS %s publish: exit %d %q", q, code, out)
	}
	// A will alice may not publish: refused at CONNECT.
	out, code = mosq(t, b, "mosquitto_pub", append([]string{"-t", "trigger/hello", "-m", "x", "--will-topic", "trigger/goodbye", "--will-payload", "w"}, alice...)...)
	if code == 0 || !strings.Contains(out, "not authorised") {
		t.Errorf("will on a denied topic: exit %d %q, want refused", code, out)
	}
	got := collectUntilEnd(t, b, wch)
	if want := []string{"trigger/hello/ok311=yes", "trigger/hello/ok5=yes"}; !reflect.DeepEqual(got, want) {
		t.Errorf("watcher got %q, want %q", got, want)
	}

	// Subscriptions: # and $share/x/trigger/# refused (SUBACK 0x80), result/+ fine.
	a, ach := mustDial(t, b, "alice-1", "alice", "alice-pw")
	for filter, want := range map[string]byte{
		"#": 0x80, "result/#": 0x80, "$share/x/trigger/#": 0x80, "trigger/+": 0x80, "$SYS/#": 0x80,
		"result/+": 1, "status/abc": 1, "$share/x/result/+": 1,
	} {
		if code := subscribe(t, a, filter, 1); code != want {
			t.Errorf("alice SUBACK for %s = %#x, want %#x", filter, code, want)
		}
	}
	out, code = mosq(t, b, "mosquitto_sub", append([]string{"-V", "311", "-t", "#", "-W", "2"}, alice...)...)
	t.Logf("mosquitto_sub -t '#' as alice: exit %d %q", code, out)
	if !strings.Contains(out, "All subscription requests were denied") { // SUBACK 0x80; mosquitto_sub 2.0 then exits 0
		t.Errorf("mosquitto_sub -t # as alice: exit %d %q, want a refusal", code, out)
	}

	// The invoker part publishes a result; alice (result/+) gets it once
	// (result/+ and $share/x/result/+), admin's # too; $SYS stays hidden from admin.
	inv, _ := mustDial(t, b, "onebox-invoker-pi", "inv", "inv-pw")
	ad, adch := mustDial(t, b, "admin-1", "admin", "admin-pw")
	if code := subscribe(t, ad, "$SYS/#", 0); code != 0x80 {
		t.Errorf("admin $SYS/# SUBACK %#x, want 0x80 (sys off)", code)
	}
	subscribe(t, ad, "#", 0)
	publish(t, inv, "result/r1", "out", false)
	if tok := inv.Publish("trigger/hello", 1, false, "no"); tok.WaitTimeout(3*time.Second) && tok.Error() == nil {
		time.Sleep(200 * time.Millisecond)
	}
	if inv.IsConnectionOpen() {
		t.Errorf("the invoker part published a trigger and is still connected")
	}
	select {
	case m := <-ach:
		if m.topic != "result/r1" || m.payload != "out" {
			t.Errorf("alice got %v", m)
		}
	case <-time.After(3 * time.Second):
		t.Errorf("alice did not get result/r1")
	}
	for _, m := range until(t, adch, "result/r1", 300*time.Millisecond) {
		if strings.HasPrefix(m.topic, "$") {
			t.Errorf("admin got %s", m.topic)
		}
	}

	// Reserved client ids: only the matching part user may take them.
	if _, _, err := dial(t, b.URL(), "onebox-invoker-pi", "alice", "alice-pw", nil); err == nil {
		t.Errorf("alice connected as onebox-invoker-pi")
	}
	out, code = mosq(t, b, "mosquitto_pub", append([]string{"-i", "onebox-http-x", "-t", "trigger/hello", "-m", "x"}, alice...)...)
	if code == 0 || !strings.Contains(out, "identifier rejected") {
		t.Errorf("alice as onebox-http-x: exit %d %q, want identifier rejected", code, out)
	}
	inv2, _ := mustDial(t, b, "onebox-invoker-pi2", "inv", "inv-pw")
	if _, _, err := dial(t, b.URL(), "onebox-invoker-pi2", "onebox-up-http", "internal-secret", nil); err == nil {
		t.Errorf("the http part took the invoker's id")
	}
	time.Sleep(100 * time.Millisecond)
	if !inv2.IsConnectionOpen() {
		t.Errorf("the invoker part was knocked off")
	}
	if _, _, err := dial(t, b.URL(), "onebox-http-1", "onebox-up-http", "internal-secret", nil); err != nil {
		t.Errorf("the internal http part: %v", err)
	}
	if _, _, err := dial(t, b.URL(), "onebox-http-2", "onebox-up-http", "wrong", nil); err == nil {
		t.Errorf("the internal http part with a wrong password connected")
	}

	l := logs.String()
	for _, s := range []string{`msg="connection refused" client=`, `user=alice`, `reason="wrong password"`,
		`msg="publish denied"`, `topic=trigger/goodbye`, `reason="anonymous clients are refused`, `client ids starting onebox-invoker-`} {
		if !strings.Contains(l, s) {
			t.Errorf("log lacks %s", s)
		}
	}
	if strings.Contains(l, "alice-pw") || strings.Contains(l, "internal-secret") {
		t.Errorf("a password reached the log")
	}
}

// Open mode (no configured user): anyone connects and uses every topic but $…;
// onebox's parts' client ids cannot be taken over.
func TestOpenModeReservedIDs(t *testing.T) {
	b, _ := startBroker(t, Options{Users: map[string]User{
		"onebox-up-invoker": {Password: "s3", Part: acl.Invoker, Rules: acl.Invoker.Rules()},
	}}, slog.LevelInfo)
	if !b.Open() {
		t.Fatal("internal users alone closed the broker")
	}
	anon, _ := mustDial(t, b, "anyone", "", "")
	if code := subscribe(t, anon, "#", 1); code != 1 {
		t.Errorf("anonymous # SUBACK %#x", code)
	}
	// Even a made-up user name connects anonymously in open mode.
	mustDial(t, b, "someone", "bob", "whatever")

	part, _ := mustDial(t, b, "onebox-invoker-box", "onebox-up-invoker", "s3")
	if _, _, err := dial(t, b.URL(), "onebox-invoker-box", "", "", nil); err == nil {
		t.Errorf("an anonymous client took the invoker's client id")
	}
	if !part.IsConnectionOpen() {
		t.Fatalf("the invoker part was knocked off")
	}
	if _, _, err := dial(t, b.URL(), "onebox-invoker-box", "onebox-up-invoker", "wrong", nil); err == nil {
		t.Errorf("wrong internal password accepted")
	}
	part.Disconnect(100)
	// Claimed by a part: still not for anonymous clients while it is away.
	if _, _, err := dial(t, b.URL(), "onebox-invoker-box", "", "", nil); err == nil {
		t.Errorf("an anonymous client took the disconnected invoker's session")
	}
	// A part id never used by a part user: first come, but no take-over.
	first, _ := mustDial(t, b, "onebox-invoker-other", "", "")
	if _, _, err := dial(t, b.URL(), "onebox-invoker-other", "", "", nil); err == nil {
		t.Errorf("a second anonymous client took over onebox-invoker-other")
	}
	time.Sleep(100 * time.Millisecond)
	if !first.IsConnectionOpen() {
		t.Errorf("the first onebox-invoker-other was knocked off")
	}
	first.Disconnect(100)
	time.Sleep(100 * time.Millisecond)
	mustDial(t, b, "onebox-invoker-other", "", "") // free again
}

// $SYS: hidden unless Sys; never writable; a QoS 1 publish to it does not hang.
func TestSysOption(t *testing.T) {
	needMosquitto(t)
	for _, sys := range []bool{false, true} {
		b, _ := startBroker(t, Options{Sys: sys}, slog.LevelInfo)
		c, ch := mustDial(t, b, "nosy", "", "")
		want := byte(0x80)
		if sys {
			want = 0
		}
		if code := subscribe(t, c, "$SYS/broker/version", 0); code != want {
			t.Errorf("sys=%v: SUBACK %#x, want %#x", sys, code, want)
		}
		if sys {
			select {
			case m := <-ch:
				t.Logf("sys=true: %s = %q", m.topic, m.payload)
			case <-time.After(3 * time.Second):
				t.Errorf("sys=true: no $SYS/broker/version")
			}
		}
		out, code := mosq(t, b, "mosquitto_pub", "-V", "5", "-q", "1", "-t", "$SYS/broker/version", "-m", "fake")
		if !strings.Contains(out, "Not authorized") {
			t.Errorf("sys=%v: -V 5 QoS 1 publish to $SYS: exit %d %q, want 0x87", sys, code, out)
		}
		out, code = mosq(t, b, "mosquitto_pub", "-V", "311", "-q", "1", "-t", "$SYS/broker/version", "-m", "fake")
		if code == 0 {
			t.Errorf("sys=%v: 3.1.1 QoS 1 publish to $SYS: exit 0 %q, want the connection dropped", sys, out)
		}
	}
}

// A user cannot take over another user's client id: neither knock a connected
// client off nor inherit a stored session and its queued messages.
func TestSessionOwner(t *testing.T) {
	b, _ := startBroker(t, Options{Users: testUsers(t)}, slog.LevelInfo)
	a, _ := mustDial(t, b, "shared-id", "alice", "alice-pw")
	if _, _, err := dial(t, b.URL(), "shared-id", "admin", "admin-pw", nil); err == nil {
		t.Errorf("admin took over alice's connected client id")
	}
	time.Sleep(100 * time.Millisecond)
	if !a.IsConnectionOpen() {
		t.Fatalf("alice was knocked off")
	}
	a2, _ := mustDial(t, b, "shared-id", "alice", "alice-pw") // alice herself may
	a2.Disconnect(100)

	// alice's persistent session, with a queued result.
	c := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL()).SetClientID("alice-persist").SetUsername("alice").SetPassword("alice-pw").
		SetCleanSession(false).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	subscribe(t, c, "result/+", 1)
	c.Disconnect(100)
	inv, _ := mustDial(t, b, "onebox-invoker-x", "inv", "inv-pw")
	publish(t, inv, "result/secret", "for alice", false)

	steal := paho.NewClient(paho.NewClientOptions().AddBroker(b.URL()).SetClientID("alice-persist").SetUsername("admin").SetPassword("admin-pw").
		SetCleanSession(false).SetAutoReconnect(false))
	if tok := steal.Connect(); tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
		t.Errorf("admin resumed alice's stored session")
		steal.Disconnect(50)
	}
	// A clean session replaces it without handing anything over.
	if _, _, err := dial(t, b.URL(), "alice-persist", "admin", "admin-pw", nil); err != nil {
		t.Errorf("a clean session on a disconnected id: %v", err)
	}
}

// An MQTT 5 publish that names only its topic alias is checked against the
// topic the alias stands for (mochi checks the ACL before resolving aliases).
func TestTopicAliasACL(t *testing.T) {
	b, _ := startBroker(t, Options{Users: testUsers(t)}, slog.LevelInfo)
	w, wch := mustDial(t, b, "watcher-1", "watcher", "watcher-pw")
	subscribe(t, w, "trigger/#", 1)
	subscribe(t, w, "zz/end", 1)

	c := rawDial(t, b)
	body := append(mqttString("MQTT"), 5, 0xC2, 0, 60, 0x03, 0x22, 0x00, 0x0A) // topic alias maximum 10
	body = append(body, mqttString("alias-1")...)
	body = append(body, mqttString("alice")...)
	body = append(body, mqttString("alice-pw")...)
	_, _ = c.Write(append(append([]byte{0x10}, varint(len(body))...), body...))
	expectConnack(t, c, "alias client")
	pub := func(topic string, alias uint16, payload string) {
		b := append(mqttString(topic), 0x03, 0x23, byte(alias>>8), byte(alias)) // QoS 0: no packet id
		b = append(b, payload...)
		_, _ = c.Write(append(append([]byte{0x30}, varint(len(b))...), b...))
	}
	pub("trigger/hello/a1", 1, "named") // allowed, sets alias 1
	pub("", 1, "by alias")              // allowed through the alias
	pub("trigger/goodbye", 2, "denied") // denied: alias 2 is not set
	pub("", 2, "unknown alias")         // denied
	got := collectUntilEnd(t, b, wch)
	want := []string{"trigger/hello/a1=named", "trigger/hello/a1=by alias"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("watcher got %q, want %q", got, want)
	}
}
