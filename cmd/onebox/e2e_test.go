package main

// End-to-end tests: the real onebox binary, the real Docker engine, real
// mosquitto_pub / mosquitto_sub and curl. Every server binds 127.0.0.1 on a free
// port; every instance has its own name, so parallel runs on one engine never
// touch each other's containers.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/onebox-dev/onebox/internal/mqttc"
	"github.com/onebox-dev/onebox/internal/record"
)

var (
	bin     string // the onebox binary under test
	binErr  error
	setupMu sync.Once
)

// setup builds the binary and the demo images once.
func setup(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: needs Docker; skipped with -short")
	}
	setupMu.Do(func() {
		if err := exec.Command("docker", "info").Run(); err != nil {
			binErr = fmt.Errorf("docker info: %v", err)
			return
		}
		dir, err := os.MkdirTemp("", "onebox-e2e-bin-")
		if err != nil {
			binErr = err
			return
		}
		bin = filepath.Join(dir, "onebox")
		if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		if out, err := exec.Command(bin, "handlers", "build").CombinedOutput(); err != nil {
			binErr = fmt.Errorf("onebox handlers build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
}

func rnd(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// box is one running `onebox up`.
type box struct {
	t      *testing.T
	dir    string
	cfg    string
	name   string
	mqtt   string // host:port
	port   string
	http   string // host:port
	cmd    *exec.Cmd
	logMu  sync.Mutex
	log    bytes.Buffer
	exited chan struct{}
}

// startBox writes onebox.yaml (handlers YAML indented under handlers:, plus
// extra top-level YAML) and starts `onebox up` with it.
func startBox(t *testing.T, handlersYAML, extra string) *box {
	t.Helper()
	setup(t)
	b := &box{t: t, dir: t.TempDir(), name: "e2e-" + rnd(4)}
	mq, _ := freePort()
	hp, _ := freePort()
	b.mqtt, b.http = mq, hp
	b.port = mq[strings.LastIndex(mq, ":")+1:]
	b.cfg = filepath.Join(b.dir, "onebox.yaml")
	b.writeConfig(handlersYAML, extra)
	b.start()
	t.Cleanup(func() {
		b.stop()
		if n := labelled(t, b.name); n != 0 {
			t.Errorf("%d containers of instance %s left behind", n, b.name)
		}
	})
	return b
}

func (b *box) writeConfig(handlersYAML, extra string) {
	y := fmt.Sprintf("broker:\n  listen: %q\n  data_dir: ./data\nhttp:\n  listen: %q\nfile:\n  inbox: ./inbox\ninvoker:\n  name: %s\n  grace: 1s\n%s\nhandlers:\n%s", b.mqtt, b.http, b.name, extra, handlersYAML)
	tmp := b.cfg + ".tmp"
	if err := os.WriteFile(tmp, []byte(y), 0o644); err != nil {
		b.t.Fatal(err)
	}
	if err := os.Rename(tmp, b.cfg); err != nil {
		b.t.Fatal(err)
	}
}

func (b *box) start() {
	b.t.Helper()
	b.cmd = exec.Command(bin, "up", "--config", b.cfg, "--no-build")
	b.cmd.Dir = b.dir
	stderr, _ := b.cmd.StderrPipe()
	b.cmd.Stdout = io.Discard
	if err := b.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	b.exited = make(chan struct{})
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			b.logMu.Lock()
			b.log.WriteString(sc.Text() + "\n")
			b.logMu.Unlock()
			if strings.Contains(sc.Text(), "onebox is up") {
				once.Do(func() { close(up) })
			}
		}
	}()
	go func() { b.cmd.Wait(); close(b.exited) }()
	select {
	case <-up:
	case <-b.exited:
		b.t.Fatalf("onebox up exited:\n%s", b.logs())
	case <-time.After(60 * time.Second):
		b.t.Fatalf("onebox up did not come up:\n%s", b.logs())
	}
}

func (b *box) logs() string {
	b.logMu.Lock()
	defer b.logMu.Unlock()
	return b.log.String()
}

// stop sends SIGTERM and waits for a clean exit.
func (b *box) stop() {
	if b.cmd == nil || b.cmd.Process == nil {
		return
	}
	select {
	case <-b.exited:
		return
	default:
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-b.exited:
	case <-time.After(40 * time.Second):
		b.cmd.Process.Kill()
		<-b.exited
		b.t.Errorf("onebox up did not stop within 40s after SIGTERM")
	}
}

// kill stops the process with SIGKILL (a crash).
func (b *box) kill() {
	b.cmd.Process.Kill()
	<-b.exited
}

func (b *box) url() string { return "tcp://" + b.mqtt }

// labelled counts the containers of instance name on the engine.
func labelled(t *testing.T, name string) int {
	out, err := exec.Command("docker", "ps", "-aq", "--filter", "label=io.onebox.instance="+name).Output()
	if err != nil {
		t.Fatalf("docker ps: %v", err)
	}
	return len(strings.Fields(string(out)))
}

// sub is a mosquitto_sub that collects "topic payload" lines.
type sub struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
}

func (b *box) sub(t *testing.T, topics ...string) *sub {
	args := []string{"-h", "127.0.0.1", "-p", b.port, "-v", "-q", "1"}
	for _, tp := range topics {
		args = append(args, "-t", tp)
	}
	s := &sub{cmd: exec.Command("mosquitto_sub", args...)}
	out, _ := s.cmd.StdoutPipe()
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 4<<20)
		for sc.Scan() {
			s.mu.Lock()
			s.lines = append(s.lines, sc.Text())
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
	time.Sleep(300 * time.Millisecond) // let it subscribe
	return s
}

func (s *sub) match(prefix string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, l := range s.lines {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *box) pub(t *testing.T, args ...string) {
	t.Helper()
	full := append([]string{"-h", "127.0.0.1", "-p", b.port}, args...)
	if out, err := exec.Command("mosquitto_pub", full...).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub %v: %v %s", args, err, out)
	}
}

// invoke runs `onebox invoke` and returns stdout, stderr and the exit code.
func (b *box) invoke(t *testing.T, stdin []byte, args ...string) ([]byte, string, int) {
	t.Helper()
	c := exec.Command(bin, append([]string{"invoke", "--broker-url", b.url(), "--config", b.cfg}, args...)...)
	c.Dir = b.dir
	c.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("invoke: %v", err)
	}
	return out.Bytes(), errb.String(), code
}

