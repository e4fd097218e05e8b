package invoker

import (
	"container/list"
	"sync"
	"time"
)

// dedupe remembers recently seen run ids (bounded in count and age) so that a
// broker's redelivery of a trigger is not a second run.
type dedupe struct {
	mu    sync.Mutex
	max   int
	age   time.Duration
	now   func() time.Time
	items map[string]*list.Element
	order *list.List // front = oldest
}

type seen struct {
	key  string
	at   time.Time
	done bool // the run has ended (false: queued or running)
}

func newDedupe(max int, age time.Duration, now func() time.Time) *dedupe {
	return &dedupe{max: max, age: age, now: now, items: map[string]*list.Element{}, order: list.New()}
}

// add records key as in progress. It returns false, and the entry's state, when
// key was seen within the window.
func (d *dedupe) add(key string) (added bool, done bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.expire()
	if e, ok := d.items[key]; ok {
		return false, e.Value.(*seen).done
	}
	d.items[key] = d.order.PushBack(&seen{key: key, at: d.now()})
	for d.order.Len() > d.max {
		d.remove(d.order.Front())
	}
	return true, false
}

// finish marks key as ended; it stays remembered for the window.
func (d *dedupe) finish(key string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.items[key]; ok {
		s := e.Value.(*seen)
		s.done, s.at = true, d.now()
		d.order.MoveToBack(e)
	}
}

// forget drops key, so that a later delivery runs (used when a trigger was not
// taken, e.g. at shutdown before it started).
func (d *dedupe) forget(key string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.items[key]; ok {
		d.remove(e)
	}
}

func (d *dedupe) expire() {
	cut := d.now().Add(-d.age)
	for e := d.order.Front(); e != nil; e = d.order.Front() {
		s := e.Value.(*seen)
		if !s.done || s.at.After(cut) {
			// In-progress entries never expire; the list is in time order.
			return
		}
		d.remove(e)
	}
}

func (d *dedupe) remove(e *list.Element) {
	delete(d.items, e.Value.(*seen).key)
	d.order.Remove(e)
}

func (d *dedupe) len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.order.Len()
}
