"""Where a template may make this host write and read: checked at validate, plan and build
(with JSON paths, before anything starts) and again just before each write or read.

Writes: a VHD goes under the data home's artifacts/ or a configured `vhd_dirs` entry, never to
a system path, a directory, or an existing file that orchestrator did not write.
Reads: a file:// source lies under the data home's files/, the template's own directory or a
configured `file_source_dirs` entry, never in /proc, /sys or /dev, and only if the user who
runs orchestrator (the sudo caller, under sudo) could read it anyway.
"""
from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.config import Config
from orchestrator.core import model as m
from orchestrator.core.paths import NO_READ_PREFIXES, in_system_location, local_path_of_uri, under
from orchestrator.core.problems import Problem

CONFIG_HINT = "the configuration file ({file}) lists allowed directories under [paths] {key}"


@dataclass(frozen=True)
class HostPolicy:
    write_roots: tuple[Path, ...]
    read_roots: tuple[Path, ...]
    config_file: Path

    @classmethod
    def of(cls, config: Config, template_dir: Path | None) -> "HostPolicy":
        reads = [config.files_dir, *config.file_source_dirs]
        if template_dir is not None:
            resolved = template_dir.resolve()
            if not in_system_location(str(resolved)):  # a template in / or /etc opens nothing
                reads.append(resolved)
        return cls(write_roots=(_resolved(config.artifacts_dir), *config.vhd_dirs),
                   read_roots=tuple(_resolved(p) for p in reads),
                   config_file=config.config_file or config.home / "config.toml")


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def vhd_write_problem(uri: str, policy: HostPolicy, owned: Callable[[str], bool]) -> tuple[str, str] | None:
    """(message, hint) if a VHD may not be written where `uri` says; None if it may."""
    path, why = local_path_of_uri(uri, "uri")
    if path is None:
        return why or "not a local path", "use an absolute path (or file:///path) ending in a file name"
    if in_system_location(path):
        return f"`{uri}` is a system path: a build never writes there", "write VHDs under a directory meant for images"
    real = os.path.realpath(path)
    if in_system_location(real):
        return f"`{uri}` leads to the system path {real}", "write VHDs under a directory meant for images"
    if not any(under(str(root), real) for root in policy.write_roots):
        return (f"`{uri}` is outside the data home's artifacts and the configured VHD directories",
                CONFIG_HINT.format(file=policy.config_file, key="vhd_dirs")
                + "; or drop uri to write under the data home")
    try:
        info = os.lstat(real)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot check `{uri}`: {exc.strerror}", "check the path"
    if stat.S_ISDIR(info.st_mode):
        return f"`{uri}` is a directory", "name the VHD file itself, e.g. .../image.vhd"
    if not stat.S_ISREG(info.st_mode):
        return f"`{uri}` exists and is not a regular file", "name a new file"
    if not (owned(path) or owned(real)):
        return (f"`{uri}` exists and was not written by orchestrator: a build would replace it",
                "name a new file, or remove the existing one yourself")
    return None


def file_read_problem(uri: str, policy: HostPolicy) -> tuple[str, str] | None:
    """(message, hint) if a file:// source may not be read; None if it may (or is not file://)."""
    if not uri.lower().startswith("file:"):
        return None
    path, why = local_path_of_uri(uri, "URI")
    if path is None:
        return why or "not a local file URI", "use file:///absolute/path/to/file"
    real = os.path.realpath(path)
    if in_system_location(path, NO_READ_PREFIXES) or in_system_location(real, NO_READ_PREFIXES):
        return f"`{uri}` is in /proc, /sys or /dev: never read on a template's behalf", "serve the file over http(s)"
    if not any(under(str(root), real) for root in policy.read_roots):
        return (f"`{uri}` is outside the directories file:// sources may come from "
                f"({', '.join(str(r) for r in policy.read_roots)})",
                "put the file beside the template or in the data home's files/; "
                + CONFIG_HINT.format(file=policy.config_file, key="file_source_dirs"))
    if os.path.exists(real) and not readable_by_invoker(Path(real)):
        return (f"`{uri}` is not readable by the user who runs orchestrator",
                "a template can only name files its author could read")
    return None


def readable_by_invoker(path: Path) -> bool:
    """Whether the user behind this process could read `path`: the sudo caller under sudo
    (root reads everything, so its own access says nothing), else this process's real user."""
    sudo_uid = os.environ.get("SUDO_UID")
    if os.geteuid() != 0 or not sudo_uid or not sudo_uid.isdigit() or int(sudo_uid) == 0:
        return os.access(path, os.R_OK)
    uid = int(sudo_uid)
    try:
        user = pwd.getpwuid(uid)
        groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
        info = path.stat()
    except (KeyError, OSError):
        return False
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IRUSR)
    if info.st_gid in groups:
        return bool(info.st_mode & stat.S_IRGRP)
    return bool(info.st_mode & stat.S_IROTH)


def template_problems(template: m.ImageTemplate, policy: HostPolicy,
                      owned: Callable[[str], bool]) -> list[Problem]:
    """Every write and read a template asks of this host that the policy refuses."""
    problems: list[Problem] = []
    for index, target in enumerate(template.distribute):
        if isinstance(target, m.VhdTarget) and target.uri and not target.uri.lower().startswith(("http://", "https://")):
            found = vhd_write_problem(target.uri, policy, owned)
            if found:
                problems.append(Problem(f"$.properties.distribute[{index}].uri", "vhd-destination", *found))
    steps = [("customize", template.customize)]
    if template.validate is not None:
        steps.append(("validate.inVMValidations", template.validate.in_vm_validations))
    for prefix, items in steps:
        for index, item in enumerate(items):
            for field, uri in _source_uris(item):
                found = file_read_problem(uri, policy)
                if found:
                    problems.append(Problem(f"$.properties.{prefix}[{index}].{field}", "file-source", *found))
    return problems


def _source_uris(item: m.Customizer) -> list[tuple[str, str]]:
    if isinstance(item, (m.ShellCustomizer, m.PowerShellCustomizer)) and item.script_uri:
        return [("scriptUri", item.script_uri)]
    if isinstance(item, m.FileCustomizer):
        return [("sourceUri", item.source_uri)]
    return []
