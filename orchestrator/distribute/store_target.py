"""What the ManagedImage and SharedImage targets share: regions mapped to storage pools, the
checks made before the build VM boots, publishing, and whether an earlier output still holds."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from orchestrator.core.problems import Problem
from orchestrator.core.resource_ids import ResourceId, parse
from orchestrator.distribute.base import DistributeJob, Reusable
from orchestrator.distribute.publish import Placement, Published, connect, publish
from orchestrator.effects.store_state import StoreState
from orchestrator.errors import TemplateInvalid


def target_index(job: DistributeJob) -> int:
    return [t.run_output_name for t in job.plan.targets].index(job.target.run_output_name)


def refuse(job: DistributeJob, field: str, rule: str, message: str, hint: str) -> TemplateInvalid:
    return TemplateInvalid([Problem(f"$.properties.distribute[{target_index(job)}]{field}", rule, message, hint)],
                           f"{job.plan.name} (distributing {job.target.run_output_name!r})")


class StoreDistributor:
    kind = ""
    id_field = ""

    def resource(self, job: DistributeJob) -> ResourceId:
        rid = parse(job.target.artifact_id)
        if rid is None:
            raise refuse(job, f".{self.id_field}", "resource-id", f"`{job.target.artifact_id}` is not a resource ID "
                         "this target can publish to", "see the README's resource ID shapes")
        return rid

    def region_fields(self, job: DistributeJob) -> list[str]:
        raise NotImplementedError

    def placements(self, job: DistributeJob) -> list[Placement]:
        """Each region the target names, with its pool: [pools.storage] for its storageAccountType,
        else [pools.regions], else [pools] default."""
        target, config = job.target, job.config
        settings = {name: (count, account) for name, count, account in target.region_settings}
        regions = list(target.regions) or ["default"]
        found = []
        for region, field in zip(regions, self.region_fields(job)):
            count, account = settings.get(region, (1, None))
            account = account or target.storage_account_type
            pool = config.pool_for(region, account)
            if pool is None:
                raise refuse(job, field, "region-pool", f"region `{region}` has no storage pool",
                             f'map it in {config.setting_source()}: [pools.regions] {region} = "POOL", '
                             'or set [pools] default = "POOL"')
            found.append(Placement(region, pool, count, account))
        return found

    def check(self, job: DistributeJob) -> None:
        """Before the build VM boots: every region has a pool, libvirt answers, the pools exist
        (missing ones are created), and the object may be written."""
        placements = self.placements(job)
        with connect(job.config) as lv:
            for p in placements:
                lv.pool(p.pool, create_in=job.config.pool_directory)
        self.check_object(job, StoreState(job.state))

    def check_object(self, job: DistributeJob, store: StoreState) -> None:
        raise NotImplementedError

    def _publish(self, job: DistributeJob, rid: ResourceId, **kw: Any) -> Published:
        target = job.target
        job.progress(f"publishing {self.kind} {target.run_output_name!r}")
        return publish(job.config, job.state, rid, job.disk, self.placements(job), job.run_id,
                       target.run_output_name, self.kind, source=job.plan.source.description,
                       tags=dict(target.artifact_tags), cancel=job.cancel, os_type=job.plan.os_type,
                       log=lambda line: job.log.write("orchestrator", line),
                       output=lambda published: self.output(job, published), **kw)

    def output(self, job: DistributeJob, published: Published) -> tuple:
        first = published.volumes[0]
        details = {"sha256": published.sha256, "sizeBytes": published.virtual_size, "fileBytes": published.size,
                   "format": "qcow2", "artifactTags": dict(job.target.artifact_tags),
                   "replicas": [{"region": v.region, "pool": v.pool, "volume": v.volume, "path": v.path,
                                 "replicaCount": v.replica_count, "storageAccountType": v.storage_account_type}
                                for v in published.volumes],
                   "_key": published.rid.key}
        job.log.write("orchestrator", f"{self.kind} {job.target.run_output_name!r}: {published.rid.resource_id} "
                      f"in {', '.join(f'{v.region} ({v.pool})' for v in published.volumes)}")
        return (job.run_id, job.target.run_output_name, self.kind, published.rid.resource_id,
                Path(first.path).as_uri() if first.path else None, {**details, **self.extra_details(job, published)})

    def extra_details(self, job: DistributeJob, published: Published) -> dict[str, Any]:
        return {}

    def reusable(self, output: dict[str, Any]) -> Reusable:
        """The object an earlier run published is still there (its volumes, their sizes)."""
        props = output["properties"]
        if output["type"] != self.kind or not props.get("_key"):
            return Reusable(False)
        return _still_there(props)


def _still_there(props: dict[str, Any]) -> Reusable:
    for replica in props.get("replicas", []):
        path = replica.get("path")
        try:
            size = os.stat(path).st_size if path else -1
        except OSError:
            return Reusable(False, f"the volume {path} of {props['artifactId']} is gone")
        if size != props.get("fileBytes"):
            return Reusable(False, f"the volume {path} of {props['artifactId']} changed since")
    return Reusable(True)
