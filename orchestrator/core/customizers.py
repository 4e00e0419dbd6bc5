"""Customizers and validations of an image template: `customize` and `validate.inVMValidations`."""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from orchestrator.core import model as m
from orchestrator.core.fields import (API_2019, API_2020, PLACEHOLDER_RE, TIMEOUT_RE, before_2020, checksum_field,
                                      uri_field)
from orchestrator.core.problems import Problem, child
from orchestrator.core.reader import ObjectReader


def read_customizers(props: ObjectReader, name: str, api: str, *, validation: bool = False) -> list[m.Customizer]:
    counter = iter(range(1, 10_000))
    # names given in the template: a generated name must not take one of them
    items = props.raw(name)
    given = {str(value).lower() for item in (items if isinstance(items, list) else ()) if isinstance(item, dict)
             for key, value in item.items() if key.lower() == "name" and isinstance(value, str)}

    def read(obj: ObjectReader) -> m.Customizer | None:
        return _customizer(obj, next(counter), validation, api, given)

    return props.objects(name, read)


def _customizer(obj: ObjectReader, index: int, validation: bool, api: str = API_2020,
                given: set[str] | frozenset[str] = frozenset()) -> m.Customizer | None:
    kind = obj.string("type", required=True, hint="Shell, PowerShell, File, WindowsRestart or WindowsUpdate")
    if kind is None:
        return None
    name = obj.string("name") or _generated_name(kind, index, given)
    lowered = kind.lower()
    allowed = ("shell", "powershell", "file") if validation else (
        "shell", "powershell", "file", "windowsrestart", "windowsupdate")
    if lowered not in allowed:
        obj.problem("type", "customizer-type", f"unknown {'validation' if validation else 'customizer'} type `{kind}`",
                    f"use one of: {', '.join(allowed)}")
        return None
    result: m.Customizer | None
    if lowered in ("shell", "powershell"):
        script_field = "scriptUri"
        if obj.has("script") and not obj.has("scriptUri"):  # the 2019 preview APIs' name for it
            script_field = "script"
            obj.warn("script", "old-spelling", "`script` is the 2019 preview name of `scriptUri`: read as scriptUri",
                     "rename it to scriptUri")
        uri = uri_field(obj, script_field, required=False)
        sha = checksum_field(obj)
        inline = obj.strings("inline", nonempty=True)

        def present(name: str) -> bool:  # null and "" are no value, as for every other optional field
            return obj.has(name) and obj.raw(name) not in (None, "")

        if present(script_field) == present("inline"):
            obj.problem(None, "script-or-inline", f"a {kind} customizer needs exactly one of scriptUri or inline")
        if sha and not present(script_field):
            obj.problem("sha256Checksum", "checksum-without-uri", "sha256Checksum goes with scriptUri")
        if lowered == "shell":
            result = m.ShellCustomizer(name, uri, sha, inline)
        else:
            elevated = obj.get("runElevated", bool, False)
            as_system = obj.get("runAsSystem", bool, False)
            if as_system and not elevated:
                obj.problem("runAsSystem", "run-as-system", "runAsSystem needs runElevated: true")
            codes_field = _exit_codes_field(obj, api)
            codes = obj.get(codes_field, list, None)
            valid: tuple[int, ...] = (0,)
            if codes is not None:
                ints = [_exit_code(c) for c in codes]
                if all(c is not None for c in ints):
                    valid = tuple(ints) or (0,)  # type: ignore[arg-type]
                    if any(isinstance(c, str) for c in codes):
                        obj.warn(codes_field, "type-coerced", "exit codes written as strings: read as numbers, "
                                 "as AIB does", f"write [{', '.join(str(c) for c in ints)}] without quotes")
                else:
                    obj.problem(codes_field, "type", "must be a list of integers", "e.g. [0, 3010]")
            result = m.PowerShellCustomizer(name, uri, sha, inline, bool(elevated), bool(as_system), valid)
    elif lowered == "file":
        uri = uri_field(obj, "sourceUri", required=True)
        if uri and not PLACEHOLDER_RE.search(uri) and _names_a_folder(uri):
            obj.problem("sourceUri", "file-source", f"`{uri}` names a folder, not a file",
                        "a File customizer downloads one file: zip the folder, then unzip it with a "
                        "Shell or PowerShell customizer")
        destination = obj.string("destination", required=True)
        sha = checksum_field(obj)
        result = m.FileCustomizer(name, uri, destination, sha) if uri and destination else None
    elif lowered == "windowsrestart":
        command = obj.string("restartCommand") or m.WindowsRestartCustomizer.restart_command
        check = obj.string("restartCheckCommand")
        timeout = obj.string("restartTimeout") or "5m"
        if not TIMEOUT_RE.match(timeout):
            obj.problem("restartTimeout", "duration", f"`{timeout}` is not a duration",
                        "a number and a unit: 5m, 90s, 2h (or 1h30m)")
            timeout = "5m"
        result = m.WindowsRestartCustomizer(name, command, check, timeout)
    else:
        criteria = obj.string("searchCriteria") or m.WindowsUpdateCustomizer.search_criteria
        filters = obj.strings("filters") or ()
        for i, item in enumerate(filters):
            if not re.match(r"^\s*(include|exclude)\s*:", item, re.IGNORECASE):
                obj.problems.append(Problem(child(obj.path_of("filters"), i), "update-filter",
                                            "a filter starts with `include:` or `exclude:`",
                                            "e.g. \"exclude:$_.Title -like '*Preview*'\""))
        limit = obj.get("updateLimit", int, 1000)
        if limit is not None and limit < 1:
            obj.problem("updateLimit", "update-limit", "must be 1 or more")
            limit = 1000
        result = m.WindowsUpdateCustomizer(name, criteria, filters, limit or 1000)
    obj.finish(f"for a {kind} customizer")
    return result


