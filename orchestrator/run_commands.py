"""The CLI verbs of runs and stored templates: run, template create|list|show|delete|show-runs,
runs, status, output, cancel, logs. Each reads arguments, calls the service, prints."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.commands import check_host_policy, emit, load_parameters, print_problems, read_text
from orchestrator.config import Config
from orchestrator.core import model as m
from orchestrator.core.document import load_document
from orchestrator.core.redact import Redactor
from orchestrator.errors import ExitCode, UsageError
from orchestrator.service import templates as stored_templates
from orchestrator.service.recovery import is_dead, recover
from orchestrator.service.runs import ACTIVE, last_run_status

FOLLOW_POLL_SECONDS = 0.2


def store(config: Config):
    """The state database, after recovering runs whose process died (any command that touches
    the state does it: a killed run does not stay Running)."""
    from orchestrator.effects.state import StateStore

    state = StateStore.for_config(config.ensure())
    recover(config, state, lambda line: print(f"recovered: {line}", file=sys.stderr))
    return state


# --- building -------------------------------------------------------------------------------
def run_template(args: argparse.Namespace, config: Config, template: m.ImageTemplate, name: str, text: str,
                 template_path: str | None, template_sha256: str | None = None) -> int:
    """Builds a template (one-shot or stored), with the progress view the arguments ask for."""
    if config.fleet is not None:  # any host of the fleet may build it
        from orchestrator.fleet_commands import submit_and_wait

        one_shot = template_sha256 is None
        if one_shot:
            args.resolved_parameters = load_parameters(args)
        return submit_and_wait(args, config, template, name, text, template_path, template_sha256, one_shot)
    from orchestrator.engine import Engine
    from orchestrator.service.progress import Reporter
    from orchestrator.views import open_view

    mode = args.progress or ("json" if args.json else "auto")
    engine = Engine(config)
    started = time.monotonic()
    sink, close = open_view(mode)
    try:
        result = engine.build(template, name, text, template_path, Reporter(sink), force=args.force,
                              template_sha256=template_sha256, proof=False if args.no_proof else None,
                              resume=args.resume and get_run(store(config), args.resume, name)["id"],
                              checkpoints=not args.no_checkpoints)
    finally:
        close()
    code = int(ExitCode.PARTIALLY_SUCCEEDED) if result.run_state == "PartiallySucceeded" else 0
    if args.json:
        emit({"ok": code == 0, "warnings": [w.as_dict() for w in template.warnings],
              "runId": result.run_id, "runState": result.run_state, "message": result.message,
              "reusedRun": result.reused_run, "log": str(result.log_path), "runOutputs": result.outputs})
        return code
    print(f"run {result.run_id}: {result.run_state} in {time.monotonic() - started:.0f} s"
          + (f" (reused run {result.reused_run})" if result.reused_run else "")
          + (f": {result.message}" if code else ""))
    for output in result.outputs:
        props = output["properties"]
        print(f"  {output['name']}: {props['provisioningState']} {props.get('path', props.get('artifactId')) or ''}")
    print(f"  log: {result.log_path}")
    return code


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    template_record = stored_templates.get(store(config), args.name)
    template = template_record.load(config)
    if template.warnings and not args.json:
        print_problems(template.warnings, redact=Redactor.of(template.secrets))
    return run_template(args, config, template, template_record.name, template_record.body,
                        template_record.file_path, template_record.sha256)


# --- stored templates -------------------------------------------------------------------------
def cmd_template(args: argparse.Namespace, config: Config) -> int:
    return {"create": _template_create, "list": _template_list, "show": _template_show,
            "delete": _template_delete, "show-runs": _template_runs}[args.template_command](args, config)


def _template_create(args: argparse.Namespace, config: Config) -> int:
    text = read_text(args.file, "template")
    parameters = load_parameters(args)
    stored_templates.check_name(args.name)
    template = load_document(text, args.file, parameters, config.arm_functions(), strict=args.strict)
    if template.warnings and not args.json:
        print_problems(template.warnings, redact=Redactor.of(template.secrets))
    check_host_policy(config, template, argparse.Namespace(template=args.file), args.name)
    verdict, saved = stored_templates.create(store(config), args.name, text, parameters,
                                             str(Path(args.file).resolve()), update=args.update)
    if args.json:
        emit({"ok": True, "name": saved.name, "result": verdict, "sha256": saved.sha256,
              "warnings": [w.as_dict() for w in template.warnings]})
    else:
        print(f"template {saved.name} {verdict} (sha256 {saved.sha256[:12]})")
    return 0


def _template_view(state, saved: stored_templates.Stored) -> dict[str, Any]:
    runs = state.runs(saved.name, limit=1)
    last = runs[0] if runs else None
    return {"name": saved.name, "sha256": saved.sha256, "file": saved.file_path,
            "createdAt": _stamp(saved.created_at), "updatedAt": _stamp(saved.updated_at),
            "properties": {"lastRunStatus": last_run_status(last)},
            "runOutputs": state.outputs(last["id"]) if last else [],
            "proof": run_proof(last) if last else None}


def run_proof(run: dict[str, Any]) -> dict[str, Any] | None:
    """The deploy proof's result as the run recorded it (None: the run did not get that far)."""
    return json.loads(run["proof"]) if run.get("proof") else None


