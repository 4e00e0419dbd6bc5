"""Every sample template (the project's own; the public AIB samples too when
$ORCHESTRATOR_SAMPLES names them) reports its placeholders, validates and plans once they are
filled from tests/data, and renders HCL that `packer validate` accepts."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import main
from tests.helpers import (
    DATA,
    external_cases,
    fill_placeholders,
    filled_resource,
    image_template_data,
    is_arm,
    is_trigger,
    is_windows,
    load_sample,
    project_samples,
    sample_cases,
    sample_data,
)

PLACEHOLDER = re.compile(r"<[A-Za-z][A-Za-z0-9 _.\-]*>")


@pytest.fixture(autouse=True)
def _isolated_home(monkeypatch, tmp_path):
    monkeypatch.setenv("ORCHESTRATOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ORCHESTRATOR_ACCELERATOR", "tcg")
    for name in ("ORCHESTRATOR_RESOURCE_GROUP", "ORCHESTRATOR_LOCATION", "ORCHESTRATOR_SUBSCRIPTION_ID"):
        monkeypatch.delenv(name, raising=False)  # the ARM expansion here uses the local defaults


def _filled(tmp_path: Path, sample: Path) -> tuple[Path, list[str]]:
    path = tmp_path / sample.name
    path.write_text(fill_placeholders(sample.read_text()))
    params = ["--parameters", str(DATA / "sample-parameters.json")] if is_arm(sample) else []
    return path, params


# --- what the corpora hold ---------------------------------------------------------------------

def shapes(path: Path) -> set[str]:
    """The shapes a sample exercises, named as short strings, from its file and its model."""
    if is_trigger(path):
        return {"trigger"}
    found = {"arm" if is_arm(path) else "plain"}
    raw = image_template_data(path)
    if PLACEHOLDER.search(path.read_text()):
        found.add("placeholders")
    kind = str(raw.get("type", "")).lower()
    found.add({"": "type:absent", "microsoft.virtualmachineimages": "type:namespace"}.get(kind, "type:full"))
    if not str(raw["apiVersion"]).startswith("["):
        found.add(f"api:{raw['apiVersion']}")
    if is_arm(path):
        arm = sample_data(path)
        found |= {f"arm-function:{name}" for name in re.findall(r"([A-Za-z]+)\(", json.dumps(arm))}
        found |= {"arm:defaultValue" for spec in arm["parameters"].values() if "defaultValue" in spec}
        found |= {"arm:variables" for _ in arm.get("variables") or {}}
        found |= {"arm:other-resource" for _ in arm["resources"][1:]}
    template = load_sample(path)
    found |= {f"os:{template.os_type}", f"source:{template.source.kind}"}
    if template.identity is not None:
        found.add("identity")
    if template.vm_profile.vnet_config is not None:
        found.add("vnet")
    if template.validate is not None:
        found.add("validate")
    customizers = list(template.customize) + list(template.validate.in_vm_validations if template.validate else ())
    for c in customizers:
        kind = c.kind
        found.add(f"customizer:{kind}")
        for attribute, label in (("script_uri", "scriptUri"), ("inline", "inline"), ("sha256", "sha256Checksum"),
                                 ("run_elevated", "runElevated"), ("run_as_system", "runAsSystem"),
                                 ("restart_check_command", "restartCheckCommand"), ("filters", "filters")):
            if getattr(c, attribute, None):
                found.add(f"{kind}:{label}")
        if getattr(c, "valid_exit_codes", (0,)) != (0,):
            found.add(f"{kind}:validExitCodes")
        for text in getattr(c, "inline", None) or ():
            found |= {f"inline:{marker!r}" for marker in ("${", "%{", "{{", '"', "'", "\\", "\n") if marker in text}
    for t in template.distribute:
        found.add(f"target:{t.kind}")
        if getattr(t, "replication_regions", ()):
            found.add("SharedImage:replicationRegions")
        if getattr(t, "target_regions", ()):
            found.add("SharedImage:targetRegions")
        if t.artifact_tags:
            found.add("artifactTags")
    return found


def test_project_samples_cover_every_shape() -> None:
    covered = set().union(*(shapes(p) for p in project_samples()))
    required = {
        "plain", "arm", "trigger", "placeholders", "os:Linux", "os:Windows", "identity", "vnet", "validate",
        "type:full", "type:namespace", "type:absent", "api:2020-02-14", "api:2022-02-14", "api:2022-07-01",
        "arm:defaultValue", "arm:variables", "arm:other-resource",
        *(f"arm-function:{f}" for f in ("parameters", "variables", "concat", "format", "toLower", "resourceId",
                                        "resourceGroup", "subscription")),
        "source:PlatformImage", "source:ManagedImage", "source:SharedImageVersion",
        "customizer:Shell", "Shell:scriptUri", "Shell:sha256Checksum", "Shell:inline",
        "customizer:File", "File:sha256Checksum",
        "customizer:PowerShell", "PowerShell:scriptUri", "PowerShell:inline", "PowerShell:runElevated",
        "PowerShell:runAsSystem", "PowerShell:validExitCodes",
        "customizer:WindowsRestart", "WindowsRestart:restartCheckCommand",
        "customizer:WindowsUpdate", "WindowsUpdate:filters",
        "target:VHD", "target:ManagedImage", "target:SharedImage", "SharedImage:replicationRegions",
        "SharedImage:targetRegions", "artifactTags",
        *(f"inline:{m!r}" for m in ("${", "%{", "{{", '"', "'", "\\", "\n")),
    }
    assert sorted(required - covered) == []


@pytest.mark.parametrize("sample", external_cases())
def test_project_samples_cover_what_the_external_sample_exercises(sample: Path) -> None:
    covered = set().union(*(shapes(p) for p in project_samples()))
    assert sorted(shapes(sample) - covered) == []


# --- unfilled, filled, planned ------------------------------------------------------------------

_STEP = re.compile(r"\.(\w+)|\[(\d+)\]|\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]")


def text_at(data: Any, path: str) -> str:
    """The key and (string) value a problem's JSON path names in the document."""
    assert path.startswith("$"), path
    node, rest, key = data, path[1:], ""
    while rest:
        step = _STEP.match(rest)
        assert step, f"{path}: cannot follow {rest!r}"
        key = step.group(1) or (int(step.group(2)) if step.group(2) else ast.literal_eval(step.group(3)))
        node = node[key]
        rest = rest[step.end():]
    return f"{key} {node}" if isinstance(node, str) else str(key)


