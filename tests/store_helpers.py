"""Fixtures for the image store tests: a real libvirtd (started when it is not running), a
configuration with test-unique storage pools (removed afterwards), small real disks."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.config import Config
from orchestrator.core.plan import ResolvedSource, make_plan
from orchestrator.distribute import DistributeJob, distributor_for
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.state import StateStore
from orchestrator.service.runs import Runs
from tests.helpers import linux_template

URI = "qemu:///system"
SUB = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/images/providers/Microsoft.Compute/"
GALLERY = SUB + "galleries/golden"
DEFINITION = GALLERY + "/images/debian12"
MANAGED = SUB + "images/debian12-managed"


def _daemon_running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def libvirtd() -> str:
    """qemu:///system answering: virtlogd and libvirtd are started when they are not running
    (no systemd here), as scripts/setup-host.sh starts them."""
    try:
        import libvirt
    except ImportError:
        pytest.fail("libvirt-python is not installed: run scripts/setup-host.sh", pytrace=False)
    for daemon in ("virtlogd", "libvirtd"):
        if not _daemon_running(daemon):
            if os.geteuid() != 0 or shutil.which(daemon) is None:
                pytest.fail(f"{daemon} is not running: run scripts/setup-host.sh", pytrace=False)
            subprocess.run([daemon, "-d"], check=True)
    for _ in range(50):
        try:
            libvirt.open(URI).close()
            return URI
        except libvirt.libvirtError:
            time.sleep(0.1)
    pytest.fail(f"libvirtd does not answer at {URI}", pytrace=False)


@pytest.fixture
def pools(libvirtd: str):
    """Three test-unique pool names (default, east, west); every pool is removed afterwards."""
    from orchestrator.effects.libvirt_store import LibvirtStore

    tag = uuid.uuid4().hex[:8]
    names = {"default": f"orchtest-{tag}-default", "east": f"orchtest-{tag}-east", "west": f"orchtest-{tag}-west"}
    yield names
    with LibvirtStore(libvirtd) as lv:
        for name in names.values():
            lv.remove_pool(name)


@pytest.fixture
def store_config(config: Config, pools: dict[str, str], tmp_path: Path) -> Config:
    """The test's data home, its pools: regions eastus/westus mapped, everything else the default."""
    return dataclasses.replace(config, libvirt_uri=URI, pool_default=pools["default"],
                               pool_regions=(("eastus", pools["east"]), ("westus", pools["west"])),
                               pools_dir=tmp_path / "pools")


def write_config_file(config: Config, path: Path, extra: str = "") -> Path:
    """The same settings as a config.toml, for CLI runs in another process."""
    regions = "\n".join(f'{region} = "{pool}"' for region, pool in config.pool_regions)
    path.write_text(f'[libvirt]\nuri = "{config.libvirt_uri}"\n[pools]\ndefault = "{config.pool_default}"\n'
                    f'dir = "{config.pool_directory}"\n[pools.regions]\n{regions}\n{extra}')
    return path


def make_disk(directory: Path, name: str = "disk", data_mib: int = 4, overlay: bool = True) -> Path:
    """A small real qcow2 (a base with some random data, and an overlay on it when asked)."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / f"{name}.raw"
    with open(raw, "wb") as handle:
        handle.truncate(64 * 2**20)
        handle.write(os.urandom(data_mib * 2**20))
    base = directory / f"{name}-base.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(base)], check=True)
    raw.unlink()
    if not overlay:
        return base
    top = directory / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(top)], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 1M", str(top)], check=True, capture_output=True)
    return top


def plan_for(distribute: list[dict], source_version: str = "2026.1.0", name: str = "store-test", **props):
    from orchestrator.core.template import load_template

    template = load_template(linux_template(distribute=distribute, **props))
    source = ResolvedSource("PlatformImage Debian:debian-12:12:latest -> " + source_version, "/nonexistent",
                            "qcow2", 64 * 2**20, "0" * 64, source_version)
    return make_plan(template, source, name)


def distribute(config: Config, plan, disk: Path, cancel: threading.Event | None = None,
               progress=lambda s: None) -> tuple[StateStore, str]:
    """Runs every target of `plan` from `disk`, as the engine's distribute phase does (checks
    first); returns the state and the run id."""
    state = StateStore(config.db_path)
    run_id = state.start_run(plan.name, None, lambda rid: config.runs_dir / rid / "customization.log")
    from orchestrator.effects.proc import process_start_time

    state.update_run(run_id, pid=os.getpid(), pid_start_time=process_start_time(os.getpid()))
    (config.runs_dir / run_id).mkdir(parents=True)
    log = RunLog(config.runs_dir / run_id / "customization.log")
    try:
        for target in plan.targets:
            job = DistributeJob(config, state, plan, target, run_id, disk, log, progress,
                                cancel or threading.Event(), state.wrote_artifact)
            distributor_for(target.kind).check(job)
            distributor_for(target.kind).distribute(job)
        Runs(state).end(run_id, "succeed")
    except BaseException as exc:
        Runs(state).end(run_id, "fail", str(exc))
        raise
    finally:
        log.close()
    return state, run_id


def gallery_target(name: str = "gallery", gallery_id: str = DEFINITION, **extra) -> dict:
    return {"type": "SharedImage", "runOutputName": name, "galleryImageId": gallery_id,
            "replicationRegions": extra.pop("replicationRegions", ["eastus"]), **extra}


def pool_files(config: Config, pool: str) -> list[str]:
    directory = config.pool_directory / pool
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
