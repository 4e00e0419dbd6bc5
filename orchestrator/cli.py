"""The `orchestrate` command: the only place that prints and chooses exit codes."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Sequence

from orchestrator import __version__
from orchestrator.config import load_config
from orchestrator.core.redact import scrub
from orchestrator.errors import ExitCode, OrchestratorError, TemplateInvalid, UsageError
from orchestrator.views import MODES

INTERNAL_ERROR = 70


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit is 2 with usage: keep, but as our error
        raise UsageError(message, hint=f"see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="orchestrate", description="Build Azure VM Image Builder templates on local KVM/QEMU hosts.")
    parser.add_argument("--version", action="version", version=f"orchestrate {__version__}")
    parser.add_argument("--home", help="data home (default: $ORCHESTRATOR_HOME or ~/.local/share/orchestrator)")
    parser.add_argument("--config", metavar="FILE",
                        help="configuration file (default: $ORCHESTRATOR_CONFIG or config.toml in the data home)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def template_command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("template", help="image template JSON (or an ARM deployment template holding one)")
        p.add_argument("--parameters", metavar="FILE", help="ARM parameters file for a deployment template")
        p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                       help="an ARM parameter value (repeatable; overrides --parameters)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--strict", action="store_true",
                       help="warnings (what AIB would ignore or coerce) are errors")
        return p

    template_command("validate", "check a template and report every problem")
    template_command("plan", "show what would be built, without building")
    render = template_command("render", "print the Packer HCL for a template")
    render.add_argument("-o", "--output", metavar="DIR",
                        help="write build.pkr.hcl and every file it references into DIR")
    build = template_command("build", "build a template to its distribution targets (one-shot)")
    build.add_argument("--name", help="template name for state and outputs (default: the file name)")
    run = sub.add_parser("run", help="build a stored template (`template create` stores one)",
                         description="build a stored template (`template create` stores one)")
    run.add_argument("name", help="stored template name")
    run.add_argument("--json", action="store_true", help="machine-readable result (progress as JSON lines on stderr)")
    for p in (build, run):
        p.add_argument("--force", action="store_true", help="build even if an identical build already succeeded")
        p.add_argument("--no-proof", action="store_true",
                       help="do not boot and check the finished image before distributing it (the deploy proof)")
        p.add_argument("--resume", metavar="RUN",
                       help="resume a failed or canceled run from the checkpoint before the step that failed")
        p.add_argument("--no-checkpoints", action="store_true",
                       help="start from the source image, not from a stored checkpoint of unchanged steps")
        p.add_argument("--progress", choices=MODES, default=None,
                       help="progress on stderr: live (a terminal's default), plain lines, json lines, none")
        p.add_argument("--no-wait", action="store_true",
                       help="with [fleet]: return once the run is submitted (`status RUN` follows it)")

    tmpl = sub.add_parser("template", help="stored templates: create, list, show, delete, show-runs").add_subparsers(
        dest="template_command", metavar="ACTION", parser_class=_Parser)
    tmpl.required = True
    create = tmpl.add_parser("create", help="store a template (validated) under NAME")
    create.add_argument("name")
    create.add_argument("file", help="image template JSON (or an ARM deployment template holding one)")
    create.add_argument("--parameters", metavar="FILE", help="ARM parameters file for a deployment template")
    create.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="an ARM parameter value (repeatable; overrides --parameters)")
    create.add_argument("--update", action="store_true", help="replace a stored template of that name")
    create.add_argument("--strict", action="store_true", help="warnings are errors")
    create.add_argument("--json", action="store_true")
    for action, text in (("list", "list stored templates"), ("show", "a template's lastRunStatus and run outputs"),
                         ("delete", "delete a template and its run records (never published images)"),
                         ("show-runs", "list a template's runs")):
        p = tmpl.add_parser(action, help=text)
        if action != "list":
            p.add_argument("name")
        if action == "show-runs":
            p.add_argument("--limit", type=int, default=50)
        p.add_argument("--json", action="store_true")

    image = sub.add_parser("image", help="manage the local base image catalog").add_subparsers(
        dest="image_command", metavar="ACTION", parser_class=_Parser)
    image.required = True
    imp = image.add_parser("import", help="import a qcow2/raw disk as a PlatformImage version")
    imp.add_argument("file")
    for field in ("publisher", "offer", "sku", "version"):
        imp.add_argument(f"--{field}", required=True)
    imp.add_argument("--replace", action="store_true", help="replace an already imported version")
    imp.add_argument("--json", action="store_true")
    lst = image.add_parser("list", help="list imported base images")
    lst.add_argument("--json", action="store_true")

    runs = sub.add_parser("runs", help="list recent runs")
    runs.add_argument("--template", help="only runs of this template name")
    runs.add_argument("--limit", type=int, default=50)
    runs.add_argument("--json", action="store_true")
    run_help = "a run id, or a template name for its latest run"
    status = sub.add_parser("status", help="show one run (lastRunStatus and run outputs)")
    status.add_argument("run_id", metavar="RUN", help=run_help)
    status.add_argument("--json", action="store_true")
    output = sub.add_parser("output", help="show a run output by runOutputName (latest run of a template)")
    output.add_argument("template_name")
    output.add_argument("run_output_name")
    output.add_argument("--json", action="store_true")
    cancel = sub.add_parser("cancel", help="cancel a run (queued or building)")
    cancel.add_argument("run_id", metavar="RUN", help=run_help)
    cancel.add_argument("--json", action="store_true")
    logs = sub.add_parser("logs", help="print a run's customization.log")
    logs.add_argument("run_id", metavar="RUN", help=run_help)
    logs.add_argument("-f", "--follow", action="store_true", help="follow the log until the run ends")
    logs.add_argument("--console", action="store_true", help="the build VM's serial console instead")
    for p in (status, cancel, logs):
        p.add_argument("--template", help="the run must be this template's")
    # verbs with their own modules: the image store, provenance, nightly runs, retention, checkpoints
    from orchestrator import (checkpoint_commands, fleet_commands, nightly_commands, provenance_commands,
                              retention_commands, serve_commands, store_commands)

    for module in (store_commands, provenance_commands, nightly_commands, retention_commands, checkpoint_commands,
                   serve_commands, fleet_commands):
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Everything orchestrate creates (data home, keys, scripts, logs, images) is owner-only.
    os.umask(os.umask(0o077) | 0o077)
    debug = "--debug" in args_list
    want_json = "--json" in args_list
    try:
        args = build_parser().parse_args(args_list)
        return _dispatch(args)
    except OrchestratorError as exc:
        _report_error(exc, want_json)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return int(ExitCode.CANCELED)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: say so plainly, traceback only on request
        if debug:
            traceback.print_exc()
        print(f"internal error: {type(exc).__name__}: {scrub(str(exc))}", file=sys.stderr)
        print("  hint: this is a bug in orchestrator; run again with --debug and report the traceback",
              file=sys.stderr)
        return INTERNAL_ERROR


def _report_error(exc: OrchestratorError, want_json: bool) -> None:
    problems = exc.problems if isinstance(exc, TemplateInvalid) else []
    warnings = exc.warnings if isinstance(exc, TemplateInvalid) else []
    if want_json:  # scrub: a problem may quote a signed URL as the template wrote it
        run = {"runId": exc.run_id, "log": exc.log_path} if getattr(exc, "run_id", None) else {}
        print(scrub(json.dumps({"ok": False, **run, "error": {
            "kind": type(exc).__name__, "message": exc.message, "hint": exc.hint, "exitCode": int(exc.exit_code),
            "problems": [p.as_dict() for p in problems]}, "warnings": [w.as_dict() for w in warnings]}, indent=2)))
        return
    from orchestrator.commands import print_problems

    print(f"error: {scrub(exc.message)}", file=sys.stderr)
    print_problems(problems, indent="  ")
    if exc.hint:
        print(f"  hint: {scrub(exc.hint)}", file=sys.stderr)
    print_problems(warnings)



def _dispatch(args: argparse.Namespace) -> int:
    from orchestrator import commands, run_commands

    config = load_config(args.home, args.config)
    verb = f"cmd_{args.command}"
    handler = (getattr(args, "handler", None) or getattr(run_commands, verb, None) or getattr(commands, verb))
    return handler(args, config)


if __name__ == "__main__":
    sys.exit(main())
