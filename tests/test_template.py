"""The template loader: every rule, with its JSON path and message. Pure and fast."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from orchestrator.core import model as m
from orchestrator.core.template import load_template, read_template
from orchestrator.errors import TemplateInvalid
from tests.helpers import is_arm, is_trigger, linux_template, sample_cases, sample_data

API_2019 = "2019-05-01-preview"
WINDOWS_SOURCE = {"type": "PlatformImage", "publisher": "MicrosoftWindowsServer", "offer": "WindowsServer",
                  "sku": "2019-Datacenter", "version": "latest"}
GALLERY_IMAGE = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/def"
MANAGED_IMAGE = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/i"


def problems_of(data):
    found = []
    read_template(data, found)
    return found


def rules(data) -> set[tuple[str, str]]:
    return {(p.path, p.rule) for p in problems_of(data)}


def only(data) -> list[tuple[str, str, str]]:
    """Every problem as (path, rule, message), for tests that expect exactly one."""
    return [(p.path, p.rule, p.message) for p in problems_of(data)]


def api(data, version: str):
    data["apiVersion"] = version
    return data


def windows_template(**properties):
    properties.setdefault("customize", [{"type": "PowerShell", "name": "hello", "inline": ["echo hello"]}])
    return linux_template(source=copy.deepcopy(WINDOWS_SOURCE), **properties)


def test_minimal_linux_template_loads_with_defaults():
    data = linux_template(buildTimeoutInMinutes=None, vmProfile=None)
    t = load_template(data)
    assert t.build_timeout_minutes == 240
    assert t.vm_profile.vm_size == "Standard_D1_v2"
    assert t.os_type == "Linux"
    assert t.customize == (m.ShellCustomizer("hello", inline=("echo hello",)),)
    assert t.distribute == (m.VhdTarget("vhd"),)


def test_timeout_zero_means_default():
    assert load_template(linux_template(buildTimeoutInMinutes=0)).build_timeout_minutes == 240


@pytest.mark.parametrize("value", [-1, 961, 10_000])
def test_timeout_out_of_range(value):
    assert ("$.properties.buildTimeoutInMinutes", "timeout-range") in rules(linux_template(buildTimeoutInMinutes=value))


def test_timeout_wrong_type_names_the_type():
    found = problems_of(linux_template(buildTimeoutInMinutes="eighty"))
    assert [(p.path, p.rule) for p in found] == [("$.properties.buildTimeoutInMinutes", "type")]
    assert "must be an integer, not a string" in found[0].message


def test_a_number_written_as_a_string_is_read_with_a_warning_as_aib_does():
    template = load_template(linux_template(buildTimeoutInMinutes="80"))
    assert template.build_timeout_minutes == 80
    [warning] = template.warnings
    assert (warning.path, warning.rule, warning.severity) == ("$.properties.buildTimeoutInMinutes", "type-coerced",
                                                              "warning")
    assert warning.hint == "write 80 without quotes"


def test_field_names_match_case_insensitively_like_arm():
    data = linux_template()
    data["properties"]["Customize"] = data["properties"].pop("customize")
    data["properties"]["source"]["imageVersionID"] = None  # unknown for PlatformImage
    found = problems_of(data)
    assert [(p.path, p.rule) for p in found] == [("$.properties.source.imageVersionID", "unknown-field")]
    data["properties"]["source"].pop("imageVersionID")
    assert load_template(data).customize[0].name == "hello"


def test_unknown_fields_are_all_reported_with_paths():
    data = linux_template()
    data["bogus"] = 1
    data["properties"]["customize"][0]["scriptUrl"] = "http://x"
    data["properties"]["distribute"][0]["color"] = "red"
    found = rules(data)
    assert ("$.bogus", "unknown-field") in found
    assert ("$.properties.customize[0].scriptUrl", "unknown-field") in found
    assert ("$.properties.distribute[0].color", "unknown-field") in found


def test_all_problems_reported_together():
    data = linux_template(buildTimeoutInMinutes=5000, vmProfile={"vmSize": "Huge_1", "osDiskSizeGB": -4})
    data["properties"]["distribute"] = [{"type": "VHD", "runOutputName": "bad name!"}]
    with pytest.raises(TemplateInvalid) as err:
        load_template(data)
    got = {(p.path, p.rule) for p in err.value.problems}
    assert got == {
        ("$.properties.buildTimeoutInMinutes", "timeout-range"),
        ("$.properties.vmProfile.vmSize", "vm-size"),
        ("$.properties.vmProfile.osDiskSizeGB", "disk-size"),
        ("$.properties.distribute[0].runOutputName", "run-output-name"),
    }
    assert "4 problems" in err.value.message


def test_shell_needs_exactly_one_of_script_or_inline():
    both = linux_template(customize=[{"type": "Shell", "name": "a", "inline": ["x"], "scriptUri": "https://h/s.sh"}])
    neither = linux_template(customize=[{"type": "Shell", "name": "a"}])
    assert ("$.properties.customize[0]", "script-or-inline") in rules(both)
    assert ("$.properties.customize[0]", "script-or-inline") in rules(neither)


@pytest.mark.parametrize("kind", ["Shell", "PowerShell"])
@pytest.mark.parametrize("null", ["inline", "scriptUri"])
def test_a_null_script_or_inline_is_neither(kind, null):
    # found by test_fuzz: with `"inline": null` a step loaded with no commands and no script, and
    # `orchestrate render` then failed with an internal error (exit 70)
    data = linux_template(customize=[{"type": kind, "name": "a", null: None}])
    found = rules(data)
    assert ("$.properties.customize[0]", "script-or-inline") in found or \
        (f"$.properties.customize[0].{null}", "type") in found, found


@pytest.mark.parametrize("kind", ["Shell", "PowerShell"])
def test_an_empty_script_uri_is_no_script(kind):
    # found by test_fuzz: an empty optional string reads as unset, and then the step had neither
    data = linux_template(customize=[{"type": kind, "name": "a", "scriptUri": ""}])
    assert ("$.properties.customize[0]", "script-or-inline") in rules(data)


def test_checksum_format_and_scheme():
    data = linux_template(customize=[
        {"type": "Shell", "name": "a", "scriptUri": "ftp://h/s.sh", "sha256Checksum": "abc"},
        {"type": "Shell", "name": "b", "inline": ["x"], "sha256Checksum": "a" * 64},
    ])
    found = rules(data)
    assert ("$.properties.customize[0].scriptUri", "uri-scheme") in found
    assert ("$.properties.customize[0].sha256Checksum", "checksum-format") in found
    assert ("$.properties.customize[1].sha256Checksum", "checksum-without-uri") in found


def test_checksum_is_normalised_to_lowercase():
    data = linux_template(customize=[{"type": "Shell", "name": "a", "scriptUri": "https://h/s", "sha256Checksum": "AB" * 32}])
    assert load_template(data).customize[0].sha256 == "ab" * 32


def test_customizer_names_unique_case_insensitively():
    data = linux_template(customize=[{"type": "Shell", "name": "Step", "inline": ["a"]},
                                     {"type": "Shell", "name": "step", "inline": ["b"]}])
    found = problems_of(data)
    assert [(p.path, p.rule) for p in found] == [("$.properties.customize[1].name", "unique-name")]
    assert "entry 0" in found[0].message


def test_unnamed_customizers_get_distinct_names():
    data = linux_template(customize=[{"type": "Shell", "inline": ["a"]}, {"type": "Shell", "inline": ["b"]}])
    names = [c.name for c in load_template(data).customize]
    assert len(set(names)) == 2


def test_run_output_names_unique():
    data = linux_template(distribute=[{"type": "VHD", "runOutputName": "A"}, {"type": "VHD", "runOutputName": "a"}])
    assert ("$.properties.distribute[1].runOutputName", "unique-run-output") in rules(data)


@pytest.mark.parametrize("name", ["", "x" * 65, "with space", "slash/no"])
def test_run_output_name_pattern(name):
    data = linux_template(distribute=[{"type": "VHD", "runOutputName": name}])
    assert any(p.path == "$.properties.distribute[0].runOutputName" for p in problems_of(data))


def test_distribute_required_and_nonempty():
    assert ("$.properties", "required") in rules(linux_template(distribute=None))
    assert ("$.properties.distribute", "empty") in rules(linux_template(distribute=[]))


@pytest.mark.parametrize("dest", ["/etc/passwd", "/tmp/../etc/x", "/tmp/", "tmp/x", "/tmpfoo/x"])
def test_linux_file_destination_must_be_under_tmp(dest):
    data = linux_template(customize=[{"type": "File", "name": "f", "sourceUri": "https://h/f", "destination": dest}])
    assert ("$.properties.customize[0].destination", "file-destination") in rules(data)


def test_linux_file_destination_under_tmp_is_fine():
    data = linux_template(customize=[{"type": "File", "name": "f", "sourceUri": "https://h/f",
                                      "destination": "/tmp/sub/index.html"}])
    assert load_template(data).customize[0].destination == "/tmp/sub/index.html"


def test_windows_file_destination_rule():
    data = linux_template(customize=[{"type": "File", "name": "f", "sourceUri": "https://h/f", "destination": "c:\\dir\\"}],
                          source={"type": "PlatformImage", "publisher": "MicrosoftWindowsServer",
                                  "offer": "WindowsServer", "sku": "2019-Datacenter", "version": "latest"})
    assert ("$.properties.customize[0].destination", "file-destination") in rules(data)


def test_plan_info_all_or_nothing():
    data = linux_template()
    data["properties"]["source"]["planInfo"] = {"planName": "a", "planProduct": "b"}
    assert ("$.properties.source.planInfo", "plan-info") in rules(data)
    data["properties"]["source"]["planInfo"]["planPublisher"] = "c"
    assert load_template(data).source.plan_info == m.PlanInfo("a", "b", "c")


def test_iso_source_only_in_2019_api():
    iso = {"type": "ISO", "sourceURI": "https://h/rhel.iso", "sha256Checksum": "c" * 64}
    assert ("$.properties.source.type", "iso-retired") in rules(linux_template(source=iso))
    data = linux_template(source=iso)
    data["apiVersion"] = "2019-05-01-preview"
    assert isinstance(load_template(data).source, m.IsoSource)


def test_vnet_config_both_spellings():
    subnet = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/n"
    new = load_template(linux_template(vmProfile={"vnetConfig": {"subnetId": subnet}}))
    assert new.vm_profile.vnet_config.subnet_id == subnet
    old = load_template(api(linux_template(vmProfile={"vnetConfig": {"name": "v", "subnetName": "n",
                                                                       "resourceGroupName": "rg"}}), API_2019))
    assert old.vm_profile.vnet_config.subnet_name == "n"
    half = api(linux_template(vmProfile={"vnetConfig": {"name": "v"}}), API_2019)
    assert ("$.properties.vmProfile.vnetConfig", "vnet-spelling") in rules(half)


def test_identity_only_one_user_assigned():
    data = linux_template()
    data["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {"/a": {}, "/b": {}}}
    assert ("$.identity.userAssignedIdentities", "one-identity") in rules(data)


def test_run_as_system_needs_run_elevated():
    data = linux_template(customize=[{"type": "PowerShell", "name": "p", "inline": ["x"], "runAsSystem": True}])
    assert ("$.properties.customize[0].runAsSystem", "run-as-system") in rules(data)


def test_windows_restart_timeout_format():
    data = linux_template(customize=[{"type": "WindowsRestart", "restartTimeout": "five minutes"}])
    assert ("$.properties.customize[0].restartTimeout", "duration") in rules(data)


def test_windows_update_filters_and_limit():
    data = linux_template(customize=[{"type": "WindowsUpdate", "filters": ["maybe:$true"], "updateLimit": 0}])
    found = rules(data)
    assert ("$.properties.customize[0].filters[0]", "update-filter") in found
    assert ("$.properties.customize[0].updateLimit", "update-limit") in found


def test_placeholders_reported_all_at_once_but_not_in_commands():
    data = linux_template(customize=[{"type": "Shell", "name": "html", "inline": ["echo '<html>' > /tmp/x"]}])
    data["location"] = "<region>"
    data["properties"]["distribute"] = [{"type": "ManagedImage", "runOutputName": "<runOutputName>",
                                         "location": "<region>",
                                         "imageId": "/subscriptions/<subscriptionID>/resourceGroups/<rg>/providers/Microsoft.Compute/images/x"}]
    found = [p for p in problems_of(data) if p.rule == "placeholder"]
    assert {p.path for p in found} == {"$.location", "$.properties.distribute[0].runOutputName",
                                       "$.properties.distribute[0].location", "$.properties.distribute[0].imageId"}
    assert "<subscriptionID>, <rg>" in next(p.message for p in found if p.path.endswith("imageId"))


def test_newer_api_fields_accepted():
    data = linux_template(
        validate={"continueDistributeOnFailure": True,
                  "inVMValidations": [{"type": "Shell", "name": "check", "inline": ["test -f /etc/os-release"]}]},
        errorHandling={"onCustomizerError": "abort", "onValidationError": "cleanup"},
        stagingResourceGroup="/subscriptions/s/resourceGroups/staging")
    data["apiVersion"] = "2024-02-01"
    t = load_template(data)
    assert t.validate.in_vm_validations[0].name == "check"
    assert t.error_handling.on_customizer_error == "abort"


def test_not_an_object():
    assert [(p.path, p.rule) for p in problems_of([1, 2])] == [("$", "type")]


# ARM deployments and the trigger are covered by test_arm and test_samples
@pytest.mark.parametrize("path", sample_cases(lambda p: not is_arm(p) and not is_trigger(p)))
def test_plain_samples_fail_only_on_placeholders(path: Path):
    found = problems_of(sample_data(path))
    assert [str(p) for p in found if p.rule != "placeholder"] == []
    assert found, "every sample holds a placeholder"


def test_customizer_types_must_fit_the_os():
    linux = linux_template(customize=[{"type": "WindowsRestart"}, {"type": "WindowsUpdate"}])
    linux["properties"]["customize"].insert(0, {"type": "Shell", "name": "s", "inline": ["true"]})
    found = rules(linux)
    assert ("$.properties.customize[1].type", "customizer-os") in found
    assert ("$.properties.customize[2].type", "customizer-os") in found
    windows = linux_template(customize=[{"type": "Shell", "name": "s", "inline": ["true"]}],
                             source={"type": "PlatformImage", "publisher": "MicrosoftWindowsServer",
                                     "offer": "WindowsServer", "sku": "2022-datacenter", "version": "latest"})
    assert ("$.properties.customize[0].type", "customizer-os") in rules(windows)


# --- envelope -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["Microsoft.Compute/virtualMachines", "Microsoft", "imageTemplates"])
def test_resource_type_must_be_image_templates(kind):
    data = linux_template()
    data["type"] = kind
    assert only(data) == [("$.type", "resource-type", f"`{kind}` is not an image template")]


@pytest.mark.parametrize("kind", ["microsoft.virtualmachineimages/IMAGETEMPLATES", "Microsoft.VirtualMachineImages"])
def test_resource_type_spellings_of_the_samples_are_accepted(kind):
    data = linux_template()
    data["type"] = kind
    assert problems_of(data) == []


def test_api_version_format_age_and_presence():
    assert only(api(linux_template(), "latest")) == [("$.apiVersion", "api-version", "`latest` is not an API version")]
    assert only(api(linux_template(), "2018-01-01")) == [
        ("$.apiVersion", "api-version", "`2018-01-01` is older than any imageTemplates API")]
    data = linux_template()
    del data["apiVersion"]  # a request body, as `az image builder create` sends it: the newest API
    template = load_template(data)
    assert template.api_version == "2025-10-01"
    assert [(w.path, w.rule, w.severity) for w in template.warnings] == [("$", "api-version-default", "note")]


def test_tags_are_string_maps():
    data = linux_template()
    data["tags"] = {"owner": "me", "count": 1, "nested": {"a": "b"}, "none": None}
    found = only(data)
    assert found == [("$.tags.count", "type", "must be a string, not an integer"),  # in document order
                     ("$.tags.nested", "type", "must be a string, not an object"),
                     ("$.tags.none", "type", "must be a string, not null")]
    data["tags"] = "owner=me"
    assert only(data) == [("$.tags", "type", "must be an object, not a string")]


def test_artifact_tags_are_string_maps():
    data = linux_template(distribute=[{"type": "VHD", "runOutputName": "vhd", "artifactTags": {"gold": True}}])
    assert only(data) == [("$.properties.distribute[0].artifactTags.gold", "type", "must be a string, not a boolean")]


def test_vhd_tags_are_its_artifact_tags():
    data = linux_template(distribute=[{"type": "VHD", "runOutputName": "vhd", "tags": {"source": "aib"}}])
    assert load_template(data).distribute[0].artifact_tags == (("source", "aib"),)
    data["properties"]["distribute"][0]["tags"] = 5
    assert only(data) == [("$.properties.distribute[0].tags", "type", "must be an object, not an integer")]
    managed = linux_template(distribute=[{"type": "ManagedImage", "runOutputName": "m", "location": "local",
                                          "imageId": MANAGED_IMAGE,
                                          "tags": {"a": "b"}}])
    assert rules(managed) == {("$.properties.distribute[0].tags", "unknown-field")}


def test_depends_on_is_a_list_of_strings():
    data = linux_template()
    data["dependsOn"] = ["[resourceId('x')]", 3]
    assert only(data) == [("$.dependsOn[1]", "type", "must be a string, not an integer")]


def test_identity_type_and_its_one_entry():
    data = linux_template()
    data["identity"] = {"type": "SystemAssigned"}
    assert only(data) == [("$.identity.type", "identity-type", "`SystemAssigned` is not supported")]
    data["identity"] = {"type": "UserAssigned"}
    assert only(data) == [("$.identity.userAssignedIdentities", "required", "a UserAssigned identity needs one entry")]


def test_identity_is_accepted_but_not_required():
    # The 2020-02-14 reference calls it required in Azure; on-prem it is only recorded, and the
    # public VHD sample (2020-02-14) has none.
    assert load_template(linux_template()).identity is None


# --- vmProfile ----------------------------------------------------------------------------------

def test_os_disk_size_is_an_integer():
    data = linux_template(vmProfile={"osDiskSizeGB": "a hundred"})
    assert only(data) == [("$.properties.vmProfile.osDiskSizeGB", "type", "must be an integer, not a string")]
    data = linux_template(vmProfile={"osDiskSizeGB": "100"})  # coerced, as AIB does
    assert load_template(data).vm_profile.os_disk_size_gb == 100


def test_vnet_config_spelling_follows_the_api_version():
    old = {"vnetConfig": {"name": "v", "subnetName": "n", "resourceGroupName": "rg"}}
    found = problems_of(linux_template(vmProfile=copy.deepcopy(old)))
    assert [(p.path, p.rule) for p in found] == [("$.properties.vmProfile.vnetConfig", "vnet-spelling")]
    assert "2019-05-01-preview spelling" in found[0].message
    assert "resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/n" in found[0].hint
    subnet = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/n"
    found = problems_of(api(linux_template(vmProfile={"vnetConfig": {"subnetId": subnet}}), API_2019))
    assert [(p.path, p.rule) for p in found] == [("$.properties.vmProfile.vnetConfig.subnetId", "vnet-spelling")]
    assert "subnetId is the API 2020-02-14 spelling" in found[0].message


def test_vnet_config_shape():
    subnet = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/n"
    both = linux_template(vmProfile={"vnetConfig": {"subnetId": subnet, "name": "v"}})
    assert only(both) == [("$.properties.vmProfile.vnetConfig", "vnet-spelling",
                           "give either subnetId or name/subnetName/resourceGroupName, not both")]
    assert only(linux_template(vmProfile={"vnetConfig": {}})) == [
        ("$.properties.vmProfile.vnetConfig", "required", "vnetConfig needs subnetId")]
    bad = linux_template(vmProfile={"vnetConfig": {"subnetId": "/subscriptions/s/subnets/n"}})
    assert only(bad) == [("$.properties.vmProfile.vnetConfig.subnetId", "resource-id", "not a subnet resource ID")]


# --- source -------------------------------------------------------------------------------------

def test_source_is_required_and_of_a_known_type():
    assert only(linux_template(source=None)) == [("$.properties", "required", "`source` is required")]
    assert only(linux_template(source={"type": "Marketplace"})) == [
        ("$.properties.source.type", "source-type", "unknown source type `Marketplace`")]


def test_platform_image_needs_publisher_offer_and_sku():
    found = only(linux_template(source={"type": "PlatformImage", "version": "latest"}))
    assert found == [("$.properties.source", "required", f"`{f}` is required") for f in ("publisher", "offer", "sku")]


@pytest.mark.parametrize("version", ["latest", "Latest", "18.04.201903060", "2026.1.0", "1"])
def test_platform_image_version_latest_or_number(version):
    data = linux_template()
    data["properties"]["source"]["version"] = version
    assert load_template(data).source.version == version


@pytest.mark.parametrize("version", ["18.04 LTS", "v1.0", "1..2", "newest", "1.0-beta"])
def test_platform_image_version_format(version):
    data = linux_template()
    data["properties"]["source"]["version"] = version
    assert only(data) == [("$.properties.source.version", "version-format",
                           f"`{version}` is not `latest` or a version number")]


def test_managed_image_source_id():
    data = linux_template(source={"type": "ManagedImage", "imageId": "/subscriptions/s/images/x"})
    assert only(data) == [("$.properties.source.imageId", "resource-id", "not a managed image resource ID")]
    assert only(linux_template(source={"type": "ManagedImage"})) == [
        ("$.properties.source", "required", "`imageId` is required")]


def test_shared_image_version_source_spelling_id_and_version():
    good = GALLERY_IMAGE + "/versions/1.0.0"
    # the documents' JSON spells it imageVersionID, their text imageVersionId
    t = load_template(linux_template(source={"type": "SharedImageVersion", "imageVersionID": good}))
    assert t.source.image_version_id == good
    latest = load_template(linux_template(source={"type": "SharedImageVersion",
                                                 "imageVersionId": GALLERY_IMAGE + "/versions/latest"}))
    assert latest.source == m.SharedImageVersionSource(GALLERY_IMAGE + "/versions/latest")
    assert only(linux_template(source={"type": "SharedImageVersion", "imageVersionId": GALLERY_IMAGE})) == [
        ("$.properties.source.imageVersionId", "resource-id", "not a gallery image version resource ID")]
    assert only(linux_template(source={"type": "SharedImageVersion",
                                       "imageVersionId": GALLERY_IMAGE + "/versions/newest"})) == [
        ("$.properties.source.imageVersionId", "version-format", "`newest` is not `latest` or an image version number")]


def test_iso_source_needs_uri_and_checksum():
    data = api(linux_template(source={"type": "ISO"}), API_2019)
    assert only(data) == [("$.properties.source", "required", "`sourceURI` is required"),
                          ("$.properties.source", "required", "`sha256Checksum` is required")]
    data["properties"]["source"] = {"type": "ISO", "sourceURI": "https://h/rhel.iso", "sha256Checksum": "abc"}
    assert only(data) == [("$.properties.source.sha256Checksum", "checksum-format",
                           "not a sha256 checksum (64 hex digits)")]


# --- customize ----------------------------------------------------------------------------------

def test_unknown_customizer_type():
    data = linux_template(customize=[{"type": "Ansible", "name": "a"}])
    found = only(data)
    assert [(p, r) for p, r, _ in found] == [("$.properties.customize[0].type", "customizer-type")]
    assert "unknown customizer type `Ansible`" in found[0][2]


def test_generated_names_never_take_a_given_name():
    data = linux_template(customize=[{"type": "Shell", "name": "Shell2", "inline": ["a"]},
                                     {"type": "Shell", "inline": ["b"]}])
    names = [c.name for c in load_template(data).customize]
    assert names[0] == "Shell2" and names[1].lower() != "shell2"


def test_inline_is_a_nonempty_list_of_commands():
    as_text = linux_template(customize=[{"type": "Shell", "name": "s", "inline": "echo hi"}])
    assert ("$.properties.customize[0].inline", "type", "must be a list, not a string") in only(as_text)
    empty = linux_template(customize=[{"type": "Shell", "name": "s", "inline": []}])
    assert ("$.properties.customize[0].inline", "empty", "must have at least one entry") in only(empty)


def test_powershell_run_elevated_is_boolean():
    data = windows_template(customize=[{"type": "PowerShell", "name": "p", "inline": ["x"], "runElevated": "yes"}])
    assert only(data) == [("$.properties.customize[0].runElevated", "type", "must be true or false, not a string")]
    data["properties"]["customize"][0]["runElevated"] = "False"  # coerced, as AIB does
    template = load_template(data)
    assert template.customize[0].run_elevated is False
    assert [(w.rule, w.hint) for w in template.warnings] == [("type-coerced", "write false without quotes")]


def test_valid_exit_codes_are_integers():
    data = windows_template(customize=[{"type": "PowerShell", "name": "p", "inline": ["x"], "validExitCodes": ["ok"]}])
    assert only(data) == [("$.properties.customize[0].validExitCodes", "type", "must be a list of integers")]
    data["properties"]["customize"][0]["validExitCodes"] = [0, "3010"]  # coerced, as AIB does
    template = load_template(data)
    assert template.customize[0].valid_exit_codes == (0, 3010)
    assert [w.rule for w in template.warnings] == ["type-coerced"]
    data["properties"]["customize"][0]["validExitCodes"] = [0, 3010]
    assert load_template(data).customize[0].valid_exit_codes == (0, 3010)


def test_valid_exit_codes_2019_spelling():
    step = {"type": "PowerShell", "name": "p", "inline": ["x"], "valid_exit_codes": [0, 3010]}
    old = api(windows_template(customize=[copy.deepcopy(step)]), API_2019)
    assert load_template(old).customize[0].valid_exit_codes == (0, 3010)
    new = windows_template(customize=[copy.deepcopy(step)])
    found = problems_of(new)
    assert [(p.path, p.rule) for p in found] == [("$.properties.customize[0].valid_exit_codes", "field-spelling")]
    assert "2019-05-01-preview spelling" in found[0].message and found[0].hint == "use validExitCodes"
    old["properties"]["customize"][0]["validExitCodes"] = [0]
    assert only(old) == [("$.properties.customize[0].valid_exit_codes", "field-spelling",
                          "give validExitCodes or valid_exit_codes, not both")]


def test_file_customizer_needs_source_and_destination():
    data = linux_template(customize=[{"type": "File", "name": "f"}])
    assert only(data) == [("$.properties.customize[0]", "required", "`sourceUri` is required"),
                          ("$.properties.customize[0]", "required", "`destination` is required")]


@pytest.mark.parametrize("uri", ["https://h/dir/", "https://h", "file:///srv/artifacts/", "https://h/d/?sv=1&sig=x"])
def test_file_source_is_one_file_not_a_folder(uri):
    data = linux_template(customize=[{"type": "File", "name": "f", "sourceUri": uri, "destination": "/tmp/x"}])
    assert only(data) == [("$.properties.customize[0].sourceUri", "file-source", f"`{uri}` names a folder, not a file")]


def test_file_source_with_a_query_is_a_file():
    data = linux_template(customize=[{"type": "File", "name": "f", "sourceUri": "https://h/a.zip?sv=1&sig=x",
                                      "destination": "/tmp/a.zip"}])
    assert load_template(data).customize[0].source_uri.startswith("https://h/a.zip")


def test_windows_file_destination_is_a_full_path():
    data = windows_template(customize=[{"type": "File", "name": "f", "sourceUri": "https://h/f",
                                        "destination": "buildArtifacts\\index.html"}])
    assert only(data) == [("$.properties.customize[0].destination", "file-destination",
                           "`buildArtifacts\\index.html` is not a full Windows file path")]
    data["properties"]["customize"][0]["destination"] = "c:\\buildArtifacts\\index.html"
    assert load_template(data).customize[0].destination == "c:\\buildArtifacts\\index.html"


@pytest.mark.parametrize("timeout", ["5m", "2h", "90s", "1.5h", "1h30m"])
def test_windows_restart_timeout_magnitude_and_unit(timeout):
    data = windows_template(customize=[{"type": "WindowsRestart", "restartTimeout": timeout}])
    assert load_template(data).customize[0].restart_timeout == timeout


def test_windows_restart_and_update_defaults():
    t = load_template(windows_template(customize=[{"type": "WindowsRestart"}, {"type": "WindowsUpdate"}]))
    restart, update = t.customize
    assert restart.restart_command == 'shutdown /r /f /t 0 /c "packer restart"'
    assert restart.restart_check_command is None and restart.restart_timeout == "5m"
    assert update.search_criteria == "BrowseOnly=0 and IsInstalled=0"
    assert update.filters == () and update.update_limit == 1000


# --- validate, errorHandling --------------------------------------------------------------------

def test_validation_types():
    data = api(linux_template(validate={"inVMValidations": [{"type": "WindowsRestart"}]}), "2022-02-14")
    found = only(data)
    assert [(p, r) for p, r, _ in found] == [("$.properties.validate.inVMValidations[0].type", "customizer-type")]
    assert "unknown validation type `WindowsRestart`" in found[0][2]


def test_validations_follow_the_os_and_file_rules():
    data = api(windows_template(validate={"inVMValidations": [
        {"type": "Shell", "name": "s", "inline": ["true"]}]}), "2022-02-14")
    assert only(data) == [("$.properties.validate.inVMValidations[0].type", "customizer-os",
                           "Shell customizers run on Linux only")]
    data = api(linux_template(validate={"inVMValidations": [
        {"type": "File", "name": "f", "sourceUri": "https://h/f", "destination": "/etc/f"}]}), "2022-02-14")
    assert only(data) == [("$.properties.validate.inVMValidations[0].destination", "file-destination",
                           "`/etc/f` is not a file path under /tmp")]


def test_validation_names_unique():
    data = api(linux_template(validate={"inVMValidations": [
        {"type": "Shell", "name": "c", "inline": ["true"]}, {"type": "Shell", "name": "C", "inline": ["true"]}]}),
        "2022-02-14")
    assert only(data) == [("$.properties.validate.inVMValidations[1].name", "unique-name",
                           "name `C` is used by entry 0 too")]


def test_error_handling_values():
    data = api(linux_template(errorHandling={"onCustomizerError": "retry"}), "2023-07-01")
    assert only(data) == [("$.properties.errorHandling.onCustomizerError", "error-handling",
                           "`retry` is not cleanup or abort")]


# --- distribute ---------------------------------------------------------------------------------

def test_unknown_distribution_type():
    data = linux_template(distribute=[{"type": "Blob", "runOutputName": "b"}])
    assert only(data) == [("$.properties.distribute[0].type", "target-type", "unknown distribution type `Blob`")]


def test_run_output_name_required():
    assert only(linux_template(distribute=[{"type": "VHD"}])) == [
        ("$.properties.distribute[0]", "required", "`runOutputName` is required")]


def test_managed_image_target_needs_image_id_and_location():
    data = linux_template(distribute=[{"type": "managedImage", "runOutputName": "m"}])
    assert only(data) == [("$.properties.distribute[0]", "required", "`imageId` is required"),
                          ("$.properties.distribute[0]", "required", "`location` is required")]
    data["properties"]["distribute"][0].update(imageId="/subscriptions/s/resourceGroups/rg/images/i", location="l")
    assert only(data) == [("$.properties.distribute[0].imageId", "resource-id", "not a managed image resource ID")]


def test_shared_image_target_gallery_image_id():
    data = linux_template(distribute=[{"type": "sharedImage", "runOutputName": "s", "replicationRegions": ["local"]}])
    assert only(data) == [("$.properties.distribute[0]", "required", "`galleryImageId` is required")]
    data["properties"]["distribute"][0]["galleryImageId"] = "/subscriptions/s/resourceGroups/rg/galleries/g"
    assert only(data) == [("$.properties.distribute[0].galleryImageId", "resource-id",
                           "not a gallery image (or image version) resource ID")]


def test_shared_image_replication_regions_required_in_older_apis():
    target = {"type": "SharedImage", "runOutputName": "s", "galleryImageId": GALLERY_IMAGE}
    for version in (API_2019, "2020-02-14"):
        found = problems_of(api(linux_template(distribute=[dict(target)]), version))
        assert [(p.path, p.rule, p.message) for p in found] == [
            ("$.properties.distribute[0]", "required", "`replicationRegions` is required")]
        assert "gallery's region" in found[0].hint
    empty = linux_template(distribute=[dict(target, replicationRegions=[])])
    assert only(empty) == [("$.properties.distribute[0].replicationRegions", "empty", "must have at least one entry")]
    # newer APIs replicate to the template's location by default
    newer = load_template(api(linux_template(distribute=[dict(target)]), "2022-02-14")).distribute[0]
    assert (newer.gallery_image_id, newer.replication_regions, newer.target_regions) == (GALLERY_IMAGE, (), ())


def test_shared_image_explicit_version_by_api_version():
    target = {"type": "SharedImage", "runOutputName": "s", "galleryImageId": GALLERY_IMAGE + "/versions/1.0.0",
              "replicationRegions": ["local"]}
    assert load_template(linux_template(distribute=[dict(target)])).distribute[0].gallery_image_id.endswith("1.0.0")
    found = problems_of(api(linux_template(distribute=[dict(target)]), API_2019))
    assert [(p.path, p.rule) for p in found] == [("$.properties.distribute[0].galleryImageId", "gallery-version")]
    assert "numbers image versions itself" in found[0].message
    latest = linux_template(distribute=[dict(target, galleryImageId=GALLERY_IMAGE + "/versions/latest")])
    assert only(latest) == [("$.properties.distribute[0].galleryImageId", "version-format",
                             "`latest` is not an image version number")]


def test_shared_image_storage_account_type_in_older_apis():
    target = {"type": "SharedImage", "runOutputName": "s", "galleryImageId": GALLERY_IMAGE,
              "replicationRegions": ["local"], "storageAccountType": "Premium_LRS"}
    assert only(linux_template(distribute=[dict(target)])) == [
        ("$.properties.distribute[0].storageAccountType", "storage-account-type",
         "`Premium_LRS` is not Standard_LRS or Standard_ZRS")]
    zrs = load_template(linux_template(distribute=[dict(target, storageAccountType="standard_zrs")]))
    assert zrs.distribute[0].storage_account_type == "standard_zrs"  # matched case-insensitively, kept as written
    newer = load_template(api(linux_template(distribute=[dict(target)]), "2022-07-01"))
    assert newer.distribute[0].storage_account_type == "Premium_LRS"


def test_exclude_from_latest_is_boolean():
    data = linux_template(distribute=[{"type": "SharedImage", "runOutputName": "s", "galleryImageId": GALLERY_IMAGE,
                                       "replicationRegions": ["local"], "excludeFromLatest": "yes"}])
    assert only(data) == [("$.properties.distribute[0].excludeFromLatest", "type",
                           "must be true or false, not a string")]


def test_target_regions_replicas_and_versioning():
    target = {"type": "SharedImage", "runOutputName": "s", "galleryImageId": GALLERY_IMAGE,
              "targetRegions": [{"name": "pool1", "replicaCount": 0}],
              "versioning": {"scheme": "Newest"}}
    found = rules(api(linux_template(distribute=[target]), "2023-07-01"))
    assert found == {("$.properties.distribute[0].targetRegions[0].replicaCount", "replica-count"),
                     ("$.properties.distribute[0].versioning.scheme", "versioning")}
    both = dict(target, replicationRegions=["pool2"], targetRegions=[{"name": "pool1"}],
                versioning={"scheme": "Source", "major": 2})
    assert only(api(linux_template(distribute=[both]), "2023-07-01")) == [
        ("$.properties.distribute[0].targetRegions", "regions", "give replicationRegions or targetRegions, not both"),
        ("$.properties.distribute[0].versioning.major", "versioning", "major goes with scheme Latest")]
