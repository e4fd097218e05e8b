package filebridge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/onebox-dev/onebox/internal/mqttc"
	"github.com/onebox-dev/onebox/internal/record"
	"github.com/onebox-dev/onebox/internal/runwait"
	"github.com/onebox-dev/onebox/internal/state"
	"github.com/onebox-dev/onebox/internal/topics"
)

// Defaults.
const (
	DefaultMaxPayload    = 1 << 20
	DefaultConcurrency   = 8
	DefaultAnswerTimeout = 5 * time.Minute
	DefaultSettle        = time.Second
	// answerMargin is added to a handler's known timeout (queueing, start, transfer).
	answerMargin = time.Minute
	// IDPrefix starts every run id this bridge makes; the invoker derives the
	// record's source (file) from it.
	IDPrefix = "file-"
	// ReasonNoAnswer is the reason in a failed/ record when the invoker never answered.
	ReasonNoAnswer = "no answer"
	// publishedMarker sits in a processing entry once the broker acknowledged its trigger.
	publishedMarker = ".published"
)

// Options configure a Bridge.
type Options struct {
	// Inbox is a folder whose subfolder inbox/<handler>/ triggers <handler>. Empty:
	// no inbox, only Folders.
	Inbox string
	// Folders maps further folders to the handler they trigger.
	Folders map[string]string

	BrokerURL, ClientID, Username, Password string

	// MaxPayload is the broker's packet limit (default 1 MiB). A file whose
	// content does not fit in one PUBLISH packet of that size is not sent.
	MaxPayload int64
	Logger     *slog.Logger
	// Concurrency is how many files may be in flight at once (default 8).
	Concurrency int
	// AnswerTimeout bounds the wait for a run's answer (0: the handler's timeout
	// from onebox/handlers plus a minute, else 5 minutes). Every queued or running
	// record restarts it.
	AnswerTimeout time.Duration
	// Settle is how long a file found by a rescan (not by an inotify event) must
	// stay unchanged before it is taken (default 1s).
	Settle time.Duration
}

// folder is one watched folder and where its files go.
type folder struct {
	dir     string // absolute
	handler string
	base    string // done/, failed/ and .onebox/ live here
}

// Bridge watches folders and runs their files.
type Bridge struct {
	o     Options
	log   *slog.Logger
	inbox string            // absolute, "" for none
	extra map[string]string // absolute Folders entries -> handler

	waiter   *runwait.Waiter
	client   mqtt.Client
	handlers atomic.Pointer[state.Handlers]
	sem      chan struct{}

	mu      sync.Mutex
	folders map[string]*folder // watched folders by dir
	queued  map[string]bool    // paths waiting for a slot
	warned  map[string]bool    // paths already warned about

	moveMu    sync.Mutex    // picking a name in done/failed and moving there
	connected chan struct{} // a value on each (re)connect
	rescanReq chan string

	w      watcher
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
}

// New checks the options; nothing is touched until Start.
func New(o Options) (*Bridge, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxPayload <= 0 {
		o.MaxPayload = DefaultMaxPayload
	}
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.Settle <= 0 {
		o.Settle = DefaultSettle
	}
	if o.ClientID == "" {
		o.ClientID = mqttc.ClientID("onebox-file-")
	}
	if o.BrokerURL == "" {
		return nil, errors.New("file bridge: no broker URL")
	}
	b := &Bridge{
		o:         o,
		log:       o.Logger.With("bridge", "file"),
		extra:     map[string]string{},
		waiter:    runwait.New(),
		sem:       make(chan struct{}, o.Concurrency),
		folders:   map[string]*folder{},
		queued:    map[string]bool{},
		warned:    map[string]bool{},
		connected: make(chan struct{}, 1),
		rescanReq: make(chan string, 1),
	}
	if o.Inbox != "" {
		abs, err := filepath.Abs(o.Inbox)
		if err != nil {
			return nil, fmt.Errorf("file bridge: inbox %q: %w", o.Inbox, err)
		}
		b.inbox = abs
	}
	for dir, h := range o.Folders {
		if !topics.ValidHandler(h) {
			return nil, fmt.Errorf("file bridge: folder %q: %w: %q", dir, topics.ErrBadHandler, h)
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return nil, fmt.Errorf("file bridge: folder %q: %w", dir, err)
		}
		if b.inbox != "" && (abs == b.inbox || strings.HasPrefix(abs, b.inbox+string(filepath.Separator))) {
			return nil, fmt.Errorf("file bridge: folder %q is inside the inbox %q; put it beside it", dir, o.Inbox)
		}
		b.extra[abs] = h
	}
	if b.inbox == "" && len(b.extra) == 0 {
		return nil, errors.New("file bridge: no inbox and no folders to watch")
	}
	return b, nil
}

