package main

// The fault suite: delivery under load and faults, against the real onebox
// binary, the real Docker engine and the embedded broker. Each scenario prints
// one line with its counts (scenario=… sent=… …), visible with go test -v.
// Helpers here reuse the e2e harness (setup, startBox, labelled, eventually).

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/onebox-dev/onebox/internal/mqttc"
	"github.com/onebox-dev/onebox/internal/record"
)

// ---- harness: separate processes ----

// proc is one onebox process (broker, invoker or up) started by a test.
type proc struct {
	t      *testing.T
	args   []string
	dir    string
	env    []string
	ready  string
	cmd    *exec.Cmd
	logMu  sync.Mutex
	log    bytes.Buffer
	exited chan struct{}
}

func startProc(t *testing.T, dir string, env []string, ready string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, args: args, dir: dir, env: env, ready: ready}
	p.start()
	t.Cleanup(p.stop)
	return p
}

func (p *proc) start() {
	p.t.Helper()
	p.cmd = exec.Command(bin, p.args...)
	p.cmd.Dir = p.dir
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // no orphan if the test dies
	p.cmd.Stdout = io.Discard
	stderr, _ := p.cmd.StderrPipe()
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.exited = make(chan struct{})
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			p.logMu.Lock()
			if p.log.Len() < 4<<20 {
				p.log.WriteString(sc.Text() + "\n")
			}
			p.logMu.Unlock()
			if strings.Contains(sc.Text(), p.ready) {
				once.Do(func() { close(up) })
			}
		}
	}()
	go func() { p.cmd.Wait(); close(p.exited) }()
	select {
	case <-up:
	case <-p.exited:
		p.t.Fatalf("onebox %v exited:\n%s", p.args, p.logs())
	case <-time.After(60 * time.Second):
		p.t.Fatalf("onebox %v did not come up:\n%s", p.args, p.logs())
	}
}

func (p *proc) logs() string {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return p.log.String()
}

func (p *proc) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(40 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		p.t.Errorf("onebox %v did not stop within 40s after SIGTERM", p.args)
	}
}

