"""SSH to the deploy proof VM with paramiko: wait until the seed's user can log in with its
key, then run checks, each with a time limit and each stoppable by a cancel."""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paramiko

# paramiko logs each refused attempt of a booting VM with a traceback (Python's last-resort
# handler prints it on stderr); what the proof saw goes into the run's log instead
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass
class Login:
    client: paramiko.SSHClient
    host_key: str  # the key type and fingerprint the VM presented
    seconds: float  # from the start of waiting


class NoLogin(Exception):
    """SSH never let the seed's user in; the message says what was seen last."""


def wait_for_login(port: int, user: str, key_path: Path, deadline: float, stop: threading.Event,
                   gave_up: Callable[[], str | None]) -> Login:
    """Retries until the login works, the deadline passes, the run is stopped, or `gave_up`
    names a reason to stop waiting (the VM is gone; it finished booting without sshd)."""
    key = paramiko.Ed25519Key.from_private_key_file(str(key_path))
    started = time.monotonic()
    last = "no answer yet"
    while True:
        if stop.is_set():
            raise NoLogin("stopped")
        reason = gave_up()
        if reason:
            raise NoLogin(f"{reason} (last SSH attempt: {last})")
        if time.monotonic() > deadline:
            raise NoLogin(f"no SSH login within the proof's time limit (last SSH attempt: {last})")
        try:
            client = loopback_client(port, user, key, timeout=5)
            server_key = client.get_transport().get_remote_server_key()  # type: ignore[union-attr]
            return Login(client, f"{server_key.get_name()} {server_key.fingerprint}", time.monotonic() - started)
        except paramiko.AuthenticationException:
            last = f"sshd answered but refused {user!r}'s key (cloud-init may not have made the user yet)"
        except (paramiko.SSHException, OSError, EOFError, socket.timeout) as exc:
            last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        stop.wait(2)  # the VM is booting: try again in a moment


def loopback_client(port: int, user: str, key: paramiko.PKey, timeout: float) -> paramiko.SSHClient:
    """A logged-in SSH client to a VM of this host through its port forwarded on 127.0.0.1 (the
    deploy proof's VM, the build VM); closed again if the login fails."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # a new VM: its key is new by design
    try:
        client.connect("127.0.0.1", port=port, username=user, pkey=key, timeout=timeout, banner_timeout=10,
                       auth_timeout=10, allow_agent=False, look_for_keys=False)
    except BaseException:
        client.close()
        raise
    return client


def run_command(client: paramiko.SSHClient, command: str, timeout: float,
                stop: threading.Event) -> tuple[int, str]:
    """The exit status and the combined output (stderr after stdout); -1 on a time-out."""
    channel = client.get_transport().open_session()  # type: ignore[union-attr]
    channel.settimeout(1.0)
    channel.exec_command(command)
    out, err = bytearray(), bytearray()
    ends = time.monotonic() + timeout
    try:
        while not channel.exit_status_ready() or channel.recv_ready() or channel.recv_stderr_ready():
            if stop.is_set() or time.monotonic() > ends:
                return -1, (out + err).decode(errors="replace") + ("\n(stopped)" if stop.is_set() else "\n(timed out)")
            if channel.recv_ready():
                out += channel.recv(65536)
            elif channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            else:
                stop.wait(0.1)
        return channel.recv_exit_status(), (out + err).decode(errors="replace")
    finally:
        channel.close()
