"""Renders a build plan into Packer HCL2 plus the small files it references.

Pure: returns text; the engine writes it. User text (inline commands, destinations) never
goes into the HCL itself: it goes into script files, which Packer uploads byte-exact and
does not run through HCL or Go-template interpolation.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import yaml

from orchestrator.core.checkpoint_steps import (BASE_NAME, SAVED_TMP, CheckpointPlan, host_checkpoint_script,
                                                resume_script)
from orchestrator.core.warm import incoming_uri, warm_resume_script
from orchestrator.core.hcl import hcl_string, hcl_value
from orchestrator.core.plan import BuildPlan
from orchestrator.errors import UsageError

# The repository's top-level packer_templates/, shipped as this package's data (pyproject maps
# it to orchestrator.packer_templates): found the same way from an editable install and a wheel.
TEMPLATES_PACKAGE = "orchestrator.packer_templates"
BUILD_USER = "packer"
UPLOAD_PREFIX = "/tmp/.orchestrator-upload-"
FINALIZE_SCRIPT = "/run/orchestrator-finalize.sh"
AS_ROOT = "chmod +x {{ .Path }}; sudo {{ .Vars }} {{ .Path }}"  # Packer's shell execute_command, with sudo
AS_USER = "chmod +x {{ .Path }}; {{ .Vars }} {{ .Path }}"  # Packer's own default
# continueDistributeOnFailure: a failing validation must not end the build (the image is still
# generalized and distributed), so its exit status is printed for the engine and Packer sees 0
VALIDATION_STATUS = "orchestrator-validation-exit="
# A File destination made only of these goes straight into the file provisioner; any other
# goes through an upload to a fixed name and a move script (one SSH round trip more).
_PLAIN_PATH = re.compile(r"^/tmp/[A-Za-z0-9._+/-]+$")


@dataclass(frozen=True)
class RenderContext:
    """Host-side facts the HCL needs; all paths are absolute."""

    work_dir: str
    output_dir: str
    ssh_private_key: str
    ssh_public_key: str
    accelerator: str  # kvm or tcg
    downloads: dict[str, str] = field(default_factory=dict)  # url -> cached local path
    headless: bool = True
    vnc: bool = False  # the build VM's VNC console: off, or on 127.0.0.1 with a per-run password
    console_log: str | None = None  # the build VM's serial console; default: serial.log in work_dir
    checkpoints: CheckpointPlan | None = None  # a disk checkpoint after each customizer (QMP)


@dataclass(frozen=True)
class ProvisionerBlock:
    """One Packer provisioner; `source` is the step (or phase) its log lines belong to."""

    source: str
    kind: str  # shell, file, powershell, windows-restart
    attrs: tuple[tuple[str, object], ...]
    log_keys: tuple[str, ...]  # strings that identify it in Packer's output (script paths)


@dataclass(frozen=True)
class RenderedBuild:
    hcl: str
    files: dict[str, str]  # path relative to work_dir -> content
    provisioners: tuple[ProvisionerBlock, ...]


def packaged_text(name: str) -> str:
    """A file of packer_templates/ (`name` relative to it, `/`-separated), as text."""
    resource = importlib.resources.files(TEMPLATES_PACKAGE).joinpath(*name.split("/"))
    return resource.read_text(encoding="utf-8")


def _load_template(name: str) -> str | None:
    try:
        return packaged_text(name)
    except (FileNotFoundError, IsADirectoryError):
        return None  # jinja2 raises TemplateNotFound


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["hcl"] = hcl_value
    env.filters["comment"] = comment_text
    return env


def comment_text(value: str) -> str:
    """Text safe inside a `#` comment: one line, printable."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))[:200]


def _safe_slug(name: str) -> str:
    slug = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)[:40]
    return slug.strip("-") or "step"


def _go_template_marks(text: str) -> bool:
    return "{{" in text or "}}" in text


def _host_path(path: str) -> str:
    # Packer interpolates Go templates in provisioner fields; our own paths must not hold `{{`.
    if _go_template_marks(path):
        folder = next((p for p in reversed(Path(path).parents) if _go_template_marks(str(p))), None)
        what = f"the directory {folder}" if folder else f"the path {path}"
        raise UsageError(
            f"{what} contains '{{{{' or '}}}}', which Packer would read as a Go template: "
            "the build's files cannot live there",
            hint="use a directory whose path holds no '{{' or '}}' "
                 "(for `render -o DIR`, another DIR; for a build, another ORCHESTRATOR_HOME)")
    return path


