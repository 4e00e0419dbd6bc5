"""Real builds with warm checkpoints (Packer + QEMU under TCG): the VM's state is saved with
each checkpoint, and a resume or a rebuild continues that VM instead of booting it. The guest
proves it: each customizer appends its name to a counter file (the VHD holds each once), the
last step prints the guest's clock (within 2 s of the host's after the restore) and 16 bytes of
/dev/urandom (two restores of one state differ). A state that does not fit this build (another
memory size) is refused before QEMU starts and the build resumes cold from the layer; one that
passes every check but does not load makes the run start again, cold, from the same layer."""
from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
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


def _template(third: list[str], fourth: list[str], vm_size: str = "Standard_B2s", first: str = "one") -> str:
    count = "echo {} | sudo tee -a /opt/ck/steps"
    steps = [
        {"type": "Shell", "name": "one", "inline": ["sudo mkdir -p /opt/ck", count.format(first),
                                                    "sudo systemctl reboot"]},  # as a kernel update asks
        {"type": "Shell", "name": "two", "inline": [count.format("two")]},
        {"type": "Shell", "name": "three", "inline": third},
        {"type": "Shell", "name": "four", "inline": fourth},
    ]
    return dumps(linux_template(customize=steps, vmProfile={"vmSize": vm_size}))


THREE = ["echo three | sudo tee -a /opt/ck/steps"]
FAILS = ["echo this step fails; exit 3"]


def _sample(tag: str) -> list[str]:
    """The last step: its name counted, the guest's clock and random bytes printed."""
    return [f"echo {tag} | sudo tee -a /opt/ck/steps", 'echo "guest-clock $(date -u +%s.%N)"',
            'echo "guest-random $(head -c 16 /dev/urandom | od -An -tx1 | tr -d \' \\n\')"']


def _clock_skew(log: str, line: str = r"\[customizer:four\].*guest-clock") -> float:
    """The guest's clock against the host's, from the line the last step printed (the log's
    stamp is the host's time when Packer relayed it)."""
    stamp, guest = re.search(rf"^(\S+) {line} (\d+\.\d+)", log, re.M).groups()
    host = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    return abs(host - float(guest))


def _random(log: str) -> str:
    return re.search(r"guest-random ([0-9a-f]{32})", log).group(1)


def _kept_warm(log: str) -> list[str]:
    return re.findall(r"\] (checkpoint after customizer \d|warm base)[^\n]* kept: .*VM state saved", log)


