package httpbridge

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/onebox-dev/onebox/internal/record"
	"github.com/onebox-dev/onebox/internal/runwait"
	"github.com/onebox-dev/onebox/internal/topics"
)

// Handler is the bridge's HTTP handler. It routes on the decoded r.URL.Path itself
// (no http.ServeMux: it would clean /run/%2e%2e into a redirect instead of a 400).
func (b *Bridge) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := &codeWriter{ResponseWriter: w, code: http.StatusOK}
		b.route(cw, r)
		b.metrics.count(cw.code)
	})
}

func (b *Bridge) route(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if p != "/healthz" && !b.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="onebox"`)
		text(w, http.StatusUnauthorized, "a bearer token is required: send Authorization: Bearer <token> (one of http.tokens in onebox.yaml)")
		return
	}
	switch {
	case p == "/healthz":
		if !allow(w, r, http.MethodGet, http.MethodHead) {
			return
		}
		if why := b.ready(); why != "" {
			text(w, http.StatusServiceUnavailable, why)
			return
		}
		text(w, http.StatusOK, "ok")
	case p == "/metrics":
		if !allow(w, r, http.MethodGet, http.MethodHead) {
			return
		}
		b.writeMetrics(w)
	case p == "/run":
		if !allow(w, r, http.MethodGet, http.MethodPost) {
			return
		}
		if b.o.DefaultHandler == "" {
			text(w, http.StatusNotFound, "no default handler is configured: use /run/<handler>, or set http.default_handler")
			return
		}
		b.run(w, r, b.o.DefaultHandler)
	case strings.HasPrefix(p, "/run/"):
		if !allow(w, r, http.MethodGet, http.MethodPost) {
			return
		}
		name := p[len("/run/"):]
		if strings.Contains(name, "/") {
			text(w, http.StatusBadRequest, "bad path: use /run/<handler> with no further path segment (is there an encoded / in the name?)")
			return
		}
		if !topics.ValidHandler(name) {
			text(w, http.StatusBadRequest, fmt.Sprintf("%v: %q", topics.ErrBadHandler, clip(name)))
			return
		}
		b.run(w, r, name)
	case strings.HasPrefix(p, "/runs/"):
		if !allow(w, r, http.MethodGet, http.MethodHead) {
			return
		}
		id, sub, _ := strings.Cut(p[len("/runs/"):], "/")
		if !topics.ValidID(id) || (sub != "" && sub != "result") || strings.Contains(sub, "/") {
			text(w, http.StatusNotFound, "no such run: use /runs/<id> or /runs/<id>/result")
			return
		}
		b.getRun(w, id, sub == "result")
	default:
		text(w, http.StatusNotFound, "not found: use POST /run/<handler>, GET /runs/<id> or GET /healthz")
	}
}

// run publishes one trigger and answers with its result (or 202 for ?async=1).
func (b *Bridge) run(w http.ResponseWriter, r *http.Request, handler string) {
	async := isTrue(r.URL.Query().Get("async"))
	if why := b.ready(); why != "" {
		text(w, http.StatusServiceUnavailable, why)
		return
	}
	id := IDPrefix + topics.NewID()
	topic := topics.Trigger(handler, id)
	limit := b.maxPayload(topic)
	if r.ContentLength > limit {
		w.Header().Set("Connection", "close")
		text(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body of %d bytes is larger than the %d bytes a trigger can carry (the broker's packet limit is %d)", r.ContentLength, limit, b.o.MaxBody))
		return
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit)); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			text(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body is larger than the %d bytes a trigger can carry (the broker's packet limit is %d)", limit, b.o.MaxBody))
			return
		}
		text(w, http.StatusBadRequest, "cannot read the request body: "+err.Error())
		return
	}
	wait := b.waitFor(handler)
	// The wait may outlast the server's WriteTimeout: move this request's write
	// deadline past it. (The read deadline is cleared by net/http once the body is
	// read, when it starts watching for the client to go away.)
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + publishWait + 5*time.Second))

	// Register before publishing, so that no fast answer is missed.
	var x *runwait.Wait
	if !async {
		x = b.waiter.Register(id)
		defer x.Cancel()
	}
	b.runs.add(id, handler, async)
	w.Header().Set("X-Onebox-Id", id)

	tok := b.client.Publish(topic, 1, false, buf.Bytes())
	pt := time.NewTimer(publishWait)
	defer pt.Stop()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			b.runs.remove(id)
			text(w, http.StatusServiceUnavailable, fmt.Sprintf("cannot publish the trigger for run %s: %v", id, err))
			return
		}
	case <-pt.C:
		text(w, http.StatusServiceUnavailable, fmt.Sprintf("the MQTT broker did not acknowledge the trigger for run %s within %s; it may still run: GET /runs/%s", id, publishWait, id))
		return
	case <-r.Context().Done():
		b.log.Info("client left before the trigger was acknowledged; the run goes on", "id", id, "handler", handler)
		return
	}
	b.log.Debug("published", "id", id, "handler", handler, "bytes", buf.Len(), "async", async)

	if async {
		w.Header().Set("Location", "/runs/"+id)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_ = json.NewEncoder(w).Encode(map[string]string{"id": id})
		return
	}

	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-x.Done():
		a := x.Answer()
		code := respond(w, id, a)
		b.log.Debug("run answered", "id", id, "handler", handler, "state", a.Record.State, "reason", a.Record.Reason, "code", code)
	case <-t.C:
		b.runs.keepResult(id)
		if e, ok := b.runs.get(id); ok {
			w.Header().Set("X-Onebox-State", e.rec.State)
		}
		w.Header().Set("Location", "/runs/"+id)
		text(w, http.StatusGatewayTimeout, fmt.Sprintf("run %s (%s) did not finish within %s; it goes on: GET /runs/%s", id, handler, wait, id))
		b.log.Info("run not finished in time; answered 504, the run goes on", "id", id, "handler", handler, "wait", wait)
	case <-r.Context().Done():
		// Already published: the run goes on (like Lambda's async invocations); only
		// the wait ends, and the deferred Cancel forgets the waiter.
		b.runs.keepResult(id)
		b.log.Info("client left before the answer; the run goes on", "id", id, "handler", handler)
	case <-b.ctx.Done():
		text(w, http.StatusServiceUnavailable, fmt.Sprintf("the bridge is shutting down; run %s goes on", id))
	}
}

// respond writes the answer of a finished run and returns the status code.
func respond(w http.ResponseWriter, id string, a runwait.Answer) int {
	r := a.Record
	h := w.Header()
	h.Set("X-Onebox-Id", id)
	h.Set("X-Onebox-State", r.State)
	if r.ExitCode != nil {
		h.Set("X-Onebox-Exit-Code", strconv.Itoa(*r.ExitCode))
	}
	if r.DurationMs > 0 || r.FinishedAt != nil {
		h.Set("X-Onebox-Duration-Ms", strconv.FormatInt(r.DurationMs, 10))
	}
	if r.Reason != "" {
		h.Set("X-Onebox-Reason", r.Reason)
	}
	if r.Truncated {
		h.Set("X-Onebox-Truncated", "true")
	}
	why := r.Reason
	switch {
	case r.Error == "":
	case strings.HasPrefix(r.Error, r.Reason):
		why = r.Error // the error already starts with the reason
	default:
		why += ": " + r.Error
	}
	switch r.State {
	case record.Succeeded:
		if !a.HasResult && r.StdoutBytes > 0 {
			return text(w, http.StatusBadGateway, fmt.Sprintf("run %s succeeded with %d bytes of stdout, but result/%s did not arrive", id, r.StdoutBytes, id))
		}
		return stdout(w, http.StatusOK, a.Result)
	case record.Failed:
		if r.ExitCode != nil && (r.Reason == "" || r.Reason == record.ReasonExit) {
			return stdout(w, http.StatusBadGateway, a.Result)
		}
		return text(w, http.StatusBadGateway, fmt.Sprintf("run %s (%s) failed: %s", id, r.Handler, why))
	case record.Timeout:
		return text(w, http.StatusGatewayTimeout, fmt.Sprintf("run %s (%s) timed out after %d ms and was stopped", id, r.Handler, r.DurationMs))
	case record.Rejected:
		code := http.StatusBadGateway
		switch r.Reason {
		case record.ReasonUnknownHandler:
			code = http.StatusNotFound
		case record.ReasonBusy:
			code = http.StatusTooManyRequests
			h.Set("Retry-After", "1")
		case record.ReasonTooLarge:
			code = http.StatusRequestEntityTooLarge
		case record.ReasonExpired:
			code = http.StatusGatewayTimeout
		case record.ReasonShutdown, record.ReasonInterrupted, record.ReasonEngine:
			code = http.StatusServiceUnavailable
		}
		return text(w, code, fmt.Sprintf("run %s (%s) rejected: %s", id, r.Handler, why))
	}
	return text(w, http.StatusBadGateway, fmt.Sprintf("run %s ended in an unknown state %q", id, r.State))
}

// getRun answers GET /runs/<id> (the latest record) and /runs/<id>/result.
func (b *Bridge) getRun(w http.ResponseWriter, id string, result bool) {
	e, ok := b.runs.get(id)
	if !ok {
		text(w, http.StatusNotFound, fmt.Sprintf("run %s is not known here (never started by this bridge, or evicted)", id))
		return
	}
	w.Header().Set("X-Onebox-Id", id)
	w.Header().Set("X-Onebox-State", e.rec.State)
	if !result {
		w.Header().Set("Content-Type", "application/json")
		if e.keep {
			w.Header().Set("Link", "</runs/"+id+"/result>; rel=\"result\"")
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(append(e.rec.Marshal(), '\n'))
		return
	}
	if !record.Final(e.rec.State) {
		text(w, http.StatusAccepted, fmt.Sprintf("run %s is %s; ask again later", id, e.rec.State))
		return
	}
	needsResult := e.rec.State == record.Succeeded || (e.rec.State == record.Failed && e.rec.ExitCode != nil)
	if needsResult && !e.hasResult {
		switch {
		case !e.keep:
			text(w, http.StatusGone, fmt.Sprintf("the stdout of run %s is not kept", id))
			return
		case e.dropped:
			text(w, http.StatusGone, fmt.Sprintf("the stdout of run %s was too large to keep", id))
			return
		case e.rec.StdoutBytes > 0 && time.Since(e.finalAt) < b.waiter.ResultGrace:
			text(w, http.StatusAccepted, fmt.Sprintf("run %s is %s; its result has not arrived yet", id, e.rec.State))
			return
		}
	}
	respond(w, id, runwait.Answer{Record: e.rec, Result: e.result, HasResult: e.hasResult})
}

func stdout(w http.ResponseWriter, code int, b []byte) int {
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	_, _ = w.Write(b)
	return code
}

func text(w http.ResponseWriter, code int, msg string) int {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, msg+"\n")
	return code
}

func allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	text(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed: use "+strings.Join(methods, " or "))
	return false
}

func isTrue(s string) bool {
	switch strings.ToLower(s) {
	case "1", "true", "yes", "on":
		return true
	}
	return false
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

func unmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// codeWriter remembers the status code for the metrics.
type codeWriter struct {
	http.ResponseWriter
	code int
}

func (c *codeWriter) WriteHeader(code int) {
	c.code = code
	c.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection's deadlines.
func (c *codeWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// metrics are a few counters for /metrics.
type metrics struct {
	mu    sync.Mutex
	codes map[int]uint64
}

func (m *metrics) count(code int) {
	m.mu.Lock()
	m.codes[code]++
	m.mu.Unlock()
}

func (b *Bridge) writeMetrics(w http.ResponseWriter) {
	var sb strings.Builder
	sb.WriteString("# HELP onebox_http_responses_total HTTP responses of the bridge by status code.\n# TYPE onebox_http_responses_total counter\n")
	b.metrics.mu.Lock()
	codes := make([]int, 0, len(b.metrics.codes))
	for c := range b.metrics.codes {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	for _, c := range codes {
		fmt.Fprintf(&sb, "onebox_http_responses_total{code=\"%d\"} %d\n", c, b.metrics.codes[c])
	}
	b.metrics.mu.Unlock()
	fmt.Fprintf(&sb, "# HELP onebox_http_waiting Runs the bridge is waiting for.\n# TYPE onebox_http_waiting gauge\nonebox_http_waiting %d\n", b.waiter.Len())
	n, bytes := b.runs.size()
	fmt.Fprintf(&sb, "# HELP onebox_http_kept_runs Runs whose record the bridge keeps.\n# TYPE onebox_http_kept_runs gauge\nonebox_http_kept_runs %d\n", n)
	fmt.Fprintf(&sb, "# HELP onebox_http_kept_bytes Bytes of stdout the bridge keeps.\n# TYPE onebox_http_kept_bytes gauge\nonebox_http_kept_bytes %d\n", bytes)
	up := 0
	if b.ready() == "" {
		up = 1
	}
	fmt.Fprintf(&sb, "# HELP onebox_http_ready 1 when connected and an invoker is online.\n# TYPE onebox_http_ready gauge\nonebox_http_ready %d\n", up)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_, _ = io.WriteString(w, sb.String())
}
