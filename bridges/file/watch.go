package filebridge

// evKind is what happened in a watched folder.
type evKind int

const (
	evFileDone evKind = iota // a file was closed after writing or renamed in: it is complete
	evDirNew                 // a subfolder was created or moved in
	evDirGone                // the watched folder was removed or moved away
	evOverflow               // the kernel dropped events: rescan everything
	evError                  // the watcher broke
)

type fsEvent struct {
	Kind evKind
	Dir  string // the watched folder
	Name string // the entry in Dir (evFileDone, evDirNew)
	Err  error  // evError
}

// watcher reports complete files and new subfolders of the folders it watches.
// The Linux implementation is inotify (watch_linux.go).
type watcher interface {
	Add(dir string) error
	Events() <-chan fsEvent
	Close() error
}
