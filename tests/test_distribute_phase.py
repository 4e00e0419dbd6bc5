"""The distribute phase with real qemu-img and a real full file system (a small tmpfs): a
target that fails leaves nothing behind and does not stop the others (PartiallySucceeded);
a stop ends the phase."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import threading

import pytest

from orchestrator.distribute import DistributeJob
from orchestrator.effects.proc import Stop
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.state import StateStore
from orchestrator.errors import BuildFailed, Canceled
from orchestrator.pipeline.distribute_phase import distribute_all
from tests.store_helpers import make_disk, plan_for


@pytest.fixture
def full_dir(tmp_path):
    """A 16 MiB tmpfs: too small for the VHD of a disk holding 32 MiB of data."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    path = tmp_path / "full"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(path)], check=True)
    yield path
    subprocess.run(["umount", "-l", str(path)], check=True)


def _jobs(config, plan, disk):
    state = StateStore(config.db_path)
    run_id = state.start_run(plan.name, None, lambda rid: config.runs_dir / rid / "customization.log")
    log = RunLog(config.runs_dir / run_id / "customization.log")
    return state, run_id, log, lambda target: DistributeJob(config, state, plan, target, run_id, disk, log,
                                                             lambda s: None, threading.Event(), state.wrote_artifact)


def _one_too_big(config, tmp_path, full_dir, name="big.vhd", with_one_that_fits=True):
    """A disk holding 32 MiB of data, a VHD target on the full tmpfs and (asked for) one under
    artifacts/ that fits: (config, plan, (state, run id, log, job_for))."""
    config = dataclasses.replace(config, vhd_dirs=(full_dir,))
    disk = make_disk(tmp_path / "d", data_mib=32, overlay=False)
    targets = [{"type": "VHD", "runOutputName": "tooBig", "uri": (full_dir / name).as_uri()}]
    if with_one_that_fits:
        targets.append({"type": "VHD", "runOutputName": "fits"})
    plan = plan_for(targets)
    return config, plan, _jobs(config, plan, disk)


def test_a_full_disk_fails_its_target_cleanly_and_the_others_are_written(config, tmp_path, full_dir):
    config, plan, (state, run_id, log, job_for) = _one_too_big(config, tmp_path, full_dir)
    done = distribute_all(job_for, plan, Stop())
    event, message = done.outcome(plan)
    log.close()
    assert event == "partial" and "1 of 2 distribution target(s) failed" in message
    assert "the file system is full" in message and "nothing was left behind" in message
    assert list(full_dir.iterdir()) == []  # no half-written VHD, no temporary file
    outputs = {o["name"]: o["properties"] for o in state.outputs(run_id)}
    assert outputs["tooBig"]["provisioningState"] == "Failed" and "full" in outputs["tooBig"]["error"]
    assert outputs["fits"]["provisioningState"] == "Succeeded"
    assert os.path.getsize(outputs["fits"]["path"]) == 64 * 2**20 + 512


def test_when_every_target_fails_the_run_fails_with_the_first_error(config, tmp_path, full_dir):
    config, plan, (_, _, log, job_for) = _one_too_big(config, tmp_path, full_dir, with_one_that_fits=False)
    done = distribute_all(job_for, plan, Stop())
    log.close()
    with pytest.raises(BuildFailed, match="the file system is full") as err:
        done.outcome(plan)
    assert "another file system" in err.value.hint


def test_a_stop_ends_the_phase_before_the_next_target(config, tmp_path):
    disk = make_disk(tmp_path / "d", overlay=False)
    plan = plan_for([{"type": "VHD", "runOutputName": "one"}])
    state, run_id, log, job_for = _jobs(config, plan, disk)
    stop = Stop()
    stop.request()
    with pytest.raises(Canceled, match="canceled while distributing"):
        distribute_all(job_for, plan, stop)
    log.close()
    assert state.outputs(run_id) == [] and not list(config.artifacts_dir.rglob("*.vhd"))


def test_the_failures_it_records_are_redacted(config, tmp_path, full_dir):
    from orchestrator.core.redact import Redactor

    config, plan, (state, run_id, log, job_for) = _one_too_big(config, tmp_path, full_dir, "tok-SECRET-1234.vhd")
    done = distribute_all(job_for, plan, Stop(), Redactor.of(["tok-SECRET-1234"]))
    log.close()
    _, message = done.outcome(plan)
    assert "tok-SECRET-1234" not in message and "***.vhd" in message
    assert "tok-SECRET-1234" not in json.dumps(state.outputs(run_id))
    assert "tok-SECRET-1234" not in (config.runs_dir / run_id / "customization.log").read_text()


def test_a_full_pool_while_copying_a_volume_is_a_clear_error(tmp_path, full_dir):
    """A managed image or gallery version is copied into its pool by replicate.copy_hashed: a
    full pool is an orchestrator error the distribute phase reports per target, not a crash."""
    from orchestrator.effects.replicate import copy_hashed
    from orchestrator.errors import BuildFailed

    source = tmp_path / "disk.raw"
    with open(source, "wb") as out:
        out.write(os.urandom(32 * 2**20))
    with pytest.raises(BuildFailed) as failed:
        copy_hashed(source, [full_dir / "volume.qcow2"], None, "publishing image 1.0.0")
    assert "publishing image 1.0.0: the file system of" in failed.value.message and "is full" in failed.value.message
    assert "32 MiB to write" in failed.value.message
