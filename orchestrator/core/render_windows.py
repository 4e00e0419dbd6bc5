"""Renders a Windows build plan into Packer HCL2 plus the PowerShell files it references.

Pure, like `render_linux`: returns text and writes nothing. User text (inline commands, File
destinations, WindowsUpdate criteria and filters) goes into .ps1 files, which Packer uploads
byte-exact without HCL or Go-template interpolation. Only WindowsRestart's restartCommand and
restartCheckCommand must be HCL strings (the windows-restart provisioner has no script form):
they are HCL-escaped (`hcl_string`) and Go-template-escaped (`go_template_literal`), and
tests/test_render_windows.py proves with a real Packer run that they reach WinRM byte-exact.

What the Windows base image must provide (there is no Azure agent on-prem to prepare it):
WinRM on HTTP 5985 (Basic auth, unencrypted allowed: the port is forwarded from 127.0.0.1
only; LocalAccountTokenFilterPolicy = 1), inbox IDE/e1000 drivers suffice, and a bootstrap
(unattend FirstLogonCommands, SetupComplete.cmd, a startup task or cloudbase-init) that, when
a CD labelled SEED_LABEL carries SEED_PASSWORD_NAME, creates or resets the local administrator
`packer` with that file's content as its password.

The build account's password is per run and this module generates nothing random. The HCL
declares `variable "winrm_password" { sensitive = true }` without a default, so `packer
validate` and `packer build` need it (`PKR_VAR_winrm_password` in the environment, or
`-var`); an unset variable fails at once with "Unset variable", where an empty default would
only fail after `winrm_timeout` (30 min) of refused logins. The caller generates the password
(`check_password`: e.g. "Aa1-" + secrets.token_urlsafe(24)), writes
`windows_seed_files(password)` next to the rendered files (mode 0600) and adds
`packer_environment(password)` to Packer's environment. Packer masks a sensitive variable in
its output.

Checkpoints (`ctx.checkpoints`, as in `render_linux`): after each customizer a PowerShell step
flushes the registry hives and the volumes (Write-VolumeCache) and a shell-local step runs the
host hook, which freezes the disk's top layer over QEMU's monitor. The disk is IDE here, so the
hook's manifest must name CHECKPOINT_DRIVE, not virtio0. Nothing needs saving for a resumed build
(Linux saves /tmp): C:\\ keeps its files at a boot, the override C:\\DeprovisioningScript.ps1 too,
and a File step's upload (C:/Windows/Temp) is moved to its destination in its own step. What a
resumed build does need is its login: its VM boots an earlier run's disk, where `packer` still has
the earlier run's password, and the base image's bootstrap (first boot only, as a rule) does not
run again. No HCL can fix that before Packer logs in, so the first checkpoint step installs a
startup task (SYSTEM) that sets the password from the seed CD at every boot; Packer's WinRM login
fails (401) and retries until it has. The earlier run's password no longer opens the VM. The
resumed build's first step (`resume`) reports it; the generalize step removes the task.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.checkpoint_steps import HOOK_MARK, host_checkpoint_script
from orchestrator.core.hcl import hcl_value
from orchestrator.core.plan import BuildPlan, Step
from orchestrator.core.render import (
    BUILD_USER,
    ProvisionerBlock,
    RenderContext,
    RenderedBuild,
    _environment,
    _host_path,
    _safe_slug,
    packaged_text,
)

WINRM_GUEST_PORT = 5985
PASSWORD_VARIABLE = "winrm_password"
SEED_LABEL = "ORCHESTRATOR"
SEED_PASSWORD_NAME = "winrm-password"
SEED_PASSWORD_FILE = f"seed/{SEED_PASSWORD_NAME}"  # relative to work_dir; the caller writes it
UPLOAD_PREFIX = "C:/Windows/Temp/orchestrator-upload-"
UPDATE_ROUNDS = 5
UPDATE_REBOOT_EXIT_CODE = 101
UPDATE_REBOOT_MARKER = "C:\\Windows\\Temp\\orchestrator-windows-update.reboot"
FINALIZE_SCRIPT = "C:\\Windows\\Temp\\orchestrator-finalize.cmd"
SHUTDOWN_COMMAND = 'shutdown /s /t 10 /f /d p:4:1 /c "Packer Shutdown"'
STEP_MARKER = "Provisioning with {kind} [orchestrator step {index:02d}]"
# Inbox drivers only: a Windows image without virtio drivers still boots. Packer 1.6.6 passes
# `-drive file=...,if=ide`, the first disk: QEMU names that drive ide0-hd0 (bus 0, unit 0), the
# id the checkpoint hook's blockdev-snapshot addresses (the manifest's "drive").
DISK_INTERFACE = "ide"
CHECKPOINT_DRIVE = "ide0-hd0"
CHECKPOINT_BOOT_TASK = "orchestrator-checkpoint-boot"
CHECKPOINT_BOOT_FOLDER = "C:\\ProgramData\\orchestrator-checkpoint"
CHECKPOINT_BOOT_SCRIPT = CHECKPOINT_BOOT_FOLDER + "\\boot.ps1"
CHECKPOINT_BOOT_LOG = CHECKPOINT_BOOT_FOLDER + "\\boot.log"
_PASSWORD_RE = re.compile(r"[A-Za-z0-9_-]{16,127}")
UTF8_BOM = "\ufeff"  # Windows PowerShell 5.1 reads a .ps1 without BOM in the ANSI code page

# A windows-restart that restarts only when the update round before it asked for one: a round
# with nothing pending then costs a few seconds, not a reboot. Runs in cmd.exe over WinRM.
UPDATE_RESTART_COMMAND = (
    f"if exist {UPDATE_REBOOT_MARKER} "
    f"(del /f /q {UPDATE_REBOOT_MARKER} & shutdown /r /f /t 0 /c \"orchestrator: restart for Windows Update\") "
    "else (echo orchestrator-windows-update: no restart needed)"
)
UPDATE_RESTART_TIMEOUT = "30m"  # installing updates during a restart takes a while


@dataclass(frozen=True)
class HclExpression:
    """An attribute value written as an HCL expression (e.g. a variable), not as a string."""

    text: str


def hcl_attr(value: object) -> str:
    if isinstance(value, HclExpression):
        return value.text
    return hcl_value(value)


PASSWORD = HclExpression(f"var.{PASSWORD_VARIABLE}")


def go_template_literal(text: str) -> str:
    """Text that Packer's Go-template pass (one pass, as for windows-restart) turns back into
    `text`: every `{{` becomes the action `{{"{{"}}`, which prints `{{`. `}}` outside an
    action is plain text in Go templates and needs nothing."""
    return text.replace("{{", '{{"{{"}}')


def powershell_literal(text: str) -> str:
    """A PowerShell single-quoted string whose value is exactly `text` (no expansion). PowerShell
    also takes the typographic quotes U+2018..U+201B as single quotes: each is doubled too."""
    out = []
    for ch in text:
        out.append(ch)
        if ch in "'\u2018\u2019\u201a\u201b":
            out.append(ch)
    return "'" + "".join(out) + "'"


def powershell_array(items: tuple[str, ...] | list[str]) -> str:
    return "@(" + ", ".join(powershell_literal(i) for i in items) + ")"


def windows_seed_files(password: str) -> dict[str, str]:
    """The seed CD's files for this password (relative to work_dir; write them with mode 0600)."""
    check_password(password)
    return {SEED_PASSWORD_FILE: password}


