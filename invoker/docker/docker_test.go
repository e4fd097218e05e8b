package docker

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ctypes "github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/onebox-dev/onebox/invoker/container"
)

// The serial tests (no t.Parallel) run first and alone: the memory measurement of
// TestStdoutCapBoundsMemory needs a quiet process.

func TestStdoutCapBoundsMemory(t *testing.T) {
	rt := rtForTest(t)
	spec := newSpec(t, rt, `head -c 200000000 /dev/zero; echo bye >&2`)
	spec.StdoutCap = 1 << 20

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	resetHWM := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
	hwmBefore := vmHWM(t)

	// Sample the heap while the run goes on.
	var peakHeap uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peakHeap {
				peakHeap = m.HeapInuse
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	res, d := run(t, rt, spec)
	close(stop)
	wg.Wait()
	hwmAfter := vmHWM(t)

	heapGrowth := int64(peakHeap) - int64(before.HeapInuse)
	hwmGrowth := hwmAfter - hwmBefore
	t.Logf("200 MB in %v; heap in use grew by %d KiB at peak; VmHWM %d → %d KiB (reset %v)",
		d.Round(time.Millisecond), heapGrowth>>10, hwmBefore>>10, hwmAfter>>10, resetHWM)
	if heapGrowth > 32<<20 {
		t.Errorf("heap grew by %d MiB for a 1 MiB cap", heapGrowth>>20)
	}
	if hwmGrowth > 48<<20 {
		t.Errorf("peak RSS grew by %d MiB for a 1 MiB cap", hwmGrowth>>20)
	}
	if res.ExitCode != 0 {
		t.Fatalf("exit %d, stderr %q", res.ExitCode, res.Stderr)
	}
	if len(res.Stdout) != 1<<20 || res.StdoutBytes != 200000000 || !res.Truncated {
		t.Fatalf("stdout kept %d, counted %d, truncated %v; want 1 MiB, 200000000, true", len(res.Stdout), res.StdoutBytes, res.Truncated)
	}
	if !bytes.Equal(res.Stdout, make([]byte, 1<<20)) {
		t.Fatalf("kept stdout is not the first MiB of zeros")
	}
	if string(res.Stderr) != "bye\n" {
		t.Fatalf("stderr %q", res.Stderr)
	}
}

// vmHWM is the process's peak RSS in bytes.
func vmHWM(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n << 10
		}
	}
	return 0
}

func TestStdoutExactBinary(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	// The container makes 100000 random bytes, reports their hash on stderr and
	// prints them on stdout.
	spec := newSpec(t, rt, `head -c 100000 /dev/urandom > /tmp/r && sha256sum /tmp/r | cut -d" " -f1 >&2 && cat /tmp/r`)
	res, _ := run(t, rt, spec)
	if res.ExitCode != 0 || res.StdoutBytes != 100000 || len(res.Stdout) != 100000 || res.Truncated {
		t.Fatalf("exit %d, stdout %d/%d bytes, truncated %v, stderr %q", res.ExitCode, len(res.Stdout), res.StdoutBytes, res.Truncated, res.Stderr)
	}
	if got, want := sha(res.Stdout), strings.TrimSpace(string(res.Stderr)); got != want {
		t.Fatalf("stdout sha256 %s, container says %s", got, want)
	}
}

func TestStdinBinaryRoundTrip(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	payload := make([]byte, 1<<20)
	_, _ = rand.Read(payload)
	spec := newSpec(t, rt, `cat`)
	spec.Stdin = payload
	spec.StdoutCap = 2 << 20
	res, _ := run(t, rt, spec)
	if res.ExitCode != 0 || res.Truncated || res.StdoutBytes != int64(len(payload)) {
		t.Fatalf("exit %d, %d bytes, truncated %v", res.ExitCode, res.StdoutBytes, res.Truncated)
	}
	if sha(res.Stdout) != sha(payload) {
		t.Fatalf("cat of 1 MiB random stdin came back different")
	}
}

