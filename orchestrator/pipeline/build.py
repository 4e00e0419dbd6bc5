"""Build phase: render the HCL into the run directory, run Packer, turn its outcome into a
disk or a clear error. `orchestrate render -o` writes its files through `write_rendered` too."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestrator.config import Config
from orchestrator.core.checkpoint_steps import CheckpointPlan
from orchestrator.core.plan import BuildPlan
from orchestrator.core.render import VALIDATION_STATUS, RenderContext, RenderedBuild, render_linux
from orchestrator.effects.files import write_atomic
from orchestrator.effects.packer import run_packer
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.sshkeys import make_key_pair
from orchestrator.errors import BuildFailed, BuildTimeout, Canceled, CustomizerFailed, ValidationFailed

KEY_NAME = "id_ed25519"


def write_rendered(work: Path, rendered: RenderedBuild, secrets: dict[str, str] | None = None) -> Path:
    """Writes the HCL and every file it references, owner-only (step scripts may carry secure
    parameter values; Packer reads them as this user and uploads them with their own mode)."""
    for rel, content in {**rendered.files, **(secrets or {})}.items():
        write_atomic(work / rel, content)
    hcl = work / "build.pkr.hcl"
    write_atomic(hcl, rendered.hcl)
    return hcl


@dataclass
class BuildVm:
    """What the build phase left: the disk, and whether the failed VM's disk and key are kept."""

    disk: Path
    key: Path
    public_key: str = ""
    machine_id: str = ""  # the build VM's, as generalize saw it (the deploy proof wants another)
    kept: bool = False
    last_phase: str = "boot"  # where Packer was when it ended (a warm start that fails in boot resumes cold)
    # with checkpoints: errorHandling abort keeps the layer the VM was writing (pipeline/checkpoints)
    keep_current_disk: Callable[[], Path] | None = None
    # continueDistributeOnFailure: the validations that failed (name, exit status); the build
    # went on to generalize, and the run ends Failed after distributing
    validation_failures: list[tuple[str, int]] = field(default_factory=list)

    def discard_key(self) -> None:
        """The run's private key opens the build VM only; it goes when the run ends (unless the
        failed VM's disk is kept for inspection, errorHandling abort)."""
        if not self.kept:
            self.key.unlink(missing_ok=True)


def render_build(plan: BuildPlan, work: Path, run_id: str, accelerator: str, downloads: dict[str, str],
                 vnc: bool, console_log: Path | None = None, checkpoints: CheckpointPlan | None = None,
                 saved_key: tuple[Path, str] | None = None) -> tuple[RenderedBuild, BuildVm]:
    """`saved_key`: a warm start's key (the restored guest knows only the one saved with its
    state), copied into the staging; else a new key pair for this run."""
    if saved_key is not None:
        key_path, public_key = work / KEY_NAME, saved_key[1]
        key_path.unlink(missing_ok=True)
        write_atomic(key_path, saved_key[0].read_text(), mode=0o600)
    else:
        key_path, public_key = make_key_pair(work / KEY_NAME, f"orchestrator-{run_id}")
    ctx = RenderContext(work_dir=str(work), output_dir=str(work / "packer-output"),
                        ssh_private_key=str(key_path), ssh_public_key=public_key, accelerator=accelerator,
                        downloads=downloads, vnc=vnc, console_log=str(console_log) if console_log else None,
                        checkpoints=checkpoints)
    rendered = render_linux(plan, ctx)
    write_rendered(work, rendered)
    return rendered, BuildVm(disk=work / "packer-output" / "disk.qcow2", key=key_path, public_key=public_key)


def run_build(plan: BuildPlan, config: Config, work: Path, rendered: RenderedBuild, vm: BuildVm, log: RunLog,
              deadline: float, cancel: threading.Event, on_source: Callable[[str], None], temp: Path) -> None:
    """`temp` is Packer's TMPDIR (its cd_files staging, plugin sockets, packer_to_cdrom*): the
    run's staging (pipeline/staging.py) owns and removes it, never /tmp itself."""
    def on_line(source: str, line: str) -> None:
        if source == "generalize" and "orchestrator-generalize: running" in line:
            log.write("orchestrator", "generalize: " + line.split("orchestrator-generalize: ", 1)[1])
        elif source == "generalize" and "orchestrator-generalize: build machine-id " in line:
            vm.machine_id = line.split("orchestrator-generalize: build machine-id ", 1)[1].strip()
        elif source.startswith("validation:") and VALIDATION_STATUS in line:
            status = line.split(VALIDATION_STATUS, 1)[1].strip()
            if status != "0":
                vm.validation_failures.append((source.split(":", 1)[1], int(status) if status.isdigit() else -1))
                log.write("orchestrator", f"validation {source.split(':', 1)[1]!r} failed (exit {status}); "
                          "continueDistributeOnFailure: the build goes on, the run will end Failed")

    result = run_packer(config.packer, work / "build.pkr.hcl", log, rendered.provisioners,
                        deadline=deadline, cancel=cancel, cache_dir=config.home / "cache" / "packer",
                        vm_marker=str(work), on_source=on_source, on_line=on_line,
                        keep_on_error="abort" in (plan.on_customizer_error, plan.on_validation_error),
                        temp_dir=temp, nice=config.build_nice)
    vm.last_phase = result.last_phase
    if result.timed_out:
        raise BuildTimeout(
            f"the build timed out after buildTimeoutInMinutes ({plan.timeout_minutes} min) "
            f"during {describe(result.last_phase)}: context deadline exceeded",
            hint="raise buildTimeoutInMinutes (at most 960), or see customization.log for the slow step")
    if result.canceled:
        raise Canceled(f"the build was canceled during {describe(result.last_phase)}")
    if result.exit_code != 0:
        detail = "; ".join(result.errors[-2:]) or f"packer exited with {result.exit_code}"
        if result.last_phase.startswith(("customizer:", "validation:")):
            validation = result.last_phase.startswith("validation:")
            hint = f"see the [{result.last_phase}] lines in {log.path}"
            policy, setting = ((plan.on_validation_error, "onValidationError") if validation
                               else (plan.on_customizer_error, "onCustomizerError"))
            if policy == "abort" and vm.keep_current_disk is not None:
                vm.disk = vm.keep_current_disk()
            if policy == "abort" and not vm.disk.is_file():
                vm.disk = work / "packer-output" / "disk.qcow2"  # failed before its first checkpoint
            if policy == "abort" and vm.disk.is_file():
                # AIB keeps the build VM on abort; here its disk stays, with the run's SSH key
                vm.kept = True
                log.write("orchestrator", f"errorHandling.{setting} is abort: the build VM's disk "
                          f"is kept at {vm.disk} (SSH key {vm.key}, user packer)")
                hint += f"; the build VM's disk is kept at {vm.disk} for inspection (SSH key {vm.key})"
            error = ValidationFailed if validation else CustomizerFailed
            raise error(f"{describe(result.last_phase)} failed: {detail}", hint=hint)
        raise BuildFailed(f"the build failed during {describe(result.last_phase)}: {detail}",
                          hint=f"see {log.path}")
    if not vm.disk.is_file():
        raise BuildFailed(f"Packer finished but left no disk at {vm.disk}", hint=f"see {log.path}")


def describe(phase: str) -> str:
    if phase == "boot":
        return "boot of the build VM (waiting for SSH)"
    if ":" in phase:
        kind, name = phase.split(":", 1)
        return f"{kind} {name!r}"
    return phase
