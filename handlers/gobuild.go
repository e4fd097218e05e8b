package handlers

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The handlers' sources, so that the onebox binary can build them anywhere Go
// is installed.
//
//go:embed hello/main.go goodbye/main.go echo/main.go inbox-ls/main.go shell/handler.sh
var sources embed.FS

// Source gives the embedded source of a handler: main.go for the Go ones,
// handler.sh for shell.
func Source(name string) ([]byte, error) {
	if name == "shell" {
		return sources.ReadFile("shell/handler.sh")
	}
	if !goHandlers[name] {
		return nil, fmt.Errorf("no handler %q", name)
	}
	return sources.ReadFile(name + "/main.go")
}

// ErrNoGo is returned (wrapped) when there is no Go toolchain to compile the
// handlers with.
var ErrNoGo = errors.New("the go command is not on PATH: install Go to build the handler images here, " +
	"or build them on another machine with `onebox handlers build --platform linux/arm/v7 --output handlers.tar` " +
	"and load that file here with `docker load -i handlers.tar` (or `podman load -i handlers.tar`)")

// goEnv gives GOOS, GOARCH and the variant's variable for p.
func goEnv(p Platform) []string {
	env := []string{"GOOS=" + p.OS, "GOARCH=" + p.Arch}
	switch p.Arch {
	case "arm":
		env = append(env, "GOARM="+strings.TrimPrefix(p.Variant, "v"))
	case "amd64":
		if p.Variant != "" {
			env = append(env, "GOAMD64="+p.Variant)
		}
	}
	return env
}

// compile builds the named Go handlers for p in a temporary module and
// returns each one's binary.
func compile(ctx context.Context, names []string, p Platform, o Options) (map[string][]byte, error) {
	goCmd := o.Go
	if goCmd == "" {
		goCmd = "go"
	}
	goPath, err := exec.LookPath(goCmd)
	if err != nil {
		if o.Go != "" {
			return nil, fmt.Errorf("go command %q: %w", o.Go, err)
		}
		return nil, ErrNoGo
	}
	dir, err := os.MkdirTemp("", "onebox-handlers-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	// go 1.18 in go.mod: any toolchain from then on builds these sources
	// without fetching a newer one.
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module onebox.local/handlers\n\ngo 1.18\n"), 0o644); err != nil {
		return nil, err
	}
	args := []string{"build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, "bin") + string(filepath.Separator)}
	for _, n := range names {
		src, err := fs.ReadFile(sources, n+"/main.go")
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Join(dir, n), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, n, "main.go"), src, 0o644); err != nil {
			return nil, err
		}
		args = append(args, "./"+n)
	}
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		return nil, err
	}

	cmd := exec.CommandContext(ctx, goPath, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"CGO_ENABLED=0",
		"GOFLAGS=",          // a user's -mod=vendor or the like has no place here
		"GOWORK=off",        // nor a go.work above the temp dir
		"GOTOOLCHAIN=local", // never download a toolchain
		"GO111MODULE=on",
		"GOPROXY=off", // the handlers are stdlib only
	)
	if os.Getenv("GOCACHE") == "" {
		if _, err := os.UserCacheDir(); err != nil { // no HOME, as under some service managers
			cmd.Env = append(cmd.Env, "GOCACHE="+filepath.Join(os.TempDir(), "onebox-go-cache"))
		}
	}
	cmd.Env = append(cmd.Env, goEnv(p)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	o.logger().Debug("compiling handlers", "go", goPath, "args", args, "env", goEnv(p))
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("go build for %s: %w\n%s", p, err, strings.TrimSpace(out.String()))
	}
	bins := make(map[string][]byte, len(names))
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, "bin", n))
		if err != nil {
			return nil, fmt.Errorf("go build for %s left no %s: %w", p, n, err)
		}
		bins[n] = b
	}
	return bins, nil
}
