"""The nightly schedule as text: a systemd service and timer that run `orchestrate nightly`, and
the crontab line that does the same where systemd is absent. Pure: no I/O.

The service is Type=oneshot (one nightly run, then it is done; a failed template makes the
unit fail, since `nightly` exits nonzero); the timer's OnCalendar is `--at HH:MM` as a daily
`*-*-* HH:MM:00` or a calendar spec given as it is, with Persistent=true so that a night the
host was off is caught up at boot.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from orchestrator.errors import UsageError

SERVICE = "orchestrator-nightly.service"
TIMER = "orchestrator-nightly.timer"
MARKER = "# Written by `orchestrate schedule install`"
DEFAULT_AT = "02:00"

_AT = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_SAFE = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")
_DAYS = {"mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6, "sun": 0}
_DAY_NAMES = {"monday": "mon", "tuesday": "tue", "wednesday": "wed", "thursday": "thu", "friday": "fri",
              "saturday": "sat", "sunday": "sun"}
_SHORTHANDS = {"minutely": "* * * * *", "hourly": "0 * * * *", "daily": "0 0 * * *", "midnight": "0 0 * * *",
               "weekly": "0 0 * * 1", "monthly": "0 0 1 * *", "yearly": "0 0 1 1 *", "annually": "0 0 1 1 *"}


@dataclass(frozen=True)
class Units:
    service: str
    timer: str


def on_calendar(at: str | None, spec: str | None) -> str:
    """The timer's OnCalendar from `--at HH:MM` or `--on-calendar SPEC` (default: --at 02:00)."""
    if at is not None and spec is not None:
        raise UsageError("give --at or --on-calendar, not both")
    if spec is not None:
        text = spec.strip()
        if not text or any(ord(c) < 32 for c in text):
            raise UsageError(f"--on-calendar {spec!r} is not a calendar specification",
                             hint="e.g. \"*-*-* 02:30:00\", \"Mon..Fri 03:00\" or \"daily\" (man systemd.time)")
        return text
    found = _AT.match((at if at is not None else DEFAULT_AT).strip())
    if not found:
        raise UsageError(f"--at {at!r} is not a time of day HH:MM", hint="e.g. --at 02:30 (24-hour clock)")
    return f"*-*-* {int(found[1]):02d}:{found[2]}:00"


def systemd_quote(arg: str) -> str:
    """One ExecStart= word: `%` and `$` escaped (specifiers, variables), quoted when needed."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if _SAFE.match(arg):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def nightly_command(orchestrate: list[str], home: str, config_file: str | None,
                    templates: tuple[str, ...]) -> list[str]:
    """The command the units run: this orchestrate, this data home (and configuration file),
    `nightly` with the templates (or --all when none are named)."""
    command = [*orchestrate, "--home", home]
    if config_file:
        command += ["--config", config_file]
    return command + ["nightly", *(templates or ("--all",))]


def render_units(command: list[str], calendar: str, home: str, environment: tuple[tuple[str, str], ...] = (),
                 version: str = "") -> Units:
    env_lines = "".join(f"Environment={systemd_quote(f'{k}={v}')}\n" for k, v in environment)
    header = f"{MARKER}{f' (orchestrator {version})' if version else ''}; `orchestrate schedule remove` removes it.\n"
    service = (
        f"{header}"
        "[Unit]\n"
        f"Description=orchestrator: nightly rebuild of stored image templates ({home})\n"
        "Wants=network-online.target\n"
        "After=network-online.target libvirtd.service\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={' '.join(systemd_quote(a) for a in command)}\n"
        f"{env_lines}"
        "# a build may take hours; a stop lets the build VM shut down before anything is killed\n"
        "TimeoutStartSec=infinity\n"
        "KillMode=mixed\n"
        "TimeoutStopSec=5min\n")
    timer = (
        f"{header}"
        "[Unit]\n"
        f"Description=orchestrator: nightly rebuild of stored image templates ({home}), timer\n"
        "\n"
        "[Timer]\n"
        f"OnCalendar={calendar}\n"
        "Persistent=true\n"
        f"Unit={SERVICE}\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n")
    return Units(service, timer)


def _cron_days(text: str) -> str | None:
    """`Mon..Fri`, `Sat,Sun`, `Mon` as cron's day-of-week field; None if not of that shape."""
    parts = []
    for item in text.lower().split(","):
        days = [_DAYS.get(_DAY_NAMES.get(d, d)) for d in item.split("..")]
        if len(days) > 2 or None in days:
            return None
        if len(days) == 1:
            parts.append(str(days[0]))
            continue
        first, last = days[0], days[1] or 7  # cron's 7 is Sunday too: Mon..Sun is 1-7
        if first is None or last is None or first >= last:
            return None
        parts.append(f"{first}-{last}")
    return ",".join(parts)


def cron_fields(calendar: str) -> str | None:
    """The five crontab time fields of an OnCalendar spec, for the shapes cron can say (a daily
    time, weekdays and a time, the shorthands); None otherwise."""
    words = calendar.strip().split()
    if len(words) == 1 and words[0].lower() in _SHORTHANDS:
        return _SHORTHANDS[words[0].lower()]
    days = "*"
    if words and words[0][0].isalpha():
        days = _cron_days(words[0]) or ""
        if not days:
            return None
        words = words[1:]
    if words and words[0] == "*-*-*":
        words = words[1:]
    if len(words) != 1:
        return None
    found = re.match(r"^(\d{1,2}):(\d{2})(?::(00))?$", words[0])
    if not found or int(found[1]) > 23 or int(found[2]) > 59:
        return None
    return f"{int(found[2])} {int(found[1])} * * {days}"


def crontab_line(calendar: str, command: list[str], environment: tuple[tuple[str, str], ...] = ()) -> str | None:
    """The crontab entry that runs `command` when the timer would; None when cron cannot say
    the calendar. `%` is escaped (cron turns it into a newline)."""
    fields = cron_fields(calendar)
    if fields is None:
        return None
    words = [f"{k}={shlex.quote(v)}" for k, v in environment] + [shlex.quote(a) for a in command]
    return f"{fields} " + " ".join(words).replace("%", "\\%")
