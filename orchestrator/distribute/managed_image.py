"""The ManagedImage target: one standalone qcow2 volume in the pool of the target's location,
named by the image's resource ID (.../providers/Microsoft.Compute/images/NAME)."""
from __future__ import annotations

from orchestrator.distribute.base import DistributeJob
from orchestrator.distribute.store_target import StoreDistributor, refuse
from orchestrator.effects.store_state import DuplicateObject, StoreState


class ManagedImageDistributor(StoreDistributor):
    kind = "ManagedImage"
    id_field = "imageId"

    def region_fields(self, job: DistributeJob) -> list[str]:
        return [".location"]

    def check_object(self, job: DistributeJob, store: StoreState) -> None:
        rid = self.resource(job)
        existing = store.get(rid.key)
        if existing is not None and existing["state"] == "Succeeded":
            raise _exists(job, existing)

    def distribute(self, job: DistributeJob) -> None:
        rid = self.resource(job)
        try:
            self._publish(job, rid, location=job.target.regions[0] if job.target.regions else None)
        except DuplicateObject as dup:
            raise _exists(job, dup.existing) from None


def _exists(job: DistributeJob, existing: dict):
    return refuse(job, ".imageId", "image-exists",
                  f"the managed image {existing['resource_id']} exists already (made by run {existing['run_id']}, "
                  f"{existing['state']})",
                  f"delete it first (`orchestrate store delete {existing['resource_id']}`), or name another image")