func (p *proc) kill9() {
	p.cmd.Process.Kill()
	<-p.exited
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// split is a broker and an invoker as separate processes sharing one config.
type split struct {
	dir, cfg, name, mqtt, port string
	broker, invoker            *proc
}

func startSplit(t *testing.T, handlersYAML, invokerExtra string) *split {
	t.Helper()
	setup(t)
	s := &split{dir: t.TempDir(), name: "flt-" + rnd(4)}
	s.mqtt, _ = freePort()
	s.port = s.mqtt[strings.LastIndex(s.mqtt, ":")+1:]
	s.cfg = filepath.Join(s.dir, "onebox.yaml")
	y := fmt.Sprintf("broker:\n  listen: %q\n  data_dir: ./data\ninvoker:\n  name: %s\n  grace: 1s\n%s\nhandlers:\n%s", s.mqtt, s.name, invokerExtra, handlersYAML)
	if err := os.WriteFile(s.cfg, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	s.broker = startProc(t, s.dir, nil, "broker listening", "broker", "--config", s.cfg)
	s.invoker = s.startInvoker(t)
	t.Cleanup(func() {
		s.invoker.stop()
		if n := labelled(t, s.name); n != 0 {
			t.Errorf("%d containers of instance %s left behind", n, s.name)
		}
	})
	return s
}

func (s *split) startInvoker(t *testing.T) *proc {
	return startProc(t, s.dir, []string{"ONEBOX_LOG_LEVEL=" + os.Getenv("ONEBOX_FAULT_LOG_LEVEL")}, "invoker ready", "invoker", "--config", s.cfg, "--broker-url", "tcp://"+s.mqtt, "--shutdown-grace", "2s")
}

func (s *split) url() string { return "tcp://" + s.mqtt }

// ---- harness: a collector that counts every record ----

type idStat struct {
	running, succeeded, finals, results int
	last                                record.Record
	redelivered                         bool
	result                              []byte
}

type fcol struct {
	mu  sync.Mutex
	ids map[string]*idStat
	c   mqtt.Client
}

func collectAll(t *testing.T, url string) *fcol {
	t.Helper()
	col := &fcol{ids: map[string]*idStat{}}
	ready := make(chan struct{})
	var once sync.Once
	c, err := mqttc.Connect(context.Background(), mqttc.Options{URL: url, ClientID: "flt-col-" + rnd(4), CleanSession: true,
		OnConnect: func(c mqtt.Client) {
			c.SubscribeMultiple(map[string]byte{"status/+": 1, "result/+": 1}, func(_ mqtt.Client, m mqtt.Message) {
				col.mu.Lock()
				defer col.mu.Unlock()
				if strings.HasPrefix(m.Topic(), "result/") {
					s := col.get(strings.TrimPrefix(m.Topic(), "result/"))
					s.results++
					if len(m.Payload()) <= 4096 {
						s.result = append([]byte(nil), m.Payload()...)
					} else {
						s.result = []byte(fmt.Sprintf("<%d bytes>", len(m.Payload())))
					}
					return
				}
				r, err := record.Parse(m.Payload())
				if err != nil {
					return
				}
				s := col.get(r.ID)
				if r.Redelivered {
					s.redelivered = true
				}
				switch {
				case r.State == record.Running:
					s.running++
				case record.Final(r.State):
					s.finals++
					s.last = r
					if r.State == record.Succeeded {
						s.succeeded++
					}
				default:
					if s.finals == 0 {
						s.last = r
					}
				}
			}).Wait()
			once.Do(func() { close(ready) })
		}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("collector did not subscribe")
	}
	col.c = c
	t.Cleanup(func() { c.Disconnect(0) })
	return col
}

func (c *fcol) get(id string) *idStat {
	s := c.ids[id]
	if s == nil {
		s = &idStat{}
		c.ids[id] = s
	}
	return s
}

func (c *fcol) stat(id string) idStat {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.ids[id]; s != nil {
		return *s
	}
	return idStat{}
}

// finalsOf counts the ids among ids that have a final record.
func (c *fcol) finalsOf(ids []string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, id := range ids {
		if s := c.ids[id]; s != nil && s.finals > 0 {
			n++
		}
	}
	return n
}

func (c *fcol) succeededOf(ids []string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, id := range ids {
		if s := c.ids[id]; s != nil && s.succeeded > 0 {
			n++
		}
	}
	return n
}

// publishAll sends one QoS 1 trigger per id and waits for every PUBACK.
func (c *fcol) publishAll(t *testing.T, handler string, ids []string, payload []byte) {
	t.Helper()
	toks := make([]mqtt.Token, 0, len(ids))
	for _, id := range ids {
		toks = append(toks, c.c.Publish("trigger/"+handler+"/"+id, 1, false, payload))
	}
	for _, tk := range toks {
		if err := mqttc.Wait(tk, 30*time.Second); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return out
}

// waitFor polls cond until it holds or d has passed.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}

// ---- harness: /proc ----

// procStatus reads a field (in kB for memory fields) of /proc/<pid>/status.
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			f := strings.Fields(strings.TrimPrefix(l, field+":"))
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return -1
}

// fdCount counts the open files of pid.
func fdCount(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// childZombies counts the zombie children of pid.
func childZombies(pid int) int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[0] == "Z" && f[1] == strconv.Itoa(pid) {
			n++
		}
	}
	return n
}

// hostPids counts the host's processes and its zombies.
func hostPids() (all, zombies int) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		all++
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 && len(s) > i+2 && s[i+2] == 'Z' {
			zombies++
		}
	}
	return
}

// ---- harness: a raw MQTT 3.1.1 client, for what paho will not do ----

func mqttString(s string) []byte {
	return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...)
}

func mqttPacket(first byte, body []byte) []byte {
	out := []byte{first}
	n := len(body)
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			break
		}
	}
	return append(out, body...)
}

func rawConnect(t *testing.T, addr, clientID string, clean bool, keepalive uint16) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	flags := byte(0)
	if clean {
		flags = 0x02
	}
	body := append(mqttString("MQTT"), 4, flags, byte(keepalive>>8), byte(keepalive))
	body = append(body, mqttString(clientID)...)
	if _, err := c.Write(mqttPacket(0x10, body)); err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("CONNACK: %x %v", ack, err)
	}
	c.SetReadDeadline(time.Time{})
	return c
}

func rawPublishQoS1(topic string, id uint16, dup bool, payload []byte) []byte {
	first := byte(0x32)
	if dup {
		first |= 0x08
	}
	body := append(mqttString(topic), byte(id>>8), byte(id))
	return mqttPacket(first, append(body, payload...))
}

