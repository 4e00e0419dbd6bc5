#!/usr/bin/env bash
# test.sh - the test command: set up this host (packages, venv, base image), then run every
# test, the real Packer/QEMU builds included.
# Usage: scripts/test.sh [pytest options]     (as root)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/setup-host.sh"
cd "$here"
exec "$here/.venv/bin/python" -m pytest -v -p no:cacheprovider "$@"
