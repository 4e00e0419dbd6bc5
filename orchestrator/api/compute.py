"""What the image store published, read-only, under Microsoft.Compute's paths: managed images
and gallery image versions, so that azure-mgmt-compute's `images.get` and
`gallery_image_versions.get` / `list_by_gallery_image` see what orchestrator built. Only
objects whose publish finished (Succeeded) are shown; each replica's volume is named by its
file URI."""
from __future__ import annotations

import time
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from orchestrator.api.errors import not_found
from orchestrator.core.resource_ids import ResourceId

COMPUTE = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute"


def add_routes(app: FastAPI, store: Callable[[], Any], authorize: Callable[..., Any]) -> None:
    def objects():
        from orchestrator.effects.store_state import StoreState

        return StoreState(store())

    @app.get(COMPUTE + "/images/{name}")
    def managed_image(request: Request, sub: str, rg: str, name: str) -> JSONResponse:
        authorize(request, sub, rg)
        record = objects().get(ResourceId("ManagedImage", sub, rg, name).key)
        if record is None or record["state"] != "Succeeded":
            raise not_found(f"the managed image {name!r} in resource group {rg!r}")
        return JSONResponse(_image(record))

    @app.get(COMPUTE + "/galleries/{gallery}/images/{definition}/versions")
    def versions(request: Request, sub: str, rg: str, gallery: str, definition: str) -> JSONResponse:
        authorize(request, sub, rg)
        parent = ResourceId("ImageDefinition", sub, rg, gallery, definition).key
        found = objects().objects("ImageVersion", parent, states=("Succeeded",))
        return JSONResponse({"value": [_version(v) for v in found]})

    @app.get(COMPUTE + "/galleries/{gallery}/images/{definition}/versions/{version}")
    def version(request: Request, sub: str, rg: str, gallery: str, definition: str, version: str) -> JSONResponse:
        authorize(request, sub, rg)
        record = objects().get(ResourceId("ImageVersion", sub, rg, gallery, definition, version).key)
        if record is None or record["state"] != "Succeeded":
            raise not_found(f"the image version {version!r} of {gallery}/{definition}")
        return JSONResponse(_version(record))


def _stamp(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _uri(record: dict[str, Any]) -> str | None:
    from pathlib import Path

    paths = [v.path for v in record["volumes"] if v.path]
    return Path(paths[0]).as_uri() if paths else None


def _image(record: dict[str, Any]) -> dict[str, Any]:
    return {"id": record["resource_id"], "name": record["resource_id"].rsplit("/", 1)[-1],
            "type": "Microsoft.Compute/images", "location": record.get("location") or "local",
            "tags": record["tags"], "properties": {
                "provisioningState": "Succeeded", "hyperVGeneration": "V1",
                "storageProfile": {"osDisk": {"osType": record.get("os_type") or "Linux", "osState": "Generalized",
                                              "blobUri": _uri(record),
                                              "diskSizeGB": -(-(record.get("virtual_size") or 0) // 2**30)}}}}


def _version(record: dict[str, Any]) -> dict[str, Any]:
    regions = [{"name": v.region, "regionalReplicaCount": v.replica_count,
                "storageAccountType": v.storage_account_type or "Standard_LRS"} for v in record["volumes"]]
    return {"id": record["resource_id"], "name": record["version"], "type": "Microsoft.Compute/galleries/images/versions",
            "location": record.get("location") or (regions[0]["name"] if regions else "local"), "tags": record["tags"],
            "properties": {
                "provisioningState": "Succeeded",
                "publishingProfile": {"targetRegions": regions, "excludeFromLatest": record["exclude_from_latest"],
                                      "publishedDate": _stamp(record.get("finished_at"))},
                "storageProfile": {"osDiskImage": {"sizeInGB": -(-(record.get("virtual_size") or 0) // 2**30),
                                                   "hostCaching": "ReadWrite", "source": {"uri": _uri(record)}}}}}
