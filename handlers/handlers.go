// Package handlers builds onebox's demo handler images without a registry and
// without a Dockerfile builder.
//
// The handlers are tiny stdlib-only Go programs (hello, goodbye, echo,
// inbox-ls) whose sources are embedded here, plus a shell example on a
// busybox base. The package compiles them with the Go toolchain found on PATH
// (cross-compiling for the engine's platform: no emulation needed), writes
// docker-archive image tars itself (manifest.json, config, one layer per
// image; the shell image has the busybox layer under its own), and loads them
// with the Engine API's ImageLoad (which is `docker load`, and also works with
// Podman's Docker-compatible socket or `podman load -i`).
//
// Images are FROM scratch and reproducible: the same sources, Go version and
// platform give the same image ID (file times are the Unix epoch).
package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
)

// The label every onebox handler image carries, with the handler's name.
const LabelHandler = "io.onebox.handler"

// DefaultPrefix is put before a handler's name to make its repository.
const DefaultPrefix = "onebox/"

// BusyboxName is the name of the busybox base image (onebox/busybox:latest).
// It can be given to WriteImageTar and Build like a handler's name.
const BusyboxName = "busybox"

// DefaultBusybox is where Debian's busybox-static package puts its binary.
const DefaultBusybox = "/bin/busybox"

// Names lists the demo handlers, in a stable order.
func Names() []string { return []string{"hello", "goodbye", "echo", "inbox-ls", "shell"} }

// goHandlers are the handlers compiled from embedded Go sources.
var goHandlers = map[string]bool{"hello": true, "goodbye": true, "echo": true, "inbox-ls": true}

// Platform is an image platform as Docker and OCI name it: linux/amd64,
// linux/arm/v7, linux/arm64.
type Platform struct{ OS, Arch, Variant string }

// String gives os/arch or os/arch/variant.
func (p Platform) String() string {
	if p.Variant == "" {
		return p.OS + "/" + p.Arch
	}
	return p.OS + "/" + p.Arch + "/" + p.Variant
}

// HostPlatform is the platform this process runs on (arm is taken as v7).
func HostPlatform() Platform {
	p, err := normalize(Platform{OS: runtime.GOOS, Arch: runtime.GOARCH})
	if err != nil {
		return Platform{OS: runtime.GOOS, Arch: runtime.GOARCH}
	}
	return p
}

// ParsePlatform reads "os/arch[/variant]" (linux/arm/v7) or just an
// architecture (arm64). It also takes the kernel's names, as the Engine's
// Info reports them (x86_64, aarch64, armv7l), so that
// ParsePlatform(info.OSType+"/"+info.Architecture) gives the engine's platform.
// An arm platform without a variant is v7 (the Raspberry Pi 3).
func ParsePlatform(s string) (Platform, error) {
	parts := strings.Split(strings.ToLower(strings.TrimSpace(s)), "/")
	var p Platform
	switch len(parts) {
	case 1:
		p = Platform{OS: "linux", Arch: parts[0]}
	case 2:
		p = Platform{OS: parts[0], Arch: parts[1]}
	case 3:
		p = Platform{OS: parts[0], Arch: parts[1], Variant: parts[2]}
	default:
		return Platform{}, fmt.Errorf("platform %q: want os/arch[/variant], such as linux/arm/v7", s)
	}
	if p.OS == "" || p.Arch == "" {
		return Platform{}, fmt.Errorf("platform %q: want os/arch[/variant], such as linux/arm/v7", s)
	}
	q, err := normalize(p)
	if err != nil {
		return Platform{}, fmt.Errorf("platform %q: %w", s, err)
	}
	return q, nil
}

func normalize(p Platform) (Platform, error) {
	switch p.Arch {
	case "x86_64", "x86-64", "x64":
		p.Arch = "amd64"
	case "aarch64":
		p.Arch = "arm64"
	case "i386", "i486", "i586", "i686", "x86":
		p.Arch = "386"
	case "armhf", "armv7", "armv7l", "armv7hl", "arm32v7":
		p.Arch, p.Variant = "arm", "v7"
	case "armel", "armv6", "armv6l", "arm32v6":
		p.Arch, p.Variant = "arm", "v6"
	case "armv5", "armv5l", "armv5tel", "arm32v5":
		p.Arch, p.Variant = "arm", "v5"
	}
	if p.OS != "linux" {
		return p, fmt.Errorf("os %q: handler images are for linux only", p.OS)
	}
	if _, ok := elfMachines[p.Arch]; !ok {
		return p, fmt.Errorf("architecture %q is not supported (amd64, arm64, arm, 386, riscv64, ppc64le, s390x)", p.Arch)
	}
	switch p.Arch {
	case "arm":
		if p.Variant == "" {
			p.Variant = "v7"
		}
		if p.Variant != "v5" && p.Variant != "v6" && p.Variant != "v7" {
			return p, fmt.Errorf("arm variant %q: want v5, v6 or v7", p.Variant)
		}
	case "arm64":
		if p.Variant != "" && p.Variant != "v8" {
			return p, fmt.Errorf("arm64 variant %q: want v8 or none", p.Variant)
		}
	case "amd64":
		if p.Variant != "" && p.Variant != "v1" && p.Variant != "v2" && p.Variant != "v3" && p.Variant != "v4" {
			return p, fmt.Errorf("amd64 variant %q: want v1 to v4 or none", p.Variant)
		}
	default:
		if p.Variant != "" {
			return p, fmt.Errorf("%s has no variant %q", p.Arch, p.Variant)
		}
	}
	return p, nil
}

