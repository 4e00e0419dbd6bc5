#!/bin/sh
# Example scriptUri customizer: served over HTTP by scripts/build-sample.sh, checked by sha256.
set -e
echo "customize.sh running as $(id -un) on $(hostname)"
sudo mkdir -p /opt/orchestrator-sample
echo "scriptUri customizer was here" | sudo tee /opt/orchestrator-sample/from-script.txt >/dev/null
