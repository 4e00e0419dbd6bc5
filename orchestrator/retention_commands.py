"""`orchestrate prune [TEMPLATE ...] [--dry-run] [--json]`: retention of gallery versions and
VHD files per template ([retention] keep_versions, keep_vhds; the options override them).
Each deletion and each reason to keep is printed as it happens; `--json` prints one document
at the end. A deletion that fails (libvirt down, a file that cannot be removed) is reported
with the others and makes the exit code 6."""
from __future__ import annotations

import argparse
from typing import Any

from orchestrator.config import Config
from orchestrator.errors import ExitCode


def add_parsers(sub: Any) -> None:
    text = "delete a template's older gallery versions and VHDs ([retention] keep_versions, keep_vhds)"
    prune = sub.add_parser("prune", help=text, description=text + "; never a stored template's source, what "
                           "latest resolves to, or what an active run or a newer run output uses")
    prune.add_argument("templates", nargs="*", metavar="TEMPLATE",
                       help="template names (default: every template that is stored or has runs)")
    prune.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")
    prune.add_argument("--keep-versions", type=int, metavar="N",
                       help="versions kept per template and image definition (overrides the configuration; 0: all)")
    prune.add_argument("--keep-vhds", type=int, metavar="N",
                       help="VHD files kept per template and runOutputName (overrides the configuration; 0: all)")
    prune.add_argument("--json", action="store_true", help="machine-readable output")
    prune.set_defaults(handler=cmd_prune)


def cmd_prune(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.commands import emit
    from orchestrator.run_commands import store
    from orchestrator.service.retention import Outcome, policy_of, prune

    policy = policy_of(config, args.keep_versions, args.keep_vhds)
    state = store(config)  # runs whose process died are ended first: they use nothing any more

    def say(template: str, outcome: Outcome) -> None:
        if not args.json:
            print(f"{template}: {outcome.line()}", flush=True)

    if not args.json and policy.keep_versions is None and policy.keep_vhds is None:
        print("retention is not configured ([retention] keep_versions, keep_vhds, or --keep-versions, "
              "--keep-vhds): everything is kept")
    reports = prune(config, state, args.templates, policy=policy, dry_run=args.dry_run, say=say)
    failed = [o for r in reports for o in r.failed]
    if args.json:
        emit({"ok": not failed, "dryRun": args.dry_run, "templates": [r.as_dict() for r in reports]})
    else:
        for report in reports:
            counts = report.as_dict()["counts"]
            done = f"{counts['would-delete']} would be deleted" if args.dry_run else f"{counts['deleted']} deleted"
            print(f"{report.template}: {done}, {counts['kept']} kept"
                  + (f", {counts['failed']} failed" if counts["failed"] else ""))
    return int(ExitCode.ENVIRONMENT) if failed else 0
