#!/usr/bin/env bash
# Cross-build the onebox binary for the Pi (armv7, arm64) and amd64 into dist/:
# static (CGO_ENABLED=0), stripped, reproducible paths, version from git.
#   scripts/cross.sh                 # all three
#   scripts/cross.sh linux/arm/7     # one (GOOS/GOARCH[/GOARM])
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
version=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
out=${DIST:-dist}
mkdir -p "$out"
targets=("$@")
((${#targets[@]})) || targets=(linux/arm/7 linux/arm64 linux/amd64)
for t in "${targets[@]}"; do
  IFS=/ read -r os arch arm <<<"$t"
  name="onebox-$os-$arch"
  [ "$arch" = arm ] && name="onebox-$os-armv${arm:-7}"
  env CGO_ENABLED=0 GOOS="$os" GOARCH="$arch" ${arm:+GOARM=$arm} \
    go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$out/$name" ./cmd/onebox
  printf '%-28s %9d bytes\n' "$out/$name" "$(stat -c %s "$out/$name")"
done