// Start creates the inbox if needed, watches the folders, connects to the broker
// (retrying in the background while it is away), resumes the files a previous
// run left in processing, and takes the files already present. It returns once
// watching; the bridge works until ctx ends or Close is called.
func (b *Bridge) Start(ctx context.Context) error {
	b.ctx, b.cancel = context.WithCancel(ctx)
	if b.inbox != "" {
		if err := os.MkdirAll(b.inbox, 0o755); err != nil {
			b.cancel()
			return fmt.Errorf("file bridge: create inbox: %w", err)
		}
	}
	for dir := range b.extra {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.cancel()
			return fmt.Errorf("file bridge: create folder: %w", err)
		}
	}
	w, err := newWatcher()
	if err != nil {
		b.cancel()
		return fmt.Errorf("file bridge: %w", err)
	}
	b.w = w
	if b.inbox != "" {
		if err := w.Add(b.inbox); err != nil {
			_ = w.Close()
			b.cancel()
			return fmt.Errorf("file bridge: %w", err)
		}
	}
	for dir, h := range b.extra {
		if err := b.addFolder(dir, h, filepath.Dir(dir)); err != nil {
			_ = w.Close()
			b.cancel()
			return fmt.Errorf("file bridge: %w", err)
		}
	}
	b.scanInbox()

	b.client = mqttc.New(mqttc.Options{
		URL: b.o.BrokerURL, ClientID: b.o.ClientID, Username: b.o.Username, Password: b.o.Password,
		CleanSession: true, Logger: b.o.Logger,
		OnConnect: b.onConnect,
	})
	b.client.Connect() // retries in the background; onConnect rescans

	b.wg.Add(2)
	go b.eventLoop()
	go b.rescanLoop()
	b.recoverProcessing()
	b.requestRescan("start")
	b.log.Info("file bridge watching", "inbox", b.inbox, "extra_folders", len(b.extra), "broker", b.o.BrokerURL)
	return nil
}

// Close stops watching and waits for the bridge's goroutines. Files whose answer
// has not come yet stay in processing and are resumed at the next Start.
func (b *Bridge) Close() error {
	if b.closed.Swap(true) || b.cancel == nil {
		return nil
	}
	b.cancel()
	var err error
	if b.w != nil {
		err = b.w.Close()
	}
	b.wg.Wait()
	if b.client != nil {
		b.client.Disconnect(250)
	}
	return err
}

func (b *Bridge) onConnect(c mqtt.Client) {
	b.waiter.Subscribe(c)
	c.Subscribe(topics.HandlersTopic, 1, func(_ mqtt.Client, m mqtt.Message) {
		var h state.Handlers
		if err := json.Unmarshal(m.Payload(), &h); err == nil {
			b.handlers.Store(&h)
		}
	})
	select {
	case b.connected <- struct{}{}:
	default:
	}
	b.requestRescan("connected")
}

func (b *Bridge) requestRescan(why string) {
	select {
	case b.rescanReq <- why:
	default: // one is pending already
	}
}

func (b *Bridge) rescanLoop() {
	defer b.wg.Done()
	for {
		select {
		case <-b.ctx.Done():
			return
		case why := <-b.rescanReq:
			b.rescan(why)
		}
	}
}

// addFolder watches dir for handler h.
func (b *Bridge) addFolder(dir, h, base string) error {
	if err := b.w.Add(dir); err != nil {
		return err
	}
	b.mu.Lock()
	b.folders[dir] = &folder{dir: dir, handler: h, base: base}
	b.mu.Unlock()
	return nil
}