// ---- scenarios ----

// logLine prints a scenario's counts on one line.
func logLine(t *testing.T, format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	t.Log(line)
	fmt.Println(line)
}

func TestFaultLimits50(t *testing.T) {
	b := startBox(t, "  slow:\n    image: onebox/busybox:latest\n    cmd: [\"sh\", \"-c\", \"sleep 2; echo ok\"]\n    concurrency: 4\n    queue: 20\n", "  concurrency: 8")
	col := collectAll(t, b.url())
	all := ids("lim", 50)
	// 50 at once: published without waiting for each PUBACK.
	col.publishAll(t, "slow", all, nil)
	eventually(t, 90*time.Second, "50 final records", func() bool { return col.finalsOf(all) == 50 })
	var succeeded, busy, other int
	type span struct{ a, b time.Time }
	var spans []span
	for _, id := range all {
		s := col.stat(id)
		switch {
		case s.last.State == record.Succeeded:
			succeeded++
			spans = append(spans, span{*s.last.StartedAt, *s.last.FinishedAt})
		case s.last.State == record.Rejected && s.last.Reason == record.ReasonBusy:
			busy++
		default:
			other++
			t.Errorf("%s: %s %s %s", id, s.last.State, s.last.Reason, s.last.Error)
		}
	}
	// The most runs at once, from the records' started/finished times.
	maxOverlap := 0
	for _, a := range spans {
		n := 0
		for _, x := range spans {
			if !x.a.After(a.a) && x.b.After(a.a) {
				n++
			}
		}
		maxOverlap = max(maxOverlap, n)
	}
	logLine(t, "scenario=limits-50 sent=50 concurrency=4 queue=20 accepted=%d succeeded=%d rejected_busy=%d other=%d max_running=%d",
		succeeded, succeeded, busy, other, maxOverlap)
	if maxOverlap > 4 {
		t.Errorf("%d runs at once, limit 4", maxOverlap)
	}
	if succeeded != 24 || busy != 26 {
		t.Errorf("want 24 accepted (4 running + 20 queued) and 26 busy, got %d and %d", succeeded, busy)
	}
}

// killCount summarises the ids of a kill scenario.
func killCount(col *fcol, all []string) (accepted, runs, results, dups, lost, redelivered int) {
	col.mu.Lock()
	defer col.mu.Unlock()
	for _, id := range all {
		s := col.ids[id]
		if s == nil {
			lost++
			continue
		}
		if s.last.State == record.Rejected {
			continue
		}
		accepted++
		runs += s.running
		results += s.results
		if s.succeeded > 1 {
			dups++
		}
		if s.succeeded == 0 {
			lost++
		}
		if s.redelivered {
			redelivered++
		}
	}
	return
}

func TestFaultKillInvoker1000(t *testing.T) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("ONEBOX_FAULT_KILL_N")); err == nil && v > 0 {
		n = v
	}
	s := startSplit(t, "  quick:\n    image: onebox/hello:latest\n    concurrency: 4\n    queue: 1000\n", "  concurrency: 4")
	col := collectAll(t, s.url())
	all := ids("kill", n)
	t0 := time.Now()
	col.publishAll(t, "quick", all, []byte("x"))
	eventually(t, 5*time.Minute, "a third of the runs", func() bool { return col.finalsOf(all) >= n/3 })
	s.invoker.kill9()
	atKill := labelled(t, s.name)
	doneAtKill := col.finalsOf(all)
	s.invoker = s.startInvoker(t)
	if !waitFor(time.Duration(n)*time.Second+time.Minute, func() bool { return col.succeededOf(all) == n }) {
		states := map[string]int{}
		col.mu.Lock()
		var missing []string
		for _, id := range all {
			st := col.ids[id]
			if st == nil {
				states["none"]++
				missing = append(missing, id)
				continue
			}
			states[st.last.State+"/"+st.last.Reason]++
			if st.succeeded == 0 && len(missing) < 10 {
				missing = append(missing, id)
			}
		}
		col.mu.Unlock()
		l := s.invoker.logs()
		os.WriteFile("/tmp/flt-invoker.log", []byte(l), 0o644)
		t.Fatalf("not every run ended: %v; e.g. %v\ninvoker log tail:\n%s", states, missing, l[max(0, len(l)-4000):])
	}
	time.Sleep(2 * time.Second) // late duplicates, if any
	accepted, runs, results, dups, lost, redelivered := killCount(col, all)
	leftover := labelled(t, s.name)
	logLine(t, "scenario=kill-invoker sent=%d accepted=%d runs=%d results=%d duplicates=%d lost=%d redelivered=%d leftover=%d containers_at_kill=%d finished_before_kill=%d elapsed=%s",
		n, accepted, runs, results, dups, lost, redelivered, leftover, atKill, doneAtKill, time.Since(t0).Round(time.Second))
	if dups != 0 || lost != 0 || leftover != 0 || accepted != n {
		t.Errorf("duplicates=%d lost=%d leftover=%d accepted=%d", dups, lost, leftover, accepted)
	}
}

