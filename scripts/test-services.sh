#!/usr/bin/env bash
# test-services.sh - what the fleet's tests start on 127.0.0.1 (each with its data in a temporary
# directory, no systemd): PostgreSQL and RabbitMQ from Debian's packages. A build host alone needs
# neither; scripts/setup-host.sh does not install them. Idempotent.
# Usage: scripts/test-services.sh     (as root)
set -euo pipefail
say() { printf '[test-services] %s\n' "$*"; }
# shellcheck source=scripts/apt-missing.sh
. "$(dirname "${BASH_SOURCE[0]}")/apt-missing.sh"
apt_install_missing postgresql rabbitmq-server  # their services are not started: the tests start their own
say "ready: $(dpkg-query -W -f='postgresql ${Version}' postgresql), $(dpkg-query -W -f='rabbitmq-server ${Version}' rabbitmq-server)"
