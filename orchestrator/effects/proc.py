"""One wrapper for running host tools: missing tools and failures become clear errors."""
from __future__ import annotations

import queue
import subprocess
import threading
from typing import IO, AnyStr, Sequence

from orchestrator.errors import BuildFailed, EnvironmentProblem

SETUP_HINT = "run scripts/setup-host.sh (as root) to install Packer, QEMU and the other host tools"


def run(argv: Sequence[str], what: str, timeout: float | None = 600) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                umask=0o077)  # what host tools write (VHDs, images) is owner-only
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{what}: `{argv[0]}` is not installed", hint=SETUP_HINT) from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildFailed(f"{what}: `{argv[0]}` did not finish within {timeout:.0f} s") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise BuildFailed(f"{what}: `{' '.join(argv[:2])}` failed (exit {result.returncode}): {tail}")
    return result


def line_queue(stream: IO[AnyStr]) -> "queue.Queue[AnyStr | None]":
    """The lines of a child's output, read by a thread, so the reader can wait with a timeout;
    None marks the end of the stream."""
    lines: queue.Queue[AnyStr | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines
