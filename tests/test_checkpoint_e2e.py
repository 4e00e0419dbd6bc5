"""Real builds with cold disk checkpoints (Packer + QEMU under TCG, QMP live snapshots): a run that
fails in its third of four customizers is resumed after the fix and skips the first two; then
a change to the last customizer only rebuilds from the checkpoint before it. The guest proves
it: each customizer appends its name to a counter file, and the VHD holds each exactly once.
The first customizer reboots the VM: its checkpoint is taken on the new boot (and the override
deprovisioning script the second writes to /tmp survives the resume, as in a full build)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.effects.state import StateStore
from orchestrator.errors import ExitCode
from tests.helpers import dumps, linux_template
from tests.vhd_inspect import Ext4Image

pytestmark = pytest.mark.integration

OVERRIDE = ("printf '%s\\n' 'touch /etc/override-ran' '/usr/sbin/waagent -force -deprovision+user' 'sync' "
            "> /tmp/DeprovisioningScript.sh")


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ORCHESTRATOR_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, env=env,
                          timeout=1800)


def _steps(third: str, fourth: str) -> list[dict]:
    count = "echo {} | sudo tee -a /opt/ck/steps"
    return [
        {"type": "Shell", "name": "one", "inline": ["sudo mkdir -p /opt/ck", count.format("one"),
                                                    # then a reboot, as a kernel update asks
                                                    "sudo cp /proc/sys/kernel/random/boot_id /opt/ck/boot-one",
                                                    "sudo systemctl reboot"]},
        {"type": "Shell", "name": "two", "inline": [count.format("two"), OVERRIDE]},
        {"type": "Shell", "name": "three", "inline": [third, count.format("three")]},
        {"type": "Shell", "name": "four", "inline": [count.format(fourth)]},
    ]


def test_resume_after_a_failure_then_rebuild_from_the_last_unchanged_step(tmp_path, imported_home):
    home = imported_home.home
    (home / "config.toml").write_text("[checkpoints]\nwarm = false\n")  # cold checkpoints: test_warm_e2e.py
    path = tmp_path / "ck.json"
    path.write_text(dumps(linux_template(customize=_steps("exit 3", "four"))))
    failed = _cli("build", str(path), home=home)
    assert failed.returncode == ExitCode.CUSTOMIZER_FAILED, failed.stderr
    state = StateStore(imported_home.db_path)
    [first] = state.runs()
    log = Path(first["log_path"]).read_text()
    assert "checkpoint after customizer 1 ('one') kept" in log and "checkpoint after customizer 2 ('two') kept" in log
    assert "checkpoint after customizer 3" not in log
    # the checkpoint after 'one' was taken on the boot after its reboot, not on the guest going down
    boots = re.findall(r"orchestrator-checkpoint: guest boot (\S+)", log)
    assert len(boots) == 2 and boots[0] == boots[1], boots

    path.write_text(dumps(linux_template(customize=_steps("true", "four"))))  # the fix
    resumed = _cli("build", "--json", "--resume", first["id"], str(path), home=home)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    second = json.loads(resumed.stdout)
    log = Path(second["log"]).read_text()
    assert f"resuming run {first['id']}" in log
    assert "starting from the checkpoint after customizer 2 ('two')" in log and "skipped: 'one', 'two'" in log
    assert "[customizer:one]" not in log and "[customizer:three]" in log
    assert "resumed: /tmp restored, the earlier run's key removed" in log
    vhd = Path(second["runOutputs"][0]["properties"]["path"])
    image = Ext4Image(vhd)
    assert image.read("/opt/ck/steps") == b"one\ntwo\nthree\nfour\n"  # each step's effect exactly once
    assert image.read("/opt/ck/boot-one").decode().strip() != boots[0]  # 'one' ran before the reboot
    assert image.exists("/etc/override-ran")  # step two's override script, run at the very end
    assert b"packer:" not in image.read("/etc/passwd") and not image.exists("/var/lib/orchestrator")
    assert state.run(second["runId"])["started_from"].endswith(f"-{first['id']}.qcow2")

    path.write_text(dumps(linux_template(customize=_steps("true", "four-changed"))))  # only the last step
    rebuilt = _cli("build", "--json", str(path), home=home)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    third = json.loads(rebuilt.stdout)
    log = Path(third["log"]).read_text()
    assert "starting from the checkpoint after customizer 3 ('three')" in log
    assert "[customizer:three]" not in log and "[customizer:four]" in log
    image = Ext4Image(Path(third["runOutputs"][0]["properties"]["path"]))
    assert image.read("/opt/ck/steps") == b"one\ntwo\nthree\nfour-changed\n"
    assert image.exists("/etc/override-ran")

    listed = json.loads(_cli("checkpoints", "list", "--json", home=home).stdout)["checkpoints"]
    assert len(listed) == 5  # the failed run: after 1 and 2; the resumed: 3 and 4; the last: 4
    refused = _cli("build", "--resume", third["runId"], str(path), home=home)
    assert refused.returncode == ExitCode.INVALID_INPUT and "there is nothing to resume" in refused.stderr