def parameter_path(name: str) -> str:
    return f"$.parameters.{name}" if name.replace("_", "").isalnum() else f"$.parameters[{name!r}]"


@pytest.mark.parametrize("sample", sample_cases())
def test_unfilled_sample_reports_its_placeholders(sample: Path, capsys) -> None:
    assert main(["validate", "--json", str(sample)]) == 2
    problems = json.loads(capsys.readouterr().out)["error"]["problems"]
    if is_arm(sample):  # without parameters, those are what is missing
        declared = sample_data(sample)["parameters"]
        assert sorted((p["path"], p["rule"]) for p in problems) == sorted(
            (parameter_path(name), "parameter-missing") for name, spec in declared.items() if "defaultValue" not in spec)
        return
    assert problems and {p["rule"] for p in problems} == {"placeholder"}
    data = sample_data(sample)
    for problem in problems:
        names = PLACEHOLDER.findall(problem["message"])
        where = text_at(data, problem["path"])
        assert names and all(name in where for name in names), (problem, where)


@pytest.mark.parametrize("sample", sample_cases())
def test_filled_sample_validates_and_plans(sample: Path, tmp_path: Path, capsys) -> None:
    path, params = _filled(tmp_path, sample)
    assert main(["validate", "--json", str(path), *params]) == 0, capsys.readouterr()
    summary = json.loads(capsys.readouterr().out)
    if is_trigger(sample):
        assert summary == {"ok": True, "trigger": "SourceImage", "problems": []}
        return
    props = filled_resource(sample)["properties"]
    customize = props.get("customize", [])
    checks = props.get("validate", {}).get("inVMValidations", [])
    assert (summary["ok"], summary["problems"]) == (True, [])
    # the public and project samples are what AIB builds as written: nothing it would ignore or coerce
    assert [w for w in summary["warnings"] if w["severity"] != "note"] == []
    assert summary["osType"] == ("Windows" if is_windows(sample) else "Linux")
    assert summary["source"] == props["source"]["type"]
    assert summary["customizers"] == len(customize)
    assert summary["targets"] == [d["runOutputName"] for d in props["distribute"]]

    assert main(["plan", "--json", str(path), *params]) == 0
    plan = json.loads(capsys.readouterr().out)
    written = [(c, "customize") for c in customize] + [(c, "validate") for c in checks]
    assert [(s["index"], s["kind"], s["phase"]) for s in plan["steps"]] == [
        (index, c["type"], phase) for index, (c, phase) in enumerate(written, 1)]
    for step, (c, _) in zip(plan["steps"], written):
        if "name" in c:
            assert step["name"] == c["name"]
        uri = c.get("scriptUri") or c.get("sourceUri")
        assert (step["download"] or {}).get("url") == uri
        if uri:
            assert step["download"]["sha256"] == (c["sha256Checksum"].lower() if "sha256Checksum" in c else None)
        assert step["inline"] == c.get("inline")
        assert step["destination"] == c.get("destination")
    assert [(t["kind"], t["run_output_name"]) for t in plan["targets"]] == [
        (d["type"], d["runOutputName"]) for d in props["distribute"]]
    for target, written_target in zip(plan["targets"], props["distribute"]):
        regions = (written_target.get("replicationRegions") or [r["name"] for r in written_target.get("targetRegions", [])]
                   or [written_target.get("location")] * (written_target["type"] == "ManagedImage"))
        assert target["regions"] == regions


