//go:build linux

package filebridge

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/onebox-dev/onebox/internal/mqtttest"
	"github.com/onebox-dev/onebox/internal/record"
	"github.com/onebox-dev/onebox/internal/topics"
)

type env struct {
	t     *testing.T
	root  string // done/ and failed/ live here
	inbox string
	url   string
	inv   *mqtttest.Invoker
	logs  *mqtttest.LogBuf
}

// handlers of the fake invoker: echo (upper-cases), bad (exit 3), nope
// (unknown), slow (2s).
func behave(h string) mqtttest.Behavior {
	switch h {
	case "bad":
		return mqtttest.Behavior{Exit: 3}
	case "nope":
		return mqtttest.Behavior{Reject: record.ReasonUnknownHandler}
	case "slow":
		return mqtttest.Behavior{Delay: 2 * time.Second}
	}
	return mqtttest.Behavior{}
}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := t.TempDir()
	e := &env{t: t, root: root, inbox: filepath.Join(root, "inbox"), logs: &mqtttest.LogBuf{}}
	for _, h := range []string{"echo", "bad", "nope", "slow"} {
		if err := os.MkdirAll(filepath.Join(e.inbox, h), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.url, _ = mqtttest.StartBroker(t, "127.0.0.1:0")
	e.inv = mqtttest.StartInvoker(t, e.url, behave)
	return e
}

func (e *env) options() Options {
	return Options{Inbox: e.inbox, BrokerURL: e.url, Logger: e.logs.Logger(), Settle: 150 * time.Millisecond, AnswerTimeout: 20 * time.Second}
}

// start runs a bridge and waits until it is connected.
func (e *env) start(o Options) *Bridge {
	e.t.Helper()
	b, err := New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = b.Close() })
	mqtttest.WaitFor(e.t, 5*time.Second, "bridge connected", func() bool { return b.client.IsConnectionOpen() })
	return b
}

func (e *env) write(rel string, content []byte) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.inbox, rel), content, 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

func readRecord(t *testing.T, p string) record.Record {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	r, err := record.Parse(b)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return r
}

// assertDone checks done/<h>/<name>, its .out (upper-cased content) and record.
func (e *env) assertDone(h, name string, content []byte) {
	e.t.Helper()
	p := filepath.Join(e.root, "done", h, name)
	mqtttest.WaitFor(e.t, 10*time.Second, "done/"+h+"/"+name, func() bool { return exists(p+".status.json") && exists(p) })
	got, _ := os.ReadFile(p)
	if !bytes.Equal(got, content) {
		e.t.Fatalf("%s: content changed (%d bytes, want %d)", p, len(got), len(content))
	}
	out, _ := os.ReadFile(p + ".out")
	if !bytes.Equal(out, bytes.ToUpper(content)) {
		e.t.Fatalf("%s.out = %.40q, want the upper-cased content", p, out)
	}
	r := readRecord(e.t, p+".status.json")
	if r.State != record.Succeeded || r.Handler != h || !strings.HasPrefix(r.ID, IDPrefix) || r.Source != record.SourceFile {
		e.t.Fatalf("%s.status.json = %+v", p, r)
	}
}

