"""Real builds started over AIB's REST API: Microsoft's azure-mgmt-imagebuilder, unmodified,
against `orchestrate serve` on 127.0.0.1 (TLS, its own certificate), builds a template with real
Packer and QEMU (the run's poller returns when the build has ended), reads its run output, and
cancels a second run in the middle of its customizer (the run ends Canceled)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError

from orchestrator.effects.state import StateStore
from tests.api_helpers import GROUP, SUBSCRIPTION, make_token, sdk_template, start_server
from tests.vhd_inspect import Ext4Image

pytestmark = pytest.mark.integration


def _wait_for(condition, what: str, seconds: float = 600):
    """Polls an observable condition (the run's record) until it holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_sdk_runs_a_real_build_reads_its_output_and_cancels_a_run(imported_home):
    server = start_server(imported_home.home)
    try:
        token = make_token(imported_home.home, "ci", "contributor", f"/subscriptions/{SUBSCRIPTION}")
        with server.client(token) as client:
            templates = client.virtual_machine_image_templates
            templates.begin_create_or_update(GROUP, "api-web", sdk_template(
                ["echo from-the-api | sudo tee /etc/api.txt"])).result()
            templates.begin_run(GROUP, "api-web").result()  # returns when the real build has ended
            status = templates.get(GROUP, "api-web").properties.last_run_status
            assert status.run_state == "Succeeded", status
            [output] = list(templates.list_run_outputs(GROUP, "api-web"))
            assert output.name == "vhd" and output.properties.provisioning_state == "Succeeded"
            one = templates.get_run_output(GROUP, "api-web", "vhd")
            vhd = Path(one.properties.artifact_uri.removeprefix("file://"))
            assert Ext4Image(vhd).read("/etc/api.txt") == b"from-the-api\n"

            templates.begin_create_or_update(GROUP, "api-slow", sdk_template(["sleep 600"])).result()
            running = templates.begin_run(GROUP, "api-slow")
            state = StateStore(imported_home.db_path)
            _wait_for(lambda: [r for r in state.runs("api-slow") if r["run_sub_state"] == "Customizing"],
                      "the slow run's customizer")
            with pytest.raises(HttpResponseError) as busy:  # not while its run is active
                templates.begin_delete(GROUP, "api-slow").result()
            assert busy.value.status_code == 409
            templates.begin_cancel(GROUP, "api-slow").result()  # returns when the run has ended
            assert templates.get(GROUP, "api-slow").properties.last_run_status.run_state == "Canceled"
            with pytest.raises(Exception) as ended:  # the run's own operation ends Canceled, said so
                running.result()
            assert "Canceled" in str(ended.value) or running.status() == "Canceled"
    finally:
        server.process.terminate()
        server.process.communicate(timeout=30)
