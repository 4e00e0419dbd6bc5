"""The provisioners that take a disk checkpoint after each customizer, and the one that starts
a build resumed from a checkpoint (no I/O: render.py places them, effects/checkpoint_hook.py
is what the host side runs).

After a customizer, one shell-local step on the host asks the run's process to take the
checkpoint (effects/checkpoint_agent.py): over an SSH connection it keeps for the build, the
guest keeps a copy of /tmp (Debian empties /tmp at every boot, so a build resumed from this
checkpoint would lose a File step's upload or a deprovisioning override script written there)
and flushes its file systems (guest_prepare_script; a guest going down is asked again on its
new boot); then the hook freezes the disk's current top layer through QEMU's monitor and gives
the VM a new overlay, without a reboot and without copying the disk. One SSH command on a
kept connection instead of Packer's two shell steps (upload, chmod, run and remove each), and
no Python started per checkpoint: those were most of a checkpoint's cost under TCG. A resumed
build first puts /tmp back and leaves only this run's key in the build user's authorized_keys."""
from __future__ import annotations

import shlex
from dataclasses import dataclass

SAVED_TMP = "/var/lib/orchestrator/tmp"
MARKER = "/var/lib/orchestrator/checkpoint"  # the position of the last checkpoint: a warm restore checks it
HOOK_MARK = "orchestrator-checkpoint:"
BASE_NAME = "(boot)"  # the step name of a warm base: the checkpoint at position 0
REBOOT_WAIT_SECONDS = 300  # a guest that takes longer to reboot fails the checkpoint, said so
GOING_DOWN_EXIT = 75  # guest_prepare_script's answer for a guest going down (EX_TEMPFAIL: ask again)
# A guest is going down once systemd says "stopping", or as soon as a reboot or power-off job is
# queued: `systemctl reboot` returns before the state changes, and a check run at once would
# still see "running".
GOING_DOWN = ('{ [ "$(systemctl is-system-running 2>/dev/null)" = stopping ] || '
              "systemctl list-jobs --no-legend 2>/dev/null | grep -qE '(reboot|poweroff|halt|kexec)[.]target'; }")


@dataclass(frozen=True)
class CheckpointPlan:
    """How a build takes its checkpoints: `hook` is the host command's argv prefix (the step's
    position in the customizers is appended); the customizers up to `start_after` come from the
    checkpoint the build starts on and are not run."""

    hook: tuple[str, ...]
    start_after: int = 0
    qmp_socket: str = ""
    warm: bool = False  # QEMU may save its state with each checkpoint (core/warm.py)
    incoming: str = ""  # the saved state this build restores (a warm start); "" boots
    random_hex: str = ""  # host random bytes for the restored guest's RNG
    base: bool = False  # also a (warm) checkpoint of the booted VM before the first customizer
    from_base: bool = False  # the build starts on a warm base (the checkpoint at position 0)

    @property
    def resumed(self) -> bool:
        """The build starts on a checkpoint: after a customizer, or a warm base."""
        return self.start_after > 0 or self.from_base


def guest_prepare_script(position: int) -> str:
    """What the host's checkpoint hook runs in the guest over SSH (as root, on stdin) before it
    freezes the disk. A guest that is going down (a customizer rebooted it) is never
    checkpointed: the script says so and exits GOING_DOWN_EXIT, and the hook asks again on the
    new boot."""
    return f"""#!/bin/sh
# Before the host freezes the disk: keep /tmp for a resumed build (the boot of a resumed build
# empties /tmp), then flush everything to the disk.
set -e
boot=$(cat /proc/sys/kernel/random/boot_id)
if {GOING_DOWN}; then
    echo "{HOOK_MARK} the guest is going down (boot $boot): waiting for its reboot"
    exit {GOING_DOWN_EXIT}
fi
echo "{HOOK_MARK} guest boot $boot"
mkdir -p {SAVED_TMP.rsplit("/", 1)[0]}
echo {position} > {MARKER}
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
