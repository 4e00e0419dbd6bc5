"""Deploy proof phase: after generalization and before anything is distributed, the finished
image boots as a fresh VM (a transient libvirt domain on a copy-on-write overlay of the build's
disk, never the disk itself) with a new NoCloud seed, user, key and hostname, and is checked
over SSH (core/proof.py says what is checked and how it is judged). A failed check fails the
run before distribution."""
from __future__ import annotations

import secrets
import shutil
import socket
import time
from pathlib import Path

from orchestrator.config import Config
from orchestrator.core.plan import BuildPlan
from orchestrator.core.proof import (CHECKS, PROOF_USER, CheckResult, ProofResult, ProofSpec, check_command,
                                     domain_xml, seed_files)
from orchestrator.core.render import BUILD_USER
from orchestrator.core.redact import Redactor
from orchestrator.effects.files import write_atomic
from orchestrator.effects.proc import Stop
from orchestrator.effects.proof_vm import ProofDomain, make_overlay, make_seed_iso
from orchestrator.effects.runlog import RunLog
from orchestrator.effects.ssh_probe import NoLogin, run_command, wait_for_login
from orchestrator.effects.sshkeys import make_key_pair
from orchestrator.pipeline.build import BuildVm
from orchestrator.pipeline.distribute_phase import stopped

CHECK_SECONDS = 300.0  # one check at most (cloud-init status --wait waits for its last stage)
# The console says cloud-init is done, yet SSH does not let the user in: this long more, then fail
AFTER_BOOT_GRACE = 30.0
CLOUD_INIT_DONE = "Cloud-init v."  # "Cloud-init v. 22.4 finished at ..." on the serial console


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prove(config: Config, plan: BuildPlan, run_id: str, vm: BuildVm, staging: Path, records: Path, accelerator: str,
          log: RunLog, stop: Stop, redact: Redactor) -> ProofResult:
    """Boots and checks the image; the result says each check's outcome (the caller fails the
    run on a failed one). The overlay, seed and key live in the run's staging, which goes."""
    if plan.os_type == "Windows":  # the WinRM proof; imported here, it imports free_port from this module
        from orchestrator.pipeline.prove_windows import prove_windows

        return prove_windows(config, plan, run_id, vm, staging, records, accelerator, log, stop, redact)
    started = time.monotonic()
    work = staging / "proof"
    work.mkdir(mode=0o700, exist_ok=True)
    overlay = work / "overlay.qcow2"
    make_overlay(vm.disk, overlay)
    key, public_key = make_key_pair(work / "id_ed25519", f"orchestrator-proof-{run_id}")
    emulator = shutil.which(config.qemu_system) or config.qemu_system
    spec = ProofSpec(run_id=run_id, hostname=f"proof-{secrets.token_hex(4)}", public_key=public_key,
                     build_user=BUILD_USER, build_public_key=vm.public_key, build_machine_id=vm.machine_id,
                     accelerator=accelerator, cpus=plan.cpus, memory_mib=plan.memory_mib, disk=str(overlay),
                     seed_iso=str(work / "seed.iso"), console_log=str(work / "console.log"), ssh_port=free_port(),
                     emulator=emulator)
    seed = {}
    for name, text in seed_files(spec).items():
        write_atomic(work / name, text)
        seed[name] = work / name
    make_seed_iso(seed, Path(spec.seed_iso))
    xml = domain_xml(spec)
    write_atomic(work / "domain.xml", xml)
    log.write("proof", f"booting the image as a fresh VM ({spec.domain_name}, {accelerator}, hostname "
              f"{spec.hostname}, user {PROOF_USER}, SSH on 127.0.0.1:{spec.ssh_port})")
    deadline = time.monotonic() + config.proof_timeout_seconds
    checks: list[CheckResult] = []
    boot_seconds: float | None = None
    try:
        with ProofDomain(config.libvirt_uri, xml, spec.domain_name) as domain:
            log.write("proof", f"the proof VM is running ({time.monotonic() - started:.1f} s); waiting for SSH")
            watcher = _BootWatcher(Path(spec.console_log), domain.running)
            try:
                login = wait_for_login(spec.ssh_port, PROOF_USER, key, deadline, stop, watcher.gave_up)
            except NoLogin as exc:
                stopped(stop, "booting the deploy proof VM")
                checks.append(CheckResult("boot-and-login", False, str(exc), time.monotonic() - started))
            else:
                boot_seconds = login.seconds
                checks.append(CheckResult("boot-and-login", True, f"{PROOF_USER} logged in with the seed's key "
                                          f"after {login.seconds:.1f} s; host key {login.host_key}", login.seconds))
                log.write("proof", checks[-1].detail)
                with login.client:
                    for check in CHECKS:
                        checks.append(_run_check(login.client, check, spec, stop, log))
                        stopped(stop, f"the deploy proof's check {check.name!r}")
    finally:
        console = Path(spec.console_log)
        if console.is_file():  # kept with the run's records, redacted, for a failed proof's reader
            write_atomic(records / "proof-console.log", redact(console.read_text(errors="replace")))
    return proof_result(checks, boot_seconds, started, log)


def proof_result(checks: list[CheckResult], boot_seconds: float | None, started: float, log: RunLog) -> ProofResult:
    """The proof's result, its failures and its summary in the log (Linux and Windows alike)."""
    result = ProofResult(tuple(checks), boot_seconds, time.monotonic() - started)
    for failure in result.failures:
        log.write("proof", f"FAILED {failure.name}: {failure.detail}")
    log.write("proof", f"deploy proof {'passed' if result.passed else 'failed'}: "
              f"{sum(c.passed for c in checks)}/{len(checks)} checks in {result.total_seconds:.1f} s")
    return result


def _run_check(client, check, spec: ProofSpec, stop: Stop, log: RunLog) -> CheckResult:
    began = time.monotonic()
    status, output = run_command(client, check_command(check, spec), CHECK_SECONDS, stop)
    passed, detail = check.judge(status, output, spec)
    result = CheckResult(check.name, passed, detail, time.monotonic() - began)
    log.write("proof", f"{'ok' if passed else 'FAILED'} {check.name} ({check.what}): {detail}")
    return result


class _BootWatcher:
    """Reasons to stop waiting for SSH before the time limit: the VM stopped, or its console
    says cloud-init finished and SSH still does not let the user in a while later."""

    def __init__(self, console: Path, running) -> None:
        self.console, self.running = console, running
        self.booted_at: float | None = None

    def gave_up(self) -> str | None:
        if not self.running():
            return "the proof VM stopped before SSH let the user in (see proof-console.log)"
        if self.booted_at is None:
            try:
                text = self.console.read_text(errors="replace")
            except OSError:
                return None
            if CLOUD_INIT_DONE in text and "finished at" in text:
                self.booted_at = time.monotonic()
            return None
        if time.monotonic() - self.booted_at > AFTER_BOOT_GRACE:
            return (f"the VM finished booting (cloud-init done on its console) but SSH did not let "
                    f"{PROOF_USER} in within {AFTER_BOOT_GRACE:.0f} s: is sshd enabled in the image?")
        return None
