"""The image store's published objects, read over the REST API's Microsoft.Compute paths by
Microsoft's azure-mgmt-compute, unmodified: a managed image and a gallery image version that
the store published into real libvirt pools."""
from __future__ import annotations

import pytest
from azure.core.exceptions import ResourceNotFoundError

from tests.api_helpers import StaticToken, make_token, start_server
from tests.store_helpers import (DEFINITION, MANAGED, distribute, gallery_target, libvirtd, make_disk,  # noqa: F401
                                 plan_for, pools, store_config)

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"  # the store helpers' ids


def test_azure_mgmt_compute_reads_what_the_store_published(store_config, tmp_path, pools):
    from azure.mgmt.compute import ComputeManagementClient

    plan = plan_for([{"type": "ManagedImage", "runOutputName": "mi", "imageId": MANAGED, "location": "westus"},
                     gallery_target(replicationRegions=["eastus", "westus"])])
    state, run_id = distribute(store_config, plan, make_disk(tmp_path / "d"))
    outputs = {o["name"]: o["properties"] for o in state.outputs(run_id)}
    token = make_token(store_config.home, "reader", "reader", f"/subscriptions/{SUBSCRIPTION}")
    server = start_server(store_config.home)
    try:
        with ComputeManagementClient(StaticToken(token), SUBSCRIPTION, base_url=server.url,
                                     connection_verify=server.ca) as compute:
            image = compute.images.get("images", "debian12-managed")
            assert image.id == MANAGED and image.location == "westus"
            assert image.storage_profile.os_disk.os_type == "Linux"
            assert image.storage_profile.os_disk.blob_uri == outputs["mi"]["artifactUri"]
            versions = list(compute.gallery_image_versions.list_by_gallery_image("images", "golden", "debian12"))
            assert [v.name for v in versions] == [outputs["gallery"]["version"]]
            assert versions[0].id == f"{DEFINITION}/versions/{outputs['gallery']['version']}"
            assert {r.name for r in versions[0].publishing_profile.target_regions} == {"eastus", "westus"}
            one = compute.gallery_image_versions.get("images", "golden", "debian12", versions[0].name)
            assert one.provisioning_state == "Succeeded"
            with pytest.raises(ResourceNotFoundError):
                compute.images.get("images", "no-such-image")
    finally:
        server.process.terminate()
        server.process.communicate(timeout=30)
