package broker

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/onebox-dev/onebox/internal/acl"
)

// User is one MQTT user. Exactly one of PasswordHash (a bcrypt hash, from
// onebox.yaml) and Password (the password itself: the users `onebox up` makes
// for its own parts, held in memory only) is set.
type User struct {
	PasswordHash string
	Password     string
	// Part makes the user one of onebox's own parts: only such a user may connect
	// with the part's client id prefix (onebox-<part>-).
	Part  acl.Part
	Rules acl.Rules
}

// Errors ending a connection that authHook refused (and logged).
var (
	errBadCredentials = errors.New("bad user name or password")
	errReservedID     = errors.New("client id reserved for a onebox part")
	errWillDenied     = errors.New("will topic not allowed")
)

// authHook is the only hook providing OnConnectAuthenticate and OnACLCheck (mochi
// allows an action when ANY hook allows it, so a second one would open
// everything). It checks, at CONNECT:
//   - the user name and password: a configured user's bcrypt hash, or an internal
//     user's password; with no configured user (open mode) a client without a
//     known user name connects anonymously;
//   - the client id: onebox-invoker-, onebox-http-, onebox-file- and onebox-cron-
//     belong to onebox's parts (see clientID);
//   - the will: it is published without OnACLCheck, so its topic must be one the
//     user may publish to.
//
// and, for each publish, subscription and delivery, the user's rules (internal/acl).
// Anonymous clients (open mode only) may publish to and read every topic except
// those starting with $. $SYS is read-only, and hidden unless Options.Sys.
//
// The CONNECT checks run in OnConnect, which can send the CONNACK code that fits
// (0x86/5 bad credentials, 0x85/2 client id, 0x87/5 will); OnConnectAuthenticate
// only passes on that verdict.
type authHook struct {
	mqtt.HookBase
	b     *Broker
	users map[string]User
	open  bool // no configured user: anonymous clients are let in
	sys   bool

	bcryptSlots chan struct{} // bounds concurrent bcrypt checks (a CONNECT flood is CPU-bound otherwise)
	mu          sync.Mutex
	verified    map[string][32]byte // user -> sha256 of the password bcrypt last accepted
	approved    sync.Map            // *mqtt.Client -> struct{}: passed OnConnect, for OnConnectAuthenticate
	claimed     sync.Map            // client id -> acl.Part: ids used by a part user (open mode)

	logWindow atomic.Int64 // unix second of the current log window
	logCount  atomic.Int64 // denials logged in it
}

// maxDenialLogs bounds the denial lines per second: a client looping on a denied
// QoS 0 publish must not fill the disk.
const maxDenialLogs = 20

func newAuthHook(b *Broker, users map[string]User, sys bool) *authHook {
	h := &authHook{b: b, users: users, open: true, sys: sys, verified: map[string][32]byte{},
		bcryptSlots: make(chan struct{}, max(1, runtime.NumCPU()/2))}
	for _, u := range users {
		if u.PasswordHash != "" {
			h.open = false
		}
	}
	return h
}

func (h *authHook) ID() string { return "onebox-auth" }

func (h *authHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck, mqtt.OnDisconnect}, []byte{b})
}

// OnConnect checks credentials, client id and will, and on a refusal sends the
// CONNACK itself and ends the connection.
func (h *authHook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	name := string(pk.Connect.Username)
	u, known := h.users[name]
	switch {
	case known && !h.passwordOK(name, u, pk.Connect.Password):
		return h.refuse(cl, name, packets.ErrBadUsernameOrPassword, errBadCredentials, "wrong password")
	case !known && !h.open:
		why := "unknown user"
		if name == "" {
			why = "anonymous clients are refused when users are configured"
		}
		return h.refuse(cl, name, packets.ErrBadUsernameOrPassword, errBadCredentials, why)
	}
	part, reserved := acl.PartOfClientID(cl.ID)
	if reserved {
		if why := h.clientID(cl, u, known, part); why != "" {
			return h.refuse(cl, name, packets.ErrClientIdentifierNotValid, errReservedID, why)
		}
	}
	if !(reserved && known && u.Part == part) {
		if why := h.sessionOwner(cl, name, pk.Connect.Clean); why != "" {
			return h.refuse(cl, name, packets.ErrClientIdentifierNotValid, errReservedID, why)
		}
	}
	if pk.Connect.WillFlag && !h.allowed(cl, name, pk.Connect.WillTopic, true) {
		return h.refuse(cl, name, packets.ErrNotAuthorized, errWillDenied, "will on "+clip(pk.Connect.WillTopic)+" not allowed for this user")
	}
	if reserved && known && u.Part == part && h.open {
		h.claimed.Store(cl.ID, u.Part)
	}
	h.approved.Store(cl, struct{}{})
	return nil
}

