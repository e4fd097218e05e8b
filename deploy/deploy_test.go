package deploy

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"go.yaml.in/yaml/v3"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildOut  []byte
)

// onebox builds the static onebox binary once per test run.
func onebox(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "onebox-deploy-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "onebox")
		cmd := exec.Command("go", "build", "-trimpath", "-o", builtBin, "../cmd/onebox")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("go build ./cmd/onebox: %v\n%s", buildErr, buildOut)
	}
	return builtBin
}

// checkCommand runs `onebox <args> --help`: the subcommand must exist and every
// flag must parse.
func checkCommand(t *testing.T, where string, args []string) {
	t.Helper()
	var sub []string
	for _, a := range args {
		if strings.HasPrefix(a, "-") {
			break
		}
		sub = append(sub, a)
	}
	out, err := exec.Command(onebox(t), append(slices.Clone(args), "--help")...).CombinedOutput()
	if err != nil {
		t.Errorf("%s: onebox %s --help: %v\n%s", where, strings.Join(args, " "), err, out)
		return
	}
	if want := "onebox " + strings.Join(sub, " ") + " [flags]"; !bytes.Contains(out, []byte(want)) {
		t.Errorf("%s: `onebox %s` is not a onebox command (its help lacks %q):\n%s", where, strings.Join(sub, " "), want, out)
	}
}

// unit is a parsed systemd unit file: section -> key -> values in order.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	sec := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			sec = l[1 : len(l)-1]
			if u[sec] != nil {
				t.Errorf("%s:%d: section [%s] twice", path, n, sec)
			}
			u[sec] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || sec == "" || strings.HasSuffix(l, "\\") {
				t.Errorf("%s:%d: not a key=value line in a section: %q", path, n, l)
				continue
			}
			u[sec][k] = append(u[sec][k], v)
		}
	}
	return u
}

func (u unit) get(sec, key string) string {
	if v := u[sec][key]; len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

var wantUnits = map[string][]string{
	"onebox.service":             {"up"},
	"onebox-broker.service":      {"broker"},
	"onebox-invoker.service":     {"invoker"},
	"onebox-bridge-http.service": {"bridge", "http"},
	"onebox-bridge-file.service": {"bridge", "file"},
	"onebox-bridge-cron.service": {"bridge", "cron"},
}

// The environment variables onebox reads (internal/config and cmd/onebox).
var knownEnv = []string{"ONEBOX_CONFIG", "ONEBOX_BROKER_URL", "ONEBOX_BROKER_LISTEN", "ONEBOX_HTTP_LISTEN",
	"ONEBOX_INBOX", "ONEBOX_DATA_DIR", "ONEBOX_NAME", "ONEBOX_USERNAME", "ONEBOX_PASSWORD", "ONEBOX_LOG_LEVEL",
	"ONEBOX_METRICS_LISTEN", "DOCKER_HOST"}

func TestSystemdUnits(t *testing.T) {
	files, _ := filepath.Glob("systemd/*.service")
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	var want []string
	for n := range wantUnits {
		want = append(want, n)
	}
	sort.Strings(names)
	sort.Strings(want)
	if !slices.Equal(names, want) {
		t.Fatalf("units %v, want %v", names, want)
	}
	for _, f := range files {
		name := filepath.Base(f)
		u := parseUnit(t, f)
		for _, s := range []string{"Unit", "Service", "Install"} {
			if u[s] == nil {
				t.Errorf("%s: no [%s]", name, s)
			}
		}
		must := map[[2]string]string{
			{"Service", "Restart"}:                "on-failure",
			{"Service", "User"}:                   "onebox",
			{"Service", "SupplementaryGroups"}:    "docker",
			{"Service", "StateDirectory"}:         "onebox",
			{"Service", "ConfigurationDirectory"}: "onebox",
			{"Service", "NoNewPrivileges"}:        "yes",
			{"Service", "ProtectSystem"}:          "strict",
			{"Service", "ProtectHome"}:            "yes",
			{"Service", "ReadWritePaths"}:         "/var/lib/onebox",
			{"Install", "WantedBy"}:               "multi-user.target",
		}
		for k, v := range must {
			if got := u.get(k[0], k[1]); got != v {
				t.Errorf("%s: [%s] %s=%q, want %q", name, k[0], k[1], got, v)
			}
		}
		if u.get("Unit", "Description") == "" {
			t.Errorf("%s: no Description", name)
		}
		for _, e := range u["Service"]["Environment"] {
			k, _, _ := strings.Cut(e, "=")
			if !slices.Contains(knownEnv, k) {
				t.Errorf("%s: Environment=%s: onebox does not read %s", name, e, k)
			}
		}
		args := strings.Fields(u.get("Service", "ExecStart"))
		if len(args) < 2 || args[0] != "/usr/local/bin/onebox" {
			t.Errorf("%s: ExecStart=%v, want /usr/local/bin/onebox <command>", name, args)
			continue
		}
		if !slices.Equal(args[1:1+len(wantUnits[name])], wantUnits[name]) {
			t.Errorf("%s: ExecStart runs %v, want onebox %v", name, args[1:], wantUnits[name])
		}
		checkCommand(t, name, args[1:])
	}
	if u := parseUnit(t, "systemd/onebox.service"); len(u["Unit"]["Conflicts"]) == 0 {
		t.Errorf("onebox.service must conflict with the per-part units (same ports)")
	}
}

// systemd-analyze verify, on copies whose ExecStart names the built binary (the
// real path, /usr/local/bin/onebox, is not installed here).
func TestSystemdAnalyzeVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian: apt-get install systemd); TestSystemdUnits checked the units")
	}
	bin := onebox(t)
	dir := t.TempDir()
	files, _ := filepath.Glob("systemd/*.service")
	var paths []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b = bytes.ReplaceAll(b, []byte("/usr/local/bin/onebox"), []byte(bin))
		p := filepath.Join(dir, filepath.Base(f))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	out, err := exec.Command(sa, append([]string{"verify"}, paths...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Lines about our own files are findings even with exit status 0.
	for _, l := range strings.Split(string(out), "\n") {
		for _, p := range paths {
			if strings.Contains(l, filepath.Base(p)) {
				t.Errorf("systemd-analyze verify: %s", l)
			}
		}
	}
	t.Logf("systemd-analyze verify: ok %s", bytes.TrimSpace(out))
}

var wantServices = map[string][]string{
	"broker":      {"broker"},
	"invoker":     {"invoker"},
	"bridge-http": {"bridge", "http"},
	"bridge-file": {"bridge", "file"},
	"bridge-cron": {"bridge", "cron"},
}

type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Command     []string          `yaml:"command"`
		Volumes     []string          `yaml:"volumes"`
		Environment map[string]string `yaml:"environment"`
		Restart     string            `yaml:"restart"`
	} `yaml:"services"`
}