func TestStdinEOF(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	for _, tc := range []struct {
		stdin []byte
		want  string
	}{{[]byte("hello"), "5"}, {nil, "0"}} {
		spec := newSpec(t, rt, `wc -c`)
		spec.Stdin = tc.stdin
		res, _ := run(t, rt, spec)
		if got := strings.TrimSpace(string(res.Stdout)); got != tc.want || res.ExitCode != 0 {
			t.Errorf("wc -c of %q printed %q (exit %d), want %s", tc.stdin, got, res.ExitCode, tc.want)
		}
	}
}

func TestStderrApartAndTail(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	spec := newSpec(t, rt, `echo out; i=0; while [ $i -lt 2000 ]; do echo "err line $i" >&2; i=$((i+1)); done; echo END >&2; echo out2`)
	spec.StderrTailCap = 1000
	res, _ := run(t, rt, spec)
	if string(res.Stdout) != "out\nout2\n" {
		t.Fatalf("stdout %q, want only the two stdout lines", res.Stdout)
	}
	if len(res.Stderr) != 1000 {
		t.Fatalf("stderr tail is %d bytes, want 1000", len(res.Stderr))
	}
	if !bytes.HasSuffix(res.Stderr, []byte("err line 1999\nEND\n")) || bytes.Contains(res.Stderr, []byte("err line 0\n")) {
		t.Fatalf("stderr tail is not the end of stderr: %q", res.Stderr)
	}
}

func TestNonZeroExit(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	res, _ := run(t, rt, newSpec(t, rt, `echo partial; exit 42`))
	if res.ExitCode != 42 || string(res.Stdout) != "partial\n" || res.TimedOut || res.OOMKilled {
		t.Fatalf("got %+v", res)
	}
	if res.CreatedAt.IsZero() || res.StartedAt.Before(res.CreatedAt) || res.FinishedAt.Before(res.StartedAt.Add(-time.Second)) || res.StartMs <= 0 {
		t.Fatalf("times: created %v started %v finished %v start_ms %d", res.CreatedAt, res.StartedAt, res.FinishedAt, res.StartMs)
	}
}

func TestTimeoutStopsWithSIGTERM(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	spec := newSpec(t, rt, `sleep 100`)
	spec.Timeout = time.Second
	spec.Grace = 5 * time.Second
	res, d := run(t, rt, spec)
	if !res.TimedOut {
		t.Fatalf("not marked timed out: %+v", res)
	}
	// SIGTERM ends sleep at once: no need to wait for the grace period.
	if d > 4*time.Second {
		t.Fatalf("took %v; SIGTERM should have ended it well before the 5 s grace", d)
	}
	if res.ExitCode != 128+15 {
		t.Fatalf("exit %d, want 143 (SIGTERM)", res.ExitCode)
	}
}

func TestTimeoutKillsAfterGrace(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	spec := newSpec(t, rt, `trap "" TERM; echo ready; sleep 100`)
	spec.Timeout = time.Second
	spec.Grace = 1500 * time.Millisecond
	res, d := run(t, rt, spec)
	if !res.TimedOut || res.ExitCode != 128+9 {
		t.Fatalf("timed out %v, exit %d; want true, 137 (SIGKILL)", res.TimedOut, res.ExitCode)
	}
	if d < spec.Timeout+spec.Grace || d > spec.Timeout+spec.Grace+5*time.Second {
		t.Fatalf("took %v; want timeout+grace (%v) and a little", d, spec.Timeout+spec.Grace)
	}
	if string(res.Stdout) != "ready\n" {
		t.Fatalf("stdout before the kill: %q", res.Stdout)
	}
}

func TestCancelStopsAndReturnsResult(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	spec := newSpec(t, rt, `echo up; sleep 100`)
	ctx, cancel := context.WithCancel(context.Background())
	t0 := time.Now()
	res, err := rt.Run(ctx, spec, func(time.Time) { time.AfterFunc(500*time.Millisecond, cancel) })
	d := time.Since(t0)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.TimedOut || res.ExitCode != 143 || string(res.Stdout) != "up\n" || d > 5*time.Second {
		t.Fatalf("after cancel: %+v in %v", res, d)
	}
}

func TestOOMKilled(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	spec := newSpec(t, rt, `head -c 300000000 /dev/zero | tail -c 200000000 >/dev/null; echo "tail: $?" >&2; exit 1`)
	spec.MemoryBytes = 32 << 20
	res, _ := run(t, rt, spec)
	if !res.OOMKilled || res.ExitCode == 0 {
		t.Fatalf("oom %v exit %d stderr %q", res.OOMKilled, res.ExitCode, res.Stderr)
	}
	t.Logf("stderr %q, max memory %d", res.Stderr, res.MaxMemoryBytes)
}

