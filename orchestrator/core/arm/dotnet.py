"""The .NET formatting ARM inherits: composite format strings, numeric and date/time format
specifiers (en-US, as ARM formats), ISO 8601 durations.

format() uses String.Format's rules, utcNow() and dateTimeAdd() DateTime.ToString's. What is
modelled: the standard specifiers and the common custom ones (0 # . , % for numbers; y M d H h
m s f F t K z and quoted literals for dates). What is not (a problem says so): culture names
other than en-US, `;` section separators, exponents in custom numeric formats.
"""
from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from orchestrator.core.arm.syntax import Failure
from orchestrator.core.arm.values import is_int, is_number, to_string

_ITEM_RE = re.compile(r"\s*(\d+)\s*(?:,\s*(-?\d+)\s*)?(?::(.*))?", re.DOTALL)


def composite(fn: str, text: str, values: list[Any]) -> str:
    """String.Format: {index[,alignment][:spec]} with {{ and }} as literal braces."""
    out: list[str] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in "{}" and text[pos + 1:pos + 2] == char:
            out.append(char)
            pos += 2
            continue
        if char == "}":
            raise Failure("arm-argument", f"{fn}(): unmatched `}}` at position {pos} of `{text}`",
                          "write }} for a literal brace")
        if char != "{":
            out.append(char)
            pos += 1
            continue
        end = text.find("}", pos)
        item = _ITEM_RE.fullmatch(text, pos + 1, end) if end > 0 else None
        if item is None:
            raise Failure("arm-argument", f"{fn}(): bad placeholder at position {pos} of `{text}`",
                          "placeholders look like {0}; write {{ for a literal brace")
        index = int(item.group(1))
        if index >= len(values):
            raise Failure("arm-argument", f"{fn}(): `{{{index}}}` needs {index + 1} value(s) after the "
                          f"format string, got {len(values)}")
        value, spec = values[index], item.group(3)
        piece = number(fn, value, spec) if spec and is_number(value) else to_string(value)
        width = int(item.group(2) or 0)
        out.append(piece.ljust(-width) if width < 0 else piece.rjust(width))
        pos = end + 1
    return "".join(out)


# --- numbers ---------------------------------------------------------------------------------

_STANDARD_RE = re.compile(r"([CcDdEeFfGgNnPpRrXx])(\d{0,2})")


def number(fn: str, value: float, spec: str) -> str:
    """value.ToString(spec) for an integer or a double, en-US."""
    match = _STANDARD_RE.fullmatch(spec)
    if match is None:
        return _custom_number(fn, value, spec)
    letter, digits = match.group(1), match.group(2)
    precision = int(digits) if digits else None
    upper = letter.upper()
    if upper in "DX" and not is_int(value):
        raise Failure("arm-argument", f"{fn}(): format `{spec}` is for integers, not {value}")
    if upper == "D":
        text = f"{abs(value):0{precision or 0}d}"
        return "-" + text if value < 0 else text
    if upper == "X":
        text = f"{value & (2**64 - 1) if value < 0 else value:0{precision or 0}X}"
        return text if letter == "X" else text.lower()
    digits_after = 2 if precision is None else precision
    if upper == "N":
        return f"{_rounded(value, digits_after):,}"
    if upper == "F":
        return f"{_rounded(value, digits_after)}"
    if upper == "C":
        text = f"${_rounded(abs(value), digits_after):,}"
        return "-" + text if value < 0 else text
    if upper == "P":
        return f"{_rounded(value * 100, digits_after):,}%"
    if upper == "E":
        mantissa, exponent = f"{value:.{6 if precision is None else precision}e}".split("e")
        sign = exponent[0]
        return f"{mantissa}{letter}{sign}{int(exponent[1:]):03d}"
    return _general(value, precision)  # G and R


def _rounded(value: float, digits: int) -> Decimal:
    """value with `digits` decimals, halves away from zero as .NET rounds (Python rounds them to even)."""
    return Decimal(repr(value) if isinstance(value, float) else value).quantize(Decimal(1).scaleb(-digits),
                                                                               rounding=ROUND_HALF_UP)


