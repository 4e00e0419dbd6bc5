"""Disk checkpoints in the rendered Windows build (issue 13), as the rest of the Windows path is
checked without a Windows guest: the blocks and their order, a resumed build's skipped steps and
first step, `packer validate`; a real `packer build` (null builder, the fake WinRM server of
test_render_windows.py) that runs the resume step, every checkpoint step and the host hook in
order and logs in after a refused first login, as a resumed VM makes Packer do; and the host hook
against a real QEMU with the IDE disk the Windows template gives, by the drive id the manifest
names (the one Packer's own QEMU gets: an integration test starts it).
"""
from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.checkpoint_steps import CheckpointPlan
from orchestrator.core.plan import BuildPlan
from orchestrator.core.render import RenderedBuild
from orchestrator.core.render_windows import (
    CHECKPOINT_BOOT_TASK,
    CHECKPOINT_DRIVE,
    SEED_LABEL,
    SEED_PASSWORD_NAME,
    powershell_literal,
)
from tests.test_render_windows import (
    EVERY_KIND,
    PASSWORD,
    FakeWinRM,
    assert_blocks_match_hcl,
    expected_kinds,
    hostile_template,
    load_sample,
    make_build,
    null_source,
    parse_hcl,
    run_packer,
    uploads,
    write_build,
)

MIB = 1024 * 1024
HOOK = ("python3", "-m", "orchestrator.effects.checkpoint_hook", "/run/checkpoints.json")


def checkpointed(tmp_path: Path, data: dict, start_after: int = 0, hook: tuple[str, ...] = HOOK):
    plan = CheckpointPlan(hook, start_after, str(tmp_path / "qmp.sock"))
    return make_build(tmp_path, data, "win", checkpoints=plan)


def expected_checkpointed(plan: BuildPlan, start_after: int) -> list[tuple[str, str]]:
    """expected_kinds with the customizers up to start_after left out, a guest and a host
    checkpoint step after each other customizer, and the resume step first when resumed."""
    out = [("resume", "powershell")] if start_after else []
    for step in plan.steps:
        if step.phase == "customize" and step.index <= start_after:
            continue
        out += [kind for kind in expected_kinds(plan) if kind[0] == f"customizer:{step.name}"
                or kind[0] == f"validation:{step.name}"]
        if step.phase == "customize":
            out += [(f"checkpoint:{step.name}", "powershell"), (f"checkpoint:{step.name}", "shell-local")]
    return out + [("generalize", "powershell")]


def file_of(rendered: RenderedBuild, work: str, block) -> str:
    return rendered.files[str(Path(dict(block.attrs)["script"]).relative_to(work))]


