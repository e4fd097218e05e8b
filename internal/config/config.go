// Package config is onebox's one Options struct, filled from onebox.yaml (strict:
// an unknown key is an error that names its line), then from environment variables
// and flags. Every key is optional; Default() is the embedded default that
// `onebox up` runs with no file at all.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/onebox-dev/onebox/internal/topics"
)

// Duration is a time.Duration written as "30s", "1m30s", "500ms".
type Duration time.Duration

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as 30s or 1m30s, got %q", n.Line, n.Value)
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: bad duration %q: write it like 30s, 1m30s or 500ms", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Size is a byte count written as 1048576, "1MiB", "128m", "512k", "1g".
type Size int64

func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*s = Size(v)
	return nil
}

// ParseSize reads 1048576, 1MiB, 1MB, 128m, 512k, 1g (all binary multiples).
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"gib", 1 << 30}, {"mib", 1 << 20}, {"kib", 1 << 10}, {"gb", 1 << 30}, {"mb", 1 << 20}, {"kb", 1 << 10}, {"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}, {"b", 1}} {
		if strings.HasSuffix(t, u.suf) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suf)), u.m
			break
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("bad size %q: write it like 1048576, 512k, 128m or 1g", s)
	}
	return v * mult, nil
}

// Handler is one function: a name (the map key) bound to an image.
type Handler struct {
	Image       string            `yaml:"image"`
	Cmd         []string          `yaml:"cmd"`
	Timeout     Duration          `yaml:"timeout"`
	Memory      Size              `yaml:"memory"`
	CPUs        float64           `yaml:"cpus"`
	Pids        int64             `yaml:"pids"`
	Env         map[string]string `yaml:"env"`
	Mounts      []string          `yaml:"mounts"` // host:container[:ro|rw]
	Network     string            `yaml:"network"`
	User        string            `yaml:"user"`
	Concurrency int               `yaml:"concurrency"`
	Queue       int               `yaml:"queue"`      // 0 = default (20); -1 = no queue
	Privileged  bool              `yaml:"privileged"` // needs unsafe: true
	Unsafe      bool              `yaml:"unsafe"`     // allow what gives a handler the host
}

// Broker configures the embedded broker.
type Broker struct {
	Listen    string `yaml:"listen"`     // TCP address, default :1883
	MaxPacket Size   `yaml:"max_packet"` // default 1 MiB
	DataDir   string `yaml:"data_dir"`   // bolt persistence lives here; "" keeps state in memory

	TLS       *TLS       `yaml:"tls"`       // optional MQTT over TLS listener (security.go)
	WebSocket *WebSocket `yaml:"websocket"` // optional MQTT over WebSocket listener
	Sys       bool       `yaml:"sys"`       // serve $SYS statistics to clients allowed to read them
}

// Invoker configures the invoker.
type Invoker struct {
	Name        string   `yaml:"name"`         // instance name, default the host name
	Concurrency int      `yaml:"concurrency"`  // global running-container limit, default from the box
	StdoutCap   Size     `yaml:"stdout_cap"`   // default 1 MiB
	Grace       Duration `yaml:"grace"`        // SIGTERM to SIGKILL, default 2s
	ShareGroup  string   `yaml:"share_group"`  // subscribe through $share/<group>/ when set
	DedupeCount int      `yaml:"dedupe_count"` // ids remembered, default 10000
	DedupeAge   Duration `yaml:"dedupe_age"`   // how long, default 10m
}

// HTTP configures the HTTP bridge.
type HTTP struct {
	Listen         string   `yaml:"listen"`          // default :8080
	DefaultHandler string   `yaml:"default_handler"` // GET /run runs this, default hello
	Tokens         []string `yaml:"tokens"`          // bearer tokens; none = open
}

// File configures the file bridge.
type File struct {
	Inbox   string            `yaml:"inbox"`   // inbox/<handler>/ triggers <handler>; default ./inbox
	Folders map[string]string `yaml:"folders"` // folder -> handler, beside the convention
}

