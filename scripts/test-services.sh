#!/usr/bin/env bash
# test-services.sh - what the fleet's tests start on 127.0.0.1 (each with its data in a temporary
# directory, no systemd): PostgreSQL and RabbitMQ from Debian's packages. A build host alone needs
# neither; scripts/setup-host.sh does not install them. Idempotent.
# Usage: scripts/test-services.sh     (as root)
set -euo pipefail
say() { printf '[test-services] %s\n' "$*"; }
missing=()
for pkg in postgresql rabbitmq-server; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    # their services are not started (the tests start their own nodes, on free ports)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's packages start their services where they can: a test's nodes are its own
pgrep -u rabbitmq -f beam.smp >/dev/null 2>&1 && { say "stopping the packaged RabbitMQ node"; pkill -u rabbitmq -f beam.smp || true; }
say "ready: $(dpkg-query -W -f='postgresql ${Version}' postgresql), $(dpkg-query -W -f='rabbitmq-server ${Version}' rabbitmq-server)"
