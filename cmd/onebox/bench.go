package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/onebox-dev/onebox/internal/config"
	"github.com/onebox-dev/onebox/internal/record"
	"github.com/onebox-dev/onebox/internal/topics"
)

func benchCmd() *cobra.Command {
	var runs int
	var handler string
	var skipRSS bool
	c := &cobra.Command{
		Use:   "bench",
		Short: "Measure trigger→result latency against `docker run --rm` of the same image, and the idle RSS of `onebox up`",
		Long: `bench starts a private broker and invoker on free loopback ports, runs the
handler --runs times through MQTT (publish trigger, wait for result and status),
then runs the same image --runs times with ` + "`docker run --rm -i --network none`" + `,
and prints the median and p95 of both and their ratio. Both are measured in the
same process, one after the other, so the ratio holds on a noisy machine. It
then starts ` + "`onebox up`" + ` on free ports and reports its resident memory once idle.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runs < 3 {
				return fmt.Errorf("--runs %d: use at least 3", runs)
			}
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			log := logger()
			dir, err := os.MkdirTemp("", "onebox-bench-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			image := "onebox/" + handler + ":latest"
			o := config.Default()
			o.Handlers = map[string]*config.Handler{handler: {Image: image}}
			o.Broker.Listen = "127.0.0.1:0"
			o.Broker.DataDir = filepath.Join(dir, "data")
			o.Invoker.Name = "bench-" + randHex(4)
			o.ApplyDefaults()
			rt, err := newRuntime(log)
			if err != nil {
				return err
			}
			if err := ensureDemoImages(ctx, rt, o, cmd.ErrOrStderr(), log); err != nil {
				return err
			}
			b, err := startBroker(o)
			if err != nil {
				return err
			}
			defer b.Close()
			o.BrokerURL = b.URL()
			inv, err := startInvoker(ctx, o)
			if err != nil {
				return err
			}
			defer stopInvoker(inv)

			hcfg := *o
			hcfg.HTTP.Listen = "127.0.0.1:0"
			br, err := startBridges(ctx, &hcfg, bridgeSet{http: true})
			if err != nil {
				return err
			}
			defer br.close()
			var viaHTTP []time.Duration
			for i := 0; i < runs+2; i++ {
				t0 := time.Now()
				resp, err := http.Get("http://" + br.httpAddr + "/run/" + handler)
				if err != nil {
					return err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return fmt.Errorf("bench: GET /run/%s answered %s", handler, resp.Status)
				}
				if i >= 2 {
					viaHTTP = append(viaHTTP, time.Since(t0))
				}
			}

			var onebox, dockerRun, startMs []time.Duration
			for i := 0; i < runs+2; i++ { // two warm-up runs
				t0 := time.Now()
				rec, _, err := invokeOnce(ctx, o.BrokerURL, handler, topics.NewID(), nil, time.Minute)
				if err != nil {
					return err
				}
				if rec.State != record.Succeeded {
					return fmt.Errorf("bench run %s: %s %s %s", rec.ID, rec.State, rec.Reason, rec.Error)
				}
				if i >= 2 {
					onebox = append(onebox, time.Since(t0))
					startMs = append(startMs, time.Duration(rec.StartMs)*time.Millisecond)
				}
			}
			for i := 0; i < runs+2; i++ {
				t0 := time.Now()
				c := exec.CommandContext(ctx, "docker", "run", "--rm", "-i", "--network", "none", image)
				c.Stdin = bytes.NewReader(nil)
				if b, err := c.CombinedOutput(); err != nil {
					return fmt.Errorf("docker run %s: %v: %s", image, err, b)
				}
				if i >= 2 {
					dockerRun = append(dockerRun, time.Since(t0))
				}
			}
			mo, md := pct(onebox, 50), pct(dockerRun, 50)
			fmt.Fprintf(out, "handler=%s image=%s runs=%d\n", handler, image, runs)
			fmt.Fprintf(out, "onebox trigger→result  median=%s p95=%s  (cold start create→running median=%s)\n", ms(mo), ms(pct(onebox, 95)), ms(pct(startMs, 50)))
			fmt.Fprintf(out, "HTTP GET /run/%s      median=%s p95=%s  (the HTTP bridge adds %s to the median)\n", handler, ms(pct(viaHTTP, 50)), ms(pct(viaHTTP, 95)), ms(pct(viaHTTP, 50)-mo))
			fmt.Fprintf(out, "docker run --rm -i     median=%s p95=%s\n", ms(md), ms(pct(dockerRun, 95)))
			fmt.Fprintf(out, "ratio onebox/docker-run median=%.2f p95=%.2f\n", float64(mo)/float64(md), float64(pct(onebox, 95))/float64(pct(dockerRun, 95)))
			if !skipRSS {
				rss, err := idleRSS(ctx, dir)
				if err != nil {
					return fmt.Errorf("idle RSS of onebox up: %w", err)
				}
				fmt.Fprintf(out, "onebox up idle RSS=%.1f MiB\n", float64(rss)/(1<<20))
			}
			return nil
		},
	}
	c.Flags().IntVar(&runs, "runs", 30, "measured runs of each kind (after 2 warm-up runs)")
	c.Flags().StringVar(&handler, "handler", "hello", "demo handler to measure")
	c.Flags().BoolVar(&skipRSS, "no-rss", false, "skip the idle RSS measurement")
	return c
}

func pct(d []time.Duration, p int) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return s[i-1]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// idleRSS starts `onebox up` on free ports in dir, waits until it is up and
// idle, and returns its VmRSS.
func idleRSS(ctx context.Context, dir string) (int64, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	mq, err := freePort()
	if err != nil {
		return 0, err
	}
	hp, err := freePort()
	if err != nil {
		return 0, err
	}
	c := exec.CommandContext(ctx, self, "up", "--no-build", "--broker-listen", mq, "--http-listen", hp,
		"--inbox", filepath.Join(dir, "inbox"), "--data-dir", filepath.Join(dir, "updata"), "--name", "bench-up-"+randHex(4))
	c.Dir = dir
	stderr, _ := c.StderrPipe()
	if err := c.Start(); err != nil {
		return 0, err
	}
	defer func() { c.Process.Signal(syscall.SIGTERM); c.Wait() }()
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		closed := false
		for sc.Scan() {
			if !closed && strings.Contains(sc.Text(), "onebox is up") {
				close(up)
				closed = true
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	select {
	case <-up:
	case <-time.After(30 * time.Second):
		return 0, fmt.Errorf("onebox up did not start within 30s")
	}
	time.Sleep(3 * time.Second)
	return vmRSS(c.Process.Pid)
}

func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
