package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/onebox-dev/onebox/handlers"
	"github.com/onebox-dev/onebox/invoker/container"
)

func handlersCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "handlers",
		Short: "List the configured handlers with their images and image sizes, smallest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o, err := loadOptions(cmd)
			if err != nil {
				return err
			}
			rt, err := newRuntime(logger())
			if err != nil {
				return err
			}
			type row struct {
				name, image, size, timeout string
				bytes                      int64
			}
			var rows []row
			for n, h := range o.Handlers {
				r := row{name: n, image: h.Image, timeout: h.Timeout.D().String(), bytes: -1}
				info, err := rt.Image(cmd.Context(), h.Image)
				switch {
				case err == nil:
					r.bytes, r.size = info.Size, handlers.HumanBytes(info.Size)
				case errors.Is(err, container.ErrImageMissing):
					r.size = "missing"
				default:
					return err
				}
				rows = append(rows, r)
			}
			// The workshop's scoreboard: smallest working image first.
			sort.Slice(rows, func(i, j int) bool {
				if (rows[i].bytes < 0) != (rows[j].bytes < 0) {
					return rows[j].bytes < 0
				}
				if rows[i].bytes != rows[j].bytes {
					return rows[i].bytes < rows[j].bytes
				}
				return rows[i].name < rows[j].name
			})
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "HANDLER\tIMAGE\tSIZE\tTIMEOUT")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.name, r.image, r.size, r.timeout)
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVar(&runtimeHost, "runtime", "", "container engine socket (default: DOCKER_HOST or the Docker socket)")
	c.AddCommand(handlersBuildCmd())
	return c
}

func handlersBuildCmd() *cobra.Command {
	var platform, output, busybox string
	c := &cobra.Command{
		Use:   "build [name...]",
		Short: "Build the demo handler images (no registry needed) and load them, or write them to a tar",
		Long: `build compiles the demo handlers (hello, goodbye, echo, inbox-ls, shell, and the
busybox base) into images FROM scratch and loads them into the engine, built for
the engine's platform. With --output it writes a tar instead, for example on a
laptop for a Raspberry Pi 3:

  onebox handlers build --platform linux/arm/v7 --output handlers.tar
  docker load -i handlers.tar        # on the Pi (or podman load -i)

The Go toolchain must be installed where this runs.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			names := args
			if len(names) == 0 {
				names = handlers.Names()
			}
			log := logger()
			ho := handlers.Options{Progress: cmd.ErrOrStderr(), Logger: log}
			ho.Busybox = busybox
			if platform != "" {
				p, err := handlers.ParsePlatform(platform)
				if err != nil {
					return err
				}
				ho.Platform = p
				if len(args) == 0 && busybox == "" && p != handlers.HostPlatform() {
					// The shell handler needs a busybox for that platform: leave it
					// out unless one is given, and say so.
					names = []string{}
					for _, n := range handlers.Names() {
						if n != "shell" {
							names = append(names, n)
						}
					}
					fmt.Fprintf(cmd.ErrOrStderr(), "note: shell is left out for %s: give --busybox with a static busybox for it (Debian: busybox-static:armhf)\n", p)
				}
			}
			start := time.Now()
			if output != "" {
				f, err := os.Create(output)
				if err != nil {
					return err
				}
				if err := handlers.WriteImageTar(cmd.Context(), f, names, ho); err != nil {
					f.Close()
					os.Remove(output)
					return err
				}
				if err := f.Close(); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s in %s: load it with `docker load -i %s`\n", output, time.Since(start).Round(time.Millisecond), output)
				return nil
			}
			rt, err := newRuntime(log)
			if err != nil {
				return err
			}
			if platform == "" {
				info, err := rt.Info(cmd.Context())
				if err != nil {
					return err
				}
				ho.Platform = enginePlatform(info)
			}
			built, err := handlers.Build(cmd.Context(), rt.Client(), names, ho)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "IMAGE\tPLATFORM\tSIZE")
			for _, b := range built {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", b.Ref, b.Platform, handlers.HumanBytes(b.Size))
			}
			return tw.Flush()
		},
	}
	c.Flags().StringVar(&platform, "platform", "", "build for this platform, e.g. linux/arm/v7 or linux/arm64 (default: the engine's)")
	c.Flags().StringVarP(&output, "output", "o", "", "write the images to this tar file (for docker load -i) instead of loading them")
	c.Flags().StringVar(&busybox, "busybox", "", "static busybox binary for the shell handler and busybox base (default /bin/busybox, which must match --platform)")
	c.Flags().StringVar(&runtimeHost, "runtime", "", "container engine socket (default: DOCKER_HOST or the Docker socket)")
	return c
}
