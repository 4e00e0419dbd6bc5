#!/usr/bin/env python3
"""Time to publish a built image to a gallery with N replica regions (N = 1, 2, 4), against
`cp --sparse=always` of the same file once per replica, on a real libvirtd (qemu:///system).

The image is the imported Debian 12 base image (a standalone qcow2, what a published build
disk is after flattening) or the file given. Publishing is what the SharedImage target does:
pools looked up, the version recorded Creating, one partial volume per pool created through
libvirt, the data copied (one read and one SHA-256 for all replicas), fsync, renamed, pools
refreshed, recorded Succeeded with the run output. The baseline copies the file N times with
`cp --sparse=always` (no hash, no fsync), and again followed by `sync`.

Usage: bench/bench_publish.py [ROUNDS] [IMAGE]     (as root, after scripts/setup-host.sh)
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.config import Config, default_home  # noqa: E402
from orchestrator.effects.catalog import version_key  # noqa: E402
from orchestrator.effects.libvirt_store import LibvirtStore  # noqa: E402
from orchestrator.effects.state import StateStore  # noqa: E402
from tests.store_helpers import DEFINITION, distribute, gallery_target, plan_for  # noqa: E402

REGIONS = ["eastus", "westus", "northeurope", "japaneast"]


def base_image() -> Path:
    records = StateStore(default_home() / "state.db").images("Debian", "debian-12", "12")
    return Path(max(records, key=lambda r: version_key(r.version)).path)


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    image = Path(sys.argv[2]) if len(sys.argv) > 2 else base_image()
    work = Path(tempfile.mkdtemp(prefix="bench-publish-", dir="/var/tmp"))
    tag = uuid.uuid4().hex[:6]
    pools = {region: f"orchbench-{tag}-{i}" for i, region in enumerate(REGIONS)}
    config = Config(home=work / "home", pool_default=None, pool_regions=tuple(pools.items()),
                    pools_dir=work / "pools").ensure()
    size = image.stat().st_size
    print(f"image {image}: {size / 2**20:.0f} MiB on disk; {rounds} rounds; pools under {work}")
    results = []
    try:
        for n in (1, 2, 4):
            publish_t, cp_t, cp_sync_t = [], [], []
            for _ in range(rounds):
                drop_caches()
                started = time.monotonic()
                distribute(config, plan_for([gallery_target(gallery_id=DEFINITION,
                                                            replicationRegions=REGIONS[:n])]), image)
                publish_t.append(time.monotonic() - started)
                drop_caches()
                for with_sync, into in ((False, cp_t), (True, cp_sync_t)):
                    dests = [work / f"cp-{i}.qcow2" for i in range(n)]
                    started = time.monotonic()
                    for dest in dests:
                        subprocess.run(["cp", "--sparse=always", str(image), str(dest)], check=True)
                    if with_sync:
                        subprocess.run(["sync"], check=True)
                    into.append(time.monotonic() - started)
                    for dest in dests:
                        dest.unlink()
                    drop_caches()
            pub, cp, cps = (statistics.median(t) for t in (publish_t, cp_t, cp_sync_t))
            results.append((n, pub, cp, cps))
            print(f"N={n}: publish {pub:.2f} s ({pub / n:.2f} s per replica); cp --sparse=always x{n} {cp:.2f} s; "
                  f"with sync {cps:.2f} s; ratio {pub / cp:.2f} (vs cp+sync {pub / cps:.2f})", flush=True)
    finally:
        with LibvirtStore(config.libvirt_uri) as lv:
            for name in pools.values():
                lv.remove_pool(name)
        shutil.rmtree(work, ignore_errors=True)
    print("\nN  publish_s  cp_s   cp+sync_s  ratio  ratio_vs_cp+sync")
    for n, pub, cp, cps in results:
        print(f"{n}  {pub:9.2f}  {cp:5.2f}  {cps:9.2f}  {pub / cp:5.2f}  {pub / cps:5.2f}")
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("run as root (qemu:///system)", file=sys.stderr)
    sys.exit(main())
