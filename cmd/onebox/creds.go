package main

import (
	"strings"
	"sync"

	"github.com/onebox-dev/onebox/broker"
	"github.com/onebox-dev/onebox/internal/acl"
	"github.com/onebox-dev/onebox/internal/config"
)

// Credentials of onebox's own parts. A process that runs the broker (up, bench)
// makes one internal user per part with a random password held in memory only,
// and the parts it starts connect as those users, each with only the rights it
// needs (acl.Part.Rules). A part run on its own (onebox invoker, onebox bridge …)
// uses --username/--password (ONEBOX_USERNAME/ONEBOX_PASSWORD): a user in
// onebox.yaml with part: invoker (or http, file, cron).
var (
	credsMu       sync.Mutex
	internalCreds = map[acl.Part][2]string{}
)

// internalUsers makes the internal users and remembers their credentials for credsFor.
func internalUsers() map[string]broker.User {
	credsMu.Lock()
	defer credsMu.Unlock()
	users := map[string]broker.User{}
	for _, p := range acl.Parts {
		name, pass := config.InternalUserPrefix+string(p), randHex(24)
		users[name] = broker.User{Password: pass, Part: p, Rules: p.Rules()}
		internalCreds[p] = [2]string{name, pass}
	}
	return users
}

// credsFor returns the user name and password part connects with.
func credsFor(p acl.Part) (user, pass string) {
	credsMu.Lock()
	defer credsMu.Unlock()
	if c, ok := internalCreds[p]; ok {
		return c[0], c[1]
	}
	return g.username, g.password
}

// brokerUsers is the broker's user table: onebox.yaml's users and the internal ones.
func brokerUsers(o *config.Options) map[string]broker.User {
	users := internalUsers()
	for name, u := range o.Users {
		users[name] = broker.User{PasswordHash: u.Password, Part: acl.Part(u.Part), Rules: u.Rules()}
	}
	return users
}

// warnIfOpen says loudly that a broker without users lets anyone in.
func warnIfOpen(b *broker.Broker) {
	if !b.Open() {
		return
	}
	addrs := []string{"mqtt://" + b.Addr()}
	if a := b.TLSAddr(); a != "" {
		addrs = append(addrs, "mqtts://"+a)
	}
	if a := b.WebSocketAddr(); a != "" {
		addrs = append(addrs, "ws://"+a)
	}
	logger().Warn("no users configured: anyone who can reach "+strings.Join(addrs, ", ")+" can run containers; add users: to onebox.yaml (see SECURITY.md)",
		"listen", strings.Join(addrs, " "))
}
