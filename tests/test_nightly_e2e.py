"""Three nightly runs of two stored templates, through `orchestrate nightly` as the schedule runs
it (real Packer + QEMU under TCG, a real libvirtd image store, scripts served by the test's own
HTTP server): a base template that publishes to a gallery, and a team template built from that
gallery's `latest` with a SourceImage trigger. The first night builds both, base first; the
second, with nothing changed, skips both in seconds; after the base's script changes (new
sha256, `template create --update`), a night that names only the base rebuilds it, and the
team's trigger rebuilds the team on the new version. Four builds in all."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import config as config_module
from orchestrator.config import Config
from orchestrator.effects.catalog import Catalog
from orchestrator.effects.libvirt_store import LibvirtStore
from orchestrator.effects.state import StateStore
from tests.conftest import BASE
from tests.helpers import dumps, linux_template
from tests.store_helpers import DEFINITION, libvirtd, write_config_file  # noqa: F401 - fixture
from tests.vhd_inspect import Ext4Image

pytestmark = pytest.mark.integration

TEAM_SCRIPT = b"#!/bin/sh\nset -e\n{ cat /etc/base-marker.txt; echo team-layer; } > /etc/team.txt\n"


def base_script(tag: str) -> bytes:
    return f"#!/bin/sh\nset -e\necho base-{tag} > /etc/base-marker.txt\n".encode()


def shell(url: str, content: bytes) -> list[dict]:
    return [{"type": "Shell", "name": "layer", "scriptUri": url, "sha256Checksum": hashlib.sha256(content).hexdigest()}]


@pytest.fixture
def nightly_home(tmp_path, base_image, libvirtd, http_root):
    pool = f"orchnightly-{os.urandom(4).hex()}"
    config = Config(home=tmp_path / "home", accelerator=os.environ.get("ORCHESTRATOR_ACCELERATOR", "auto"),
                    libvirt_uri=libvirtd, pool_default=pool, pools_dir=tmp_path / "pools").ensure()
    Catalog(StateStore(config.db_path), config.images_dir).import_image(base_image, *BASE, "2026.1.0")
    extra = "[proof]\ndeploy = false\n" if "proof" in config_module._SETTINGS else ""
    config_file = write_config_file(config, tmp_path / "config.toml", extra)
    env = dict(os.environ, ORCHESTRATOR_HOME=str(config.home), ORCHESTRATOR_CONFIG=str(config_file))
    yield config, env, http_root
    with LibvirtStore(libvirtd) as lv:
        lv.remove_pool(pool)


def orchestrate(env: dict, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, env=env,
                          timeout=3600)


def night(env: dict, *args: str) -> dict:
    done = orchestrate(env, "nightly", *args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def outputs(config: Config, run_id: str) -> dict[str, dict]:
    return {o["name"]: o["properties"] for o in StateStore(config.db_path).outputs(run_id)}


def team_file(config: Config, run_id: str) -> bytes:
    return Ext4Image(Path(outputs(config, run_id)["vhd"]["path"])).read("/etc/team.txt")


def test_nightly_builds_in_order_skips_what_did_not_change_and_a_trigger_follows_a_new_base(nightly_home, tmp_path):
    config, env, (www, url) = nightly_home
    (www / "base.sh").write_bytes(base_script("v1"))
    (www / "team.sh").write_bytes(TEAM_SCRIPT)
    gallery = [{"type": "SharedImage", "runOutputName": "gallery", "galleryImageId": DEFINITION,
                "replicationRegions": ["local"]}]
    base = tmp_path / "base.json"
    base.write_text(dumps(linux_template(customize=shell(f"{url}/base.sh", base_script("v1")), distribute=gallery)))
    team = tmp_path / "team.json"
    team.write_text(dumps(linux_template(
        source={"type": "SharedImageVersion", "imageVersionId": DEFINITION + "/versions/latest"},
        customize=shell(f"{url}/team.sh", TEAM_SCRIPT), distribute=[{"type": "VHD", "runOutputName": "vhd"}])))
    for name, path in (("team", team), ("base", base)):  # stored in the wrong order on purpose
        created = orchestrate(env, "template", "create", name, str(path))
        assert created.returncode == 0, created.stderr
    trigger = orchestrate(env, "trigger", "create", "team", "source", "--kind", "SourceImage")
    assert trigger.returncode == 0, trigger.stderr

    # night 1: both built, base first; the team is built on the version the base published
    first = night(env, "--all")
    assert [(t["name"], t["result"], t["reason"]) for t in first["templates"]] == [
        ("base", "built", "first build"), ("team", "built", "first build")]
    runs = {t["name"]: t["runId"] for t in first["templates"]}
    v1 = outputs(config, runs["base"])["gallery"]["version"]
    assert StateStore(config.db_path).run(runs["team"])["resolved_version"] == v1
    assert team_file(config, runs["team"]) == b"base-v1\nteam-layer\n"

    # night 2: nothing changed, both skipped in seconds
    second = night(env, "--all")
    assert [(t["name"], t["result"]) for t in second["templates"]] == [("base", "skipped"), ("team", "skipped")]
    assert all(t["reason"].startswith("up to date: nothing changed since run ") for t in second["templates"])
    assert [t["reusedRun"] for t in second["templates"]] == [runs["base"], runs["team"]]
    print(f"nothing-changed night: {second['seconds']} s")
    assert second["seconds"] < 15
    assert Path(second["log"]).read_text().count("skipped") >= 2

    # the base's script changes (new sha256): a night naming only the base rebuilds it, then the team
    (www / "base.sh").write_bytes(base_script("v2"))
    base.write_text(dumps(linux_template(customize=shell(f"{url}/base.sh", base_script("v2")), distribute=gallery)))
    updated = orchestrate(env, "template", "create", "base", str(base), "--update")
    assert updated.returncode == 0 and "updated" in updated.stdout, updated.stderr
    third = night(env, "base")
    assert [(t["name"], t["result"], t["triggered"]) for t in third["templates"]] == [
        ("base", "built", False), ("team", "built", True)]
    rebuilt = {t["name"]: t for t in third["templates"]}
    assert rebuilt["base"]["reason"] == (f"changed since run {second['templates'][0]['runId']}: customizer "
                                         "'layer' changed (its settings, text or downloaded file)")
    v2 = outputs(config, rebuilt["base"]["runId"])["gallery"]["version"]
    assert v2 != v1
    assert rebuilt["team"]["reason"] == (f"triggered: SharedImageVersion {DEFINITION}/versions/latest -> {v2}; "
                                         f"run {second['templates'][1]['runId']} built from {v1}")
    assert StateStore(config.db_path).run(rebuilt["team"]["runId"])["resolved_version"] == v2
    assert team_file(config, rebuilt["team"]["runId"]) == b"base-v2\nteam-layer\n"