def _generated_name(kind: str, index: int, given: set[str] | frozenset[str]) -> str:
    name, n = f"{kind}{index}", 2
    while name.lower() in given:
        name, n = f"{kind}{index}-{n}", n + 1
    return name


def _names_a_folder(uri: str) -> bool:
    try:
        path = urlsplit(uri).path
    except ValueError:  # e.g. a broken IPv6 host; the download reports it
        return False
    return path.rsplit("/", 1)[-1] == ""


def _exit_codes_field(obj: ObjectReader, api: str) -> str:
    """validExitCodes; AIB's 2019-05-01-preview reference also spells it valid_exit_codes."""
    if not obj.has("valid_exit_codes"):
        return "validExitCodes"
    if not before_2020(api):
        obj.ignore("valid_exit_codes")
        obj.problem("valid_exit_codes", "field-spelling", f"valid_exit_codes is the API {API_2019} spelling",
                    "use validExitCodes")
        return "validExitCodes"
    if obj.has("validExitCodes"):
        obj.ignore("valid_exit_codes")
        obj.problem("valid_exit_codes", "field-spelling", "give validExitCodes or valid_exit_codes, not both")
        return "validExitCodes"
    return "valid_exit_codes"


def check_unique_names(items: tuple[m.Customizer, ...], path: str, problems: list[Problem]) -> None:
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        key = item.name.lower()
        if key in seen:
            problems.append(Problem(child(child(path, index), "name"), "unique-name",
                                    f"name `{item.name}` is used by entry {seen[key]} too",
                                    "give every customizer its own name"))
        else:
            seen[key] = index


def check_customizer_os(items: tuple[m.Customizer, ...], os_type: str, path: str,
                         problems: list[Problem]) -> None:
    windows_only = (m.WindowsRestartCustomizer, m.WindowsUpdateCustomizer)
    for index, item in enumerate(items):
        where = child(child(path, index), "type")
        if os_type == "Linux" and isinstance(item, windows_only):
            problems.append(Problem(where, "customizer-os", f"{item.kind} customizers run on Windows only",
                                    "a Linux Shell step may reboot the VM itself"))
        elif os_type == "Windows" and isinstance(item, m.ShellCustomizer):
            problems.append(Problem(where, "customizer-os", "Shell customizers run on Linux only",
                                    "use a PowerShell customizer on Windows"))


def check_file_destinations(items: tuple[m.Customizer, ...], os_type: str, path: str,
                             problems: list[Problem]) -> None:
    for index, item in enumerate(items):
        if not isinstance(item, m.FileCustomizer):
            continue
        dest = item.destination
        where = child(child(path, index), "destination")
        if os_type == "Linux":
            parts = dest.split("/")
            if not dest.startswith("/tmp/") or ".." in parts or dest.endswith("/") or "\x00" in dest:
                problems.append(Problem(where, "file-destination",
                                        f"`{dest}` is not a file path under /tmp",
                                        "on Linux AIB uploads only to /tmp; move the file with a Shell step after"))
        elif not re.match(r"^[A-Za-z]:\\[^\x00]*[^\\]$", dest):
            problems.append(Problem(where, "file-destination",
                                    f"`{dest}` is not a full Windows file path",
                                    "e.g. c:\\buildArtifacts\\index.html (the folder must exist)"))


def _exit_code(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,10}", value.strip()):
        return int(value)
    return None