def print_proof(proof: dict[str, Any] | None) -> None:
    if proof is None:
        return
    if proof["status"] == "Skipped":
        print(f"  deploy proof: skipped ({proof['reason']})")
        return
    boot = f"boot {proof['bootSeconds']} s, " if proof.get("bootSeconds") is not None else ""
    print(f"  deploy proof: {proof['status']} ({boot}{proof['totalSeconds']} s)")
    for check in proof["checks"]:
        print(f"    {'ok    ' if check['passed'] else 'FAILED'} {check['name']}: {check['detail']}")


def _template_list(args: argparse.Namespace, config: Config) -> int:
    state = store(config)
    views = [_template_view(state, saved) for saved in stored_templates.listing(state)]
    if args.json:
        emit(views)
        return 0
    for view in views:
        status = view["properties"]["lastRunStatus"]
        shown = f"{status['runState']}/{status['runSubState']} {status['startTime']}" if status else "never run"
        print(f"{view['name']}  {view['sha256'][:12]}  {shown}")
    return 0


def _template_show(args: argparse.Namespace, config: Config) -> int:
    state = store(config)
    view = _template_view(state, stored_templates.get(state, args.name))
    if args.json:
        emit(view)
        return 0
    status = view["properties"]["lastRunStatus"]
    print(f"{view['name']} (sha256 {view['sha256'][:12]}, created {view['createdAt']}, from {view['file']})")
    if status is None:
        print("  lastRunStatus: never run (`orchestrate run NAME` builds it)")
    else:
        print(f"  lastRunStatus: {status['runState']} ({status['runSubState']}) {status['startTime']} - "
              f"{status['endTime'] or '...'} {status['message']}")
    for output in view["runOutputs"]:
        props = output["properties"]
        print(f"  {output['name']}: {props['provisioningState']} {props.get('artifactUri') or ''}")
    print_proof(view["proof"])
    return 0


def _template_delete(args: argparse.Namespace, config: Config) -> int:
    removed = stored_templates.delete(config, store(config), args.name)
    if args.json:
        emit({"ok": True, "name": args.name, "runsRemoved": removed})
    else:
        print(f"template {args.name} deleted with {len(removed)} run record(s); published images stay")
    return 0


def _template_runs(args: argparse.Namespace, config: Config) -> int:
    state = store(config)
    saved = stored_templates.get(state, args.name)
    return _print_runs(args, state.runs(saved.name, limit=args.limit))


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# --- runs -------------------------------------------------------------------------------------
def _print_runs(args: argparse.Namespace, runs: list[dict[str, Any]]) -> int:
    if args.json:
        emit([{"id": r["id"], "templateName": r["template_name"], "host": r.get("host"),
               "lastRunStatus": last_run_status(r)} for r in runs])
    else:
        for r in runs:
            host = f"  on {r['host']}" if r.get("host") else ""
            print(f"{r['id']}  {r['template_name']}  {r['run_state']}/{r['run_sub_state']}{host}  {r['message'] or ''}")
    return 0


def cmd_runs(args: argparse.Namespace, config: Config) -> int:
    return _print_runs(args, store(config).runs(args.template, limit=args.limit))


def get_run(state, ref: str, template: str | None = None) -> dict[str, Any]:
    """A run by id, or a template name's latest run; with `template`, the run must be its."""
    run = state.run(ref)
    if run is None:
        latest = state.runs(ref, limit=1)
        if not latest:
            raise UsageError(f"no run {ref!r} (and no runs of a template of that name)",
                             hint="`orchestrate runs` lists them")
        run = latest[0]
    if template is not None and run["template_name"].lower() != template.lower():
        raise UsageError(f"run {run['id']} belongs to template {run['template_name']!r}, not {template!r}",
                         hint=f"`orchestrate template show-runs {template}` lists that template's runs")
    return run


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    state = store(config)
    run = get_run(state, args.run_id, args.template)
    data = {"id": run["id"], "templateName": run["template_name"], "source": run["source"],
            "resolvedVersion": run["resolved_version"], "buildDigest": run["build_digest"],
            "log": run["log_path"], "console": run.get("console_path"), "lastRunStatus": last_run_status(run),
            "runOutputs": state.outputs(run["id"]), "proof": run_proof(run), "host": run.get("host")}
    if args.json:
        emit(data)
    else:
        status = data["lastRunStatus"]
        print(f"{run['id']} {run['template_name']}: {status['runState']} ({status['runSubState']}) {status['message']}"
              + (f" [host {run['host']}]" if run.get("host") else ""))
        for output in data["runOutputs"]:
            print(f"  {output['name']}: {output['properties']['provisioningState']} {output['properties']['artifactUri'] or ''}")
        print_proof(data["proof"])
        print(f"  log: {run['log_path']}")
    return 0