func TestFaultKillDuringFirstOfFive(t *testing.T) {
	s := startSplit(t, "  one:\n    image: onebox/busybox:latest\n    cmd: [\"sh\", \"-c\", \"sleep 3; echo done\"]\n    concurrency: 1\n", "")
	col := collectAll(t, s.url())
	all := ids("five", 5)
	col.publishAll(t, "one", all, nil)
	eventually(t, 30*time.Second, "the first run to start", func() bool { return col.stat(all[0]).running == 1 })
	s.invoker.kill9()
	s.invoker = s.startInvoker(t)
	eventually(t, 90*time.Second, "all five to succeed", func() bool { return col.succeededOf(all) == 5 })
	time.Sleep(time.Second)
	accepted, runs, results, dups, lost, redelivered := killCount(col, all)
	first := col.stat(all[0])
	logLine(t, "scenario=kill-during-first sent=5 accepted=%d runs=%d results=%d duplicates=%d lost=%d redelivered=%d first_redelivered=%v leftover=%d",
		accepted, runs, results, dups, lost, redelivered, first.last.Redelivered, labelled(t, s.name))
	if dups != 0 || lost != 0 || !first.last.Redelivered || first.running != 2 {
		t.Errorf("first: %+v; duplicates=%d lost=%d", first, dups, lost)
	}
}

