"""The run's own process serves the checkpoint steps (a thread beside Packer): the shell-local
step is a small client (checkpoint_call.py) that asks over a UNIX socket in the run's staging
and prints the answer. Here the SSH connection to the guest outlives one checkpoint, and no
Python with paramiko and qemu.qmp starts for each: under TCG those were most of a
checkpoint's cost beside the paused save itself. The work is checkpoint_hook.answer's."""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from types import TracebackType

from orchestrator.effects import checkpoint_guest
from orchestrator.effects.checkpoint_hook import Said, answer

ENCODING = "utf-8"


class CheckpointAgent:
    """`with CheckpointAgent(manifest, sock):` around Packer's run; requests are one line (the
    position), answers lines of `out TEXT` / `err TEXT` and a last `exit N`."""

    def __init__(self, manifest_path: Path, socket_path: Path) -> None:
        self.manifest_path, self.socket_path = manifest_path, socket_path
        self.guests = checkpoint_guest.Guests()
        self.stop = threading.Event()
        self.listener: socket.socket | None = None
        self.thread: threading.Thread | None = None

    def __enter__(self) -> "CheckpointAgent":
        self.socket_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)  # only this user may ask for a checkpoint (the staging is owner-only too)
        try:
            listener.bind(str(self.socket_path))
        finally:
            os.umask(old)
        listener.listen(1)
        self.listener = listener
        self.thread = threading.Thread(target=self._serve, daemon=True, name="checkpoint agent")
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop.set()  # a guest being waited for gives up at its next try
        if self.listener is not None:
            try:  # wakes the accept() blocked in the thread (close alone does not, on Linux)
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
        if self.thread is not None:
            self.thread.join(timeout=30)  # a freeze under way ends with its QEMU; never hang the run on it
        self.guests.close()
        self.socket_path.unlink(missing_ok=True)

    def _serve(self) -> None:
        assert self.listener is not None
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed: the build is over
                return
            with conn:
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        def send(line: str) -> None:
            for part in line.splitlines() or [""]:
                try:
                    conn.sendall(part.encode(ENCODING, "replace") + b"\n")
                except OSError:  # the step was stopped (Packer canceled): the work goes on, unheard
                    pass

        request = conn.makefile("r", encoding=ENCODING).readline().strip()
        if not request.isdigit():
            send(f"err orchestrator-checkpoint: not a step position: {request[:80]!r}")
            send("exit 2")
            return
        status = answer(str(self.manifest_path), int(request), Said(lambda line: send(f"out {line}"),
                                                                      lambda line: send(f"err {line}")),
                        self.guests, self.stop)
        send(f"exit {status}")