// Options says how to build. Every field may be left zero.
type Options struct {
	// Platform to build for; zero means the host's. Pass the engine's
	// (ParsePlatform of its Info's OSType/Architecture) when it differs.
	Platform Platform
	// Prefix of each image's repository; "" means DefaultPrefix ("onebox/").
	// The tag is always latest.
	Prefix string
	// Busybox is the statically linked busybox binary for the busybox base
	// and the shell handler; "" means DefaultBusybox (Debian's busybox-static).
	// Its machine must match Platform: for linux/arm/v7 give an armhf one.
	Busybox string
	// Go is the go command; "" means "go" found on PATH.
	Go string
	// Logger gets debug details; nil discards them.
	Logger *slog.Logger
	// Progress gets one human line per step ("built onebox/hello:latest
	// (linux/amd64) 1.5 MB"); nil discards them.
	Progress io.Writer
}

// Ref is the image reference for a handler's name: <prefix><name>:latest.
func (o Options) Ref(name string) string {
	prefix := o.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return prefix + name + ":latest"
}

func (o Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

func (o Options) progress(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, format+"\n", args...)
	}
}

func (o Options) platform() (Platform, error) {
	if o.Platform == (Platform{}) {
		return HostPlatform(), nil
	}
	p, err := normalize(o.Platform)
	if err != nil {
		return Platform{}, fmt.Errorf("platform %s: %w", o.Platform, err)
	}
	return p, nil
}

// Built describes one image written or loaded.
type Built struct {
	Name     string   // handler name (or "busybox")
	Ref      string   // onebox/hello:latest
	ID       string   // image ID: sha256 of its config
	Size     int64    // bytes of its layer tars, uncompressed (a few kB over what `docker images` shows)
	Platform Platform // what it was built for
}

// Loader loads a docker-archive tar into an engine. *client.Client of
// github.com/docker/docker satisfies it (also when talking to Podman).
type Loader interface {
	ImageLoad(ctx context.Context, r io.Reader, opts ...client.ImageLoadOption) (image.LoadResponse, error)
}

// WriteImageTar builds the named images (see Names; "busybox" too) and writes
// them to w as one docker-archive tar, which `docker load -i` and
// `podman load -i` take. Building "shell" also writes the busybox base.
func WriteImageTar(ctx context.Context, w io.Writer, names []string, o Options) error {
	imgs, err := assemble(ctx, names, o)
	if err != nil {
		return err
	}
	return writeArchive(w, imgs)
}

// Build builds the named images and loads them into the engine behind l.
func Build(ctx context.Context, l Loader, names []string, o Options) ([]Built, error) {
	imgs, err := assemble(ctx, names, o)
	if err != nil {
		return nil, err
	}
	o.progress("loading %d image(s) into the engine…", len(imgs))
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeArchive(pw, imgs)) }()
	resp, err := l.ImageLoad(ctx, pr, client.ImageLoadWithQuiet(true))
	if err != nil {
		pr.CloseWithError(err)
		return nil, fmt.Errorf("loading handler images: %w", err)
	}
	defer resp.Body.Close()
	if err := readLoadResponse(resp, o.logger()); err != nil {
		pr.CloseWithError(err)
		return nil, fmt.Errorf("loading handler images: %w", err)
	}
	pr.Close()
	out := make([]Built, 0, len(imgs))
	for _, im := range imgs {
		out = append(out, im.built())
		o.progress("loaded %s (%s) %s", im.ref, im.platform, HumanBytes(im.size()))
	}
	return out, nil
}

// BusyboxImage ensures the busybox base image (onebox/busybox:latest with the
// default prefix) is loaded and returns its reference. Its entrypoint is
// empty and its command is sh, so `docker run IMAGE sh -c '…'` works.
func BusyboxImage(ctx context.Context, l Loader, o Options) (string, error) {
	b, err := Build(ctx, l, []string{BusyboxName}, o)
	if err != nil {
		return "", err
	}
	return b[0].Ref, nil
}

// readLoadResponse reads the engine's answer to a load to its end and turns
// an error message in it into an error.
func readLoadResponse(resp image.LoadResponse, log *slog.Logger) error {
	if !resp.JSON {
		b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return err
		}
		log.Debug("image load", "response", string(b))
		return nil
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var m struct {
			Stream      string `json:"stream"`
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("reading the engine's answer: %w", err)
		}
		if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
			return errors.New(m.ErrorDetail.Message)
		}
		if m.Error != "" {
			return errors.New(m.Error)
		}
		if s := strings.TrimSpace(m.Stream); s != "" {
			log.Debug("image load", "engine", s)
		}
	}
}

// HumanBytes writes a size in decimal units, as `docker images` does (1,474,722
// bytes is 1.47 MB), with enough digits to rank close entries.
func HumanBytes(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.2f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}