def _general(value: float, precision: int | None) -> str:
    if is_int(value) and precision is None:
        return str(value)
    text = f"{value:.{precision or 15}G}" if precision or not isinstance(value, float) else repr(value)
    if "E" in text:
        mantissa, exponent = text.split("E")
        text = f"{mantissa}E{exponent[0]}{int(exponent[1:]):02d}"
    return text.removesuffix(".0")


def _custom_number(fn: str, value: float, spec: str) -> str:
    """0 and # digit places, `.`, `,` grouping, % (times 100) and literal text around them."""
    if ";" in spec or re.search(r"[eE][+-]?0", spec):
        raise Failure("arm-argument", f"{fn}(): format `{spec}` is not supported",
                      "use a standard format such as N0, D5, F2 or X, or a pattern of 0 # . , %")
    first = next((i for i, c in enumerate(spec) if c in "0#.,"), None)
    if first is None:
        return spec
    last = max(i for i, c in enumerate(spec) if c in "0#.,")
    prefix, pattern, suffix = spec[:first], spec[first:last + 1], spec[last + 1:]
    if "%" in prefix + suffix:
        value = value * 100
    whole, _, fraction = pattern.partition(".")
    min_int = whole.count("0")
    min_frac, max_frac = fraction.count("0"), fraction.count("0") + fraction.count("#")
    text = f"{_rounded(abs(value), max_frac)}"
    int_part, _, frac_part = text.partition(".")
    frac_part = frac_part.rstrip("0").ljust(min_frac, "0") if max_frac else ""
    int_part = int_part.lstrip("0").rjust(min_int, "0")
    if "," in whole.strip(","):
        int_part = f"{int(int_part or 0):,}" if int_part else ""
    body = int_part + ("." + frac_part if frac_part else "")
    sign = "-" if value < 0 and any(c not in "0." for c in body) else ""
    return prefix + sign + body + suffix


# --- dates and times -------------------------------------------------------------------------

_STANDARD_DATES = {  # en-US patterns of DateTime's standard format specifiers
    "d": "M/d/yyyy", "D": "dddd, MMMM d, yyyy", "f": "dddd, MMMM d, yyyy h:mm tt",
    "F": "dddd, MMMM d, yyyy h:mm:ss tt", "g": "M/d/yyyy h:mm tt", "G": "M/d/yyyy h:mm:ss tt",
    "m": "MMMM d", "M": "MMMM d", "o": "yyyy'-'MM'-'dd'T'HH':'mm':'ss'.'fffffffK",
    "O": "yyyy'-'MM'-'dd'T'HH':'mm':'ss'.'fffffffK", "r": "ddd, dd MMM yyyy HH':'mm':'ss 'GMT'",
    "R": "ddd, dd MMM yyyy HH':'mm':'ss 'GMT'", "s": "yyyy'-'MM'-'dd'T'HH':'mm':'ss",
    "t": "h:mm tt", "T": "h:mm:ss tt", "u": "yyyy'-'MM'-'dd HH':'mm':'ss'Z'",
    "U": "dddd, MMMM d, yyyy h:mm:ss tt", "y": "MMMM yyyy", "Y": "MMMM yyyy",
}
# English names whatever the process locale (calendar's follow LC_TIME)
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_DATE_TOKEN_RE = re.compile(r"'[^']*'?|\"[^\"]*\"?|\\.|%.|y+|M+|d+|H+|h+|m+|s+|f+|F+|t+|z+|K|.", re.DOTALL)


