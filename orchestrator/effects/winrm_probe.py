"""WinRM to the Windows deploy proof VM with pywinrm: wait until the answer file's
administrator can log in, then run PowerShell checks, each with a time limit and each
stoppable by a cancel. Basic authentication over HTTP on 127.0.0.1 (the port QEMU forwards),
as render_windows' build uses WinRM. The password goes to pywinrm and nowhere else: every
message this module makes has it masked, whatever an exception carried."""
from __future__ import annotations

import base64
import re
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable

import requests
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

ATTEMPT_SECONDS = 20  # one login attempt at most (HTTP read time-out)
RECEIVE_SECONDS = 5  # one WS-Management Receive waits at most this long for output (OperationTimeout)
RETRY_SECONDS = 5.0
UTF8_CODEPAGE = 65001
# Windows PowerShell writes progress records as CLIXML on stderr: off, and errors as text
SCRIPT_PRELUDE = "$ProgressPreference = 'SilentlyContinue'\n"


@dataclass
class WinrmLogin:
    protocol: Protocol = field(repr=False)
    identity: str  # whoami, as Windows said it
    seconds: float  # from the start of waiting
    password: str = field(repr=False, default="")

    def close(self) -> None:
        self.protocol.transport.close_session()

    def __enter__(self) -> "WinrmLogin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NoWinrmLogin(Exception):
    """WinRM never let the administrator in; the message says what was seen last."""


def connect(port: int, user: str, password: str, read_seconds: int = ATTEMPT_SECONDS) -> Protocol:
    """A pywinrm Protocol for 127.0.0.1:port, Basic over HTTP, no proxy (the environment's
    would get the loopback address), no certificate (there is no TLS)."""
    read_seconds = max(int(read_seconds), RECEIVE_SECONDS + 1)
    return Protocol(f"http://127.0.0.1:{int(port)}/wsman", transport="basic", username=user, password=password,
                    server_cert_validation="ignore", read_timeout_sec=read_seconds,
                    operation_timeout_sec=min(RECEIVE_SECONDS, read_seconds - 1), message_encryption="never",
                    proxy=None)


def wait_for_login(port: int, user: str, password: str, deadline: float, stop: threading.Event,
                   gave_up: Callable[[], str | None], interval: float = RETRY_SECONDS) -> WinrmLogin:
    """Retries until `whoami` runs as `user`, the deadline passes, the run is stopped, or
    `gave_up` names a reason to stop waiting (the VM is gone). Windows' first boot after
    Sysprep restarts once and answers on the forwarded port long before the account exists:
    refusals and dropped connections are what waiting looks like."""
    started = time.monotonic()
    last = "no answer yet"
    while True:
        if stop.is_set():
            raise NoWinrmLogin("stopped")
        reason = gave_up()
        if reason:
            raise NoWinrmLogin(_mask(f"{reason} (last WinRM attempt: {last})", password))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoWinrmLogin(_mask(f"no WinRM login within the proof's time limit (last WinRM attempt: {last})",
                                     password))
        protocol = connect(port, user, password, read_seconds=min(ATTEMPT_SECONDS, int(remaining) + 1))
        try:
            status, output = _run(protocol, "whoami", (), deadline, stop)
            if status == 0 and output.strip():
                return WinrmLogin(protocol, output.strip(), time.monotonic() - started, password)
            last = f"whoami exited {status}: {output.strip()[:200]}"
        except InvalidCredentialsError:
            last = (f"WinRM answered but refused {user!r}'s password (Windows setup may not have made the "
                    "account yet)")
        except Exception as exc:  # noqa: BLE001 — whatever pywinrm and requests raise is a reason to retry
            last = why(exc)
        protocol.transport.close_session()
        last = _mask(last, password)
        stop.wait(interval)  # the VM is booting: try again in a moment