// CronEntry is one schedule.
type CronEntry struct {
	Name     string `yaml:"name"`
	Schedule string `yaml:"schedule"`
	Handler  string `yaml:"handler"`
	Payload  string `yaml:"payload"`
	Overlap  string `yaml:"overlap"` // skip (default) or queue
}

// Options is the whole of onebox's configuration.
type Options struct {
	BrokerURL string              `yaml:"broker_url"` // what parts connect to; default tcp://127.0.0.1:1883
	Broker    Broker              `yaml:"broker"`
	Invoker   Invoker             `yaml:"invoker"`
	HTTP      HTTP                `yaml:"http"`
	File      File                `yaml:"file"`
	Cron      []CronEntry         `yaml:"cron"`
	Handlers  map[string]*Handler `yaml:"handlers"`
	Users     map[string]*User    `yaml:"users"` // MQTT users (security.go); none = anyone may connect

	// Path is the file these options were read from ("" for the embedded default).
	Path string `yaml:"-"`
}

// Defaults for every key.
const (
	DefaultBrokerListen = ":1883"
	DefaultMaxPacket    = 1 << 20
	DefaultStdoutCap    = 1 << 20
	DefaultTimeout      = 30 * time.Second
	DefaultGrace        = 2 * time.Second
	DefaultMemory       = 128 << 20
	DefaultPids         = 64
	DefaultConcurrency  = 2
	DefaultQueue        = 20
	DefaultHTTPListen   = ":8080"
	DefaultInbox        = "./inbox"
	DefaultDedupeCount  = 10000
	DefaultDedupeAge    = 10 * time.Minute
	DefaultDataDir      = "./onebox-data"
	DefaultHandlerName  = "hello"
)

// DemoHandlers are the handlers of the embedded default, all built by
// `onebox handlers build`.
func DemoHandlers() map[string]*Handler {
	return map[string]*Handler{
		"hello":    {Image: "onebox/hello:latest"},
		"goodbye":  {Image: "onebox/goodbye:latest"},
		"echo":     {Image: "onebox/echo:latest"},
		"inbox-ls": {Image: "onebox/inbox-ls:latest", Mounts: []string{DefaultInbox + ":/inbox:ro"}},
		"shell":    {Image: "onebox/shell:latest"},
	}
}

// Default returns the embedded default: demo handlers, broker on :1883, HTTP on :8080.
func Default() *Options {
	o := &Options{Handlers: DemoHandlers()}
	o.ApplyDefaults()
	return o
}

// ApplyDefaults fills every unset key.
func (o *Options) ApplyDefaults() {
	if o.Broker.Listen == "" {
		o.Broker.Listen = DefaultBrokerListen
	}
	if o.Broker.MaxPacket == 0 {
		o.Broker.MaxPacket = DefaultMaxPacket
	}
	if o.Broker.DataDir == "" {
		o.Broker.DataDir = DefaultDataDir
	}
	if o.BrokerURL == "" {
		o.BrokerURL = URLFor(o.Broker.Listen)
	}
	if o.Invoker.Name == "" {
		h, _ := os.Hostname()
		if h == "" {
			h = "onebox"
		}
		o.Invoker.Name = h
	}
	if o.Invoker.Concurrency == 0 {
		o.Invoker.Concurrency = BoxConcurrency()
	}
	if o.Invoker.StdoutCap == 0 {
		o.Invoker.StdoutCap = DefaultStdoutCap
	}
	if o.Invoker.Grace == 0 {
		o.Invoker.Grace = Duration(DefaultGrace)
	}
	if o.Invoker.DedupeCount == 0 {
		o.Invoker.DedupeCount = DefaultDedupeCount
	}
	if o.Invoker.DedupeAge == 0 {
		o.Invoker.DedupeAge = Duration(DefaultDedupeAge)
	}
	if o.HTTP.Listen == "" {
		o.HTTP.Listen = DefaultHTTPListen
	}
	if o.HTTP.DefaultHandler == "" {
		o.HTTP.DefaultHandler = DefaultHandlerName
	}
	if o.File.Inbox == "" {
		o.File.Inbox = DefaultInbox
	}
	if o.Handlers == nil {
		o.Handlers = map[string]*Handler{}
	}
	for _, h := range o.Handlers {
		if h != nil { // an empty entry ("hello:") is reported by Validate
			h.applyDefaults()
		}
	}
	for i := range o.Cron {
		if o.Cron[i].Overlap == "" {
			o.Cron[i].Overlap = "skip"
		}
	}
}

