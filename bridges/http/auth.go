package httpbridge

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// authorized reports whether r carries one of the configured bearer tokens (or
// none are configured). Tokens are compared as SHA-256 digests in constant time,
// so neither their content nor their length leaks through timing.
func (b *Bridge) authorized(r *http.Request) bool {
	if len(b.o.Tokens) == 0 {
		return true
	}
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	match := 0
	for _, t := range b.o.Tokens {
		want := sha256.Sum256([]byte(t))
		match |= subtle.ConstantTimeCompare(got[:], want[:])
	}
	return match == 1
}
