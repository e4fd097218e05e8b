package config

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/onebox-dev/onebox/internal/mqtttest"
)

func TestEmptyFileIsTheDefault(t *testing.T) {
	o, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.Broker.Listen != ":1883" || o.Broker.MaxPacket != 1<<20 || o.BrokerURL != "tcp://127.0.0.1:1883" || o.HTTP.Listen != ":8080" {
		t.Fatalf("defaults: %+v", o)
	}
	d := Default()
	for _, n := range []string{"hello", "goodbye", "echo", "inbox-ls", "shell"} {
		h := d.Handlers[n]
		if h == nil || h.Timeout.D() != 30*time.Second || h.Memory != 128<<20 || h.Network != "none" {
			t.Fatalf("demo handler %s: %+v", n, h)
		}
	}
}

func TestParseHandler(t *testing.T) {
	o, err := Parse([]byte(`
handlers:
  hello:
    image: onebox/goodbye:latest
    timeout: 1m30s
    memory: 64m
    env: {GREETING: hi}
    mounts: ["/srv/inbox:/inbox", "/tmp/out:/out:rw"]
    concurrency: 4
    queue: 0
`))
	if err != nil {
		t.Fatal(err)
	}
	h := o.Handlers["hello"]
	if h.Image != "onebox/goodbye:latest" || h.Timeout.D() != 90*time.Second || h.Memory != 64<<20 || h.Env["GREETING"] != "hi" || h.Concurrency != 4 || h.Queue != 20 {
		t.Fatalf("%+v", h)
	}
	m, _ := ParseMount(h.Mounts[0])
	m2, _ := ParseMount(h.Mounts[1])
	if !m.ReadOnly || m2.ReadOnly || m.Target != "/inbox" {
		t.Fatalf("mounts %+v %+v: read-only unless :rw", m, m2)
	}
}

func TestStrictErrorsNameTheLine(t *testing.T) {
	cases := []struct{ yaml, want string }{
		{"handlers:\n  hello:\n    image: x\n    imagee: y\n", "line 4"},
		{"brokr:\n  listen: :1\n", "line 1"},
		{"handlers:\n  hello:\n    image: x\n    timeout: 30 seconds\n", "line 4: bad duration"},
		{"handlers:\n  hello:\n    image: x\n    memory: lots\n", "line 4: bad size"},
		{"handlers:\n  Hello:\n    image: x\n", `handler "Hello"`},
		{"handlers:\n  hello:\n    timeout: 1s\n", "image is missing"},
		{"handlers:\n  hello:\n    image: x\n    mounts: [\"nocolon\"]\n", "host-path:/container-path"},
		{"cron:\n  - schedule: '@every 1s'\n    handler: Bad\n", "cron entry 1"},
		{"handlers:\n 00000000:", "is empty"}, // found by FuzzParse: a handler with no body
		{"handlers:\n  hello:\n", "is empty"},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.yaml))
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrConfig) {
			t.Errorf("Parse(%q) err = %v, want it to mention %q", c.yaml, err, c.want)
		}
	}
}