// scanInbox watches every handler subfolder of the inbox not watched yet.
func (b *Bridge) scanInbox() {
	if b.inbox == "" {
		return
	}
	ents, err := os.ReadDir(b.inbox)
	if err != nil {
		b.log.Error("cannot read the inbox", "inbox", b.inbox, "err", err)
		return
	}
	for _, e := range ents {
		b.inboxEntry(e.Name(), e.IsDir())
	}
}

// inboxEntry handles one entry of the inbox itself: a handler folder is watched,
// anything else is warned about once.
func (b *Bridge) inboxEntry(name string, isDir bool) bool {
	if ignored(name) {
		return false
	}
	dir := filepath.Join(b.inbox, name)
	if !isDir {
		b.warnOnce(dir, "a file directly in the inbox triggers nothing; put it in inbox/<handler>/", "path", dir)
		return false
	}
	if !topics.ValidHandler(name) {
		b.warnOnce(dir, "inbox subfolder is not a handler name; not watched", "path", dir, "rule", "[a-z0-9][a-z0-9_-]{0,62}")
		return false
	}
	if _, isExtra := b.extra[dir]; isExtra {
		return false
	}
	b.mu.Lock()
	_, have := b.folders[dir]
	b.mu.Unlock()
	if have {
		return false
	}
	if err := b.addFolder(dir, name, filepath.Dir(b.inbox)); err != nil {
		b.log.Error("cannot watch handler folder", "path", dir, "err", err)
		return false
	}
	b.log.Debug("watching handler folder", "path", dir, "handler", name)
	return true
}

func (b *Bridge) warnOnce(key, msg string, args ...any) {
	b.mu.Lock()
	seen := b.warned[key]
	b.warned[key] = true
	b.mu.Unlock()
	if !seen {
		b.log.Warn(msg, args...)
	}
}

func (b *Bridge) folderOf(dir string) *folder {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.folders[dir]
}

func (b *Bridge) eventLoop() {
	defer b.wg.Done()
	for ev := range b.w.Events() {
		switch ev.Kind {
		case evOverflow:
			b.log.Warn("inotify queue overflowed; rescanning every folder")
			b.requestRescan("overflow")
		case evError:
			b.log.Error("inotify watcher failed; no new files will be seen", "err", ev.Err)
		case evDirGone:
			b.mu.Lock()
			delete(b.folders, ev.Dir)
			b.mu.Unlock()
			b.log.Warn("watched folder was removed or moved away", "path", ev.Dir)
		case evDirNew:
			if ev.Dir == b.inbox && b.inboxEntry(ev.Name, true) {
				// Files may have landed before the watch was in place.
				b.rescanFolder(b.folderOf(filepath.Join(b.inbox, ev.Name)))
			}
		case evFileDone:
			if ev.Dir == b.inbox {
				b.inboxEntry(ev.Name, false)
				continue
			}
			if f := b.folderOf(ev.Dir); f != nil && !ignored(ev.Name) {
				b.enqueue(f, ev.Name)
			}
		}
	}
}

// rescan looks at every folder: at start, after a (re)connect and after an
// overflow. Files found this way are taken once they are still (see settle).
func (b *Bridge) rescan(why string) {
	b.log.Debug("rescanning folders", "why", why)
	b.scanInbox()
	b.mu.Lock()
	list := make([]*folder, 0, len(b.folders))
	for _, f := range b.folders {
		list = append(list, f)
	}
	b.mu.Unlock()
	for _, f := range list {
		b.rescanFolder(f)
	}
}

func (b *Bridge) rescanFolder(f *folder) {
	if f == nil {
		return
	}
	ents, err := os.ReadDir(f.dir)
	if err != nil {
		b.log.Warn("cannot read folder", "path", f.dir, "err", err)
		return
	}
	for _, e := range ents {
		if ignored(e.Name()) || !e.Type().IsRegular() {
			continue
		}
		b.settle(f, e.Name(), time.Time{}, -1)
	}
}