// clientID decides whether a client may use an id reserved for part: a user of
// that part may; with users configured nobody else may; in open mode an
// anonymous client may, unless the id is connected now or was last used by a
// part user (so it can neither knock a part off nor take over its session).
func (h *authHook) clientID(cl *mqtt.Client, u User, known bool, part acl.Part) string {
	if known && u.Part == part {
		return ""
	}
	if !h.open {
		return "client ids starting " + part.ClientIDPrefix() + " are only for users with part: " + string(part)
	}
	if p, ok := h.claimed.Load(cl.ID); ok {
		return "client id belongs to onebox's " + string(p.(acl.Part)) + " (pick another client id)"
	}
	if old, ok := h.b.srv.Clients.Get(cl.ID); ok && !old.Closed() {
		return "client id " + part.ClientIDPrefix() + "… is connected: onebox's parts are not taken over (pick another client id)"
	}
	return ""
}

// sessionOwner refuses a client id whose session belongs to another user name:
// taking it over would knock that client off, or hand the newcomer the session's
// queued messages (mochi resends them without an ACL check) and subscriptions. A
// clean session may replace a disconnected one: nothing is handed over.
func (h *authHook) sessionOwner(cl *mqtt.Client, name string, clean bool) string {
	old, ok := h.b.srv.Clients.Get(cl.ID)
	if !ok || string(old.Properties.Username) == name {
		return ""
	}
	owner := string(old.Properties.Username)
	if owner == "" {
		owner = "an anonymous client"
	} else {
		owner = "user " + owner
	}
	if !old.Closed() {
		return "client id in use by " + owner + " (pick another client id)"
	}
	if !clean {
		return "client id has a stored session of " + owner + ": connect with a clean session once, or pick another client id"
	}
	return ""
}

func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	_, ok := h.approved.LoadAndDelete(cl)
	return ok
}

func (h *authHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.approved.Delete(cl)
}

// passwordOK checks a password. bcrypt is slow on purpose (tens of ms on a Pi),
// so checks run a few at a time and a password bcrypt accepted is remembered (as
// its SHA-256) for the reconnects that follow.
func (h *authHook) passwordOK(name string, u User, pw []byte) bool {
	if u.PasswordHash == "" {
		return u.Password != "" && subtle.ConstantTimeCompare([]byte(u.Password), pw) == 1
	}
	sum := sha256.Sum256(pw)
	h.mu.Lock()
	ok, found := h.verified[name]
	h.mu.Unlock()
	if found && subtle.ConstantTimeCompare(ok[:], sum[:]) == 1 {
		return true
	}
	h.bcryptSlots <- struct{}{}
	err := bcrypt.CompareHashAndPassword([]byte(u.PasswordHash), pw)
	<-h.bcryptSlots
	if err != nil {
		return false
	}
	h.mu.Lock()
	h.verified[name] = sum
	h.mu.Unlock()
	return true
}

func (h *authHook) refuse(cl *mqtt.Client, user string, code packets.Code, err error, why string) error {
	h.denied("connection refused", cl, user, "reason", why)
	if code == packets.ErrNotAuthorized && cl.Properties.ProtocolVersion < 5 {
		code = packets.Err3NotAuthorized // mochi does not map 0x87 for 3.1.1
	}
	_ = h.b.srv.SendConnack(cl, code, false, nil)
	return err
}

// OnACLCheck is asked for each publish (write), each subscription (the filter as
// sent, $share/<group>/ included) and each delivery (the topic).
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	name := string(cl.Properties.Username)
	if h.allowed(cl, name, topic, write) {
		return true
	}
	what := "subscribe or read denied"
	if write {
		what = "publish denied"
	}
	h.denied(what, cl, name, "topic", clip(topic))
	return false
}

func (h *authHook) allowed(cl *mqtt.Client, name, topic string, write bool) bool {
	u, known := h.users[name]
	if !known && !h.open {
		return false
	}
	if isSys(topic) {
		if write || !h.sys {
			return false
		}
		return !known || u.Rules.CanSubscribe(topic)
	}
	if !known { // anonymous, open mode
		if write {
			return !strings.HasPrefix(topic, "$")
		}
		return true
	}
	if write {
		return u.Rules.CanPublish(topic)
	}
	return u.Rules.CanSubscribe(topic)
}

func (h *authHook) denied(msg string, cl *mqtt.Client, user string, kv ...any) {
	now := time.Now().Unix()
	if w := h.logWindow.Load(); w != now && h.logWindow.CompareAndSwap(w, now) {
		h.logCount.Store(0)
	}
	if h.logCount.Add(1) > maxDenialLogs {
		return
	}
	if user == "" {
		user = "(anonymous)"
	}
	args := append([]any{"client", cl.ID, "user", user, "remote", cl.Net.Remote, "mqtt", protoName(cl.Properties.ProtocolVersion)}, kv...)
	h.b.log.Warn(msg, args...)
}

// isSys reports whether a topic or filter names $SYS, shared subscriptions included.
func isSys(topic string) bool {
	if inner, shared, ok := acl.Unshare(topic); shared && ok {
		topic = inner
	}
	return topic == "$SYS" || strings.HasPrefix(topic, "$SYS/")
}
