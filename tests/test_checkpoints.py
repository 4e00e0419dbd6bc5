"""Disk checkpoints without a guest OS: the HCL a checkpointed build renders (accepted by
`packer validate`), and the host hook against a real QEMU (paused, no OS) over its monitor:
each call freezes the disk's top layer under its store name and gives QEMU a new overlay."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.core.checkpoint_steps import CheckpointPlan
from tests.helpers import linux_template
from tests.test_render_linux import _render

STEPS = [{"type": "Shell", "name": n, "inline": [f"echo {n}"]} for n in ("one", "two", "three")]


def _render_with(tmp_path: Path, plan: CheckpointPlan):
    return _render(tmp_path, linux_template(customize=STEPS), checkpoints=plan)


def test_a_checkpoint_follows_each_customizer_and_packer_accepts_it(tmp_path, packer):
    hook = (sys.executable, "-m", "orchestrator.effects.checkpoint_hook", str(tmp_path / "checkpoints.json"))
    _, rendered, work = _render_with(tmp_path, CheckpointPlan(hook, 0, str(tmp_path / "q.sock")))
    sources = [(b.source, b.kind) for b in rendered.provisioners]
    assert sources[:3] == [("customizer:one", "shell"), ("checkpoint:one", "shell"), ("checkpoint:one", "shell-local")]
    assert [s for s, _ in sources].count("checkpoint:three") == 2 and sources[-1][0] == "generalize"
    assert f'"unix:{tmp_path}/q.sock,server,nowait"' in rendered.hcl
    host = (work / "steps/03-three.checkpoint-host.sh").read_text()
    assert host.endswith(f"orchestrator.effects.checkpoint_hook {tmp_path}/checkpoints.json 3\n")
    result = subprocess.run([packer, "validate", str(work / "build.pkr.hcl")], capture_output=True, text=True,
                            env=dict(os.environ, CHECKPOINT_DISABLE="1"), cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_resumed_build_skips_the_checkpointed_steps_and_starts_with_the_resume_step(tmp_path):
    _, rendered, work = _render_with(tmp_path, CheckpointPlan(("hook",), 2, str(tmp_path / "q.sock")))
    sources = [b.source for b in rendered.provisioners]
    assert sources[0] == "resume" and "customizer:one" not in sources and "customizer:two" not in sources
    assert "customizer:three" in sources
    resume = (work / "steps/00-resume.sh").read_text()
    assert "ssh-ed25519 AAAAC3 test" in resume and "/var/lib/orchestrator/tmp" in resume


@pytest.fixture
def paused_qemu(tmp_path):
    """A real QEMU with a virtio disk on an overlay of a base image, paused before any guest
    code runs, its monitor on a socket."""
    base, disk, sock = tmp_path / "base.qcow2", tmp_path / "packer-output" / "disk.qcow2", tmp_path / "q.sock"
    disk.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(disk), "64M"],
                   check=True)
    qemu = subprocess.Popen(["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-S", "-display", "none",
                             "-nodefaults", "-drive", f"file={disk},if=virtio,format=qcow2",
                             "-qmp", f"unix:{sock},server=on,wait=off"])
    from qemu.qmp.legacy import QEMUMonitorProtocol

    monitor = None
    for _ in range(100):  # the socket appears once QEMU has parsed its options
        if sock.exists():
            monitor = QEMUMonitorProtocol(str(sock))
            monitor.connect()
            monitor.close()
            break
        assert qemu.poll() is None, "QEMU exited"
        try:
            qemu.wait(timeout=0.05)  # waits on QEMU itself, returns as soon as it is up or gone
        except subprocess.TimeoutExpired:
            pass
    assert monitor is not None, "QEMU's monitor socket never appeared"
    yield qemu, base, disk, sock
    qemu.kill()
    qemu.wait()


def test_the_hook_freezes_each_top_layer_under_its_store_name(tmp_path, paused_qemu):
    qemu, base, disk, sock = paused_qemu
    store = tmp_path / "checkpoints"
    store.mkdir()
    manifest = {"qmp_socket": str(sock), "packer_disk": str(disk), "top": str(tmp_path / "top.qcow2"),
                "virtual_size": 64 * 1024 * 1024, "first": 1, "last": 2, "started_from": None,
                "log": str(tmp_path / "checkpoints.jsonl"),
                "layers": {"1": {"key": "k1", "name": "one", "path": str(store / "k1-run.qcow2")},
                           "2": {"key": "k2", "name": "two", "path": str(store / "k2-run.qcow2")}}}
    path = tmp_path / "checkpoints.json"
    path.write_text(json.dumps(manifest))
    for position in (1, 2):
        done = subprocess.run([sys.executable, "-m", "orchestrator.effects.checkpoint_hook", str(path), str(position)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"step {position} (" in done.stdout
    records = [json.loads(line) for line in Path(manifest["log"]).read_text().splitlines()]
    assert [(r["position"], r["parent"]) for r in records] == [(1, None), (2, str(store / "k1-run.qcow2"))]
    assert os.stat(store / "k1-run.qcow2").st_ino == os.stat(disk).st_ino  # Packer's disk, kept by a link
    qemu.kill()
    qemu.wait()
    chain = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "--backing-chain",
                                       manifest["top"]], capture_output=True, text=True, check=True).stdout)
    assert [Path(layer["filename"]).name for layer in chain] == ["top.qcow2", "k2-run.qcow2", "k1-run.qcow2",
                                                                 "base.qcow2"]
    assert chain[1]["backing-filename"] == "k1-run.qcow2"  # relative: the store can move
    assert not list(store.glob("*.part"))


def test_a_failing_hook_says_what_failed(tmp_path):
    manifest = tmp_path / "checkpoints.json"
    manifest.write_text(json.dumps({"qmp_socket": str(tmp_path / "none.sock"), "packer_disk": str(tmp_path / "no"),
                                    "top": str(tmp_path / "top.qcow2"), "virtual_size": 1, "first": 1, "last": 1,
                                    "log": str(tmp_path / "log"), "layers": {"1": {"key": "k", "name": "one",
                                                                                  "path": str(tmp_path / "k.qcow2")}}}))
    done = subprocess.run([sys.executable, "-m", "orchestrator.effects.checkpoint_hook", str(manifest), "1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "orchestrator-checkpoint: failed after step 1: FileNotFoundError" in done.stderr
