package docker

import (
	"bytes"
	"errors"
	"testing"

	"github.com/onebox-dev/onebox/invoker/container"
)

func TestCheckPlatform(t *testing.T) {
	eng := func(arch string) container.EngineInfo {
		a, v := normalizeArch(arch, "")
		return container.EngineInfo{OS: "linux", Architecture: a, Variant: v}
	}
	img := func(arch, variant string) container.ImageInfo {
		return container.ImageInfo{OS: "linux", Architecture: arch, Variant: variant}
	}
	for _, tc := range []struct {
		img    container.ImageInfo
		engine string
		ok     bool
	}{
		{img("amd64", ""), "x86_64", true},
		{img("arm64", "v8"), "aarch64", true},
		{img("arm", "v7"), "armv7l", true},
		{img("arm", "v6"), "armv7l", true},
		{img("arm", "v7"), "armv6l", false},
		{img("arm", "v7"), "aarch64", true},
		{img("arm64", ""), "x86_64", false},
		{img("amd64", ""), "armv7l", false},
		{img("arm64", ""), "armv7l", false},
		{container.ImageInfo{OS: "windows", Architecture: "amd64"}, "x86_64", false},
	} {
		err := checkPlatform("img", tc.img, eng(tc.engine))
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, container.ErrWrongPlatform)) {
			t.Errorf("%s/%s on %s: %v", tc.img.Architecture, tc.img.Variant, tc.engine, err)
		}
	}
}

func TestTailAndHeadWriters(t *testing.T) {
	var all bytes.Buffer
	tw := newTailWriter(10)
	hw := &headWriter{max: 7}
	for _, s := range []string{"ab", "cdefgh", "", "ijklmnopqrstu", "vw", "xyz0123"} {
		all.WriteString(s)
		_, _ = tw.Write([]byte(s))
		_, _ = hw.Write([]byte(s))
		want := all.Bytes()
		if len(want) > 10 {
			want = want[len(want)-10:]
		}
		if got := tw.bytes(); !bytes.Equal(got, want) {
			t.Fatalf("tail after %q: %q, want %q", all.String(), got, want)
		}
	}
	head, n := hw.result()
	if string(head) != "abcdefg" || n != int64(all.Len()) {
		t.Fatalf("head %q %d", head, n)
	}
}

func TestContainerName(t *testing.T) {
	if got := containerName("pi 3/kitchen", "01HZ.x_y-z"); got != "onebox-pi-3-kitchen-01HZ.x_y-z" {
		t.Fatal(got)
	}
	if containerName("a", "") != "" {
		t.Fatal("no id should leave the name to the engine")
	}
}
