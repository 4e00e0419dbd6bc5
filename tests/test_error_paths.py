"""Error paths say what, where and what to do, with the right exit code and JSON path; settings
the build does not implement are refused, never ignored."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.core.buildable import build_problems
from orchestrator.core.plan import BuildPlan, ResolvedSource, make_plan
from orchestrator.core.template import load_template, read_template
from orchestrator.errors import ExitCode
from tests.helpers import dumps, linux_template

SHA = "ab" * 32
SUB = "/subscriptions/S/resourceGroups/RG/providers/"


def orchestrate(*args: str, home: Path, cwd: Path | None = None, env: dict | None = None):
    full_env = dict(os.environ, ORCHESTRATOR_HOME=str(home), **(env or {}))
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=120)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert "internal error" not in result.stderr


def _source() -> ResolvedSource:
    return ResolvedSource("PlatformImage test", "/nonexistent/base.qcow2", "qcow2", 3 * 1024**3, "0" * 64, "1.0.0")


# --- the JSON path of a validation's download ---------------------------------------------------

def test_validation_download_path_is_its_own_list_position():
    data = linux_template(
        customize=[{"type": "Shell", "name": "a", "inline": ["true"]},
                   {"type": "Shell", "name": "b", "scriptUri": "https://example.com/b.sh", "sha256Checksum": SHA}],
        validate={"inVMValidations": [
            {"type": "Shell", "name": "check", "scriptUri": "https://example.com/check.sh", "sha256Checksum": SHA},
            {"type": "File", "name": "fetch", "sourceUri": "https://example.com/f", "destination": "/tmp/f"}]})
    plan = make_plan(load_template(data), _source(), "t")
    assert [(d.customizer, d.json_path) for d in plan.downloads] == [
        ("b", "$.properties.customize[1].scriptUri"),
        ("check", "$.properties.validate.inVMValidations[0].scriptUri"),
        ("fetch", "$.properties.validate.inVMValidations[1].sourceUri"),
    ]
    assert [s.index for s in plan.steps] == [1, 2, 3, 4]  # run order still counts every step


def test_plan_has_no_unused_fields():
    names = set(BuildPlan.__dataclass_fields__)
    assert not names & {"notes", "validation_continue_on_failure"}


# --- render -o into a directory Packer would misread ----------------------------------------------

def test_render_into_a_directory_with_go_template_marks_is_a_usage_error(tmp_path, home):
    template = tmp_path / "t.json"
    template.write_text(dumps(linux_template()))
    odd = tmp_path / "out{{x}}"
    result = orchestrate("render", "-o", str(odd), str(template), home=home)
    assert result.returncode == ExitCode.INVALID_INPUT, result.stderr
    no_traceback(result)
    assert f"the directory {odd} contains '{{{{' or '}}}}'" in result.stderr
    assert "hint: use a directory whose path holds no '{{' or '}}'" in result.stderr


# --- validation settings the build does not implement -----------------------------------------

REFUSED = [
    ({"validate": {"sourceValidationOnly": True}}, "$.properties.validate.sourceValidationOnly"),
    ({"validate": {"continueDistributeOnFailure": True,
                   "inVMValidations": [{"type": "Shell", "name": "v", "inline": ["true"]}]}},
     "$.properties.validate.continueDistributeOnFailure"),
    ({"errorHandling": {"onValidationError": "abort"}}, "$.properties.errorHandling.onValidationError"),
]


@pytest.mark.parametrize("properties, path", REFUSED, ids=["sourceValidationOnly", "continueDistributeOnFailure",
                                                            "onValidationError"])
def test_unimplemented_validation_settings_are_refused_at_build(properties, path):
    problems = build_problems(load_template(linux_template(**properties)))
    assert [(p.path, p.rule) for p in problems] == [(path, "validation-not-buildable")]
    assert "not supported by `orchestrate build` yet" in problems[0].message and problems[0].hint


def test_default_validation_settings_build():
    data = linux_template(validate={"sourceValidationOnly": False, "continueDistributeOnFailure": False,
                                    "inVMValidations": [{"type": "Shell", "name": "v", "inline": ["true"]}]},
                          errorHandling={"onCustomizerError": "abort", "onValidationError": "cleanup"})
    assert build_problems(load_template(data)) == []


def test_refused_validation_settings_still_validate_and_plan_but_do_not_build(tmp_path, home):
    template = tmp_path / "t.json"
    template.write_text(dumps(linux_template(validate={"sourceValidationOnly": True})))
    for verb in ("validate", "plan"):
        assert orchestrate(verb, str(template), home=home).returncode == 0
    result = orchestrate("build", str(template), home=home)
    assert result.returncode == ExitCode.INVALID_INPUT
    no_traceback(result)
    assert "$.properties.validate.sourceValidationOnly: sourceValidationOnly" in result.stderr
    assert "hint: drop it or set it to false" in result.stderr


# --- resource IDs: one check for every field that holds one -------------------------------------

def _managed_source(value):
    return {"source": {"type": "ManagedImage", "imageId": value}}


def _version_source(value):
    return {"source": {"type": "SharedImageVersion", "imageVersionId": value}}


def _vnet(value):
    return {"vmProfile": {"vmSize": "Standard_B2s", "vnetConfig": {"subnetId": value}}}


def _managed_target(value):
    return {"distribute": [{"type": "ManagedImage", "runOutputName": "m", "imageId": value, "location": "x"}]}


def _gallery_target(value):
    return {"distribute": [{"type": "SharedImage", "runOutputName": "g", "galleryImageId": value,
                            "replicationRegions": ["x"]}]}


RESOURCE_IDS = [
    (_managed_source, "$.properties.source.imageId", f"{SUB}Microsoft.Compute/images/base"),
    (_version_source, "$.properties.source.imageVersionId",
     f"{SUB}Microsoft.Compute/galleries/G/images/D/versions/1.0.0"),
    (_vnet, "$.properties.vmProfile.vnetConfig.subnetId",
     f"{SUB}Microsoft.Network/virtualNetworks/V/subnets/N"),
    (_managed_target, "$.properties.distribute[0].imageId", f"{SUB}Microsoft.Compute/images/out"),
    (_gallery_target, "$.properties.distribute[0].galleryImageId", f"{SUB}Microsoft.Compute/galleries/G/images/D"),
]


@pytest.mark.parametrize("shape, path, good", RESOURCE_IDS, ids=[p.rsplit(".", 1)[1] + str(i)
                                                                for i, (_, p, _) in enumerate(RESOURCE_IDS)])
def test_every_resource_id_field_is_checked_the_same_way(shape, path, good):
    def problems(value):
        found: list = []
        read_template(linux_template(**shape(value)), found)
        return [(p.path, p.rule) for p in found if p.rule == "resource-id"]

    assert problems("not/an/id") == [(path, "resource-id")]
    assert problems(good) == []
    assert problems("<resourceId>") == []  # a placeholder is left to the user
