package config

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watch calls apply with the new Options each time the file at path changes and
// still parses. A file that no longer parses, or that apply refuses (returns an
// error), is logged with its error and the running config stays. The folder is
// watched, not the file, so that editors that save by renaming a new file into
// place are seen too.
func Watch(ctx context.Context, path string, log *slog.Logger, apply func(*Options) error) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	abs, _ := filepath.Abs(path)
	if err := w.Add(filepath.Dir(abs)); err != nil {
		w.Close()
		return err
	}
	last, _ := os.ReadFile(path)
	go func() {
		defer w.Close()
		var timer *time.Timer
		fire := make(chan struct{}, 1)
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if filepath.Clean(ev.Name) != abs || ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) == 0 {
					continue
				}
				// Debounce: editors write in several steps.
				if timer != nil {
					timer.Stop()
				}
				timer = time.AfterFunc(150*time.Millisecond, func() {
					select {
					case fire <- struct{}{}:
					default:
					}
				})
			case <-fire:
				now, err := os.ReadFile(path)
				if err == nil && bytes.Equal(now, last) {
					continue // an editor's second write of the same content
				}
				last = now
				o, err := Load(path)
				if err == nil {
					err = apply(o)
				}
				if err != nil {
					log.Error("config not reloaded: the running config stays", "file", path, "err", err)
					continue
				}
				log.Info("config reloaded", "file", path, "handlers", len(o.Handlers))
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Warn("config watch error", "file", path, "err", err)
			}
		}
	}()
	return nil
}
