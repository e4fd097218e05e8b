package main

// Every part as its own process against an external broker (Mosquitto): two
// invokers sharing the work through a shared subscription, and the three bridges.
// Nothing but MQTT connects them.

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/onebox-dev/onebox/internal/record"
)

// part is one onebox part running as its own process.
type part struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  strings.Builder
	done chan struct{}
}

func startPart(t *testing.T, dir string, args ...string) *part {
	t.Helper()
	p := &part{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Dir = dir
	errp, _ := p.cmd.StderrPipe()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(errp)
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
	}()
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			p.cmd.Process.Kill()
			t.Errorf("%v did not stop on SIGTERM", args)
		}
	})
	return p
}

func (p *part) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

func TestE2EPartsAsProcessesOnMosquitto(t *testing.T) {
	setup(t)
	if _, err := exec.LookPath("mosquitto"); err != nil {
		t.Fatal("mosquitto (the broker) is not installed: apt-get install mosquitto")
	}
	dir := t.TempDir()
	mq, _ := freePort()
	port := mq[strings.LastIndex(mq, ":")+1:]
	conf := filepath.Join(dir, "mosquitto.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n", port)), 0o644)
	mosq := exec.Command("mosquitto", "-c", conf)
	if err := mosq.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { mosq.Process.Kill(); mosq.Wait() }()
	url := "tcp://" + mq
	eventually(t, 10*time.Second, "mosquitto to listen", func() bool {
		return exec.Command("mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-t", "x", "-n").Run() == nil
	})

	hp, _ := freePort()
	cfg := filepath.Join(dir, "onebox.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`broker_url: %s
http:
  listen: %q
file:
  inbox: ./inbox
invoker:
  share_group: pis
cron:
  - name: tick
    schedule: "@every 1s"
    handler: echo
    payload: tock
handlers:
  echo:
    image: onebox/echo:latest
    concurrency: 2
    queue: 100
  hello:
    image: onebox/hello:latest
`, url, hp)), 0o644)
	os.MkdirAll(filepath.Join(dir, "inbox", "echo"), 0o755)
	names := []string{"ext-a-" + rnd(3), "ext-b-" + rnd(3)}
	for _, n := range names {
		startPart(t, dir, "invoker", "-c", cfg, "--name", n)
		t.Cleanup(func() {
			if c := labelled(t, n); c != 0 {
				t.Errorf("%d containers of %s left", c, n)
			}
		})
	}
	b := &box{t: t, dir: dir, cfg: cfg, mqtt: mq, port: port, http: hp}
	col := b.collect(t)
	httpP := startPart(t, dir, "bridge", "http", "-c", cfg)
	startPart(t, dir, "bridge", "file", "-c", cfg)
	cronP := startPart(t, dir, "bridge", "cron", "-c", cfg)

	// MQTT: 20 triggers shared by the two invokers, each run once.
	time.Sleep(time.Second)
	for i := 0; i < 20; i++ {
		b.pub(t, "-q", "1", "-t", fmt.Sprintf("trigger/echo/share-%02d", i), "-m", fmt.Sprint(i))
	}
	eventually(t, 2*time.Minute, "20 shared runs", func() bool {
		n := 0
		for i := 0; i < 20; i++ {
			if _, ok := col.final(fmt.Sprintf("share-%02d", i)); ok {
				n++
			}
		}
		return n == 20
	})
	by := map[string]int{}
	for i := 0; i < 20; i++ {
		id := fmt.Sprintf("share-%02d", i)
		r, _ := col.final(id)
		if r.State != record.Succeeded || col.running(id) != 1 {
			t.Fatalf("%s: %s, ran %d times", id, r.State, col.running(id))
		}
		by[r.Invoker]++
	}
	t.Logf("runs by invoker: %v", by)
	if len(by) != 2 {
		t.Errorf("the shared subscription did not share: %v", by)
	}
	// HTTP bridge as its own process.
	eventually(t, 20*time.Second, "the HTTP bridge to be ready", func() bool {
		c, _, _ := curl(t, "http://"+hp+"/healthz")
		return c == 200
	})
	if code, _, body := curl(t, "--data-binary", "via http", "http://"+hp+"/run/echo"); code != 200 || string(body) != "via http" {
		t.Fatalf("HTTP bridge: %d %q\n%s", code, body, httpP.logs())
	}
	// File bridge as its own process.
	os.WriteFile(filepath.Join(dir, "inbox", "echo", "f.txt"), []byte("via file"), 0o644)
	out := filepath.Join(dir, "done", "echo", "f.txt.out")
	eventually(t, 60*time.Second, "the file's run", func() bool { b, _ := os.ReadFile(out); return string(b) == "via file" })
	// Cron bridge as its own process.
	eventually(t, 30*time.Second, "two cron runs", func() bool {
		col.mu.Lock()
		defer col.mu.Unlock()
		n := 0
		for id, r := range col.finals {
			if strings.HasPrefix(id, "cron-") && r.State == record.Succeeded && string(col.results[id]) == "tock" {
				n++
			}
		}
		return n >= 2
	})
	if !strings.Contains(cronP.logs(), "next") {
		t.Errorf("the cron bridge did not log its entries' next run:\n%s", cronP.logs())
	}
}