func (h *Handler) applyDefaults() {
	if h.Timeout == 0 {
		h.Timeout = Duration(DefaultTimeout)
	}
	if h.Memory == 0 {
		h.Memory = DefaultMemory
	}
	if h.Pids == 0 {
		h.Pids = DefaultPids
	}
	if h.Network == "" {
		h.Network = "none"
	}
	if h.Concurrency == 0 {
		h.Concurrency = DefaultConcurrency
	}
	switch {
	case h.Queue == 0:
		h.Queue = DefaultQueue
	case h.Queue < 0: // "queue: -1": no queue, busy as soon as every slot runs
		h.Queue = 0
	}
}

// BoxConcurrency is the default global limit on running containers: one per core,
// at least 2, and no more than one per 128 MiB of memory.
func BoxConcurrency() int {
	n := runtime.NumCPU()
	if n < 2 {
		n = 2
	}
	if mem := memTotal(); mem > 0 {
		if byMem := int(mem / (128 << 20)); byMem < n {
			n = max(byMem, 1)
		}
	}
	return n
}

func memTotal() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// URLFor turns a listen address (":1883", "0.0.0.0:1883", "127.0.0.1:1883") into a
// broker URL that a local client can dial.
func URLFor(listen string) string {
	host, port, ok := strings.Cut(listen, ":")
	if i := strings.LastIndex(listen, ":"); i >= 0 {
		host, port, ok = listen[:i], listen[i+1:], true
	}
	if !ok || port == "" {
		port = "1883"
	}
	host = strings.Trim(host, "[]")
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return "tcp://" + host + ":" + port
}

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("config")

// Load reads path strictly, applies defaults and validates. A missing file is an
// error; callers that accept "no file" check os.IsNotExist themselves.
func Load(path string) (*Options, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	o, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	o.Path = path
	o.resolvePaths(filepath.Dir(path))
	return o, nil
}

// Parse decodes YAML strictly, applies defaults and validates.
func Parse(b []byte) (*Options, error) {
	o := &Options{}
	if len(bytes.TrimSpace(b)) > 0 {
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(o); err != nil {
			return nil, fmt.Errorf("%w: %s", ErrConfig, yamlMessage(err))
		}
	}
	o.ApplyDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}

var fieldNotFound = regexp.MustCompile(`field (\S+) not found in type config\.(\w+)`)

// yamlMessage turns the YAML decoder's wording into the user's: "line 4: unknown
// key "imagee" in a handler" rather than Go type names.
func yamlMessage(err error) string {
	m := strings.TrimPrefix(err.Error(), "yaml: ")
	m = strings.TrimPrefix(m, "unmarshal errors:\n")
	m = fieldNotFound.ReplaceAllStringFunc(m, func(x string) string {
		sub := fieldNotFound.FindStringSubmatch(x)
		where := map[string]string{"Options": "at the top level", "Handler": "in a handler", "Broker": "under broker:",
			"Invoker": "under invoker:", "HTTP": "under http:", "File": "under file:", "CronEntry": "in a cron entry"}[sub[2]]
		if where == "" {
			where = "under " + strings.ToLower(sub[2]) + ":"
		}
		return fmt.Sprintf("unknown key %q %s (see deploy/onebox.example.yaml for every key)", sub[1], where)
	})
	return strings.TrimSpace(strings.ReplaceAll(m, "\n  ", "; "))
}