def run_powershell(login: WinrmLogin, script: str, timeout: float, stop: threading.Event) -> tuple[int, str]:
    """The exit status and the combined output (stderr after stdout, CLIXML made text); -1 on a
    time-out, a stop or a lost connection (the output says which)."""
    encoded = base64.b64encode((SCRIPT_PRELUDE + script).encode("utf-16-le")).decode("ascii")
    args = ("-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-EncodedCommand", encoded)
    try:
        return _run(login.protocol, "powershell.exe", args, time.monotonic() + timeout, stop)
    except InvalidCredentialsError:
        return -1, "WinRM refused the password it had accepted before"
    except Exception as exc:  # noqa: BLE001 — reported as the check's output, judged as a failure
        return -1, _mask(f"WinRM failed: {why(exc)}", login.password)


def _run(protocol: Protocol, command: str, args: tuple[str, ...], ends: float,
         stop: threading.Event) -> tuple[int, str]:
    """A command in a new shell, received until done, `ends` or `stop`; the shell is deleted
    however it ends (a signal terminates a command still running)."""
    shell = protocol.open_shell(codepage=UTF8_CODEPAGE, noprofile=True)
    out, err = bytearray(), bytearray()
    command_id = None
    try:
        command_id = protocol.run_command(shell, command, args)
        while True:
            if stop.is_set() or time.monotonic() > ends:
                return -1, _text(out, err) + ("\n(stopped)" if stop.is_set() else "\n(timed out)")
            try:
                stdout, stderr, status, done = protocol.get_command_output_raw(shell, command_id)
            except WinRMOperationTimeoutError:
                continue  # no output within RECEIVE_SECONDS: the command still runs
            out += stdout
            err += stderr
            if done:
                return status, _text(out, err)
    finally:
        try:
            if command_id is not None:
                protocol.cleanup_command(shell, command_id)
            protocol.close_shell(shell, close_session=False)
        except Exception:  # noqa: BLE001 — the VM may be gone; the shell goes with it
            pass


def _text(out: bytes, err: bytes) -> str:
    text = out.decode("utf-8", errors="replace")
    if err:
        text += clixml_text(bytes(err))
    return text


def clixml_text(data: bytes) -> str:
    """PowerShell's stderr over WinRM: `#< CLIXML` and <Objs> with the error lines as <S S="Error">
    (`_x000D__x000A_` for line ends); anything else as it is."""
    raw = data.decode("utf-8", errors="replace")
    if not raw.startswith("#< CLIXML"):
        return raw
    try:
        root = ET.fromstring(raw.split("\n", 1)[1] if "\n" in raw else "")
    except ET.ParseError:
        return raw
    lines = [node.text or "" for node in root.iter() if node.tag.rsplit("}", 1)[-1] == "S" and node.get("S") == "Error"]
    return "".join(lines).replace("_x000D__x000A_", "\n").replace("_x000A_", "\n")


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def why(exc: BaseException) -> str:
    """One line for what a WinRM attempt ran into (requests' messages are a paragraph)."""
    if isinstance(exc, WSManFaultError):
        return f"WinRM fault: {exc.reason}"[:300]
    if isinstance(exc, WinRMTransportError):
        return f"WinRM answered HTTP {exc.code}"
    if isinstance(exc, WinRMError):
        return f"WinRM error: {exc}"[:300]
    if isinstance(exc, requests.Timeout):
        return "no answer in time (connected, but the VM did not reply)"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        found = _ERRNO.search(text)
        if found:
            return found.group(1).strip()
        if "RemoteDisconnected" in text or "without response" in text:
            return "the connection closed without an answer (the VM's WinRM is not listening yet)"
        if "reset" in text.lower():
            return "connection reset (the VM's WinRM is not listening yet)"
        return f"connection failed: {text[:200]}"
    if isinstance(exc, (ET.ParseError, StopIteration)):
        return "an answer that is not WS-Management"
    return f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__


def _mask(text: str, password: str) -> str:
    return text.replace(password, "***") if password else text
