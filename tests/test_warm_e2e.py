"""Real builds with warm checkpoints (Packer + QEMU under TCG): the VM's state is saved with
each checkpoint, and a resume or a rebuild continues that VM instead of booting it. The guest
proves it: each customizer appends its name to a counter file (the VHD holds each once), the
last step prints the guest's clock (within 2 s of the host's after the restore) and 16 bytes of
/dev/urandom (two restores of one state differ). A state that does not fit this build (another
memory size) is refused before QEMU starts and the build resumes cold from the layer."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator.effects.state import StateStore
from orchestrator.errors import ExitCode
from tests.helpers import dumps, linux_template
from tests.vhd_inspect import Ext4Image

pytestmark = pytest.mark.integration


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ORCHESTRATOR_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, env=env,
                          timeout=1800)


def _template(last: list[str], vm_size: str = "Standard_B2s", first: str = "one") -> str:
    count = "echo {} | sudo tee -a /opt/ck/steps"
    steps = [
        {"type": "Shell", "name": "one", "inline": ["sudo mkdir -p /opt/ck", count.format(first)]},
        {"type": "Shell", "name": "two", "inline": [count.format("two")]},
        {"type": "Shell", "name": "three", "inline": [count.format("three")]},
        {"type": "Shell", "name": "four", "inline": last},
    ]
    return dumps(linux_template(customize=steps, vmProfile={"vmSize": vm_size}))


def _sample(tag: str) -> list[str]:
    """The last step: its name counted, the guest's clock and random bytes printed."""
    return [f"echo {tag} | sudo tee -a /opt/ck/steps", 'echo "guest-clock $(date -u +%s.%N)"',
            'echo "guest-random $(head -c 16 /dev/urandom | od -An -tx1 | tr -d \' \\n\')"']


def _clock_skew(log: str) -> float:
    """The guest's clock against the host's, from the line the last step printed (the log's
    stamp is the host's time when Packer relayed it)."""
    stamp, guest = re.search(r"^(\S+) \[customizer:four\].*guest-clock (\d+\.\d+)", log, re.M).groups()
    host = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    return abs(host - float(guest))


def _random(log: str) -> str:
    return re.search(r"guest-random ([0-9a-f]{32})", log).group(1)


def test_warm_resume_and_rebuild_continue_the_saved_vm(tmp_path, imported_home):
    home = imported_home.home
    (home / "config.toml").write_text("[checkpoints]\nwarm = true\n")
    path = tmp_path / "warm.json"
    path.write_text(_template(["echo four fails; exit 3"]))
    failed = _cli("build", str(path), home=home)
    assert failed.returncode == ExitCode.CUSTOMIZER_FAILED, failed.stderr
    state = StateStore(imported_home.db_path)
    [first] = state.runs()
    log = Path(first["log_path"]).read_text()
    assert "no warm base of this source and machine yet" in log
    assert log.count("VM state saved (paused") == 4, log  # the booted VM (the warm base), then after 1-3
    listed = json.loads(_cli("checkpoints", "list", "--json", home=home).stdout)["checkpoints"]
    assert [c["stepIndex"] for c in listed] == [0, 1, 2, 3] and listed[0]["stepName"] == "(boot)"
    assert all(c["warm"] and c["stateBytes"] > 0 for c in listed), listed
    for checkpoint in listed:  # guest RAM: owner-only
        assert os.stat(checkpoint["path"] + ".state.zst").st_mode & 0o077 == 0

    # a resume after the failed last step is warm: no boot, the guest's steps 1-3 are not rerun
    path.write_text(_template(_sample("four")))
    resumed = _cli("build", "--json", "--resume", first["id"], str(path), home=home)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    second = json.loads(resumed.stdout)
    log = Path(second["log"]).read_text()
    assert "a warm start: the VM saved with the checkpoint continues" in log, log
    assert "warm start: the build VM answered after" in log
    assert "[customizer:one]" not in log and "[customizer:three]" not in log
    assert "warm restore of checkpoint 3" in log and "RNG reseeded" in log
    assert _clock_skew(log) < 2.0, log
    record = state.run(second["runId"])
    assert record["start_mode"] == "warm" and record["restore_seconds"] > 0
    image = Ext4Image(Path(second["runOutputs"][0]["properties"]["path"]))
    assert image.read("/opt/ck/steps") == b"one\ntwo\nthree\nfour\n"  # each step's effect exactly once
    assert b"packer:" not in image.read("/etc/passwd") and not image.exists("/var/lib/orchestrator")

    # the last step changed: the rebuild restores the same state again; its RNG is not the first's
    path.write_text(_template(_sample("four-changed")))
    rebuilt = _cli("build", "--json", str(path), home=home)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    third = json.loads(rebuilt.stdout)
    log3 = Path(third["log"]).read_text()
    assert "starting from the checkpoint after customizer 3 ('three')" in log3 and "a warm start" in log3
    assert _clock_skew(log3) < 2.0, log3
    assert _random(log3) != _random(log)
    image = Ext4Image(Path(third["runOutputs"][0]["properties"]["path"]))
    assert image.read("/opt/ck/steps") == b"one\ntwo\nthree\nfour-changed\n"

    # another memory size: the state is refused before QEMU starts; the layer boots (cold)
    path.write_text(_template(_sample("four-big"), vm_size="Standard_D2s_v3"))
    bigger = _cli("build", "--json", str(path), home=home)
    assert bigger.returncode == 0, bigger.stdout + bigger.stderr
    fourth = json.loads(bigger.stdout)
    log4 = Path(fourth["log"]).read_text()
    assert "the checkpoint's VM state is not used: saved with memory (MiB) 4096, this build 8192" in log4, log4
    assert state.run(fourth["runId"])["start_mode"] == "cold"
    assert "resumed: /tmp restored, the earlier run's key removed" in log4
    image = Ext4Image(Path(fourth["runOutputs"][0]["properties"]["path"]))
    assert image.read("/opt/ck/steps") == b"one\ntwo\nthree\nfour-big\n"

    # another template on the same source and machine (its first step differs): no customizer
    # checkpoint fits, the warm base does; every customizer runs on the booted VM it continues
    path.write_text(_template(_sample("four"), first="one-other"))
    other = _cli("build", "--json", "--name", "other", str(path), home=home)
    assert other.returncode == 0, other.stdout + other.stderr
    fifth = json.loads(other.stdout)
    log5 = Path(fifth["log"]).read_text()
    assert "starting from the warm base of this source and machine" in log5, log5
    assert "warm restore of checkpoint 0" in log5 and "[customizer:one]" in log5
    assert state.run(fifth["runId"])["start_mode"] == "warm" and _clock_skew(log5) < 2.0
    image = Ext4Image(Path(fifth["runOutputs"][0]["properties"]["path"]))
    assert image.read("/opt/ck/steps") == b"one-other\ntwo\nthree\nfour\n"
