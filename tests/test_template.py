"""The template loader: every rule, with its JSON path and message. Pure and fast."""
from __future__ import annotations

import copy
import glob
import json
from pathlib import Path

import pytest

from orchestrator.core import model as m
from orchestrator.core.template import load_template, read_template
from orchestrator.errors import TemplateInvalid
from tests.helpers import linux_template

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "aib-samples" / "azure"


def problems_of(data):
    found = []
    read_template(data, found)
    return found


def rules(data) -> set[tuple[str, str]]:
    return {(p.path, p.rule) for p in problems_of(data)}


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
    found = problems_of(linux_template(buildTimeoutInMinutes="80"))
    assert [(p.path, p.rule) for p in found] == [("$.properties.buildTimeoutInMinutes", "type")]
    assert "must be an integer, not a string" in found[0].message


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
    old = load_template(linux_template(vmProfile={"vnetConfig": {"name": "v", "subnetName": "n", "resourceGroupName": "rg"}}))
    assert old.vm_profile.vnet_config.subnet_name == "n"
    half = linux_template(vmProfile={"vnetConfig": {"name": "v"}})
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


@pytest.mark.parametrize("path", sorted(glob.glob(str(SAMPLES / "*.json"))), ids=lambda p: Path(p).name[:40])
def test_plain_samples_fail_only_on_placeholders(path):
    data = json.loads(Path(path).read_text())
    if "resources" in data or path.endswith("_trigger.json"):
        pytest.skip("ARM deployment or trigger: covered by test_arm / test_samples")
    bad = [p for p in problems_of(data) if p.rule != "placeholder"]
    assert bad == []


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
