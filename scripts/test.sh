#!/usr/bin/env bash
# test.sh - the test command: set up this host (packages, venv, base image), then run every
# test, the real Packer/QEMU builds included.
# Usage: scripts/test.sh [pytest options]     (as root)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/setup-host.sh"
"$here/scripts/test-services.sh"  # PostgreSQL and RabbitMQ for the fleet's tests
cd "$here"
# Two workers (pytest-xdist), a test file each at a time: two TCG builds at once take ~1.3x the
# time of one on these 2-core machines, so the real builds finish in about two thirds of the
# time. Tests of one file share a worker (and its module fixtures, built images among them).
exec "$here/.venv/bin/python" -m pytest -v -p no:cacheprovider -n "${ORCHESTRATOR_TEST_WORKERS:-2}" --dist loadfile "$@"