def packer_environment(password: str) -> dict[str, str]:
    """Environment for `packer validate`/`packer build` (not argv: other users can read that)."""
    check_password(password)
    return {f"PKR_VAR_{PASSWORD_VARIABLE}": password}


def check_password(password: str) -> None:
    """16 to 127 characters of A-Z a-z 0-9 - _ with an upper, a lower case letter and a digit:
    Windows' default complexity rule holds, and nothing needs quoting where Packer puts it
    (Go templates; the elevated wrapper's `$password = "..."` PowerShell string)."""
    if not (_PASSWORD_RE.fullmatch(password) and any(c.isupper() for c in password)
            and any(c.islower() for c in password) and any(c.isdigit() for c in password)):
        raise ValueError("the WinRM password needs 16 to 127 characters of A-Z, a-z, 0-9, '-' and '_', "
                         "with an upper and a lower case letter and a digit")


def render_windows(plan: BuildPlan, ctx: RenderContext) -> RenderedBuild:
    if plan.os_type != "Windows":
        raise ValueError(f"render_windows needs a Windows plan, not {plan.os_type}")
    files: dict[str, str] = {}
    entries: list[tuple[ProvisionerBlock, str]] = []
    work = Path(ctx.work_dir)

    def add(block: ProvisionerBlock, note: str = "") -> None:
        entries.append((block, note))

    def write_ps1(rel: str, content: str) -> str:
        files[rel] = UTF8_BOM + content
        return _host_path(str(work / rel))

    checkpoints = ctx.checkpoints
    if checkpoints:
        _host_path(checkpoints.qmp_socket)  # a builder string: Go templates would read `{{`
    if checkpoints and checkpoints.start_after:
        script = write_ps1("steps/00-resume.ps1", checkpoint_resume_script(checkpoints.start_after))
        add(ProvisionerBlock("resume", "powershell", (("script", script),), (script,)),
            f"the disk is the checkpoint after customizer {checkpoints.start_after}; the login worked, "
            "so its boot task has set this run's password")
    for step in plan.steps:
        if checkpoints and step.phase == "customize" and step.index <= checkpoints.start_after:
            continue  # done in the checkpoint this build starts on
        source = f"customizer:{step.name}" if step.phase == "customize" else f"validation:{step.name}"
        slug = f"{step.index:02d}-{_safe_slug(step.name)}"
        if step.kind == "PowerShell":
            if step.inline is not None:
                script = write_ps1(f"steps/{slug}.ps1", inline_powershell(step.inline))
            else:
                script = _host_path(ctx.downloads[step.download.url])  # type: ignore[union-attr]
            attrs: list[tuple[str, object]] = [("script", script)]
            attrs += _elevation(step)
            attrs.append(("valid_exit_codes", tuple(step.valid_exit_codes)))
            add(ProvisionerBlock(source, "powershell", tuple(attrs), (script,)))
        elif step.kind == "File":
            local = _host_path(ctx.downloads[step.download.url])  # type: ignore[union-attr]
            upload = f"{UPLOAD_PREFIX}{step.index}"
            add(ProvisionerBlock(source, "file", (("source", local), ("destination", upload)), (local, upload)))
            script = write_ps1(f"steps/{slug}.place.ps1", place_file_script(upload, step.destination or ""))
            add(ProvisionerBlock(source, "powershell", (("script", script),), (script,)),
                "moves the upload to the destination, which stays out of this file")
        elif step.kind == "WindowsRestart":
            marker = STEP_MARKER.format(kind="windows-restart", index=step.index)
            # windows-restart prints no line naming itself: this no-op gives the log its start.
            add(ProvisionerBlock(source, "breakpoint", (("disable", True), ("note", marker)), (marker,)),
                "marks the restart's start in Packer's output")
            attrs = [("restart_command", go_template_literal(step.restart_command or ""))]
            if step.restart_check_command:
                attrs.append(("restart_check_command", go_template_literal(step.restart_check_command)))
            attrs.append(("restart_timeout", step.restart_timeout or "5m"))
            add(ProvisionerBlock(source, "windows-restart", tuple(attrs), ()))
        elif step.kind == "WindowsUpdate":
            script = write_ps1(f"steps/{slug}.windows-update.ps1", windows_update_script(step))
            for round_ in range(1, UPDATE_ROUNDS + 1):
                note = ""
                if round_ == 1:
                    note = (f"{UPDATE_ROUNDS} rounds of search/install + restart, as HCL is static; "
                            "a round with nothing pending installs nothing and does not restart")
                add(ProvisionerBlock(source, "powershell", (
                    ("script", script),
                    ("elevated_user", "SYSTEM"),
                    ("elevated_password", ""),
                    ("environment_vars", (f"ORCHESTRATOR_UPDATE_ROUND={round_}",
                                          f"ORCHESTRATOR_UPDATE_ROUNDS={UPDATE_ROUNDS}")),
                    ("valid_exit_codes", (0, UPDATE_REBOOT_EXIT_CODE)),
                ), (script,)), note)
                add(ProvisionerBlock(source, "windows-restart", (
                    ("restart_command", go_template_literal(UPDATE_RESTART_COMMAND)),
                    ("restart_timeout", UPDATE_RESTART_TIMEOUT),
                ), ()), f"round {round_} of {UPDATE_ROUNDS}: restarts only if the round asked for it")
        else:
            raise ValueError(f"{step.kind} customizers need a Linux source")
        if checkpoints and step.phase == "customize":
            guest = write_ps1(f"steps/{slug}.checkpoint.ps1", checkpoint_script())
            add(ProvisionerBlock(f"checkpoint:{step.name}", "powershell", (("script", guest),), (guest,)),
                "flushes the guest's registry and volumes for the checkpoint")
            files[f"steps/{slug}.checkpoint-host.sh"] = host_checkpoint_script(checkpoints.hook, step.index)
            host = _host_path(str(work / f"steps/{slug}.checkpoint-host.sh"))
            add(ProvisionerBlock(f"checkpoint:{step.name}", "shell-local", (  # owner-only, not executable
                ("script", host), ("execute_command", ("/bin/sh", "{{.Script}}"))), (host,)),
                f"the host freezes the disk ({CHECKPOINT_DRIVE}) after customizer {step.index}")

    script = write_ps1("steps/90-generalize.ps1", generalize_script(plan.deprovision_override, bool(checkpoints)))
    add(ProvisionerBlock("generalize", "powershell", (
        ("script", script),
        ("elevated_user", "SYSTEM"),
        ("elevated_password", ""),
    ), (script,)), "Sysprep, or the customizer-written override")

    hcl = _template_environment().get_template("windows.pkr.hcl.j2").render(
        plan=plan, ctx=ctx, provisioners=entries, build_user=BUILD_USER,
        seed_files=[_host_path(str(work / SEED_PASSWORD_FILE))],
        seed_label=SEED_LABEL, seed_password_name=SEED_PASSWORD_NAME,
        shutdown_command=f"cmd /c {FINALIZE_SCRIPT}",
        winrm_guest_port=WINRM_GUEST_PORT, disk_interface=DISK_INTERFACE, checkpoint_drive=CHECKPOINT_DRIVE,
        serial_log=_host_path(ctx.console_log or str(work / "serial.log")),
    )
    return RenderedBuild(hcl, files, tuple(block for block, _ in entries))