func (b *box) invokeJSON(t *testing.T, args ...string) record.Record {
	t.Helper()
	out, errs, _ := b.invoke(t, nil, append([]string{"--json"}, args...)...)
	r, err := record.Parse(out)
	if err != nil {
		t.Fatalf("invoke --json %v: %v (stdout %q, stderr %q)", args, err, out, errs)
	}
	return r
}

// collector is a paho client that gathers every final record and result.
type collector struct {
	mu      sync.Mutex
	finals  map[string]record.Record
	runs    map[string]int // "running" records per id
	results map[string][]byte
	c       mqtt.Client
}

func (b *box) collect(t *testing.T) *collector {
	col := &collector{finals: map[string]record.Record{}, runs: map[string]int{}, results: map[string][]byte{}}
	ready := make(chan struct{})
	var once sync.Once
	c, err := mqttc.Connect(context.Background(), mqttc.Options{URL: b.url(), ClientID: "e2e-col-" + rnd(4), CleanSession: true,
		OnConnect: func(c mqtt.Client) {
			c.SubscribeMultiple(map[string]byte{"status/+": 1, "result/+": 1}, func(_ mqtt.Client, m mqtt.Message) {
				col.mu.Lock()
				defer col.mu.Unlock()
				if strings.HasPrefix(m.Topic(), "result/") {
					col.results[strings.TrimPrefix(m.Topic(), "result/")] = append([]byte(nil), m.Payload()...)
					return
				}
				r, err := record.Parse(m.Payload())
				if err != nil {
					return
				}
				if r.State == record.Running {
					col.runs[r.ID]++
				}
				if record.Final(r.State) {
					col.finals[r.ID] = r
				}
			}).Wait()
			once.Do(func() { close(ready) })
		}})
	if err != nil {
		t.Fatal(err)
	}
	<-ready
	col.c = c
	t.Cleanup(func() { c.Disconnect(0) })
	return col
}

func (c *collector) final(id string) (record.Record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.finals[id]
	return r, ok
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.finals)
}

func (c *collector) running(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs[id]
}

const shHandlers = `  hello:
    image: onebox/hello:latest
  echo:
    image: onebox/echo:latest
  wc:
    image: onebox/busybox:latest
    cmd: ["wc", "-c"]
  split:
    image: onebox/busybox:latest
    cmd: ["sh", "-c", "echo out; echo err >&2"]
  fail3:
    image: onebox/busybox:latest
    cmd: ["sh", "-c", "echo partial; exit 3"]
  sleepy:
    image: onebox/busybox:latest
    cmd: ["sleep", "100"]
    timeout: 1s
  stubborn:
    image: onebox/busybox:latest
    cmd: ["sh", "-c", "trap '' TERM; sleep 100 & wait; sleep 100"]
    timeout: 1s
  ghost:
    image: onebox/does-not-exist:latest
`

