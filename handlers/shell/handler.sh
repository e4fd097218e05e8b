#!/bin/sh
# onebox shell handler example (image onebox/shell, FROM onebox/busybox).
# Reads the payload from stdin and prints one JSON line: how many bytes came
# in, the run's id and handler name (set by the invoker) and the machine.
set -eu

json() { # a JSON string; ids and handler names are plain ASCII by contract
	printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr -d '\000-\037')"
}

bytes=$(wc -c | tr -d ' ')
printf '{"handler":%s,"id":%s,"bytes":%s,"machine":%s}\n' \
	"$(json "${ONEBOX_HANDLER:-}")" "$(json "${ONEBOX_ID:-}")" "$bytes" "$(json "$(uname -m)")"
