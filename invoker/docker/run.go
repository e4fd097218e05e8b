package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	ctypes "github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/onebox-dev/onebox/invoker/container"
)

// Bounds on engine calls made outside the caller's context (stop, remove, inspect
// after exit), so a cancelled run still cleans up but a hung engine cannot hang us.
const (
	cleanupTimeout = 30 * time.Second
	// streamDrain is how long to wait, after the exit, for the attach stream to
	// deliver the rest of the output (the engine flushes within ~2 s).
	streamDrain = 5 * time.Second
	// killWait is how long to wait for the exit after SIGKILL before giving up.
	killWait = 30 * time.Second
)

// Run creates, attaches, starts, feeds and waits for one container and removes it
// in every case. started is called (on Run's goroutine, keep it short) once the
// container is running. When ctx is cancelled while the container runs (a
// shutdown), the container is stopped like a timeout (SIGTERM, Grace, SIGKILL) and
// Run still returns the Result with a nil error; the caller sees ctx.Err().
func (r *Runtime) Run(ctx context.Context, spec container.Spec, started func(startedAt time.Time)) (container.Result, error) {
	var res container.Result
	log := r.log.With("run_id", spec.ID, "handler", spec.Handler, "image", spec.Image)

	// The image, and whether it can run here, before anything is created.
	img, err := r.Image(ctx, spec.Image)
	if err != nil {
		return res, err
	}
	eng, err := r.cachedEngine(ctx)
	if err != nil {
		return res, err
	}
	if err := checkPlatform(spec.Image, img, eng.info); err != nil {
		return res, err
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}

	cfg, hostCfg, warn := buildConfig(spec, img.ID, eng)
	for _, w := range warn {
		log.Debug("limit not applied", "reason", w)
	}

	// From here on engine calls use a context that the caller's cancellation does
	// not abort: a create interrupted half-way would leave an orphan behind, and a
	// shutdown must still stop, inspect and remove the container.
	bg := context.WithoutCancel(ctx)

	res.CreatedAt = time.Now()
	id, err := r.create(bg, spec, cfg, hostCfg, log)
	if err != nil {
		return res, err
	}
	log = log.With("container", shortID(id))
	defer r.remove(id, log)

	runCtx, cancelRun := context.WithCancel(bg)
	defer cancelRun()

	// Attach and wait before start, so no output and no exit can be missed.
	hj, err := r.cli.ContainerAttach(runCtx, id, ctypes.AttachOptions{
		Stream: true, Stdin: true, Stdout: true, Stderr: true,
	})
	if err != nil {
		return res, r.engineErr("attach", err)
	}
	defer hj.Close()

	waitC, waitErrC := r.cli.ContainerWait(runCtx, id, ctypes.WaitConditionNextExit)

	if err := ctx.Err(); err != nil { // shut down before anything ran
		return res, err
	}
	if err := r.cli.ContainerStart(runCtx, id, ctypes.StartOptions{}); err != nil {
		return res, r.engineErr("start", err)
	}
	res.StartedAt = time.Now()
	res.StartMs = res.StartedAt.Sub(res.CreatedAt).Milliseconds()
	log.Debug("started", "start_ms", res.StartMs)

	// Feed stdin, then EOF. In its own goroutine: a container that never reads its
	// stdin must not block the run; closing the connection at the end unblocks it.
	go func() {
		if len(spec.Stdin) > 0 {
			if _, err := hj.Conn.Write(spec.Stdin); err != nil {
				log.Debug("stdin not fully written", "err", err)
			}
		}
		if err := hj.CloseWrite(); err != nil {
			log.Debug("stdin close", "err", err)
		}
	}()

	stdoutCap := spec.StdoutCap
	if stdoutCap <= 0 {
		stdoutCap = DefaultStdoutCap
	}
	tailCap := spec.StderrTailCap
	if tailCap <= 0 {
		tailCap = DefaultStderrTailCap
	}
	stdout := &headWriter{max: stdoutCap}
	stderr := newTailWriter(tailCap)
	copyDone := make(chan error, 1)
	go func() {
		_, err := stdcopy.StdCopy(stdout, stderr, hj.Reader)
		copyDone <- err
	}()

	var st *statsCollector
	if r.stats {
		st = r.collectStats(runCtx, id)
	}

	if started != nil {
		started(res.StartedAt)
	}

	exit, waitErr := r.await(ctx, id, spec, waitC, waitErrC, &res, log)
	exitedAt := time.Now()

	// The rest of the output: the engine closes the stream after the exit.
	select {
	case err := <-copyDone:
		if err != nil && !errors.Is(err, io.EOF) {
			log.Debug("output stream", "err", err)
		}
	case <-time.After(streamDrain):
		log.Warn("output stream did not end after the exit; output may be incomplete")
	}
	hj.Close()
	res.Stdout, res.StdoutBytes = stdout.result()
	res.Truncated = res.StdoutBytes > int64(len(res.Stdout))
	res.Stderr = stderr.bytes()
	if st != nil {
		cancelRun() // ends the stats stream
		res.MaxMemoryBytes, res.CPUMs = st.result()
	}

	if waitErr != nil {
		return res, waitErr
	}
	res.ExitCode = int(exit)
	res.FinishedAt = exitedAt

	ictx, cancel := context.WithTimeout(bg, cleanupTimeout)
	defer cancel()
	if ci, err := r.cli.ContainerInspect(ictx, id); err != nil {
		log.Warn("inspect after exit", "err", err)
	} else if ci.ContainerJSONBase != nil && ci.State != nil {
		res.ExitCode = ci.State.ExitCode
		res.OOMKilled = ci.State.OOMKilled
		// Both ends from the engine's clock, so the duration is never negative
		// (the host's clock read after start can be later than a fast exit).
		st, err1 := time.Parse(time.RFC3339Nano, ci.State.StartedAt)
		ft, err2 := time.Parse(time.RFC3339Nano, ci.State.FinishedAt)
		if err1 == nil && err2 == nil && st.Year() > 1 && ft.Year() > 1 && !ft.Before(st) {
			res.StartedAt, res.FinishedAt = st, ft
		} else if res.FinishedAt.Before(res.StartedAt) {
			res.FinishedAt = res.StartedAt
		}
	}
	log.Debug("finished", "exit_code", res.ExitCode, "oom", res.OOMKilled, "timed_out", res.TimedOut,
		"stdout_bytes", res.StdoutBytes, "truncated", res.Truncated,
		"duration_ms", res.FinishedAt.Sub(res.StartedAt).Milliseconds())
	return res, nil
}

