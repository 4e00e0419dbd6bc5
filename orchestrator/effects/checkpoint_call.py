"""The shell-local step of a checkpoint: asks the run's process (checkpoint_agent.py) to take
the checkpoint after step POSITION and prints its answer, its exit status the step's. The
standard library only: it starts in a few tens of milliseconds.

Usage (generated into the HCL): python -m orchestrator.effects.checkpoint_call SOCKET POSITION
"""
from __future__ import annotations

import socket
import sys


def main(argv: list[str]) -> int:
    path, position = argv
    status = None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(path)
            conn.sendall(f"{position}\n".encode())
            for raw in conn.makefile("rb"):
                kind, _, text = raw.decode("utf-8", "replace").rstrip("\n").partition(" ")
                if kind == "exit":
                    status = int(text)
                else:
                    print(text, file=sys.stderr if kind == "err" else sys.stdout, flush=True)
    except OSError as exc:
        print(f"orchestrator-checkpoint: failed after step {position}: the run's process did not answer at "
              f"{path} ({exc.strerror or exc})", file=sys.stderr)
        return 1
    if status is None:
        print(f"orchestrator-checkpoint: failed after step {position}: the run's process gave no answer",
              file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