def test_a_checkpoint_follows_each_customizer(tmp_path: Path, packer: str) -> None:
    plan, ctx, rendered = checkpointed(tmp_path, load_sample(EVERY_KIND))
    assert [s.kind for s in plan.steps if s.phase == "customize"] == [
        "PowerShell", "WindowsRestart", "File", "PowerShell", "WindowsUpdate"]
    assert [(b.source, b.kind) for b in rendered.provisioners] == expected_checkpointed(plan, 0)
    assert_blocks_match_hcl(rendered)
    # the host hook gets each customizer's 1-based position
    hosts = [b for b in rendered.provisioners if b.kind == "shell-local"]
    for position, block in enumerate(hosts, 1):
        text = file_of(rendered, ctx.work_dir, block)
        assert text == ("#!/bin/sh\n# The host side of the checkpoint after customizer "
                        f"{position}\nexec python3 -m orchestrator.effects.checkpoint_hook "
                        f"/run/checkpoints.json {position}\n")
        assert block.log_keys == (dict(block.attrs)["script"],)
    guests = [b for b in rendered.provisioners if b.source.startswith("checkpoint:") and b.kind == "powershell"]
    assert len({dict(b.attrs)["script"] for b in guests}) == 5  # one file each: the log tells them apart
    guest = file_of(rendered, ctx.work_dir, guests[0])
    assert "elevated_user" not in dict(guests[0].attrs)  # the WinRM session: an administrator
    for needle in ("Write-VolumeCache -DriveLetter C", "RegFlushKey", "New-ScheduledTaskTrigger -AtStartup",
                   "New-ScheduledTaskPrincipal -UserId 'SYSTEM'", f"$BootTask = '{CHECKPOINT_BOOT_TASK}'"):
        assert needle in guest, needle
    assert guest.index("Register-ScheduledTask") < guest.index("RegFlushKey") < guest.index("Write-VolumeCache")
    # the boot script it writes sets the build account's password from the seed CD
    boot = re.search(r"^\$BootText = ('(?:[^']|'')*')$", guest, re.MULTILINE | re.DOTALL)
    assert boot is not None
    text = boot.group(1)[1:-1].replace("''", "'")
    assert f"$SeedLabel = '{SEED_LABEL}'\n" in text and f"$PasswordName = '{SEED_PASSWORD_NAME}'\n" in text
    assert "$BuildUser = 'packer'\n" in text and '.SetPassword($password)' in text
    assert "Win32_LogicalDisk -Filter 'DriveType = 5'" in text
    assert boot.group(1) == powershell_literal(text)
    # QEMU gets orchestrator's monitor; the disk stays IDE, the drive the hook's manifest names
    source = parse_hcl(rendered.hcl)["source"][0]["qemu"]["build"]
    assert ["-qmp", f"unix:{tmp_path}/qmp.sock,server,nowait"] in source["qemuargs"]
    assert source["disk_interface"] == "ide" and CHECKPOINT_DRIVE == "ide0-hd0"
    # the generalize step removes the boot task before the override or Sysprep
    general = file_of(rendered, ctx.work_dir, rendered.provisioners[-1])
    assert f"$BootTask = '{CHECKPOINT_BOOT_TASK}'\n" in general
    assert general.index("Unregister-ScheduledTask -TaskName $BootTask") < general.index("Test-Path -LiteralPath $OverridePath")
    hcl_path = write_build(ctx, rendered)
    result = run_packer(packer, "validate", str(hcl_path), cwd=hcl_path.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_checkpoints_nothing_changes(tmp_path: Path) -> None:
    plan, ctx, rendered = make_build(tmp_path, load_sample(EVERY_KIND))
    assert [(b.source, b.kind) for b in rendered.provisioners] == expected_kinds(plan)
    assert "-qmp" not in rendered.hcl and not any(rel.endswith(".sh") for rel in rendered.files)
    general = file_of(rendered, ctx.work_dir, rendered.provisioners[-1])
    assert "$BootTask = ''\n" in general  # `if ($BootTask)`: no task to remove


def test_a_resumed_build_skips_the_checkpointed_customizers(tmp_path: Path, packer: str) -> None:
    plan, ctx, rendered = checkpointed(tmp_path, load_sample(EVERY_KIND), start_after=2)
    sources = [(b.source, b.kind) for b in rendered.provisioners]
    assert sources == expected_checkpointed(plan, 2)
    assert sources[0] == ("resume", "powershell")
    assert not {"customizer:prepareFolders", "customizer:WindowsRestart2"} & {s for s, _ in sources}
    hosts = [file_of(rendered, ctx.work_dir, b) for b in rendered.provisioners if b.kind == "shell-local"]
    assert [h.rsplit(" ", 1)[1] for h in hosts] == ["3\n", "4\n", "5\n"]
    resume = file_of(rendered, ctx.work_dir, rendered.provisioners[0])
    assert "$StartAfter = 2\n" in resume and "Get-ScheduledTaskInfo -TaskName $BootTask" in resume
    assert_blocks_match_hcl(rendered)
    hcl_path = write_build(ctx, rendered)
    result = run_packer(packer, "validate", str(hcl_path), cwd=hcl_path.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def refusing_winrm() -> Iterator[tuple[int, list[str], list[int]]]:
    """The fake WinRM server, refusing the first login as a resumed VM does until its boot task
    has set this run's password."""
    commands: list[str] = []
    refuse = [1]
    handler = type("Handler", (FakeWinRM,), {"commands": commands, "auth": [], "refuse": refuse})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], commands, refuse
    finally:
        server.shutdown()
        server.server_close()


def test_packer_runs_a_resumed_checkpointed_build_in_order(tmp_path: Path, refusing_winrm, packer: str) -> None:
    from orchestrator.effects.packer import SourceTracker

    port, commands, refuse = refusing_winrm
    record = tmp_path / "hook-calls"
    hook = ("/bin/sh", "-c", 'printf "%s\\n" "$1" >> "$0"', str(record))
    _, ctx, rendered = checkpointed(tmp_path, hostile_template(with_update=False), start_after=2, hook=hook)
    hcl_path = write_build(ctx, rendered, null_source(rendered.hcl, port))
    result = run_packer(packer, "build", "-color=false", str(hcl_path), cwd=hcl_path.parent, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert refuse == [0]  # Packer was refused once and logged in on a later attempt
    # the host hook ran after each remaining customizer, with its position, on this host
    assert record.read_text().splitlines() == ["3", "4", "5"]
    tracker = SourceTracker(rendered.provisioners)
    started = [s for s in map(tracker.feed, result.stdout.splitlines()) if s]
    assert started == ["resume", "customizer:as-system", "checkpoint:as-system", "customizer:artifact",
                       "checkpoint:artifact", "customizer:restart", "checkpoint:restart", "validation:check",
                       "generalize"]
    # every guest script arrived byte-exact, the resume step's first
    uploaded = list(uploads(commands).values())
    work = Path(ctx.work_dir)
    guest_files = {(work / rel).read_bytes(): "checkpoint" if rel.endswith(".checkpoint.ps1") else rel
                   for rel in rendered.files if rel.endswith(".ps1")}  # the checkpoint steps' are alike
    assert set(guest_files) <= set(uploaded)
    order = [guest_files[data] for data in uploaded if data in guest_files]
    assert order == ["steps/00-resume.ps1", "steps/03-as-system.ps1", "checkpoint", "steps/04-artifact.place.ps1",
                     "checkpoint", "checkpoint", "steps/06-check.ps1", "steps/90-generalize.ps1"]
    assert PASSWORD not in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# The host hook against QEMU's IDE drive
# ---------------------------------------------------------------------------------------------


def wait_for_socket(process: subprocess.Popen, sock: Path, seconds: float = 120) -> None:
    """Until `sock` answers QMP; waits on the process itself (it may exit first)."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    for _ in range(int(seconds / 0.05)):
        if sock.exists():
            monitor = QEMUMonitorProtocol(str(sock))
            monitor.connect()
            monitor.close()
            return
        assert process.poll() is None, "the process exited before its monitor socket appeared"
        try:
            process.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass
    raise AssertionError(f"{sock} never appeared")


def query_block(sock: Path) -> dict[str, str]:
    """QEMU's drive ids -> the file on top of each (inserted) drive."""
    from qemu.qmp.legacy import QEMUMonitorProtocol

    monitor = QEMUMonitorProtocol(str(sock))
    monitor.connect()
    try:
        drives = {d["device"]: d["inserted"]["file"] for d in monitor.cmd("query-block") if "inserted" in d}
    finally:
        monitor.close()
    # after a snapshot QEMU describes the chain as json:{...}; its top is the outer "file"
    return {device: json.loads(name[5:])["file"]["filename"] if name.startswith("json:") else name
            for device, name in drives.items()}


def manifest_for(sock: Path, disk: Path, store: Path, drive: str | None, virtual_size: int = 64 * MIB) -> Path:
    """What pipeline/checkpoints.prepare writes, for two customizers, with the drive of a
    Windows plan."""
    store.mkdir(exist_ok=True)
    manifest = {"qmp_socket": str(sock), "packer_disk": str(disk), "top": str(store / "top.qcow2"),
                "virtual_size": virtual_size, "first": 1, "last": 2, "started_from": None,
                "log": str(store / "checkpoints.jsonl"),
                "layers": {"1": {"key": "k1", "name": "one", "path": str(store / "k1-run.qcow2")},
                           "2": {"key": "k2", "name": "two", "path": str(store / "k2-run.qcow2")}}}
    if drive is not None:
        manifest["drive"] = drive
    path = store / "checkpoints.json"
    path.write_text(json.dumps(manifest))
    return path


def hook(manifest: Path, position: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator.effects.checkpoint_hook", str(manifest), str(position)],
                          check=False, capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def paused_ide_qemu(folder: Path) -> Iterator[tuple[Path, Path, Path]]:
    """A real QEMU, paused before any guest code runs, with its disk (an overlay of a base
    image) passed as Packer 1.6.6 passes it for disk_interface "ide" (seen in its log)."""
    base, disk, sock = folder / "base.qcow2", folder / "packer-output" / "disk.qcow2", folder / "q.sock"
    disk.parent.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(disk), "64M"],
                   check=True)
    qemu = subprocess.Popen(["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-S", "-display", "none",
                             "-nodefaults", "-drive", f"file={disk},if=ide,cache=writeback,discard=ignore,format=qcow2",
                             "-qmp", f"unix:{sock},server=on,wait=off"])
    try:
        wait_for_socket(qemu, sock)
        yield base, disk, sock
    finally:
        qemu.kill()
        qemu.wait()


def test_the_hook_freezes_the_ide_drive_the_manifest_names(tmp_path: Path) -> None:
    with paused_ide_qemu(tmp_path / "ide") as (_, disk, sock):
        assert query_block(sock)[CHECKPOINT_DRIVE] == str(disk)
        store = tmp_path / "store"
        manifest = manifest_for(sock, disk, store, CHECKPOINT_DRIVE)
        for position in (1, 2):
            done = hook(manifest, position)
            assert done.returncode == 0, done.stdout + done.stderr
        assert query_block(sock)[CHECKPOINT_DRIVE] == str(store / "top.qcow2")
    chain = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "--backing-chain",
                                       str(store / "top.qcow2")], capture_output=True, text=True, check=True).stdout)
    assert [Path(layer["filename"]).name for layer in chain] == ["top.qcow2", "k2-run.qcow2", "k1-run.qcow2",
                                                                 "base.qcow2"]


