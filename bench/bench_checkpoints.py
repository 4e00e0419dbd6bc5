"""What disk checkpoints save: a template with a slow early customizer (SLOW seconds of work in
the guest) and a short last one. In one run, on one base image:
  1. a full build without checkpoints ([checkpoints] enabled = false): the baseline;
  2. the same full build with a checkpoint after each customizer: the checkpoints' own cost
     (target <= 3 % more than 1);
  3. a rebuild after changing only the last customizer (starts from the checkpoint before it);
  4. a resume after a failure in the last customizer (`build --resume RUN`).
Prints each time and 3 and 4 as ratios of the full build (target <= 0.5).

Usage: .venv/bin/python bench/bench_checkpoints.py [SLOW=60]   (as root, after scripts/setup-host.sh)
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_build import base_image, import_base  # noqa: E402


def template(slow: int, last: str) -> dict:
    return {
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-02-14", "location": "local",
        "properties": {
            "vmProfile": {"vmSize": "Standard_B2s"},
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12",
                       "version": "latest"},
            "customize": [
                {"type": "Shell", "name": "slow", "inline": [  # CPU work in the guest, as a package upgrade
                    f"end=$(( $(date +%s) + {slow} )); n=0; while [ $(date +%s) -lt $end ]; do n=$((n+1)); done",
                    "echo slow | sudo tee /opt-slow.txt"]},
                {"type": "Shell", "name": "middle", "inline": ["echo middle | sudo tee /opt-middle.txt"]},
                {"type": "Shell", "name": "last", "inline": [last]},
            ],
            "distribute": [{"type": "VHD", "runOutputName": "bench"}],
        },
    }


def main() -> int:
    slow = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    base = base_image()
    if base is None:
        return 1
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-ck-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        env = dict(os.environ, ORCHESTRATOR_HOME=str(work / "home"), TMPDIR=str(work), ORCHESTRATOR_PROOF="off")
        orchestrate = [sys.executable, "-m", "orchestrator"]
        import_base(orchestrate, base, env)
        config = work / "home" / "config.toml"

        def build(name: str, last: str, *extra: str, expect: int = 0) -> tuple[float, dict]:
            path = work / f"{name}.json"
            path.write_text(json.dumps(template(slow, last)))
            started = time.monotonic()
            done = subprocess.run(orchestrate + ["build", "--json", "--name", "bench", str(path), *extra], env=env,
                                  capture_output=True, text=True)
            elapsed = time.monotonic() - started
            if done.returncode != expect:
                print(f"{name}: exit {done.returncode}, not {expect}:\n{done.stdout}{done.stderr}", file=sys.stderr)
                sys.exit(1)
            print(f"{name}: {elapsed:.1f} s", flush=True)
            return elapsed, json.loads(done.stdout)

        config.write_text("[checkpoints]\nenabled = false\n")
        baseline, _ = build("full, no checkpoints", "echo a | sudo tee /opt-last.txt")
        config.write_text("")
        full, _ = build("full, with checkpoints", "echo b | sudo tee /opt-last.txt")
        rebuild, _ = build("rebuild, last step changed", "echo c | sudo tee /opt-last.txt")
        _, failed = build("failing last step", "echo d; exit 3", expect=4)
        resume, _ = build("resume", "echo d | sudo tee /opt-last.txt", "--resume", failed["runId"])
        print(f"\nslow step: {slow} s of guest work")
        print(f"full build without checkpoints (baseline): {baseline:.1f} s")
        print(f"full build with checkpoints:               {full:.1f} s  ({(full - baseline) / baseline * 100:+.1f} %, "
              "target <= +3 %)")
        print(f"rebuild after changing the last step:      {rebuild:.1f} s  ({rebuild / full:.2f} of the full build, "
              "target <= 0.5)")
        print(f"resume after a failed last step:           {resume:.1f} s  ({resume / full:.2f} of the full build, "
              "target <= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
