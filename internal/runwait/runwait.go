// Package runwait lets a bridge wait for the answer to a trigger it published,
// using nothing but MQTT: one subscription to status/+ and result/+ serves every
// waiter (no subscribe/unsubscribe per request). Register the id before you
// publish the trigger so that no fast answer is missed.
package runwait

import (
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/onebox-dev/onebox/internal/record"
	"github.com/onebox-dev/onebox/internal/topics"
)

// Filters to subscribe to (QoS 1).
var Filters = map[string]byte{topics.StatusRoot + "/+": 1, topics.ResultRoot + "/+": 1}

// Answer is what came back for one run.
type Answer struct {
	Record    record.Record // the final record
	Result    []byte        // result/<id> payload (nil for a rejected run)
	HasResult bool
}

// Waiter dispatches status and result messages to the ids being waited for.
type Waiter struct {
	mu      sync.Mutex
	waiting map[string]*Wait
	// ResultGrace is how long to wait for result/<id> after a final status that
	// says the container ran (the two may be delivered in either order).
	ResultGrace time.Duration
}

// Wait is one registered id.
type Wait struct {
	id      string
	mu      sync.Mutex
	rec     *record.Record
	result  []byte
	hasRes  bool
	updates chan record.Record // every record, newest wins when full
	done    chan struct{}      // closed when the answer is complete
	closed  bool
	w       *Waiter
}

// New returns a Waiter; subscribe with its Handle as the message handler.
func New() *Waiter {
	return &Waiter{waiting: map[string]*Wait{}, ResultGrace: 2 * time.Second}
}

// Subscribe subscribes c to Filters with w.Handle. Call it from OnConnect so the
// subscription is renewed after a reconnect.
func (w *Waiter) Subscribe(c mqtt.Client) mqtt.Token {
	return c.SubscribeMultiple(Filters, w.Handle)
}

// Register starts waiting for id. Call Cancel when finished, also after Done is
// closed: it is what forgets the id.
func (w *Waiter) Register(id string) *Wait {
	x := &Wait{id: id, updates: make(chan record.Record, 4), done: make(chan struct{}), w: w}
	w.mu.Lock()
	w.waiting[id] = x
	w.mu.Unlock()
	return x
}

// Len is the number of ids being waited for.
func (w *Waiter) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.waiting)
}

// Handle is the paho message handler. It never blocks.
func (w *Waiter) Handle(_ mqtt.Client, m mqtt.Message) {
	root, id, ok := strings.Cut(m.Topic(), "/")
	if !ok {
		return
	}
	w.mu.Lock()
	x := w.waiting[id]
	w.mu.Unlock()
	if x == nil {
		return
	}
	switch root {
	case topics.StatusRoot:
		r, err := record.Parse(m.Payload())
		if err != nil || r.ID != id {
			return
		}
		x.onRecord(r)
	case topics.ResultRoot:
		x.onResult(m.Payload())
	}
}

func (x *Wait) onRecord(r record.Record) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return
	}
	// Newest wins: when the reader is behind, drop the oldest update, not this one.
	for sent := false; !sent; {
		select {
		case x.updates <- r:
			sent = true
		default:
			select {
			case <-x.updates:
			default:
			}
		}
	}
	if !record.Final(r.State) {
		return
	}
	x.rec = &r
	if x.hasRes || !ran(r) {
		x.finish()
		return
	}
	// The record came first: give the result a moment to arrive.
	time.AfterFunc(x.w.ResultGrace, func() {
		x.mu.Lock()
		defer x.mu.Unlock()
		x.finish()
	})
}

func (x *Wait) onResult(b []byte) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return
	}
	x.result, x.hasRes = append([]byte(nil), b...), true
	if x.rec != nil {
		x.finish()
	}
}

// finish closes done once; x.mu is held.
func (x *Wait) finish() {
	if x.closed {
		return
	}
	x.closed = true
	close(x.done)
}

// ran reports whether a final record says a container ran (and so a result/<id>
// was published before it).
func ran(r record.Record) bool {
	return r.State != record.Rejected && r.StartedAt != nil
}

// Updates delivers every record seen (queued, running, final); it may drop
// intermediate ones when the reader is slow.
func (x *Wait) Updates() <-chan record.Record { return x.updates }

// Done is closed once the final record (and the result, where one is due) arrived.
func (x *Wait) Done() <-chan struct{} { return x.done }

// Answer returns what arrived; valid after Done is closed.
func (x *Wait) Answer() Answer {
	x.mu.Lock()
	defer x.mu.Unlock()
	a := Answer{Result: x.result, HasResult: x.hasRes}
	if x.rec != nil {
		a.Record = *x.rec
	}
	return a
}

// Cancel stops waiting and forgets the id.
func (x *Wait) Cancel() {
	x.w.mu.Lock()
	if x.w.waiting[x.id] == x {
		delete(x.w.waiting, x.id)
	}
	x.w.mu.Unlock()
}
