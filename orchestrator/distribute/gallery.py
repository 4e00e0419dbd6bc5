"""The SharedImage target: a gallery image version, one volume per replication region's pool.

`galleryImageId` names a definition (the version is generated: AIB's 0.DATE.TIME scheme, or
`versioning` Latest {major} of newer APIs, or Source: the source image's version) or an
explicit .../versions/X.Y.Z (honoured; one that exists is refused). The version number is
allocated inside the transaction that records the version, so concurrent publishes differ.
"""
from __future__ import annotations

import time
from typing import Any

from orchestrator.core.resource_ids import ResourceId, next_version, parse_version
from orchestrator.distribute.base import DistributeJob
from orchestrator.distribute.publish import Published
from orchestrator.distribute.store_target import StoreDistributor, refuse
from orchestrator.effects.store_state import DuplicateObject, StoreState


class SharedImageDistributor(StoreDistributor):
    kind = "SharedImage"
    id_field = "galleryImageId"

    def resource(self, job: DistributeJob) -> ResourceId:
        rid = super().resource(job)
        if rid.kind not in ("ImageDefinition", "ImageVersion") or (rid.version and not parse_version(rid.version)):
            raise refuse(job, ".galleryImageId", "resource-id",
                         f"`{job.target.artifact_id}` is not an image definition or a version X.Y.Z of one",
                         ".../galleries/G/images/DEF or .../galleries/G/images/DEF/versions/1.0.0")
        return rid

    def region_fields(self, job: DistributeJob) -> list[str]:
        count = max(len(job.target.regions), 1)
        if not job.target.regions:
            return [""]
        spelling = ".targetRegions[{}].name" if job.target.region_settings else ".replicationRegions[{}]"
        return [spelling.format(i) for i in range(count)]

    def _version_for(self, job: DistributeJob):
        scheme = (job.target.versioning_scheme or "").lower()
        if scheme == "source":
            parts = parse_version(job.plan.source.resolved_version or "")
            if parts is None:
                raise refuse(job, ".versioning.scheme", "versioning",
                             f"versioning Source takes the source image's version, and "
                             f"`{job.plan.source.resolved_version}` ({job.plan.source.description}) is not X.Y.Z",
                             "use scheme Latest, or name the version in galleryImageId (.../versions/X.Y.Z)")
            return lambda existing: parts
        now = time.gmtime()
        stamp = (int(time.strftime("%Y%m%d", now)), int(time.strftime("%H%M%S", now)))
        return lambda existing: next_version(existing, job.target.versioning_scheme, job.target.versioning_major, stamp)

    def check_object(self, job: DistributeJob, store: StoreState) -> None:
        rid = self.resource(job)
        if rid.kind == "ImageVersion":
            existing = store.get(rid.key)
            if existing is not None:
                raise _exists(job, existing)
        else:
            version = self._version_for(job)
            if (job.target.versioning_scheme or "").lower() == "source":
                existing = store.get(rid.with_version(".".join(map(str, version([])))).key)
                if existing is not None:
                    raise _exists(job, existing)

    def distribute(self, job: DistributeJob) -> None:
        rid = self.resource(job)
        try:
            self._publish(job, rid, location=None, exclude_from_latest=job.target.exclude_from_latest,
                          storage_account_type=job.target.storage_account_type,
                          version_for=None if rid.kind == "ImageVersion" else self._version_for(job))
        except DuplicateObject as dup:
            raise _exists(job, dup.existing) from None

    def extra_details(self, job: DistributeJob, published: Published) -> dict[str, Any]:
        return {"version": published.rid.version, "excludeFromLatest": job.target.exclude_from_latest,
                "storageAccountType": job.target.storage_account_type or "Standard_LRS"}


def _exists(job: DistributeJob, existing: dict):
    return refuse(job, ".galleryImageId", "version-exists",
                  f"the image version {existing['resource_id']} exists already (made by run {existing['run_id']}, "
                  f"{existing['state']})",
                  "name a new version, or drop /versions/X.Y.Z to have one generated")
