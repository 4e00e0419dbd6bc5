#!/usr/bin/env bash
# build-sample.sh - the one command: set up this host, then build examples/debian-12-vhd.json
# to a fixed VHD. Its scriptUri and File sources are served by a local HTTP server on
# 127.0.0.1:8731 that this script starts and stops.
# Usage: scripts/build-sample.sh [orchestrate build options, e.g. --force]     (as root)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/setup-host.sh"

port=8731
"$here/.venv/bin/python" -m http.server "$port" --bind 127.0.0.1 --directory "$here/examples/files" \
    >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do  # wait until it answers (at most ~10 s)
    "$here/.venv/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/customize.sh', timeout=1)" \
        2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { echo "[sample] error: could not serve examples/files on 127.0.0.1:$port (port in use?)" >&2; exit 1; }
    sleep 0.1
done

orchestrate build "$@" "$here/examples/debian-12-vhd.json"
