"""Template builders for tests."""
from __future__ import annotations

import copy
import json
from typing import Any

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


DATA = __import__("pathlib").Path(__file__).resolve().parent / "data"
SAMPLES_DIR = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "aib-samples" / "azure"


def sample_parameters() -> dict[str, Any]:
    """The ARM parameter values of tests/data/sample-parameters.json, unwrapped."""
    data = json.loads((DATA / "sample-parameters.json").read_text())["parameters"]
    return {name: item["value"] for name, item in data.items()}


def fill_placeholders(text: str) -> str:
    """Replaces every `<placeholder>` of the public samples with a value from tests/data."""
    for placeholder, value in json.loads((DATA / "placeholders.json").read_text()).items():
        text = text.replace(placeholder, value)
    return text
