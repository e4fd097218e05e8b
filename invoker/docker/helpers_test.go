package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	ctypes "github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"

	"github.com/onebox-dev/onebox/invoker/container"
)

// Test images, built locally (nothing can be pulled here).
const (
	busyboxImage = "onebox-test/busybox:v1"
	foreignImage = "onebox-test/foreign:v1"
)

var (
	testRT     *Runtime
	skipReason string
	setupOnce  sync.Once
)

// rtForTest returns the shared Runtime with the test images present, or skips the
// test when no engine answers.
func rtForTest(t *testing.T) *Runtime {
	t.Helper()
	setupOnce.Do(func() {
		var logger *slog.Logger
		if os.Getenv("ONEBOX_TEST_LOG") != "" {
			logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		}
		rt, err := New(Options{Logger: logger})
		if err != nil {
			skipReason = err.Error()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if _, err := rt.Info(ctx); err != nil {
			skipReason = "no container engine: " + err.Error()
			return
		}
		if err := ensureBusybox(ctx, rt); err != nil {
			skipReason = "cannot build busybox test image: " + err.Error()
			return
		}
		if err := ensureForeign(ctx, rt); err != nil {
			skipReason = "cannot build foreign test image: " + err.Error()
			return
		}
		testRT = rt
	})
	if testRT == nil {
		t.Skip(skipReason)
	}
	return testRT
}

// ensureBusybox imports a one-layer image holding the host's static busybox at
// /bin/busybox plus a symlink for every applet.
func ensureBusybox(ctx context.Context, rt *Runtime) error {
	if _, err := rt.cli.ImageInspect(ctx, busyboxImage); err == nil {
		return nil
	}
	bin, err := exec.LookPath("busybox")
	if err != nil {
		return err
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	list, err := exec.Command(bin, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	dirs := map[string]bool{}
	addDir := func(d string) {
		if d == "" || dirs[d] {
			return
		}
		dirs[d] = true
		mode := int64(0o755)
		if d == "tmp" {
			mode = 0o1777
		}
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: mode, ModTime: now})
	}
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev"} {
		addDir(d)
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(data)), ModTime: now}); err != nil {
		return err
	}
	if _, err := tw.Write(data); err != nil {
		return err
	}
	passwd := "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd)), ModTime: now})
	_, _ = tw.Write([]byte(passwd))
	for _, p := range strings.Fields(string(list)) {
		if p == "bin/busybox" {
			continue
		}
		if i := strings.LastIndex(p, "/"); i > 0 {
			addDir(p[:i])
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: p, Linkname: "/bin/busybox", Mode: 0o777, ModTime: now}); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	rc, err := rt.cli.ImageImport(ctx, image.ImportSource{Source: &buf, SourceName: "-"}, busyboxImage,
		image.ImportOptions{Changes: []string{`CMD ["/bin/sh"]`}})
	if err != nil {
		return err
	}
	defer rc.Close()
	out, _ := io.ReadAll(rc)
	if bytes.Contains(out, []byte(`"error"`)) {
		return fmt.Errorf("import: %s", out)
	}
	return nil
}

// foreignArch is an architecture the test host is not.
func foreignArch() string {
	if runtime.GOARCH == "arm64" {
		return "amd64"
	}
	return "arm64"
}

// ensureForeign loads (docker-archive format, built by hand) an image whose config
// says it is for another architecture.
func ensureForeign(ctx context.Context, rt *Runtime) error {
	if _, err := rt.cli.ImageInspect(ctx, foreignImage); err == nil {
		return nil
	}
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	msg := []byte("not for this machine\n")
	_ = lw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "hello.txt", Mode: 0o644, Size: int64(len(msg)), ModTime: time.Unix(0, 0)})
	_, _ = lw.Write(msg)
	if err := lw.Close(); err != nil {
		return err
	}
	diffID := sha256.Sum256(layer.Bytes())
	cfg, _ := json.Marshal(map[string]any{
		"architecture": foreignArch(),
		"os":           "linux",
		"created":      "2024-01-01T00:00:00Z",
		"config":       map[string]any{"Cmd": []string{"/hello"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diffID[:])}},
		"history":      []map[string]any{{"created": "2024-01-01T00:00:00Z", "created_by": "onebox test"}},
	})
	cfgSum := sha256.Sum256(cfg)
	cfgName := hex.EncodeToString(cfgSum[:]) + ".json"
	layerName := hex.EncodeToString(diffID[:]) + "/layer.tar"
	manifest, _ := json.Marshal([]map[string]any{{
		"Config": cfgName, "RepoTags": []string{foreignImage}, "Layers": []string{layerName},
	}})
	var archive bytes.Buffer
	aw := tar.NewWriter(&archive)
	add := func(name string, b []byte) {
		_ = aw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: time.Unix(0, 0)})
		_, _ = aw.Write(b)
	}
	_ = aw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: hex.EncodeToString(diffID[:]) + "/", Mode: 0o755, ModTime: time.Unix(0, 0)})
	add(layerName, layer.Bytes())
	add(cfgName, cfg)
	add("manifest.json", manifest)
	if err := aw.Close(); err != nil {
		return err
	}
	resp, err := rt.cli.ImageLoad(ctx, &archive)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if bytes.Contains(out, []byte(`"error"`)) {
		return fmt.Errorf("load: %s", out)
	}
	return nil
}

func randName(prefix string) string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// newSpec is a busybox run with a unique instance per test, and checks at the end
// of the test that no container of that instance is left.
func newSpec(t *testing.T, rt *Runtime, script string) container.Spec {
	t.Helper()
	inst := randName("test-")
	t.Cleanup(func() { assertNoContainers(t, rt, inst) })
	return container.Spec{
		ID:          randName("run-"),
		Handler:     "sh",
		Instance:    inst,
		Image:       busyboxImage,
		Cmd:         []string{"/bin/sh", "-c", script},
		Env:         []string{"ONEBOX_ID=x", "ONEBOX_HANDLER=sh", "ONEBOX_TOPIC=trigger/sh"},
		Timeout:     30 * time.Second,
		Grace:       time.Second,
		MemoryBytes: 64 << 20,
		PidsLimit:   64,
	}
}

func listInstance(t *testing.T, rt *Runtime, instance string) []ctypes.Summary {
	t.Helper()
	list, err := rt.cli.ContainerList(context.Background(), ctypes.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", container.LabelInstance+"="+instance))})
	if err != nil {
		t.Fatalf("list containers: %v", err)
	}
	return list
}

func assertNoContainers(t *testing.T, rt *Runtime, instance string) {
	t.Helper()
	if left := listInstance(t, rt, instance); len(left) != 0 {
		t.Errorf("%d container(s) of instance %s left behind: %v", len(left), instance, left[0].Names)
		for _, c := range left {
			_ = rt.cli.ContainerRemove(context.Background(), c.ID, ctypes.RemoveOptions{Force: true})
		}
	}
}

func run(t *testing.T, rt *Runtime, spec container.Spec) (container.Result, time.Duration) {
	t.Helper()
	t0 := time.Now()
	res, err := rt.Run(context.Background(), spec, nil)
	d := time.Since(t0)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res, d
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
