package acl

import (
	"regexp"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	cases := []struct {
		filter, topic string
		want          bool
	}{
		{"a", "a", true},
		{"a", "b", false},
		{"a", "a/b", false},
		{"a/b", "a", false},
		{"+", "a", true},
		{"+", "a/b", false},
		{"+", "", false},
		{"+/+", "a/b", true},
		{"+/+", "/b", true}, // an empty level is a level
		{"+", "/", false},
		{"+/+", "/", true},
		{"a/+", "a/", true},
		{"a/+", "a", false},
		{"a/+/c", "a/b/c", true},
		{"a/+/c", "a/b/d", false},
		{"#", "a", true},
		{"#", "a/b/c", true},
		{"#", "/", true},
		{"a/#", "a", true}, // # includes the parent level
		{"a/#", "a/", true},
		{"a/#", "a/b/c", true},
		{"a/#", "ab", false},
		{"a/#", "b/a", false},
		{"a/b/#", "a", false},
		{"+/#", "a", true},
		{"trigger/+", "trigger/hello", true},
		{"trigger/+", "trigger/hello/1", false},
		{"trigger/hello/+", "trigger/hello/1", true},
		{"trigger/hello/+", "trigger/hello", false},
		// $ topics are not matched by a first-level wildcard.
		{"#", "$SYS/broker", false},
		{"+/broker", "$SYS/broker", false},
		{"$SYS/#", "$SYS/broker", true},
		{"$SYS/+", "$SYS/broker", true},
		{"a/+", "a/$x", true}, // only the first level is special
		// invalid filters and topics match nothing
		{"a/#/b", "a/x/b", false},
		{"a#", "a#", false},
		{"a+", "a+", false},
		{"", "", false},
		{"a", "", false},
		{"+", "+", false},
		{"#", "#", false},
		{"a\x00", "a\x00", false},
		{"\xff", "\xff", false},
	}
	for _, c := range cases {
		if got := Match(c.filter, c.topic); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
		if c.want != refMatch(c.filter, c.topic) {
			t.Errorf("the reference disagrees on (%q, %q)", c.filter, c.topic)
		}
	}
}

func TestCovers(t *testing.T) {
	cases := []struct {
		rule, filter string
		want         bool
	}{
		{"result/+", "result/abc", true},
		{"result/+", "result/+", true},
		{"result/+", "result/#", false},
		{"result/+", "#", false},
		{"result/+", "+/abc", false},
		{"result/+", "result/abc/def", false},
		{"result/+", "result", false},
		{"result/#", "result", true},
		{"result/#", "result/#", true},
		{"result/#", "result/+/+", true},
		{"result/#", "result/a/#", true},
		{"result/#", "#", false},
		{"result/+/#", "result/+", true},
		{"result/+/#", "result/#", false}, // result itself
		{"#", "#", true},
		{"#", "+/+/#", true},
		{"#", "$SYS/#", false},
		{"#", "$SYS", false},
		{"+", "$SYS", false},
		{"+/#", "#", true},
		{"$SYS/#", "$SYS/#", true},
		{"$SYS/#", "$SYS/broker/+", true},
		{"$SYS/#", "#", false},
		{"+", "+", true},
		{"+", "#", false},
		{"a/b", "a/b", true},
		{"a/b", "a/+", false},
		{"trigger/+", "trigger/#", false},
		{"trigger/+/+", "trigger/+", false},
		{"a/+/c", "a/+/c", true},
		{"a/+/c", "a/b/+", false},
		{"bad/#/x", "bad/a/x", false},
		{"a", "a/#", false},
	}
	for _, c := range cases {
		if got := Covers(c.rule, c.filter); got != c.want {
			t.Errorf("Covers(%q, %q) = %v, want %v", c.rule, c.filter, got, c.want)
		}
	}
}

