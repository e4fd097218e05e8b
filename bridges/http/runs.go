package httpbridge

import (
	"container/list"
	"strings"
	"sync"
	"time"

	"github.com/onebox-dev/onebox/internal/record"
	"github.com/onebox-dev/onebox/internal/topics"
)

// statePublished is the state GET /runs/<id> shows before the invoker's first record.
const statePublished = "published"

// runEntry is what the bridge keeps of one run.
type runEntry struct {
	id        string
	rec       record.Record // latest record by state (published < queued < running < final)
	finalAt   time.Time     // when the final record arrived
	result    []byte
	hasResult bool
	keep      bool // keep stdout (async runs, and sync runs whose client stopped waiting)
	dropped   bool // stdout was larger than the whole budget
	el        *list.Element
}

// runStore keeps the bridge's recent runs, bounded in count and in stdout bytes;
// the oldest are evicted first. It is fed by the same status/+ and result/+
// subscription as runwait, and only for ids it was given.
type runStore struct {
	mu       sync.Mutex
	byID     map[string]*runEntry
	order    *list.List // of *runEntry, oldest first
	bytes    int64
	maxRuns  int
	maxBytes int64
}

func newRunStore(maxRuns int, maxBytes int64) *runStore {
	return &runStore{byID: map[string]*runEntry{}, order: list.New(), maxRuns: maxRuns, maxBytes: maxBytes}
}

// add starts keeping id; call it before the trigger is published.
func (s *runStore) add(id, handler string, keep bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.byID[id]; old != nil {
		s.evict(old)
	}
	e := &runEntry{id: id, keep: keep, rec: record.Record{ID: id, Handler: handler, Source: record.SourceHTTP, State: statePublished}}
	e.el = s.order.PushBack(e)
	s.byID[id] = e
	for s.order.Len() > s.maxRuns {
		s.evict(s.order.Front().Value.(*runEntry))
	}
}

// remove forgets id (its trigger was never published).
func (s *runStore) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.byID[id]; e != nil {
		s.evict(e)
	}
}

// keepResult starts keeping the stdout of id (its client will not get it otherwise).
func (s *runStore) keepResult(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.byID[id]; e != nil {
		e.keep = true
	}
}

// get returns a copy of id's entry.
func (s *runStore) get(id string) (runEntry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.byID[id]
	if e == nil {
		return runEntry{}, false
	}
	c := *e
	c.el = nil
	return c, true
}

// size is the number of runs kept and their stdout bytes.
func (s *runStore) size() (int, int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.order.Len(), s.bytes
}

// handle takes a status/<id> or result/<id> message. It never blocks for long.
func (s *runStore) handle(topic string, payload []byte) {
	root, id, ok := strings.Cut(topic, "/")
	if !ok || (root != topics.StatusRoot && root != topics.ResultRoot) {
		return
	}
	s.mu.Lock()
	e := s.byID[id]
	s.mu.Unlock()
	if e == nil {
		return
	}
	if root == topics.StatusRoot {
		r, err := record.Parse(payload)
		if err != nil || r.ID != id {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		// Messages are handled concurrently: never step back to an earlier state.
		if s.byID[id] == e && rank(r.State) > rank(e.rec.State) {
			e.rec = r
			if record.Final(r.State) {
				e.finalAt = time.Now()
			}
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byID[id] != e || !e.keep || e.hasResult || e.dropped {
		return
	}
	n := int64(len(payload))
	if n > s.maxBytes {
		e.dropped = true
		return
	}
	e.result, e.hasResult = append([]byte(nil), payload...), true
	s.bytes += n
	for s.bytes > s.maxBytes {
		old := s.order.Front().Value.(*runEntry)
		if old == e {
			// Only newer runs hold bytes besides this one: evict those, oldest first.
			next := e.el.Next()
			if next == nil {
				break
			}
			old = next.Value.(*runEntry)
		}
		s.evict(old)
	}
}

// evict forgets e; s.mu is held.
func (s *runStore) evict(e *runEntry) {
	s.order.Remove(e.el)
	delete(s.byID, e.id)
	s.bytes -= int64(len(e.result))
}

func rank(state string) int {
	switch {
	case state == statePublished:
		return 0
	case state == record.Queued:
		return 1
	case state == record.Running:
		return 2
	case record.Final(state):
		return 3
	}
	return -1
}
