package httpbridge

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/onebox-dev/onebox/internal/record"
	"github.com/onebox-dev/onebox/internal/runwait"
	"github.com/onebox-dev/onebox/internal/state"
	"github.com/onebox-dev/onebox/internal/topics"
)

func TestMain(m *testing.M) {
	if _, err := exec.LookPath("curl"); err != nil {
		fmt.Fprintln(os.Stderr, "these tests need curl: apt-get install curl")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func writeFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func wantHeader(t *testing.T, r curlResult, key, want string) {
	t.Helper()
	if got := r.header.Get(key); got != want {
		t.Errorf("%s = %q, want %q (code %d, body %q)", key, got, want, r.code, r.body)
	}
}

func wantID(t *testing.T, r curlResult) string {
	t.Helper()
	id := r.header.Get("X-Onebox-Id")
	if !strings.HasPrefix(id, IDPrefix) || !topics.ValidID(id) {
		t.Errorf("X-Onebox-Id = %q: want a valid id starting with %q", id, IDPrefix)
	}
	return id
}

// TestCurl drives one bridge with the real curl through every answer it gives.
func TestCurl(t *testing.T) {
	e := newEnv(t, true, nil)

	t.Run("200 binary exact bytes", func(t *testing.T) {
		data := make([]byte, 300<<10)
		_, _ = rand.Read(data)
		r := curl(t, e.base+"/run/echo", "--data-binary", "@"+writeFile(t, data), "-H", "Content-Type: application/octet-stream")
		if r.code != http.StatusOK {
			t.Fatalf("code %d, body %q", r.code, r.body)
		}
		if sha256.Sum256(r.body) != sha256.Sum256(data) {
			t.Fatalf("body differs: %d bytes back for %d sent", len(r.body), len(data))
		}
		id := wantID(t, r)
		wantHeader(t, r, "Content-Type", "application/octet-stream")
		wantHeader(t, r, "X-Onebox-State", record.Succeeded)
		wantHeader(t, r, "X-Onebox-Exit-Code", "0")
		if r.header.Get("X-Onebox-Duration-Ms") == "" {
			t.Errorf("no X-Onebox-Duration-Ms")
		}
		// The trigger went on trigger/echo/<id> with the body verbatim.
		found := false
		for _, tp := range e.fake.topicsSeen() {
			found = found || tp == topics.Trigger("echo", id)
		}
		if !found || !bytes.Equal(e.fake.payload(id), data) {
			t.Errorf("the invoker did not get the body on %s (seen %v)", topics.Trigger("echo", id), e.fake.topicsSeen())
		}
		// Sync runs are not waited for any more, and their record stays readable.
		eventually(t, time.Second, "runwait forgets the id", func() bool { return e.b.waiter.Len() == 0 })
		code, body := get(t, e.base+"/runs/"+id)
		if rec, err := record.Parse([]byte(body)); code != 200 || err != nil || rec.State != record.Succeeded || rec.Source != record.SourceHTTP {
			t.Errorf("GET /runs/%s = %d %s", id, code, body)
		}
	})

	t.Run("GET /run runs the default handler", func(t *testing.T) {
		r := curl(t, e.base+"/run")
		if r.code != http.StatusOK || len(r.body) != 0 {
			t.Fatalf("code %d body %q", r.code, r.body)
		}
		id := wantID(t, r)
		if !strings.HasPrefix(e.fake.topicsSeen()[e.fake.count()-1], "trigger/echo/"+id) {
			t.Errorf("GET /run did not trigger echo: %v", e.fake.topicsSeen())
		}
		r = curl(t, e.base+"/run/rev?x=1", "-G")
		if r.code != http.StatusOK {
			t.Errorf("GET /run/rev: %d", r.code)
		}
	})

	t.Run("502 exit code and stdout", func(t *testing.T) {
		r := curl(t, e.base+"/run/fail", "-d", "x")
		if r.code != http.StatusBadGateway || string(r.body) != "partial output\n" {
			t.Fatalf("code %d body %q", r.code, r.body)
		}
		wantHeader(t, r, "X-Onebox-Exit-Code", "3")
		wantHeader(t, r, "X-Onebox-State", record.Failed)
		wantHeader(t, r, "Content-Type", "application/octet-stream")
	})

	t.Run("502 image missing is a text reason", func(t *testing.T) {
		r := curl(t, e.base+"/run/oops", "-d", "x")
		if r.code != http.StatusBadGateway || !strings.Contains(string(r.body), "image missing") {
			t.Fatalf("code %d body %q", r.code, r.body)
		}
		wantHeader(t, r, "Content-Type", "text/plain; charset=utf-8")
		wantHeader(t, r, "X-Onebox-Reason", record.ReasonImageMissing)
	})

	t.Run("404 429 413 from the invoker", func(t *testing.T) {
		for _, c := range []struct {
			h      string
			code   int
			reason string
		}{{"nope", 404, record.ReasonUnknownHandler}, {"busy", 429, record.ReasonBusy}, {"big", 413, record.ReasonTooLarge}} {
			r := curl(t, e.base+"/run/"+c.h, "-d", "x")
			if r.code != c.code {
				t.Errorf("%s: code %d, want %d (body %q)", c.h, r.code, c.code, r.body)
			}
			wantID(t, r)
			wantHeader(t, r, "X-Onebox-State", record.Rejected)
			wantHeader(t, r, "X-Onebox-Reason", c.reason)
			if !strings.Contains(string(r.body), c.reason) {
				t.Errorf("%s: body %q does not give the reason", c.h, r.body)
			}
		}
	})

	t.Run("result after the final status", func(t *testing.T) {
		r := curl(t, e.base+"/run/late")
		if r.code != http.StatusOK || string(r.body) != "late result" {
			t.Fatalf("code %d body %q", r.code, r.body)
		}
	})

	t.Run("504 after the handler timeout plus margin", func(t *testing.T) {
		r := curl(t, e.base+"/run/slow", "-d", "x")
		if r.code != http.StatusGatewayTimeout {
			t.Fatalf("code %d body %q", r.code, r.body)
		}
		id := wantID(t, r)
		if !strings.Contains(string(r.body), id) {
			t.Errorf("504 body %q does not name the id", r.body)
		}
		// handler timeout 1s (retained list) + margin 0.5s, not the 2s default.
		if r.took < 1400*time.Millisecond || r.took > 2300*time.Millisecond {
			t.Errorf("504 came after %s, want about 1.5s", r.took)
		}
		wantHeader(t, r, "X-Onebox-State", record.Running)
		wantHeader(t, r, "Location", "/runs/"+id)
		// The run goes on and its record and stdout stay readable.
		eventually(t, 4*time.Second, "the slow run ends", func() bool { return e.fake.done(id) })
		eventually(t, time.Second, "the record says timeout", func() bool {
			_, body := get(t, e.base+"/runs/"+id)
			return strings.Contains(body, `"state":"timeout"`)
		})
		rr := curl(t, e.base+"/runs/"+id+"/result")
		if rr.code != http.StatusGatewayTimeout {
			t.Errorf("GET /runs/%s/result = %d %q", id, rr.code, rr.body)
		}
	})

	t.Run("400 bad names never reach a topic", func(t *testing.T) {
		before := e.fake.count()
		for _, p := range []string{"/run/Echo", "/run/%2e%2e", "/run/..", "/run/a%2Fb", "/run/a+b", "/run/%23", "/run/a%00", "/run/", "/run/echo/extra", "/run/%2Fecho", "/run/-x", "/run/" + strings.Repeat("a", 64), "/run/h%C3%A9"} {
			r := curl(t, e.base+p, "-d", "x")
			if r.code != http.StatusBadRequest {
				t.Errorf("%s: code %d, want 400 (body %q)", p, r.code, r.body)
			}
			wantHeader(t, r, "Content-Type", "text/plain; charset=utf-8")
		}
		time.Sleep(100 * time.Millisecond)
		if n := e.fake.count(); n != before {
			t.Errorf("%d triggers were published for bad names: %v", n-before, e.fake.topicsSeen()[before:])
		}
	})

	t.Run("413 body larger than the packet limit", func(t *testing.T) {
		before := e.fake.count()
		big := writeFile(t, bytes.Repeat([]byte("z"), 2<<20))
		r := curl(t, e.base+"/run/echo", "--data-binary", "@"+big)
		if r.code != http.StatusRequestEntityTooLarge {
			t.Fatalf("code %d body %q", r.code, r.body)
		}
		// Chunked: no Content-Length, cut off by MaxBytesReader.
		r = curl(t, e.base+"/run/echo", "--data-binary", "@"+big, "-H", "Transfer-Encoding: chunked")
		if r.code != http.StatusRequestEntityTooLarge {
			t.Fatalf("chunked: code %d body %q", r.code, r.body)
		}
		// Refused on Content-Length alone: announce 2 MiB, send 1 KiB, and the answer
		// comes at once (a bridge reading it whole would wait for the rest).
		c, err := net.Dial("tcp", e.b.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST /run/echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", 2<<20, strings.Repeat("z", 1024))
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer to an announced 2 MiB body: %v", err)
		}
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("announced 2 MiB: code %d", resp.StatusCode)
		}
		time.Sleep(100 * time.Millisecond)
		if n := e.fake.count(); n != before {
			t.Errorf("%d triggers were published for bodies too large", n-before)
		}
	})

	t.Run("async 202 then GET /runs", func(t *testing.T) {
		r := curl(t, e.base+"/run/rev?async=1", "-d", "abc")
		if r.code != http.StatusAccepted {
			t.Fatalf("code %d body %q", r.code, r.body)
		}
		var got struct{ ID string }
		if err := json.Unmarshal(r.body, &got); err != nil || got.ID != r.header.Get("X-Onebox-Id") {
			t.Fatalf("body %q: %v", r.body, err)
		}
		wantID(t, r)
		wantHeader(t, r, "Location", "/runs/"+got.ID)
		var rec record.Record
		eventually(t, 3*time.Second, "the async run succeeds", func() bool {
			rr := curl(t, e.base+"/runs/"+got.ID)
			rec, _ = record.Parse(rr.body)
			return rr.code == 200 && rec.State == record.Succeeded
		})
		if rec.ID != got.ID || rec.Handler != "rev" || rec.Source != record.SourceHTTP || rec.StdoutBytes != 3 {
			t.Errorf("record %+v", rec)
		}
		rr := curl(t, e.base+"/runs/"+got.ID+"/result")
		if rr.code != http.StatusOK || string(rr.body) != "cba" {
			t.Errorf("result: %d %q", rr.code, rr.body)
		}
		if rr := curl(t, e.base+"/runs/http-nosuch"); rr.code != http.StatusNotFound {
			t.Errorf("unknown run: %d", rr.code)
		}
	})

	t.Run("healthz and metrics", func(t *testing.T) {
		r := curl(t, e.base+"/healthz")
		if r.code != 200 || string(r.body) != "ok\n" {
			t.Errorf("healthz %d %q", r.code, r.body)
		}
		r = curl(t, e.base+"/metrics")
		if r.code != 200 || !strings.Contains(string(r.body), `onebox_http_responses_total{code="200"}`) || !strings.Contains(string(r.body), "onebox_http_ready 1") {
			t.Errorf("metrics %d %q", r.code, r.body)
		}
	})

	t.Run("client hangs up early: the run goes on, nothing leaks", func(t *testing.T) {
		time.Sleep(200 * time.Millisecond) // let earlier connections wind down
		base := runtime.NumGoroutine()
		before := e.fake.count()
		r := curl(t, e.base+"/run/slow", "--max-time", "1", "-d", "x")
		if r.exit != 28 || r.took > 1500*time.Millisecond {
			t.Fatalf("curl exit %d after %s, want 28 (timeout) after 1s", r.exit, r.took)
		}
		eventually(t, time.Second, "the trigger was published", func() bool { return e.fake.count() == before+1 })
		_, id, _ := topics.ParseTrigger(e.fake.topicsSeen()[before])
		eventually(t, time.Second, "the waiter is forgotten", func() bool { return e.b.waiter.Len() == 0 })
		eventually(t, 4*time.Second, "the run ends", func() bool { return e.fake.done(id) })
		eventually(t, 3*time.Second, fmt.Sprintf("goroutines back near %d", base), func() bool { return runtime.NumGoroutine() <= base+2 })
		code, body := get(t, e.base+"/runs/"+id)
		if code != 200 || !strings.Contains(body, `"state":"timeout"`) {
			t.Errorf("the run did not go on to its end: %d %s", code, body)
		}
		if rr := curl(t, e.base+"/runs/"+id+"/result"); rr.code != http.StatusGatewayTimeout {
			t.Errorf("result of the abandoned run: %d", rr.code)
		}
	})
}

// TestBodyLimitExact: the largest body that fits the broker's 1 MiB packet limit
// goes through the broker; one byte more is 413 and nothing is published.
func TestBodyLimitExact(t *testing.T) {
	e := newEnv(t, true, nil)
	limit := e.b.maxPayload(topics.Trigger("echo", IDPrefix+topics.NewID()))
	if limit < testMaxPacket-200 || limit >= testMaxPacket {
		t.Fatalf("max payload %d for a %d packet limit", limit, testMaxPacket)
	}
	post := func(n int64) (int, []byte) {
		resp, err := http.Post(e.base+"/run/echo", "application/octet-stream", bytes.NewReader(bytes.Repeat([]byte{'q'}, int(n))))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if code, b := post(limit); code != 200 || int64(len(b)) != limit {
		t.Fatalf("body of exactly %d: %d, %d bytes back", limit, code, len(b))
	}
	before := e.fake.count()
	if code, _ := post(limit + 1); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("body of %d: %d, want 413", limit+1, code)
	}
	time.Sleep(100 * time.Millisecond)
	if e.fake.count() != before {
		t.Errorf("an oversized body was published")
	}
	// The bridge's MQTT connection survived the large publishes.
	e.waitHealth(t, 200, time.Second)
}

// TestNoInvoker: 503 at once while no invoker is online, 200 once one is.
func TestNoInvoker(t *testing.T) {
	e := newEnv(t, false, nil)
	body := e.waitHealth(t, http.StatusServiceUnavailable, 3*time.Second)
	if !strings.Contains(body, "no invoker online") {
		// The first answer may still be "not connected"; wait for the real reason.
		eventually(t, 3*time.Second, "healthz says no invoker", func() bool {
			_, b := get(t, e.base+"/healthz")
			return strings.Contains(b, "no invoker online")
		})
	}
	r := curl(t, e.base+"/run/echo", "-d", "x")
	if r.code != http.StatusServiceUnavailable || !strings.Contains(string(r.body), "no invoker online") || r.took > time.Second {
		t.Fatalf("code %d after %s, body %q", r.code, r.took, r.body)
	}
	f := startFake(t, e.broker.url())
	e.waitHealth(t, http.StatusOK, 3*time.Second)
	if r := curl(t, e.base+"/run/echo", "-d", "hi"); r.code != 200 || string(r.body) != "hi" {
		t.Fatalf("with an invoker: %d %q", r.code, r.body)
	}
	f.setState(state.Offline)
	e.waitHealth(t, http.StatusServiceUnavailable, 3*time.Second)
	if r := curl(t, e.base+"/run/echo", "-d", "x"); r.code != http.StatusServiceUnavailable {
		t.Fatalf("invoker offline: %d", r.code)
	}
	if f.count() != 1 {
		t.Errorf("the invoker got %d triggers, want 1", f.count())
	}
}

// TestBrokerStopped: 503 at once while the broker is gone, and the bridge comes
// back by itself when it returns.
func TestBrokerStopped(t *testing.T) {
	e := newEnv(t, true, nil)
	e.broker.stop()
	e.waitHealth(t, http.StatusServiceUnavailable, 3*time.Second)
	r := curl(t, e.base+"/run/echo", "-d", "x")
	if r.code != http.StatusServiceUnavailable || r.took > time.Second || !strings.Contains(string(r.body), "not connected") {
		t.Fatalf("broker stopped: code %d after %s, body %q", r.code, r.took, r.body)
	}
	// A new broker on the same address: the bridge and the invoker reconnect.
	nb := startBroker(t, e.broker.addr)
	_ = nb
	e.waitHealth(t, http.StatusOK, 10*time.Second)
	if r := curl(t, e.base+"/run/rev", "-d", "ab"); r.code != 200 || string(r.body) != "ba" {
		t.Fatalf("after reconnecting: %d %q", r.code, r.body)
	}
}

// TestStartWithoutBroker: Start does not fail when the broker is down.
func TestStartWithoutBroker(t *testing.T) {
	addr := freeAddr(t)
	b, err := New(Options{Listen: "127.0.0.1:0", BrokerURL: "tcp://" + addr, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{}
	start := time.Now()
	e.start(t, b)
	if time.Since(start) > time.Second {
		t.Errorf("Start took %s with the broker down", time.Since(start))
	}
	r := curl(t, e.base+"/run/echo", "-d", "x")
	if r.code != http.StatusServiceUnavailable || r.took > time.Second {
		t.Fatalf("code %d after %s", r.code, r.took)
	}
	if r := curl(t, e.base+"/run"); r.code != http.StatusNotFound {
		t.Errorf("GET /run without a default handler: %d", r.code)
	}
	br := startBroker(t, addr)
	startFake(t, br.url())
	e.waitHealth(t, http.StatusOK, 10*time.Second)
}

// TestWaitOutlastsServerTimeouts: a wait longer than the server's ReadTimeout and
// WriteTimeout still gets its answer (run requests set their own write deadline).
func TestWaitOutlastsServerTimeouts(t *testing.T) {
	e := &env{broker: startBroker(t, "127.0.0.1:0")}
	e.fake = startFake(t, e.broker.url())
	b, err := New(Options{Listen: "127.0.0.1:0", BrokerURL: e.broker.url(), Margin: time.Second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	b.readTimeout, b.writeTimeout = 500*time.Millisecond, 500*time.Millisecond
	e.start(t, b)
	e.waitHealth(t, 200, 5*time.Second)
	r := curl(t, e.base+"/run/sleepy", "-d", "x")
	if r.code != 200 || string(r.body) != "slept" {
		t.Fatalf("code %d body %q after %s", r.code, r.body, r.took)
	}
}

// TestRoutes covers the routes that need no broker, through Handler().
func TestRoutes(t *testing.T) {
	b, err := New(Options{Logger: quiet, DefaultHandler: "hello"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		method, target string
		code           int
	}{
		{"GET", "/run/Echo", 400},
		{"POST", "/run/a%2Fb", 400},
		{"POST", "/run/%2e%2e", 400},
		{"POST", "/run/echo", 503}, // not started: not connected
		{"GET", "/run", 503},
		{"PUT", "/run/echo", 405},
		{"DELETE", "/runs/x", 405},
		{"GET", "/runs/x", 404},
		{"GET", "/runs/x/y", 404},
		{"GET", "/runs/%2e", 404},
		{"GET", "/nothing", 404},
		{"GET", "/healthz", 503},
	} {
		w := httptest.NewRecorder()
		b.Handler().ServeHTTP(w, httptest.NewRequest(c.method, c.target, nil))
		if w.Code != c.code {
			t.Errorf("%s %s = %d, want %d (%q)", c.method, c.target, w.Code, c.code, w.Body.String())
		}
	}
	if _, err := New(Options{DefaultHandler: "Bad"}); err == nil {
		t.Errorf("New accepted a bad default handler")
	}
	if _, err := New(Options{MaxBody: 100}); err == nil {
		t.Errorf("New accepted a 100-byte packet limit")
	}
}

// TestRespond maps every final record to its status code.
func TestRespond(t *testing.T) {
	ran := record.TimePtr(time.Now())
	for _, c := range []struct {
		rec  record.Record
		res  []byte
		code int
		body string
	}{
		{record.Record{State: record.Succeeded, ExitCode: record.IntPtr(0), StartedAt: ran, StdoutBytes: 2}, []byte("hi"), 200, "hi"},
		{record.Record{State: record.Succeeded, ExitCode: record.IntPtr(0), StartedAt: ran, StdoutBytes: 2}, nil, 502, ""},
		{record.Record{State: record.Failed, Reason: record.ReasonExit, ExitCode: record.IntPtr(1), StartedAt: ran}, []byte("out"), 502, "out"},
		{record.Record{State: record.Failed, Reason: record.ReasonOOM, ExitCode: record.IntPtr(137), StartedAt: ran}, []byte("out"), 502, ""},
		{record.Record{State: record.Failed, Reason: record.ReasonWrongPlatform}, nil, 502, ""},
		{record.Record{State: record.Timeout, StartedAt: ran}, nil, 504, ""},
		{record.Record{State: record.Rejected, Reason: record.ReasonUnknownHandler}, nil, 404, ""},
		{record.Record{State: record.Rejected, Reason: record.ReasonBusy}, nil, 429, ""},
		{record.Record{State: record.Rejected, Reason: record.ReasonTooLarge}, nil, 413, ""},
		{record.Record{State: record.Rejected, Reason: record.ReasonExpired}, nil, 504, ""},
		{record.Record{State: record.Rejected, Reason: record.ReasonShutdown}, nil, 503, ""},
	} {
		w := httptest.NewRecorder()
		got := respond(w, "i", runwait.Answer{Record: c.rec, Result: c.res, HasResult: c.res != nil})
		if got != c.code || w.Code != c.code {
			t.Errorf("%s/%s: %d, want %d", c.rec.State, c.rec.Reason, w.Code, c.code)
		}
		if c.body != "" && w.Body.String() != c.body {
			t.Errorf("%s/%s: body %q, want %q", c.rec.State, c.rec.Reason, w.Body.String(), c.body)
		}
	}
}

// TestRunStoreBounds: the kept runs are bounded in count and bytes, oldest first.
func TestRunStoreBounds(t *testing.T) {
	s := newRunStore(3, 10)
	for _, id := range []string{"a", "b", "c", "d"} {
		s.add(id, "h", true)
	}
	if _, ok := s.get("a"); ok {
		t.Errorf("the oldest run was not evicted past the count")
	}
	s.handle("result/b", []byte("12345"))
	s.handle("result/c", []byte("12345"))
	if n, by := s.size(); n != 3 || by != 10 {
		t.Errorf("size %d runs %d bytes", n, by)
	}
	s.handle("result/d", []byte("123"))
	if _, ok := s.get("b"); ok {
		t.Errorf("the oldest run was not evicted past the bytes")
	}
	if e, ok := s.get("d"); !ok || string(e.result) != "123" {
		t.Errorf("the newest result was not kept")
	}
	s.add("e", "h", true)
	s.handle("result/e", bytes.Repeat([]byte("x"), 11)) // larger than the whole budget
	if e, _ := s.get("e"); !e.dropped || e.hasResult {
		t.Errorf("an oversized result was kept")
	}
	// States never step back.
	s.handle("status/d", record.Record{ID: "d", State: record.Running}.Marshal())
	s.handle("status/d", record.Record{ID: "d", State: record.Queued}.Marshal())
	if e, _ := s.get("d"); e.rec.State != record.Running {
		t.Errorf("state went back to %s", e.rec.State)
	}
	s.handle("status/d", record.Record{ID: "x", State: record.Succeeded}.Marshal())
	if e, _ := s.get("d"); e.rec.State != record.Running {
		t.Errorf("a record for another id was taken")
	}
}