func TestRules(t *testing.T) {
	alice := Rules{Publish: []string{"trigger/hello", "trigger/hello/+"}, Subscribe: []string{"result/+", "status/+"}}
	for _, c := range []struct {
		write bool
		topic string
		want  bool
	}{
		{true, "trigger/hello", true},
		{true, "trigger/hello/1", true},
		{true, "trigger/goodbye", false},
		{true, "trigger/hello/1/2", false},
		{true, "trigger/+", false}, // a wildcard is never a publish topic
		{true, "result/1", false},
		{false, "result/1", true},
		{false, "result/+", true},
		{false, "result/#", false},
		{false, "#", false},
		{false, "$share/g/result/+", true},
		{false, "$share/g/result/#", false},
		{false, "$share/g/trigger/#", false},
		{false, "$share//result/+", false},
		{false, "$share/g+/result/+", false},
		{false, "$share/g", false},
		{false, "$share/g/", false},
		{false, "trigger/hello", false},
	} {
		got := alice.CanSubscribe(c.topic)
		if c.write {
			got = alice.CanPublish(c.topic)
		}
		if got != c.want {
			t.Errorf("write=%v %q: %v, want %v", c.write, c.topic, got, c.want)
		}
	}
	if (Rules{}).CanPublish("a") || (Rules{}).CanSubscribe("a") {
		t.Error("no rules must allow nothing")
	}

	inv := Invoker.Rules()
	for _, f := range []string{"trigger/+", "trigger/+/+", "$share/onebox/trigger/+", "$share/onebox/trigger/+/+"} {
		if !inv.CanSubscribe(f) {
			t.Errorf("invoker cannot subscribe %s", f)
		}
	}
	if inv.CanSubscribe("trigger/#") || inv.CanPublish("trigger/x") || !inv.CanPublish("onebox/invoker/pi") || !inv.CanPublish("status/1") {
		t.Error("invoker rules are wrong")
	}
	br := HTTP.Rules()
	if !br.CanPublish("trigger/echo/1") || br.CanPublish("result/1") || !br.CanSubscribe("result/+") || !br.CanSubscribe("onebox/handlers") || br.CanSubscribe("trigger/+") {
		t.Error("bridge rules are wrong")
	}
	for id, want := range map[string]Part{"onebox-invoker-pi": Invoker, "onebox-http-x-1": HTTP, "onebox-file-ab": File, "onebox-cron-cd": Cron, "onebox-other": "", "alice": ""} {
		if p, _ := PartOfClientID(id); p != want {
			t.Errorf("PartOfClientID(%q) = %q, want %q", id, p, want)
		}
	}
}

// refMatch is the slow reference: the filter as a regular expression.
func refMatch(filter, topic string) bool {
	if filter == "" || topic == "" || strings.ContainsAny(topic, "+#\x00") || strings.ContainsRune(filter, 0) {
		return false
	}
	if !utf8ok(filter) || !utf8ok(topic) {
		return false
	}
	levels := strings.Split(filter, "/")
	var re strings.Builder
	re.WriteString("^")
	for i, l := range levels {
		switch {
		case l == "#" && i == len(levels)-1:
			if i == 0 {
				re.WriteString("(?s:.*)")
			} else {
				// "a/#" is "a" or "a/<anything>": undo the slash written before.
				s := re.String()
				re.Reset()
				re.WriteString(strings.TrimSuffix(s, "/"))
				re.WriteString("(?s:/.*)?")
			}
		case l == "+":
			re.WriteString("[^/]*")
		case strings.ContainsAny(l, "+#"):
			return false
		default:
			re.WriteString(regexp.QuoteMeta(l))
		}
		if i < len(levels)-1 {
			re.WriteString("/")
		}
	}
	re.WriteString("$")
	if (levels[0] == "+" || levels[0] == "#") && strings.HasPrefix(topic, "$") {
		return false
	}
	return regexp.MustCompile(re.String()).MatchString(topic)
}

func utf8ok(s string) bool { return strings.ToValidUTF8(s, "\ufffd") == s }

// FuzzMatch compares Match with the regexp reference, and checks that Covers is
// sound: a topic matched by a covered filter is matched by the rule.
func FuzzMatch(f *testing.F) {
	for _, s := range [][3]string{
		{"a/#", "a", "a/+"}, {"+/+", "/b", "#"}, {"#", "$SYS/x", "$SYS/#"}, {"a/+/c", "a/b/c", "a/+/+"},
		{"trigger/+/+", "trigger/hello/1", "trigger/#"}, {"a/b/#", "a/b", "a/b"}, {"+", "", "+"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, filter, topic, rule string) {
		got, want := Match(filter, topic), refMatch(filter, topic)
		if got != want {
			t.Fatalf("Match(%q, %q) = %v, reference %v", filter, topic, got, want)
		}
		if Covers(rule, filter) && Match(filter, topic) && !Match(rule, topic) {
			t.Fatalf("Covers(%q, %q) but %q matches only the filter", rule, filter, topic)
		}
		// A rule always covers itself and its own topics.
		if ValidFilter(filter) && !Covers(filter, filter) {
			t.Fatalf("Covers(%q, itself) = false", filter)
		}
		if ValidTopic(topic) && Match(filter, topic) != Covers(filter, topic) {
			t.Fatalf("Covers(%q, topic %q) differs from Match", filter, topic)
		}
	})
}