def _template_environment():
    env = _environment()
    env.filters["hcl_attr"] = hcl_attr
    return env


def _elevation(step: Step) -> list[tuple[str, object]]:
    """runAsSystem: a scheduled task as SYSTEM; runElevated: one as the build user, which needs
    its password (the variable, never a literal); neither: the WinRM session itself."""
    if step.run_as_system:
        return [("elevated_user", "SYSTEM"), ("elevated_password", "")]
    if step.run_elevated:
        return [("elevated_user", BUILD_USER), ("elevated_password", PASSWORD)]
    return []


def inline_powershell(commands: tuple[str, ...]) -> str:
    # What Packer's `inline` would upload (the commands, one a line), without its interpolation.
    return "\n".join(commands) + "\n"


def place_file_script(upload: str, destination: str) -> str:
    upload_path = upload.replace("/", "\\")
    return f"""# File customizer: the upload went to a fixed name; the destination is placed here
# so that no user text passes through Packer's interpolation. Its folder must exist (as in AIB).
$ErrorActionPreference = 'Stop'
$upload = {powershell_literal(upload_path)}
$destination = {powershell_literal(destination)}
try {{
    $folder = [System.IO.Path]::GetDirectoryName($destination)
    if (-not [System.IO.Directory]::Exists($folder)) {{
        throw "the folder $folder does not exist: create it in an earlier customizer"
    }}
    if ([System.IO.Directory]::Exists($destination)) {{ throw "$destination is a folder" }}
    if ([System.IO.File]::Exists($destination)) {{ [System.IO.File]::Delete($destination) }}
    [System.IO.File]::Move($upload, $destination)
    Write-Output "orchestrator-file: placed $destination"
}} catch {{
    Write-Output "orchestrator-file: error: $($_.Exception.Message)"
    exit 1
}}
"""


