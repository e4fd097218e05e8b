package config

import (
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func TestParseUsersAndListeners(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	o, err := Parse([]byte(`
users:
  alice: {password: "` + string(h) + `", publish: ["trigger/hello", "trigger/hello/+"], subscribe: ["result/+", "status/+"]}
  pi-inv: {password: "` + string(h) + `", part: invoker}
broker:
  tls: {listen: ":8883", cert: cert.pem, key: key.pem}
  websocket: {listen: ":9001"}
  sys: true
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Users) != 2 || o.Broker.TLS.Listen != ":8883" || o.Broker.WebSocket.Listen != ":9001" || !o.Broker.Sys {
		t.Fatalf("%+v %+v", o.Users, o.Broker)
	}
	r := o.Users["alice"].Rules()
	if !r.CanPublish("trigger/hello/1") || r.CanPublish("trigger/goodbye") || !r.CanSubscribe("result/x") {
		t.Errorf("alice rules %+v", r)
	}
	inv := o.Users["pi-inv"].Rules()
	if !inv.CanSubscribe("$share/g/trigger/+") || !inv.CanPublish("result/1") || inv.CanPublish("trigger/x") {
		t.Errorf("invoker part rules %+v", inv)
	}
	o.resolvePaths("/etc/onebox")
	if o.Broker.TLS.Cert != filepath.Join("/etc/onebox", "cert.pem") {
		t.Errorf("cert path %s not relative to the config file", o.Broker.TLS.Cert)
	}
	if d := Default(); len(d.Users) != 0 || d.Broker.TLS != nil || d.Broker.WebSocket != nil || d.Broker.Sys {
		t.Errorf("the default has security settings: %+v", d)
	}
}

func TestSecurityErrors(t *testing.T) {
	h, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	hash := `"` + string(h) + `"`
	for _, c := range []struct{ yaml, want string }{
		{"users:\n  alice: {password: s3cret, publish: [a]}\n", `users: "alice": password is not a bcrypt hash`},
		{"users:\n  alice: {publish: [a]}\n", `users: "alice": password is missing: run ` + "`onebox passwd`"},
		{"users:\n  alice: {password: " + hash + "}\n", `users: "alice" has no rules`},
		{"users:\n  alice: {password: " + hash + ", part: broker}\n", `users: "alice": part "broker": use invoker, http, file or cron`},
		{"users:\n  alice: {password: " + hash + ", publish: [\"trigger/#/x\"]}\n", `users: "alice": publish rule "trigger/#/x" is not a topic filter`},
		{"users:\n  alice: {password: " + hash + ", subscribe: [\"a+\"]}\n", `subscribe rule "a+"`},
		{"users:\n  alice: {password: " + hash + ", subscribe: [\"$share/g/trigger/+\"]}\n", `write the filter without $share/<group>/`},
		{"users:\n  onebox-up-invoker: {password: " + hash + ", part: invoker}\n", `names starting with onebox-up- are kept`},
		{"users:\n  alice:\n", `users: "alice" is empty`},
		{"users:\n  alice: {password: " + hash + ", publish: [a], admin: true}\n", "line 2"},
		{"broker:\n  tls: {listen: \":8883\"}\n", "broker.tls needs listen, cert and key"},
		{"broker:\n  websocket: {}\n", "broker.websocket needs listen"},
		{"broker:\n  tls: {listen: \":8883\", cert: a, key: b, ca: c}\n", "line 2"},
	} {
		_, err := Parse([]byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want it to contain %q", c.yaml, err, c.want)
		}
	}
}
