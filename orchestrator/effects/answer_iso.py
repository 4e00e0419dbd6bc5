"""The Windows deploy proof's answer CD: Autounattend.xml at the root of an ISO 9660 image
with Joliet names (Windows reads those: the file keeps its name and case), made with xorriso as
effects/proof_vm.make_seed_iso makes the Linux proof's NoCloud seed, with a label of its own."""
from __future__ import annotations

import subprocess
from pathlib import Path

from orchestrator.effects.libvirt_store import StoreError


def make_answer_iso(files: dict[str, Path], iso: Path, label: str) -> None:
    """`files`: name on the CD -> file on the host. The ISO appears whole or not at all."""
    part = iso.with_name(iso.name + ".part")
    command = ["xorriso", "-as", "mkisofs", "-quiet", "-output", str(part), "-volid", label, "-joliet", "-rock",
               "-graft-points", *[f"{name}={path}" for name, path in files.items()]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        part.unlink(missing_ok=True)
        raise StoreError(f"xorriso could not make the deploy proof's answer CD: {result.stderr.strip()[-300:]}",
                         hint="install xorriso (scripts/setup-host.sh does)")
    part.chmod(0o600)  # it holds the proof administrator's password
    part.rename(iso)