func TestLargeFileWrittenSlowlyTriggersOnce(t *testing.T) {
	e := newEnv(t)
	e.start(e.options())
	piece := bytes.Repeat([]byte("abcdefghij"), 200*1024/10+1)[:200*1024]
	f, err := os.Create(filepath.Join(e.inbox, "echo", "big.bin"))
	if err != nil {
		t.Fatal(err)
	}
	var all []byte
	for i := 0; i < 3; i++ {
		p := append([]byte{byte('0' + i)}, piece[1:]...)
		if _, err := f.Write(p); err != nil {
			t.Fatal(err)
		}
		all = append(all, p...)
		time.Sleep(300 * time.Millisecond)
		if n := len(e.inv.Runs()); n != 0 {
			t.Fatalf("triggered %d times while the file was still open", n)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	e.assertDone("echo", "big.bin", all)
	time.Sleep(300 * time.Millisecond)
	runs := e.inv.Runs()
	if len(runs) != 1 || !bytes.Equal(runs[0].Payload, all) {
		t.Fatalf("want exactly one trigger with the full %d bytes, got %d runs", len(all), len(runs))
	}
}

func TestRenameIntoPlaceAndEditorSave(t *testing.T) {
	e := newEnv(t)
	e.start(e.options())
	dir := filepath.Join(e.inbox, "echo")

	// A download finished by a rename.
	e.write("echo/data.json.part", []byte(`{"partial":`))
	if err := os.WriteFile(filepath.Join(dir, "data.json.part"), []byte(`{"a":1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "data.json.part"), filepath.Join(dir, "data.json")); err != nil {
		t.Fatal(err)
	}
	e.assertDone("echo", "data.json", []byte(`{"a":1}`))

	// A vim-like save of notes.txt: swap file, probe, backup, temporary, rename.
	e.write("echo/.notes.txt.swp", []byte("swap"))
	e.write("echo/4913", nil)
	os.Remove(filepath.Join(dir, "4913"))
	e.write("echo/notes.txt~", []byte("old"))
	e.write("echo/#notes.txt#", []byte("emacs"))
	e.write("echo/notes.txt.tmp", []byte("new notes"))
	if err := os.Rename(filepath.Join(dir, "notes.txt.tmp"), filepath.Join(dir, "notes.txt")); err != nil {
		t.Fatal(err)
	}
	e.assertDone("echo", "notes.txt", []byte("new notes"))
	time.Sleep(400 * time.Millisecond)
	runs := e.inv.Runs()
	if len(runs) != 2 {
		t.Fatalf("want 2 triggers (data.json, notes.txt), got %d: %v", len(runs), runs)
	}
	for _, n := range []string{".notes.txt.swp", "notes.txt~", "#notes.txt#"} {
		if !exists(filepath.Join(dir, n)) {
			t.Fatalf("temporary %s was touched", n)
		}
	}
}

func TestTwoHundredFiles(t *testing.T) {
	e := newEnv(t)
	e.start(e.options())
	const n = 200
	for i := 0; i < n; i++ {
		e.write(fmt.Sprintf("echo/f%03d.txt", i), []byte(fmt.Sprintf("file %d", i)))
	}
	mqtttest.WaitFor(t, 30*time.Second, "200 files in done/", func() bool {
		ents, _ := os.ReadDir(filepath.Join(e.root, "done", "echo"))
		return len(ents) == 3*n
	})
	for i := 0; i < n; i++ {
		e.assertDone("echo", fmt.Sprintf("f%03d.txt", i), []byte(fmt.Sprintf("file %d", i)))
	}
	if got := len(e.inv.Runs()); got != n {
		t.Fatalf("%d triggers, want %d", got, n)
	}
	ents, _ := os.ReadDir(filepath.Join(e.inbox, "echo"))
	proc, _ := os.ReadDir(filepath.Join(e.root, ".onebox", "processing", "echo"))
	if len(ents) != 0 || len(proc) != 0 {
		t.Fatalf("left behind: %d in the inbox, %d in processing", len(ents), len(proc))
	}
}

func TestUnicodeNameSameNameTwiceAndFolders(t *testing.T) {
	e := newEnv(t)
	photos := filepath.Join(e.root, "elsewhere", "photos")
	o := e.options()
	o.Folders = map[string]string{photos: "echo"}
	e.start(o)
	name := "é ü 空 .txt"
	e.write("echo/"+name, []byte("first"))
	e.assertDone("echo", name, []byte("first"))
	e.write("echo/"+name, []byte("second"))
	mqtttest.WaitFor(t, 10*time.Second, "second run filed", func() bool {
		m, _ := filepath.Glob(filepath.Join(e.root, "done", "echo", "é ü 空 .file-*.txt.status.json"))
		return len(m) == 1
	})
	m, _ := filepath.Glob(filepath.Join(e.root, "done", "echo", "é ü 空 .file-*.txt"))
	if len(m) != 1 {
		t.Fatalf("second file not kept beside the first: %v", m)
	}
	if b, _ := os.ReadFile(m[0]); string(b) != "second" {
		t.Fatalf("second file = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(e.root, "done", "echo", name)); string(b) != "first" {
		t.Fatalf("first file overwritten: %q", b)
	}

	// A Folders entry: done/ beside that folder.
	if err := os.WriteFile(filepath.Join(photos, "cat.jpg"), []byte("meow"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(e.root, "elsewhere", "done", "echo", "cat.jpg")
	mqtttest.WaitFor(t, 10*time.Second, p, func() bool { return exists(p + ".status.json") })
	if out, _ := os.ReadFile(p + ".out"); string(out) != "MEOW" {
		t.Fatalf("cat.jpg.out = %q", out)
	}
}

func TestFilesPresentAtStartAndNewHandlerFolder(t *testing.T) {
	e := newEnv(t)
	for i := 0; i < 5; i++ {
		e.write(fmt.Sprintf("echo/old%d", i), []byte(fmt.Sprintf("old %d", i)))
	}
	e.write("loose.txt", []byte("no handler"))
	e.start(e.options())
	for i := 0; i < 5; i++ {
		e.assertDone("echo", fmt.Sprintf("old%d", i), []byte(fmt.Sprintf("old %d", i)))
	}
	// A handler folder created later is watched.
	if err := os.Mkdir(filepath.Join(e.inbox, "later"), 0o755); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	e.write("later/x", []byte("late"))
	e.assertDone("later", "x", []byte("late"))
	if len(e.inv.Runs()) != 6 {
		t.Fatalf("%d triggers, want 6", len(e.inv.Runs()))
	}
	if !exists(filepath.Join(e.inbox, "loose.txt")) || e.logs.Count("directly in the inbox") != 1 {
		t.Fatalf("a loose file in the inbox should stay and be warned about once:\n%s", e.logs)
	}
}

func TestRestartRunsNothingTwice(t *testing.T) {
	e := newEnv(t)
	b := e.start(e.options())
	var contents [][]byte
	for i := 0; i < 5; i++ {
		c := []byte(fmt.Sprintf("slow %d", i))
		contents = append(contents, c)
		e.write(fmt.Sprintf("slow/s%d", i), c)
	}
	mqtttest.WaitFor(t, 10*time.Second, "5 slow runs started", func() bool { return len(e.inv.Runs()) == 5 })
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// Dropped while no bridge runs.
	for i := 5; i < 8; i++ {
		c := []byte(fmt.Sprintf("slow %d", i))
		contents = append(contents, c)
		e.write(fmt.Sprintf("slow/s%d", i), c)
	}
	// A crash between taking a file and publishing it: in processing, unpublished.
	id := IDPrefix + topics.NewID()
	pdir := filepath.Join(e.root, ".onebox", "processing", "echo", id)
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pdir, "crashed.txt"), []byte("crashed"), 0o644); err != nil {
		t.Fatal(err)
	}

	e.start(e.options())
	for i, c := range contents {
		e.assertDone("slow", fmt.Sprintf("s%d", i), c)
	}
	e.assertDone("echo", "crashed.txt", []byte("crashed"))
	if r := readRecord(t, filepath.Join(e.root, "done", "echo", "crashed.txt.status.json")); r.ID != id {
		t.Fatalf("republished with id %s, want the id kept in processing %s", r.ID, id)
	}
	for _, c := range contents {
		if n := e.inv.RunsOf(c); n != 1 {
			t.Fatalf("%q ran %d times", c, n)
		}
	}
	if n := len(e.inv.Runs()); n != 9 {
		t.Fatalf("%d runs, want 9", n)
	}
}

func TestDeletedRightAway(t *testing.T) {
	e := newEnv(t)
	e.start(e.options())
	const n = 20
	for i := 0; i < n; i++ {
		p := filepath.Join(e.inbox, "echo", fmt.Sprintf("gone%d", i))
		if err := os.WriteFile(p, []byte(fmt.Sprintf("gone %d", i)), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Remove(p)
	}
	e.write("echo/after", []byte("after"))
	e.assertDone("echo", "after", []byte("after"))
	time.Sleep(200 * time.Millisecond)
	runs := len(e.inv.Runs()) - 1
	skips := e.logs.Count("file is gone before it was read")
	if runs+skips < n {
		t.Fatalf("%d files: %d ran and %d skips logged", n, runs, skips)
	}
	for _, r := range e.inv.Runs() {
		if !strings.HasPrefix(string(r.Payload), "gone ") && string(r.Payload) != "after" {
			t.Fatalf("unexpected payload %q", r.Payload)
		}
	}
}

func TestTooLargeAndFailedRuns(t *testing.T) {
	e := newEnv(t)
	o := e.options()
	o.MaxPayload = 2000
	e.start(o)
	e.write("echo/huge.bin", bytes.Repeat([]byte("x"), 5000))
	e.write("bad/boom", []byte("boom"))
	e.write("nope/who", []byte("who"))

	p := filepath.Join(e.root, "failed", "echo", "huge.bin")
	mqtttest.WaitFor(t, 10*time.Second, p, func() bool { return exists(p + ".status.json") })
	r := readRecord(t, p+".status.json")
	limit := fmt.Sprint(b2limit(o, "echo"))
	if r.Reason != record.ReasonTooLarge || !strings.Contains(r.Error, limit) || exists(p+".out") || !exists(p) {
		t.Fatalf("too large: %+v (limit %s)", r, limit)
	}

	p = filepath.Join(e.root, "failed", "bad", "boom")
	mqtttest.WaitFor(t, 10*time.Second, p, func() bool { return exists(p + ".status.json") })
	r = readRecord(t, p+".status.json")
	if r.State != record.Failed || r.ExitCode == nil || *r.ExitCode != 3 {
		t.Fatalf("failed run: %+v", r)
	}
	if out, _ := os.ReadFile(p + ".out"); string(out) != "BOOM" {
		t.Fatalf("failed run .out = %q", out)
	}

	p = filepath.Join(e.root, "failed", "nope", "who")
	mqtttest.WaitFor(t, 10*time.Second, p, func() bool { return exists(p + ".status.json") })
	if r = readRecord(t, p+".status.json"); r.State != record.Rejected || r.Reason != record.ReasonUnknownHandler {
		t.Fatalf("unknown handler: %+v", r)
	}
	for _, run := range e.inv.Runs() {
		if run.Handler == "echo" {
			t.Fatal("a too-large file was published")
		}
	}
}

func b2limit(o Options, h string) int64 {
	b, _ := New(o)
	return b.payloadLimit(h)
}

func TestBrokerDownThenUpAndNoAnswer(t *testing.T) {
	root := t.TempDir()
	inbox := filepath.Join(root, "inbox")
	os.MkdirAll(filepath.Join(inbox, "echo"), 0o755)
	os.MkdirAll(filepath.Join(inbox, "mute"), 0o755)
	addr := mqtttest.FreeAddr(t)
	logs := &mqtttest.LogBuf{}
	b, err := New(Options{Inbox: inbox, BrokerURL: "tcp://" + addr, Logger: logs.Logger(), Settle: 100 * time.Millisecond, AnswerTimeout: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := os.WriteFile(filepath.Join(inbox, "echo", "wait.txt"), []byte("waited"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	if !exists(filepath.Join(inbox, "echo", "wait.txt")) {
		t.Fatal("the file left the inbox while the broker was down")
	}
	url, _ := mqtttest.StartBroker(t, addr)
	// An invoker that never answers "mute".
	mqtttest.StartInvoker(t, url, func(h string) mqtttest.Behavior { return mqtttest.Behavior{Silent: h == "mute"} })
	p := filepath.Join(root, "done", "echo", "wait.txt")
	mqtttest.WaitFor(t, 15*time.Second, p, func() bool { return exists(p + ".status.json") })
	if out, _ := os.ReadFile(p + ".out"); string(out) != "WAITED" {
		t.Fatalf(".out = %q", out)
	}

	if err := os.WriteFile(filepath.Join(inbox, "mute", "q.txt"), []byte("anyone?"), 0o644); err != nil {
		t.Fatal(err)
	}
	p = filepath.Join(root, "failed", "mute", "q.txt")
	mqtttest.WaitFor(t, 10*time.Second, p, func() bool { return exists(p + ".status.json") })
	if r := readRecord(t, p+".status.json"); r.State != record.Failed || r.Reason != ReasonNoAnswer {
		t.Fatalf("no answer: %+v", r)
	}
}