// await waits for the exit; on timeout or ctx cancellation it sends SIGTERM, waits
// the grace period, then SIGKILL.
func (r *Runtime) await(ctx context.Context, id string, spec container.Spec,
	waitC <-chan ctypes.WaitResponse, waitErrC <-chan error, res *container.Result, log *slog.Logger) (int64, error) {
	var timeoutC <-chan time.Time
	if spec.Timeout > 0 {
		t := time.NewTimer(spec.Timeout)
		defer t.Stop()
		timeoutC = t.C
	}
	grace := spec.Grace
	if grace <= 0 {
		grace = DefaultGrace
	}
	ctxDone := ctx.Done()
	var killC, giveUpC <-chan time.Time
	stopping := false
	stop := func(why string) {
		if stopping {
			return
		}
		stopping = true
		log.Debug("stopping", "why", why, "grace", grace)
		r.kill(id, "SIGTERM", log)
		killC = time.After(grace)
	}
	for {
		select {
		case w := <-waitC:
			if w.Error != nil && w.Error.Message != "" {
				log.Debug("wait reported", "err", w.Error.Message)
			}
			return w.StatusCode, nil
		case err := <-waitErrC:
			return 0, r.engineErr("wait", err)
		case <-timeoutC:
			timeoutC = nil
			res.TimedOut = true
			stop("timeout")
		case <-ctxDone:
			ctxDone = nil
			stop("cancelled")
		case <-killC:
			killC = nil
			log.Debug("grace period over")
			r.kill(id, "SIGKILL", log)
			giveUpC = time.After(killWait)
		case <-giveUpC:
			return 0, fmt.Errorf("docker: container %s did not exit %s after SIGKILL", shortID(id), killWait)
		}
	}
}