@pytest.mark.parametrize("sample", sample_cases(lambda p: not is_trigger(p)))
def test_sample_hcl_passes_packer_validate(sample: Path, tmp_path: Path, packer: str) -> None:
    path, params = _filled(tmp_path, sample)
    out = tmp_path / "render"
    assert main(["render", str(path), *params, "-o", str(out)]) == 0
    hcl = out / "build.pkr.hcl"
    text = hcl.read_text()
    # render does not fetch downloads: stand-ins where `orchestrate build` would cache them
    for line in text.splitlines():
        key, _, value = line.strip().partition(" = ")
        if key in ("script", "source", "iso_url") and not Path(json.loads(value)).exists():
            Path(json.loads(value)).parent.mkdir(parents=True, exist_ok=True)
            Path(json.loads(value)).write_text("#!/bin/sh\n")
    env = dict(os.environ, CHECKPOINT_DISABLE="1")
    # the directory: Packer then also reads the Windows render's winrm.auto.pkrvars.hcl
    result = subprocess.run([packer, "validate", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    windows = is_windows(sample)
    assert ('"winrm"' in text) == windows and ('"ssh"' in text) != windows


def test_trigger_kind_is_checked_and_not_buildable(tmp_path, capsys):
    bad = tmp_path / "trigger.json"
    bad.write_text('{"location": "local", "properties": {"kind": "Nightly", "when": 1}}')
    assert main(["validate", "--json", str(bad)]) == 2
    payload = json.loads(capsys.readouterr().out)
    assert {(p["path"], p["rule"]) for p in payload["error"]["problems"]} == {("$.properties.kind", "trigger-kind")}
    assert {(w["path"], w["rule"]) for w in payload["warnings"]} == {("$.properties.when", "unknown-field")}
    good = tmp_path / "good.json"
    good.write_text('{"location": "local", "properties": {"kind": "SourceImage"}}')
    assert main(["build", str(good)]) == 2
    assert "is an image template trigger, not an image template" in capsys.readouterr().err
