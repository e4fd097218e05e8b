package config

import (
	"fmt"
	"sort"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/bcrypt"

	"github.com/onebox-dev/onebox/internal/acl"
)

// User is one MQTT user of the embedded broker (users: in onebox.yaml, keyed by
// the user name). With at least one user configured, anonymous clients are
// refused.
//
//	users:
//	  alice:   {password: "$2a$10$…", publish: ["trigger/hello", "trigger/hello/+"], subscribe: ["result/+", "status/+"]}
//	  pi-inv:  {password: "$2a$10$…", part: invoker}
type User struct {
	// Password is a bcrypt hash, as printed by `onebox passwd`; never the password.
	Password string `yaml:"password"`
	// Part makes the user one of onebox's own parts run as a separate process
	// (invoker, http, file, cron): it gets that part's rules and may connect with
	// the part's client id (onebox-<part>-…).
	Part string `yaml:"part"`
	// Publish and Subscribe are MQTT topic filters (+ and # allowed). A
	// subscription, shared ones included, must be covered by one subscribe rule.
	Publish   []string `yaml:"publish"`
	Subscribe []string `yaml:"subscribe"`
}

// Rules is what the user may do: its part's rules and its own.
func (u *User) Rules() acl.Rules {
	r := acl.Part(u.Part).Rules()
	r.Publish = append(append([]string{}, r.Publish...), u.Publish...)
	r.Subscribe = append(append([]string{}, r.Subscribe...), u.Subscribe...)
	return r
}

// TLS is the optional MQTT-over-TLS listener (broker.tls).
type TLS struct {
	Listen string `yaml:"listen"` // e.g. :8883
	Cert   string `yaml:"cert"`   // PEM certificate chain file
	Key    string `yaml:"key"`    // PEM private key file
}

// WebSocket is the optional MQTT-over-WebSocket listener (broker.websocket).
type WebSocket struct {
	Listen string `yaml:"listen"` // e.g. :9001
}

// InternalUserPrefix starts the names of the users `onebox up` makes for its own
// parts; configured users may not use it.
const InternalUserPrefix = "onebox-up-"

// UserNames returns the configured user names, sorted.
func (o *Options) UserNames() []string {
	names := make([]string, 0, len(o.Users))
	for n := range o.Users {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (o *Options) validateSecurity() error {
	for _, n := range o.UserNames() {
		u := o.Users[n]
		what := fmt.Sprintf("users: %q", n)
		switch {
		case n == "" || !utf8.ValidString(n) || strings.ContainsRune(n, 0):
			return fmt.Errorf("%w: %s: a user name must be non-empty UTF-8 text", ErrConfig, what)
		case strings.HasPrefix(n, InternalUserPrefix):
			return fmt.Errorf("%w: %s: names starting with %s are kept for onebox up's own parts: pick another name", ErrConfig, what, InternalUserPrefix)
		case u == nil:
			return fmt.Errorf("%w: %s is empty: give it a password (from `onebox passwd`) and publish:/subscribe: rules or a part:", ErrConfig, what)
		}
		if _, err := bcrypt.Cost([]byte(u.Password)); err != nil {
			if u.Password == "" {
				return fmt.Errorf("%w: %s: password is missing: run `onebox passwd` and paste the hash it prints", ErrConfig, what)
			}
			return fmt.Errorf("%w: %s: password is not a bcrypt hash (%v): never put the password itself in onebox.yaml; run `onebox passwd` and paste the hash it prints, quoted", ErrConfig, what, err)
		}
		if u.Part != "" && !acl.ValidPart(acl.Part(u.Part)) {
			return fmt.Errorf("%w: %s: part %q: use invoker, http, file or cron (or leave it out for a plain user)", ErrConfig, what, u.Part)
		}
		if u.Part == "" && len(u.Publish) == 0 && len(u.Subscribe) == 0 {
			return fmt.Errorf("%w: %s has no rules: it could connect but do nothing; add publish: and/or subscribe: topic filters, e.g. publish: [\"trigger/hello\"] subscribe: [\"result/+\"]", ErrConfig, what)
		}
		for _, kind := range []struct {
			name    string
			filters []string
		}{{"publish", u.Publish}, {"subscribe", u.Subscribe}} {
			for _, f := range kind.filters {
				if strings.HasPrefix(f, acl.SharePrefix) {
					return fmt.Errorf("%w: %s: %s rule %q: write the filter without $share/<group>/; a shared subscription is checked against the filter behind it", ErrConfig, what, kind.name, f)
				}
				if !acl.ValidFilter(f) {
					return fmt.Errorf("%w: %s: %s rule %q is not a topic filter: + and # must fill a whole level, # only at the end (e.g. trigger/+ or result/#)", ErrConfig, what, kind.name, f)
				}
			}
		}
	}
	if t := o.Broker.TLS; t != nil {
		if t.Listen == "" || t.Cert == "" || t.Key == "" {
			return fmt.Errorf("%w: broker.tls needs listen, cert and key, e.g. {listen: \":8883\", cert: cert.pem, key: key.pem}", ErrConfig)
		}
	}
	if w := o.Broker.WebSocket; w != nil && w.Listen == "" {
		return fmt.Errorf("%w: broker.websocket needs listen, e.g. {listen: \":9001\"}", ErrConfig)
	}
	return nil
}

// resolveSecurityPaths makes the TLS files relative to the config file's folder.
func (o *Options) resolveSecurityPaths(abs func(string) string) {
	if t := o.Broker.TLS; t != nil {
		t.Cert, t.Key = abs(t.Cert), abs(t.Key)
	}
}
