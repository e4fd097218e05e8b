package topics

import (
	"errors"
	"sort"
	"strings"
	"testing"
)

func TestParseTrigger(t *testing.T) {
	good := []struct{ topic, h, id string }{
		{"trigger/hello", "hello", ""},
		{"trigger/echo/my1", "echo", "my1"},
		{"trigger/a-b_c/ID.x-1_", "a-b_c", "ID.x-1_"},
		{"trigger/0/0", "0", "0"},
		{"trigger/" + strings.Repeat("a", 63) + "/" + strings.Repeat("Z", 64), strings.Repeat("a", 63), strings.Repeat("Z", 64)},
	}
	for _, g := range good {
		h, id, err := ParseTrigger(g.topic)
		if err != nil || h != g.h || id != g.id {
			t.Errorf("ParseTrigger(%q) = %q %q %v, want %q %q", g.topic, h, id, err, g.h, g.id)
		}
	}
	bad := []struct {
		topic string
		want  error
	}{
		{"trigger/", ErrBadHandler},
		{"trigger", ErrNotTrigger},
		{"trigger//echo", ErrBadHandler},
		{"trigger/echo/", ErrBadID},
		{"/trigger/echo", ErrNotTrigger},
		{"trigger/Echo", ErrBadHandler},
		{"trigger/echo/a/b", ErrTooManyLevels},
		{"trigger/-echo", ErrBadHandler},
		{"trigger/echo/.x", ErrBadID},
		{"trigger/+", ErrBadHandler},
		{"trigger/#", ErrBadHandler},
		{"trigger/echo/+", ErrBadID},
		{"trigger/" + strings.Repeat("a", 64), ErrBadHandler},
		{"trigger/a/" + strings.Repeat("a", 65), ErrBadID},
		{"trigger/" + strings.Repeat("x", 65535), ErrBadHandler},
		{"trigger/héllo", ErrBadHandler},
		{"trigger/a\x00b", ErrBadHandler},
	}
	for _, b := range bad {
		_, _, err := ParseTrigger(b.topic)
		if !errors.Is(err, b.want) {
			t.Errorf("ParseTrigger(%.40q) err = %v, want %v", b.topic, err, b.want)
		}
		if err != nil && len(err.Error()) > 300 {
			t.Errorf("error for a long topic is not clipped: %d bytes", len(err.Error()))
		}
	}
}

func TestNewIDUniqueSortedValid(t *testing.T) {
	const n = 5000
	ids := make([]string, n)
	seen := map[string]bool{}
	for i := range ids {
		ids[i] = NewID()
		if !ValidID(ids[i]) {
			t.Fatalf("NewID() = %q is not a valid id", ids[i])
		}
		if seen[ids[i]] {
			t.Fatalf("NewID() repeated %q", ids[i])
		}
		seen[ids[i]] = true
	}
	if !sort.StringsAreSorted(ids) {
		t.Fatalf("ids made in sequence do not sort by time")
	}
}

func FuzzParseTrigger(f *testing.F) {
	for _, s := range []string{"trigger/hello", "trigger/a/b", "trigger//", "trigger/a/b/c", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		h, id, err := ParseTrigger(topic)
		if err != nil {
			return
		}
		if !ValidHandler(h) || (id != "" && !ValidID(id)) {
			t.Fatalf("accepted %q as %q %q", topic, h, id)
		}
		if Trigger(h, id) != topic {
			t.Fatalf("round trip of %q gave %q", topic, Trigger(h, id))
		}
		if strings.ContainsAny(h+id, "+#/\x00") {
			t.Fatalf("wildcard or separator in %q", topic)
		}
	})
}