func sha(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

func TestE2EMosquittoRoundTrip(t *testing.T) {
	b := startBox(t, shHandlers, "")
	for _, v := range []string{"mqttv311", "mqttv5"} {
		id := "rt-" + v
		s := b.sub(t, "result/"+id)
		b.pub(t, "-V", v, "-q", "1", "-t", "trigger/hello/"+id, "-m", "hi")
		eventually(t, 30*time.Second, "result of "+id, func() bool { return len(s.match("result/"+id)) == 1 })
		line := s.match("result/" + id)[0]
		if !strings.Contains(line, `"message":"hello"`) || !strings.Contains(line, `"time":"`) {
			t.Fatalf("%s: result %q", v, line)
		}
	}
	// Without an id the invoker makes one; status and result carry it.
	s := b.sub(t, "result/#", "status/#")
	b.pub(t, "-t", "trigger/hello", "-m", "hi")
	eventually(t, 30*time.Second, "a generated id's result", func() bool { return len(s.match("result/")) == 1 })
	id := strings.Fields(strings.TrimPrefix(s.match("result/")[0], "result/"))[0]
	eventually(t, 5*time.Second, "records", func() bool { return len(s.match("status/"+id)) >= 3 })
	var states []string
	for _, l := range s.match("status/" + id) {
		r, _ := record.Parse([]byte(strings.SplitN(l, " ", 2)[1]))
		states = append(states, r.State)
	}
	if strings.Join(states, ",") != "queued,running,succeeded" {
		t.Fatalf("states for %s: %v", id, states)
	}
}

func TestE2EExactBytesStdinStderrExit(t *testing.T) {
	b := startBox(t, shHandlers, "")
	// Binary payload through echo: the exact bytes come back on result/<id>.
	payload := make([]byte, 200_000)
	rand.Read(payload)
	out, errs, code := b.invoke(t, payload, "echo", "-")
	if code != 0 || sha(out) != sha(payload) {
		t.Fatalf("echo: exit %d, %d bytes back (sha %s, want %s) %s", code, len(out), sha(out)[:8], sha(payload)[:8], errs)
	}
	// The same through mosquitto_pub -f and mosquitto_sub -N (no added newline).
	f := filepath.Join(b.dir, "payload.bin")
	os.WriteFile(f, payload[:50_000], 0o644)
	sc := exec.Command("mosquitto_sub", "-h", "127.0.0.1", "-p", b.port, "-C", "1", "-N", "-t", "result/bin1")
	var got bytes.Buffer
	sc.Stdout = &got
	sc.Start()
	time.Sleep(300 * time.Millisecond)
	b.pub(t, "-q", "1", "-t", "trigger/echo/bin1", "-f", f)
	done := make(chan error)
	go func() { done <- sc.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		sc.Process.Kill()
		t.Fatal("no result for bin1")
	}
	if sha(got.Bytes()) != sha(payload[:50_000]) {
		t.Fatalf("mosquitto result differs: %d bytes", got.Len())
	}
	// stdin ends with EOF: wc -c counts 5, and 0 for an empty payload.
	if out, _, code := b.invoke(t, nil, "wc", "hello"); strings.TrimSpace(string(out)) != "5" || code != 0 {
		t.Fatalf("wc -c of 5 bytes: %q exit %d", out, code)
	}
	if out, _, _ := b.invoke(t, nil, "wc"); strings.TrimSpace(string(out)) != "0" {
		t.Fatalf("wc -c of nothing: %q", out)
	}
	// stderr stays out of stdout and its tail is in the record.
	// invoke prints the handler's stderr on its own stderr, as docker run does.
	if out, errs, _ := b.invoke(t, nil, "split"); string(out) != "out\n" || errs != "err\n" {
		t.Fatalf("invoke split: stdout %q stderr %q, want \"out\\n\" and \"err\\n\"", out, errs)
	}
	if r := b.invokeJSON(t, "split"); r.Stderr != "err\n" || r.StdoutBytes != 4 {
		t.Fatalf("record %+v", r)
	}
	// A non-zero exit: stdout still comes back, invoke exits with the code.
	out, _, code = b.invoke(t, nil, "fail3")
	if code != 3 || string(out) != "partial\n" {
		t.Fatalf("fail3: exit %d out %q", code, out)
	}
	if r := b.invokeJSON(t, "fail3"); r.State != record.Failed || r.ExitCode == nil || *r.ExitCode != 3 {
		t.Fatalf("fail3 record %+v", r)
	}
}

func TestE2ETimeoutsMissingImageUnknownHandler(t *testing.T) {
	b := startBox(t, shHandlers, "")
	for _, h := range []string{"sleepy", "stubborn"} {
		t0 := time.Now()
		r := b.invokeJSON(t, h)
		if r.State != record.Timeout {
			t.Fatalf("%s: %+v", h, r)
		}
		// 1s timeout + 1s grace + engine overhead.
		if d := time.Since(t0); d > 15*time.Second {
			t.Fatalf("%s took %s to stop", h, d)
		}
	}
	if n := labelled(t, b.name); n != 0 {
		t.Fatalf("%d containers left after timeouts", n)
	}
	_, errs, code := b.invoke(t, nil, "ghost")
	if code != 125 || !strings.Contains(errs, "onebox/does-not-exist:latest") || !strings.Contains(errs, "onebox handlers build") {
		t.Fatalf("missing image: exit %d, %q", code, errs)
	}
	r := b.invokeJSON(t, "nosuch")
	if r.State != record.Rejected || r.Reason != record.ReasonUnknownHandler {
		t.Fatalf("unknown handler: %+v", r)
	}
}

func TestE2EInvalidTriggersNeverRun(t *testing.T) {
	b := startBox(t, shHandlers, "")
	s := b.sub(t, "status/#")
	for _, topic := range []string{"trigger/", "trigger//echo", "trigger/echo/", "trigger/Echo", "trigger/echo/a/b", "/trigger/echo"} {
		for _, v := range []string{"mqttv311", "mqttv5"} {
			exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", b.port, "-V", v, "-q", "1", "-t", topic, "-m", "x").Run()
		}
	}
	b.pub(t, "-t", "trigger/echo/after", "-m", "x")
	eventually(t, 30*time.Second, "the valid trigger after the bad ones", func() bool { return len(s.match("status/after")) >= 3 })
	for _, l := range s.match("status/") {
		if !strings.HasPrefix(l, "status/after ") {
			t.Fatalf("an invalid trigger produced a record: %s", l)
		}
	}
}

func TestE2EManyRunsLeaveNoContainer(t *testing.T) {
	const n = 200
	b := startBox(t, "  echo:\n    image: onebox/echo:latest\n    concurrency: 4\n    queue: 250\n", "")
	col := b.collect(t)
	for i := 0; i < n; i++ {
		col.c.Publish(fmt.Sprintf("trigger/echo/many-%03d", i), 1, false, fmt.Sprintf("payload %d", i))
	}
	eventually(t, 5*time.Minute, "200 final records", func() bool { return col.count() == n })
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("many-%03d", i)
		r, _ := col.final(id)
		col.mu.Lock()
		res := string(col.results[id])
		col.mu.Unlock()
		if r.State != record.Succeeded || res != fmt.Sprintf("payload %d", i) {
			t.Fatalf("%s: %s %s result %q", id, r.State, r.Reason, res)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if c := labelled(t, b.name); c != 0 {
		t.Fatalf("%d containers left after %d runs", c, n)
	}
}

func TestE2EHotSwapLosesNothing(t *testing.T) {
	b := startBox(t, "  hello:\n    image: onebox/hello:latest\n", "")
	if out, _, _ := b.invoke(t, nil, "hello"); !strings.Contains(string(out), `"hello"`) {
		t.Fatalf("before the swap: %q", out)
	}
	col := b.collect(t)
	stop := make(chan struct{})
	sent := 0
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			col.c.Publish(fmt.Sprintf("trigger/hello/swap-%03d", i), 1, false, "").Wait()
			sent++
		}
	}()
	time.Sleep(500 * time.Millisecond)
	b.writeConfig("  hello:\n    image: onebox/goodbye:latest\n", "")
	eventually(t, 20*time.Second, "the swapped image to answer", func() bool {
		out, _, _ := b.invoke(t, nil, "hello")
		return strings.Contains(string(out), `"goodbye"`)
	})
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	eventually(t, 60*time.Second, "every trigger sent during the swap to finish", func() bool {
		n := 0
		for i := 0; i < sent; i++ {
			if r, ok := col.final(fmt.Sprintf("swap-%03d", i)); ok && r.State == record.Succeeded {
				n++
			}
		}
		return n == sent
	})
	if sent < 5 {
		t.Fatalf("only %d triggers were sent during the swap", sent)
	}
}

