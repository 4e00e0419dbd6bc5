"""The provisioners that take a disk checkpoint after each customizer, and the one that starts
a build resumed from a checkpoint (no I/O: render.py places them, effects/checkpoint_hook.py
is what the host side runs).

After a customizer: the guest keeps a copy of /tmp (Debian empties /tmp at every boot, so a
build resumed from this checkpoint would lose a File step's upload or a deprovisioning override
script written there) and flushes its file systems; then a shell-local step on the host freezes
the disk's current top layer through QEMU's monitor and gives the VM a new overlay, without a
reboot and without copying the disk. A resumed build first puts /tmp back and leaves only this
run's key in the build user's authorized_keys."""
from __future__ import annotations

import shlex
from dataclasses import dataclass

SAVED_TMP = "/var/lib/orchestrator/tmp"
HOOK_MARK = "orchestrator-checkpoint:"


@dataclass(frozen=True)
class CheckpointPlan:
    """How a build takes its checkpoints: `hook` is the host command's argv prefix (the step's
    position in the customizers is appended); the customizers up to `start_after` come from the
    checkpoint the build starts on and are not run."""

    hook: tuple[str, ...]
    start_after: int = 0
    qmp_socket: str = ""


def guest_checkpoint_script() -> str:
    return f"""#!/bin/sh
# Runs as root after a customizer, before the host freezes the disk: keep /tmp for a resumed
# build (the boot of a resumed build empties /tmp), then flush everything to the disk.
set -e
rm -rf {SAVED_TMP}
mkdir -p {SAVED_TMP}
tar -C /tmp --exclude='./systemd-private-*' --warning=no-file-ignored -cf - . | tar -C {SAVED_TMP} -xpf -
sync
"""


def host_checkpoint_script(hook: tuple[str, ...], position: int) -> str:
    command = " ".join(shlex.quote(part) for part in (*hook, str(position)))
    return f"#!/bin/sh\n# The host side of the checkpoint after customizer {position}\nexec {command}\n"


def resume_script(build_user: str, public_key: str) -> str:
    home = f"/home/{build_user}"
    return f"""#!/bin/sh
# Runs as root first in a build resumed from a checkpoint: /tmp as it was at the checkpoint,
# and only this run's key opens the build user (the earlier run's is still in the file).
set -e
if [ -d {SAVED_TMP} ]; then
    tar -C {SAVED_TMP} -cf - . | tar -C /tmp -xpf -
fi
printf '%s\\n' {shlex.quote(public_key.strip())} > {home}/.ssh/authorized_keys.new
chown {build_user}: {home}/.ssh/authorized_keys.new
chmod 600 {home}/.ssh/authorized_keys.new
mv -f {home}/.ssh/authorized_keys.new {home}/.ssh/authorized_keys
echo "{HOOK_MARK} resumed: /tmp restored, the earlier run's key removed"
"""
