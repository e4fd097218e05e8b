// Package record defines the run record published on status/<id>: one JSON object
// per state change (queued, running, and a final state).
package record

import (
	"encoding/json"
	"time"
)

// States of a run.
const (
	Queued    = "queued"
	Running   = "running"
	Succeeded = "succeeded"
	Failed    = "failed"
	Timeout   = "timeout"
	Rejected  = "rejected"
)

// Reasons, for rejected and failed runs.
const (
	ReasonUnknownHandler = "unknown handler"
	ReasonBusy           = "busy"
	ReasonExpired        = "expired"
	ReasonTooLarge       = "too large"
	ReasonImageMissing   = "image missing"
	ReasonWrongPlatform  = "wrong platform"
	ReasonOOM            = "oom"
	ReasonExit           = "non-zero exit"
	ReasonEngine         = "engine unavailable"
	ReasonRuntime        = "runtime error"
	ReasonShutdown       = "shutdown"
	ReasonInterrupted    = "interrupted"
)

// Sources of a trigger.
const (
	SourceMQTT = "mqtt"
	SourceHTTP = "http"
	SourceFile = "file"
	SourceCron = "cron"
)

// Record is the run record of the design (Lambda's REPORT line, as JSON).
type Record struct {
	ID             string     `json:"id"`
	Handler        string     `json:"handler"`
	Image          string     `json:"image,omitempty"`
	Source         string     `json:"source"`
	State          string     `json:"state"`
	Reason         string     `json:"reason,omitempty"`
	Error          string     `json:"error,omitempty"`
	ExitCode       *int       `json:"exit_code,omitempty"`
	QueuedAt       *time.Time `json:"queued_at,omitempty"`
	StartedAt      *time.Time `json:"started_at,omitempty"`
	FinishedAt     *time.Time `json:"finished_at,omitempty"`
	DurationMs     int64      `json:"duration_ms,omitempty"`
	StartMs        int64      `json:"start_ms,omitempty"`
	MaxMemoryBytes int64      `json:"max_memory_bytes,omitempty"`
	CPUMs          int64      `json:"cpu_ms,omitempty"`
	StdoutBytes    int64      `json:"stdout_bytes"`
	Truncated      bool       `json:"truncated"`
	Stderr         string     `json:"stderr,omitempty"`
	Redelivered    bool       `json:"redelivered,omitempty"`
	Invoker        string     `json:"invoker"`
}

// Final reports whether state ends a run.
func Final(state string) bool {
	switch state {
	case Succeeded, Failed, Timeout, Rejected:
		return true
	}
	return false
}

// Marshal encodes r as one JSON object.
func (r Record) Marshal() []byte {
	b, _ := json.Marshal(r)
	return b
}

// Parse decodes a status payload.
func Parse(b []byte) (Record, error) {
	var r Record
	err := json.Unmarshal(b, &r)
	return r, err
}

// TimePtr returns a pointer to t in UTC, or nil for the zero time.
func TimePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// IntPtr returns &v.
func IntPtr(v int) *int { return &v }