def _date_piece(token: str, when: datetime) -> str:
    letter, count = token[0], len(token)
    hour12 = when.hour % 12 or 12
    fields: dict[str, Callable[[], str]] = {
        "y": lambda: f"{when.year % 100:0{count}d}" if count <= 2 else f"{when.year:0{count}d}",
        "M": lambda: (f"{when.month:0{count}d}" if count <= 2 else
                      _MONTHS[when.month - 1][:3] if count == 3 else _MONTHS[when.month - 1]),
        "d": lambda: (f"{when.day:0{count}d}" if count <= 2 else
                      _DAYS[when.weekday()][:3] if count == 3 else _DAYS[when.weekday()]),
        "H": lambda: f"{when.hour:0{min(count, 2)}d}",
        "h": lambda: f"{hour12:0{min(count, 2)}d}",
        "m": lambda: f"{when.minute:0{min(count, 2)}d}",
        "s": lambda: f"{when.second:0{min(count, 2)}d}",
        "f": lambda: f"{when.microsecond:06d}0"[:count],
        "F": lambda: f"{when.microsecond:06d}0"[:count].rstrip("0"),
        "t": lambda: ("AM" if when.hour < 12 else "PM")[:count],
        "z": lambda: _offset(when, count),
        "K": lambda: "Z" if when.utcoffset() == timedelta(0) else _offset(when, 3),
    }
    return fields[letter]() if letter in fields else token


def _offset(when: datetime, count: int) -> str:
    minutes = int((when.utcoffset() or timedelta(0)).total_seconds() // 60)
    sign, minutes = ("-" if minutes < 0 else "+"), abs(minutes)
    if count == 1:
        return f"{sign}{minutes // 60}"
    return f"{sign}{minutes // 60:02d}" + (f":{minutes % 60:02d}" if count >= 3 else "")


def format_datetime(fn: str, when: datetime, spec: str) -> str:
    """when.ToString(spec): a standard specifier (one letter) or a custom pattern, en-US."""
    if len(spec) == 1:
        if spec not in _STANDARD_DATES:
            raise Failure("arm-argument", f"{fn}(): `{spec}` is not a date and time format",
                          f"standard formats: {' '.join(_STANDARD_DATES)}; or a pattern such as yyyy-MM-dd")
        if spec == "U":
            when = when.astimezone(UTC)
        spec = _STANDARD_DATES[spec]
    out = []
    for token in _DATE_TOKEN_RE.findall(spec):
        if token[0] in "'\"":
            out.append(token[1:-1] if len(token) > 1 and token[-1] == token[0] else token[1:])
        elif token[0] == "\\":
            out.append(token[1:])
        elif token[0] == "%" and len(token) == 2:
            out.append(_date_piece(token[1], when))
        else:
            out.append(_date_piece(token, when))
    return "".join(out)


def parse_datetime(fn: str, text: str) -> datetime:
    """An ISO 8601 date and time as ARM writes them (utcNow() and its 'u', 's' and 'o' forms); UTC
    when no offset is given."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise Failure("arm-argument", f"{fn}(): `{text}` is not an ISO 8601 date and time",
                      "e.g. 2024-05-02T15:16:13Z") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


_DURATION_RE = re.compile(r"(-)?P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
                          r"(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")


def add_duration(fn: str, when: datetime, duration: str) -> datetime:
    """when + an ISO 8601 duration (P3Y, -P9D, PT1H30M); years and months move the calendar
    date as .NET's AddYears/AddMonths do, keeping the day or the month's last one."""
    match = _DURATION_RE.fullmatch(duration.strip())
    if match is None or duration.strip().lstrip("-") in ("P", "PT") or duration.strip().endswith("T"):
        raise Failure("arm-argument", f"{fn}(): `{duration}` is not an ISO 8601 duration",
                      "e.g. P1D (a day), PT1H (an hour), -P9D (nine days back), P1Y2M")
    sign = -1 if match.group(1) else 1
    years, months, weeks, days, hours, minutes = (int(g or 0) for g in match.groups()[1:7])
    seconds = float(match.group(8) or 0)
    total_months = when.month - 1 + sign * (years * 12 + months)
    year, month = when.year + total_months // 12, total_months % 12 + 1
    if not 1 <= year <= 9999:
        raise Failure("arm-argument", f"{fn}(): adding `{duration}` leaves the years 1 to 9999")
    day = min(when.day, calendar.monthrange(year, month)[1])
    moved = when.replace(year=year, month=month, day=day)
    try:
        return moved + sign * timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise Failure("arm-argument", f"{fn}(): adding `{duration}` leaves the years 1 to 9999") from None
