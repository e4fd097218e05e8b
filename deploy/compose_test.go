package deploy

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

// TestComposeUp builds the image FROM scratch (deploy/Dockerfile) from the
// static binary, brings up deploy/compose.yaml on free ports with a private
// ONEBOX_HOME, and runs handlers through MQTT (onebox invoke), the HTTP bridge
// and the file bridge, then reads the invoker's /metrics.
func TestComposeUp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an image and runs compose; skipped with -short")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("no docker engine: %v: %s", err, out)
	}
	var compose []string
	if exec.Command("docker", "compose", "version").Run() == nil {
		compose = []string{"docker", "compose"}
	} else if p, err := exec.LookPath("docker-compose"); err == nil {
		compose = []string{p}
	} else {
		t.Skip("neither `docker compose` nor docker-compose is installed (Debian: apt-get install docker-compose)")
	}
	bin := onebox(t)
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	tag := hex.EncodeToString(b)
	image := "onebox-deploytest:" + tag
	project := "obtest" + tag

	// The image, from a context holding only the binary and the Dockerfile.
	ctxDir := t.TempDir()
	for src, dst := range map[string]string{bin: "onebox", "Dockerfile": "Dockerfile"} {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ctxDir, dst), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("docker", "build", "-q", "--build-arg", "BINARY=onebox", "-t", image, ctxDir).CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("docker", "rmi", "-f", image).Run() })

	// The demo images the config names.
	for _, h := range []string{"hello", "echo"} {
		if exec.Command("docker", "image", "inspect", "onebox/"+h+":latest").Run() != nil {
			if out, err := exec.Command(bin, "handlers", "build", h).CombinedOutput(); err != nil {
				t.Fatalf("onebox handlers build %s: %v\n%s", h, err, out)
			}
		}
	}

	home := t.TempDir()
	conf := filepath.Join(home, "onebox.yaml")
	if err := os.WriteFile(conf, []byte("handlers:\n  hello: {image: \"onebox/hello:latest\"}\n  echo: {image: \"onebox/echo:latest\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mqttPort, httpPort, metricsPort := freePort(t), freePort(t), freePort(t)
	env := append(os.Environ(), "ONEBOX_IMAGE="+image, "ONEBOX_CONFIG_FILE="+conf, "ONEBOX_HOME="+home,
		"ONEBOX_NAME=deploytest-"+tag, "ONEBOX_MQTT_PORT="+mqttPort, "ONEBOX_HTTP_PORT="+httpPort, "ONEBOX_METRICS_PORT="+metricsPort)
	run := func(args ...string) ([]byte, error) {
		c := exec.Command(compose[0], append(append(compose[1:], "-p", project, "-f", "compose.yaml"), args...)...)
		c.Env = env
		return c.CombinedOutput()
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := run("logs", "--no-color", "--tail", "30")
			t.Logf("compose logs:\n%s", out)
		}
		if out, err := run("down", "-v", "--timeout", "5"); err != nil {
			t.Logf("compose down: %v\n%s", err, out)
		}
	})
	if out, err := run("up", "-d"); err != nil {
		t.Fatalf("compose up: %v\n%s", err, out)
	}

	// MQTT: onebox invoke against the published broker port, until the
	// invoker has subscribed.
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, err := exec.Command(bin, "invoke", "--broker-url", "tcp://127.0.0.1:"+mqttPort, "--timeout", "10s", "echo", "through compose").CombinedOutput()
		if err == nil && string(out) == "through compose" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("onebox invoke echo: %v: %q", err, out)
		}
		time.Sleep(time.Second)
	}

	// HTTP bridge.
	resp, err := http.Get("http://127.0.0.1:" + httpPort + "/run/hello")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"hello"`)) {
		t.Fatalf("GET /run/hello: %s %s", resp.Status, body)
	}

	// File bridge: the inbox under ONEBOX_HOME, the same path inside and out.
	in := filepath.Join(home, "inbox", "echo")
	if err := os.MkdirAll(in, 0o755); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the bridge adds a watch for the new folder
	if err := os.WriteFile(filepath.Join(in, "x.txt"), []byte("dropped"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(home, "done", "echo", "x.txt.out")
	for deadline := time.Now().Add(60 * time.Second); ; {
		if b, err := os.ReadFile(out); err == nil && string(b) == "dropped" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The invoker's metrics, published on 127.0.0.1 only.
	resp, err = http.Get("http://127.0.0.1:" + metricsPort + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `onebox_invoker_runs_total{handler="echo",state="succeeded"}`) ||
		!strings.Contains(string(body), `onebox_invoker_runs_total{handler="hello",state="succeeded"} 1`) {
		t.Fatalf("metrics:\n%s", body)
	}
}