func TestFaultBrokerRestartQueued(t *testing.T) {
	s := startSplit(t, "  echo:\n    image: onebox/echo:latest\n    concurrency: 2\n", "")
	// The invoker's persistent session exists; now it goes away.
	s.invoker.stop()
	pubc, err := mqttc.Connect(context.Background(), mqttc.Options{URL: s.url(), ClientID: "flt-pub-" + rnd(4), CleanSession: true})
	if err != nil {
		t.Fatal(err)
	}
	all := ids("brq", 10)
	for _, id := range all {
		if err := mqttc.Wait(pubc.Publish("trigger/echo/"+id, 1, false, id), 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	pubc.Disconnect(0)
	// The broker restarts with 10 triggers queued for the offline invoker.
	s.broker.stop()
	s.broker.start()
	col := collectAll(t, s.url())
	s.invoker = s.startInvoker(t)
	eventually(t, 60*time.Second, "all queued triggers to run", func() bool { return col.succeededOf(all) == 10 })
	time.Sleep(2 * time.Second)
	accepted, runs, results, dups, lost, _ := killCount(col, all)
	logLine(t, "scenario=broker-restart sent=10 accepted=%d runs=%d results=%d duplicates=%d lost=%d leftover=%d",
		accepted, runs, results, dups, lost, labelled(t, s.name))
	if runs != 10 || dups != 0 || lost != 0 {
		t.Errorf("runs=%d duplicates=%d lost=%d", runs, dups, lost)
	}
}

func TestFaultRetainedTriggerThreeRestarts(t *testing.T) {
	b := startBox(t, "  echo:\n    image: onebox/echo:latest\n", "")
	col := collectAll(t, b.url())
	b.pub(t, "-r", "-q", "1", "-t", "trigger/echo/ret3", "-m", "kept")
	eventually(t, 30*time.Second, "the retained trigger's run", func() bool { return col.stat("ret3").finals == 1 })
	runs, reruns := col.stat("ret3").running, 0
	for i := 0; i < 3; i++ {
		b.stop()
		b.start()
		col = collectAll(t, b.url()) // a new collector after each broker restart (in memory session)
		if out, _, _ := b.invoke(t, nil, "echo", "alive"); string(out) != "alive" {
			t.Fatalf("restart %d: %q", i, out)
		}
		reruns += col.stat("ret3").running
	}
	logLine(t, "scenario=retained-3-restarts runs=%d reruns=%d", runs, reruns)
	if runs != 1 || reruns != 0 {
		t.Errorf("the retained trigger ran %d times, then %d times after restarts", runs, reruns)
	}
	b.pub(t, "-r", "-n", "-t", "trigger/echo/ret3")
}

func TestFaultDupResendAfterLostPuback(t *testing.T) {
	b := startBox(t, "  echo:\n    image: onebox/echo:latest\n", "")
	col := collectAll(t, b.url())
	cid := "flt-raw-" + rnd(4)
	for _, topic := range []string{"trigger/echo/dup7", "trigger/echo"} {
		payload := []byte("dup " + topic + " " + rnd(4))
		c := rawConnect(t, b.mqtt, cid, false, 60)
		c.Write(rawPublishQoS1(topic, 7, false, payload))
		time.Sleep(100 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		c.Close() // the PUBACK is never read
		c = rawConnect(t, b.mqtt, cid, false, 60)
		c.Write(rawPublishQoS1(topic, 7, true, payload))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		ack := make([]byte, 4)
		if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x40 {
			t.Fatalf("PUBACK for the resend: %x %v", ack, err)
		}
		c.Write([]byte{0xe0, 0})
		c.Close()
		// Count the runs with this payload.
		time.Sleep(4 * time.Second)
		col.mu.Lock()
		runs := 0
		for _, s := range col.ids {
			if bytes.Equal(s.result, payload) {
				runs++
			}
		}
		col.mu.Unlock()
		logLine(t, "scenario=dup-resend topic=%s sent=2 (second with DUP) runs=%d", topic, runs)
		if runs != 1 {
			t.Errorf("%s: ran %d times, want once", topic, runs)
		}
	}
	// A fresh message that carries DUP (never seen before) still runs.
	c := rawConnect(t, b.mqtt, cid, false, 60)
	c.Write(rawPublishQoS1("trigger/echo/freshdup", 9, true, []byte("fresh")))
	eventually(t, 30*time.Second, "a fresh DUP message to run", func() bool { return col.stat("freshdup").succeeded == 1 })
	c.Close()
}

// dockerProxy is a unix-socket proxy to the Docker socket that the test can cut.
type dockerProxy struct {
	path  string
	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
}

func newDockerProxy(t *testing.T) *dockerProxy {
	d, err := os.MkdirTemp("/tmp", "flt-proxy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	p := &dockerProxy{path: filepath.Join(d, "proxy.sock"), conns: map[net.Conn]bool{}}
	p.up(t)
	t.Cleanup(p.down)
	return p
}

func (p *dockerProxy) up(t *testing.T) {
	ln, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
}

func (p *dockerProxy) serve(c net.Conn) {
	u, err := net.Dial("unix", "/var/run/docker.sock")
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[u] = true, true
	p.mu.Unlock()
	go func() { io.Copy(u, c); u.(*net.UnixConn).CloseWrite() }()
	io.Copy(c, u)
	c.Close()
	u.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, u)
	p.mu.Unlock()
}

func (p *dockerProxy) ensureUp(t *testing.T) {
	p.mu.Lock()
	up := p.ln != nil
	p.mu.Unlock()
	if !up {
		p.up(t)
	}
}

// down closes the listener (removing the socket) and every open connection.
func (p *dockerProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
}

func TestFaultEngineUnavailable(t *testing.T) {
	px := newDockerProxy(t)
	t.Setenv("DOCKER_HOST", "unix://"+px.path)
	b := startBox(t, "  echo:\n    image: onebox/echo:latest\n    concurrency: 4\n", "  concurrency: 4")
	t.Cleanup(func() { px.ensureUp(t) }) // before startBox's cleanup, which asks the engine
	col := collectAll(t, b.url())
	if out, _, _ := b.invoke(t, nil, "echo", "before"); string(out) != "before" {
		t.Fatalf("before the cut: %q", out)
	}
	px.down()
	all := ids("eng", 3)
	col.publishAll(t, "echo", all, []byte("after"))
	waiting := 0
	if !waitFor(30*time.Second, func() bool {
		waiting = 0
		for _, id := range all {
			if s := col.stat(id); s.last.Reason == record.ReasonEngine && s.last.State == record.Queued {
				waiting++
			}
		}
		return waiting == len(all)
	}) {
		for _, id := range all {
			t.Logf("%s: %+v", id, col.stat(id).last)
		}
		l := b.logs()
		t.Fatalf("no record says the engine is unavailable; log tail:\n%s", l[max(0, len(l)-3000):])
	}
	time.Sleep(3 * time.Second)
	px.up(t)
	eventually(t, 60*time.Second, "the waiting triggers to run", func() bool { return col.succeededOf(all) == 3 })
	accepted, runs, results, dups, lost, _ := killCount(col, all)
	logLine(t, "scenario=engine-unavailable sent=3 waiting_engine=%d accepted=%d runs=%d results=%d duplicates=%d lost=%d",
		waiting, accepted, runs, results, dups, lost)
}

// loadForeignImage loads (docker load, docker-archive built by hand) an image
// whose config says it is for another architecture.
func loadForeignImage(t *testing.T, ref string) {
	arch := "arm64"
	if runtime.GOARCH == "arm64" {
		arch = "amd64"
	}
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	msg := []byte("not for this machine\n")
	lw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "hello.txt", Mode: 0o644, Size: int64(len(msg)), ModTime: time.Unix(0, 0)})
	lw.Write(msg)
	lw.Close()
	diffID := sha256.Sum256(layer.Bytes())
	cfg, _ := json.Marshal(map[string]any{
		"architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
		"config": map[string]any{"Cmd": []string{"/hello"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diffID[:])}},
	})
	cfgSum := sha256.Sum256(cfg)
	cfgName := hex.EncodeToString(cfgSum[:]) + ".json"
	layerName := hex.EncodeToString(diffID[:]) + "/layer.tar"
	manifest, _ := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{ref}, "Layers": []string{layerName}}})
	var archive bytes.Buffer
	aw := tar.NewWriter(&archive)
	add := func(name string, b []byte) {
		aw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(0, 0)})
		aw.Write(b)
	}
	aw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: hex.EncodeToString(diffID[:]) + "/", Mode: 0o755, ModTime: time.Unix(0, 0)})
	add(layerName, layer.Bytes())
	add(cfgName, cfg)
	add("manifest.json", manifest)
	aw.Close()
	cmd := exec.Command("docker", "load")
	cmd.Stdin = &archive
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker load: %v %s", err, out)
	}
}

