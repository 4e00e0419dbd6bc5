"""Error paths say what, where and what to do, with the right exit code and JSON path; settings
the build does not implement are refused, never ignored."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.core.buildable import build_problems
from orchestrator.core.plan import BuildPlan, ResolvedSource, make_plan
from orchestrator.core.render import VALIDATION_STATUS, RenderContext, render_linux
from orchestrator.core.template import load_template, read_template
from orchestrator.errors import ExitCode
from tests.helpers import dumps, linux_template

SHA = "ab" * 32
SUB = "/subscriptions/S/resourceGroups/RG/providers/"


def orchestrate(*args: str, home: Path, cwd: Path | None = None, env: dict | None = None):
    full_env = dict(os.environ, ORCHESTRATOR_HOME=str(home), **(env or {}))
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=120)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert "internal error" not in result.stderr


def _source() -> ResolvedSource:
    return ResolvedSource("PlatformImage test", "/nonexistent/base.qcow2", "qcow2", 3 * 1024**3, "0" * 64, "1.0.0")


# --- the JSON path of a validation's download ---------------------------------------------------

def test_validation_download_path_is_its_own_list_position():
    data = linux_template(
        customize=[{"type": "Shell", "name": "a", "inline": ["true"]},
                   {"type": "Shell", "name": "b", "scriptUri": "https://example.com/b.sh", "sha256Checksum": SHA}],
        validate={"inVMValidations": [
            {"type": "Shell", "name": "check", "scriptUri": "https://example.com/check.sh", "sha256Checksum": SHA},
            {"type": "File", "name": "fetch", "sourceUri": "https://example.com/f", "destination": "/tmp/f"}]})
    plan = make_plan(load_template(data), _source(), "t")
    assert [(d.customizer, d.json_path) for d in plan.downloads] == [
        ("b", "$.properties.customize[1].scriptUri"),
        ("check", "$.properties.validate.inVMValidations[0].scriptUri"),
        ("fetch", "$.properties.validate.inVMValidations[1].sourceUri"),
    ]
    assert [s.index for s in plan.steps] == [1, 2, 3, 4]  # run order still counts every step


def test_plan_has_no_unused_fields():
    names = set(BuildPlan.__dataclass_fields__)
    assert not names & {"notes", "validation_continue_on_failure"}


# --- render -o into a directory Packer would misread ----------------------------------------------

def test_render_into_a_directory_with_go_template_marks_is_a_usage_error(tmp_path, home):
    template = tmp_path / "t.json"
    template.write_text(dumps(linux_template()))
    odd = tmp_path / "out{{x}}"
    result = orchestrate("render", "-o", str(odd), str(template), home=home)
    assert result.returncode == ExitCode.INVALID_INPUT, result.stderr
    no_traceback(result)
    assert f"the directory {odd} contains '{{{{' or '}}}}'" in result.stderr
    assert "hint: use a directory whose path holds no '{{' or '}}'" in result.stderr
    assert not odd.exists()  # nothing half written: no key pair left in a directory it created


# --- validation settings -----------------------------------------------------------------------

VALIDATIONS = [{"type": "Shell", "name": "v", "inline": ["true"]},
               {"type": "File", "name": "f", "sourceUri": "https://example.com/a.txt", "destination": "/tmp/a.txt"}]


@pytest.mark.parametrize("properties", [
    {"validate": {"continueDistributeOnFailure": True, "inVMValidations": VALIDATIONS}},
    {"validate": {"inVMValidations": VALIDATIONS}, "errorHandling": {"onValidationError": "abort"}},
    {"validate": {"sourceValidationOnly": True, "inVMValidations": VALIDATIONS}, "customize": None},
], ids=["continueDistributeOnFailure", "onValidationError-abort", "sourceValidationOnly"])
def test_validation_settings_build(properties):
    assert build_problems(load_template(linux_template(**properties))) == []


def test_source_validation_only_takes_the_source_as_it_is():
    """Its plan has the validations and no customizers; with customizers it is refused (they
    would never run)."""
    template = load_template(linux_template(validate={"sourceValidationOnly": True, "inVMValidations": VALIDATIONS},
                                            customize=None))
    plan = make_plan(template, ResolvedSource("PlatformImage x", "/x.qcow2", "qcow2", 2**30, "0" * 64), "t")
    assert [(s.phase, s.name) for s in plan.steps] == [("validate", "v"), ("validate", "f")]
    assert plan.source_validation_only
    refused = build_problems(load_template(linux_template(validate={"sourceValidationOnly": True})))
    assert [(p.path, p.rule) for p in refused] == [("$.properties.validate.sourceValidationOnly",
                                                   "source-validation-with-customizers")]


def test_continue_distribute_validations_report_their_status_to_the_engine():
    """Under continueDistributeOnFailure a validation's exit status is printed and Packer sees
    success (the build must go on to generalize); otherwise a failing one fails Packer."""
    source = ResolvedSource("PlatformImage x", "/x.qcow2", "qcow2", 2**30, "0" * 64)
    ctx = RenderContext(work_dir="/w", output_dir="/w/o", ssh_private_key="/w/k", ssh_public_key="ssh-ed25519 AAAA",
                        accelerator="tcg", downloads={"https://example.com/a.txt": "/c/a.txt"}, vnc=False)
    for flag in (True, False):
        template = load_template(linux_template(validate={"continueDistributeOnFailure": flag,
                                                          "inVMValidations": VALIDATIONS}))
        hcl = render_linux(make_plan(template, source, "t"), ctx).hcl
        assert (VALIDATION_STATUS in hcl) is flag


def test_refused_validation_settings_still_validate_and_plan_but_do_not_build(tmp_path, home):
    template = tmp_path / "t.json"
    template.write_text(dumps(linux_template(validate={"sourceValidationOnly": True})))
    for verb in ("validate", "plan"):
        assert orchestrate(verb, str(template), home=home).returncode == 0
    result = orchestrate("build", str(template), home=home)
    assert result.returncode == ExitCode.INVALID_INPUT
    no_traceback(result)
    assert "$.properties.validate.sourceValidationOnly: sourceValidationOnly" in result.stderr
    assert "hint: drop customize, or set sourceValidationOnly to false" in result.stderr


# --- resource IDs: one check for every field that holds one -------------------------------------

def _managed_source(value):
    return {"source": {"type": "ManagedImage", "imageId": value}}


def _version_source(value):
    return {"source": {"type": "SharedImageVersion", "imageVersionId": value}}


def _vnet(value):
    return {"vmProfile": {"vmSize": "Standard_B2s", "vnetConfig": {"subnetId": value}}}


def _managed_target(value):
    return {"distribute": [{"type": "ManagedImage", "runOutputName": "m", "imageId": value, "location": "x"}]}


def _gallery_target(value):
    return {"distribute": [{"type": "SharedImage", "runOutputName": "g", "galleryImageId": value,
                            "replicationRegions": ["x"]}]}


RESOURCE_IDS = [
    (_managed_source, "$.properties.source.imageId", f"{SUB}Microsoft.Compute/images/base"),
    (_version_source, "$.properties.source.imageVersionId",
     f"{SUB}Microsoft.Compute/galleries/G/images/D/versions/1.0.0"),
    (_vnet, "$.properties.vmProfile.vnetConfig.subnetId",
     f"{SUB}Microsoft.Network/virtualNetworks/V/subnets/N"),
    (_managed_target, "$.properties.distribute[0].imageId", f"{SUB}Microsoft.Compute/images/out"),
    (_gallery_target, "$.properties.distribute[0].galleryImageId", f"{SUB}Microsoft.Compute/galleries/G/images/D"),
]


@pytest.mark.parametrize("shape, path, good", RESOURCE_IDS, ids=[p.rsplit(".", 1)[1] + str(i)
                                                                for i, (_, p, _) in enumerate(RESOURCE_IDS)])
def test_every_resource_id_field_is_checked_the_same_way(shape, path, good):
    def problems(value):
        found: list = []
        read_template(linux_template(**shape(value)), found)
        return [(p.path, p.rule) for p in found if p.rule == "resource-id"]

    assert problems("not/an/id") == [(path, "resource-id")]
    assert problems(good) == []
    assert problems("<resourceId>") == []  # a placeholder is left to the user


# --- the accelerator probe without QEMU ----------------------------------------------------------

def test_a_missing_qemu_is_a_host_problem_and_nothing_is_cached(tmp_path, monkeypatch):
    from orchestrator.effects import accel
    from orchestrator.errors import EnvironmentProblem

    monkeypatch.setattr(accel.os, "access", lambda path, mode: True)  # as if /dev/kvm opened
    cache = tmp_path / "accelerator.json"
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    missing = str(tmp_path / "no-such-qemu-system-x86_64")
    with pytest.raises(EnvironmentProblem) as raised:
        accel.choose_accelerator("auto", cache, disk, qemu=missing)
    assert raised.value.exit_code == ExitCode.ENVIRONMENT
    assert f"`{missing}` is not installed" in raised.value.message
    assert "scripts/setup-host.sh" in (raised.value.hint or "")
    assert not cache.exists()


# --- image import of files that are no (readable) disk image ----------------------------------

def _qcow2(path: Path, size: str = "64M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def _corrupt_l1(path: Path) -> Path:
    """A qcow2 that `qemu-img info` still reads, with an L1 entry pointing off cluster boundaries."""
    import struct

    subprocess.run(["qemu-io", "-c", "write -P 0x41 0 1M", str(path)], check=True, capture_output=True)
    with open(path, "r+b") as handle:
        l1_offset = struct.unpack(">Q", handle.read(48)[40:48])[0]
        handle.seek(l1_offset)
        entry = struct.unpack(">Q", handle.read(8))[0]
        handle.seek(l1_offset)
        handle.write(struct.pack(">Q", entry + 0x200))
    return path


def _import(home: Path, path: Path):
    return orchestrate("image", "import", str(path), "--publisher", "P", "--offer", "O", "--sku", "S",
                       "--version", "1.0.0", home=home)


def test_importing_a_file_that_is_no_disk_image_is_invalid_input(tmp_path, home):
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n")
    result = _import(home, text)
    assert result.returncode == ExitCode.INVALID_INPUT
    no_traceback(result)
    assert f"{text} is not a disk image: qemu-img reads it as raw, but it has no partition table" in result.stderr
    assert "hint: import a qcow2 or raw disk image" in result.stderr


def test_importing_an_unreadable_qcow2_says_what_qemu_img_said(tmp_path, home):
    broken = tmp_path / "short.qcow2"
    broken.write_bytes(_qcow2(tmp_path / "good.qcow2").read_bytes()[:100])
    result = _import(home, broken)
    assert result.returncode == ExitCode.INVALID_INPUT
    no_traceback(result)
    assert f"{broken} is not a disk image qemu-img can read: Could not open '{broken}': qcow2 header too short" \
        in result.stderr
    assert "hint: import a qcow2 or raw disk image" in result.stderr


def test_importing_a_corrupt_qcow2_is_invalid_input(tmp_path, home):
    corrupt = _corrupt_l1(_qcow2(tmp_path / "corrupt.qcow2"))
    result = _import(home, corrupt)
    assert result.returncode == ExitCode.INVALID_INPUT
    no_traceback(result)
    assert f"{corrupt} is a corrupt qcow2 image: `qemu-img check` says" in result.stderr
    assert "L1 entry corrupted" in result.stderr and "hint:" in result.stderr


def test_good_qcow2_and_partitioned_raw_images_import(tmp_path, home):
    assert _import(home, _qcow2(tmp_path / "good.qcow2")).returncode == 0
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * (2 * 1024 * 1024 - 512))
    result = orchestrate("image", "import", str(raw), "--publisher", "P", "--offer", "O", "--sku", "S",
                         "--version", "2.0.0", home=home)
    assert result.returncode == 0, result.stderr


# --- cancel signals the run's own process, never one that reused its pid -------------------------

OLD_RUNS_TABLE = """CREATE TABLE runs (
    id TEXT PRIMARY KEY, template_name TEXT NOT NULL, template_path TEXT, build_digest TEXT,
    run_state TEXT NOT NULL, run_sub_state TEXT, message TEXT, source TEXT, resolved_version TEXT,
    log_path TEXT, start_time REAL NOT NULL, end_time REAL, pid INTEGER)"""


def test_an_existing_database_gets_the_process_identity_column(tmp_path):
    import sqlite3

    from orchestrator.effects.state import StateStore

    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute(OLD_RUNS_TABLE)
        db.execute("INSERT INTO runs (id, template_name, run_state, start_time, pid) VALUES ('old', 't', "
                   "'Succeeded', 1.0, NULL)")
    store = StateStore(path)
    assert store.run("old")["pid_start_time"] is None and store.run("old")["run_state"] == "Succeeded"
    StateStore(path)  # a second opening finds the column and adds nothing


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def _running(config, pid: int, start: int | None, state: str = "Running") -> str:
    from orchestrator.effects.state import StateStore

    store = StateStore(config.db_path)
    run_id = store.start_run("t", None, lambda rid: config.runs_dir / rid / "customization.log")
    store.update_run(run_id, run_state=state, pid=pid, pid_start_time=start)
    return run_id


def _run_row(config, run_id: str) -> dict:
    from orchestrator.effects.state import StateStore

    return StateStore(config.db_path).run(run_id)


def test_cancel_signals_the_runs_own_process(config, home, sleeper):
    from orchestrator.effects.proc import process_start_time

    run_id = _running(config, sleeper.pid, process_start_time(sleeper.pid))
    result = orchestrate("cancel", run_id, home=home)
    assert result.returncode == 0 and f"cancel requested for {run_id}" in result.stdout
    assert sleeper.wait(timeout=10) == -15
    assert _run_row(config, run_id)["run_state"] == "Canceling"


def test_cancel_never_signals_a_process_that_reused_the_pid(config, home, sleeper):
    from orchestrator.effects.proc import process_start_time

    run_id = _running(config, sleeper.pid, process_start_time(sleeper.pid) - 1)  # the run's process started earlier
    result = orchestrate("cancel", run_id, home=home)
    # the command recovers the dead run first (it is Failed then), and says the cancel came too late
    assert result.returncode == ExitCode.INVALID_INPUT
    assert f"recovered: run {run_id} (t): Failed, the orchestrate process of this run (pid {sleeper.pid}) " \
           "ended without recording a result" in result.stderr
    assert f"run {run_id} has already ended (Failed)" in result.stderr
    assert sleeper.poll() is None
    row = _run_row(config, run_id)
    assert row["run_state"] == "Failed" and "ended without recording a result" in row["message"]
    assert row["pid"] is None


def test_cancel_of_a_canceling_run_whose_process_is_gone_marks_it_canceled(config, home):
    gone = subprocess.Popen(["true"])
    gone.wait()
    run_id = _running(config, gone.pid, 12345, state="Canceling")
    result = orchestrate("cancel", run_id, home=home)
    assert result.returncode == ExitCode.INVALID_INPUT and "has already ended (Canceled)" in result.stderr
    assert _run_row(config, run_id)["run_state"] == "Canceled"


def test_cancel_without_a_recorded_identity_does_not_signal_a_live_pid(config, home, sleeper):
    run_id = _running(config, sleeper.pid, None)
    result = orchestrate("cancel", run_id, home=home)
    assert result.returncode == ExitCode.INVALID_INPUT
    no_traceback(result)
    assert f"did not record which process pid {sleeper.pid} was" in result.stderr and "hint: check `ps" in result.stderr
    assert sleeper.poll() is None
    assert _run_row(config, run_id)["run_state"] == "Running"


# --- render names where a download without sha256 will be -------------------------------------

def test_render_shows_where_downloads_will_be(tmp_path, home):
    data = linux_template(customize=[
        {"type": "Shell", "name": "a", "scriptUri": "https://example.com/x/setup.sh"},
        {"type": "Shell", "name": "b", "scriptUri": "https://example.com/b.sh", "sha256Checksum": SHA.upper()}])
    template = tmp_path / "t.json"
    template.write_text(dumps(data))
    result = orchestrate("render", str(template), home=home)
    assert result.returncode == 0, result.stderr
    cache = home.resolve() / "cache" / "downloads"
    assert f'"{cache}/fetched-at-build-time/01-setup.sh"' in result.stdout
    assert f'"{cache}/sha256/{SHA}"' in result.stdout
    assert "unverified-" not in result.stdout
