"""`orchestrate checkpoints list|prune`: the disk checkpoints builds keep after each customizer
(qcow2 layers under the data home's checkpoints/, capped by [checkpoints] max_gib). A
checkpoint an active run started from or is writing, and every layer below it, is never
removed; an unlink that fails is reported and makes the exit code 6."""
from __future__ import annotations

import argparse
import time
from typing import Any

from orchestrator.config import Config
from orchestrator.errors import ExitCode, UsageError

KEY_PREFIX = 12


def add_parsers(sub: Any) -> None:
    text = "disk checkpoints kept after each customizer (resume, incremental rebuilds): list, prune"
    checkpoints = sub.add_parser("checkpoints", help=text, description=text)
    checkpoints.set_defaults(handler=cmd_checkpoints)
    actions = checkpoints.add_subparsers(dest="checkpoints_command", metavar="ACTION", parser_class=sub._parser_class)
    actions.required = True
    lst = actions.add_parser("list", help="list checkpoints: key, template, step, size, age, last use, run, in use")
    lst.add_argument("--template", help="only this template's checkpoints")
    prune = actions.add_parser(
        "prune", help="remove unused checkpoints",
        description="Removes checkpoints no active run uses: every one (--all), a template's (--template), or "
                    "those not used for DAYS days (--older-than; with --template: both must hold). Without any "
                    "of these, removes the least recently used until the rest fits [checkpoints] max_gib. A "
                    "layer that another checkpoint which stays is built on is kept.")
    prune.add_argument("--template", help="only this template's checkpoints")
    prune.add_argument("--all", action="store_true", help="every unused checkpoint")
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="only those not used for DAYS days")
    for action in (lst, prune):
        action.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_checkpoints(args: argparse.Namespace, config: Config) -> int:
    return {"list": _list, "prune": _prune}[args.checkpoints_command](args, config)


def _store(config: Config, write: bool):
    from orchestrator.effects.checkpoint_store import CheckpointStore
    from orchestrator.run_commands import store

    if not write and not config.database_url and not config.db_path.is_file():
        return None  # nothing was ever built: nothing to list, and no data home is created
    return CheckpointStore(config, store(config))  # runs whose process died are ended first


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _ago(t: float, now: float) -> str:
    seconds = max(0.0, now - t)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def shown(cp: Any, in_use: str | None = None) -> dict[str, Any]:
    """A checkpoint as `--json` prints it."""
    return {"key": cp.key, "template": cp.template_name, "stepIndex": cp.step_index, "stepName": cp.step_name,
            "runId": cp.run_id, "path": cp.path, "parent": cp.parent, "sizeBytes": cp.size_bytes,
            "sha256": cp.sha256, "warm": cp.warm, "stateBytes": cp.state_bytes,
            "createdTime": _stamp(cp.created_at), "lastUsedTime": _stamp(cp.last_used_at),
            "inUse": in_use is not None, "inUseReason": in_use}


def _cap(config: Config) -> str:
    return f"{config.checkpoints_max_bytes / 2**30:g} GiB"


def _list(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.commands import emit

    store = _store(config, write=False)
    rows = store.listing(args.template) if store is not None else []
    in_use = store.protected() if store is not None else {}
    total = store.total_bytes() if store is not None else 0
    if args.json:
        emit({"checkpoints": [shown(cp, in_use.get(cp.path)) for cp in rows], "totalBytes": total,
              "capBytes": config.checkpoints_max_bytes, "enabled": config.checkpoints_enabled})
        return 0
    now = time.time()
    if rows:
        print(f"{'KEY':{KEY_PREFIX}}  {'TEMPLATE':20} {'STEP':24} {'SIZE':>11} {'KIND':5} {'STATE':>10} "
              f"{'AGE':>5} {'USED':>5}  RUN")
    for cp in rows:
        step = f"{cp.step_index} {cp.step_name}"
        flag = "  in use" if cp.path in in_use else ""
        print(f"{cp.key[:KEY_PREFIX]}  {cp.template_name[:20]:20} {step[:24]:24} {_mib(cp.size_bytes):>11} "
              f"{'warm' if cp.warm else 'cold':5} {_mib(cp.state_bytes) if cp.warm else '-':>10} "
              f"{_ago(cp.created_at, now):>5} {_ago(cp.last_used_at, now):>5}  {cp.run_id}{flag}")
    shown_total = sum(cp.total_bytes for cp in rows)
    scope = f" of template {args.template}" if args.template else ""
    print(f"{len(rows)} checkpoint(s){scope}, {_mib(shown_total)}; all checkpoints take {_mib(total)} of the "
          f"{_cap(config)} cap" + ("" if config.checkpoints_enabled else " (checkpoints are disabled)"))
    return 0


def _prune(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.commands import emit

    if args.older_than is not None and args.older_than < 0:
        raise UsageError(f"--older-than {args.older_than:g} is negative", hint="give a number of days, 0 or more")
    store = _store(config, write=True)
    report = store.prune(args.template, args.older_than, args.all)
    failed = [r for r in report.removed if r.error]
    freed = sum(r.checkpoint.total_bytes for r in report.removed if r.checkpoint and not r.error)
    total = store.total_bytes()
    if args.json:
        emit({"ok": not failed,
              "removed": [{**(shown(r.checkpoint) if r.checkpoint else {"path": r.path}), "reason": r.reason,
                           "error": r.error} for r in report.removed],
              "kept": [{**shown(k.checkpoint, k.reason), "reason": k.reason} for k in report.kept],
              "freedBytes": freed, "totalBytes": total, "capBytes": config.checkpoints_max_bytes})
        return int(ExitCode.ENVIRONMENT) if failed else 0
    for removed in report.removed:
        what = _line(removed.checkpoint) if removed.checkpoint else f"unregistered file {removed.path}"
        print(f"{'failed to remove' if removed.error else 'removed'} {what}: {removed.error or removed.reason}")
    for kept in report.kept:
        print(f"kept {_line(kept.checkpoint)}: {kept.reason}")
    print(f"{len(report.removed) - len(failed)} removed ({_mib(freed)} freed), {len(report.kept)} kept"
          + (f", {len(failed)} failed" if failed else "") + f"; checkpoints take {_mib(total)} of the {_cap(config)} cap")
    return int(ExitCode.ENVIRONMENT) if failed else 0


def _line(cp: Any) -> str:
    return f"{cp.key[:KEY_PREFIX]} step {cp.step_index} {cp.step_name!r} of {cp.template_name} (run {cp.run_id}), " \
           f"{_mib(cp.size_bytes)}"
