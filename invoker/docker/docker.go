// Package docker implements container.Runtime against the Docker Engine API
// (github.com/docker/docker/client), and Podman through its Docker-compatible socket.
//
// One Run creates one container with onebox's isolation defaults (network none,
// read-only root, tmpfs /tmp, all capabilities dropped, no-new-privileges, an init,
// pids/memory/CPU limits, no log driver, onebox labels), attaches to it before
// starting it, feeds the payload on stdin followed by EOF, keeps a bounded copy of
// stdout and the tail of stderr, stops it on timeout (SIGTERM, grace, SIGKILL) and
// removes it in every case.
//
// Zero values in container.Spec get these defaults here: TmpfsBytes 16 MiB,
// StderrTailCap 4 KiB, StdoutCap 1 MiB, Grace 2 s, MemoryBytes 128 MiB (a negative
// MemoryBytes means no limit), Network "none". Timeout 0 means no timeout.
package docker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	ctypes "github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/client"

	"github.com/onebox-dev/onebox/invoker/container"
)

// Defaults applied to zero values of container.Spec.
const (
	DefaultTmpfsBytes    int64 = 16 << 20
	DefaultStderrTailCap       = 4 << 10
	DefaultStdoutCap     int64 = 1 << 20
	DefaultGrace               = 2 * time.Second
	DefaultMemoryBytes   int64 = 128 << 20
)

// Options configures a Runtime.
type Options struct {
	// Host is the engine address, e.g. "unix:///var/run/docker.sock" or
	// "unix:///run/podman/podman.sock". Empty means DOCKER_HOST and friends from the
	// environment, else the default socket.
	Host string
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// NoStats turns off the best-effort stats stream that fills
	// Result.MaxMemoryBytes and Result.CPUMs.
	NoStats bool
}

// Runtime is a container.Runtime backed by a Docker Engine API endpoint.
type Runtime struct {
	cli    *client.Client
	log    *slog.Logger
	host   string
	stats  bool
	mu     sync.Mutex
	engine *engineInfo // cached; nil until first successful Info
}

// engineInfo is the cached engine description plus the capability flags Run needs.
type engineInfo struct {
	info        container.EngineInfo
	cpuCfsQuota bool
	cpuShares   bool
	pidsLimit   bool
	swapLimit   bool
}

var _ container.Runtime = (*Runtime)(nil)

// New makes a Runtime. It does not contact the engine; the first call does.
func New(opts Options) (*Runtime, error) {
	clOpts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if opts.Host != "" {
		clOpts = append(clOpts, client.WithHost(opts.Host))
	}
	cli, err := client.NewClientWithOpts(clOpts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Runtime{
		cli:   cli,
		log:   log.With("component", "docker"),
		host:  cli.DaemonHost(),
		stats: !opts.NoStats,
	}, nil
}

// Close releases the client's idle connections.
func (r *Runtime) Close() error { return r.cli.Close() }

// Client exposes the underlying Docker client (for tools and tests).
func (r *Runtime) Client() *client.Client { return r.cli }

// engineErr classifies an engine error: an unreachable engine becomes
// container.ErrEngineUnavailable, anything else is wrapped with what was being done.
func (r *Runtime) engineErr(what string, err error) error {
	if err == nil {
		return nil
	}
	if isUnavailable(err) {
		return fmt.Errorf("%w at %s: %s: %v", container.ErrEngineUnavailable, r.host, what, err)
	}
	return fmt.Errorf("docker: %s: %w", what, err)
}

func isUnavailable(err error) bool {
	if client.IsErrConnectionFailed(err) {
		return true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return true
	}
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) ||
		errors.Is(err, syscall.EACCES) || errors.Is(err, os.ErrNotExist) {
		return true
	}
	// The hijack path wraps dial errors in a plain message.
	return strings.Contains(err.Error(), "Cannot connect to the Docker daemon") ||
		strings.Contains(err.Error(), "cannot connect to the Docker daemon")
}

func missingImage(ref string, cause error) error {
	return fmt.Errorf("%w: image %q is not on this engine (nothing is pulled): build the demo handlers with `onebox handlers build`, or `docker build -t %s .` / `docker load -i FILE` (%v)",
		container.ErrImageMissing, ref, ref, cause)
}

