"""The VHD target: a fixed VHD (Azure's rules: fixed subformat, whole MiB) on this host."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from orchestrator.config import Config
from orchestrator.core.paths import local_path_of_uri, safe_component, under
from orchestrator.core.plan import TargetPlan
from orchestrator.core.problems import Problem
from orchestrator.distribute.base import DistributeJob, Reusable
from orchestrator.effects import qemu_img
from orchestrator.effects.files import sha256_file
from orchestrator.effects.hostpolicy import HostPolicy, vhd_write_problem
from orchestrator.errors import BuildFailed, TemplateInvalid


def vhd_destination(config: Config, name: str, target: TargetPlan, run_id: str) -> Path:
    """Where a VHD target is written: its `uri` (checked by the host policy), else under the
    data home's artifacts/, each template-given name encoded into one path component."""
    if target.uri:
        path, why = local_path_of_uri(target.uri, "uri")
        if path is None:
            raise ValueError(why)
        return Path(path)
    root = config.artifacts_dir
    dest = root / safe_component(name) / safe_component(target.run_output_name) / f"{safe_component(run_id)}.vhd"
    if not under(os.path.realpath(root), os.path.realpath(dest)):  # a symlink planted under artifacts/
        raise BuildFailed(f"the VHD path {dest} leads outside {root}",
                          hint=f"remove the symbolic link under {root}")
    return dest


class VhdDistributor:
    kind = "VHD"

    def _dest(self, job: DistributeJob) -> Path:
        return vhd_destination(job.config, job.plan.name, job.target, job.run_id)

    def check(self, job: DistributeJob) -> None:
        if not job.target.uri:
            self._dest(job)
            return
        policy = HostPolicy.of(job.config, None)
        found = vhd_write_problem(job.target.uri, policy, job.owned)
        if found:
            index = [t.run_output_name for t in job.plan.targets].index(job.target.run_output_name)
            raise TemplateInvalid([Problem(f"$.properties.distribute[{index}].uri", "vhd-destination", *found)],
                                  f"{job.plan.name} (distributing {job.target.run_output_name!r})")

    def distribute(self, job: DistributeJob) -> None:
        self.check(job)  # again: the file system may have changed since the build started
        target = job.target
        job.progress(f"writing VHD {target.run_output_name!r}")
        dest = self._dest(job)
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        started = time.monotonic()
        size = qemu_img.export_fixed_vhd(job.disk, dest)
        converted = time.monotonic()
        digest = sha256_file(dest)
        info = dest.stat()
        job.log.write("orchestrator", f"VHD {target.run_output_name!r}: {dest} ({size // 2**20} MiB fixed, "
                      f"sha256 {digest}; converted in {converted - started:.1f} s, "
                      f"hashed in {time.monotonic() - converted:.1f} s)")
        job.state.set_output(job.run_id, target.run_output_name, self.kind, "Succeeded", artifact_id=str(dest),
                             artifact_uri=dest.as_uri(), details={
                                 "path": str(dest), "sizeBytes": size, "fileBytes": info.st_size,
                                 "sha256": digest, "format": "vpc", "subformat": "fixed",
                                 "artifactTags": dict(target.artifact_tags),
                                 "_stat": _stat_key(info)})

    def reusable(self, output: dict[str, Any]) -> Reusable:
        """A cheap check first (the file's size, mtime and inode as recorded); when they differ,
        the sha256 decides: an artifact changed or replaced since is not reused."""
        props = output["properties"]
        path = props.get("path")
        if output["type"] != self.kind or not path:
            return Reusable(False)
        try:
            info = Path(path).stat()
        except OSError:
            return Reusable(False, f"{path} is gone")
        if info.st_size != props.get("fileBytes"):
            return Reusable(False, f"{path} changed since (its size is {info.st_size}, not {props.get('fileBytes')})")
        if props.get("_stat") == _stat_key(info):
            return Reusable(True)
        digest = sha256_file(Path(path))
        if digest != props.get("sha256"):
            return Reusable(False, f"{path} changed since (sha256 {digest}, recorded {props.get('sha256')})")
        return Reusable(True, f"{path} was touched since but its sha256 still matches")


def _stat_key(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ino]