func (r *Runtime) kill(id, signal string, log *slog.Logger) {
	kctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if err := r.cli.ContainerKill(kctx, id, signal); err != nil {
		// Usually "is not running": it exited meanwhile.
		log.Debug("kill", "signal", signal, "err", err)
	}
}

// create creates the container under a readable, unique name; a name collision
// retries with a random suffix, then with an engine-chosen name.
func (r *Runtime) create(ctx context.Context, spec container.Spec, cfg *ctypes.Config, hostCfg *ctypes.HostConfig, log *slog.Logger) (string, error) {
	base := containerName(spec.Instance, spec.ID)
	names := []string{base, base + "-" + randHex(4), ""}
	if base == "" {
		names = []string{""}
	}
	var lastErr error
	for _, name := range names {
		resp, err := r.cli.ContainerCreate(ctx, cfg, hostCfg, nil, nil, name)
		if err == nil {
			for _, w := range resp.Warnings {
				log.Warn("engine warning", "warning", w)
			}
			return resp.ID, nil
		}
		lastErr = err
		if !cerrdefs.IsConflict(err) && !strings.Contains(err.Error(), "is already in use") {
			break
		}
		log.Debug("container name in use", "name", name)
	}
	if cerrdefs.IsNotFound(lastErr) {
		return "", missingImage(spec.Image, lastErr)
	}
	return "", r.engineErr("create", lastErr)
}

// buildConfig turns a Spec into the engine's create request with onebox's
// isolation defaults. It returns the limits it had to leave out because the
// engine cannot apply them.
func buildConfig(spec container.Spec, imageID string, eng *engineInfo) (*ctypes.Config, *ctypes.HostConfig, []string) {
	var warn []string
	labels := make(map[string]string, len(spec.Labels)+4)
	for k, v := range spec.Labels {
		labels[k] = v
	}
	labels[container.LabelManaged] = "true"
	labels[container.LabelInstance] = spec.Instance
	labels[container.LabelRunID] = spec.ID
	labels[container.LabelHandler] = spec.Handler

	cfg := &ctypes.Config{
		Image:        imageID,
		Cmd:          spec.Cmd,
		Env:          spec.Env,
		User:         spec.User,
		Labels:       labels,
		AttachStdin:  true,
		AttachStdout: true,
		AttachStderr: true,
		OpenStdin:    true,
		StdinOnce:    true,
		Tty:          false,
	}

	network := spec.Network
	if network == "" {
		network = "none"
	}
	tmpfs := spec.TmpfsBytes
	if tmpfs <= 0 {
		tmpfs = DefaultTmpfsBytes
	}
	init := true
	hostCfg := &ctypes.HostConfig{
		NetworkMode:    ctypes.NetworkMode(network),
		ReadonlyRootfs: !spec.WritableRoot,
		Tmpfs:          map[string]string{"/tmp": "rw,nosuid,nodev,size=" + strconv.FormatInt(tmpfs, 10)},
		SecurityOpt:    []string{"no-new-privileges"},
		Init:           &init,
		LogConfig:      ctypes.LogConfig{Type: "none"},
		AutoRemove:     false, // removed explicitly, after the exit has been inspected
	}
	if !spec.KeepCaps && !spec.Privileged {
		hostCfg.CapDrop = []string{"ALL"}
	}
	hostCfg.Privileged = spec.Privileged
	for _, m := range spec.Mounts {
		hostCfg.Mounts = append(hostCfg.Mounts, mount.Mount{
			Type: mount.TypeBind, Source: m.Source, Target: m.Target, ReadOnly: m.ReadOnly,
		})
	}

	mem := spec.MemoryBytes
	if mem == 0 {
		mem = DefaultMemoryBytes
	}
	switch {
	case mem < 0:
	case !eng.info.MemoryLimit:
		warn = append(warn, "memory cgroup is off on this engine: no memory limit (enable cgroup_enable=memory on a Raspberry Pi)")
	default:
		hostCfg.Memory = mem
		if eng.swapLimit {
			hostCfg.MemorySwap = mem // no swap on top of the limit
		}
	}
	if spec.PidsLimit > 0 {
		if eng.pidsLimit {
			p := spec.PidsLimit
			hostCfg.PidsLimit = &p
		} else {
			warn = append(warn, "pids cgroup is off on this engine: no pids limit")
		}
	}
	if spec.NanoCPUs > 0 {
		if eng.cpuCfsQuota {
			hostCfg.NanoCPUs = spec.NanoCPUs
		} else {
			warn = append(warn, "CFS quota is off on this engine: no CPU quota")
		}
	}
	if spec.CPUShares > 0 {
		if eng.cpuShares {
			hostCfg.CPUShares = spec.CPUShares
		} else {
			warn = append(warn, "CPU shares are off on this engine")
		}
	}
	return cfg, hostCfg, warn
}