def test_a_manifest_without_the_drive_means_virtio0(tmp_path: Path) -> None:
    # Linux plans' manifests name no drive: on this IDE VM the hook fails, and says which drive
    with paused_ide_qemu(tmp_path / "ide") as (_, disk, sock):
        wrong = hook(manifest_for(sock, disk, tmp_path / "store", None), 1)
        assert wrong.returncode == 1 and "virtio0" in wrong.stderr, wrong.stderr
        assert query_block(sock)[CHECKPOINT_DRIVE] == str(disk)  # nothing frozen


@pytest.mark.integration
def test_packers_qemu_names_the_windows_disk_as_the_hook_expects(tmp_path: Path, packer: str) -> None:
    """The rendered Windows build under the real Packer and QEMU (a blank disk: no guest boots,
    Packer waits for WinRM): QEMU's drive id of the build disk is CHECKPOINT_DRIVE, and the
    rendered host step freezes it; then the build is interrupted."""
    store = tmp_path / "store"
    hook_argv = (sys.executable, "-m", "orchestrator.effects.checkpoint_hook", str(store / "checkpoints.json"))
    data = hostile_template(with_update=False)
    data["properties"]["customize"] = [{"type": "PowerShell", "name": n, "inline": ["exit 0"]} for n in ("one", "two")]
    del data["properties"]["validate"]
    plan, ctx, rendered = checkpointed(tmp_path, data, hook=hook_argv)
    base = tmp_path / "images" / "windows.qcow2"  # make_build's source path: a blank disk
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
    hcl, count = re.subn(r"(?m)^(  memory +=) \d+$", r"\1 256", rendered.hcl)  # no guest to run
    assert count == 1
    hcl_path = write_build(ctx, rendered, hcl)
    sock, disk = tmp_path / "qmp.sock", Path(ctx.output_dir) / "disk.qcow2"
    manifest_for(sock, disk, store, CHECKPOINT_DRIVE, plan.disk_size_mib * MIB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKR_VAR_")}
    env.update({"CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1", "TMPDIR": str(tmp_path),
                "PACKER_CACHE_DIR": str(tmp_path / ".packer-cache"), "PKR_VAR_winrm_password": PASSWORD})
    build = subprocess.Popen([packer, "build", "-color=false", str(hcl_path)], cwd=hcl_path.parent, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for_socket(build, sock)
        assert query_block(sock)[CHECKPOINT_DRIVE] == str(disk)
        host = Path(ctx.work_dir) / "steps/01-one.checkpoint-host.sh"
        done = subprocess.run(["/bin/sh", str(host)], check=False, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "orchestrator-checkpoint: step 1 (one) frozen" in done.stdout
        assert query_block(sock)[CHECKPOINT_DRIVE] == str(store / "k2-run.qcow2.part")
    finally:
        os.killpg(build.pid, signal.SIGINT)  # Packer cancels: it stops its QEMU and removes its output
        try:
            output, _ = build.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(build.pid, signal.SIGKILL)
            output, _ = build.communicate()
    assert not disk.exists() and (store / "k1-run.qcow2").is_file(), output  # the checkpoint outlives Packer
    chain = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "--backing-chain",
                                       str(store / "k2-run.qcow2.part")], capture_output=True, text=True,
                                      check=True).stdout)
    assert [Path(layer["filename"]).name for layer in chain] == ["k2-run.qcow2.part", "k1-run.qcow2",
                                                                 "windows.qcow2"]
