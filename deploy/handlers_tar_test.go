package deploy

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/onebox-dev/onebox/invoker/container"
	"github.com/onebox-dev/onebox/invoker/docker"
)

// retag rewrites the RepoTags of a docker-archive tar (manifest.json, and the
// legacy repositories file if present) from onebox/<name> to prefix<name>, so
// that loading it never replaces the engine's real onebox/ images that other
// tests and a running onebox use.
func retag(t *testing.T, in []byte, prefix string) []byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(in))
	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		switch h.Name {
		case "manifest.json":
			var m []map[string]any
			if err := json.Unmarshal(data, &m); err != nil {
				t.Fatal(err)
			}
			for _, e := range m {
				tags, _ := e["RepoTags"].([]any)
				for i, tag := range tags {
					tags[i] = strings.Replace(tag.(string), "onebox/", prefix, 1)
				}
			}
			data, _ = json.Marshal(m)
		case "repositories":
			data = bytes.ReplaceAll(data, []byte(`"onebox/`), []byte(`"`+prefix))
		}
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// The Pi path from a laptop: `onebox handlers build --platform linux/arm64 -o
// t.tar`, `docker load -i t.tar`, and the engine sees arm64 images; the
// invoker then refuses to run them on this (amd64) engine, naming both
// platforms. (handlers' own TestImageTarArmV7 covers linux/arm/v7 through the
// package API.)
func TestHandlersTarForArm64(t *testing.T) {
	if testing.Short() {
		t.Skip("builds handler images; skipped with -short")
	}
	bin := onebox(t)
	tarPath := filepath.Join(t.TempDir(), "t.tar")
	// The Go handlers only: the shell handler needs a busybox of the target's
	// architecture (see deploy/PI.md).
	out, err := exec.Command(bin, "handlers", "build", "hello", "echo", "--platform", "linux/arm64", "-o", tarPath).CombinedOutput()
	if err != nil {
		t.Fatalf("onebox handlers build --platform linux/arm64 -o: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %d bytes", tarPath, len(raw))

	if out, err := exec.Command("docker", "version", "--format", "{{.Server.Arch}}").CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("docker engine needed under CI: %v: %s", err, out)
		}
		t.Skipf("no docker engine: %v: %s", err, out)
	} else if strings.TrimSpace(string(out)) == "arm64" {
		t.Skip("the engine is arm64 itself: no wrong-platform check to make")
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	prefix := "onebox-deploytest-" + hex.EncodeToString(b) + "/"
	loadTar := filepath.Join(t.TempDir(), "retagged.tar")
	if err := os.WriteFile(loadTar, retag(t, raw, prefix), 0o644); err != nil {
		t.Fatal(err)
	}
	refs := []string{prefix + "hello:latest", prefix + "echo:latest"}
	t.Cleanup(func() { _ = exec.Command("docker", append([]string{"rmi", "-f"}, refs...)...).Run() })
	out, err = exec.Command("docker", "load", "-i", loadTar).CombinedOutput()
	if err != nil {
		t.Fatalf("docker load: %v\n%s", err, out)
	}
	for _, ref := range refs {
		if !strings.Contains(string(out), "Loaded image: "+ref) {
			t.Errorf("docker load said %q, want it to load %s", out, ref)
		}
		got, err := exec.Command("docker", "image", "inspect", "-f", "{{.Os}}/{{.Architecture}}", ref).CombinedOutput()
		if err != nil || strings.TrimSpace(string(got)) != "linux/arm64" {
			t.Errorf("docker image inspect %s: %q %v, want linux/arm64", ref, got, err)
		}
	}

	rt, err := docker.New(docker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	info, err := rt.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = rt.Run(ctx, container.Spec{ID: "deploy-arm64", Handler: "hello", Instance: "deploytest-" + hex.EncodeToString(b),
		Image: refs[0], Timeout: 10 * time.Second, Grace: time.Second, StdoutCap: 1 << 20, StderrTailCap: 1024}, func(time.Time) {})
	if !errors.Is(err, container.ErrWrongPlatform) {
		t.Fatalf("running an arm64 image on a %s engine: %v, want ErrWrongPlatform", info.Architecture, err)
	}
	if !strings.Contains(err.Error(), "linux/arm64") || !strings.Contains(err.Error(), "linux/"+info.Architecture) {
		t.Fatalf("the error does not name both platforms: %v", err)
	}
	t.Logf("invoker: %v", err)
}