func TestE2ERestartRemovesLeftoversAndIgnoresRetained(t *testing.T) {
	b := startBox(t, shHandlers, "")
	col := b.collect(t)
	// A retained trigger runs once, as the event it is...
	b.pub(t, "-r", "-q", "1", "-t", "trigger/echo/ret1", "-m", "kept")
	eventually(t, 30*time.Second, "the retained trigger's run", func() bool { _, ok := col.final("ret1"); return ok })
	b.stop()
	// ...a container left by a crash, labelled for this instance, is removed at start...
	out, err := exec.Command("docker", "create", "--label", "io.onebox.managed=true", "--label", "io.onebox.instance="+b.name, "onebox/busybox:latest", "sleep", "100").CombinedOutput()
	if err != nil {
		t.Fatalf("docker create: %v %s", err, out)
	}
	other := "e2e-other-" + rnd(4)
	out, err = exec.Command("docker", "create", "--label", "io.onebox.managed=true", "--label", "io.onebox.instance="+other, "onebox/busybox:latest", "sleep", "100").CombinedOutput()
	if err != nil {
		t.Fatalf("docker create: %v %s", err, out)
	}
	otherID := strings.TrimSpace(string(out))
	defer exec.Command("docker", "rm", "-f", otherID).Run()
	if labelled(t, b.name) != 1 {
		t.Fatal("the planted leftover is not there")
	}
	b.start()
	col2 := b.collect(t)
	if n := labelled(t, b.name); n != 0 {
		t.Fatalf("%d leftover containers after restart", n)
	}
	if labelled(t, other) != 1 {
		t.Fatal("another instance's container was removed")
	}
	// ...and after the restart the retained trigger is not run again.
	time.Sleep(2 * time.Second)
	if out, _, _ := b.invoke(t, nil, "echo", "still here"); string(out) != "still here" {
		t.Fatalf("after restart: %q", out)
	}
	if n := col2.running("ret1"); n != 0 {
		t.Fatalf("the retained trigger ran again after the restart (%d runs)", n)
	}
	// An empty retained message clears it.
	b.pub(t, "-r", "-n", "-t", "trigger/echo/ret1")
}