def render_linux(plan: BuildPlan, ctx: RenderContext) -> RenderedBuild:
    files: dict[str, str] = {}
    blocks: list[ProvisionerBlock] = []
    work = Path(ctx.work_dir)
    checkpoints = ctx.checkpoints
    if checkpoints and checkpoints.resumed:
        files["steps/00-resume.sh"] = (
            warm_resume_script(checkpoints.start_after, checkpoints.random_hex) if checkpoints.incoming
            else resume_script(BUILD_USER, ctx.ssh_public_key))
        script = _host_path(str(work / "steps/00-resume.sh"))
        blocks.append(ProvisionerBlock("resume", "shell", (("script", script), ("execute_command", AS_ROOT)),
                                       (script,)))
    if checkpoints and checkpoints.base:  # the booted VM, before any customizer: a warm base
        blocks += _checkpoint_blocks(0, BASE_NAME, "00-boot", checkpoints, work, files)
    for step in plan.steps:
        if checkpoints and step.phase == "customize" and step.index <= checkpoints.start_after:
            continue  # done in the checkpoint this build starts on
        source = f"customizer:{step.name}" if step.phase == "customize" else f"validation:{step.name}"
        slug = f"{step.index:02d}-{_safe_slug(step.name)}"
        if step.kind == "Shell":
            attrs: tuple[tuple[str, object], ...] = ()
            if step.inline is not None:  # as the build user: AIB's documents say to prefix with sudo
                rel = f"steps/{slug}.sh"
                files[rel] = inline_script(step.inline)
                script = _host_path(str(work / rel))
            else:  # a scriptUri script runs as root, as AIB runs it (its quickstart writes /etc/motd)
                script = _host_path(ctx.downloads[step.download.url])  # type: ignore[union-attr]
                attrs = (("execute_command", AS_ROOT),)
            if step.phase == "validate" and plan.continue_distribute_on_failure:
                command = dict(attrs).get("execute_command", AS_USER)
                attrs = (("execute_command", f"{command}; echo {VALIDATION_STATUS}$?"),)
            blocks.append(ProvisionerBlock(source, "shell", (
                ("script", script), ("expect_disconnect", True), *attrs,
            ), (script,)))
        elif step.kind == "File":
            local = _host_path(ctx.downloads[step.download.url])  # type: ignore[union-attr]
            destination = step.destination or ""
            if _PLAIN_PATH.match(destination):  # nothing HCL or Go templates could interpret
                blocks.append(ProvisionerBlock(source, "file", (
                    ("source", local), ("destination", destination),
                ), (local,)))
            else:
                upload = f"{UPLOAD_PREFIX}{step.index}"
                blocks.append(ProvisionerBlock(source, "file", (
                    ("source", local), ("destination", upload),
                ), (local, upload)))
                rel = f"steps/{slug}.place.sh"
                files[rel] = move_script(upload, step.destination or "")
                script = _host_path(str(work / rel))
                blocks.append(ProvisionerBlock(source, "shell", (("script", script),), (script,)))
        elif step.kind == "PowerShell":  # AIB runs PowerShell on Linux with pwsh
            if step.inline is not None:
                rel = f"steps/{slug}.ps1"
                files[rel] = "\n".join(step.inline) + "\n"
                script = _host_path(str(work / rel))
            else:
                script = _host_path(ctx.downloads[step.download.url])  # type: ignore[union-attr]
            sudo = "sudo " if step.run_elevated else ""
            blocks.append(ProvisionerBlock(source, "shell", (
                ("script", script),
                ("execute_command", f"chmod +x {{{{ .Path }}}}; {sudo}{{{{ .Vars }}}} pwsh -NoProfile -File {{{{ .Path }}}}"),
                ("valid_exit_codes", list(step.valid_exit_codes)),
            ), (script,)))
        else:
            raise ValueError(f"{step.kind} customizers need a Windows source")
        if checkpoints and step.phase == "customize":
            blocks += _checkpoint_blocks(step.index, step.name, slug, checkpoints, work, files)
    rel = "steps/90-generalize.sh"
    files[rel] = generalize_script(plan.deprovision_command, plan.deprovision_override)
    script = _host_path(str(work / rel))
    blocks.append(ProvisionerBlock("generalize", "shell", (
        ("script", script),
        ("execute_command", AS_ROOT),
        ("skip_clean", True),
    ), (script,)))
    files["seed/meta-data"] = cloud_init_meta_data(plan.name, ctx.ssh_public_key)
    files["seed/user-data"] = cloud_init_user_data(ctx.ssh_public_key)
    seed = [_host_path(str(work / "seed/meta-data")), _host_path(str(work / "seed/user-data"))]
    hcl = _environment().get_template("linux.pkr.hcl.j2").render(
        plan=plan, ctx=ctx, provisioners=blocks, seed_files=seed, build_user=BUILD_USER,
        shutdown_command=f"sudo /bin/sh {FINALIZE_SCRIPT}",
        serial_log=_host_path(ctx.console_log or str(work / "serial.log")),
        hcl_string=hcl_string, incoming=incoming_uri(checkpoints.incoming) if checkpoints and checkpoints.incoming else "",
    )
    return RenderedBuild(hcl, files, tuple(blocks))


