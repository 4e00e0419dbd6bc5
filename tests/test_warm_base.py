"""The warm base, without a guest: a build that boots its source (warm checkpoints on) keeps the
booted VM as the checkpoint at position 0, keyed by the source and the machine; the next build
of any template on that source and machine continues it (every customizer runs); another
memory size makes a new base. Real qcow2 layers and store, the checkpoint phase's own code."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from orchestrator.core.fingerprint import base_key, fingerprint_parts
from orchestrator.core.plan import ResolvedSource, make_plan
from orchestrator.core.template import load_template
from orchestrator.effects.checkpoint_store import CheckpointStore
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.state import StateStore
from orchestrator.pipeline.checkpoints import machine_for, prepare
from orchestrator.pipeline.staging import Staging
from tests.helpers import linux_template
from tests.test_checkpoint_store import qcow2, run_of

STEPS = [{"type": "Shell", "name": n, "inline": [f"echo {n}"]} for n in ("one", "two")]


def _prepare(config, state, plan, tmp_path: Path, tag: str):
    run_id = run_of(state, plan.name, alive=True)
    log = RunLog(tmp_path / f"{tag}.log")
    staging = Staging.create(config, run_id)  # its Packer temporaries may be in /tmp (tmp_path is long)
    try:
        run = prepare(config, state, plan, fingerprint_parts(plan, {}), run_id, staging, log,
                      use_stored=True, accelerator="tcg")
    finally:
        staging.remove()
        log.close()
    return run, run_id, (tmp_path / f"{tag}.log").read_text()


def test_a_booted_source_is_kept_as_a_warm_base_that_the_next_build_continues(config, tmp_path):
    config = dataclasses.replace(config, checkpoints_warm=True)
    state = StateStore(config.db_path)
    source = qcow2(tmp_path / "source.qcow2", fill=0x11)
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    resolved = ResolvedSource("PlatformImage Debian:debian-12:12:1", str(source), "qcow2", 64 * 2**20, sha)
    plan = make_plan(load_template(linux_template(customize=STEPS)), resolved, "alpha")

    first, run_id, log = _prepare(config, state, plan, tmp_path, "first")
    assert "no warm base of this source and machine yet" in log
    assert first.render.base and first.start_mode == "full" and first.manifest["first"] == 0
    layer = first.manifest["layers"]["0"]
    key = base_key(fingerprint_parts(plan, {}), machine_for(config, plan, "tcg").to_json())
    assert layer["name"] == "(boot)" and layer["key"] == key
    # what the hook leaves after freezing the booted VM: its layer, its state and key (owner-only)
    path = qcow2(Path(layer["path"]), source)
    saved, saved_key = Path(layer["path"] + ".state.zst"), Path(layer["path"] + ".key")
    saved.write_bytes(os.urandom(64 * 1024))
    saved_key.write_text("KEY\n")
    store = CheckpointStore(config, state)
    store.register(run_id, "alpha", key, 0, "(boot)", path, None,
                   ({"state": str(saved), "key": str(saved_key), "pause_seconds": 0.9}, first.machine, "ssh-ed25519 A"))
    state.update_run(run_id, run_state="Succeeded", pid=None)

    # another template on the same source and machine: it continues the base, all its steps run
    other = make_plan(load_template(linux_template(customize=STEPS[::-1])), resolved, "beta")
    second, _, log = _prepare(config, state, other, tmp_path, "second")
    assert "starting from the warm base of this source and machine" in log
    assert second.start_mode == "warm" and second.start_after == 0 and not second.render.base
    assert second.render.resumed and second.render.incoming == str(saved) and second.render.random_hex
    assert second.saved_key == (saved_key, "ssh-ed25519 A") and second.started_from == str(path)
    assert second.manifest["first"] == 1 and second.manifest["started_from"] == str(path)
    assert second.plan.source.path == str(path) and "warm base of run" in second.plan.source.description
    # falling back to a boot of the base layer keeps the resume step (the key of this run goes in)
    assert second.cold().render.resumed and not second.cold().render.incoming

    # another memory size: that base does not fit, a new one is kept for this machine
    bigger = dataclasses.replace(other, memory_mib=8192)
    third, _, log = _prepare(config, state, bigger, tmp_path, "third")
    assert third.render.base and third.start_mode == "full"
    assert third.manifest["layers"]["0"]["key"] != key