def _script_body(name: str) -> str:
    return packaged_text(f"windows/{name}")


def windows_update_script(step: Step) -> str:
    criteria = step.search_criteria or "BrowseOnly=0 and IsInstalled=0"
    limit = int(step.update_limit or 1000)
    data = (
        "# ---- data: generated from the WindowsUpdate customizer ----\n"
        f"$SearchCriteria = {powershell_literal(criteria)}\n"
        f"$Filters = {powershell_array(step.filters)}\n"
        f"$UpdateLimit = {limit}\n"
        f"$RebootMarker = {powershell_literal(UPDATE_REBOOT_MARKER)}\n"
        "# ---- end of data ----\n\n"
    )
    return data + _script_body("windows-update.ps1")


def generalize_script(override: str, checkpoints: bool = False) -> str:
    data = (
        "# ---- data: generated ----\n"
        f"$OverridePath = {powershell_literal(override)}\n"
        f"$FinalizeScript = {powershell_literal(FINALIZE_SCRIPT)}\n"
        f"$BuildUser = {powershell_literal(BUILD_USER)}\n"
        f"$ShutdownCommand = {powershell_literal(SHUTDOWN_COMMAND)}\n"
        f"$BootTask = {powershell_literal(CHECKPOINT_BOOT_TASK if checkpoints else '')}\n"
        f"$BootFolder = {powershell_literal(CHECKPOINT_BOOT_FOLDER)}\n"
        "# ---- end of data ----\n\n"
    )
    return data + _script_body("generalize.ps1")


