"""The guest side of a Linux checkpoint, done by the host itself: an SSH connection (paramiko,
the run's key, the port QEMU forwards) kept for the build, and one command per checkpoint that
flushes the guest (core/checkpoint_steps.guest_prepare_script). A guest that a customizer
rebooted is asked again until its new boot answers: no checkpoint is ever taken of a guest
going down."""
from __future__ import annotations

import re
import socket
import threading
import time
from typing import Callable

import paramiko

from orchestrator.core.checkpoint_steps import GOING_DOWN_EXIT, REBOOT_WAIT_SECONDS, guest_prepare_script
from orchestrator.effects.ssh_probe import loopback_client  # (which also keeps paramiko's own log quiet)

RETRY_SECONDS = 1.0  # between two attempts on a rebooting guest (its sshd gives no signal to wait on)
COMMAND_SECONDS = 600.0  # the copy of /tmp and the sync of a guest with much unwritten data
# `info usernet`: "TCP[HOST_FORWARD]  13  127.0.0.1  3384  10.0.2.15  22  0  0"
_FORWARD = re.compile(r"TCP\[HOST_FORWARD\]\s+\d+\s+\S+\s+(\d+)\s+\S+\s+22\b")


class GuestNotReady(Exception):
    """The guest could not be prepared; the message says what was seen."""


def forwarded_ssh_port(usernet: str) -> int:
    """The host port QEMU forwards to the guest's port 22, from the monitor's `info usernet`."""
    match = _FORWARD.search(usernet)
    if not match:
        raise GuestNotReady(f"QEMU forwards no host port to the guest's SSH port (info usernet: {usernet.strip()!r})")
    return int(match.group(1))


class GuestConnection:
    """One SSH connection to the build VM, kept across its checkpoints (under TCG connecting
    costs more than the command); dropped on any error, made again on the next command."""

    def __init__(self, port: int, user: str, key_path: str) -> None:
        self.port, self.user = port, user
        self.key = paramiko.Ed25519Key.from_private_key_file(key_path)
        self.client: paramiko.SSHClient | None = None

    def run(self, script: bytes) -> tuple[int, str]:
        """The exit status and the non-empty lines of stdout and stderr of `sudo sh -s` < script."""
        try:
            if self.client is None:
                client = loopback_client(self.port, self.user, self.key, timeout=10)
                client.get_transport().set_keepalive(30)  # type: ignore[union-attr]  # hours between two checkpoints
                self.client = client
            stdin, stdout, stderr = self.client.exec_command("sudo -n /bin/sh -s", timeout=COMMAND_SECONDS)
            stdin.write(script)
            stdin.channel.shutdown_write()
            out, err = stdout.read(), stderr.read()
            status = stdout.channel.recv_exit_status()
        except BaseException:
            self.close()
            raise
        text = (out + err).decode(errors="replace")
        return status, "\n".join(line for line in text.splitlines() if line.strip())

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class Guests:
    """The connection to the build VM, by the port QEMU forwards (the same for a whole build)."""

    def __init__(self) -> None:
        self.connection: GuestConnection | None = None

    def to(self, port: int, user: str, key_path: str) -> GuestConnection:
        if self.connection is None or (self.connection.port, self.connection.user) != (port, user):
            self.close()
            self.connection = GuestConnection(port, user, key_path)
        return self.connection

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def prepare(guest: GuestConnection, position: int, say: Callable[[str], None],
            stop: threading.Event | None = None, wait_seconds: float = REBOOT_WAIT_SECONDS) -> None:
    """Runs guest_prepare_script as root; returns once a guest that is up has flushed."""
    script = guest_prepare_script(position).encode()
    deadline = time.monotonic() + wait_seconds
    going_down, last = False, ""
    while True:
        try:
            status, output = guest.run(script)
        except paramiko.AuthenticationException:  # the same key Packer logged in with: not a reboot
            raise GuestNotReady(f"the guest refused {guest.user!r}'s key over SSH") from None
        except (paramiko.SSHException, OSError, EOFError, socket.timeout) as exc:
            # a customizer's reboot may have closed sshd before this first try: wait for the new boot
            status, output, last = None, "", f"{type(exc).__name__}: {exc}".rstrip(": ")
        if status == 0:
            say(output.rstrip())
            return
        if status == GOING_DOWN_EXIT:
            if not going_down:
                say(output.rstrip())
            going_down = True
        elif status is not None:
            raise GuestNotReady(f"preparing the guest failed (exit {status}): {output.strip()}")
        if time.monotonic() > deadline:
            raise GuestNotReady(f"the guest did not answer over SSH (or come back from a reboot) within "
                                f"{wait_seconds:.0f} s; last attempt: {last or 'it was still going down'}")
        if (stop or threading.Event()).wait(RETRY_SECONDS):  # a rebooting guest: ask its next boot
            raise GuestNotReady("the build ended while the guest was being prepared")
