"""What warm checkpoints save (the VM's memory and devices saved with each disk checkpoint, so
that a later build continues the VM instead of booting it). In one run, on one base image:

On bench_checkpoints.py's template (a slow early customizer of SLOW seconds, a short last one):
  1. a full build with cold checkpoints ([checkpoints] warm = false);
  2. the same full build with warm checkpoints (--force: it boots and saves a state with each
     checkpoint, and keeps a warm base): its extra time per checkpoint is what saving costs
     (target <= 2 s), next to the guest pauses the hook measured;
  3. a cold rebuild after changing the last step (warm = false: the layer boots);
  4. a warm rebuild after changing it again (the saved VM continues).
Prints 3 and 4 as ratios of the full build 2 (target for 4: <= 0.25) and 4 against 3
(target <= 0.5).

On bench_build.py's template: `packer build` of its hand-written HCL plus the VHD conversion,
against `orchestrate build` of the template from a warm base of the same source and machine
(made first by a build of a variant whose first step differs, so that no customizer checkpoint
fits). Target: <= 0.5 of the hand-written build.

Usage: .venv/bin/python bench/bench_warm.py [SLOW=60]   (as root, after scripts/setup-host.sh)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_build  # noqa: E402
from bench_checkpoints import template as checkpoint_template  # noqa: E402


def main() -> int:
    slow = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    base = bench_build.base_image()
    if base is None:
        return 1
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-warm-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        env = dict(os.environ, ORCHESTRATOR_HOME=str(work / "home"), TMPDIR=str(work), ORCHESTRATOR_PROOF="off",
                   ORCHESTRATOR_ACCELERATOR="tcg", CHECKPOINT_DISABLE="1", PACKER_CACHE_DIR=str(work / "cache"))
        orchestrate = [sys.executable, "-m", "orchestrator"]
        bench_build.import_base(orchestrate, base, env)
        config = work / "home" / "config.toml"

        def build(label: str, data: dict, name: str, *extra: str, warm: bool = True) -> tuple[float, str]:
            config.write_text(f"[checkpoints]\nwarm = {'true' if warm else 'false'}\n")
            path = work / f"{name}.json"
            path.write_text(json.dumps(data))
            started = time.monotonic()
            done = subprocess.run(orchestrate + ["build", "--json", "--name", name, str(path), *extra], env=env,
                                  capture_output=True, text=True)
            elapsed = time.monotonic() - started
            if done.returncode != 0:
                print(f"{label}: exit {done.returncode}:\n{done.stdout}{done.stderr}", file=sys.stderr)
                sys.exit(1)
            log = Path(json.loads(done.stdout)["log"]).read_text()
            mode = re.search(r"\] (full|cold|warm) start: the build VM answered after ([\d.]+) s", log)
            print(f"{label}: {elapsed:.1f} s ({mode.group(1)} start, SSH after {mode.group(2)} s)" if mode
                  else f"{label}: {elapsed:.1f} s", flush=True)
            return elapsed, log

        last = "echo {} | sudo tee /opt-last.txt"
        full_cold, _ = build("full build, cold checkpoints", checkpoint_template(slow, last.format("a")), "ck",
                             warm=False)
        full_warm, log = build("full build, warm checkpoints", checkpoint_template(slow, last.format("a")), "ck",
                               "--force")
        pauses = [float(p) for p in re.findall(r"kept: .*VM state saved \(paused ([\d.]+) s\)", log)]
        saved = len(pauses)
        cold, _ = build("cold rebuild, last step changed", checkpoint_template(slow, last.format("b")), "ck",
                        warm=False)
        warm, _ = build("warm rebuild, last step changed", checkpoint_template(slow, last.format("c")), "ck")

        files = work / "files"
        files.mkdir()
        (files / "setup.sh").write_text(bench_build.SCRIPT)
        (files / "page.html").write_text(bench_build.PAGE)
        seed, key = bench_build.handwritten_seed(work)
        shutil.rmtree(work / "out", ignore_errors=True)
        started = time.monotonic()
        subprocess.run(["packer", "build", "-color=false", "-var", f"base_image={base}",
                        "-var", f"output_dir={work / 'out'}", "-var", f"ssh_key={key}", "-var", f"seed_dir={seed}",
                        "-var", f"files_dir={files}", str(HERE / "handwritten.pkr.hcl")], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["qemu-img", "convert", "-O", "vpc", "-o", "subformat=fixed,force_size",
                        str(work / "out" / "disk.qcow2"), str(work / "hand.vhd")], check=True)
        raw = time.monotonic() - started
        print(f"packer build + qemu-img (hand-written): {raw:.1f} s", flush=True)
        variant = bench_build.template(files)
        variant["properties"]["customize"][0]["inline"].append("echo variant | sudo tee /opt/bench/variant.txt")
        build("a variant of it (boots, keeps the warm base)", variant, "variant")
        from_base, log = build("bench_build's template from the warm base", bench_build.template(files), "bb")
        if "starting from the warm base" not in log:
            print("the last build did not start from the warm base:\n" + log, file=sys.stderr)
            return 1

    print(f"\nslow step: {slow} s of guest work")
    print(f"full build, cold checkpoints:    {full_cold:6.1f} s")
    print(f"full build, warm checkpoints:    {full_warm:6.1f} s  (+{(full_warm - full_cold) / max(saved, 1):.2f} s "
          f"per checkpoint over {saved}, target <= 2 s; guest paused {min(pauses, default=0):.2f}-"
          f"{max(pauses, default=0):.2f} s each)")
    print(f"cold rebuild after the last step: {cold:6.1f} s  ({cold / full_warm:.2f} of the full build)")
    print(f"warm rebuild after the last step: {warm:6.1f} s  ({warm / full_warm:.2f} of the full build, target "
          f"<= 0.25; {warm / cold:.2f} of the cold rebuild, target <= 0.5)")
    print(f"hand-written packer build:       {raw:6.1f} s")
    print(f"full build from a warm base:     {from_base:6.1f} s  ({from_base / raw:.2f} of the hand-written build, "
          "target <= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
