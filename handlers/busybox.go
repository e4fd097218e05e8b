package handlers

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"runtime"
	"slices"
	"strings"
)

// elfMachines says which ELF machine and class each GOARCH runs.
var elfMachines = map[string]struct {
	machine elf.Machine
	class   elf.Class
	order   binary.ByteOrder
}{
	"amd64":   {elf.EM_X86_64, elf.ELFCLASS64, binary.LittleEndian},
	"386":     {elf.EM_386, elf.ELFCLASS32, binary.LittleEndian},
	"arm":     {elf.EM_ARM, elf.ELFCLASS32, binary.LittleEndian},
	"arm64":   {elf.EM_AARCH64, elf.ELFCLASS64, binary.LittleEndian},
	"riscv64": {elf.EM_RISCV, elf.ELFCLASS64, binary.LittleEndian},
	"ppc64le": {elf.EM_PPC64, elf.ELFCLASS64, binary.LittleEndian},
	"s390x":   {elf.EM_S390, elf.ELFCLASS64, binary.BigEndian},
}

// checkStaticFor says why bin (read from file) cannot run as the only
// program of a FROM scratch image on p: not ELF, another machine, or linked
// against shared libraries.
func checkStaticFor(file string, bin []byte, p Platform) error {
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		return fmt.Errorf("%s is not an ELF executable: %w", file, err)
	}
	defer f.Close()
	want, ok := elfMachines[p.Arch]
	if !ok {
		return fmt.Errorf("%s: no ELF machine known for %s", file, p)
	}
	if f.Machine != want.machine || f.Class != want.class || f.ByteOrder != want.order {
		return fmt.Errorf("%s is for %s (%s), not %s: give a busybox built for %s "+
			"(on Debian: the busybox-static package of that architecture, e.g. busybox-static:armhf for linux/arm/v7)",
			file, f.Machine, f.Class, p, p)
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (it needs an ELF interpreter): "+
				"a FROM scratch image needs a static one, as Debian's busybox-static package installs", file)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return fmt.Errorf("%s needs shared libraries %v: a FROM scratch image needs a static one, "+
			"as Debian's busybox-static package installs", file, libs)
	}
	return nil
}

// busyboxLayer reads and checks the busybox binary and lays out its layer:
// /bin/busybox, a symlink to it for each applet, /tmp.
func busyboxLayer(ctx context.Context, p Platform, o Options) (*layer, error) {
	file := o.Busybox
	if file == "" {
		file = DefaultBusybox
	}
	bin, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && o.Busybox == "" {
			return nil, fmt.Errorf("no busybox at %s: install Debian's busybox-static (apt-get install busybox-static) "+
				"or give a static busybox for %s in Options.Busybox", file, p)
		}
		return nil, fmt.Errorf("busybox: %w", err)
	}
	if err := checkStaticFor(file, bin, p); err != nil {
		return nil, err
	}
	applets, how, err := busyboxApplets(ctx, file, bin, p)
	if err != nil {
		return nil, err
	}
	o.logger().Debug("busybox applets", "binary", file, "count", len(applets), "from", how)

	entries := []entry{
		{path: "bin", mode: 0o755, typ: tar.TypeDir},
		{path: "sbin", mode: 0o755, typ: tar.TypeDir},
		{path: "usr", mode: 0o755, typ: tar.TypeDir},
		{path: "usr/bin", mode: 0o755, typ: tar.TypeDir},
		{path: "usr/sbin", mode: 0o755, typ: tar.TypeDir},
		{path: "tmp", mode: 0o1777, typ: tar.TypeDir},
		{path: "bin/busybox", mode: 0o755, typ: tar.TypeReg, data: bin},
	}
	seen := map[string]bool{"bin/busybox": true}
	for _, a := range applets {
		dir := path.Dir(a)
		if dir != "." && dir != "bin" && dir != "sbin" && dir != "usr/bin" && dir != "usr/sbin" { // . for linuxrc
			return nil, fmt.Errorf("busybox applet %q: unexpected folder", a)
		}
		if seen[a] {
			continue
		}
		seen[a] = true
		entries = append(entries, entry{path: a, mode: 0o777, typ: tar.TypeSymlink, target: "/bin/busybox"})
	}
	return newLayer(fmt.Sprintf("ADD %s /bin/busybox + %d applet links", path.Base(file), len(seen)-1), entries)
}

// busyboxApplets lists the applets' paths (bin/sh, usr/bin/wc, …). A busybox
// this machine can run says them itself (--list-full); a foreign one (an
// armhf busybox on an amd64 box) is read: its applet names are one block of
// NUL-separated strings beginning "[", "[[", and each goes in /bin.
func busyboxApplets(ctx context.Context, file string, bin []byte, p Platform) ([]string, string, error) {
	if p.Arch == runtime.GOARCH && runtime.GOOS == "linux" {
		out, err := exec.CommandContext(ctx, file, "--list-full").Output()
		if err == nil {
			var list []string
			for _, l := range strings.Split(string(out), "\n") {
				if l = strings.TrimSpace(l); l != "" {
					list = append(list, strings.TrimPrefix(l, "/"))
				}
			}
			if slices.Contains(list, "bin/sh") {
				return list, "--list-full", nil
			}
		}
	}
	names := appletNames(bin)
	if !slices.Contains(names, "sh") {
		return nil, "", fmt.Errorf("%s: cannot find its applet list (run it on a %s machine, or give a busybox with sh)", file, p)
	}
	list := make([]string, len(names))
	for i, n := range names {
		list[i] = "bin/" + n
	}
	return list, "binary", nil
}

// appletNames finds busybox's applet_names table in its binary.
func appletNames(bin []byte) []string {
	i := bytes.Index(bin, []byte("\x00[\x00[[\x00"))
	if i < 0 {
		return nil
	}
	var names []string
	for _, s := range bytes.Split(bin[i+1:min(len(bin), i+1+64<<10)], []byte{0}) {
		if len(s) == 0 || !appletName(s) {
			break
		}
		names = append(names, string(s))
	}
	return names
}

func appletName(s []byte) bool {
	if len(s) > 32 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '[') {
			return false
		}
	}
	return true
}

// CheckBusybox reports why the busybox base (and so the shell handler) cannot be
// built for o's platform: no busybox file, or one that is not static or is for
// another machine. nil means it can.
func CheckBusybox(o Options) error {
	p, err := o.platform()
	if err != nil {
		return err
	}
	file := o.Busybox
	if file == "" {
		file = DefaultBusybox
	}
	bin, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("no busybox at %s: install Debian's busybox-static (apt-get install busybox-static)", file)
		}
		return fmt.Errorf("busybox: %w", err)
	}
	return checkStaticFor(file, bin, p)
}
