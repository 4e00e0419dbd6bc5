"""One wrapper for running host tools: missing tools and failures become clear errors."""
from __future__ import annotations

import subprocess
from typing import Sequence

from orchestrator.errors import BuildFailed, EnvironmentProblem

SETUP_HINT = "run scripts/setup-host.sh (as root) to install Packer, QEMU and the other host tools"


def run(argv: Sequence[str], what: str, timeout: float | None = 600) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise EnvironmentProblem(f"{what}: `{argv[0]}` is not installed", hint=SETUP_HINT) from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildFailed(f"{what}: `{argv[0]}` did not finish within {timeout:.0f} s") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise BuildFailed(f"{what}: `{' '.join(argv[:2])}` failed (exit {result.returncode}): {tail}")
    return result
