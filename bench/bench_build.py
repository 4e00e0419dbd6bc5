"""Times `orchestrate build` against `packer build` of the equivalent hand-written HCL
(bench/handwritten.pkr.hcl, with the plain cloud-init user-data of bench/user-data.tmpl) plus
the same qemu-img VHD conversion, on the same base image, in alternating order. Prints both
times and the ratio (target: <= 1.05), and the baseline with a sha256sum of its VHD, since
orchestrate records the VHD's sha256 (~2.5 s of the 4 GiB VHD here).

Usage: .venv/bin/python bench/bench_build.py [ROUNDS=3]   (as root, after scripts/setup-host.sh)
"""
from __future__ import annotations

import hashlib
import json
import shutil
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from orchestrator.config import default_home  # noqa: E402
from orchestrator.effects.catalog import version_key  # noqa: E402
from orchestrator.effects.sshkeys import make_key_pair  # noqa: E402
from orchestrator.effects.state import StateStore  # noqa: E402

SCRIPT = "#!/bin/sh\nset -e\necho script | sudo tee /opt/bench/script.txt\n"
PAGE = "<p>bench</p>\n"


def template(files: Path) -> dict:
    return {
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2020-02-14", "location": "local",
        "properties": {
            "vmProfile": {"vmSize": "Standard_B2s", "osDiskSizeGB": 4},  # 2 vCPU, 4 GiB, as the HCL
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12",
                       "version": "latest"},
            "customize": [
                {"type": "Shell", "name": "inline", "inline": [
                    "sudo mkdir -p /opt/bench", "echo inline | sudo tee /opt/bench/inline.txt"]},
                {"type": "Shell", "name": "script", "scriptUri": (files / "setup.sh").as_uri(),
                 "sha256Checksum": hashlib.sha256(SCRIPT.encode()).hexdigest()},
                {"type": "File", "name": "file", "sourceUri": (files / "page.html").as_uri(),
                 "destination": "/tmp/page.html"},
                {"type": "Shell", "name": "place", "inline": ["sudo cp /tmp/page.html /opt/bench/page.html"]},
            ],
            "distribute": [{"type": "VHD", "runOutputName": "bench"}],
        },
    }


def import_base(orchestrate: list[str], base: str, env: dict[str, str]) -> None:
    """The base image, imported into the benchmark's own data home (env's ORCHESTRATOR_HOME)."""
    subprocess.run(orchestrate + ["image", "import", base, "--publisher", "Debian", "--offer", "debian-12",
                                  "--sku", "12", "--version", "1.0.0"], check=True, env=env, capture_output=True)


def handwritten_seed(work: Path) -> tuple[Path, Path]:
    """(seed directory, private key) of the hand-written baseline: bench/user-data.tmpl as a
    Packer user writes it, with a key of its own."""
    seed = work / "seed"
    seed.mkdir()
    key, public = make_key_pair(work / "id_ed25519", "bench")
    (seed / "meta-data").write_text("instance-id: bench\n")
    (seed / "user-data").write_text((HERE / "user-data.tmpl").read_text().replace("@PUBLIC_KEY@", public))
    return seed, key


def base_image() -> str | None:
    """The newest Debian 12 base image scripts/setup-host.sh imported (None: none, said)."""
    records = StateStore(default_home() / "state.db").images("Debian", "debian-12", "12")
    if not records:
        print("no Debian 12 base image imported: run scripts/setup-host.sh first", file=sys.stderr)
        return None
    return max(records, key=lambda r: version_key(r.version)).path


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    base = base_image()
    if base is None:
        return 1
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        files = work / "files"
        files.mkdir()
        (files / "setup.sh").write_text(SCRIPT)
        (files / "page.html").write_text(PAGE)
        # the deploy proof (a second boot, which raw Packer does not do) is bench_proof's to measure
        env = dict(os.environ, ORCHESTRATOR_HOME=str(work / "home"), ORCHESTRATOR_ACCELERATOR="tcg",
                   ORCHESTRATOR_PROOF="off", CHECKPOINT_DISABLE="1", PACKER_CACHE_DIR=str(work / "packer-cache"),
                   TMPDIR=str(work))  # the raw baseline's packer_to_cdrom* go with the rest
        orchestrate = [sys.executable, "-m", "orchestrator"]
        import_base(orchestrate, base, env)
        (work / "t.json").write_text(json.dumps(template(files)))
        seed, key = handwritten_seed(work)

        def ours() -> float:
            started = time.monotonic()
            subprocess.run(orchestrate + ["build", "--force", "--json", str(work / "t.json")], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            return time.monotonic() - started

        def theirs() -> float:
            shutil.rmtree(work / "out", ignore_errors=True)
            started = time.monotonic()
            subprocess.run(["packer", "build", "-color=false",
                            "-var", f"base_image={base}", "-var", f"output_dir={work / 'out'}",
                            "-var", f"ssh_key={key}", "-var", f"seed_dir={seed}", "-var", f"files_dir={files}",
                            str(HERE / "handwritten.pkr.hcl")], check=True, env=env, stdout=subprocess.DEVNULL)
            subprocess.run(["qemu-img", "convert", "-O", "vpc", "-o", "subformat=fixed,force_size",
                            str(work / "out" / "disk.qcow2"), str(work / "hand.vhd")], check=True)
            elapsed = time.monotonic() - started
            # orchestrate also records the VHD's sha256: what the same by hand costs on top
            started = time.monotonic()
            subprocess.run(["sha256sum", str(work / "hand.vhd")], check=True, stdout=subprocess.DEVNULL)
            times["sha256sum"].append(time.monotonic() - started)
            return elapsed

        times: dict[str, list[float]] = {"ours": [], "theirs": [], "sha256sum": []}
        for round_ in range(rounds):  # alternate the order so that neither always goes first
            order = [("ours", ours), ("theirs", theirs)]
            for label, run in order if round_ % 2 == 0 else reversed(order):
                times[label].append(run())
                print(f"  round {round_ + 1}: {label:6s} {times[label][-1]:6.1f} s", flush=True)
    ours_total, theirs_total = sum(times["ours"]), sum(times["theirs"])
    print(f"orchestrate build:              {ours_total / rounds:7.1f} s (mean of {rounds})")
    print(f"packer build + qemu-img (hand): {theirs_total / rounds:7.1f} s (mean of {rounds})")
    hash_total = sum(times["sha256sum"])
    print(f"ratio:                          {ours_total / theirs_total:7.3f}  (target <= 1.05)")
    print(f"  by hand + sha256sum of the VHD (orchestrate records it): "
          f"{(theirs_total + hash_total) / rounds:.1f} s, ratio {ours_total / (theirs_total + hash_total):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