def _checkpoint_blocks(position: int, name: str, slug: str, checkpoints: CheckpointPlan, work: Path,
                       files: dict[str, str]) -> list[ProvisionerBlock]:
    """One host step: the hook prepares the guest over SSH itself (a guest a customizer rebooted
    is waited for there), then freezes the disk (core/checkpoint_steps.py)."""
    host = f"steps/{slug}.checkpoint-host.sh"
    files[host] = host_checkpoint_script(checkpoints.hook, position)
    host_path = _host_path(str(work / host))
    # the script is written owner-only and not executable: sh reads it
    return [ProvisionerBlock(f"checkpoint:{name}", "shell-local", (
        ("script", host_path), ("execute_command", ["/bin/sh", "{{.Script}}"])), (host_path,))]


def inline_script(commands: tuple[str, ...]) -> str:
    # The same shell and `-e` Packer uses for `inline`, without Packer's interpolation.
    return "#!/bin/sh -e\n" + "\n".join(commands) + "\n"


def move_script(upload: str, destination: str) -> str:
    return (
        "#!/bin/sh -e\n"
        "# File customizer: the upload went to a fixed name; the destination is placed here\n"
        "# so that no user text passes through Packer's interpolation.\n"
        f"mv -f -- {shlex.quote(upload)} {shlex.quote(destination)}\n"
    )


def generalize_script(default_command: str, override: str) -> str:
    quoted = shlex.quote(override)
    return f"""#!/bin/sh
# Generalize the build VM (runs as root), then leave the clean-up for the final shutdown.
set -e
if [ -f {quoted} ]; then
    echo "orchestrator-generalize: running {override} (written by a customizer) instead of the default"
    /bin/sh {quoted}
else
    echo {shlex.quote("orchestrator-generalize: running default: " + default_command)}
    {default_command}
fi
install -m 0700 /dev/null {FINALIZE_SCRIPT}
cat > {FINALIZE_SCRIPT} <<'FINALIZE'
{finalize_script()}FINALIZE
# the deploy proof checks that a VM from the image gets another machine id than this one
echo "orchestrator-generalize: build machine-id $(cat /etc/machine-id 2>/dev/null)"
echo "orchestrator-generalize: done"
"""


def finalize_script() -> str:
    """Runs as the VM's last command. waagent keeps the build user on a VM Azure did not
    provision, so the build's own traces are removed here, then the guest powers off."""
    user = shlex.quote(BUILD_USER)
    return f"""#!/bin/sh
rm -f /etc/sudoers.d/90-cloud-init-users
userdel -f -r {user} >/dev/null 2>&1 || true
rm -rf /home/{user}
rm -f /etc/ssh/ssh_host_*
rm -f {UPLOAD_PREFIX}* /tmp/script_*.sh
# cloud-init may still be running its later stages of the build VM's first boot: stop them
# (it has created the build user, all the build VM needed), so that none of its state is
# written after the clean-up below. Waiting for them would cost ~10 s under TCG.
systemctl stop cloud-config.service cloud-final.service >/dev/null 2>&1 || true
# what `cloud-init clean --logs` removes (all state but the seed), without starting Python again
find /var/lib/cloud -mindepth 1 -maxdepth 1 ! -name seed -exec rm -rf {{}} + 2>/dev/null || true
rm -f /var/log/cloud-init.log /var/log/cloud-init-output.log
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -f /root/.bash_history
rm -rf {SAVED_TMP.rsplit("/", 1)[0]}
sync
shutdown -P now
"""


def cloud_init_meta_data(name: str, public_key: str) -> str:
    """A new instance per run (the run's key names it): a build resumed from a checkpoint boots
    a disk cloud-init has seen, and adds the new key only for an instance it has not."""
    # no local-hostname: setting one starts systemd-hostnamed, seconds under TCG
    run = hashlib.sha256(public_key.encode()).hexdigest()[:12]
    return _yaml({"instance-id": f"orchestrator-{_safe_slug(name)}-{run}"})


def cloud_init_user_data(public_key: str) -> str:
    """The NoCloud user-data, made by a YAML library: nothing a template or a key comment
    holds (newlines, `#`, `:`) can add or change a cloud-init key."""
    config = {
        "users": [{
            "name": BUILD_USER,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "lock_passwd": True,
            "ssh_authorized_keys": [public_key.strip()],
        }],
        "ssh_pwauth": False,
        "disable_root": True,
        "locale": False,
        "manage_etc_hosts": True,
        # The build VM needs only the user above: no config/final modules, so that cloud-init
        # leaves the image alone and finishes before the customizers do.
        "cloud_config_modules": [],
        "cloud_final_modules": [],
        # Host keys of the build VM are deleted before the image is sealed: make only the fast one.
        "ssh_genkeytypes": ["ed25519"],
    }
    return "#cloud-config\n" + _yaml(config)


def _yaml(data: dict) -> str:
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False, allow_unicode=False, width=2**16)
