package docker

import "sync"

// headWriter keeps the first max bytes written to it and counts (and drains) the
// rest, so memory stays bounded whatever the container prints.
type headWriter struct {
	mu    sync.Mutex
	max   int64
	buf   []byte
	total int64
}

func (w *headWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.total += int64(len(p))
	if room := w.max - int64(len(w.buf)); room > 0 {
		q := p
		if int64(len(q)) > room {
			q = q[:room]
		}
		w.buf = append(w.buf, q...)
	}
	return len(p), nil
}

func (w *headWriter) result() ([]byte, int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]byte(nil), w.buf...), w.total
}

// tailWriter keeps the last max bytes written to it in a ring.
type tailWriter struct {
	mu   sync.Mutex
	ring []byte
	next int  // where the next byte goes
	full bool // the ring has wrapped
}

func newTailWriter(max int) *tailWriter { return &tailWriter{ring: make([]byte, max)} }

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	size := len(w.ring)
	if size == 0 {
		return n, nil
	}
	if len(p) >= size {
		copy(w.ring, p[len(p)-size:])
		w.next, w.full = 0, true
		return n, nil
	}
	c := copy(w.ring[w.next:], p)
	if c < len(p) {
		copy(w.ring, p[c:])
		w.full = true
	}
	w.next = (w.next + len(p)) % size
	if w.next == 0 && len(p) > 0 {
		w.full = true
	}
	return n, nil
}

func (w *tailWriter) bytes() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.full {
		return append([]byte(nil), w.ring[:w.next]...)
	}
	out := make([]byte, 0, len(w.ring))
	out = append(out, w.ring[w.next:]...)
	return append(out, w.ring[:w.next]...)
}