// settle enqueues a file found by a rescan once its size and mtime have not
// changed for Settle: an inotify event tells that a file is complete, a rescan
// cannot.
func (b *Bridge) settle(f *folder, name string, mtime time.Time, size int64) {
	if b.ctx.Err() != nil {
		return
	}
	fi, err := os.Lstat(filepath.Join(f.dir, name))
	if err != nil || !fi.Mode().IsRegular() {
		return // gone (taken, or deleted): nothing to do
	}
	age := time.Since(fi.ModTime())
	if age >= b.o.Settle && (size < 0 || (fi.ModTime().Equal(mtime) && fi.Size() == size)) {
		b.enqueue(f, name)
		return
	}
	wait := b.o.Settle - age
	if wait < b.o.Settle/4 {
		wait = b.o.Settle / 4
	}
	time.AfterFunc(wait, func() { b.settle(f, name, fi.ModTime(), fi.Size()) })
}

// enqueue schedules f/name unless it is waiting already.
func (b *Bridge) enqueue(f *folder, name string) {
	path := filepath.Join(f.dir, name)
	b.mu.Lock()
	if b.queued[path] || b.ctx.Err() != nil {
		b.mu.Unlock()
		return
	}
	b.queued[path] = true
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		select {
		case b.sem <- struct{}{}:
		case <-b.ctx.Done():
			b.unqueue(path)
			return
		}
		defer func() { <-b.sem }()
		b.unqueue(path) // from here a new file of that name is a new event
		b.take(f, name)
	}()
}

func (b *Bridge) unqueue(path string) {
	b.mu.Lock()
	delete(b.queued, path)
	b.mu.Unlock()
}

// job is one file taken out of its folder.
type job struct {
	handler string
	base    string
	id      string
	dir     string // processing/<handler>/<id>
	name    string // original file name
}

func (j *job) path() string { return filepath.Join(j.dir, j.name) }

// payloadLimit is the largest payload that fits a PUBLISH of MaxPayload bytes
// on trigger/<handler>/<64-char id>.
func (b *Bridge) payloadLimit(handler string) int64 {
	// fixed header (1 + up to 4), topic length (2), topic, packet id (2)
	over := int64(1 + 4 + 2 + len(topics.Trigger(handler, strings.Repeat("x", topics.MaxIDLen))) + 2)
	return b.o.MaxPayload - over
}

// take moves f/name into processing and runs it. It holds a concurrency slot.
func (b *Bridge) take(f *folder, name string) {
	path := filepath.Join(f.dir, name)
	log := b.log.With("handler", f.handler, "file", path)
	fi, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			log.Info("file is gone before it was read (deleted or renamed away); skipped")
		} else {
			log.Warn("cannot stat file; skipped", "err", err)
		}
		return
	}
	if !fi.Mode().IsRegular() {
		log.Debug("not a regular file; skipped")
		return
	}
	limit := b.payloadLimit(f.handler)
	tooLarge := fi.Size() > limit
	if !tooLarge && !b.client.IsConnectionOpen() {
		log.Debug("broker unreachable; the file stays until the bridge reconnects")
		return
	}
	id := IDPrefix + topics.NewID()
	j := &job{handler: f.handler, base: f.base, id: id, dir: filepath.Join(f.base, ".onebox", "processing", f.handler, id), name: name}
	if err := os.MkdirAll(j.dir, 0o755); err != nil {
		log.Error("cannot create processing folder; file left in place", "path", j.dir, "err", err)
		return
	}
	if err := moveFile(path, j.path()); err != nil {
		_ = os.RemoveAll(j.dir)
		if errors.Is(err, fs.ErrNotExist) {
			log.Info("file is gone before it was read (deleted or renamed away); skipped")
		} else {
			log.Error("cannot move file to processing; left in place", "err", err)
		}
		return
	}
	b.run(j, false)
}

