"""The fleet's verbs: `orchestrate worker` (this build host's Celery worker; `--unit` writes its
systemd unit), `orchestrate fleet status`, and `fleet-build RUN`, the build process a worker
starts for each run it takes. `run` and `build` on a host with [fleet] submit to the fleet
(run_commands.py calls `submit_and_wait` here)."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.errors import ExitCode, OrchestratorError, UsageError

WAIT_POLL_SECONDS = 0.5
UNIT_PATH = Path("/etc/systemd/system/orchestrate-worker.service")


def add_parsers(sub: Any) -> None:
    text = "run this build host's worker of the fleet ([fleet] in the configuration)"
    worker = sub.add_parser("worker", help=text, description=text + ": it takes runs from the queues of its "
                            "labels and builds them, one per build slot")
    worker.set_defaults(handler=cmd_worker)
    worker.add_argument("--concurrency", type=int, default=1, metavar="N",
                        help="runs built at once (default 1; [capacity] still limits what they use together)")
    worker.add_argument("--unit", nargs="?", const=str(UNIT_PATH), metavar="FILE",
                        help=f"write a systemd unit that runs this worker (default {UNIT_PATH}) and stop")
    fleet = sub.add_parser("fleet", help="the fleet's hosts, their runs and the queues").add_subparsers(
        dest="fleet_command", metavar="ACTION", parser_class=sub._parser_class)
    fleet.required = True
    status = fleet.add_parser("status", help="hosts, labels, capacity in use, runs on each, queue depth per label")
    status.set_defaults(handler=cmd_fleet_status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    one = sub.add_parser("fleet-build")  # no help: the worker's own build process
    one.set_defaults(handler=cmd_fleet_build)
    one.add_argument("run_id")


def _need_fleet(config: Config) -> None:
    if config.fleet is None:
        raise UsageError(f"this host is not in a fleet: {config.setting_source()} has no [fleet] section",
                         hint="see the README's fleet section ([fleet] broker, database, host, labels)")


def cmd_worker(args: argparse.Namespace, config: Config) -> int:
    _need_fleet(config)
    if args.concurrency < 1:
        raise UsageError(f"--concurrency {args.concurrency} is not a positive number of build slots")
    if args.unit:
        return _write_unit(Path(args.unit), config, args.concurrency)
    from orchestrator.fleet_worker import Worker

    return Worker(config, args.concurrency, lambda line: print(line, file=sys.stderr, flush=True)).run()


def _write_unit(path: Path, config: Config, concurrency: int) -> int:
    from orchestrator.effects.files import write_atomic

    command = [sys.executable, "-m", "orchestrator", "--home", str(config.home)]
    if config.config_file:
        command += ["--config", str(config.config_file)]
    command += ["worker", "--concurrency", str(concurrency)]
    unit = f"""[Unit]
Description=orchestrator build worker ({config.fleet.host})
Wants=network-online.target
After=network-online.target libvirtd.service

[Service]
ExecStart={shlex.join(command)}
# SIGTERM: Celery's warm shutdown takes no new runs and waits for the running ones
KillMode=mixed
TimeoutStopSec=infinity
Restart=on-failure
RestartSec=5
UMask=0077

