"""Date functions: dateTimeAdd, dateTimeFromEpoch, dateTimeToEpoch, utcNow.

utcNow() is the build host's clock (or the context's `utcNow`, for tests) and, as in ARM, is
only allowed in a parameter's defaultValue: a template that uses it is different at every run.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from orchestrator.core.arm import dotnet
from orchestrator.core.arm.registry import Runtime, arg, function
from orchestrator.core.arm.syntax import Failure

UTC_NOW_FORMAT = "yyyyMMddTHHmmssZ"
ISO_FORMAT = "yyyy-MM-ddTHH:mm:ssZ"
# dateTimeAdd() without a format keeps the base value's: the shapes utcNow() and ARM write
_SHAPES = ((r"\d{8}T\d{6}Z", UTC_NOW_FORMAT), (r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", "u"),
           (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ISO_FORMAT), (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", "s"))


@function("utcNow", 0, 1)
def _utc_now(ex: Runtime, fn: str, args: list[Any]) -> str:
    if ex.scope.where != "parameter":
        raise Failure("arm-function", "utcNow() is only allowed in a parameter's defaultValue, as in ARM",
                      "declare a parameter with \"defaultValue\": \"[utcNow()]\" and use parameters() here")
    spec = arg(fn, args, 0, str) if args else UTC_NOW_FORMAT
    return dotnet.format_datetime(fn, ex.now().astimezone(UTC), spec)


@function("dateTimeAdd", 2, 3)
def _date_time_add(ex: Runtime, fn: str, args: list[Any]) -> str:
    base, duration = arg(fn, args, 0, str), arg(fn, args, 1, str)
    spec = arg(fn, args, 2, str) if len(args) > 2 else next(
        (shape for pattern, shape in _SHAPES if re.fullmatch(pattern, base.strip())), "o")
    return dotnet.format_datetime(fn, dotnet.add_duration(fn, dotnet.parse_datetime(fn, base), duration), spec)


@function("dateTimeFromEpoch", 1)
def _date_time_from_epoch(ex: Runtime, fn: str, args: list[Any]) -> str:
    seconds = arg(fn, args, 0, int)
    try:
        when = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise Failure("arm-argument", f"{fn}(): {seconds} seconds is outside the years 1 to 9999") from None
    return dotnet.format_datetime(fn, when, ISO_FORMAT)


@function("dateTimeToEpoch", 1)
def _date_time_to_epoch(ex: Runtime, fn: str, args: list[Any]) -> int:
    when = dotnet.parse_datetime(fn, arg(fn, args, 0, str))
    return int((when - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
