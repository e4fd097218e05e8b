// Package state defines onebox's retained system messages on onebox/…: the handler
// list an invoker serves (onebox/handlers) and each invoker's online/offline state
// (onebox/invoker/<name>, with a will that flips it to offline).
package state

import (
	"encoding/json"
	"time"
)

// HandlerInfo describes one handler as bridges need it.
type HandlerInfo struct {
	Name        string `json:"name"`
	Image       string `json:"image"`
	TimeoutMs   int64  `json:"timeout_ms"`
	Concurrency int    `json:"concurrency"`
	Queue       int    `json:"queue"`
}

// Handlers is the retained payload of onebox/handlers.
type Handlers struct {
	Invoker  string        `json:"invoker"`
	At       time.Time     `json:"at"`
	Handlers []HandlerInfo `json:"handlers"`
}

// Timeout returns the handler's timeout, or 0 when it is not listed.
func (h Handlers) Timeout(name string) time.Duration {
	for _, x := range h.Handlers {
		if x.Name == name {
			return time.Duration(x.TimeoutMs) * time.Millisecond
		}
	}
	return 0
}

// Invoker states.
const (
	Online  = "online"
	Offline = "offline"
)

// Invoker is the retained payload of onebox/invoker/<name>.
type Invoker struct {
	Invoker     string    `json:"invoker"`
	State       string    `json:"state"`
	At          time.Time `json:"at,omitzero"`
	Engine      string    `json:"engine,omitempty"`
	MemoryLimit *bool     `json:"memory_limit,omitempty"` // false: the engine cannot enforce memory limits
	Warning     string    `json:"warning,omitempty"`
}

// Marshal encodes v as JSON.
func Marshal(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