[Install]
WantedBy=multi-user.target
"""
    try:
        write_atomic(path, unit)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}", hint="run as root, or give --unit FILE") from None
    print(f"wrote {path}; start it with: systemctl daemon-reload && systemctl enable --now {path.stem}")
    return 0


def cmd_fleet_status(args: argparse.Namespace, config: Config) -> int:
    from orchestrator.commands import emit
    from orchestrator.effects.broker import queue_depths
    from orchestrator.effects.state import StateStore
    from orchestrator.service import fleet

    _need_fleet(config)
    state = StateStore.for_config(config)
    labels = sorted({label for host in _hosts(state) for label in host.labels} | {"linux"})
    try:
        depths = queue_depths(config, labels)
        broker_error = None
    except OrchestratorError as exc:
        depths, broker_error = {}, exc.message
    data = fleet.status(config, state, depths)
    data["broker"] = {"reachable": broker_error is None, "error": broker_error}
    if args.json:
        emit(data)
        return 0
    for host in data["hosts"]:
        use = host["inUse"]
        cap = host["capacity"]
        print(f"{host['name']}  {'alive' if host['alive'] else 'GONE '}  labels {','.join(host['labels'])}  "
              f"{use['cpus']}/{cap['cpus']} vCPU  {use['memoryMiB']}/{cap['memoryMiB']} MiB  "
              f"heartbeat {host['lastHeartbeat'] or 'never'}"
              + (f"  serves images at {host['servesImages']}" if host["servesImages"] else ""))
        for run in host["runs"]:
            print(f"    {run['id']}  {run['templateName']}  {run['runState']}/{run['runSubState']}")
    for queue in data["queues"]:
        extra = f", {queue['brokerMessages']} message(s) in the broker" if queue.get("brokerMessages") else ""
        print(f"queue {queue['label']}: {queue['queued']} run(s) waiting{extra}")
        for run in queue["runs"]:
            print(f"    {run['id']}  {run['templateName']}  {run['message'] or ''}")
    if broker_error:
        print(f"broker: {broker_error}", file=sys.stderr)
    return 0


def _hosts(state):
    from orchestrator.effects import fleet_state

    return fleet_state.hosts(state)


def cmd_fleet_build(args: argparse.Namespace, config: Config) -> int:
    """The build of one run a worker took: as `orchestrate run` builds on one host."""
    from orchestrator.core.document import load_document
    from orchestrator.effects.state import StateStore
    from orchestrator.engine import Engine
    from orchestrator.service import templates as stored_templates
    from orchestrator.service.progress import Reporter
    from orchestrator.service.runs import ACTIVE, Runs
    from orchestrator.views import open_view

    _need_fleet(config)
    state = StateStore.for_config(config)
    run = state.run(args.run_id)
    if run is None or run["run_state"] not in ACTIVE or not state.is_local(run):
        raise UsageError(f"run {args.run_id} is not one this host has taken",
                         hint="`orchestrate worker` starts this for the runs it takes")
    request = json.loads(run["request"] or "{}")
    options = request.get("options", {})
    try:
        if "body" in request:
            text = request["body"]
            template = load_document(text, run["template_path"] or run["template_name"], request.get("parameters", {}),
                                     config.arm_functions())
        else:
            stored = stored_templates.get(state, run["template_name"])
            if run["template_sha256"] and stored.sha256 != run["template_sha256"]:
                raise UsageError(f"template {stored.name} changed after run {run['id']} was submitted "
                                 f"(sha256 {run['template_sha256'][:12]}, now {stored.sha256[:12]})",
                                 hint=f"`orchestrate run {stored.name}` builds what is stored now")
            template, text = stored.load(config), stored.body
        from orchestrator.effects.log_shipping import LogShipper

        sink, close = open_view("plain")
        try:
            shipper = LogShipper(state, run["id"], config.runs_dir / run["id"] / "customization.log")
            with shipper:
                result = Engine(config).build(
                    template, run["template_name"], text, run["template_path"], Reporter(sink),
                    force=bool(options.get("force")), template_sha256=run["template_sha256"],
                    proof=options.get("proof"), resume=options.get("resume"),
                    checkpoints=options.get("checkpoints", True), run_id=run["id"])
        finally:
            close()
    except OrchestratorError as exc:  # refused before the engine recorded an end: the run ends with it
        if (state.run(run["id"]) or {}).get("run_state") in ACTIVE:
            Runs(state).end(run["id"], "fail", exc.message)
        raise
    return int(ExitCode.PARTIALLY_SUCCEEDED) if result.run_state == "PartiallySucceeded" else 0


def submit_and_wait(args: argparse.Namespace, config: Config, template: Any, name: str, text: str,
                    template_path: str | None, template_sha256: str | None, one_shot: bool) -> int:
    """`run` / `build` on a fleet host: the run is recorded and sent to the fleet; unless
    --no-wait, this waits for its end (any host may build it) and prints it as one host does."""
    from orchestrator.commands import emit
    from orchestrator.run_commands import store
    from orchestrator.service import fleet
    from orchestrator.service.runs import ACTIVE

    state = store(config)
    options = {"force": args.force, "proof": False if args.no_proof else None, "resume": args.resume,
               "checkpoints": not args.no_checkpoints}
    submitted = fleet.submit(config, state, template, name, template_path, template_sha256, options,
                             body=text if one_shot else None,
                             parameters=getattr(args, "resolved_parameters", None) if one_shot else None)
    quiet = args.json or args.progress == "none"
    if not quiet:
        print(f"run {submitted.run_id}: {submitted.message}", file=sys.stderr)
    if getattr(args, "no_wait", False):
        if args.json:
            emit({"ok": True, "runId": submitted.run_id, "runState": "Running", "runSubState": "Queued",
                  "message": submitted.message})
        return 0
    said = (None, None)
    while True:
        run = state.run(submitted.run_id)
        now = (run["host"], run["run_sub_state"])
        if now != said and not quiet:
            print(f"run {run['id']}: {run['run_sub_state']}" + (f" on {run['host']}" if run["host"] else "")
                  + (f" ({run['message']})" if run["run_sub_state"] == "Queued" and run["message"] else ""),
                  file=sys.stderr)
            said = now
        if run["run_state"] not in ACTIVE:
            break
        time.sleep(WAIT_POLL_SECONDS)  # another host builds it: its record is all there is to watch
    outputs = state.outputs(run["id"])
    code = {"Succeeded": 0, "PartiallySucceeded": int(ExitCode.PARTIALLY_SUCCEEDED),
            "Canceled": int(ExitCode.CANCELED)}.get(run["run_state"], int(ExitCode.BUILD_FAILED))
    if args.json:
        emit({"ok": code == 0, "runId": run["id"], "runState": run["run_state"], "message": run["message"],
              "host": run["host"], "log": run["log_path"], "runOutputs": outputs})
        return code
    print(f"run {run['id']}: {run['run_state']} on {run['host'] or 'no host'}"
          + (f": {run['message']}" if code else ""))
    for output in outputs:
        props = output["properties"]
        print(f"  {output['name']}: {props['provisioningState']} {props.get('path', props.get('artifactId')) or ''}")
    print(f"  log: {run['log_path']} (on {run['host']})")
    return code