func TestComposeFile(t *testing.T) {
	b, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	var got, want []string
	for n := range c.Services {
		got = append(got, n)
	}
	for n := range wantServices {
		want = append(want, n)
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}
	for n, s := range c.Services {
		if !strings.Contains(s.Image, "onebox") || s.Restart == "" {
			t.Errorf("%s: image %q restart %q", n, s.Image, s.Restart)
		}
		if !slices.Equal(s.Command[:len(wantServices[n])], wantServices[n]) {
			t.Errorf("%s: command %v, want onebox %v", n, s.Command, wantServices[n])
		}
		for k := range s.Environment {
			if !slices.Contains(knownEnv, k) {
				t.Errorf("%s: environment %s: onebox does not read it", n, k)
			}
		}
		if s.Environment["ONEBOX_BROKER_URL"] != "tcp://broker:1883" {
			t.Errorf("%s: ONEBOX_BROKER_URL %q", n, s.Environment["ONEBOX_BROKER_URL"])
		}
		// Compose variables as the test sees them are not expanded: check the
		// command with placeholders replaced.
		args := slices.Clone(s.Command)
		for i, a := range args {
			if strings.Contains(a, "${") {
				args[i] = "x"
			}
		}
		checkCommand(t, "compose "+n, args)
	}
	inv := c.Services["invoker"]
	if !slices.ContainsFunc(inv.Volumes, func(v string) bool { return strings.HasSuffix(v, ":/var/run/docker.sock") }) {
		t.Errorf("invoker does not mount the engine socket: %v", inv.Volumes)
	}
	if !slices.Contains(inv.Command, "--name") {
		t.Errorf("invoker has no stable --name: %v", inv.Command)
	}

	df, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"FROM scratch", `ENTRYPOINT ["/onebox"]`, "ARG BINARY="} {
		if !bytes.Contains(df, []byte(w)) {
			t.Errorf("Dockerfile lacks %q", w)
		}
	}
}

// docker compose config (or docker-compose config): the compose tool's own check.
func TestComposeConfig(t *testing.T) {
	var cmd []string
	if exec.Command("docker", "compose", "version").Run() == nil {
		cmd = []string{"docker", "compose"}
	} else if p, err := exec.LookPath("docker-compose"); err == nil {
		cmd = []string{p}
	} else {
		t.Skip("neither `docker compose` nor docker-compose is installed (Debian: apt-get install docker-compose); TestComposeFile parsed the file")
	}
	abs, _ := filepath.Abs("onebox.example.yaml")
	c := exec.Command(cmd[0], append(cmd[1:], "-p", "onebox", "-f", "compose.yaml", "config")...)
	c.Env = append(os.Environ(), "ONEBOX_CONFIG_FILE="+abs)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("%s config: %v\n%s", strings.Join(cmd, " "), err, out)
	}
	for n := range wantServices {
		if !bytes.Contains(out, []byte("  "+n+":")) {
			t.Errorf("%s config: no service %s in\n%s", strings.Join(cmd, " "), n, out)
		}
	}
	if !bytes.Contains(out, []byte(abs+":/etc/onebox/onebox.yaml")) {
		t.Errorf("the config file is not mounted:\n%s", out)
	}
}