func TestSizes(t *testing.T) {
	for in, want := range map[string]int64{"1048576": 1 << 20, "1MiB": 1 << 20, "128m": 128 << 20, "512k": 512 << 10, "1g": 1 << 30, "10 MB": 10 << 20} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d %v, want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "1.5m", "m", "99999999999g"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

func TestURLFor(t *testing.T) {
	for in, want := range map[string]string{":1883": "tcp://127.0.0.1:1883", "0.0.0.0:1884": "tcp://127.0.0.1:1884", "127.0.0.1:5": "tcp://127.0.0.1:5", "[::1]:7": "tcp://[::1]:7"} {
		if got := URLFor(in); got != want {
			t.Errorf("URLFor(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRelativePathsFollowTheFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "onebox.yaml")
	os.WriteFile(p, []byte("handlers:\n  ls:\n    image: x\n    mounts: [\"./inbox:/inbox\"]\n"), 0o644)
	o, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := o.Handlers["ls"].Mounts[0]; got != filepath.Join(dir, "inbox")+":/inbox" {
		t.Fatalf("mount = %q", got)
	}
	if o.File.Inbox != filepath.Join(dir, "inbox") {
		t.Fatalf("inbox = %q", o.File.Inbox)
	}
}

func TestWatchReloadsAndKeepsGoodConfigOnError(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "onebox.yaml")
	os.WriteFile(p, []byte("handlers:\n  hello:\n    image: onebox/hello:latest\n"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 4)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := Watch(ctx, p, log, func(o *Options) error { got <- o.Handlers["hello"].Image; return nil }); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, []byte("handlers:\n  hello:\n    imag: broken\n"), 0o644)
	select {
	case img := <-got:
		t.Fatalf("a broken file was applied: %s", img)
	case <-time.After(600 * time.Millisecond):
	}
	// An editor-style save: write a new file and rename it into place.
	tmp := filepath.Join(dir, ".onebox.yaml.tmp")
	os.WriteFile(tmp, []byte("handlers:\n  hello:\n    image: onebox/goodbye:latest\n"), 0o644)
	os.Rename(tmp, p)
	select {
	case img := <-got:
		if img != "onebox/goodbye:latest" {
			t.Fatalf("reloaded image %q", img)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no reload after the file changed")
	}
}

// A file that parses but that the caller refuses (a cron typo, say) is logged as
// not reloaded, never as reloaded.
func TestWatchApplyRefusedIsNotReloaded(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "onebox.yaml")
	os.WriteFile(p, []byte("handlers:\n  hello:\n    image: onebox/hello:latest\n"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs mqtttest.LogBuf
	log := slog.New(slog.NewTextHandler(&logs, nil))
	called := make(chan struct{}, 4)
	refuse := func(o *Options) error { called <- struct{}{}; return errors.New("cron entry 0: bad schedule") }
	if err := Watch(ctx, p, log, refuse); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, []byte("handlers:\n  hello:\n    image: onebox/goodbye:latest\n"), 0o644)
	select {
	case <-called:
	case <-time.After(3 * time.Second):
		t.Fatal("apply was not called after the file changed")
	}
	time.Sleep(50 * time.Millisecond)
	l := logs.String()
	if !strings.Contains(l, "config not reloaded") || !strings.Contains(l, "bad schedule") {
		t.Fatalf("log does not say the config was refused: %s", l)
	}
	if strings.Contains(l, `msg="config reloaded"`) {
		t.Fatalf("log says reloaded for a refused config: %s", l)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("handlers:\n  hello:\n    image: x\n"))
	f.Add([]byte("cron:\n  - schedule: '@every 1s'\n    handler: a\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := Parse(b)
		if err != nil {
			return
		}
		if err := o.Validate(); err != nil {
			t.Fatalf("Parse accepted what Validate refuses: %v", err)
		}
	})
}

// Every onebox.yaml the README asks a reader to paste parses.
func TestReadmeConfigsParse(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(b), "<<'YAML'\n")[1:]
	if len(blocks) == 0 {
		t.Fatal("the README has no onebox.yaml heredoc")
	}
	for i, blk := range blocks {
		y, _, ok := strings.Cut(blk, "\nYAML\n")
		if !ok {
			t.Fatalf("README yaml block %d has no closing YAML line", i)
		}
		if _, err := Parse([]byte(y)); err != nil {
			t.Errorf("README yaml block %d: %v\n%s", i, err, y)
		}
	}
}

func TestExampleConfigParses(t *testing.T) {
	o, err := Load("../../deploy/onebox.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Handlers) != 5 || len(o.Cron) != 1 || o.Handlers["echo"].Memory != 32<<20 {
		t.Fatalf("example config read as %+v", o)
	}
}

func TestUnsafeSettingsNeedUnsafe(t *testing.T) {
	for _, h := range []string{
		"mounts: [\"/var/run/docker.sock:/var/run/docker.sock\"]",
		"mounts: [\"/run/podman/podman.sock:/s\"]",
		"mounts: [\"/:/host:ro\"]",
		"mounts: [\"/var/run/:/r\"]",
		"mounts: [\"/etc:/e:ro\"]",
		"privileged: true",
		"network: host",
	} {
		y := "handlers:\n  h:\n    image: x\n    " + h + "\n"
		_, err := Parse([]byte(y))
		if err == nil || !strings.Contains(err.Error(), "unsafe: true") || !strings.Contains(err.Error(), `handler "h"`) {
			t.Errorf("%s: err = %v", h, err)
		}
		if _, err := Parse([]byte(y + "    unsafe: true\n")); err != nil {
			t.Errorf("%s with unsafe: true: %v", h, err)
		}
	}
	if _, err := Parse([]byte("handlers:\n  h:\n    image: x\n    mounts: [\"/srv/inbox:/inbox\"]\n")); err != nil {
		t.Errorf("an ordinary mount was refused: %v", err)
	}
}