// resolvePaths makes relative host paths in mounts and the inbox relative to the
// config file's folder, as a reader of the file would expect.
func (o *Options) resolvePaths(dir string) {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	o.File.Inbox = abs(o.File.Inbox)
	if o.Broker.DataDir != "" {
		o.Broker.DataDir = abs(o.Broker.DataDir)
	}
	for _, h := range o.Handlers {
		if h == nil {
			continue
		}
		for i, m := range h.Mounts {
			if src, rest, ok := strings.Cut(m, ":"); ok && !filepath.IsAbs(src) {
				h.Mounts[i] = abs(src) + ":" + rest
			}
		}
	}
	o.resolveSecurityPaths(abs)
	folders := map[string]string{}
	for f, h := range o.File.Folders {
		folders[abs(f)] = h
	}
	if len(folders) > 0 {
		o.File.Folders = folders
	}
}

// Validate checks every handler and entry and names the first problem with its fix.
func (o *Options) Validate() error {
	names := make([]string, 0, len(o.Handlers))
	for n := range o.Handlers {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !topics.ValidHandler(n) {
			return fmt.Errorf("%w: handler %q: %v", ErrConfig, n, topics.ErrBadHandler)
		}
		h := o.Handlers[n]
		if h == nil {
			return fmt.Errorf("%w: handler %q is empty: give it at least an image", ErrConfig, n)
		}
		if err := h.Validate(); err != nil {
			return fmt.Errorf("%w: handler %q: %v", ErrConfig, n, err)
		}
	}
	if o.Broker.MaxPacket < 1024 || o.Broker.MaxPacket > 256<<20 {
		return fmt.Errorf("%w: broker.max_packet %d is out of range: use 1k to 256m", ErrConfig, o.Broker.MaxPacket)
	}
	if o.Invoker.Concurrency < 0 {
		return fmt.Errorf("%w: invoker.concurrency %d: use a positive number", ErrConfig, o.Invoker.Concurrency)
	}
	if o.Invoker.ShareGroup != "" && strings.ContainsAny(o.Invoker.ShareGroup, "/+#") {
		return fmt.Errorf("%w: invoker.share_group %q may not contain / + or #", ErrConfig, o.Invoker.ShareGroup)
	}
	if err := o.validateSecurity(); err != nil {
		return err
	}
	for i, t := range o.HTTP.Tokens {
		if len(t) < 16 || strings.ContainsAny(t, " \t\r\n") {
			return fmt.Errorf("%w: http.tokens[%d]: use at least 16 characters without spaces, e.g. from `openssl rand -hex 24`", ErrConfig, i)
		}
	}
	for i, t := range o.HTTP.Tokens {
		if len(t) < 16 || strings.ContainsAny(t, " \t\r\n") {
			return fmt.Errorf("%w: http.tokens[%d]: use at least 16 characters without spaces, e.g. from `openssl rand -hex 24`", ErrConfig, i)
		}
	}
	for f, h := range o.File.Folders {
		if !topics.ValidHandler(h) {
			return fmt.Errorf("%w: file.folders %q: handler %q: %v", ErrConfig, f, h, topics.ErrBadHandler)
		}
	}
	for i, c := range o.Cron {
		what := fmt.Sprintf("cron entry %d", i+1)
		if c.Name != "" {
			what = fmt.Sprintf("cron entry %d (%s)", i+1, c.Name)
		}
		if strings.TrimSpace(c.Schedule) == "" {
			return fmt.Errorf("%w: %s: schedule is missing: write e.g. \"*/5 * * * *\" or \"@every 1m\"", ErrConfig, what)
		}
		if !topics.ValidHandler(c.Handler) {
			return fmt.Errorf("%w: %s: handler %q: %v", ErrConfig, what, c.Handler, topics.ErrBadHandler)
		}
		if c.Overlap != "skip" && c.Overlap != "queue" {
			return fmt.Errorf("%w: %s: overlap %q: use skip or queue", ErrConfig, what, c.Overlap)
		}
	}
	return nil
}

