"""The Packer runner against a stand-in `packer` executable (a process-boundary fake; the real
Packer runs the same paths in test_build_e2e.py): what a cancel or timeout reports."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from orchestrator.core.render import ProvisionerBlock
from orchestrator.effects.packer import run_packer
from orchestrator.effects.runlog import RunLog

# Prints the first step, then on SIGINT does what Packer 1.6.6 can do with expect_disconnect:
# starts the next provisioner (generalize) before it stops.
FAKE_PACKER = """#!/bin/sh
trap 'echo "nice of packer $(cut -d" " -f19 /proc/$$/stat), of its VM $(sh -c "cut -d\\" \\" -f19 /proc/self/stat")"
      echo "==> qemu.build: Provisioning with shell script: {generalize}"; echo "Build errored"; exit 1' INT
echo "==> qemu.build: Provisioning with shell script: {step}"
while :; do sleep 0.1; done
"""


def _run(tmp_path: Path, *, cancel_after_start: bool, deadline_in: float, nice: int = 0):
    step, generalize = str(tmp_path / "01-slow.sh"), str(tmp_path / "90-generalize.sh")
    fake = tmp_path / "packer"
    fake.write_text(FAKE_PACKER.format(step=step, generalize=generalize))
    fake.chmod(0o755)
    (tmp_path / "build.pkr.hcl").write_text("")
    blocks = (ProvisionerBlock("customizer:slow", "shell", (), (step,)),
              ProvisionerBlock("generalize", "shell", (), (generalize,)))
    cancel = threading.Event()
    if cancel_after_start:
        def watch() -> None:  # cancel once the runner has seen the customizer start
            log_file = tmp_path / "log"
            while not (log_file.exists() and "[customizer:slow]" in log_file.read_text()):
                time.sleep(0.05)  # polling the run log; the runner offers nothing else to wait on
            cancel.set()
        threading.Thread(target=watch, daemon=True).start()
    with RunLog(tmp_path / "log") as log:
        result = run_packer(str(fake), tmp_path / "build.pkr.hcl", log, blocks, deadline=time.monotonic() + deadline_in,
                            cancel=cancel, cache_dir=tmp_path / "cache", vm_marker=str(tmp_path / "nothing"),
                            nice=nice)
    return result, (tmp_path / "log").read_text()


def test_cancel_during_a_customizer_reports_that_customizer(tmp_path):
    result, log = _run(tmp_path, cancel_after_start=True, deadline_in=60)
    assert result.canceled and not result.timed_out
    assert result.last_phase == "customizer:slow"
    assert "cancel requested during customizer:slow" in log
    assert "[generalize] ==> qemu.build: Provisioning with shell script" in log  # Packer did move on


def test_packer_and_what_it_starts_run_at_the_builds_lower_cpu_priority(tmp_path):
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    _, log = _run(tmp_path, cancel_after_start=True, deadline_in=60, nice=mine + 7)
    assert f"nice of packer {mine + 7}, of its VM {mine + 7}" in log
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine  # orchestrate itself keeps its priority


def test_timeout_during_a_customizer_reports_that_customizer(tmp_path):
    result, _ = _run(tmp_path, cancel_after_start=False, deadline_in=1.5)
    assert result.timed_out and result.last_phase == "customizer:slow"


def test_the_builds_cpu_priority_is_configured_and_checked(tmp_path):
    import pytest

    from orchestrator.config import load_config
    from orchestrator.errors import UsageError

    assert load_config(str(tmp_path / "h")).build_nice == 10  # builds yield to the API and the CLI
    file = tmp_path / "c.toml"
    file.write_text("[capacity]\nnice = 0\n")
    assert load_config(str(tmp_path / "h"), str(file)).build_nice == 0
    for bad in ("nice = 20", "nice = -5", "nice = true", 'nice = "10"'):
        file.write_text(f"[capacity]\n{bad}\n")
        with pytest.raises(UsageError, match="capacity.nice = .* is not a whole number from 0"):
            load_config(str(tmp_path / "h"), str(file))
