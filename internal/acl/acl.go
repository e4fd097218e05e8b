// Package acl is onebox's MQTT access control: topic-filter matching with MQTT's
// rules, filter-within-filter subsumption for subscriptions, and per-user publish
// and subscribe rules.
//
// Semantics (MQTT 3.1.1 §4.7 and MQTT 5 §4.7):
//   - "+" matches exactly one level, an empty one included;
//   - "#" (only as the last level) matches the rest, the parent level included:
//     "a/#" matches "a", "a/b" and "a/b/c";
//   - a topic whose first level starts with "$" ($SYS/…) is not matched by a
//     wildcard in the first level: "#" and "+/x" do not match "$SYS/x", "$SYS/#" does;
//   - "$share/<group>/<filter>" is a shared subscription to <filter>: it is
//     checked as <filter>;
//   - nothing is allowed unless a rule allows it.
package acl

import (
	"strings"
	"unicode/utf8"
)

// SharePrefix starts a shared subscription: $share/<group>/<filter>.
const SharePrefix = "$share/"

// Rules are one user's permissions: the topic filters it may publish to and
// subscribe to.
type Rules struct {
	Publish   []string
	Subscribe []string
}

// CanPublish reports whether topic (a topic name, no wildcards) matches one of
// the publish rules.
func (r Rules) CanPublish(topic string) bool {
	if !ValidTopic(topic) {
		return false
	}
	for _, rule := range r.Publish {
		if Match(rule, topic) {
			return true
		}
	}
	return false
}

// CanSubscribe reports whether every topic that filter could match is matched by
// one subscribe rule. A shared subscription is checked as the filter behind
// $share/<group>/. A topic name is a filter too: CanSubscribe is also the read
// check for one delivery.
//
// Each filter must be covered by a single rule: rules result/+ and result/+/#
// together allow result/# in theory, but not here (ask for the rule result/#).
func (r Rules) CanSubscribe(filter string) bool {
	f, _, ok := Unshare(filter)
	if !ok || !ValidFilter(f) {
		return false
	}
	for _, rule := range r.Subscribe {
		if Covers(rule, f) {
			return true
		}
	}
	return false
}

// Unshare returns the filter behind $share/<group>/, whether it was shared, and
// false when a $share filter is malformed (no group, a wildcard in the group,
// nothing behind it).
func Unshare(filter string) (inner string, shared bool, ok bool) {
	rest, shared := strings.CutPrefix(filter, SharePrefix)
	if !shared {
		return filter, false, true
	}
	group, inner, found := strings.Cut(rest, "/")
	if !found || group == "" || strings.ContainsAny(group, "+#") || inner == "" {
		return "", true, false
	}
	return inner, true, true
}

// ValidTopic reports whether s is a topic name a client may publish to: not
// empty, no wildcards, no NUL, valid UTF-8.
func ValidTopic(s string) bool {
	return s != "" && !strings.ContainsAny(s, "+#\x00") && utf8.ValidString(s)
}

// ValidFilter reports whether s is a well-formed topic filter: not empty, "+"
// and "#" only as whole levels, "#" only last, no NUL, valid UTF-8. (A $share
// prefix is not taken off here: see Unshare.)
func ValidFilter(s string) bool {
	if s == "" || strings.ContainsRune(s, 0) || !utf8.ValidString(s) {
		return false
	}
	levels := strings.Split(s, "/")
	for i, l := range levels {
		switch {
		case l == "#":
			if i != len(levels)-1 {
				return false
			}
		case l == "+":
		case strings.ContainsAny(l, "+#"):
			return false
		}
	}
	return true
}

// Match reports whether filter matches topic. An invalid filter or topic
// matches nothing.
func Match(filter, topic string) bool {
	if !ValidFilter(filter) || !ValidTopic(topic) {
		return false
	}
	return Covers(filter, topic)
}

// Covers reports whether every topic matched by filter is also matched by rule
// (subsumption); with a topic name as filter this is Match. Either being
// invalid gives false. Neither may carry a $share prefix.
func Covers(rule, filter string) bool {
	if !ValidFilter(rule) || !ValidFilter(filter) {
		return false
	}
	r := strings.Split(rule, "/")
	f := strings.Split(filter, "/")
	// Topics under a "$" first level are only reached by a literal first level.
	dollar := strings.HasPrefix(f[0], "$")
	for i := 0; ; i++ {
		if i < len(r) && r[i] == "#" {
			// The rest of the rule matches anything, the parent level included.
			return !(i == 0 && dollar)
		}
		if i == len(f) {
			return i == len(r)
		}
		if i == len(r) {
			return false // the filter goes deeper than the rule
		}
		switch {
		case f[i] == "#":
			// Only a "#" in the rule covers any depth, but at the first level
			// "+/#" is "#": every topic has a first level.
			return i == 0 && len(r) == 2 && r[0] == "+" && r[1] == "#"
		case r[i] == "+":
			if i == 0 && dollar {
				return false
			}
		case f[i] == "+":
			return false // a literal rule level covers one value, not all
		case r[i] != f[i]:
			return false
		}
	}
}

// Part names onebox's own clients. Each may use only what it needs, and only a
// user of a part may connect with that part's client id prefix.
type Part string

const (
	Invoker Part = "invoker"
	HTTP    Part = "http"
	File    Part = "file"
	Cron    Part = "cron"
)

// Parts lists every part, in a stable order.
var Parts = []Part{Invoker, HTTP, File, Cron}

// ValidPart reports whether p names a part.
func ValidPart(p Part) bool {
	for _, q := range Parts {
		if p == q {
			return true
		}
	}
	return false
}

// ClientIDPrefix is the client id prefix reserved for a part: the invoker
// connects as onebox-invoker-<name>, the bridges as onebox-<kind>-<random>.
func (p Part) ClientIDPrefix() string { return "onebox-" + string(p) + "-" }

// PartOfClientID returns the part whose reserved prefix id starts with.
func PartOfClientID(id string) (Part, bool) {
	for _, p := range Parts {
		if strings.HasPrefix(id, p.ClientIDPrefix()) {
			return p, true
		}
	}
	return "", false
}

// Rules returns what the part needs: the invoker takes triggers (also through
// $share) and publishes results, records and its state; a bridge publishes
// triggers with a run id and reads results, records and onebox/ state.
func (p Part) Rules() Rules {
	switch p {
	case Invoker:
		return Rules{
			Publish:   []string{"result/+", "status/+", "onebox/#"},
			Subscribe: []string{"trigger/+", "trigger/+/+"},
		}
	case HTTP, File, Cron:
		return Rules{
			Publish:   []string{"trigger/+/+"},
			Subscribe: []string{"result/+", "status/+", "onebox/#"},
		}
	}
	return Rules{}
}
