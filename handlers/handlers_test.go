package handlers

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
)

var _ Loader = (*client.Client)(nil)

func TestParsePlatform(t *testing.T) {
	for in, want := range map[string]string{
		"linux/arm/v7":   "linux/arm/v7",
		"linux/arm":      "linux/arm/v7",
		"arm":            "linux/arm/v7",
		"linux/armv7l":   "linux/arm/v7",
		"linux/armv6l":   "linux/arm/v6",
		"linux/x86_64":   "linux/amd64",
		"linux/aarch64":  "linux/arm64",
		"linux/arm64/v8": "linux/arm64/v8",
		"Linux/AMD64":    "linux/amd64",
	} {
		p, err := ParsePlatform(in)
		if err != nil || p.String() != want {
			t.Errorf("ParsePlatform(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for _, in := range []string{"", "linux/", "windows/amd64", "linux/mips", "linux/arm/v9", "linux/amd64/v7", "a/b/c/d"} {
		if p, err := ParsePlatform(in); err == nil {
			t.Errorf("ParsePlatform(%q) = %v, want an error", in, p)
		}
	}
	if h := HostPlatform(); h.Arch != runtime.GOARCH || (h.Arch == "arm") != (h.Variant != "") {
		t.Errorf("HostPlatform() = %v", h)
	}
}

// archive is a docker-archive read back.
type archive struct {
	manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	files map[string][]byte
}

func readArchive(t *testing.T, b []byte) *archive {
	t.Helper()
	a := &archive{files: map[string][]byte{}}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		a.files[h.Name] = data
	}
	if err := json.Unmarshal(a.files["manifest.json"], &a.manifest); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	return a
}

type layerFile struct {
	hdr  *tar.Header
	data []byte
}

func readLayer(t *testing.T, b []byte) map[string]layerFile {
	t.Helper()
	out := map[string]layerFile{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		out[h.Name] = layerFile{h, data}
	}
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestImageTarArmV7 cross-builds two handlers for the Pi 3 and checks the
// archive: digests, config platform and label, the layer's one file; then
// loads it with `docker load -i` and asks the engine what it holds.
func TestImageTarArmV7(t *testing.T) {
	ctx := context.Background()
	prefix := testPrefix(t)
	o := Options{Platform: Platform{OS: "linux", Arch: "arm", Variant: "v7"}, Prefix: prefix}
	var buf bytes.Buffer
	if err := WriteImageTar(ctx, &buf, []string{"hello", "echo", "hello"}, o); err != nil {
		t.Fatal(err)
	}
	a := readArchive(t, buf.Bytes())
	if len(a.manifest) != 2 {
		t.Fatalf("manifest has %d images, want 2 (hello named twice is built once)", len(a.manifest))
	}
	for i, name := range []string{"hello", "echo"} {
		m := a.manifest[i]
		if want := prefix + name + ":latest"; !slices.Equal(m.RepoTags, []string{want}) {
			t.Errorf("RepoTags %v, want %s", m.RepoTags, want)
		}
		cfgBytes := a.files[m.Config]
		if cfgBytes == nil || m.Config != sha(cfgBytes)+".json" {
			t.Fatalf("config %s missing or not named by its digest", m.Config)
		}
		var cfg struct {
			Architecture, Variant, OS string
			Config                    struct {
				Entrypoint []string
				Labels     map[string]string
			}
			RootFS struct {
				Type    string
				DiffIDs []string `json:"diff_ids"`
			}
			History []json.RawMessage
		}
		if err := json.Unmarshal(cfgBytes, &cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.OS != "linux" || cfg.Architecture != "arm" || cfg.Variant != "v7" {
			t.Errorf("%s: platform %s/%s/%s, want linux/arm/v7", name, cfg.OS, cfg.Architecture, cfg.Variant)
		}
		if cfg.Config.Labels[LabelHandler] != name || !slices.Equal(cfg.Config.Entrypoint, []string{"/handler"}) {
			t.Errorf("%s: labels %v entrypoint %v", name, cfg.Config.Labels, cfg.Config.Entrypoint)
		}
		if len(m.Layers) != 1 || len(cfg.RootFS.DiffIDs) != 1 || len(cfg.History) != 1 || cfg.RootFS.Type != "layers" {
			t.Fatalf("%s: layers %v diff_ids %v history %d", name, m.Layers, cfg.RootFS.DiffIDs, len(cfg.History))
		}
		layer := a.files[m.Layers[0]]
		if "sha256:"+sha(layer) != cfg.RootFS.DiffIDs[0] {
			t.Errorf("%s: diff_id %s is not the layer's digest", name, cfg.RootFS.DiffIDs[0])
		}
		files := readLayer(t, layer)
		f, ok := files["handler"]
		if len(files) != 1 || !ok {
			t.Fatalf("%s: layer holds %v, want just handler", name, files)
		}
		if f.hdr.Mode != 0o755 || f.hdr.Uid != 0 || f.hdr.Gid != 0 || f.hdr.Typeflag != tar.TypeReg {
			t.Errorf("%s: /handler mode %o uid %d gid %d", name, f.hdr.Mode, f.hdr.Uid, f.hdr.Gid)
		}
		e, err := elf.NewFile(bytes.NewReader(f.data))
		if err != nil {
			t.Fatal(err)
		}
		if e.Machine != elf.EM_ARM || e.Class != elf.ELFCLASS32 {
			t.Errorf("%s: binary is %s %s, want ARM 32-bit", name, e.Machine, e.Class)
		}
		if err := checkStaticFor(name, f.data, o.Platform); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		t.Logf("%s for linux/arm/v7: %d bytes (binary %d)", name, len(layer), len(f.data))
	}

	// Same inputs, same bytes: image IDs do not change on a rebuild.
	var again bytes.Buffer
	if err := WriteImageTar(ctx, &again, []string{"hello", "echo"}, o); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two builds of the same images differ")
	}

	needDocker(t)
	file := filepath.Join(t.TempDir(), "handlers-armv7.tar")
	if err := os.WriteFile(file, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	removeImage(t, prefix+"hello:latest")
	removeImage(t, prefix+"echo:latest")
	out := docker(t, nil, "load", "-i", file)
	for _, name := range []string{"hello", "echo"} {
		ref := prefix + name + ":latest"
		if !strings.Contains(out, "Loaded image: "+ref) {
			t.Errorf("docker load said %q, want it to load %s", out, ref)
		}
		got := strings.TrimSpace(docker(t, nil, "image", "inspect", "-f", "{{.Os}}/{{.Architecture}}/{{.Variant}} {{index .Config.Labels \"io.onebox.handler\"}}", ref))
		if want := "linux/arm/v7 " + name; got != want {
			t.Errorf("engine says %s is %q, want %q", ref, got, want)
		}
	}
}

// TestHandlersRun builds all five for the host, loads them through the
// Engine API and runs each as the invoker would: fresh container, stdin in,
// stdout out, no network, read-only root, no capabilities.
func TestHandlersRun(t *testing.T) {
	needDocker(t)
	ctx := context.Background()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	prefix := testPrefix(t)
	var progress bytes.Buffer
	o := Options{Prefix: prefix, Progress: &progress}
	for _, n := range append(Names(), BusyboxName) {
		removeImage(t, o.Ref(n))
	}
	built, err := Build(ctx, cli, Names(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("progress:\n%s", progress.String())
	var gotNames []string
	for _, b := range built {
		gotNames = append(gotNames, b.Name)
		if b.Ref != o.Ref(b.Name) || !strings.HasPrefix(b.ID, "sha256:") || b.Size <= 0 || b.Platform != HostPlatform() {
			t.Errorf("built %+v", b)
		}
		id := strings.TrimSpace(docker(t, nil, "image", "inspect", "-f", "{{.Id}}", b.Ref))
		if id != b.ID {
			t.Errorf("%s: engine has ID %s, Build said %s", b.Ref, id, b.ID)
		}
	}
	if want := append(Names(), BusyboxName); !slices.Equal(gotNames, want) {
		t.Errorf("built %v, want %v", gotNames, want)
	}

	run := func(t *testing.T, stdin []byte, args ...string) (stdout []byte, stderr string, code int) {
		t.Helper()
		full := append([]string{"run", "--rm", "-i", "--network", "none", "--read-only", "--tmpfs", "/tmp",
			"--cap-drop", "ALL", "--security-opt", "no-new-privileges"}, args...)
		cmd := exec.Command("docker", full...)
		cmd.Stdin = bytes.NewReader(stdin)
		var so, se bytes.Buffer
		cmd.Stdout, cmd.Stderr = &so, &se
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			code = ee.ExitCode()
		default:
			t.Fatalf("docker %v: %v", full, err)
		}
		return so.Bytes(), se.String(), code
	}

	for _, msg := range []string{"hello", "goodbye"} {
		t.Run(msg, func(t *testing.T) {
			out, se, code := run(t, []byte("ignored"), o.Ref(msg))
			if code != 0 {
				t.Fatalf("exit %d: %s", code, se)
			}
			if !bytes.HasSuffix(out, []byte("}\n")) || bytes.Count(out, []byte("\n")) != 1 {
				t.Errorf("want one JSON line, got %q", out)
			}
			var v map[string]string
			if err := json.Unmarshal(out, &v); err != nil {
				t.Fatalf("%q: %v", out, err)
			}
			ts, err := time.Parse(time.RFC3339, v["time"])
			if v["message"] != msg || err != nil || len(v) != 2 {
				t.Fatalf("got %q (time: %v)", out, err)
			}
			if d := time.Since(ts); d < -time.Minute || d > 5*time.Minute || !strings.HasSuffix(v["time"], "Z") {
				t.Errorf("time %s is not now in UTC", v["time"])
			}
		})
	}

	t.Run("echo", func(t *testing.T) {
		in := make([]byte, 64<<10)
		rand.Read(in)
		out, se, code := run(t, in, o.Ref("echo"))
		if code != 0 || !bytes.Equal(out, in) {
			t.Fatalf("exit %d, %d bytes back of %d, equal %v; stderr %s", code, len(out), len(in), bytes.Equal(out, in), se)
		}
		out, _, code = run(t, nil, o.Ref("echo"))
		if code != 0 || len(out) != 0 {
			t.Errorf("empty input: exit %d, %q", code, out)
		}
	})

	t.Run("inbox-ls", func(t *testing.T) {
		dir := t.TempDir()
		want := map[string]int64{
			"a.txt":                 5,
			"with space ü.txt":      1234,
			"sub/日本語 \"q\".bin":     70000,
			"sub/deeper/empty file": 0,
		}
		for name, size := range want {
			p := filepath.Join(dir, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, bytes.Repeat([]byte("x"), int(size)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		out, se, code := run(t, nil, "-v", dir+":/inbox:ro", o.Ref("inbox-ls"))
		if code != 0 {
			t.Fatalf("exit %d: %s", code, se)
		}
		got := map[string]int64{}
		dirs := 0
		for _, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
			var e struct {
				Name, Type, Error string
				Size              *int64
			}
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			switch {
			case e.Type == "dir":
				dirs++
			case e.Type == "file" && e.Size != nil && e.Error == "":
				got[e.Name] = *e.Size
			default:
				t.Errorf("unexpected entry %q", line)
			}
		}
		if len(got) != len(want) || dirs != 2 {
			t.Errorf("listed %v and %d folders, want %v and 2 folders:\n%s", got, dirs, want, out)
		}
		for name, size := range want {
			if s, ok := got[name]; !ok || s != size {
				t.Errorf("%q: listed %v (%d), want size %d", name, ok, s, size)
			}
		}

		out, se, code = run(t, nil, o.Ref("inbox-ls"))
		if code != 1 || len(out) != 0 || !strings.Contains(se, "/inbox") {
			t.Errorf("without /inbox: exit %d, stdout %q, stderr %q; want 1, nothing, a word on /inbox", code, out, se)
		}
	})

	t.Run("shell", func(t *testing.T) {
		in := bytes.Repeat([]byte{0, 1, 2, '\n', 0xff}, 1000)
		out, se, code := run(t, in, "-e", "ONEBOX_ID=run-42", "-e", "ONEBOX_HANDLER=shell", o.Ref("shell"))
		if code != 0 {
			t.Fatalf("exit %d: %s", code, se)
		}
		var v struct {
			Handler, ID, Machine string
			Bytes                int
		}
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		uname, err := exec.Command("uname", "-m").Output()
		if err != nil {
			t.Fatal(err)
		}
		if v.Bytes != len(in) || v.ID != "run-42" || v.Handler != "shell" || v.Machine != strings.TrimSpace(string(uname)) {
			t.Errorf("got %q, want %d bytes, id run-42, handler shell, machine %s", out, len(in), uname)
		}
	})

	t.Run("busybox base", func(t *testing.T) {
		ref, err := BusyboxImage(ctx, cli, o)
		if err != nil || ref != prefix+"busybox:latest" {
			t.Fatalf("BusyboxImage = %q, %v", ref, err)
		}
		out, se, code := run(t, []byte("a b c\n"), ref, "sh", "-c", `echo $((6*7)) $(wc -w) $(id -u); ls -ld /tmp | cut -c1-10; touch /tmp/ok && echo tmp-ok`)
		if code != 0 || string(out) != "42 3 0\ndrwxrwxrwt\ntmp-ok\n" {
			t.Errorf("sh -c: exit %d, %q, stderr %s", code, out, se)
		}
	})

	t.Run("sizes", func(t *testing.T) {
		for _, n := range append(Names(), BusyboxName) {
			out := strings.Fields(docker(t, nil, "image", "inspect", "-f", `{{.Size}} {{.Architecture}} {{index .Config.Labels "io.onebox.handler"}}`, o.Ref(n)))
			if len(out) < 2 {
				t.Fatalf("%s: inspect said %v", n, out)
			}
			size, err := strconv.ParseInt(out[0], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%-16s %8d bytes (%.2f MB) %s", o.Ref(n), size, float64(size)/1e6, out[1])
			if out[1] != runtime.GOARCH {
				t.Errorf("%s: architecture %s", n, out[1])
			}
			if n != BusyboxName && (len(out) != 3 || out[2] != n) {
				t.Errorf("%s: label %s=%v", n, LabelHandler, out[2:])
			}
			if goHandlers[n] && size >= 2_000_000 {
				t.Errorf("%s is %d bytes, want under 2 MB", n, size)
			}
		}
	})
}

func TestBusyboxChecks(t *testing.T) {
	ctx := context.Background()
	bin, err := os.ReadFile(DefaultBusybox)
	if err != nil {
		t.Skipf("no %s (apt-get install busybox-static): %v", DefaultBusybox, err)
	}
	host := HostPlatform()
	if err := checkStaticFor(DefaultBusybox, bin, host); err != nil {
		t.Fatalf("host busybox: %v", err)
	}

	// The applet list read from the binary is the one it prints itself,
	// which is how a foreign (armhf) busybox gets its links.
	out, err := exec.Command(DefaultBusybox, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Fields(string(out))
	got := appletNames(bin)
	slices.Sort(want)
	slices.Sort(got)
	if len(want) < 100 || !slices.Equal(got, want) {
		t.Errorf("applets read from the binary (%d) differ from --list (%d)", len(got), len(want))
	}

	l, err := busyboxLayer(ctx, host, Options{})
	if err != nil {
		t.Fatal(err)
	}
	files := readLayer(t, l.data)
	if f := files["bin/busybox"]; f.hdr == nil || f.hdr.Mode != 0o755 || !bytes.Equal(f.data, bin) {
		t.Error("layer lacks /bin/busybox 0755")
	}
	if f := files["bin/sh"]; f.hdr == nil || f.hdr.Typeflag != tar.TypeSymlink || f.hdr.Linkname != "/bin/busybox" {
		t.Error("layer lacks /bin/sh -> /bin/busybox")
	}
	if f := files["tmp/"]; f.hdr == nil || f.hdr.Mode != 0o1777 {
		t.Error("layer lacks /tmp 1777")
	}
	if len(files) < len(want) {
		t.Errorf("layer has %d entries for %d applets", len(files), len(want))
	}

	// Another machine's platform: a clear error, before anything is built.
	other := Platform{OS: "linux", Arch: "arm", Variant: "v7"}
	if host.Arch == "arm" {
		other = Platform{OS: "linux", Arch: "amd64"}
	}
	err = WriteImageTar(ctx, io.Discard, []string{"shell"}, Options{Platform: other})
	if err == nil || !strings.Contains(err.Error(), "not "+other.String()) {
		t.Errorf("shell for %s with the host's busybox: %v", other, err)
	}

	// A dynamically linked program is refused.
	for _, dyn := range []string{"/bin/ls", "/usr/bin/env"} {
		b, err := os.ReadFile(dyn)
		if err != nil {
			continue
		}
		if err := checkStaticFor(dyn, b, host); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
			t.Errorf("%s: %v, want dynamically linked", dyn, err)
		}
		break
	}
	if _, err := busyboxLayer(ctx, host, Options{Busybox: "/nonexistent/busybox"}); err == nil {
		t.Error("a missing busybox is no error")
	}
}

func TestNoGo(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	err := WriteImageTar(context.Background(), io.Discard, []string{"hello"}, Options{})
	if !errors.Is(err, ErrNoGo) || !strings.Contains(err.Error(), "docker load -i handlers.tar") {
		t.Errorf("without go: %v", err)
	}
}

func TestNames(t *testing.T) {
	if err := WriteImageTar(context.Background(), io.Discard, []string{"nope"}, Options{}); err == nil {
		t.Error("unknown handler is no error")
	}
	if err := WriteImageTar(context.Background(), io.Discard, nil, Options{}); err == nil {
		t.Error("no handler is no error")
	}
	for _, n := range Names() {
		if src, err := Source(n); err != nil || len(src) == 0 {
			t.Errorf("Source(%s): %v", n, err)
		}
	}
	if got := (Options{}).Ref("hello"); got != "onebox/hello:latest" {
		t.Errorf("Ref = %s", got)
	}
}

// fakeLoader reads what Build sends and answers as the engine would.
type fakeLoader struct {
	got    []byte
	answer string
}

func (f *fakeLoader) ImageLoad(ctx context.Context, r io.Reader, _ ...client.ImageLoadOption) (image.LoadResponse, error) {
	b, err := io.ReadAll(r)
	f.got = b
	if err != nil {
		return image.LoadResponse{}, err
	}
	return image.LoadResponse{Body: io.NopCloser(strings.NewReader(f.answer)), JSON: true}, nil
}

func TestBuildLoaderAnswer(t *testing.T) {
	ctx := context.Background()
	ok := &fakeLoader{answer: `{"stream":"Loaded image: onebox/echo:latest\n"}`}
	built, err := Build(ctx, ok, []string{"echo"}, Options{})
	if err != nil || len(built) != 1 || built[0].Ref != "onebox/echo:latest" {
		t.Fatalf("Build = %+v, %v", built, err)
	}
	if a := readArchive(t, ok.got); len(a.manifest) != 1 || a.manifest[0].Config != built[0].ID[len("sha256:"):]+".json" {
		t.Errorf("loader got manifest %+v for %s", a.manifest, built[0].ID)
	}
	bad := &fakeLoader{answer: `{"errorDetail":{"message":"no space left on device"},"error":"no space left on device"}`}
	if _, err := Build(ctx, bad, []string{"echo"}, Options{}); err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Errorf("engine error: %v", err)
	}
}

// needDocker skips without a reachable engine, except under CI, where the
// engine is part of the contract and its absence fails.
func needDocker(t *testing.T) {
	t.Helper()
	if out, err := exec.Command("docker", "version", "--format", "{{.Server.Version}}").CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("docker engine needed under CI: %v: %s", err, out)
		}
		t.Skipf("no docker engine: %v: %s", err, out)
	}
}

func docker(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	cmd := exec.Command("docker", args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docker %v: %v: %s", args, err, out)
	}
	return string(out)
}

// testPrefix is a repository prefix of this test's own, so that tests
// running beside each other (or the real onebox/ images) never collide.
func testPrefix(t *testing.T) string {
	b := make([]byte, 4)
	rand.Read(b)
	return "onebox-test-" + hex.EncodeToString(b) + "/"
}

// removeImage removes ref when the test ends.
func removeImage(t *testing.T, ref string) {
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", ref).Run() })
}
