//go:build !linux

package filebridge

import "errors"

func newWatcher() (watcher, error) {
	return nil, errors.New("the file bridge needs Linux inotify (IN_CLOSE_WRITE); it is not available on this system")
}
