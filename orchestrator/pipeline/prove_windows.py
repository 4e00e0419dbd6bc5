"""Deploy proof phase of a Windows image, pipeline/prove.py's shape: after generalization and
before anything is distributed, the image boots as a fresh VM (a transient libvirt domain on a
copy-on-write overlay of the build's disk, never the disk itself) with an answer CD
(core/proof_windows.py: a new computer name, a new local administrator with a random password,
WinRM on) and is checked over WinRM with pywinrm (effects/winrm_probe.py). A failed check
fails the run before distribution.

It has never run: no Windows guest runs on this project's hosts (no Windows image, TCG only),
and `orchestrate build` refuses Windows templates (core/buildable.py). Its pieces are tested
(tests/test_proof_windows.py: the answer file, the domain XML, every judge, the probe against
a WS-Management server on 127.0.0.1, and this phase up to a VM that never answers WinRM)."""
from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path

from orchestrator.config import Config
from orchestrator.core.plan import BuildPlan
from orchestrator.core.proof import CheckResult, ProofResult
from orchestrator.core.proof_windows import (
    ANSWER_FILE,
    ANSWER_LABEL,
    WINDOWS_CHECKS,
    WindowsCheck,
    WindowsProofSpec,
    check_spec,
    describe,
    unattend_xml,
    windows_check_command,
    windows_domain_xml,
)
from orchestrator.core.redact import MASK, Redactor
from orchestrator.core.render import BUILD_USER
from orchestrator.effects.files import write_atomic
from orchestrator.effects.proc import Stop
from orchestrator.effects.proof_vm import ProofDomain, make_overlay, make_seed_iso
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.winrm_probe import (
    NoWinrmLogin,
    WinrmLogin,
    run_powershell,
    wait_for_login,
)
from orchestrator.pipeline.build import BuildVm
from orchestrator.pipeline.distribute_phase import stopped
from orchestrator.pipeline.prove import free_port, proof_result

CHECK_SECONDS = 120.0  # one check at most
# Windows' first boot after Sysprep (specialize, a restart, OOBE, the first logon) takes far
# longer than cloud-init: under TCG, tens of minutes. The proof waits at least this long,
# whatever [proof] timeout_seconds says for Linux.
MIN_TIMEOUT_SECONDS = 2400.0


def new_password() -> str:
    """render_windows' password shape (check_password): letters of both cases and a digit."""
    return "Aa1-" + secrets.token_urlsafe(24)


def prove_windows(config: Config, plan: BuildPlan, run_id: str, vm: BuildVm, staging: Path, records: Path,
                  accelerator: str, log: RunLog, stop: Stop, redact: Redactor,
                  timeout: float | None = None) -> ProofResult:
    """Boots and checks the image; the result says each check's outcome (the caller fails the
    run on a failed one). The overlay and the answer CD live in the run's staging, which goes.
    `timeout`: boot and checks together (None: [proof] timeout_seconds, at least
    MIN_TIMEOUT_SECONDS)."""
    started = time.monotonic()
    work = staging / "proof"
    work.mkdir(mode=0o700, exist_ok=True)
    overlay = work / "overlay.qcow2"
    make_overlay(vm.disk, overlay)
    password = new_password()
    spec = WindowsProofSpec(run_id=run_id, computer_name=f"proof-{secrets.token_hex(4)}", admin_password=password,
                            build_user=BUILD_USER, accelerator=accelerator, cpus=plan.cpus,
                            memory_mib=plan.memory_mib, disk=str(overlay), answer_iso=str(work / "answer.iso"),
                            console_log=str(work / "console.log"), winrm_port=free_port(),
                            emulator=shutil.which(config.qemu_system) or config.qemu_system)
    check_spec(spec)

    def mask(text: str) -> str:  # the run's redactor knows nothing of this password
        return redact(text.replace(password, MASK))

    answer = work / ANSWER_FILE
    write_atomic(answer, unattend_xml(spec), mode=0o600)
    make_seed_iso({ANSWER_FILE: answer}, Path(spec.answer_iso), ANSWER_LABEL, "answer CD")
    xml = windows_domain_xml(spec)
    write_atomic(work / "domain.xml", xml)
    log.write("proof", mask(describe(spec)))
    budget = timeout if timeout is not None else max(config.proof_timeout_seconds, MIN_TIMEOUT_SECONDS)
    deadline = time.monotonic() + budget
    checks: list[CheckResult] = []
    boot_seconds: float | None = None
    try:
        with ProofDomain(config.libvirt_uri, xml, spec.domain_name) as domain:
            def gave_up() -> str | None:
                return None if domain.running() else "the proof VM stopped before WinRM let the administrator in"
            try:
                login = wait_for_login(spec.winrm_port, spec.admin_user, password, deadline, stop, gave_up)
            except NoWinrmLogin as exc:
                stopped(stop, "booting the deploy proof VM")
                checks.append(CheckResult("boot-and-login", False, mask(str(exc)), time.monotonic() - started))
            else:
                boot_seconds = login.seconds
                checks.append(CheckResult("boot-and-login", True, mask(
                    f"{login.identity} logged in over WinRM with the answer file's password after "
                    f"{login.seconds:.1f} s"), login.seconds))
                log.write("proof", checks[-1].detail)
                with login:
                    for check in WINDOWS_CHECKS:
                        checks.append(_run_check(login, check, spec, stop, log, mask))
                        stopped(stop, f"the deploy proof's check {check.name!r}")
    finally:
        console = Path(spec.console_log)
        if console.is_file():  # kept with the run's records, redacted, for a failed proof's reader
            write_atomic(records / "proof-console.log", mask(console.read_text(errors="replace")))
        answer.unlink(missing_ok=True)  # the password's only copies on disk: this and the CD
        Path(spec.answer_iso).unlink(missing_ok=True)
    return proof_result(checks, boot_seconds, started, log)


def _run_check(login: WinrmLogin, check: WindowsCheck, spec: WindowsProofSpec, stop: Stop, log: RunLog,
               mask) -> CheckResult:
    began = time.monotonic()
    status, output = run_powershell(login, windows_check_command(check, spec), CHECK_SECONDS, stop)
    passed, detail = check.judge(status, output, spec)
    result = CheckResult(check.name, passed, mask(detail), time.monotonic() - began)
    log.write("proof", f"{'ok' if passed else 'FAILED'} {check.name} ({check.what}): {result.detail}")
    return result