// containerName is onebox-<instance>-<id>, reduced to what the engine accepts
// ([a-zA-Z0-9][a-zA-Z0-9_.-]*).
func containerName(instance, id string) string {
	if id == "" {
		return ""
	}
	clean := func(s string) string {
		b := []byte(s)
		for i, c := range b {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
				b[i] = '-'
			}
		}
		return string(b)
	}
	name := "onebox-"
	if instance != "" {
		name += clean(instance) + "-"
	}
	name += clean(id)
	if len(name) > 200 {
		name = name[:200]
	}
	return name
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// remove force-removes the container with its own context, so a cancelled run
// still removes it.
func (r *Runtime) remove(id string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	err := r.cli.ContainerRemove(ctx, id, ctypes.RemoveOptions{Force: true, RemoveVolumes: true})
	switch {
	case err == nil:
		log.Debug("removed")
	case cerrdefs.IsNotFound(err):
	case strings.Contains(err.Error(), "already in progress"):
	default:
		log.Warn("remove container failed; it will be removed at the next start", "err", err)
	}
}

// statsCollector reads the engine's stats stream while the container runs and
// keeps the peak memory and the last CPU total. Best effort: a run shorter than
// the engine's sampling interval (about 1 s for Docker) reports 0.
type statsCollector struct {
	mu     sync.Mutex
	maxMem uint64
	cpuNs  uint64
	done   chan struct{}
}

func (r *Runtime) collectStats(ctx context.Context, id string) *statsCollector {
	st := &statsCollector{done: make(chan struct{})}
	go func() {
		defer close(st.done)
		resp, err := r.cli.ContainerStats(ctx, id, true)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		dec := json.NewDecoder(resp.Body)
		for {
			var s ctypes.StatsResponse
			if err := dec.Decode(&s); err != nil {
				return
			}
			st.mu.Lock()
			m := s.MemoryStats.MaxUsage // cgroup v1: the peak
			if s.MemoryStats.Usage > m {
				m = s.MemoryStats.Usage // cgroup v2 has no peak in the API
			}
			if m > st.maxMem {
				st.maxMem = m
			}
			if s.CPUStats.CPUUsage.TotalUsage > st.cpuNs {
				st.cpuNs = s.CPUStats.CPUUsage.TotalUsage
			}
			st.mu.Unlock()
		}
	}()
	return st
}

func (st *statsCollector) result() (int64, int64) {
	select {
	case <-st.done:
	case <-time.After(time.Second):
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return int64(st.maxMem), int64(st.cpuNs / 1e6)
}