def checkpoint_boot_script() -> str:
    """What the boot task runs (as SYSTEM, at each boot): the seed CD's password for `packer`."""
    data = (
        "# ---- data: generated ----\n"
        f"$SeedLabel = {powershell_literal(SEED_LABEL)}\n"
        f"$PasswordName = {powershell_literal(SEED_PASSWORD_NAME)}\n"
        f"$BuildUser = {powershell_literal(BUILD_USER)}\n"
        f"$LogFile = {powershell_literal(CHECKPOINT_BOOT_LOG)}\n"
        "# ---- end of data ----\n\n"
    )
    return data + _script_body("checkpoint-boot.ps1")


def checkpoint_script() -> str:
    """The guest step after each customizer: the boot task (once), then every flush."""
    data = (
        "# ---- data: generated ----\n"
        f"$BootFolder = {powershell_literal(CHECKPOINT_BOOT_FOLDER)}\n"
        f"$BootScript = {powershell_literal(CHECKPOINT_BOOT_SCRIPT)}\n"
        f"$BootTask = {powershell_literal(CHECKPOINT_BOOT_TASK)}\n"
        f"$Mark = {powershell_literal(HOOK_MARK)}\n"
        f"$BootText = {powershell_literal(checkpoint_boot_script())}\n"
        "# ---- end of data ----\n\n"
    )
    return data + _script_body("checkpoint.ps1")


def checkpoint_resume_script(start_after: int) -> str:
    data = (
        "# ---- data: generated ----\n"
        f"$StartAfter = {int(start_after)}\n"
        f"$BootTask = {powershell_literal(CHECKPOINT_BOOT_TASK)}\n"
        f"$LogFile = {powershell_literal(CHECKPOINT_BOOT_LOG)}\n"
        f"$Mark = {powershell_literal(HOOK_MARK)}\n"
        "# ---- end of data ----\n\n"
    )
    return data + _script_body("checkpoint-resume.ps1")
