"""Disk checkpoints without a guest OS: the HCL a checkpointed build renders (accepted by
`packer validate`), and the host hook against a real QEMU (paused, no OS) over its monitor:
each call freezes the disk's top layer under its store name and gives QEMU a new overlay."""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
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
    # one host step: the hook itself flushes the guest over SSH, then freezes (no guest steps)
    assert sources[:3] == [("customizer:one", "shell"), ("checkpoint:one", "shell-local"), ("customizer:two", "shell")]
    assert [s for s, _ in sources].count("checkpoint:three") == 1 and sources[-1][0] == "generalize"
    assert f'"unix:{tmp_path}/q.sock,server,nowait"' in rendered.hcl
    host = (work / "steps/03-three.checkpoint-host.sh").read_text()
    assert host.endswith(f"orchestrator.effects.checkpoint_hook {tmp_path}/checkpoints.json 3\n")
    result = subprocess.run([packer, "validate", str(work / "build.pkr.hcl")], capture_output=True, text=True,
                            env=dict(os.environ, CHECKPOINT_DISABLE="1"), cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr


def _run_guest_script(tmp_path: Path, script: str, system_state: str, timeout: float, jobs: str = ""):
    """A checkpoint's guest script under /bin/sh, with a `systemctl` that reports `system_state`
    and, for list-jobs, `jobs`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\ncase $1 in is-system-running) echo {system_state};; "
                                       f"list-jobs) printf '%s\\n' '{jobs}';; esac\n")
    (bin_dir / "systemctl").chmod(0o755)
    (tmp_path / "step.sh").write_text(script)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    # its own process group: a script still waiting at the timeout goes with its `sleep`
    process = subprocess.Popen(["/bin/sh", str(tmp_path / "step.sh")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        raise subprocess.TimeoutExpired(exc.cmd, exc.timeout, output=out) from None
    return subprocess.CompletedProcess(process.args, process.returncode, out.decode(), err.decode())


def test_a_guest_going_down_is_never_checkpointed_and_says_so(tmp_path):
    from orchestrator.core.checkpoint_steps import GOING_DOWN, GOING_DOWN_EXIT, guest_prepare_script

    # (The script is never run past its check here: it would copy this host's /tmp into
    # /var/lib/orchestrator. tests/test_checkpoint_e2e.py runs it in a real guest.)
    down = _run_guest_script(tmp_path, guest_prepare_script(1), "stopping", 10)
    assert down.returncode == GOING_DOWN_EXIT and "the guest is going down (boot " in down.stdout
    # `systemctl reboot` has returned, the state still says running: the queued job counts
    queued = "42 reboot.target start waiting"
    assert _run_guest_script(tmp_path, guest_prepare_script(1), "running", 10, jobs=queued).returncode == GOING_DOWN_EXIT
    probe = f"if {GOING_DOWN}; then echo down; else echo up; fi\n"
    assert _run_guest_script(tmp_path, probe, "running", 10, jobs="7 apt-daily.service start waiting").stdout == "up\n"
    assert _run_guest_script(tmp_path, probe, "degraded", 10).stdout == "up\n"
    assert _run_guest_script(tmp_path, probe, "running", 10, jobs="3 poweroff.target start waiting").stdout == "down\n"
    assert "echo 1 > /var/lib/orchestrator/checkpoint" in guest_prepare_script(1) and "\nsync\n" in guest_prepare_script(1)


def test_the_hook_finds_the_port_qemu_forwards_to_the_guests_ssh(tmp_path):
    from orchestrator.effects.checkpoint_guest import GuestNotReady, forwarded_ssh_port

    disk, sock = tmp_path / "disk.qcow2", tmp_path / "q.sock"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    with socket.socket() as probe:  # a free port now; QEMU binds it below
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    qemu = start_qemu(disk, sock, "-netdev", f"user,id=user.0,hostfwd=tcp:127.0.0.1:{port}-:22",
                      "-device", "virtio-net,netdev=user.0")
    try:
        usernet = qmp(sock, "human-monitor-command", **{"command-line": "info usernet"})
        assert forwarded_ssh_port(usernet) == port
    finally:
        qemu.kill()
        qemu.wait()
    with pytest.raises(GuestNotReady, match="forwards no host port"):
        forwarded_ssh_port("Hub -1 (user.0):\n  Protocol[State]    FD  Source Address  Port\n")


def test_a_resumed_build_skips_the_checkpointed_steps_and_starts_with_the_resume_step(tmp_path):
    _, rendered, work = _render_with(tmp_path, CheckpointPlan(("hook",), 2, str(tmp_path / "q.sock")))
    sources = [b.source for b in rendered.provisioners]
    assert sources[0] == "resume" and "customizer:one" not in sources and "customizer:two" not in sources
    assert "customizer:three" in sources
    resume = (work / "steps/00-resume.sh").read_text()
    assert "ssh-ed25519 AAAAC3 test" in resume and "/var/lib/orchestrator/tmp" in resume


def test_a_warm_base_is_the_checkpoint_of_the_booted_vm_before_the_first_customizer(tmp_path, packer):
    plan = CheckpointPlan(("hook", "manifest.json"), 0, str(tmp_path / "q.sock"), warm=True, base=True)
    _, rendered, work = _render_with(tmp_path, plan)
    sources = [b.source for b in rendered.provisioners]
    assert sources[:2] == ["checkpoint:(boot)", "customizer:one"]  # nothing resumed: no resume step
    assert (work / "steps/00-boot.checkpoint-host.sh").read_text().endswith("hook manifest.json 0\n")
    assert '"migration.store-global-state=off"' in rendered.hcl and "-incoming" not in rendered.hcl
    result = subprocess.run([packer, "validate", str(work / "build.pkr.hcl")], capture_output=True, text=True, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_warm_start_restores_the_state_and_first_makes_the_guest_right(tmp_path, packer):
    plan = CheckpointPlan(("hook",), 0, str(tmp_path / "q.sock"), warm=True, incoming="/ck/base.state.zst",
                          random_hex="ab" * 64, from_base=True)  # from a warm base: every customizer runs
    _, rendered, work = _render_with(tmp_path, plan)
    sources = [b.source for b in rendered.provisioners]
    assert sources[0] == "resume" and sources[1] == "customizer:one"
    assert '"exec:zstd -dc -q /ck/base.state.zst"' in rendered.hcl and 'ssh_timeout          = "3m"' in rendered.hcl
    resume = (work / "steps/00-resume.sh").read_text()
    assert 'if [ "$marker" != "0" ]' in resume and "ab" * 64 in resume and "hwclock --hctosys" in resume
    assert "authorized_keys" not in resume  # the restored guest keeps the saved key: the build uses it
    result = subprocess.run([packer, "validate", str(work / "build.pkr.hcl")], capture_output=True, text=True, cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr


def start_qemu(disk: Path, sock: Path, *extra: str) -> subprocess.Popen:
    """A real QEMU with a virtio disk, paused before any guest code runs (unless `extra` makes
    it wait for a state), its monitor on `sock` once this returns."""
    qemu = subprocess.Popen(["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-S", "-display", "none",
                             "-nodefaults", "-m", "128", "-drive", f"file={disk},if=virtio,format=qcow2",
                             "-qmp", f"unix:{sock},server=on,wait=off", *extra], stderr=subprocess.PIPE, text=True)
    from qemu.qmp.legacy import QEMUMonitorProtocol

    for _ in range(200):  # the socket appears once QEMU has parsed its options
        if sock.exists() or "-incoming" in extra:
            if "-incoming" not in extra:  # a QEMU loading a state serves its monitor only after
                monitor = QEMUMonitorProtocol(str(sock))
                monitor.connect()
                monitor.close()
            return qemu
        if qemu.poll() is not None:
            return qemu  # exited: the caller asserts on it
        try:
            qemu.wait(timeout=0.05)  # waits on QEMU itself, returns as soon as it is up or gone
        except subprocess.TimeoutExpired:
            pass
    raise AssertionError("QEMU's monitor socket never appeared")


def qmp(sock: Path, command: str, **args):
    from qemu.qmp.legacy import QEMUMonitorProtocol

    monitor = QEMUMonitorProtocol(str(sock))
    monitor.connect()
    try:
        return monitor.cmd(command, **args)  # QEMU's error is raised
    finally:
        monitor.close()


@pytest.fixture
def paused_qemu(tmp_path):
    base, disk, sock = tmp_path / "base.qcow2", tmp_path / "packer-output" / "disk.qcow2", tmp_path / "q.sock"
    disk.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(disk), "64M"],
                   check=True)
    qemu = start_qemu(disk, sock, "-global", "migration.store-global-state=off")
    assert qemu.poll() is None, qemu.stderr.read()
    yield qemu, base, disk, sock
    qemu.kill()
    qemu.wait()


def _manifest(tmp_path: Path, sock: Path, disk: Path, last: int, **extra) -> Path:
    store = tmp_path / "checkpoints"
    store.mkdir(exist_ok=True)
    manifest = {"qmp_socket": str(sock), "packer_disk": str(disk), "top": str(tmp_path / "top.qcow2"),
                "virtual_size": 64 * 1024 * 1024, "first": 1, "last": last, "started_from": None,
                "log": str(tmp_path / "checkpoints.jsonl"),
                "layers": {str(i): {"key": f"k{i}", "name": f"step{i}", "path": str(store / f"k{i}-run.qcow2")}
                           for i in range(1, last + 1)}, **extra}
    path = tmp_path / "checkpoints.json"
    path.write_text(json.dumps(manifest))
    return path


def _hook(manifest: Path, position: int) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "orchestrator.effects.checkpoint_hook", str(manifest), str(position)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_a_warm_checkpoint_saves_the_vm_state_that_a_new_qemu_continues(tmp_path, paused_qemu):
    from orchestrator.core.warm import incoming_uri

    qemu, base, disk, sock = paused_qemu
    key = tmp_path / "id_ed25519"
    key.write_text("PRIVATE KEY\n")
    qmp(sock, "cont")  # a running VM: the hook stops it, freezes, saves, and lets it go on
    done = _hook(_manifest(tmp_path, sock, disk, 1, warm=True, ssh_key=str(key)), 1)
    assert "VM state saved (paused" in done.stdout
    [record] = [json.loads(line) for line in (tmp_path / "checkpoints.jsonl").read_text().splitlines()]
    state, saved_key = Path(record["warm"]["state"]), Path(record["warm"]["key"])
    assert state.name == "k1-run.qcow2.state.zst" and stat.S_IMODE(state.stat().st_mode) == 0o600
    assert saved_key.read_text() == "PRIVATE KEY\n" and stat.S_IMODE(saved_key.stat().st_mode) == 0o600
    assert qmp(sock, "query-status")["status"] == "running"  # the build goes on
    qemu.kill()
    qemu.wait()
    layer = tmp_path / "checkpoints" / "k1-run.qcow2"

    def restore(name: str, *extra: str) -> subprocess.Popen:
        overlay = tmp_path / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(layer), str(overlay)],
                       check=True)
        return start_qemu(overlay, tmp_path / f"{name}.sock", "-global", "migration.store-global-state=off",
                          "-incoming", incoming_uri(str(state)), *extra)

    other = restore("bigger", "-m", "256")  # another memory size: QEMU refuses the state
    assert other.wait(timeout=60) != 0 and "mismatch" in other.stderr.read().lower()
    # why core/warm.py binds each state to its machine: the refusal comes before QEMU starts
    from orchestrator.core.warm import MachineConfig, machine_mismatch

    saved = MachineConfig("QEMU 7.2", "tcg", 2, 128, 64)
    assert machine_mismatch(saved, saved) is None
    assert "memory (MiB) 128, this build 256" in machine_mismatch(saved, MachineConfig("QEMU 7.2", "tcg", 2, 256, 64))


def test_the_hook_freezes_each_top_layer_under_its_store_name(tmp_path, paused_qemu):
    qemu, base, disk, sock = paused_qemu
    store = tmp_path / "checkpoints"
    path = _manifest(tmp_path, sock, disk, 2)
    manifest = json.loads(path.read_text())
    for position in (1, 2):
        done = _hook(path, position)
        assert f"step {position} (" in done.stdout and "VM state" not in done.stdout
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
    assert done.returncode == 1  # no QEMU monitor there: said before any file is touched
    assert "orchestrator-checkpoint: failed after step 1: ConnectError" in done.stderr and "No such file" in done.stderr
    assert not (tmp_path / "k.qcow2").exists()


def _call(sock: Path, position: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.effects.checkpoint_call", str(sock), position],
                          capture_output=True, text=True, timeout=120)


def test_the_runs_process_serves_the_checkpoint_steps_over_its_socket(tmp_path, paused_qemu):
    """What Packer's shell-local step runs: a small client; the run's process (the agent) takes
    the checkpoint and answers with the hook's lines and its status."""
    from orchestrator.effects.checkpoint_agent import CheckpointAgent

    qemu, base, disk, sock = paused_qemu
    path = _manifest(tmp_path, sock, disk, 2)
    agent_sock = tmp_path / "checkpoint.sock"
    with CheckpointAgent(path, agent_sock):
        assert stat.S_IMODE(agent_sock.stat().st_mode) & 0o077 == 0  # only the run's user may ask
        first = _call(agent_sock, "1")
        assert first.returncode == 0, first.stderr
        assert "orchestrator-checkpoint: step 1 (step1) frozen in" in first.stdout
        refused = _call(agent_sock, "one")
        assert refused.returncode == 2 and "not a step position: 'one'" in refused.stderr
        failed = _call(agent_sock, "1")  # taken already: the hook's own error comes back, status 1
        assert failed.returncode == 1 and "failed after step 1: FileExistsError" in failed.stderr
        second = _call(agent_sock, "2")
        assert second.returncode == 0 and "step 2 (step2) frozen" in second.stdout
    assert not agent_sock.exists()  # gone with the build
    gone = _call(agent_sock, "3")
    assert gone.returncode == 1 and "the run's process did not answer" in gone.stderr
    records = [json.loads(line) for line in (tmp_path / "checkpoints.jsonl").read_text().splitlines()]
    assert [r["position"] for r in records] == [1, 2]
