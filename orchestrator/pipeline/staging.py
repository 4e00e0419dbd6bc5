"""A run's staging: every temporary file of one build (HCL, step scripts, cloud-init seed, SSH
key, Packer's own temporaries, the build disk) in one directory of its own, the on-prem
counterpart of AIB's IT_<resourceGroup>_<template> resource group. It goes when the run ends,
whatever the outcome, unless errorHandling `abort` keeps the failed build VM's disk; a run
killed before it could remove it is cleaned up by recovery (its paths are in the run record).

The run's records (customization.log, the build VM's console, plan.json, template.json) live
apart, in runs/RUN, and stay.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import Config, make_private_dir

# Packer puts its plugins' unix sockets in $TMPDIR ("/packer-plugin" and up to 10 digits); a
# socket path has at most 107 bytes (measured: 75 works, 91 fails with "bind: invalid argument")
_MAX_TEMP_PATH = 80


TEMP_POINTER = "temp-dir"  # in the staging root: where Packer's temporaries are, when not in it


@dataclass
class Staging:
    root: Path
    temp: Path  # Packer's TMPDIR: under root when the path is short enough, else in /tmp
    kept: bool = False

    @classmethod
    def create(cls, config: Config, run_id: str) -> "Staging":
        root = config.home / "staging" / run_id
        make_private_dir(root)
        temp = root / "tmp"
        if len(str(temp)) <= _MAX_TEMP_PATH:
            make_private_dir(temp)
        else:
            prefix = f"orchestrator-{run_id}-"
            base = tempfile.gettempdir()  # $TMPDIR; /tmp when even that is too long a start
            if len(base) + 1 + len(prefix) + 8 > _MAX_TEMP_PATH:
                base = "/tmp"
            temp = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
            (root / TEMP_POINTER).write_text(str(temp))  # a fleet host's sweep finds it by this
        return cls(root, temp)

    @property
    def packer_output(self) -> Path:
        return self.root / "packer-output"

    def remove(self) -> None:
        """Everything but a kept build VM (its disk and key stay in root; Packer's temporaries go)."""
        shutil.rmtree(self.temp, ignore_errors=True)
        if not self.kept:
            shutil.rmtree(self.root, ignore_errors=True)
