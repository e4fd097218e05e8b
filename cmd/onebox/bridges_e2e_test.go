package main

// End to end through the bridges inside `onebox up`: real curl, real files,
// a real cron entry, real containers.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/onebox-dev/onebox/internal/record"
)

const bridgeHandlers = shHandlers + `  gate:
    image: onebox/busybox:latest
    cmd: ["sleep", "3"]
    concurrency: 1
    queue: -1
  nap:
    image: onebox/busybox:latest
    cmd: ["sh", "-c", "sleep 4; echo rested"]
    timeout: 10s
`

// curl runs curl and returns the status code, headers and body.
func curl(t *testing.T, args ...string) (int, http.Header, []byte) {
	t.Helper()
	dir := t.TempDir()
	hf, bf := filepath.Join(dir, "h"), filepath.Join(dir, "b")
	full := append([]string{"-s", "-o", bf, "-D", hf, "-w", "%{http_code}"}, args...)
	out, err := exec.Command("curl", full...).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 28 { // 28: curl's own timeout
			t.Fatalf("curl %.200s: %v", strings.Join(args, " "), err)
		}
	}
	code := 0
	fmt.Sscanf(string(out), "%d", &code)
	h := http.Header{}
	raw, _ := os.ReadFile(hf)
	for _, line := range strings.Split(string(raw), "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			h.Add(strings.TrimSpace(k), strings.TrimSpace(v))
		}
	}
	body, _ := os.ReadFile(bf)
	return code, h, body
}

func TestE2EHTTPBridge(t *testing.T) {
	b := startBox(t, bridgeHandlers, "")
	base := "http://" + b.http
	payload := make([]byte, 300_000)
	rand.Read(payload)
	pf := filepath.Join(b.dir, "payload.bin")
	os.WriteFile(pf, payload, 0o644)

	code, h, body := curl(t, "--data-binary", "@"+pf, base+"/run/echo")
	if code != 200 || sha(body) != sha(payload) || !strings.HasPrefix(h.Get("X-Onebox-Id"), "http-") || h.Get("X-Onebox-Exit-Code") != "0" {
		t.Fatalf("echo: %d, %d bytes, headers %v", code, len(body), h)
	}
	if code, _, body := curl(t, base+"/run"); code != 200 || !bytes.Contains(body, []byte(`"message":"hello"`)) {
		t.Fatalf("GET /run (default handler hello): %d %q", code, body)
	}
	if code, h, body := curl(t, base+"/run/fail3"); code != 502 || h.Get("X-Onebox-Exit-Code") != "3" || string(body) != "partial\n" {
		t.Fatalf("fail3: %d %v %q", code, h, body)
	}
	if code, _, _ := curl(t, base+"/run/sleepy"); code != 504 {
		t.Fatalf("sleepy (timeout): %d", code)
	}
	if code, _, _ := curl(t, base+"/run/nosuch"); code != 404 {
		t.Fatalf("unknown handler: %d", code)
	}
	for _, p := range []string{"/run/Echo", "/run/%2e%2e", "/run/a%2Fb", "/run/a+b", "/run/%23", "/run/a%00"} {
		if code, _, _ := curl(t, base+p); code != 400 {
			t.Errorf("%s: %d, want 400", p, code)
		}
	}
	big := filepath.Join(b.dir, "big.bin")
	os.WriteFile(big, bytes.Repeat([]byte("x"), 2<<20), 0o644)
	if code, _, _ := curl(t, "--data-binary", "@"+big, base+"/run/echo"); code != 413 {
		t.Fatalf("2 MiB body: %d, want 413", code)
	}
	// Busy: gate runs one at a time with no queue.
	col := b.collect(t)
	first := make(chan int)
	go func() { c, _, _ := curl(t, base+"/run/gate"); first <- c }()
	eventually(t, 20*time.Second, "gate to run", func() bool {
		col.mu.Lock()
		defer col.mu.Unlock()
		for id, n := range col.runs {
			if strings.HasPrefix(id, "http-") && n > 0 {
				return true
			}
		}
		return false
	})
	if code, h, _ := curl(t, base+"/run/gate"); code != 429 || h.Get("X-Onebox-State") != record.Rejected {
		t.Fatalf("second gate: %d %v, want 429", code, h)
	}
	if c := <-first; c != 200 {
		t.Fatalf("first gate: %d", c)
	}
	// Async: 202 with the id, then the record.
	code, h, body = curl(t, base+"/run/hello?async=1")
	var acc struct{ ID string }
	json.Unmarshal(body, &acc)
	if code != 202 || acc.ID == "" || h.Get("Location") != "/runs/"+acc.ID {
		t.Fatalf("async: %d %v %q", code, h, body)
	}
	eventually(t, 30*time.Second, "the async run's record", func() bool {
		c, _, body := curl(t, base+"/runs/"+acc.ID)
		r, _ := record.Parse(body)
		return c == 200 && r.State == record.Succeeded && r.Source == record.SourceHTTP
	})
	// A client that hangs up early: the run goes on and its result is published.
	s := b.sub(t, "status/#")
	curl(t, "--max-time", "1", base+"/run/nap")
	eventually(t, 30*time.Second, "the abandoned run to finish", func() bool {
		for _, l := range s.match("status/http-") {
			if strings.Contains(l, `"state":"succeeded"`) && strings.Contains(l, `"handler":"nap"`) {
				return true
			}
		}
		return false
	})
	if code, _, body := curl(t, base+"/healthz"); code != 200 {
		t.Fatalf("healthz: %d %q", code, body)
	}
}