const misbehaving = `  oom:
    image: onebox/busybox:latest
    cmd: ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"]
    memory: 32MiB
  exit137:
    image: onebox/busybox:latest
    cmd: ["sh", "-c", "exit 137"]
  bigout:
    image: onebox/busybox:latest
    cmd: ["head", "-c", "200000000", "/dev/zero"]
    timeout: 2m
  errflood:
    image: onebox/busybox:latest
    cmd: ["sh", "-c", "head -c 50000000 /dev/zero >&2; echo ok"]
    timeout: 2m
  foreign:
    image: %s
  forks:
    image: onebox/busybox:latest
    cmd: ["sh", "-c", "(sleep 1 &); (sleep 0 &); sleep 0.3; ps -o stat | grep -c Z"]
    concurrency: 4
    queue: 1000
  nostdin:
    image: onebox/busybox:latest
    cmd: ["sh", "-c", "sleep 1; echo slept"]
  yes:
    image: onebox/busybox:latest
    cmd: ["yes"]
    timeout: 5s
  busy:
    image: onebox/busybox:latest
    cmd: ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=1M count=3000; x=$(head -c 20000000 /dev/zero | tr '\\000' a); sleep 2; echo done"]
    timeout: 1m
`

func TestFaultMisbehavingRuns(t *testing.T) {
	setup(t)
	foreign := "onebox/foreign-" + rnd(3) + ":latest"
	loadForeignImage(t, foreign)
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", foreign).Run() })
	b := startBox(t, fmt.Sprintf(misbehaving, foreign), "  concurrency: 4")
	col := collectAll(t, b.url())
	pid := b.cmd.Process.Pid
	run := func(handler, id string, payload []byte, within time.Duration) idStat {
		t.Helper()
		col.publishAll(t, handler, []string{id}, payload)
		eventually(t, within, "the final record of "+id, func() bool { return col.stat(id).finals > 0 })
		return col.stat(id)
	}

	// Memory limit 32 MiB, 256 MiB asked: oom, told apart from a plain exit 137.
	s := run("oom", "oom1", nil, 60*time.Second)
	logLine(t, "scenario=oom state=%s reason=%s exit=%d", s.last.State, s.last.Reason, deref(s.last.ExitCode))
	if s.last.State != record.Failed || s.last.Reason != record.ReasonOOM {
		t.Errorf("oom: %+v", s.last)
	}
	s = run("exit137", "x137", nil, 60*time.Second)
	logLine(t, "scenario=exit137 state=%s reason=%s exit=%d", s.last.State, s.last.Reason, deref(s.last.ExitCode))
	if s.last.State != record.Failed || s.last.Reason != record.ReasonExit || deref(s.last.ExitCode) != 137 {
		t.Errorf("exit 137: %+v", s.last)
	}

	// 200 MB of stdout: the invoker's memory stays bounded, the result is capped.
	hwm0 := procStatus(pid, "VmHWM")
	s = run("bigout", "big1", nil, 2*time.Minute)
	hwm1 := procStatus(pid, "VmHWM")
	logLine(t, "scenario=stdout-200MB state=%s stdout_bytes=%d truncated=%v result=%s onebox_VmHWM_before_kB=%d onebox_VmHWM_after_kB=%d",
		s.last.State, s.last.StdoutBytes, s.last.Truncated, s.result, hwm0, hwm1)
	var resLen int
	fmt.Sscanf(string(s.result), "<%d bytes>", &resLen)
	if s.last.State != record.Succeeded || s.last.StdoutBytes != 200000000 || !s.last.Truncated || resLen > 1<<20 || resLen < 1<<20-100 {
		t.Errorf("bigout: %+v result %s", s.last, s.result)
	}
	if hwm1 > 150*1024 {
		t.Errorf("onebox peak RSS %d kB after 200 MB of output", hwm1)
	}

	s = run("errflood", "err1", nil, 2*time.Minute)
	hwm2 := procStatus(pid, "VmHWM")
	logLine(t, "scenario=stderr-flood state=%s stderr_tail=%d result=%q onebox_VmHWM_kB=%d", s.last.State, len(s.last.Stderr), s.result, hwm2)
	if s.last.State != record.Succeeded || len(s.last.Stderr) > 4096 || string(s.result) != "ok\n" {
		t.Errorf("errflood: %+v", s.last)
	}

	t0 := time.Now()
	s = run("foreign", "arch1", nil, 30*time.Second)
	logLine(t, "scenario=wrong-platform state=%s reason=%s containers_created=%d in=%s", s.last.State, s.last.Reason, s.running, time.Since(t0).Round(time.Millisecond))
	if s.last.State != record.Failed || s.last.Reason != record.ReasonWrongPlatform || s.running != 0 {
		t.Errorf("foreign: %+v", s.last)
	}

	// A handler that forks and leaves children: host pids stay flat, no zombies.
	nf := 500
	if v, err := strconv.Atoi(os.Getenv("ONEBOX_FAULT_FORK_N")); err == nil && v > 0 {
		nf = v
	}
	p0, z0 := hostPids()
	thr0, fd0, c0 := procStatus(pid, "Threads"), fdCount(pid), childZombies(pid)
	fl := ids("fork", nf)
	col.publishAll(t, "forks", fl, nil)
	eventually(t, 5*time.Minute, "every fork run", func() bool { return col.finalsOf(fl) == nf })
	// The engine's exited shims are reaped by the host's init, not at once.
	var p1, z1 int
	waitFor(20*time.Second, func() bool { p1, z1 = hostPids(); return z1 <= z0+2 })
	thr1, fd1, c1 := procStatus(pid, "Threads"), fdCount(pid), childZombies(pid)
	zin, bad := 0, 0
	for _, id := range fl {
		st := col.stat(id)
		if st.last.State != record.Succeeded && !(st.last.State == record.Failed && st.last.Reason == record.ReasonExit) {
			bad++
		}
		if strings.TrimSpace(string(st.result)) != "0" {
			zin++
		}
	}
	logLine(t, "scenario=forks runs=%d bad=%d runs_with_zombies_inside=%d onebox_zombie_children=%d→%d onebox_threads=%d→%d onebox_fds=%d→%d host_pids=%d→%d host_zombies=%d→%d",
		nf, bad, zin, c0, c1, thr0, thr1, fd0, fd1, p0, p1, z0, z1)
	// Host-wide counts move with whatever else runs on the box: printed, and only
	// the onebox process's own numbers are held to flat.
	if bad != 0 || zin != 0 || c1 > c0 || thr1 > thr0+4 || fd1 > fd0+10 {
		t.Errorf("forks: bad=%d zombies inside=%d onebox zombie children %d→%d threads %d→%d fds %d→%d", bad, zin, c0, c1, thr0, thr1, fd0, fd1)
	}

	// A large payload to a handler that never reads stdin: no deadlock.
	big := bytes.Repeat([]byte("z"), 900_000)
	t0 = time.Now()
	s = run("nostdin", "nostdin1", big, 60*time.Second)
	logLine(t, "scenario=stdin-unread payload=%d state=%s result=%q in=%s", len(big), s.last.State, s.result, time.Since(t0).Round(time.Millisecond))
	if s.last.State != record.Succeeded || string(s.result) != "slept\n" {
		t.Errorf("nostdin: %+v", s.last)
	}

	// yes: endless output, 5 s timeout.
	t0 = time.Now()
	s = run("yes", "yes1", nil, 60*time.Second)
	hwm3 := procStatus(pid, "VmHWM")
	logLine(t, "scenario=yes-timeout state=%s stdout_bytes=%d truncated=%v in=%s onebox_VmHWM_kB=%d", s.last.State, s.last.StdoutBytes, s.last.Truncated, time.Since(t0).Round(time.Millisecond), hwm3)
	if s.last.State != record.Timeout || !s.last.Truncated {
		t.Errorf("yes: %+v", s.last)
	}

	// The run report of a run longer than a second.
	s = run("busy", "busy1", nil, 90*time.Second)
	logLine(t, "scenario=run-report state=%s start_ms=%d duration_ms=%d max_memory_bytes=%d cpu_ms=%d",
		s.last.State, s.last.StartMs, s.last.DurationMs, s.last.MaxMemoryBytes, s.last.CPUMs)
	if s.last.State != record.Succeeded || s.last.StartMs <= 0 || s.last.DurationMs < 2000 || s.last.MaxMemoryBytes <= 0 || s.last.CPUMs <= 0 {
		t.Errorf("run report: %+v", s.last)
	}
}