func TestExit137IsNotOOM(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	spec := newSpec(t, rt, `exit 137`)
	spec.MemoryBytes = 32 << 20
	res, _ := run(t, rt, spec)
	if res.OOMKilled || res.ExitCode != 137 || res.TimedOut {
		t.Fatalf("oom %v exit %d timed out %v", res.OOMKilled, res.ExitCode, res.TimedOut)
	}
}

func TestLargeStdinNotRead(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	spec := newSpec(t, rt, `sleep 1; echo done`)
	spec.Stdin = bytes.Repeat([]byte("x"), 8<<20)
	spec.Timeout = 20 * time.Second
	res, d := run(t, rt, spec)
	if res.ExitCode != 0 || string(res.Stdout) != "done\n" || res.TimedOut || d > 10*time.Second {
		t.Fatalf("exit %d stdout %q timed out %v in %v", res.ExitCode, res.Stdout, res.TimedOut, d)
	}
}

func TestMissingImage(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	spec := newSpec(t, rt, `true`)
	spec.Image = "onebox-test/does-not-exist:v0"
	t0 := time.Now()
	_, err := rt.Run(context.Background(), spec, func(time.Time) { t.Error("started called") })
	if !errors.Is(err, container.ErrImageMissing) {
		t.Fatalf("err %v, want ErrImageMissing", err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("took %v", d)
	}
	for _, s := range []string{spec.Image, "onebox handlers build", "docker load"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	if _, err := rt.Image(context.Background(), spec.Image); !errors.Is(err, container.ErrImageMissing) {
		t.Fatalf("Image: %v", err)
	}
	if n := len(listInstance(t, rt, spec.Instance)); n != 0 {
		t.Fatalf("%d containers created", n)
	}
}

func TestWrongPlatform(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	spec := newSpec(t, rt, `true`)
	spec.Image = foreignImage
	spec.Cmd = nil
	_, err := rt.Run(context.Background(), spec, func(time.Time) { t.Error("started called") })
	if !errors.Is(err, container.ErrWrongPlatform) {
		t.Fatalf("err %v, want ErrWrongPlatform", err)
	}
	if !strings.Contains(err.Error(), "linux/"+foreignArch()) || !strings.Contains(err.Error(), "linux/"+runtime.GOARCH) {
		t.Fatalf("error does not name both platforms: %v", err)
	}
	if n := len(listInstance(t, rt, spec.Instance)); n != 0 {
		t.Fatalf("%d containers created", n)
	}
}

func TestImageAndInfo(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	ctx := context.Background()
	ii, err := rt.Image(ctx, busyboxImage)
	if err != nil {
		t.Fatal(err)
	}
	if ii.OS != "linux" || ii.Architecture != runtime.GOARCH || ii.Size < 1<<20 || !strings.HasPrefix(ii.ID, "sha256:") {
		t.Fatalf("image info %+v", ii)
	}
	ei, err := rt.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ei.Name != "docker" || ei.OS != "linux" || ei.Architecture != runtime.GOARCH || ei.NCPU < 1 || ei.MemTotal <= 0 || ei.CgroupVersion == "" || ei.Version == "" {
		t.Fatalf("engine info %+v", ei)
	}
	t.Logf("engine %+v", ei)
}

func TestIsolationDefaults(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	// What the container itself sees.
	spec := newSpec(t, rt, `
grep -E '^(CapEff|NoNewPrivs):' /proc/self/status
ls /sys/class/net | tr '\n' ' '; echo
touch /rootfile 2>/dev/null && echo root=rw || echo root=ro
touch /tmp/f && echo tmp=rw
tr '\0' ' ' </proc/1/cmdline; echo
sleep 1`)
	spec.PidsLimit = 42
	spec.MemoryBytes = 48 << 20
	spec.TmpfsBytes = 8 << 20
	spec.Labels = map[string]string{"extra": "yes", container.LabelInstance: "spoofed"}

	var ci ctypes.InspectResponse
	var inspectErr error
	res, err := rt.Run(context.Background(), spec, func(time.Time) {
		list := listInstance(t, rt, spec.Instance)
		if len(list) != 1 {
			inspectErr = errors.New("want exactly one container while running")
			return
		}
		ci, inspectErr = rt.cli.ContainerInspect(context.Background(), list[0].ID)
	})
	if err != nil || inspectErr != nil {
		t.Fatalf("Run: %v, inspect: %v", err, inspectErr)
	}
	out := string(res.Stdout)
	for _, want := range []string{"CapEff:\t0000000000000000", "NoNewPrivs:\t1", "\nlo \n", "root=ro", "tmp=rw", "init -- /bin/sh -c"} {
		if !strings.Contains(out, want) {
			t.Errorf("in-container output lacks %q:\n%s", want, out)
		}
	}

	hc := ci.HostConfig
	if !ci.State.Running {
		t.Errorf("not running when started was called: %s", ci.State.Status)
	}
	if hc.NetworkMode != "none" || !hc.ReadonlyRootfs || len(hc.CapDrop) != 1 || hc.CapDrop[0] != "ALL" {
		t.Errorf("network %q readonly %v capdrop %v", hc.NetworkMode, hc.ReadonlyRootfs, hc.CapDrop)
	}
	if len(hc.SecurityOpt) != 1 || hc.SecurityOpt[0] != "no-new-privileges" {
		t.Errorf("security opts %v", hc.SecurityOpt)
	}
	if hc.PidsLimit == nil || *hc.PidsLimit != 42 || hc.Memory != 48<<20 || hc.MemorySwap != 48<<20 {
		t.Errorf("pids %v memory %d swap %d", hc.PidsLimit, hc.Memory, hc.MemorySwap)
	}
	if hc.Init == nil || !*hc.Init || hc.LogConfig.Type != "none" {
		t.Errorf("init %v log %q", hc.Init, hc.LogConfig.Type)
	}
	if hc.Tmpfs["/tmp"] != "rw,nosuid,nodev,size=8388608" {
		t.Errorf("tmpfs %v", hc.Tmpfs)
	}
	l := ci.Config.Labels
	if l[container.LabelManaged] != "true" || l[container.LabelInstance] != spec.Instance || l[container.LabelRunID] != spec.ID ||
		l[container.LabelHandler] != "sh" || l["extra"] != "yes" {
		t.Errorf("labels %v", l)
	}
	if !ci.Config.OpenStdin || !ci.Config.StdinOnce || ci.Config.Tty {
		t.Errorf("stdin open %v once %v tty %v", ci.Config.OpenStdin, ci.Config.StdinOnce, ci.Config.Tty)
	}
	if !strings.HasPrefix(strings.TrimPrefix(ci.Name, "/"), "onebox-"+spec.Instance+"-"+spec.ID) {
		t.Errorf("name %q", ci.Name)
	}
	t.Logf("start %d ms, max memory %d B, cpu %d ms", res.StartMs, res.MaxMemoryBytes, res.CPUMs)
}

func TestLoosenedSpec(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "in.txt"), []byte("inbox\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	spec := newSpec(t, rt, `cat /in/in.txt; echo "$FOO"; id -u; touch /in/x 2>/dev/null && echo in=rw || echo in=ro; touch /w && echo root=rw`)
	spec.Env = append(spec.Env, "FOO=bar baz")
	spec.User = "65534"
	spec.Mounts = []container.Mount{{Source: dir, Target: "/in", ReadOnly: true}}
	spec.WritableRoot = true
	res, _ := run(t, rt, spec)
	// uid 65534 may not write /, even writable; root=rw is not expected then.
	if want := "inbox\nbar baz\n65534\nin=ro\n"; !strings.HasPrefix(string(res.Stdout), want) {
		t.Fatalf("stdout %q, want prefix %q (stderr %q)", res.Stdout, want, res.Stderr)
	}
}

func TestSameIDConcurrently(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	spec := newSpec(t, rt, `sleep 1; echo ok`)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	outs := make([]string, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := rt.Run(context.Background(), spec, nil)
			errs[i], outs[i] = err, string(res.Stdout)
		}()
	}
	wg.Wait()
	for i := range 2 {
		if errs[i] != nil || outs[i] != "ok\n" {
			t.Fatalf("run %d: %v %q", i, errs[i], outs[i])
		}
	}
}

func TestCleanupOnlyOwnInstance(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	ctx := context.Background()
	a, b := randName("test-a-"), randName("test-b-")
	mk := func(instance string, managed bool) string {
		labels := map[string]string{container.LabelInstance: instance}
		if managed {
			labels[container.LabelManaged] = "true"
		}
		resp, err := rt.cli.ContainerCreate(ctx, &ctypes.Config{Image: busyboxImage, Cmd: []string{"sleep", "100"}, Labels: labels},
			&ctypes.HostConfig{NetworkMode: "none"}, nil, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		return resp.ID
	}
	a1, a2, b1 := mk(a, true), mk(a, true), mk(b, true)
	foreign := mk(a, false) // same instance label but not marked managed: not onebox's
	if err := rt.cli.ContainerStart(ctx, a2, ctypes.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, id := range []string{a1, a2, b1, foreign} {
			_ = rt.cli.ContainerRemove(ctx, id, ctypes.RemoveOptions{Force: true})
		}
	}()
	n, err := rt.Cleanup(ctx, a)
	if err != nil || n != 2 {
		t.Fatalf("Cleanup(A) = %d, %v; want 2", n, err)
	}
	exists := func(id string) bool { _, err := rt.cli.ContainerInspect(ctx, id); return err == nil }
	if exists(a1) || exists(a2) || !exists(b1) || !exists(foreign) {
		t.Fatalf("after Cleanup(A): a1 %v a2 %v b1 %v unmanaged %v", exists(a1), exists(a2), exists(b1), exists(foreign))
	}
	if n, err := rt.Cleanup(ctx, b); err != nil || n != 1 || exists(b1) {
		t.Fatalf("Cleanup(B) = %d, %v", n, err)
	}
	list, _ := rt.cli.ContainerList(ctx, ctypes.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", container.LabelManaged+"=true"), filters.Arg("label", container.LabelInstance+"="+a))})
	if len(list) != 0 {
		t.Fatalf("%d managed containers of A remain", len(list))
	}
}

func TestStatsBestEffort(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	// Holds ~20 MB for 2.5 s so the engine's 1 s stats sampling sees it.
	spec := newSpec(t, rt, `head -c 20000000 /dev/zero | (tail -c 20000000 >/dev/null; :) & i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 2; wait`)
	res, _ := run(t, rt, spec)
	if res.ExitCode != 0 {
		t.Fatalf("exit %d %q", res.ExitCode, res.Stderr)
	}
	if res.MaxMemoryBytes <= 0 || res.CPUMs <= 0 {
		t.Errorf("stats not reported: max memory %d, cpu %d ms", res.MaxMemoryBytes, res.CPUMs)
	}
	t.Logf("max memory %d KiB, cpu %d ms", res.MaxMemoryBytes>>10, res.CPUMs)
}

func TestEngineUnavailable(t *testing.T) {
	t.Parallel()
	rt, err := New(Options{Host: "unix:///nonexistent/onebox-test.sock"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := rt.Info(ctx); !errors.Is(err, container.ErrEngineUnavailable) {
		t.Errorf("Info: %v", err)
	}
	if _, err := rt.Run(ctx, container.Spec{Image: busyboxImage}, nil); !errors.Is(err, container.ErrEngineUnavailable) {
		t.Errorf("Run: %v", err)
	}
	if _, err := rt.Cleanup(ctx, "x"); !errors.Is(err, container.ErrEngineUnavailable) {
		t.Errorf("Cleanup: %v", err)
	}
}

func TestMissingCommandIsAFailedRun(t *testing.T) {
	rt := rtForTest(t)
	t.Parallel()
	// With the init as PID 1 the start succeeds; the init reports the failed exec
	// on stderr and exits 127, like a shell would.
	spec := newSpec(t, rt, `true`)
	spec.Cmd = []string{"/no/such/binary"}
	res, err := rt.Run(context.Background(), spec, nil)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.ExitCode != 127 || !bytes.Contains(res.Stderr, []byte("/no/such/binary")) {
		t.Fatalf("exit %d stderr %q", res.ExitCode, res.Stderr)
	}
}
