// Package container is the seam between the invoker and a container engine: what
// one run asks for (Spec), what it gave back (Result), and the small Runtime
// interface that invoker/docker implements against the Docker Engine API (and
// Podman's Docker-compatible socket) and that tests fake.
package container

import (
	"context"
	"errors"
	"time"
)

// Labels put on every container onebox creates.
const (
	LabelManaged  = "io.onebox.managed"  // "true"
	LabelInstance = "io.onebox.instance" // the invoker's instance name
	LabelRunID    = "io.onebox.run-id"
	LabelHandler  = "io.onebox.handler"
)

// Errors a Runtime returns; wrap them with details (image name, platforms, fix).
var (
	ErrImageMissing      = errors.New("image missing")
	ErrWrongPlatform     = errors.New("wrong platform")
	ErrEngineUnavailable = errors.New("container engine unavailable")
)

// Mount is a bind mount.
type Mount struct {
	Source   string // absolute host path
	Target   string // path in the container
	ReadOnly bool
}

// Spec is one run.
type Spec struct {
	ID       string
	Handler  string
	Instance string // invoker instance name, for the instance label
	Image    string
	Cmd      []string // optional override of the image's command
	Env      []string // KEY=VALUE, including ONEBOX_ID, ONEBOX_HANDLER, ONEBOX_TOPIC
	Stdin    []byte   // the payload; the container sees EOF after it

	Timeout time.Duration // stop after this (SIGTERM, Grace, SIGKILL)
	Grace   time.Duration // between SIGTERM and SIGKILL

	MemoryBytes   int64  // hard memory limit (and swap equal to it)
	NanoCPUs      int64  // 0 = no CPU quota
	CPUShares     int64  // relative weight, 0 = engine default
	PidsLimit     int64  // 0 = engine default
	TmpfsBytes    int64  // size of the tmpfs at /tmp
	Network       string // "none" by default; a named network when loosened
	Mounts        []Mount
	User          string // "" = image default
	WritableRoot  bool   // false = read-only root filesystem (the default)
	KeepCaps      bool   // false = drop all capabilities (the default)
	Privileged    bool   // only with the handler's explicit unsafe: true
	StdoutCap     int64  // keep at most this many bytes of stdout, drain the rest
	StderrTailCap int    // keep the last this many bytes of stderr
	Labels        map[string]string
}

// Result is what a finished run gave back.
type Result struct {
	ExitCode       int
	Stdout         []byte // at most Spec.StdoutCap bytes
	StdoutBytes    int64  // every byte the container wrote to stdout
	Truncated      bool   // StdoutBytes > len(Stdout)
	Stderr         []byte // the tail of stderr
	OOMKilled      bool
	TimedOut       bool
	CreatedAt      time.Time
	StartedAt      time.Time
	FinishedAt     time.Time
	StartMs        int64 // create to running: the cold start
	MaxMemoryBytes int64 // 0 when the engine does not report it
	CPUMs          int64 // 0 when the engine does not report it
}

// ImageInfo describes a local image.
type ImageInfo struct {
	ID           string
	Size         int64
	OS           string
	Architecture string
	Variant      string
}

// EngineInfo describes the engine.
type EngineInfo struct {
	Name          string // docker, podman
	Version       string
	OS            string
	Architecture  string // GOARCH spelling: amd64, arm64, arm
	Variant       string // v7 for armv7 where known
	MemoryLimit   bool   // false when the memory cgroup is off (Raspberry Pi OS default)
	CgroupVersion string
	NCPU          int
	MemTotal      int64
}

// Runtime runs containers.
type Runtime interface {
	// Run creates, attaches, starts, feeds and waits for one container, and removes
	// it in every case. started is called once the container is running. A run that
	// ends (even with a non-zero exit, an OOM kill or a timeout) returns a Result and
	// nil; an error means the run could not happen (ErrImageMissing,
	// ErrWrongPlatform, ErrEngineUnavailable, or another engine error).
	Run(ctx context.Context, spec Spec, started func(startedAt time.Time)) (Result, error)
	// Image inspects a local image; ErrImageMissing when it is absent.
	Image(ctx context.Context, ref string) (ImageInfo, error)
	// Info describes the engine; ErrEngineUnavailable when it does not answer.
	Info(ctx context.Context) (EngineInfo, error)
	// Cleanup force-removes containers labelled managed by onebox for this instance
	// and returns how many it removed.
	Cleanup(ctx context.Context, instance string) (int, error)
}