// Image inspects a local image.
func (r *Runtime) Image(ctx context.Context, ref string) (container.ImageInfo, error) {
	if ref == "" {
		return container.ImageInfo{}, fmt.Errorf("%w: empty image reference", container.ErrImageMissing)
	}
	ii, err := r.cli.ImageInspect(ctx, ref)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return container.ImageInfo{}, missingImage(ref, err)
		}
		return container.ImageInfo{}, r.engineErr("inspect image "+ref, err)
	}
	return container.ImageInfo{
		ID:           ii.ID,
		Size:         ii.Size,
		OS:           ii.Os,
		Architecture: ii.Architecture,
		Variant:      ii.Variant,
	}, nil
}

// Info describes the engine (and refreshes the cached copy Run uses).
func (r *Runtime) Info(ctx context.Context) (container.EngineInfo, error) {
	e, err := r.fetchEngine(ctx)
	if err != nil {
		return container.EngineInfo{}, err
	}
	return e.info, nil
}

func (r *Runtime) cachedEngine(ctx context.Context) (*engineInfo, error) {
	r.mu.Lock()
	e := r.engine
	r.mu.Unlock()
	if e != nil {
		return e, nil
	}
	return r.fetchEngine(ctx)
}

func (r *Runtime) fetchEngine(ctx context.Context) (*engineInfo, error) {
	si, err := r.cli.Info(ctx)
	if err != nil {
		return nil, r.engineErr("info", err)
	}
	e := engineFromInfo(si)
	// The version call tells Podman from Docker; failing it is not fatal.
	if sv, err := r.cli.ServerVersion(ctx); err == nil {
		e.info.Version = sv.Version
		if isPodman(sv.Platform.Name) {
			e.info.Name = "podman"
		}
		for _, c := range sv.Components {
			if isPodman(c.Name) {
				e.info.Name = "podman"
			}
		}
	}
	r.mu.Lock()
	r.engine = e
	r.mu.Unlock()
	r.log.Debug("engine", "name", e.info.Name, "version", e.info.Version,
		"platform", platformString(e.info.OS, e.info.Architecture, e.info.Variant),
		"memory_limit", e.info.MemoryLimit, "cgroup", e.info.CgroupVersion)
	return e, nil
}

func isPodman(s string) bool { return strings.Contains(strings.ToLower(s), "podman") }

func engineFromInfo(si system.Info) *engineInfo {
	arch, variant := normalizeArch(si.Architecture, "")
	osName := si.OSType
	if osName == "" {
		osName = "linux"
	}
	name := "docker"
	if isPodman(si.Name) || isPodman(si.InitBinary) {
		name = "podman"
	}
	return &engineInfo{
		info: container.EngineInfo{
			Name:          name,
			Version:       si.ServerVersion,
			OS:            osName,
			Architecture:  arch,
			Variant:       variant,
			MemoryLimit:   si.MemoryLimit,
			CgroupVersion: si.CgroupVersion,
			NCPU:          si.NCPU,
			MemTotal:      si.MemTotal,
		},
		cpuCfsQuota: si.CPUCfsQuota,
		cpuShares:   si.CPUShares,
		pidsLimit:   si.PidsLimit,
		swapLimit:   si.SwapLimit,
	}
}

// Cleanup force-removes the containers labelled managed by onebox for instance,
// and only those.
func (r *Runtime) Cleanup(ctx context.Context, instance string) (int, error) {
	if instance == "" {
		return 0, errors.New("docker: cleanup needs an instance name")
	}
	f := filters.NewArgs(
		filters.Arg("label", container.LabelManaged+"=true"),
		filters.Arg("label", container.LabelInstance+"="+instance),
	)
	list, err := r.cli.ContainerList(ctx, ctypes.ListOptions{All: true, Filters: f})
	if err != nil {
		return 0, r.engineErr("list containers", err)
	}
	n := 0
	var errs []error
	for _, c := range list {
		// Double-check the labels: never touch another instance's container, even
		// if an engine's filter were looser than Docker's.
		if c.Labels[container.LabelManaged] != "true" || c.Labels[container.LabelInstance] != instance {
			continue
		}
		err := r.cli.ContainerRemove(ctx, c.ID, ctypes.RemoveOptions{Force: true, RemoveVolumes: true})
		if err != nil && !cerrdefs.IsNotFound(err) {
			errs = append(errs, r.engineErr("remove "+shortID(c.ID), err))
			continue
		}
		n++
		r.log.Info("removed leftover container", "container", shortID(c.ID), "names", c.Names,
			"run_id", c.Labels[container.LabelRunID], "handler", c.Labels[container.LabelHandler])
	}
	return n, errors.Join(errs...)
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