// run publishes j (unless published) and files it under done/ or failed/.
func (b *Bridge) run(j *job, published bool) {
	log := b.log.With("handler", j.handler, "id", j.id, "file", j.name)
	limit := b.payloadLimit(j.handler)
	content, err := readLimited(j.path(), limit)
	if err != nil {
		log.Error("cannot read file; moving it to failed", "err", err)
		b.finish(j, synth(j, record.Failed, record.ReasonRuntime, "cannot read the file: "+err.Error()), nil, false)
		return
	}
	if int64(len(content)) > limit {
		log.Warn("file too large; not published", "limit", limit)
		b.finish(j, synth(j, record.Rejected, record.ReasonTooLarge,
			fmt.Sprintf("the file is larger than the payload limit of %d bytes (broker packet limit %d bytes minus the MQTT header); nothing was published", limit, b.o.MaxPayload)), nil, false)
		return
	}
	wait := b.waiter.Register(j.id)
	defer wait.Cancel()
	if !published {
		if !b.publish(j, content, log) {
			return // closing: stays in processing, republished with the same id next time
		}
		if err := os.WriteFile(filepath.Join(j.dir, publishedMarker), nil, 0o644); err != nil {
			log.Warn("cannot mark the file published (a restart would publish it again with the same id)", "err", err)
		}
		log.Debug("published", "bytes", len(content))
	}
	ans, ok := b.await(j, wait)
	if b.ctx.Err() != nil {
		return // stays in processing; waited for again at the next start
	}
	if !ok {
		log.Warn("no answer from the invoker in time; moving the file to failed")
		b.finish(j, synth(j, record.Failed, ReasonNoAnswer, "no final status/"+j.id+" arrived in time (invoker down, or the answer came while the bridge was away)"), nil, false)
		return
	}
	b.finish(j, ans.Record, ans.Result, ans.HasResult)
}

// publish sends the trigger, retrying across broker outages until it is
// acknowledged or the bridge closes.
func (b *Bridge) publish(j *job, content []byte, log *slog.Logger) bool {
	topic := topics.Trigger(j.handler, j.id)
	for attempt := 0; ; attempt++ {
		if b.client.IsConnectionOpen() {
			err := mqttc.Wait(b.client.Publish(topic, 1, false, content), 15*time.Second)
			if err == nil {
				return true
			}
			log.Warn("publish failed; retrying with the same id", "err", err, "attempt", attempt+1)
		}
		select {
		case <-b.ctx.Done():
			return false
		case <-b.connected:
		case <-time.After(time.Second):
		}
	}
}

// answerTimeout is the bound on waiting for j's answer.
func (b *Bridge) answerTimeout(handler string) time.Duration {
	if b.o.AnswerTimeout > 0 {
		return b.o.AnswerTimeout
	}
	if h := b.handlers.Load(); h != nil {
		if t := h.Timeout(handler); t > 0 {
			return t + answerMargin
		}
	}
	return DefaultAnswerTimeout
}

func (b *Bridge) await(j *job, wait *runwait.Wait) (runwait.Answer, bool) {
	bound := b.answerTimeout(j.handler)
	t := time.NewTimer(bound)
	defer t.Stop()
	for {
		select {
		case <-wait.Done():
			return wait.Answer(), true
		case r := <-wait.Updates():
			if !record.Final(r.State) {
				t.Reset(b.answerTimeout(j.handler))
			}
		case <-t.C:
			return runwait.Answer{}, false
		case <-b.ctx.Done():
			return runwait.Answer{}, false
		}
	}
}

// synth is a record the bridge writes itself (the invoker never saw the run).
func synth(j *job, st, reason, msg string) record.Record {
	now := time.Now()
	return record.Record{ID: j.id, Handler: j.handler, Source: record.SourceFile, State: st, Reason: reason, Error: msg, FinishedAt: record.TimePtr(now)}
}

