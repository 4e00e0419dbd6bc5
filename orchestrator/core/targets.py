"""Distribution targets of an image template: `distribute`."""
from __future__ import annotations

from orchestrator.core import model as m
from orchestrator.core.fields import (API_2020, GALLERY_IMAGE_ID_RE, GALLERY_VERSION_RE, MANAGED_IMAGE_ID_RE,
                                      PLACEHOLDER_RE, RUN_OUTPUT_NAME_RE, SHARED_IMAGE_STORAGE_TYPES,
                                      before_2020, is_version, resource_id_field)
from orchestrator.core.problems import Problem, child
from orchestrator.core.reader import ObjectReader


def read_target(obj: ObjectReader, api: str = API_2020) -> m.Target | None:
    kind = obj.string("type", required=True, hint="ManagedImage, SharedImage or VHD")
    run_output = obj.string("runOutputName", required=True)
    if run_output and not RUN_OUTPUT_NAME_RE.match(run_output) and not PLACEHOLDER_RE.search(run_output):
        obj.problem("runOutputName", "run-output-name",
                    f"`{run_output}` does not match ^[A-Za-z0-9-_.]{{1,64}}$",
                    "letters, digits, '-', '_' and '.', at most 64")
    tags = obj.string_map("artifactTags")
    lowered = (kind or "").lower()
    target: m.Target | None = None
    if lowered == "managedimage":
        image_id = obj.string("imageId", required=True)
        resource_id_field(obj, "imageId", image_id, MANAGED_IMAGE_ID_RE, "not a managed image resource ID",
                     "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/images/NAME")
        location = obj.string("location", required=True)
        if run_output and image_id and location:
            target = m.ManagedImageTarget(run_output, image_id, location, tags)
    elif lowered == "sharedimage":
        gallery_id = obj.string("galleryImageId", required=True)
        if resource_id_field(obj, "galleryImageId", gallery_id, GALLERY_IMAGE_ID_RE,
                        "not a gallery image (or image version) resource ID",
                        "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/galleries/G/images/DEF"):
            _check_explicit_version(obj, gallery_id, api)
        # API 2020-02-14 and older replicate with replicationRegions only (targetRegions came later)
        older = api <= API_2020
        if older and not obj.has("replicationRegions") and not obj.has("targetRegions"):
            obj.problem(None, "required", "`replicationRegions` is required",
                        f"API {api}: list the regions to replicate to, one of them the gallery's region")
        replication = obj.strings("replicationRegions", nonempty=older) or ()
        regions = tuple(obj.objects("targetRegions", _target_region))
        if replication and regions:
            obj.problem("targetRegions", "regions", "give replicationRegions or targetRegions, not both")
        scheme, major = _versioning(obj)
        account = obj.string("storageAccountType")
        if (account and older and account.lower() not in (a.lower() for a in SHARED_IMAGE_STORAGE_TYPES)
                and not PLACEHOLDER_RE.search(account)):
            obj.problem("storageAccountType", "storage-account-type",
                        f"`{account}` is not {' or '.join(SHARED_IMAGE_STORAGE_TYPES)}",
                        f"API {api} stores image versions as Standard_LRS (the default) or Standard_ZRS")
        target = m.SharedImageTarget(
            run_output or "", gallery_id or "", replication, regions,
            bool(obj.get("excludeFromLatest", bool, False)), account,
            scheme, major, tags) if run_output and gallery_id else None
    elif lowered == "vhd":
        uri = obj.string("uri")
        tags = tuple({**dict(tags), **dict(obj.string_map("tags"))}.items())  # VHD's spelling of artifactTags
        target = m.VhdTarget(run_output, uri, tags) if run_output else None
    elif kind is not None:
        obj.problem("type", "target-type", f"unknown distribution type `{kind}`",
                    "use ManagedImage, SharedImage or VHD")
        return None
    obj.finish(f"for a {kind} target" if kind else None)
    return target


def _target_region(obj: ObjectReader) -> m.TargetRegion | None:
    name = obj.string("name", required=True)
    count = obj.get("replicaCount", int, 1)
    if count is not None and not 1 <= count <= 100:
        obj.problem("replicaCount", "replica-count", "must be 1 to 100")
    account = obj.string("storageAccountType")
    obj.finish()
    return m.TargetRegion(name, count or 1, account) if name else None


def _versioning(obj: ObjectReader) -> tuple[str | None, int | None]:
    v = obj.object("versioning")
    if v is None:
        return None, None
    scheme = v.string("scheme", required=True)
    major = v.get("major", int, None)
    if scheme and scheme.lower() not in ("latest", "source"):
        v.problem("scheme", "versioning", f"`{scheme}` is not Latest or Source")
    if major is not None and scheme and scheme.lower() != "latest":
        v.problem("major", "versioning", "major goes with scheme Latest")
    v.finish()
    return scheme, major


def _check_explicit_version(obj: ObjectReader, gallery_id: str, api: str) -> None:
    """galleryImageId names an image definition (versions numbered by AIB) or, from API
    2020-02-14 on, an explicit version to create."""
    found = GALLERY_VERSION_RE.search(gallery_id)
    if found is None:
        return
    if before_2020(api):
        obj.problem("galleryImageId", "gallery-version",
                    f"API {api} numbers image versions itself: galleryImageId names an image definition",
                    f"drop /versions/{found.group(1)}, or use apiVersion {API_2020} or newer")
    elif not is_version(found.group(1), latest=False):
        obj.problem("galleryImageId", "version-format", f"`{found.group(1)}` is not an image version number",
                    ".../versions/1.0.0, or end at the image definition to number versions automatically")


def check_run_outputs(targets: tuple[m.Target, ...], path: str, problems: list[Problem]) -> None:
    seen: dict[str, int] = {}
    for index, target in enumerate(targets):
        key = target.run_output_name.lower()
        if key in seen and not PLACEHOLDER_RE.search(key):
            problems.append(Problem(child(child(path, index), "runOutputName"), "unique-run-output",
                                    f"runOutputName `{target.run_output_name}` is used by entry {seen[key]} too",
                                    "every distribution target needs its own runOutputName"))
        seen.setdefault(key, index)
