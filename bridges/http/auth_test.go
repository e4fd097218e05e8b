package httpbridge

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/onebox-dev/onebox/internal/topics"
)

func TestBearerTokens(t *testing.T) {
	b := &Bridge{o: Options{Tokens: []string{"0123456789abcdef-one", "0123456789abcdef-two"}}}
	cases := []struct {
		header string
		ok     bool
	}{
		{"Bearer 0123456789abcdef-one", true},
		{"bearer 0123456789abcdef-two", true},
		{"Bearer 0123456789abcdef-on", false},
		{"Bearer 0123456789abcdef-one2", false},
		{"Basic 0123456789abcdef-one", false},
		{"0123456789abcdef-one", false},
		{"", false},
	}
	for _, c := range cases {
		r := httptest.NewRequest(http.MethodGet, "/run/hello", nil)
		if c.header != "" {
			r.Header.Set("Authorization", c.header)
		}
		if got := b.authorized(r); got != c.ok {
			t.Errorf("Authorization %q: %v, want %v", c.header, got, c.ok)
		}
	}
	// A token in the wrong header does not count.
	r := httptest.NewRequest(http.MethodGet, "/run/hello", nil)
	r.Header.Set("X-Token", "0123456789abcdef-one")
	if b.authorized(r) {
		t.Error("a token in X-Token was accepted")
	}
	rec := httptest.NewRecorder()
	b.route(rec, r)
	if rec.Code != http.StatusUnauthorized || rec.Header().Get("WWW-Authenticate") == "" {
		t.Errorf("unauthorized request answered %d", rec.Code)
	}
	if open := (&Bridge{}); !open.authorized(r) {
		t.Error("a bridge without tokens refused a request")
	}
}

// FuzzRunPath: whatever the request path, a handler name reaches a trigger topic
// only when, decoded, it is a valid handler name (no /, +, #, NUL, .., capitals).
func FuzzRunPath(f *testing.F) {
	for _, s := range []string{"/run/echo", "/run/%2e%2e", "/run/a%2Fb", "/run/a+b", "/run/%23", "/run/a%00", "/run/Echo", "/run/echo/x", "/run//"} {
		f.Add(s)
	}
	// Made but not started: not connected, so a request that passes validation
	// is answered 503 (and the run store exists for /runs/<id>).
	b, err := New(Options{BrokerURL: "tcp://127.0.0.1:1", DefaultHandler: "hello"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.ParseRequestURI(raw)
		if err != nil {
			return
		}
		r := &http.Request{Method: http.MethodGet, URL: u, Header: http.Header{}}
		rec := httptest.NewRecorder()
		b.route(rec, r)
		if rec.Code == http.StatusServiceUnavailable {
			name := strings.TrimPrefix(u.Path, "/run/")
			if u.Path == "/run" {
				return // the configured default handler
			}
			if !topics.ValidHandler(name) || strings.ContainsAny(name, "/+#\x00.") {
				t.Fatalf("path %q reached a run with handler %q", raw, name)
			}
		}
	})
}
