"""Real builds into the image store (Packer + QEMU under TCG, a real libvirtd): one build to a
VHD, a managed image and a gallery version replicated to two regions; a second build from that
gallery version (`latest`) whose customizer, fetched from an air-gapped mirror of a public
https URL, sees the first build's effects and publishes the next version. Two builds in all,
shared by the tests of this module."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.config import Config
from orchestrator.core.document import load_document
from orchestrator.core.resource_ids import parse
from orchestrator.effects.catalog import Catalog
from orchestrator.effects.libvirt_store import LibvirtStore
from orchestrator.effects.proc import process_start_time
from orchestrator.effects.state import StateStore
from orchestrator.effects.store_state import StoreState
from orchestrator.engine import Engine
from orchestrator.service.runs import Runs
from tests.conftest import BASE
from tests.helpers import dumps, linux_template
from tests.store_helpers import DEFINITION, MANAGED, libvirtd, write_config_file  # noqa: F401
from tests.vhd_inspect import Ext4Image

pytestmark = pytest.mark.integration

PUBLIC = "https://raw.githubusercontent.com/example-org/golden/main/scripts/second-layer.sh"
SECOND = (b"#!/bin/sh\nset -e\ntest -f /etc/golden-marker.txt\n"
          b"{ cat /etc/golden-marker.txt; echo second-layer-from-mirror; } > /etc/chain.txt\n")


@pytest.fixture(scope="module")
def store_home(tmp_path_factory, base_image, libvirtd):
    root = tmp_path_factory.mktemp("store-e2e")
    tag = os.urandom(4).hex()
    pools = {"default": f"orche2e-{tag}-default", "east": f"orche2e-{tag}-east", "west": f"orche2e-{tag}-west"}
    mirror = root / "mirror"
    (mirror / "example-org/golden/main/scripts").mkdir(parents=True)
    (mirror / "example-org/golden/main/scripts/second-layer.sh").write_bytes(SECOND)
    config = Config(home=root / "home", accelerator=os.environ.get("ORCHESTRATOR_ACCELERATOR", "auto"),
                    libvirt_uri=libvirtd, pool_default=pools["default"],
                    pool_regions=(("eastus", pools["east"]), ("westus", pools["west"])), pools_dir=root / "pools",
                    mirrors=(("https://raw.githubusercontent.com/", str(mirror)),)).ensure()
    Catalog(StateStore(config.db_path), config.images_dir).import_image(base_image, *BASE, "2026.1.0")
    yield config, pools
    with LibvirtStore(libvirtd) as lv:
        for name in pools.values():
            lv.remove_pool(name)


def _build(config: Config, data: dict, name: str):
    text = dumps(data)
    return Engine(config).build(load_document(text, name), name, text, None)


@pytest.fixture(scope="module")
def first(store_home):
    config, _ = store_home
    data = linux_template(customize=[{"type": "Shell", "name": "golden", "inline": [
        "echo golden-base-layer | sudo tee /etc/golden-marker.txt"]}], distribute=[
        {"type": "VHD", "runOutputName": "vhd"},
        {"type": "ManagedImage", "runOutputName": "managed", "imageId": MANAGED, "location": "westus",
         "artifactTags": {"stage": "base"}},
        {"type": "SharedImage", "runOutputName": "gallery", "galleryImageId": DEFINITION,
         "replicationRegions": ["eastus", "westus"], "artifactTags": {"stage": "base"}}])
    return _build(config, data, "golden-base")


@pytest.fixture(scope="module")
def second(store_home, first):
    config, _ = store_home
    data = linux_template(
        source={"type": "SharedImageVersion", "imageVersionId": DEFINITION + "/versions/latest"},
        customize=[{"type": "Shell", "name": "secondLayer", "scriptUri": PUBLIC,
                    "sha256Checksum": hashlib.sha256(SECOND).hexdigest()}],
        distribute=[{"type": "VHD", "runOutputName": "vhd"},
                    {"type": "SharedImage", "runOutputName": "gallery", "galleryImageId": DEFINITION,
                     "replicationRegions": ["eastus"]}])
    return _build(config, data, "golden-second")


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_one_build_distributes_to_a_vhd_a_managed_image_and_a_replicated_gallery_version(store_home, first):
    config, pools = store_home
    assert first.run_state == "Succeeded"
    outputs = {o["name"]: o["properties"] for o in first.outputs}
    assert {k: v["provisioningState"] for k, v in outputs.items()} == {
        "vhd": "Succeeded", "managed": "Succeeded", "gallery": "Succeeded"}
    assert outputs["managed"]["artifactId"] == MANAGED
    version = outputs["gallery"]["version"]
    assert outputs["gallery"]["artifactId"] == f"{DEFINITION}/versions/{version}"
    replicas = outputs["gallery"]["replicas"]
    assert [(r["region"], r["pool"]) for r in replicas] == [("eastus", pools["east"]), ("westus", pools["west"])]
    with LibvirtStore(config.libvirt_uri) as lv:  # libvirt has the volumes, in both pools
        paths = [lv.volume_path(r["pool"], r["volume"]) for r in replicas]
        assert lv.volume_path(pools["west"], outputs["managed"]["replicas"][0]["volume"])
    assert paths == [r["path"] for r in replicas]
    assert _sha(paths[0]) == _sha(paths[1]) == outputs["gallery"]["sha256"]
    # the managed image, the gallery version and the VHD are the same disk
    assert subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "vpc", paths[0],
                           outputs["vhd"]["path"]], capture_output=True).returncode == 0
    assert subprocess.run(["qemu-img", "compare", paths[0], outputs["managed"]["replicas"][0]["path"]],
                          capture_output=True).returncode == 0
    assert Ext4Image(Path(outputs["vhd"]["path"])).read("/etc/golden-marker.txt") == b"golden-base-layer\n"
    # AIB's run output by runOutputName, from the CLI
    env = dict(os.environ, ORCHESTRATOR_HOME=str(config.home),
               ORCHESTRATOR_CONFIG=str(write_config_file(config, config.home / "config.toml")))
    shown = subprocess.run([sys.executable, "-m", "orchestrator", "output", "golden-base", "gallery", "--json"],
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["properties"]["artifactId"] == f"{DEFINITION}/versions/{version}"


def test_a_second_build_starts_from_latest_sees_the_first_and_publishes_a_higher_version(store_home, first, second):
    config, _ = store_home
    assert second.run_state == "Succeeded"
    first_version = {o["name"]: o for o in first.outputs}["gallery"]["properties"]["version"]
    props = {o["name"]: o for o in second.outputs}["gallery"]["properties"]
    as_key = lambda v: tuple(int(p) for p in v.split("."))  # noqa: E731
    assert as_key(props["version"]) > as_key(first_version)
    image = Ext4Image(Path({o["name"]: o for o in second.outputs}["vhd"]["properties"]["path"]))
    assert image.read("/etc/chain.txt") == b"golden-base-layer\nsecond-layer-from-mirror\n"
    assert not image.exists("/home/packer")
    log = second.log_path.read_text()
    assert f"fetched {PUBLIC} from mirror" in log and "sha256 verified" in log
    run = StateStore(config.db_path).run(second.run_id)
    assert run["resolved_version"] == first_version and f"/versions/latest -> {first_version}" in run["source"]


def test_store_cli_lists_shows_and_refuses_unsafe_deletes(store_home, first, second):
    config, _ = store_home
    env = dict(os.environ, ORCHESTRATOR_HOME=str(config.home),
               ORCHESTRATOR_CONFIG=str(write_config_file(config, config.home / "config.toml")))

    def store(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator", "store", *args, "--json"], capture_output=True,
                              text=True, env=env)

    listed = json.loads(store("list").stdout)
    assert {r["type"] for r in listed} == {"Gallery", "ImageDefinition", "ImageVersion", "ManagedImage"}
    versions = [r for r in listed if r["type"] == "ImageVersion"]
    assert len(versions) == 2 and all(r["provisioningState"] == "Succeeded" for r in versions)
    shown = json.loads(store("show", MANAGED).stdout)
    assert shown["tags"] == {"stage": "base"} and shown["runId"] == first.run_id
    # a definition with versions needs --force
    refused = store("delete", DEFINITION)
    assert refused.returncode == 2 and "holds 2 version(s)" in json.loads(refused.stdout)["error"]["message"]
    # a version a running build uses is not deleted: the run is named
    state = StateStore(config.db_path)
    run_id = state.start_run("user", None, lambda rid: config.runs_dir / rid / "log")
    state.update_run(run_id, pid=os.getpid(), pid_start_time=process_start_time(os.getpid()))
    used = versions[0]["id"]
    StoreState(state).use(run_id, parse(used).key, "source")
    in_use = store("delete", used)
    assert in_use.returncode == 2 and run_id in json.loads(in_use.stdout)["error"]["message"]
    Runs(state).end(run_id, "succeed")
    deleted = store("delete", used)
    assert deleted.returncode == 0, deleted.stdout
    assert not Path(versions[0]["replicas"][0]["path"]).exists()
    forced = store("delete", DEFINITION, "--force")
    assert forced.returncode == 0 and len(json.loads(forced.stdout)["deleted"]) == 2
    assert [r["type"] for r in json.loads(store("list").stdout)] == ["Gallery", "ManagedImage"]
    # plan shows a store source read-only, and a missing one as unresolved (nothing is created)
    template = config.home.parent / "from-managed.json"
    template.write_text(dumps(linux_template(source={"type": "ManagedImage", "imageId": MANAGED})))
    plan = subprocess.run([sys.executable, "-m", "orchestrator", "plan", "--json", str(template)],
                          capture_output=True, text=True, env=env)
    assert json.loads(plan.stdout)["source"]["description"] == f"ManagedImage {MANAGED}"
    fresh = dict(env, ORCHESTRATOR_HOME=str(config.home.parent / "never-created"))
    plan = subprocess.run([sys.executable, "-m", "orchestrator", "plan", "--json", str(template)],
                          capture_output=True, text=True, env=fresh)
    assert plan.returncode == 0 and "unresolved" in json.loads(plan.stdout)["source"]["description"]
    assert not (config.home.parent / "never-created").exists()
