package handlers

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckBusybox(t *testing.T) {
	if err := CheckBusybox(Options{Busybox: filepath.Join(t.TempDir(), "none")}); err == nil || !strings.Contains(err.Error(), "busybox") {
		t.Fatalf("missing busybox: %v", err)
	}
	sh := filepath.Join(t.TempDir(), "sh")
	os.WriteFile(sh, []byte("#!/bin/sh\n"), 0o755)
	if err := CheckBusybox(Options{Busybox: sh}); err == nil {
		t.Fatal("a shell script was taken for a static busybox")
	}
	if _, err := os.Stat(DefaultBusybox); err == nil {
		if err := CheckBusybox(Options{}); err != nil {
			t.Fatalf("the host's busybox: %v", err)
		}
		if err := CheckBusybox(Options{Platform: Platform{OS: "linux", Arch: otherArch()}}); err == nil {
			t.Fatal("the host's busybox passed for another architecture")
		}
	}
}

func otherArch() string {
	if HostPlatform().Arch == "arm64" {
		return "amd64"
	}
	return "arm64"
}
