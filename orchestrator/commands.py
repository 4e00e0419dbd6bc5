"""One function per CLI verb: read arguments, call the engine or the core, print."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

from orchestrator.config import Config, make_private_dir
from orchestrator.core import model as m
from orchestrator.core.document import is_trigger, load_document, load_trigger, parse_json
from orchestrator.core.plan import ResolvedSource, make_plan
from orchestrator.core.problems import Problem
from orchestrator.core.redact import Redactor, scrub
from orchestrator.core.render import RenderContext, render_linux
from orchestrator.errors import SourceNotFound, TemplateInvalid, UsageError



def emit(data: Any) -> None:
    # scrub: no credential or signature shape leaves in JSON output, whatever recorded it
    print(scrub(json.dumps(data, indent=2, default=str)))


def print_problems(problems: Sequence[Problem], indent: str = "", redact: Callable[[str], str] = scrub) -> None:
    """Problems to stderr, each with its path and rule; a hint once, where it first applies.
    Warnings and notes carry their severity in front, errors (under their heading) do not.
    Messages pass `redact` (the template's secrets, when known; secret shapes always)."""
    hinted: set[str] = set()
    for problem in problems:
        label = "" if problem.is_error else f"{problem.severity}: "
        print(f"{indent}{label}{problem.path}: {redact(problem.message)} [{problem.rule}]", file=sys.stderr)
        if problem.hint and problem.hint not in hinted:
            hinted.add(problem.hint)
            print(f"{indent}    hint: {problem.hint}", file=sys.stderr)


MAX_INPUT_BYTES = 4 * 1024 * 1024  # ARM's limit for a deployment template


def read_text(path: str, what: str, limit: int = MAX_INPUT_BYTES) -> str:
    """A template, parameters file or log as text: a regular file of at most `limit` bytes
    (a FIFO, /dev/zero or a huge file is refused before it is read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist", hint="check the path") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a directory", hint="give the path of a JSON file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{what} {path} is a directory", hint="give the path of a JSON file")
        raise UsageError(f"{what} {path} is not a regular file (a device, FIFO or socket)",
                         hint="save the JSON to a file and give its path")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{what} {path} is larger than {limit // 2**20} MiB",
                         hint="ARM and AIB refuse templates over 4 MiB; move large content into scripts")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {path} is not UTF-8 text", hint="templates are JSON files") from None


def load_parameters(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.parameters:
        data = parse_json(read_text(args.parameters, "parameters file"), args.parameters)
        if isinstance(data, dict) and "parameters" in data:
            data = data["parameters"]
        if not isinstance(data, dict):
            raise UsageError(f"{args.parameters} is not an ARM parameters file",
                             hint='expected {"parameters": {"name": {"value": ...}}}')
        for key, item in data.items():
            values[key] = item["value"] if isinstance(item, dict) and "value" in item else item
    for pair in args.param:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"-p {pair!r} is not NAME=VALUE", hint="e.g. -p imageTemplateName=web")
        values[key] = value
    return values


def load(args: argparse.Namespace, config: Config) -> tuple[m.ImageTemplate, str, str]:
    text = read_text(args.template, "template")
    if is_trigger(parse_json(text, args.template)):
        raise UsageError(f"{args.template} is an image template trigger, not an image template",
                         hint="`orchestrate validate` checks it; builds run from the template itself "
                              "(a rebuild happens when a newer source image is imported)")
    template = load_document(text, args.template, load_parameters(args), config.arm_functions(),
                             strict=getattr(args, "strict", False))
    name = getattr(args, "name", None) or template.name or Path(args.template).stem
    if template.warnings and not args.json:
        print_problems(template.warnings, redact=Redactor.of(template.secrets))
    return template, name, text


def check_host_policy(config: Config, template: m.ImageTemplate, args: argparse.Namespace, name: str) -> None:
    """What the template would make this host write or read, refused with JSON paths before
    anything starts; reads the state database if there is one, creates nothing."""
    from orchestrator.effects.hostpolicy import HostPolicy, template_problems
    from orchestrator.effects.state import StateStore

    store = StateStore.for_config(config, read_only=True)
    owned = store.wrote_artifact if store else (lambda path: False)
    policy = HostPolicy.of(config, Path(args.template).resolve().parent)
    problems = template_problems(template, policy, owned)
    if problems:
        raise TemplateInvalid(problems, f"{name} (on this host)")


def cmd_validate(args: argparse.Namespace, config: Config) -> int:
    text = read_text(args.template, "template")
    if is_trigger(parse_json(text, args.template)):
        trigger = load_trigger(text, args.template)
        if args.json:
            emit({"ok": True, "trigger": trigger.kind, "problems": []})
        else:
            print(f"{args.template}: valid {trigger.kind} trigger (a newer imported source image triggers a rebuild)")
        return 0
    template, name, _ = load(args, config)
    check_host_policy(config, template, args, name)
    summary = {"ok": True, "name": name, "apiVersion": template.api_version, "osType": template.os_type,
               "source": template.source.kind, "customizers": len(template.customize),
               "targets": [t.run_output_name for t in template.distribute]}
    if args.json:
        emit({**summary, "problems": [], "warnings": [w.as_dict() for w in template.warnings]})
    else:
        print(f"{args.template}: valid ({template.os_type}, {template.source.kind} source, "
              f"{len(template.customize)} customizer(s), {len(template.distribute)} target(s))")
    return 0


def _plan_for_display(config: Config, template: m.ImageTemplate, name: str):
    """A plan whose source is resolved if it can be; otherwise marked as not imported.
    Reads the catalog if the data home has one; creates nothing."""
    from orchestrator.effects.state import StateStore
    from orchestrator.pipeline.sources import resolve

    source = template.source
    store = StateStore.for_config(config, read_only=True)
    try:
        if store is None:
            raise SourceNotFound(f"no image is imported or published yet (no state database in {config.home})")
        resolved = resolve(source, config, store, template.location)
    except SourceNotFound as exc:
        resolved = ResolvedSource(description=f"{source.kind} (unresolved: {exc.message})",
                                  path=str(config.images_dir / "unresolved.qcow2"), format="qcow2",
                                  virtual_size=0, sha256="")
    return make_plan(template, resolved, name)


def cmd_plan(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.engine import shown_plan
    from orchestrator.effects.downloads import display_url

    template, name, _ = load(args, config)
    check_host_policy(config, template, args, name)
    plan = _plan_for_display(config, template, name)
    upcoming = _next_run(config, plan)
    if args.json:
        emit({**Redactor.of(template.secrets).data(shown_plan(plan)),  # inline commands may hold secrets
              "nextRun": upcoming.to_dict(), "warnings": [w.as_dict() for w in template.warnings]})
        return 0
    print(f"template {name} ({plan.os_type}, from {plan.os_type_reason})")
    print(f"  source:   {plan.source.description}")
    disk = f"{plan.disk_size_mib} MiB" if plan.disk_size_mib else "the source's size"
    print(f"  build VM: {plan.vm_size} -> {plan.cpus} vCPU, {plan.memory_mib} MiB; disk {disk}; "
          f"timeout {plan.timeout_minutes} min")
    print("  steps:")
    for step in plan.steps:
        what = (f"fetch {display_url(step.download.url)} (sha256 {step.download.sha256 or 'not given'})"
                if step.download else f"{len(step.inline)} inline command(s)" if step.inline else "")
        dest = f" -> {step.destination}" if step.destination else ""
        print(f"    {step.index}. {step.kind} {step.name!r} [{step.phase}] {what}{dest}")
    print(f"    then: generalize ({plan.deprovision_command}, or {plan.deprovision_override} if a customizer wrote it)")
    print("  targets:")
    for target in plan.targets:
        print(f"    {target.kind} {target.run_output_name!r}" + (f" -> {target.artifact_id}" if target.artifact_id else "")
              + (f" -> {target.uri}" if target.uri else "")
              + (f" in {', '.join(target.regions)}" if target.regions else ""))
    print(f"  next run: {'build' if upcoming.build else 'skip'}")
    for reason in upcoming.reasons:
        print(f"    - {reason}")
    return 0


def _next_run(config: Config, plan):
    """Whether `orchestrate build`/`run` would build or skip, and why (pipeline/reuse.py)."""
    from orchestrator.effects.state import StateStore
    from orchestrator.pipeline.reuse import NextRun, next_run

    store = StateStore.for_config(config, read_only=True)
    if store is None or not plan.source.sha256:
        return NextRun(True, ("the source is not resolved yet" if store else f"nothing was built in {config.home} yet",))
    return next_run(store, plan)


def cmd_render(args: argparse.Namespace, config: Config) -> int:
    """Prints the HCL, or with -o DIR writes it with every file it references (step scripts,
    cloud-init seed, a key pair) so that `packer validate DIR/build.pkr.hcl` runs as is.
    Downloads are not fetched: their paths are where `orchestrate build` caches them (a file
    without sha256Checksum under cache/downloads/fetched-at-build-time/, see _render_download_path)."""
    from orchestrator.effects.sshkeys import make_key_pair
    from orchestrator.pipeline.build import KEY_NAME

    template, name, _ = load(args, config)
    plan = _plan_for_display(config, template, name)
    work = Path(args.output).resolve() if args.output else config.runs_dir / "render"
    downloads = {d.url: str(_render_download_path(config, position, d.url, d.sha256))
                 for position, d in enumerate(plan.downloads, 1)}
    public_key = "ssh-ed25519 AAAA-not-written render"
    created = args.output and not work.exists()
    if args.output:
        make_private_dir(work)
        _, public_key = make_key_pair(work / KEY_NAME, f"orchestrator-render-{name}")
    try:
        return _render_into(args, plan, work, public_key, downloads, config, template.secrets)
    except BaseException:
        if args.output:  # nothing half written stays behind: the key, and the directory if it is ours
            (work / KEY_NAME).unlink(missing_ok=True)
            if created:
                shutil.rmtree(work, ignore_errors=True)
        raise


def _render_into(args: argparse.Namespace, plan, work: Path, public_key: str, downloads: dict[str, str],
                 config: Config, plan_secrets: Sequence[str] = ()) -> int:
    from orchestrator.pipeline.build import KEY_NAME, write_rendered

    ctx = RenderContext(work_dir=str(work), output_dir=str(work / "packer-output"),
                        ssh_private_key=str(work / KEY_NAME), ssh_public_key=public_key,
                        accelerator=config.accelerator if config.accelerator != "auto" else "tcg",
                        downloads=downloads, vnc=config.vnc)
    secrets_files: dict[str, str] = {}
    if plan.os_type == "Windows":
        from orchestrator.core.hcl import hcl_string
        from orchestrator.core.render_windows import PASSWORD_VARIABLE, render_windows, windows_seed_files

        rendered = render_windows(plan, ctx)
        if args.output:  # a per-render password, so that `packer validate DIR` runs as is
            import secrets

            password = "Aa1-" + secrets.token_urlsafe(24)
            secrets_files = {**windows_seed_files(password),
                             "winrm.auto.pkrvars.hcl": f"{PASSWORD_VARIABLE} = {hcl_string(password)}\n"}
    else:
        rendered = render_linux(plan, ctx)
    if not args.output:
        sys.stdout.write(Redactor.of(plan_secrets)(rendered.hcl))  # to look at; -o DIR writes real values
        return 0
    print(write_rendered(work, rendered, secrets_files))
    if secrets_files:
        print(f"the WinRM password is in {work / 'winrm.auto.pkrvars.hcl'}: run `packer validate {work}`")
    return 0


def _render_download_path(config: Config, position: int, url: str, sha256: str | None) -> Path:
    """Where `build` will have the file: the download cache keeps files by content hash, so a
    file given with its sha256Checksum has a known path; one without is only named by its hash
    once fetched, and the path says so."""
    if sha256:
        return config.cache_dir / "sha256" / sha256.lower()
    base = urlsplit(url).path.rsplit("/", 1)[-1]
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in base)[:60].strip(".-") or "file"
    return config.cache_dir / "fetched-at-build-time" / f"{position:02d}-{safe}"


def cmd_build(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.run_commands import run_template

    template, name, text = load(args, config)
    return run_template(args, config, template, name, text, str(Path(args.template).resolve()))


def cmd_image(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.engine import Engine

    engine = Engine(config)
    if args.image_command == "import":
        record = engine.catalog.import_image(Path(args.file), args.publisher, args.offer, args.sku, args.version,
                                             replace=args.replace)
        if args.json:
            emit(record.__dict__)
        else:
            print(f"imported {record.publisher}:{record.offer}:{record.sku}:{record.version} "
                  f"({record.virtual_size // 2**20} MiB virtual) as {record.path}")
        return 0
    records = engine.state.images()
    if args.json:
        emit([r.__dict__ for r in records])
    else:
        for r in records:
            print(f"{r.publisher}:{r.offer}:{r.sku}:{r.version}  {r.virtual_size // 2**20} MiB  {r.path}")
    return 0
