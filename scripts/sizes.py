#!/usr/bin/env python3
"""Bytes of code and data per module in a Go binary built WITH symbols
(no -s -w): `go tool nm -size BINARY | scripts/sizes.py`. Symbols of the
runtime's BSS (no file bytes) and compiler-generated closures are left out or
lumped; use it to compare, not to add up to the file size exactly."""
import re, sys, collections

def module(name):
    name = name.lstrip("*(")
    if name.startswith(("go:", "type:", "runtime.", "internal/")) or "." not in name.split("/")[0]:
        # Standard library (no dot in the first path element) or linker data.
        first = name.split("/")[0].split(".")[0]
        return "std:" + ("crypto" if first in ("crypto", "vendor") and "crypto" in name else first)
    parts = name.split("/")
    if parts[0] in ("github.com", "gopkg.in", "go.yaml.in", "golang.org", "google.golang.org", "go.etcd.io", "go.opentelemetry.io"):
        n = 3
        if parts[0] in ("gopkg.in", "go.etcd.io"):
            n = 2
        if parts[0] == "go.opentelemetry.io":
            return "go.opentelemetry.io/*"
        mod = "/".join(parts[:n])
        return mod.split(".")[0] if parts[0] == "gopkg.in" and False else re.sub(r"\.[A-Z(*].*$", "", mod)
    return parts[0]

tot = collections.Counter()
for line in sys.stdin:
    f = line.split(None, 3)
    if len(f) < 4:
        continue
    _, size, typ, name = f
    size = int(size)
    if typ in "Bb" or size >= 16 << 20:
        continue
    tot[module(name.strip())] += size
all_ = sum(tot.values())
for m, s in tot.most_common(int(sys.argv[1]) if len(sys.argv) > 1 else 30):
    print(f"{s/1024:9.0f} KiB  {100*s/all_:5.1f}%  {m}")
print(f"{all_/1024:9.0f} KiB  total counted")