// finish stores the file, its stdout and its final record under done/ or
// failed/, never overwriting, then forgets the processing entry.
func (b *Bridge) finish(j *job, rec record.Record, out []byte, hasOut bool) {
	where := "failed"
	if rec.State == record.Succeeded {
		where = "done"
	}
	log := b.log.With("handler", j.handler, "id", j.id, "file", j.name)
	dir := filepath.Join(j.base, where, j.handler)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Error("cannot create folder; the file stays in processing", "path", dir, "err", err)
		return
	}
	js, _ := json.MarshalIndent(rec, "", "  ")
	js = append(js, '\n')

	b.moveMu.Lock()
	name := j.name
	if taken(dir, name) {
		ext := filepath.Ext(name)
		if ext == name { // ".x" cannot happen (dotfiles are ignored), but be safe
			ext = ""
		}
		name = strings.TrimSuffix(name, ext) + "." + j.id + ext
	}
	dst := filepath.Join(dir, name)
	var err error
	if hasOut {
		err = writeAtomic(dst+".out", out)
	}
	if err == nil {
		err = writeAtomic(dst+".status.json", js)
	}
	if err == nil {
		err = moveFile(j.path(), dst)
	}
	b.moveMu.Unlock()
	if err != nil {
		log.Error("cannot file the run; it stays in processing", "path", dst, "err", err)
		return
	}
	if err := os.RemoveAll(j.dir); err != nil {
		log.Warn("cannot remove processing entry", "path", j.dir, "err", err)
	}
	level := slog.LevelDebug
	if where == "failed" {
		level = slog.LevelWarn
	}
	log.Log(context.Background(), level, "file "+where, "state", rec.State, "reason", rec.Reason, "path", dst)
}

func taken(dir, name string) bool {
	for _, n := range []string{name, name + ".out", name + ".status.json"} {
		if _, err := os.Lstat(filepath.Join(dir, n)); err == nil || !errors.Is(err, fs.ErrNotExist) {
			return true
		}
	}
	return false
}

// recoverProcessing resumes what a previous run of the bridge left in
// processing: unpublished entries are published again with the same id,
// published ones are waited for again.
func (b *Bridge) recoverProcessing() {
	bases := map[string]bool{}
	b.mu.Lock()
	for _, f := range b.folders {
		bases[f.base] = true
	}
	b.mu.Unlock()
	if b.inbox != "" {
		bases[filepath.Dir(b.inbox)] = true
	}
	for base := range bases {
		root := filepath.Join(base, ".onebox", "processing")
		hs, err := os.ReadDir(root)
		if err != nil {
			continue
		}
		for _, h := range hs {
			if !h.IsDir() || !topics.ValidHandler(h.Name()) {
				continue
			}
			ids, _ := os.ReadDir(filepath.Join(root, h.Name()))
			for _, idd := range ids {
				if !idd.IsDir() || !topics.ValidID(idd.Name()) {
					continue
				}
				j := &job{handler: h.Name(), base: base, id: idd.Name(), dir: filepath.Join(root, h.Name(), idd.Name())}
				ents, _ := os.ReadDir(j.dir)
				var names []string
				published := false
				for _, e := range ents {
					switch {
					case e.Name() == publishedMarker:
						published = true
					case e.Type().IsRegular() && !strings.HasPrefix(e.Name(), "."):
						names = append(names, e.Name())
					}
				}
				if len(names) == 0 { // filed already; the crash came before the clean-up
					_ = os.RemoveAll(j.dir)
					continue
				}
				sort.Strings(names)
				j.name = names[0]
				b.log.Info("resuming a file left in processing", "handler", j.handler, "id", j.id, "file", j.name, "published", published)
				b.wg.Add(1)
				go func() {
					defer b.wg.Done()
					select {
					case b.sem <- struct{}{}:
					case <-b.ctx.Done():
						return
					}
					defer func() { <-b.sem }()
					b.run(j, published)
				}()
			}
		}
	}
}

// ignored reports whether name is hidden or an editor's / downloader's temporary.
func ignored(name string) bool {
	if name == "" || name[0] == '.' || name[0] == '#' || name == "4913" {
		return true
	}
	l := strings.ToLower(name)
	for _, suf := range []string{".swp", ".swx", "~", ".part", ".tmp", ".crdownload"} {
		if strings.HasSuffix(l, suf) {
			return true
		}
	}
	return false
}

// readLimited reads at most limit+1 bytes of path.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit+1))
}

// moveFile renames src to dst, copying across file systems.
func moveFile(src, dst string) error {
	err := os.Rename(src, dst)
	if err == nil || !errors.Is(err, syscall.EXDEV) {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(dst)
		return err
	}
	return os.Remove(src)
}

// writeAtomic writes path through a hidden temporary file renamed into place, so a
// reader never sees a half-written result or record.
func writeAtomic(path string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