def cmd_output(args: argparse.Namespace, config: Config) -> int:
    output = store(config).latest_output(args.template_name, args.run_output_name)
    if output is None:
        raise UsageError(f"no run output {args.run_output_name!r} for template {args.template_name!r}",
                         hint="`orchestrate runs` lists the templates that ran")
    if args.json:
        emit(output)
    else:
        props = output["properties"]
        print(f"{output['name']}: {props['provisioningState']} {props.get('artifactUri') or ''}")
    return 0


def cmd_cancel(args: argparse.Namespace, config: Config) -> int:
    """Canceling first (visible at once), then SIGTERM to the run's process (service/cancel.py).
    A second cancel says so; a finished run is an error."""
    from orchestrator.service.cancel import cancel_run

    state = store(config)  # a run whose process is gone is recovered here, and then has ended
    run = get_run(state, args.run_id, args.template)
    if not state.is_local(run):  # a fleet's run on another host, or on none yet
        from orchestrator.service import fleet

        if run["run_state"] not in ACTIVE:
            from orchestrator.service.runs import next_state
            next_state(run["run_state"], "cancel", run["id"])  # raises: it has ended
        result = fleet.cancel(config, state, run)
    else:
        result = cancel_run(state, run, lambda: store(config))
    if args.json:
        emit({"ok": True, "runId": result.run_id, "runState": "Canceling", "message": result.message})
    elif result.again:
        print(f"{result.message}; nothing more to do", file=sys.stderr)
    elif result.message != "cancel requested":  # a fleet's: what became of it
        print(f"{result.run_id}: {result.message}")
    else:
        print(f"cancel requested for {result.run_id} (Canceling)")
    return 0


def cmd_logs(args: argparse.Namespace, config: Config) -> int:
    state = store(config)
    run = get_run(state, args.run_id, args.template)
    path = run.get("console_path") if args.console else run["log_path"]
    if not path:
        raise UsageError(f"run {run['id']} kept no {'console' if args.console else 'log'}",
                         hint="the build VM's console is kept for runs that booted one")
    if not args.console and not state.is_local(run) and not Path(path).exists():
        return _shipped(config, state, run["id"], args.follow)  # built on another host of the fleet
    if args.follow:
        return _follow(config, state, run["id"], Path(path))
    try:
        with open(path, "rb") as log:
            shutil.copyfileobj(log, sys.stdout.buffer)
    except FileNotFoundError:
        if args.console and run["run_state"] in ACTIVE:
            return 0  # the VM has not booted yet
        raise UsageError(f"run {run['id']} has no file {path}",
                         hint="the run may not have booted a VM, or its directory was removed") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path} of run {run['id']}: {exc.strerror}") from None
    return 0


def _shipped(config: Config, state, run_id: str, follow: bool) -> int:
    """A fleet run's log as its host ships it into the database; with `follow`, until the run
    has ended and its host has shipped the rest (or, killed, could not: a few seconds' grace)."""
    from orchestrator.effects.log_shipping import SHIP_SECONDS, shipped

    seen, complete, ended_at = 0, False, None
    while True:
        ended = state.run(run_id)["run_state"] not in ACTIVE  # read before the chunks: none is missed
        for seen, text in shipped(state, run_id, seen):
            complete = complete or text == ""
            sys.stdout.write(text)
        sys.stdout.flush()
        if ended and ended_at is None:
            ended_at = time.monotonic()
        if not follow or complete or (ended_at is not None and time.monotonic() - ended_at > 10 * SHIP_SECONDS):
            return 0
        time.sleep(FOLLOW_POLL_SECONDS)  # the build's host ships its log every half second


def _follow(config: Config, state, run_id: str, path: Path) -> int:
    """Prints the file as it grows and returns when the run has ended and all of it is out."""
    out = sys.stdout.buffer
    handle = None
    try:
        while True:
            if handle is None and path.exists():
                handle = open(path, "rb")
            chunk = handle.read(65536) if handle else b""
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            run = state.run(run_id)
            if run is None or run["run_state"] not in ACTIVE:
                if handle is None and path.exists():
                    continue  # written just before the end: print it
                rest = handle.read() if handle else b""
                out.write(rest)
                out.flush()
                return 0
            if is_dead(run):  # killed: recovery ends it, and the next round prints the rest
                recover(config, state)
                continue
            time.sleep(FOLLOW_POLL_SECONDS)  # waiting for the build to write more
    finally:
        if handle:
            handle.close()
