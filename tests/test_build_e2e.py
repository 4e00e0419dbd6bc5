"""Real builds: Packer + QEMU (TCG here) from the imported Debian 12 base image to a fixed VHD,
then the VHD is opened and its contents checked. Each build takes one to two minutes."""
from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.core.document import load_document
from orchestrator.engine import Engine
from orchestrator.effects.packer import qemu_pids
from orchestrator.effects.proc import run_processes
from orchestrator.effects.state import StateStore
from orchestrator.errors import DigestMismatch, ExitCode
from orchestrator.service.verify import verify_artifact
from tests.helpers import dumps, linux_template
from tests.vhd_inspect import MIB, Ext4Image, footer

pytestmark = pytest.mark.integration

HOSTILE_LINE = "literal: ${HOME} %{x} {{ .Path }} {{user `v`}} \"dq\" 'sq' \\b"
# A scriptUri script runs as root, as AIB runs it: no sudo (Microsoft's quickstart writes /etc/motd so).
SCRIPT = b"#!/bin/sh\nset -e\necho from-script-uri > /etc/orchestrator-script.txt\nid -un >> /etc/orchestrator-script.txt\n"


def _listening_addresses(pid: int) -> set[str]:
    """Local addresses of the TCP sockets a process listens on (from /proc, in hex)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                found.add(fields[1].split(":")[0])
    return found


def _run_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ORCHESTRATOR_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, env=env,
                          timeout=1800)


def test_build_to_fixed_vhd_then_nothing_rebuilt(tmp_path, imported_home, http_root):
    root, url = http_root
    (root / "setup.sh").write_bytes(SCRIPT)
    (root / "page.html").write_text("<p>hello from the File customizer</p>\n")
    data = linux_template(vmProfile={"vmSize": "Standard_B2s", "osDiskSizeGB": 4}, customize=[
        {"type": "Shell", "name": "inlineStep", "inline": [
            "sudo mkdir -p /opt/marker",
            "id -un | sudo tee /opt/marker/inline-user",  # inline commands run as the build user
            f"printf '%s\\n' {_sh_quote(HOSTILE_LINE)} | sudo tee /opt/marker/hostile.txt",
        ]},
        {"type": "Shell", "name": "scriptStep", "scriptUri": f"{url}/setup.sh",
         "sha256Checksum": hashlib.sha256(SCRIPT).hexdigest()},
        {"type": "File", "name": "fileStep", "sourceUri": f"{url}/page.html", "destination": "/tmp/page.html"},
        {"type": "Shell", "name": "placeStep", "inline": ["sudo cp /tmp/page.html /opt/marker/page.html"]},
    ])
    text = dumps(data)
    template = load_document(text, "e2e")
    engine = Engine(imported_home)
    seen: list[str] = []
    listening: dict[int, set[str]] = {}

    cdrom_dirs_before = set(Path("/tmp").glob("packer_to_cdrom*"))
    while_running: dict[str, object] = {}

    def progress(what: str) -> None:
        seen.append(what)
        if what.startswith("customizer 'inlineStep'"):  # the VM is up: inspect its sockets and files
            for pid in qemu_pids(str(imported_home.home / "staging")):
                listening[pid] = _listening_addresses(pid)
                while_running["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            [key] = (imported_home.home / "staging").glob("*/id_ed25519")
            while_running["key_mode"] = stat.S_IMODE(key.stat().st_mode)

    result = engine.build(template, "e2e", text, None, progress)
    assert result.run_state == "Succeeded"
    assert listening and all(addrs == {"0100007F"} for addrs in listening.values()), listening
    assert while_running["key_mode"] == 0o600  # the run's private key, owner-only while the VM runs
    assert not (imported_home.home / "staging" / result.run_id / "id_ed25519").exists()  # and gone when it ended
    assert not list(result.log_path.parent.glob("id_ed25519*"))  # never among the run's records
    cmdline = while_running["cmdline"]
    assert cmdline[cmdline.index(b"-vnc") + 1] == b"none"  # no console unless asked for
    assert set(Path("/tmp").glob("packer_to_cdrom*")) == cdrom_dirs_before  # Packer's temporaries: in its own
    # Packer's temporaries were in the run's staging (or its /tmp stand-in), then gone with it
    assert not list(Path(tempfile.gettempdir()).glob(f"orchestrator-{result.run_id}-*"))
    assert not (imported_home.home / "staging" / result.run_id).exists()
    assert stat.S_IMODE(result.log_path.stat().st_mode) == 0o600
    assert [s.split(" (")[0] for s in seen if s.startswith("customizer")] == [
        "customizer 'inlineStep'", "customizer 'scriptStep'", "customizer 'fileStep'", "customizer 'placeStep'"]

    [output] = result.outputs
    props = output["properties"]
    vhd = Path(props["path"])
    assert output["name"] == "vhd" and props["provisioningState"] == "Succeeded"
    assert props["sha256"] == hashlib.sha256(vhd.read_bytes()).hexdigest()
    foot = footer(vhd)
    assert foot["cookie"] == b"conectix" and foot["disk_type"] == 2
    assert foot["current_size"] == 4096 * MIB == props["sizeBytes"]
    assert vhd.stat().st_size == foot["current_size"] + 512
    assert not list(vhd.parent.glob(".*part*"))
    assert stat.S_IMODE(vhd.stat().st_mode) == 0o600

    checked = verify_artifact(imported_home, str(vhd))  # signed provenance, beside the VHD
    assert checked.sha256 == props["sha256"] and checked.facts.run_id == result.run_id
    assert checked.found_by == "sidecar" and Path(props["provenance"]).is_file()
    assert "provenance 'vhd'" in result.log_path.read_text()

    image = Ext4Image(vhd)
    assert image.read("/opt/marker/hostile.txt").decode() == HOSTILE_LINE + "\n"
    assert image.read("/etc/orchestrator-script.txt") == b"from-script-uri\nroot\n"
    assert image.read("/opt/marker/inline-user") == b"packer\n"
    assert image.read("/opt/marker/page.html") == b"<p>hello from the File customizer</p>\n"
    # generalized and clean
    assert b"packer:" not in image.read("/etc/passwd")
    assert not image.exists("/home/packer")
    assert not [n for n in image.listdir("/etc/ssh") if n.startswith("ssh_host_")]
    assert image.read("/etc/machine-id") == b""
    assert not image.exists("/var/lib/cloud/instances")
    assert not image.exists("/etc/sudoers.d/90-cloud-init-users")

    log = result.log_path.read_text()
    assert "[customizer:scriptStep]" in log and "[customizer:fileStep]" in log
    assert "[orchestrator] generalize: running default: /usr/sbin/waagent -force -deprovision+user" in log
    assert "sha256 verified" in log
    assert qemu_pids(str(imported_home.home / "staging")) == []

    # Nothing changed: the second build reuses the first one's VHD without booting a VM.
    again = engine.build(load_document(text, "e2e"), "e2e", text, None)
    assert again.reused_run == result.run_id
    assert again.outputs[0]["properties"]["path"] == str(vhd)
    assert "Starting VM" not in again.log_path.read_text()

    # Reuse is by content: a VHD changed since (same size, other bytes) is built again.
    with open(vhd, "r+b") as handle:
        handle.seek(2 * MIB)
        handle.write(b"tampered")
    with pytest.raises(DigestMismatch):  # the statement no longer matches the artifact
        verify_artifact(imported_home, str(vhd))
    third = engine.build(load_document(text, "e2e"), "e2e", text, None)
    assert third.reused_run is None and third.run_state == "Succeeded"
    log = third.log_path.read_text()
    assert f"{vhd} changed since (sha256" in log and "not up to date: building again" in log
    assert Path(third.outputs[0]["properties"]["path"]) != vhd


def test_deprovisioning_script_override(tmp_path, imported_home):
    data = linux_template(customize=[{"type": "Shell", "name": "writeOverride", "inline": [
        "printf '#!/bin/sh\\necho override-ran > /etc/orchestrator-override.txt\\n' > /tmp/DeprovisioningScript.sh",
    ]}])
    home = imported_home.home
    path = tmp_path / "override.json"
    path.write_text(dumps(data))
    result = _run_cli("build", "--json", str(path), home=home)
    assert result.returncode == 0, result.stderr + result.stdout
    payload = json.loads(result.stdout)
    vhd = Path(payload["runOutputs"][0]["properties"]["path"])
    image = Ext4Image(vhd)
    assert image.read("/etc/orchestrator-override.txt") == b"override-ran\n"
    assert not image.exists("/home/packer")
    log = Path(payload["log"]).read_text()
    assert "generalize: running /tmp/DeprovisioningScript.sh (written by a customizer)" in log
    assert "running default" not in log


def test_failing_customizer_names_itself_and_abort_keeps_the_disk(tmp_path, imported_home):
    data = linux_template(customize=[
        {"type": "Shell", "name": "fine", "inline": ["echo fine | sudo tee /etc/fine.txt", "sync"]},
        {"type": "Shell", "name": "breakMe", "inline": ["echo broke | sudo tee /etc/broke.txt", "sync",
                                                         "echo about to fail", "exit 3"]},
        {"type": "Shell", "name": "never", "inline": ["echo never-runs"]},
    ], errorHandling={"onCustomizerError": "abort"})
    path = tmp_path / "fail.json"
    path.write_text(dumps(data))
    home = imported_home.home
    result = _run_cli("build", str(path), home=home)
    assert result.returncode == ExitCode.CUSTOMIZER_FAILED, result.stderr
    assert "customizer 'breakMe' failed" in result.stderr and "Traceback" not in result.stderr
    [run] = StateStore(imported_home.db_path).runs()
    assert run["run_state"] == "Failed" and "breakMe" in run["message"]
    log = Path(run["log_path"]).read_text()
    assert "[customizer:breakMe]" in log and "about to fail" in log
    assert "never-runs" not in log.replace("echo never-runs", "")
    assert not list(imported_home.artifacts_dir.rglob("*.vhd"))
    assert qemu_pids(str(imported_home.home / "staging")) == []
    # the layer the VM was writing when it failed: the overlay after the checkpoint of 'fine',
    # moved out of the checkpoint store (whose layers below it now stay while it does)
    kept = imported_home.home / "staging" / run["id"] / "top.qcow2"
    assert f"disk is kept at {kept}" in result.stderr
    assert not (kept.parent / "tmp").exists()  # Packer's temporaries go even so
    key = kept.parent / "id_ed25519"  # kept with the disk, and said
    assert key.is_file() and stat.S_IMODE(key.stat().st_mode) == 0o600 and str(key) in result.stderr
    raw = tmp_path / "kept.raw"  # the kept disk holds the state the failure left
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(kept), str(raw)], check=True)
    kept_image = Ext4Image(raw)
    kept_image.replay_journal()  # the VM was killed, not shut down
    assert kept_image.read("/etc/fine.txt") == b"fine\n"
    assert kept_image.read("/etc/broke.txt") == b"broke\n"  # what the failing step did, too
    pruned = _run_cli("checkpoints", "prune", "--all", home=home)
    assert pruned.returncode == 0 and "a kept build VM disk stands on it" in pruned.stdout, pruned.stdout


def test_timeout_kills_the_build_and_leaves_no_qemu(tmp_path, imported_home):
    data = linux_template(buildTimeoutInMinutes=1, customize=[
        {"type": "Shell", "name": "slow", "inline": ["sleep 600"]}])
    path = tmp_path / "slow.json"
    path.write_text(dumps(data))
    started = time.monotonic()
    result = _run_cli("build", str(path), home=imported_home.home)
    elapsed = time.monotonic() - started
    assert result.returncode == ExitCode.TIMEOUT, result.stderr
    assert "timed out after buildTimeoutInMinutes (1 min)" in result.stderr
    assert "context deadline exceeded" in result.stderr
    assert elapsed < 60 + 45, elapsed
    assert qemu_pids(str(imported_home.home / "staging")) == []
    [run] = StateStore(imported_home.db_path).runs()
    assert run["run_state"] == "Failed"


def test_checksum_mismatch_fails_before_boot(tmp_path, imported_home, http_root):
    root, url = http_root
    (root / "s.sh").write_bytes(b"echo changed\n")
    data = linux_template(customize=[{"type": "Shell", "name": "pinned", "scriptUri": f"{url}/s.sh",
                                      "sha256Checksum": "f" * 64}])
    path = tmp_path / "sum.json"
    path.write_text(dumps(data))
    result = _run_cli("build", str(path), home=imported_home.home)
    assert result.returncode == ExitCode.DOWNLOAD_FAILED
    assert "f" * 64 in result.stderr and hashlib.sha256(b"echo changed\n").hexdigest() in result.stderr
    [run] = StateStore(imported_home.db_path).runs()
    log = Path(run["log_path"]).read_text()
    assert "Starting VM" not in log and "[packer]" not in log
    assert run["run_state"] == "Failed"


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def test_cancel_stops_a_running_build(tmp_path, imported_home):
    data = linux_template(customize=[{"type": "Shell", "name": "slow", "inline": ["sleep 600"]}])
    path = tmp_path / "cancel.json"
    path.write_text(dumps(data))
    env = dict(os.environ, ORCHESTRATOR_HOME=str(imported_home.home))
    build = subprocess.Popen([sys.executable, "-m", "orchestrator", "build", str(path)], stderr=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert build.stderr is not None
        for line in build.stderr:  # the CLI prints each phase as it starts
            if "customizer 'slow'" in line:
                break
        else:
            pytest.fail("the build ended before its customizer started")
        [run] = StateStore(imported_home.db_path).runs()
        assert run["run_state"] == "Running" and run["run_sub_state"] == "Customizing"
        # another shell follows the log while the build runs; it ends when the run ends
        follow = subprocess.Popen([sys.executable, "-m", "orchestrator", "logs", "-f", run["id"]],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert follow.stdout is not None
        for line in follow.stdout:
            if "[customizer:slow]" in line:
                break
        else:
            pytest.fail("logs -f ended before the customizer's lines")
        cancel = _run_cli("cancel", run["id"], home=imported_home.home)
        assert cancel.returncode == 0, cancel.stderr
        rest = build.stderr.read()
        assert build.wait(timeout=120) == ExitCode.CANCELED, rest
        followed = follow.stdout.read()
        assert follow.wait(timeout=60) == 0
    finally:
        build.kill()
    assert "canceled during customizer 'slow'" in rest
    assert "cancel requested during customizer:slow" in followed and "Canceled:" in followed
    console = _run_cli("logs", "--console", run["id"], home=imported_home.home)
    assert console.returncode == 0 and ("login:" in console.stdout or "Linux version" in console.stdout)
    assert run_processes(run["id"]) == []
    assert not (imported_home.home / "staging" / run["id"]).exists()
    [run] = StateStore(imported_home.db_path).runs()
    assert run["run_state"] == "Canceled" and run["end_time"] is not None
    assert qemu_pids(str(imported_home.home / "staging")) == []
    assert not list(imported_home.artifacts_dir.rglob("*.vhd"))