func deref(p *int) int {
	if p == nil {
		return -1
	}
	return *p
}

func TestFaultSlowConsumer(t *testing.T) {
	b := startBox(t, "  big:\n    image: onebox/busybox:latest\n    cmd: [\"head\", \"-c\", \"500000\", \"/dev/zero\"]\n    concurrency: 2\n    queue: 200\n  echo:\n    image: onebox/echo:latest\n", "")
	col := collectAll(t, b.url())
	// A client subscribed to result/# that never reads (keepalive 0: never
	// disconnected for silence).
	slow := rawConnect(t, b.mqtt, "flt-slow-"+rnd(4), true, 0)
	defer slow.Close()
	body := []byte{0, 1}
	body = append(body, mqttString("result/#")...)
	body = append(body, 1)
	slow.Write(mqttPacket(0x82, body))
	pid := b.cmd.Process.Pid
	n := 100
	all := ids("slow", n)
	t0 := time.Now()
	col.publishAll(t, "big", all, nil)
	eventually(t, 5*time.Minute, "every big run", func() bool { return col.succeededOf(all) == n })
	got := 0
	col.mu.Lock()
	for _, id := range all {
		if s := col.ids[id]; s != nil && s.results > 0 {
			got++
		}
	}
	col.mu.Unlock()
	// Other clients still work.
	out, _, _ := b.invoke(t, nil, "echo", "still")
	dropped := strings.Count(b.logs(), "client too slow")
	cut := strings.Count(b.logs(), "client does not read: disconnected")
	logLine(t, "scenario=slow-consumer runs=%d results_to_others=%d slow_drop_logs=%d slow_disconnected=%d echo_after=%q onebox_VmHWM_kB=%d in=%s",
		n, got, dropped, cut, out, procStatus(pid, "VmHWM"), time.Since(t0).Round(time.Second))
	if got != n || string(out) != "still" {
		t.Errorf("results %d/%d, echo %q", got, n, out)
	}
}