// Validate checks one handler.
func (h *Handler) Validate() error {
	if strings.TrimSpace(h.Image) == "" {
		return errors.New("image is missing: set image: to a local image such as onebox/hello:latest")
	}
	if h.Timeout.D() < 10*time.Millisecond {
		return fmt.Errorf("timeout %s is too short: use at least 10ms", h.Timeout.D())
	}
	if h.Memory < 6<<20 {
		return fmt.Errorf("memory %d bytes is below the engine's minimum: use at least 6m", h.Memory)
	}
	if h.Concurrency < 1 || h.Queue < 0 {
		return fmt.Errorf("concurrency %d / queue %d: concurrency must be at least 1 and queue at least 0", h.Concurrency, h.Queue)
	}
	for k := range h.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return fmt.Errorf("env key %q: use a name without = or NUL", k)
		}
	}
	for _, m := range h.Mounts {
		if _, err := ParseMount(m); err != nil {
			return err
		}
	}
	if !h.Unsafe {
		if why := h.UnsafeReason(); why != "" {
			return fmt.Errorf("%s: that gives the handler control of the host; remove it, or set unsafe: true on this handler if you mean it", why)
		}
	}
	return nil
}

// hostControl are host paths whose mount gives a container the host: the engine
// sockets and the folders that hold them, and the host's root.
var hostControl = []string{"/", "/var/run", "/run", "/var/run/docker.sock", "/run/docker.sock",
	"/run/podman", "/run/podman/podman.sock", "/var/run/podman", "/var/run/podman/podman.sock",
	"/run/containerd", "/var/lib/docker", "/proc", "/sys", "/dev", "/boot", "/etc"}

// UnsafeReason says what in h gives a handler control of the host ("" for none):
// privileged, the host's network, or a mount of the engine's socket or the host's root.
func (h *Handler) UnsafeReason() string {
	if h.Privileged {
		return "privileged: true"
	}
	if h.Network == "host" {
		return "network: host"
	}
	for _, m := range h.Mounts {
		ms, err := ParseMount(m)
		if err != nil {
			continue
		}
		src := filepath.Clean(ms.Source)
		if strings.HasSuffix(src, ".sock") {
			return fmt.Sprintf("mount %q exposes a socket (an engine socket gives root on the host)", m)
		}
		for _, p := range hostControl {
			if src == p {
				return fmt.Sprintf("mount %q exposes the host's %s", m, p)
			}
		}
	}
	return ""
}

// MountSpec is a parsed mount.
type MountSpec struct {
	Source, Target string
	ReadOnly       bool
}

// ParseMount reads host:container[:ro|rw]. Mounts are read-only unless :rw is given.
func ParseMount(s string) (MountSpec, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || !strings.HasPrefix(parts[1], "/") {
		return MountSpec{}, fmt.Errorf("mount %q: write host-path:/container-path[:ro|rw]", s)
	}
	m := MountSpec{Source: parts[0], Target: parts[1], ReadOnly: true}
	if len(parts) == 3 {
		switch parts[2] {
		case "ro":
		case "rw":
			m.ReadOnly = false
		default:
			return MountSpec{}, fmt.Errorf("mount %q: mode %q: use ro or rw", s, parts[2])
		}
	}
	return m, nil
}

// Env applies ONEBOX_* environment variables over o (flags come after, in cmd/).
func (o *Options) Env(getenv func(string) string) {
	if v := getenv("ONEBOX_BROKER_URL"); v != "" {
		o.BrokerURL = v
	}
	if v := getenv("ONEBOX_BROKER_LISTEN"); v != "" {
		o.Broker.Listen = v
	}
	if v := getenv("ONEBOX_DATA_DIR"); v != "" {
		o.Broker.DataDir = v
	}
	if v := getenv("ONEBOX_HTTP_LISTEN"); v != "" {
		o.HTTP.Listen = v
	}
	if v := getenv("ONEBOX_INBOX"); v != "" {
		o.File.Inbox = v
	}
	if v := getenv("ONEBOX_NAME"); v != "" {
		o.Invoker.Name = v
	}
}
