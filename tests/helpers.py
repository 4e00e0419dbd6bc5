"""Template builders for tests, and the one place that knows where sample templates live.

Two corpora of sample templates:

- the project's own, `tests/data/templates/*.json`, always there (see its README.md);
- the public AIB samples, optional: the directory named by `$ORCHESTRATOR_SAMPLES` (e.g.
  `../shared/aib-samples`; its `*.json` files, searched recursively). Unset, the tests that
  would run on it show one SKIPPED case each.

`sample_cases()` gives both as pytest parameters; `fill_placeholders()` and
`sample_parameters()` turn a sample into a loadable template.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Callable

import pytest

LINUX_TEMPLATE: dict[str, Any] = {
    "type": "Microsoft.VirtualMachineImages/imageTemplates",
    "apiVersion": "2020-02-14",
    "location": "local",
    "properties": {
        "buildTimeoutInMinutes": 30,
        "vmProfile": {"vmSize": "Standard_B2s"},
        "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12",
                   "version": "latest"},
        "customize": [
            {"type": "Shell", "name": "hello", "inline": ["echo hello"]},
        ],
        "distribute": [{"type": "VHD", "runOutputName": "vhd"}],
    },
}


def linux_template(**properties: Any) -> dict[str, Any]:
    data = copy.deepcopy(LINUX_TEMPLATE)
    for key, value in properties.items():
        if value is None:
            data["properties"].pop(key, None)
        else:
            data["properties"][key] = value
    return data


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2)


REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
PROJECT_TEMPLATES = DATA / "templates"
SAMPLES_ENV = "ORCHESTRATOR_SAMPLES"
EXTERNAL_SKIP_REASON = f"{SAMPLES_ENV} is not set: the public AIB corpus is optional"


# --- where the samples are -------------------------------------------------------------------

def project_samples() -> list[Path]:
    """The project's own sample templates, tests/data/templates/*.json, sorted."""
    return sorted(PROJECT_TEMPLATES.glob("*.json"))


def external_corpus_given() -> bool:
    return bool(os.environ.get(SAMPLES_ENV, "").strip())


def external_samples() -> list[Path]:
    """The `*.json` files under $ORCHESTRATOR_SAMPLES (recursively), sorted; [] when unset.

    A relative value is taken from the current directory, else from the repository root. A
    value that names no directory, or one without templates, is an error, not a silent skip."""
    if not external_corpus_given():
        return []
    value = os.environ[SAMPLES_ENV].strip()
    root = Path(value).expanduser()
    if not root.is_absolute() and not root.is_dir():
        root = REPO / root
    if not root.is_dir():
        raise pytest.UsageError(f"{SAMPLES_ENV}={value} is not a directory")
    found = sorted(root.rglob("*.json"))
    if not found:
        raise pytest.UsageError(f"{SAMPLES_ENV}={value} holds no *.json sample templates")
    return found


def sample_id(path: Path) -> str:
    if path.is_relative_to(PROJECT_TEMPLATES):
        return f"project:{path.stem}"
    return f"external:{path.stem}"


def external_cases(select: Callable[[Path], bool] = lambda path: True) -> list[Any]:
    """pytest parameters: every selected external sample, or (when $ORCHESTRATOR_SAMPLES is
    unset) one skipped case that says so, so that the skip shows in the report."""
    if not external_corpus_given():
        return [pytest.param(None, id="external", marks=pytest.mark.skip(reason=EXTERNAL_SKIP_REASON))]
    return [pytest.param(p, id=sample_id(p)) for p in external_samples() if select(p)]


def sample_cases(select: Callable[[Path], bool] = lambda path: True) -> list[Any]:
    """pytest parameters: every selected project sample, then `external_cases(select)`.

    Use with `@pytest.mark.parametrize("sample", sample_cases(...))`."""
    project = [p for p in project_samples() if select(p)]
    assert project, "no project sample fits this test: add one to tests/data/templates"
    return [pytest.param(p, id=sample_id(p)) for p in project] + external_cases(select)


def corpus_cases() -> list[Any]:
    """pytest parameters: the list of project samples, then the list of external ones (one
    skipped case when $ORCHESTRATOR_SAMPLES is unset), for tests that draw from a whole corpus."""
    project = pytest.param(project_samples(), id="project")
    if not external_corpus_given():
        return [project, pytest.param([], id="external", marks=pytest.mark.skip(reason=EXTERNAL_SKIP_REASON))]
    return [project, pytest.param(external_samples(), id="external")]


# --- what a sample is (read from the file, not from the product) ------------------------------

def sample_data(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def is_arm(path: Path) -> bool:
    """An ARM deployment template holding the image template in `resources`."""
    data = sample_data(path)
    return isinstance(data, dict) and "resources" in data and "properties" not in data


def is_trigger(path: Path) -> bool:
    """An imageTemplates/triggers resource: `properties.kind`, no `properties.source`."""
    data = sample_data(path)
    props = data.get("properties") if isinstance(data, dict) else None
    return isinstance(props, dict) and "kind" in props and "source" not in props


def is_windows(path: Path) -> bool:
    """By the file name, as both corpora name them (`...Win...`, `windows-...`)."""
    return "win" in path.name.lower()


def image_template_data(path: Path) -> dict[str, Any]:
    """The image template resource as written: the file, or an ARM template's imageTemplates resource."""
    data = sample_data(path)
    if is_arm(path):
        (data,) = [r for r in data["resources"]
                   if str(r.get("type", "")).lower() == "microsoft.virtualmachineimages/imagetemplates"]
    return data


# --- making a sample loadable ----------------------------------------------------------------

def sample_parameters() -> dict[str, Any]:
    """The ARM parameter values of tests/data/sample-parameters.json, unwrapped."""
    data = json.loads((DATA / "sample-parameters.json").read_text())["parameters"]
    return {name: item["value"] for name, item in data.items()}


def fill_placeholders(text: str) -> str:
    """Replaces every `<placeholder>` of the samples with its value from tests/data/placeholders.json."""
    for placeholder, value in json.loads((DATA / "placeholders.json").read_text()).items():
        text = text.replace(placeholder, value)
    return text


def filled_sample(path: Path) -> tuple[str, dict[str, Any] | None]:
    """(template text with its placeholders filled, ARM parameters or None)."""
    return fill_placeholders(path.read_text(encoding="utf-8")), sample_parameters() if is_arm(path) else None


def filled_resource(path: Path) -> dict[str, Any]:
    """The filled sample as the image template resource (an ARM template expanded with the
    local defaults for resourceGroup() and subscription())."""
    from orchestrator.core.arm import expand_deployment

    text, parameters = filled_sample(path)
    data = json.loads(text)
    return expand_deployment(data, parameters, {}, path.name) if parameters is not None else data


def load_sample(path: Path):
    """The sample as a model: placeholders filled, ARM parameters from tests/data."""
    from orchestrator.core.document import load_document

    text, parameters = filled_sample(path)
    return load_document(text, path.name, parameters)