def test_warm_resume_and_rebuild_continue_the_saved_vm(tmp_path, imported_home):
    home = imported_home.home
    (home / "config.toml").write_text("[checkpoints]\nwarm = true\n")
    state = StateStore(imported_home.db_path)
    path = tmp_path / "warm.json"
    path.write_text(_template(FAILS, FAILS))
    failed = _cli("build", str(path), home=home)
    assert failed.returncode == ExitCode.CUSTOMIZER_FAILED, failed.stderr
    [first] = state.runs()
    log = Path(first["log_path"]).read_text()
    assert "no warm base of this source and machine yet" in log
    # the booted VM (the warm base), then after 'one' (on the boot after its reboot) and 'two'
    assert _kept_warm(log) == ["warm base", "checkpoint after customizer 1", "checkpoint after customizer 2"], log
    boots = re.findall(r"orchestrator-checkpoint: guest boot (\S+)", log)
    assert len(boots) == 3 and boots[0] != boots[1] == boots[2], boots
    listed = json.loads(_cli("checkpoints", "list", "--json", home=home).stdout)["checkpoints"]
    assert [c["stepIndex"] for c in listed] == [0, 1, 2] and listed[0]["stepName"] == "(boot)"
    assert all(c["warm"] and c["stateBytes"] > 0 for c in listed), listed
    for checkpoint in listed:  # guest RAM and the run's key: owner-only
        for suffix in (".state.zst", ".key"):
            assert os.stat(checkpoint["path"] + suffix).st_mode & 0o077 == 0

    # resume after the fix: warm from the state after 'two'; 'four' fails, after a checkpoint
    # saved from the restored VM
    path.write_text(_template(THREE, FAILS))
    again = _cli("build", "--json", "--resume", first["id"], str(path), home=home)
    assert again.returncode == ExitCode.CUSTOMIZER_FAILED, again.stdout + again.stderr
    second = json.loads(again.stdout)
    log = Path(second["log"]).read_text()
    assert "a warm start: the VM saved with the checkpoint continues" in log, log
    assert "warm restore of checkpoint 2" in log and "[customizer:one]" not in log
    assert _kept_warm(log) == ["checkpoint after customizer 3"], log

    # a resume after a failed last step is warm, from a state saved by a restored VM (a chain)
    path.write_text(_template(THREE, _sample("four")))
    resumed = _cli("build", "--json", "--resume", second["runId"], str(path), home=home)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    third = json.loads(resumed.stdout)
    log = Path(third["log"]).read_text()
    assert "a warm start: the VM saved with the checkpoint continues" in log, log
    assert "warm start: the build VM answered after" in log
    assert "[customizer:two]" not in log and "[customizer:three]" not in log
    assert "warm restore of checkpoint 3" in log and "RNG reseeded" in log
    assert _clock_skew(log) < 2.0, log
    record = state.run(third["runId"])
    assert record["start_mode"] == "warm" and record["restore_seconds"] > 0
    image = Ext4Image(Path(third["runOutputs"][0]["properties"]["path"]))
    assert image.read("/opt/ck/steps") == b"one\ntwo\nthree\nfour\n"  # each step's effect exactly once
    assert b"packer:" not in image.read("/etc/passwd") and not image.exists("/var/lib/orchestrator")

    # the last step changed: the rebuild restores the same state again; its RNG is not the first's
    path.write_text(_template(THREE, _sample("four-changed")))
    rebuilt = _cli("build", "--json", str(path), home=home)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    fourth = json.loads(rebuilt.stdout)
    log4 = Path(fourth["log"]).read_text()
    assert "starting from the checkpoint after customizer 3 ('three')" in log4 and "a warm start" in log4
    assert _clock_skew(log4) < 2.0, log4
    assert _random(log4) != _random(log)
    image = Ext4Image(Path(fourth["runOutputs"][0]["properties"]["path"]))
    assert image.read("/opt/ck/steps") == b"one\ntwo\nthree\nfour-changed\n"

    # another memory size: the state is refused before QEMU starts; the layer boots (cold)
    path.write_text(_template(THREE, _sample("four-big"), vm_size="Standard_D2s_v3"))
    bigger = _cli("build", "--json", str(path), home=home)
    assert bigger.returncode == 0, bigger.stdout + bigger.stderr
    fifth = json.loads(bigger.stdout)
    log5 = Path(fifth["log"]).read_text()
    assert "the checkpoint's VM state is not used: saved with memory (MiB) 4096, this build 8192" in log5, log5
    assert state.run(fifth["runId"])["start_mode"] == "cold"
    assert "resumed: /tmp restored, the earlier run's key removed" in log5
    image = Ext4Image(Path(fifth["runOutputs"][0]["properties"]["path"]))
    assert image.read("/opt/ck/steps") == b"one\ntwo\nthree\nfour-big\n"

    # another template on the same source and machine (its first step differs): no customizer
    # checkpoint fits, the warm base does; every customizer runs on the booted VM it continues
    path.write_text(_template(THREE, _sample("four"), first="one-other"))
    other = _cli("build", "--json", "--name", "other", str(path), home=home)
    assert other.returncode == 0, other.stdout + other.stderr
    sixth = json.loads(other.stdout)
    log6 = Path(sixth["log"]).read_text()
    assert "starting from the warm base of this source and machine" in log6, log6
    assert "warm restore of checkpoint 0" in log6 and "[customizer:one]" in log6
    assert state.run(sixth["runId"])["start_mode"] == "warm"
    # right after the restore (the clock at 'four' is the one after the reboot in 'one')
    assert _clock_skew(log6, r"\[resume\].*warm restore of checkpoint 0: clock") < 2.0, log6
    image = Ext4Image(Path(sixth["runOutputs"][0]["properties"]["path"]))
    assert image.read("/opt/ck/steps") == b"one-other\ntwo\nthree\nfour\n"

    # a state that passes every check but does not load (its bytes damaged, its digest updated to
    # match): QEMU refuses it at start; the run says so and builds cold from the same layer
    [saved] = [c for c in json.loads(_cli("checkpoints", "list", "--json", home=home).stdout)["checkpoints"]
               if c["stepIndex"] == 3 and c["warm"] and c["template"] == "warm"]
    state_file = Path(saved["path"] + ".state.zst")
    damaged = bytearray(state_file.read_bytes())
    damaged[4096:8192] = os.urandom(4096)  # early: QEMU fails within Packer's 2 s start check
    state_file.write_bytes(bytes(damaged))
    with sqlite3.connect(imported_home.db_path) as db:
        db.execute("UPDATE warm_states SET sha256 = ? WHERE path = ?",
                   (hashlib.sha256(bytes(damaged)).hexdigest(), str(state_file)))
    path.write_text(_template(THREE, _sample("four-after-damage")))
    fallback = _cli("build", "--json", str(path), home=home)
    assert fallback.returncode == 0, fallback.stdout + fallback.stderr
    seventh = json.loads(fallback.stdout)
    log7 = Path(seventh["log"]).read_text()
    assert "the warm start did not come up" in log7 and "a cold start from the same checkpoint instead" in log7
    assert state.run(seventh["runId"])["start_mode"] == "cold"
    image = Ext4Image(Path(seventh["runOutputs"][0]["properties"]["path"]))
    assert image.read("/opt/ck/steps") == b"one\ntwo\nthree\nfour-after-damage\n"
