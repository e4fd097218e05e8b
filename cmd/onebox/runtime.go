package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"

	"github.com/onebox-dev/onebox/handlers"
	"github.com/onebox-dev/onebox/internal/config"
	"github.com/onebox-dev/onebox/invoker/container"
	"github.com/onebox-dev/onebox/invoker/docker"
)

var runtimeHost string // --runtime

// newRuntime connects to the engine (DOCKER_HOST, --runtime, or the default socket).
func newRuntime(log *slog.Logger) (*docker.Runtime, error) {
	return docker.New(docker.Options{Host: runtimeHost, Logger: log})
}

// enginePlatform is the platform handler images must be built for.
func enginePlatform(info container.EngineInfo) handlers.Platform {
	s := info.OS + "/" + info.Architecture
	if info.Variant != "" {
		s += "/" + info.Variant
	}
	p, err := handlers.ParsePlatform(s)
	if err != nil {
		return handlers.HostPlatform()
	}
	return p
}

// demoName returns the demo handler whose image ref is ref, or "".
func demoName(ref string) string {
	o := handlers.Options{}
	for _, n := range handlers.Names() {
		if o.Ref(n) == ref {
			return n
		}
	}
	return ""
}

// ensureDemoImages builds the demo handler images that the config names and the
// engine lacks, telling the user what it does.
func ensureDemoImages(ctx context.Context, rt *docker.Runtime, o *config.Options, progress io.Writer, log *slog.Logger) error {
	info, err := rt.Info(ctx)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, h := range o.Handlers {
		if n := demoName(h.Image); n != "" {
			want[n] = true
		}
	}
	var missing []string
	for n := range want {
		if _, err := rt.Image(ctx, handlers.Options{}.Ref(n)); errors.Is(err, container.ErrImageMissing) {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	sort.Strings(missing)
	if i := sort.SearchStrings(missing, "shell"); i < len(missing) && missing[i] == "shell" {
		if err := handlers.CheckBusybox(handlers.Options{Platform: enginePlatform(info)}); err != nil {
			fmt.Fprintf(progress, "onebox: leaving the shell handler out: %v\n", err)
			missing = append(missing[:i], missing[i+1:]...)
			if len(missing) == 0 {
				return nil
			}
		}
	}
	fmt.Fprintf(progress, "onebox: building the demo handler images that are missing: %s\n", strings.Join(missing, ", "))
	_, err = handlers.Build(ctx, rt.Client(), missing, handlers.Options{Platform: enginePlatform(info), Progress: progress, Logger: log})
	if err != nil {
		return fmt.Errorf("building demo handler images: %w", err)
	}
	return nil
}

func stderr() io.Writer { return os.Stderr }