func TestE2EGracefulShutdownStopsRuns(t *testing.T) {
	b := startBox(t, "  long:\n    image: onebox/busybox:latest\n    cmd: [\"sleep\", \"100\"]\n    timeout: 5m\n", "")
	col := b.collect(t)
	b.pub(t, "-q", "1", "-t", "trigger/long/l1", "-n")
	eventually(t, 30*time.Second, "the run to start", func() bool { return col.running("l1") == 1 })
	// A shorter grace so the test is quick: the config says grace 1s; the
	// process waits --shutdown-grace (10s) before stopping runs.
	t0 := time.Now()
	b.stop()
	if d := time.Since(t0); d > 30*time.Second {
		t.Fatalf("shutdown took %s", d)
	}
	eventually(t, 5*time.Second, "the stopped run's record", func() bool { _, ok := col.final("l1"); return ok })
	r, _ := col.final("l1")
	if r.State != record.Failed || r.Reason != record.ReasonShutdown {
		t.Fatalf("record at shutdown: %+v", r)
	}
	if n := labelled(t, b.name); n != 0 {
		t.Fatalf("%d containers left after shutdown", n)
	}
}

// An engine socket that is not there (Podman's service not started, Docker not
// installed): every command that needs the engine stops at once with an error that
// names the socket and says what to start, and `up` starts nothing.
func TestE2EEngineSocketAbsent(t *testing.T) {
	setup(t)
	dir := t.TempDir()
	sock := "unix://" + filepath.Join(dir, "podman.sock")
	mq, _ := freePort()
	for _, args := range [][]string{
		{"up", "--broker-listen", mq, "--http-listen", "127.0.0.1:0", "--no-build"},
		{"invoker", "--broker-url", "tcp://" + mq},
		{"handlers"},
		{"handlers", "build"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, append(args, "--runtime", sock)...)
			cmd.Dir = dir
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 || ctx.Err() != nil {
				t.Fatalf("exit %v (ctx %v), want exit status 1\n%s", err, ctx.Err(), stderr.String())
			}
			for _, want := range []string{"container engine unavailable at " + sock, "docker info", "podman.socket"} {
				if !strings.Contains(stderr.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
				}
			}
		})
	}
	// Nothing listens: up stopped before starting its broker.
	if c, err := net.DialTimeout("tcp", mq, time.Second); err == nil {
		c.Close()
		t.Errorf("something listens on %s after up failed", mq)
	}
	if _, err := os.Stat(filepath.Join(dir, "inbox")); err == nil {
		t.Errorf("up created ./inbox although it could not start")
	}
}
