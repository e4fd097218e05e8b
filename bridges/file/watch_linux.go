//go:build linux

package filebridge

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watchMask is what every watched folder reports: complete files (closed after
// writing, or renamed in), new subfolders, overflow, and the folder going away.
const watchMask = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_CREATE |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// inotifyWatcher reads raw inotify events through Go's poller (the fd is
// non-blocking, so Close wakes the reader).
type inotifyWatcher struct {
	f      *os.File
	fd     int
	events chan fsEvent
	done   chan struct{}
	stop   chan struct{}
	once   sync.Once

	mu    sync.Mutex
	paths map[int]string // wd -> folder
	wds   map[string]int // folder -> wd
}

func newWatcher() (watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w (raise fs.inotify.max_user_instances?)", err)
	}
	w := &inotifyWatcher{
		f:      os.NewFile(uintptr(fd), "inotify"),
		fd:     fd,
		events: make(chan fsEvent, 1024),
		done:   make(chan struct{}),
		stop:   make(chan struct{}),
		paths:  map[int]string{},
		wds:    map[string]int{},
	}
	go w.read()
	return w, nil
}

func (w *inotifyWatcher) Add(dir string) error {
	wd, err := unix.InotifyAddWatch(w.fd, dir, watchMask)
	if err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("watch %s: %w (raise fs.inotify.max_user_watches)", dir, err)
		}
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	w.mu.Lock()
	w.paths[wd] = dir
	w.wds[dir] = wd
	w.mu.Unlock()
	return nil
}

func (w *inotifyWatcher) Events() <-chan fsEvent { return w.events }

func (w *inotifyWatcher) Close() error {
	var err error
	w.once.Do(func() {
		close(w.stop)
		err = w.f.Close()
	})
	<-w.done
	return err
}

func (w *inotifyWatcher) send(ev fsEvent) {
	select {
	case w.events <- ev:
	case <-w.stop:
	}
}

func (w *inotifyWatcher) read() {
	defer close(w.done)
	defer close(w.events)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			if errors.Is(err, unix.EINTR) {
				continue
			}
			w.send(fsEvent{Kind: evError, Err: err})
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			raw := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(raw.Len)]
			off += unix.SizeofInotifyEvent + int(raw.Len)
			name := string(bytes.TrimRight(nameBytes, "\x00"))
			mask := raw.Mask
			if mask&unix.IN_Q_OVERFLOW != 0 {
				w.send(fsEvent{Kind: evOverflow})
				continue
			}
			w.mu.Lock()
			dir, ok := w.paths[int(raw.Wd)]
			if ok && mask&(unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0 {
				delete(w.paths, int(raw.Wd))
				if w.wds[dir] == int(raw.Wd) {
					delete(w.wds, dir)
				}
				if mask&unix.IN_MOVE_SELF != 0 {
					_, _ = unix.InotifyRmWatch(w.fd, uint32(raw.Wd))
				}
			}
			w.mu.Unlock()
			if !ok {
				continue
			}
			switch {
			case mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0:
				w.send(fsEvent{Kind: evDirGone, Dir: dir})
			case mask&unix.IN_ISDIR != 0 && mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
				w.send(fsEvent{Kind: evDirNew, Dir: dir, Name: name})
			case mask&(unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO) != 0:
				w.send(fsEvent{Kind: evFileDone, Dir: dir, Name: name})
			}
		}
	}
}
