// Package topics holds onebox's MQTT topic grammar: the names of handlers and run
// ids, the trigger topics a caller publishes and the result and status topics the
// invoker answers on. Every part (broker, invoker, bridges) validates with this one
// package so that they agree on what may run.
package topics

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// Topic roots.
const (
	TriggerRoot = "trigger"
	ResultRoot  = "result"
	StatusRoot  = "status"
	SystemRoot  = "onebox"

	// HandlersTopic carries the retained list of handlers the invoker serves.
	HandlersTopic = "onebox/handlers"
	// InvokerStatePrefix + <instance> carries an invoker's retained online/offline state.
	InvokerStatePrefix = "onebox/invoker/"

	// TriggerFilters are the two filters an invoker subscribes to.
	TriggerFilter   = "trigger/+"
	TriggerIDFilter = "trigger/+/+"
)

// Limits of the grammar.
const (
	MaxHandlerLen = 63
	MaxIDLen      = 64
)

var (
	ErrNotTrigger    = errors.New("not a trigger topic")
	ErrBadHandler    = errors.New("bad handler name: use 1-63 of a-z 0-9 _ - starting with a letter or digit")
	ErrBadID         = errors.New("bad run id: use 1-64 of A-Z a-z 0-9 _ . - starting with a letter or digit")
	ErrTooManyLevels = errors.New("too many topic levels: use trigger/<handler> or trigger/<handler>/<id>")
)

// ValidHandler reports whether s matches [a-z0-9][a-z0-9_-]{0,62}.
func ValidHandler(s string) bool {
	if len(s) == 0 || len(s) > MaxHandlerLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '_' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// ValidID reports whether s matches [A-Za-z0-9][A-Za-z0-9_.-]{0,63}.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '_' || c == '.' || c == '-') && i > 0:
		default:
			return false
		}
	}
	return true
}

// IsTrigger reports whether topic is under trigger/ (valid or not), the space the
// broker polices.
func IsTrigger(topic string) bool {
	return topic == TriggerRoot || strings.HasPrefix(topic, TriggerRoot+"/")
}

// ParseTrigger splits trigger/<handler> or trigger/<handler>/<id>. id is "" when the
// caller chose none. The error names what is wrong with the topic.
func ParseTrigger(topic string) (handler, id string, err error) {
	rest, ok := strings.CutPrefix(topic, TriggerRoot+"/")
	if !ok {
		return "", "", fmt.Errorf("%w: %q", ErrNotTrigger, topic)
	}
	parts := strings.Split(rest, "/")
	if len(parts) > 2 {
		return "", "", fmt.Errorf("%w: %q", ErrTooManyLevels, clip(topic))
	}
	if !ValidHandler(parts[0]) {
		return "", "", fmt.Errorf("%w: %q", ErrBadHandler, clip(parts[0]))
	}
	if len(parts) == 2 {
		if !ValidID(parts[1]) {
			return "", "", fmt.Errorf("%w: %q", ErrBadID, clip(parts[1]))
		}
		return parts[0], parts[1], nil
	}
	return parts[0], "", nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// Trigger returns trigger/<handler>, or trigger/<handler>/<id> when id is set.
func Trigger(handler, id string) string {
	if id == "" {
		return TriggerRoot + "/" + handler
	}
	return TriggerRoot + "/" + handler + "/" + id
}

// Result returns result/<id>.
func Result(id string) string { return ResultRoot + "/" + id }

// Status returns status/<id>.
func Status(id string) string { return StatusRoot + "/" + id }

// InvokerState returns onebox/invoker/<instance>.
func InvokerState(instance string) string { return InvokerStatePrefix + instance }

var (
	idMu   sync.Mutex
	idLast int64
	idSeq  uint32
)

// NewID returns a run id that is unique and sorts by time: a UTC timestamp to the
// millisecond, a per-process sequence, and random bytes, e.g.
// 20261203T190501.123Z-0001-9f3a1c2b. It always satisfies ValidID.
func NewID() string {
	now := time.Now().UTC()
	ms := now.UnixMilli()
	idMu.Lock()
	if ms == idLast {
		idSeq++
	} else {
		idLast, idSeq = ms, 0
	}
	seq := idSeq
	idMu.Unlock()
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s.%03dZ-%04x-%s", now.Format("20060102T150405"), ms%1000, seq&0xffff, hex.EncodeToString(b[:]))
}
