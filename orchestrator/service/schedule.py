"""Installs, shows and removes the nightly schedule: orchestrator-nightly.service and .timer
(core/schedule.py writes their text) in /etc/systemd/system by default, enabled with systemctl
where systemd runs; where it does not (no /run/systemd/system), the units are written only to
a --unit-dir that is asked for, and the equivalent crontab line is given. What was installed is
recorded in the data home (nightly/schedule.json), so that `show` and `remove` find it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import __version__
from orchestrator.config import ACCEL_ENV, ARM_ENV, Config
from orchestrator.core import schedule as units
from orchestrator.effects.files import write_atomic
from orchestrator.effects.state import StateStore
from orchestrator.errors import EnvironmentProblem, UsageError
from orchestrator.service import templates as stored_templates
from orchestrator.service.nightly import nightly_dir

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEMD_RUNNING = Path("/run/systemd/system")  # sd_booted(): systemd is PID 1
UNIT_MODE = 0o644


@dataclass(frozen=True)
class Installed:
    record: dict[str, Any]
    written: tuple[str, ...]  # unit files written ((): none)
    enabled: bool  # systemctl enable --now ran
    crontab: str | None


def systemd_running() -> bool:
    return SYSTEMD_RUNNING.is_dir()


def orchestrate_command() -> list[str]:
    """This orchestrate, by absolute path: the console script that runs now, the one next to
    this Python, or on PATH; else this Python with `-m orchestrator`."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "orchestrate" and argv0.is_file():
        return [str(argv0.absolute())]
    for candidate in (Path(sys.executable).parent / "orchestrate", shutil.which("orchestrate")):
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return [str(Path(candidate).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "orchestrator"]


def _environment() -> tuple[tuple[str, str], ...]:
    """The orchestrator settings of this environment that the scheduled run must see too."""
    names = (ACCEL_ENV, *ARM_ENV)
    return tuple((n, os.environ[n]) for n in names if os.environ.get(n))


def _record_path(config: Config) -> Path:
    return nightly_dir(config) / "schedule.json"


def verify_calendar(calendar: str) -> None:
    """`systemd-analyze calendar` judges a spec where it is installed (it needs no running systemd)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return
    done = subprocess.run([tool, "calendar", calendar], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["not understood"])[-1]
        raise UsageError(f"--on-calendar {calendar!r} is not a calendar specification: {why}",
                         hint="e.g. \"*-*-* 02:30:00\", \"Mon..Fri 03:00\" or \"daily\" (man systemd.time)")


def install(config: Config, templates: tuple[str, ...], all_templates: bool, at: str | None,
            on_calendar: str | None, unit_dir: str | None) -> Installed:
    if bool(templates) == all_templates:
        raise UsageError("name the templates to run nightly, or pass --all (not both)",
                         hint="`orchestrate template list` shows the stored templates")
    calendar = units.on_calendar(at, on_calendar)
    if on_calendar is not None:
        verify_calendar(calendar)
    state = StateStore.for_config(config.ensure())
    names = tuple(stored_templates.get(state, n).name for n in templates)  # each must be stored
    config_file = str(config.config_file.resolve()) if config.config_file else None
    home = str(config.home.absolute())
    command = units.nightly_command(orchestrate_command(), home, config_file, names)
    environment = _environment()
    text = units.render_units(command, calendar, home, environment, __version__)
    crontab = units.crontab_line(calendar, command, environment)
    systemd = systemd_running()
    directory = Path(unit_dir).expanduser().absolute() if unit_dir else SYSTEM_UNIT_DIR
    written: list[str] = []
    if unit_dir or systemd:
        for name, content in ((units.SERVICE, text.service), (units.TIMER, text.timer)):
            path = directory / name
            _refuse_foreign(path)
            try:
                write_atomic(path, content, mode=UNIT_MODE)
            except PermissionError:
                raise EnvironmentProblem(f"cannot write {path}: permission denied",
                                         hint="run as root, or give --unit-dir DIR") from None
            written.append(str(path))
    enabled = False
    if systemd and directory == SYSTEM_UNIT_DIR:
        _systemctl("daemon-reload")
        _systemctl("enable", "--now", units.TIMER)
        enabled = True
    record = {"onCalendar": calendar, "templates": list(names) or "all", "command": command,
              "environment": dict(environment), "unitDir": str(directory) if written else None,
              "units": written, "systemd": systemd, "enabled": enabled, "crontab": crontab,
              "installedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomic(_record_path(config), json.dumps(record, indent=2))
    return Installed(record, tuple(written), enabled, crontab)


def _refuse_foreign(path: Path) -> None:
    """A unit of that name that `schedule install` did not write is not overwritten."""
    try:
        head = path.read_text(errors="replace")[:200]
    except FileNotFoundError:
        return
    except OSError as exc:
        raise EnvironmentProblem(f"cannot read {path}: {exc.strerror}") from None
    if not head.startswith(units.MARKER):
        raise UsageError(f"{path} exists and was not written by `orchestrate schedule install`",
                         hint="move it away, or give another --unit-dir")


def _systemctl(*args: str) -> None:
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise EnvironmentProblem(f"`systemctl {' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}",
                                 hint="the unit files are written; check `systemctl status` and the journal")


def show(config: Config) -> dict[str, Any] | None:
    """The recorded schedule, whether its units are still there, and the latest nightly log."""
    try:
        record = json.loads(_record_path(config).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise EnvironmentProblem(f"cannot read {_record_path(config)}: {exc}",
                                 hint="`orchestrate schedule install` writes it again") from None
    record["unitsPresent"] = {path: Path(path).is_file() for path in record.get("units", [])}
    logs = sorted(nightly_dir(config).glob("*.log"))
    record["lastNightlyLog"] = str(logs[-1]) if logs else None
    return record


def remove(config: Config, unit_dir: str | None) -> list[str]:
    """Disables the timer (where systemd runs and it was enabled), removes the units that
    `install` wrote and the record; returns the files removed."""
    record = show(config) or {}
    paths = [Path(p) for p in record.get("units", [])]
    if unit_dir:
        paths = [Path(unit_dir).expanduser().absolute() / n for n in (units.SERVICE, units.TIMER)]
    if not record and not unit_dir:
        raise UsageError("no nightly schedule is installed for this data home",
                         hint="`orchestrate schedule install` installs one")
    if record.get("enabled") and systemd_running():
        _systemctl("disable", "--now", units.TIMER)
    removed = []
    for path in paths:
        if path.is_file():
            _refuse_foreign(path)
            path.unlink()
            removed.append(str(path))
    if record.get("enabled") and systemd_running():
        _systemctl("daemon-reload")
    _record_path(config).unlink(missing_ok=True)
    return removed
