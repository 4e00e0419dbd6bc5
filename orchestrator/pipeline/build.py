"""Build phase: render the HCL into the run directory, run Packer, turn its outcome into a
disk or a clear error. `orchestrate render -o` writes its files through `write_rendered` too."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.config import Config
from orchestrator.core.plan import BuildPlan
from orchestrator.core.render import RenderContext, RenderedBuild, render_linux
from orchestrator.effects.files import write_atomic
from orchestrator.effects.packer import run_packer
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.sshkeys import make_key_pair
from orchestrator.errors import BuildFailed, BuildTimeout, Canceled, CustomizerFailed

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
    kept: bool = False

    def discard_key(self) -> None:
        """The run's private key opens the build VM only; it goes when the run ends (unless the
        failed VM's disk is kept for inspection, errorHandling abort)."""
        if not self.kept:
            self.key.unlink(missing_ok=True)


def render_build(plan: BuildPlan, work: Path, run_id: str, accelerator: str, downloads: dict[str, str],
                 vnc: bool, console_log: Path | None = None) -> tuple[RenderedBuild, BuildVm]:
    key_path, public_key = make_key_pair(work / KEY_NAME, f"orchestrator-{run_id}")
    ctx = RenderContext(work_dir=str(work), output_dir=str(work / "packer-output"),
                        ssh_private_key=str(key_path), ssh_public_key=public_key, accelerator=accelerator,
                        downloads=downloads, vnc=vnc, console_log=str(console_log) if console_log else None)
    rendered = render_linux(plan, ctx)
    write_rendered(work, rendered)
    return rendered, BuildVm(disk=work / "packer-output" / "disk.qcow2", key=key_path)


def run_build(plan: BuildPlan, config: Config, work: Path, rendered: RenderedBuild, vm: BuildVm, log: RunLog,
              deadline: float, cancel: threading.Event, on_source: Callable[[str], None], temp: Path) -> None:
    """`temp` is Packer's TMPDIR (its cd_files staging, plugin sockets, packer_to_cdrom*): the
    run's staging (pipeline/staging.py) owns and removes it, never /tmp itself."""
    def on_line(source: str, line: str) -> None:
        if source == "generalize" and "orchestrator-generalize: running" in line:
            log.write("orchestrator", "generalize: " + line.split("orchestrator-generalize: ", 1)[1])

    result = run_packer(config.packer, work / "build.pkr.hcl", log, rendered.provisioners,
                        deadline=deadline, cancel=cancel, cache_dir=config.home / "cache" / "packer",
                        vm_marker=str(work), on_source=on_source, on_line=on_line,
                        keep_on_error=plan.on_customizer_error == "abort", temp_dir=temp)
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
            hint = f"see the [{result.last_phase}] lines in {log.path}"
            if (plan.on_customizer_error == "abort" and result.last_phase.startswith("customizer:")
                    and vm.disk.is_file()):
                # AIB keeps the build VM on abort; here its disk stays, with the run's SSH key
                vm.kept = True
                log.write("orchestrator", f"errorHandling.onCustomizerError is abort: the build VM's disk "
                          f"is kept at {vm.disk} (SSH key {vm.key}, user packer)")
                hint += f"; the build VM's disk is kept at {vm.disk} for inspection (SSH key {vm.key})"
            raise CustomizerFailed(f"{describe(result.last_phase)} failed: {detail}", hint=hint)
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