func TestE2EFileBridge(t *testing.T) {
	b := startBox(t, bridgeHandlers, "")
	inbox := filepath.Join(b.dir, "inbox", "echo")
	done := filepath.Join(b.dir, "done", "echo")
	names := []string{"plain.txt", "with space é ü 空.txt"}
	contents := map[string][]byte{}
	for _, n := range names {
		c := make([]byte, 70_000)
		rand.Read(c)
		contents[n] = c
		// Written under a temporary name, then renamed into place.
		tmp := filepath.Join(inbox, n+".part")
		if err := os.WriteFile(tmp, c, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Rename(tmp, filepath.Join(inbox, n))
	}
	// A failing run goes to failed/.
	os.MkdirAll(filepath.Join(b.dir, "inbox", "fail3"), 0o755)
	os.WriteFile(filepath.Join(b.dir, "inbox", "fail3", "x.txt"), []byte("x"), 0o644)
	for _, n := range names {
		out := filepath.Join(done, n+".out")
		eventually(t, 60*time.Second, "the run of "+n, func() bool { _, err := os.Stat(out); return err == nil })
		got, _ := os.ReadFile(out)
		moved, _ := os.ReadFile(filepath.Join(done, n))
		if sha(got) != sha(contents[n]) || sha(moved) != sha(contents[n]) {
			t.Fatalf("%s: result %d bytes, file %d bytes, want %d", n, len(got), len(moved), len(contents[n]))
		}
		st, _ := os.ReadFile(filepath.Join(done, n+".status.json"))
		r, err := record.Parse(st)
		if err != nil || r.State != record.Succeeded || r.Source != record.SourceFile {
			t.Fatalf("%s status: %v %+v", n, err, r)
		}
		if _, err := os.Stat(filepath.Join(inbox, n)); !os.IsNotExist(err) {
			t.Fatalf("%s is still in the inbox", n)
		}
	}
	failed := filepath.Join(b.dir, "failed", "fail3", "x.txt.status.json")
	eventually(t, 60*time.Second, "the failed run's file", func() bool { _, err := os.Stat(failed); return err == nil })
}

func TestE2ECronBridge(t *testing.T) {
	extra := "cron:\n  - name: tick\n    schedule: \"@every 1s\"\n    handler: hello\n  - name: long\n    schedule: \"@every 1s\"\n    handler: gate\n"
	b := startBox(t, bridgeHandlers, extra)
	col := b.collect(t)
	time.Sleep(7 * time.Second)
	col.mu.Lock()
	hello, gate, gateRunning := 0, 0, 0
	for _, r := range col.finals {
		if r.Source == record.SourceCron && r.Handler == "hello" && r.State == record.Succeeded {
			hello++
		}
		if r.Source == record.SourceCron && r.Handler == "gate" {
			gate++
			if r.State == record.Rejected {
				t.Errorf("a cron tick overlapped its own running entry and was rejected: %+v", r)
			}
		}
	}
	for id, n := range col.runs {
		if strings.HasPrefix(id, "cron-") {
			gateRunning += n
		}
	}
	col.mu.Unlock()
	if hello < 4 {
		t.Fatalf("@every 1s ran hello %d times in 7s", hello)
	}
	// gate sleeps 3s: in 7s at most 3 runs, never two at once (skipped ticks).
	if gate > 3 {
		t.Fatalf("the 3s entry ran %d times in 7s: it overlapped itself", gate)
	}
	if !strings.Contains(b.logs(), "skip") {
		t.Fatalf("no skipped tick was logged:\n%s", b.logs())
	}
}

func TestE2EHTTPTokensAndLimits(t *testing.T) {
	const tok = "test-token-0123456789abcdef"
	b := startBox(t, "  hello:\n    image: onebox/hello:latest\n", "")
	b.stop()
	// Restart with tokens: the config's http section gains tokens.
	cfg, _ := os.ReadFile(b.cfg)
	cfg = bytes.Replace(cfg, []byte("http:\n"), []byte("http:\n  tokens: ["+tok+"]\n"), 1)
	os.WriteFile(b.cfg, cfg, 0o644)
	b.start()
	base := "http://" + b.http
	if code, _, _ := curl(t, base+"/run/hello"); code != 401 {
		t.Fatalf("no token: %d, want 401", code)
	}
	if code, _, _ := curl(t, "-H", "X-Token: "+tok, base+"/run/hello"); code != 401 {
		t.Fatalf("token in the wrong header: %d, want 401", code)
	}
	if code, _, _ := curl(t, "-H", "Authorization: Bearer wrong-token-0123456789", base+"/run/hello"); code != 401 {
		t.Fatalf("wrong token: %d, want 401", code)
	}
	if code, _, body := curl(t, "-H", "Authorization: Bearer "+tok, base+"/run/hello"); code != 200 || !bytes.Contains(body, []byte("hello")) {
		t.Fatalf("right token: %d %q", code, body)
	}
	if code, _, _ := curl(t, base+"/healthz"); code != 200 {
		t.Fatalf("healthz without a token: %d", code)
	}
	// A 1 MB header is refused; the server keeps serving.
	// (curl refuses to send such a header itself: a raw request.)
	conn, err := net.Dial("tcp", b.http)
	if err != nil {
		t.Fatal(err)
	}
	go fmt.Fprintf(conn, "GET /run/hello HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nX-Big: %s\r\n\r\n", tok, strings.Repeat("a", 1<<20))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	status, _ := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if !strings.Contains(status, " 431 ") {
		t.Fatalf("1 MB header answered %q, want 431", status)
	}
	if code, _, _ := curl(t, "-H", "Authorization: Bearer "+tok, base+"/run/hello"); code != 200 {
		t.Fatalf("after the big header: %d", code)
	}
}
