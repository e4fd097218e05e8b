#!/usr/bin/env bash
# Measure onebox's footprint (docs/FOOTPRINT.md): binary sizes, idle RSS of
# `onebox up`, RSS under a steady trigger load, demo handler image sizes.
#   scripts/footprint.sh [RATE_PER_S] [SECONDS]      (default 5 30)
# Needs Docker, mosquitto-clients, curl; builds dist/ first.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-5}
secs=${2:-30}
scripts/cross.sh >/dev/null
echo "== binaries (stripped, CGO_ENABLED=0)"
ls -l dist/onebox-linux-*
bin=dist/onebox-linux-$(go env GOARCH)

echo "== demo handler images"
"$bin" handlers build hello echo >/dev/null 2>&1 || true
"$bin" handlers

tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
cat >"$tmp/onebox.yaml" <<YAML
broker: {listen: "127.0.0.1:0", data_dir: "$tmp/data"}
http: {listen: "127.0.0.1:0"}
file: {inbox: "$tmp/inbox"}
handlers:
  hello: {image: "onebox/hello:latest"}
  echo: {image: "onebox/echo:latest"}
YAML
"$bin" up -c "$tmp/onebox.yaml" --name "footprint-$$" --no-build --metrics-listen 127.0.0.1:0 >"$tmp/up.log" 2>&1 &
pid=$!
for _ in $(seq 300); do grep -q "onebox is up" "$tmp/up.log" && break; sleep 0.1; done
port=$(grep -oE 'MQTT on [0-9.]+:[0-9]+' "$tmp/up.log" | sed 's/.*://')
murl=$(grep -oE 'url=http://[0-9.:]+/metrics' "$tmp/up.log" | sed 's/url=//')
rss() { awk '/^(VmRSS|VmHWM)/ {printf "%s %.1f MiB  ", $1, $2/1024}' "/proc/$pid/status"; echo; }
sleep 10
echo "== onebox up, idle 10 s: $(rss)"
"$bin" invoke --broker-url "tcp://127.0.0.1:$port" hello >/dev/null
echo "== after one run:        $(rss)"
n=$((rate * secs))
echo "== $rate triggers/s for $secs s ($n triggers of hello)"
start=$(date +%s)
for i in $(seq "$n"); do
  mosquitto_pub -p "$port" -q 1 -t "trigger/hello/fp-$i" -m x &
  sleep "$(awk "BEGIN{print 1/$rate}")"
  if ((i % (rate * 5) == 0)); then echo "   t=$(( $(date +%s) - start ))s $(rss)"; fi
done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
for _ in $(seq 120); do
  done_n=$(curl -fsS "$murl" | awk '/^onebox_invoker_runs_total\{handler="hello",state="succeeded"\}/ {print $2}')
  [ "${done_n:-0}" -ge "$((n + 1))" ] 2>/dev/null && break
  sleep 0.5
done
echo "== load done ($(( $(date +%s) - start )) s, ${done_n:-?} runs succeeded): $(rss)"
curl -fsS "$murl" | grep -E '^onebox_invoker_(run_duration|start)_seconds_(sum|count)|^onebox_invoker_runs_total|^process_resident_memory_bytes|^go_memstats_heap_inuse_bytes|^go_goroutines'
sleep 15
echo "== idle again 15 s later: $(rss)"
