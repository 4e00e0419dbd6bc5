"""`orchestrate nightly`, `trigger ...` and `schedule ...`: stored templates rebuilt in
dependency order (the verb the schedule runs), their SourceImage triggers, and the systemd timer
(or crontab line) that runs them nightly. Each reads arguments, calls the service, prints."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from orchestrator.commands import emit
from orchestrator.config import Config
from orchestrator.errors import ExitCode
from orchestrator.views import MODES


def add_parsers(sub: Any) -> None:
    parser_class = sub._parser_class
    nightly = sub.add_parser("nightly", help="build stored templates in dependency order; unchanged ones are skipped",
                             description="Builds the named stored templates (or --all) one after another, a "
                             "template that publishes an image before those that build from it. Unchanged "
                             "templates are skipped in seconds; a failure does not stop the others, but the "
                             "templates built on its images are skipped. Templates with a SourceImage trigger "
                             "whose source has a new version join unasked. Exit 0: none failed; "
                             f"{int(ExitCode.NIGHTLY_FAILED)}: one or more failed.")
    nightly.set_defaults(handler=cmd_nightly)
    nightly.add_argument("templates", nargs="*", metavar="TEMPLATE", help="stored template names")
    nightly.add_argument("--all", action="store_true", help="every stored template")
    nightly.add_argument("--force", action="store_true", help="build even what an identical run already built")
    nightly.add_argument("--progress", choices=MODES, default="none",
                         help="each build's progress on stderr (default: none; the summary goes to stdout)")
    nightly.add_argument("--json", action="store_true", help="the summary as JSON")

    trigger = sub.add_parser("trigger", help="SourceImage triggers of stored templates: create, list, delete")
    trigger.set_defaults(handler=cmd_trigger)
    actions = trigger.add_subparsers(dest="trigger_command", metavar="ACTION", parser_class=parser_class)
    actions.required = True
    create = actions.add_parser("create", help="rebuild TEMPLATE (in the nightly run) when its source has a new "
                                "version")
    create.add_argument("template")
    create.add_argument("name", help="the trigger's name (AIB's examples call it `source`)")
    create.add_argument("--kind", required=True, help="the trigger kind: SourceImage (the only one AIB has)")
    lst = actions.add_parser("list", help="list triggers and their status")
    lst.add_argument("template", nargs="?", help="only this template's")
    delete = actions.add_parser("delete", help="delete a trigger")
    delete.add_argument("template")
    delete.add_argument("name")
    for action in (create, lst, delete):
        action.add_argument("--json", action="store_true", help="machine-readable output")

    schedule = sub.add_parser("schedule", help="the nightly run as a systemd timer (or a crontab line)")
    schedule.set_defaults(handler=cmd_schedule)
    steps = schedule.add_subparsers(dest="schedule_command", metavar="ACTION", parser_class=parser_class)
    steps.required = True
    install = steps.add_parser("install", help="write orchestrator-nightly.service and .timer (enabled where "
                               "systemd runs) and print the equivalent crontab line")
    install.add_argument("templates", nargs="*", metavar="TEMPLATE", help="stored templates to run nightly")
    install.add_argument("--all", action="store_true", help="every stored template (as the night finds them)")
    when = install.add_mutually_exclusive_group()
    when.add_argument("--at", metavar="HH:MM", help="every day at this local time (default 02:00)")
    when.add_argument("--on-calendar", metavar="SPEC", help="a systemd OnCalendar specification (man systemd.time)")
    install.add_argument("--unit-dir", metavar="DIR", help="where the unit files go (default /etc/systemd/system)")
    show = steps.add_parser("show", help="the installed schedule")
    remove = steps.add_parser("remove", help="disable and remove the units `schedule install` wrote")
    remove.add_argument("--unit-dir", metavar="DIR", help="remove the units from this directory")
    for action in (install, show, remove):
        action.add_argument("--json", action="store_true", help="machine-readable output")


# --- nightly ---------------------------------------------------------------------------------
def cmd_nightly(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.errors import UsageError
    from orchestrator.service.nightly import outcome_line, run_nightly
    from orchestrator.views import open_view

    if bool(args.templates) == args.all:
        raise UsageError("name the templates to build, or pass --all (not both)",
                         hint="`orchestrate template list` shows the stored templates")

    def show(outcome) -> None:
        if not args.json:
            print(outcome_line(outcome), flush=True)

    sink, close = open_view(args.progress)
    try:
        summary = run_nightly(config, None if args.all else args.templates, force=args.force, on_outcome=show,
                              progress=None if args.progress == "none" else sink)
    finally:
        close()
    if args.json:
        emit(summary.as_dict())
    else:
        print(summary.line())
        print(f"  log: {summary.log_path}")
    return 0 if summary.ok else int(ExitCode.NIGHTLY_FAILED)


# --- triggers --------------------------------------------------------------------------------
def cmd_trigger(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.run_commands import store
    from orchestrator.service import triggers

    state = store(config)
    if args.trigger_command == "create":
        record = triggers.create(config, state, args.template, args.name, args.kind)
        (view,) = [v for v in triggers.listing(config, state, record.template_name) if v["name"] == record.name]
        if args.json:
            emit({"ok": True, **view})
        else:
            print(f"trigger {record.name} ({record.kind}) created on template {record.template_name}: "
                  f"{view['properties']['status']['message']}")
        return 0
    if args.trigger_command == "delete":
        triggers.delete(state, args.template, args.name)
        if args.json:
            emit({"ok": True, "templateName": args.template, "name": args.name})
        else:
            print(f"trigger {args.name} of template {args.template} deleted")
        return 0
    views = triggers.listing(config, state, args.template)
    if args.json:
        emit(views)
        return 0
    for view in views:
        status = view["properties"]["status"]
        print(f"{view['templateName']}  {view['name']}  {view['kind']}  {status['code']}: {status['message']}")
    if not views:
        print("no triggers (`orchestrate trigger create TEMPLATE NAME --kind SourceImage` adds one)", file=sys.stderr)
    return 0


# --- schedule --------------------------------------------------------------------------------
def cmd_schedule(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.service import schedule

    if args.schedule_command == "install":
        done = schedule.install(config, tuple(args.templates), args.all, args.at, args.on_calendar, args.unit_dir)
        if args.json:
            emit({"ok": True, **done.record})
            return 0
        record = done.record
        for path in done.written:
            print(f"wrote {path}")
        if done.enabled:
            print(f"enabled {schedule.units.TIMER} (OnCalendar={record['onCalendar']}): "
                  f"`systemctl list-timers {schedule.units.TIMER}` shows the next run")
        elif not schedule.systemd_running():
            print(f"systemd is not running here (no {schedule.SYSTEMD_RUNNING})"
                  + ("; the units are written but not enabled" if done.written
                     else "; no units written (give --unit-dir DIR to write them)"))
        else:
            print(f"the units are in {record['unitDir']}, not enabled (systemd reads "
                  f"{schedule.SYSTEM_UNIT_DIR}; `systemctl link` them, or install without --unit-dir)")
        if done.crontab:
            print("the equivalent crontab line (`crontab -e` to add it):")
            print(f"  {done.crontab}")
        else:
            print(f"no crontab line says OnCalendar={record['onCalendar']}; use --at HH:MM for one")
        return 0
    if args.schedule_command == "show":
        record = schedule.show(config)
        if args.json:
            emit({"installed": record is not None, **(record or {})})
            return 0
        if record is None:
            print("no nightly schedule installed (`orchestrate schedule install` installs one)")
            return 0
        templates = record["templates"]
        print(f"nightly at OnCalendar={record['onCalendar']}: "
              f"{'all stored templates' if templates == 'all' else ', '.join(templates)} "
              f"(installed {record['installedAt']})")
        print(f"  runs: {' '.join(record['command'])}")
        for path, present in record["unitsPresent"].items():
            print(f"  {path}{'' if present else ' (missing)'}")
        print(f"  timer enabled: {'yes' if record['enabled'] else 'no'}")
        if record["crontab"]:
            print(f"  crontab: {record['crontab']}")
        if record["lastNightlyLog"]:
            print(f"  last nightly log: {record['lastNightlyLog']}")
        return 0
    removed = schedule.remove(config, args.unit_dir)
    if args.json:
        emit({"ok": True, "removed": removed})
    else:
        for path in removed:
            print(f"removed {path}")
        print("schedule removed (remove the crontab line too, if you added it: `crontab -e`)")
    return 0

