package docker

import (
	"fmt"
	"strings"

	"github.com/onebox-dev/onebox/invoker/container"
)

// normalizeArch turns a kernel (uname -m) or OCI architecture spelling into GOARCH
// spelling plus variant: x86_64 → amd64, aarch64 → arm64, armv7l → arm/v7.
func normalizeArch(arch, variant string) (string, string) {
	a := strings.ToLower(strings.TrimSpace(arch))
	v := strings.ToLower(strings.TrimSpace(variant))
	switch a {
	case "x86_64", "x86-64", "amd64":
		a = "amd64"
	case "i386", "i486", "i586", "i686", "386":
		a = "386"
	case "aarch64", "arm64", "armv8", "armv8l", "arm64v8":
		a = "arm64"
		if v == "v8" {
			v = "" // arm64 has only one variant in practice
		}
	case "armv7l", "armv7", "armhf", "arm32v7":
		a, v = "arm", "v7"
	case "armv6l", "armv6", "armel", "arm32v6":
		a, v = "arm", "v6"
	case "armv5tel", "armv5", "arm32v5":
		a, v = "arm", "v5"
	}
	return a, v
}

func platformString(os, arch, variant string) string {
	s := os + "/" + arch
	if variant != "" {
		s += "/" + variant
	}
	return s
}

// checkPlatform says whether an image built for imgOS/imgArch/imgVariant runs on
// the engine natively. An arm image with an older (or unknown) variant runs on a
// newer arm CPU (v6 on v7); 32-bit arm runs on arm64 and 386 on amd64, as Docker
// itself allows. Emulation (binfmt/qemu) is not assumed.
func checkPlatform(ref string, img container.ImageInfo, eng container.EngineInfo) error {
	iOS := strings.ToLower(img.OS)
	if iOS == "" {
		iOS = "linux"
	}
	iArch, iVar := normalizeArch(img.Architecture, img.Variant)
	eArch, eVar := normalizeArch(eng.Architecture, eng.Variant)
	eOS := eng.OS
	if eOS == "" {
		eOS = "linux"
	}
	ok := iOS == eOS
	if ok && iArch != "" {
		switch {
		case iArch == eArch:
			if iArch == "arm" && iVar != "" && eVar != "" && iVar > eVar {
				ok = false // e.g. an arm/v7 image on an arm/v6 Pi Zero
			}
		case iArch == "arm" && eArch == "arm64":
		case iArch == "386" && eArch == "amd64":
		default:
			ok = false
		}
	}
	if ok {
		return nil
	}
	return fmt.Errorf("%w: image %q is built for %s but the engine runs %s; rebuild it for %s (e.g. `docker buildx build --platform %s`)",
		container.ErrWrongPlatform, ref, platformString(iOS, iArch, iVar),
		platformString(eOS, eArch, eVar), platformString(eOS, eArch, eVar), platformString(eOS, eArch, eVar))
}
