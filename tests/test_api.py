"""AIB's REST API, served by a real `orchestrate serve` on 127.0.0.1 over TLS with the
certificate it made, driven by Microsoft's azure-mgmt-imagebuilder unmodified (and by plain
HTTPS requests for what the SDK cannot send): templates as resources, ARM's errors, tokens
and their scopes, limits. The builds a run starts are in tests/test_api_e2e.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

from orchestrator.effects.state import StateStore
from tests.api_helpers import GROUP, make_token, sdk_template, start_server

API = "api-version=2024-02-01"


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for this module's tests (a TLS server's stop waits seconds for idle clients):
    each test has a subscription of its own, so none sees another's templates or tokens."""
    served = start_server(tmp_path_factory.mktemp("api") / "home")
    yield served
    served.process.terminate()  # as systemd stops it
    out, err = served.process.communicate(timeout=30)
    assert "Traceback" not in err, err


@pytest.fixture
def sub() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def server(shared_server, sub):
    return _Scoped(shared_server, sub)


class _Scoped:
    """The shared server as one subscription sees it."""

    def __init__(self, served, sub: str) -> None:
        self.served, self.sub = served, sub
        self.url, self.ca, self.home = served.url, served.ca, served.home

    def client(self, token: str):
        return self.served.client(token, self.sub)


@pytest.fixture
def admin(server, sub):
    return make_token(server.home, f"admin-{sub}", "contributor", f"/subscriptions/{sub}")


def test_templates_are_resources_the_sdk_creates_reads_lists_and_deletes(server, admin, sub):
    client = server.client(admin)
    templates = client.virtual_machine_image_templates
    made = templates.begin_create_or_update(GROUP, "web", sdk_template(["echo hi"])).result()
    assert made.id == f"/subscriptions/{sub}/resourceGroups/{GROUP}/providers/" \
                      "Microsoft.VirtualMachineImages/imageTemplates/web"
    assert made.properties.provisioning_state == "Succeeded" and made.tags == {"team": "platform"}
    got = templates.get(GROUP, "web")
    assert got.location == "westeurope" and got.properties.customize[0].inline == ["echo hi"]
    assert got.properties.last_run_status is None
    assert got.properties.exact_staging_resource_group.endswith(f"/resourceGroups/IT_{GROUP}_web")
    assert [t.name for t in templates.list_by_resource_group(GROUP)] == ["web"]
    assert [t.name for t in templates.list()] == ["web"]
    assert list(templates.list_by_resource_group("other-rg")) == []
    # the CLI sees what the API made
    env = dict(os.environ, ORCHESTRATOR_HOME=str(server.home))
    shown = subprocess.run([sys.executable, "-m", "orchestrator", "template", "show", "web", "--json"],
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["name"] == "web"
    # the same body again: unchanged; another body: AIB does not update a template (409)
    assert templates.begin_create_or_update(GROUP, "web", sdk_template(["echo hi"])).result().name == "web"
    with pytest.raises(HttpResponseError) as conflict:
        templates.begin_create_or_update(GROUP, "web", sdk_template(["echo changed"])).result()
    assert conflict.value.status_code == 409 and "does not update" in conflict.value.message
    # PATCH changes what AIB lets change (tags here), nothing else
    patched = templates.begin_update(GROUP, "web", {"tags": {"team": "web"}}).result()
    assert patched.tags == {"team": "web"} and templates.get(GROUP, "web").tags == {"team": "web"}
    templates.begin_delete(GROUP, "web").result()
    with pytest.raises(ResourceNotFoundError):
        templates.get(GROUP, "web")
    audit = [json.loads(line) for line in (server.home / "audit.log").read_text().splitlines()]
    mine = [a for a in audit if a["token"] == f"admin-{sub}"]
    assert {(a["method"], a["status"]) for a in mine} >= {("PUT", 201), ("PATCH", 200), ("DELETE", 202)}
    assert all(sub in a["path"] for a in mine) and oct(os.stat(server.home / "audit.log").st_mode)[-3:] == "600"


def test_a_template_with_problems_comes_back_with_each_json_path(server, admin):
    body = sdk_template(["echo hi"]).as_dict()
    body["properties"]["customize"][0]["type"] = "Shel"  # an unknown customizer type
    body["properties"]["buildTimeoutInMinutes"] = 100000  # over AIB's limit
    with pytest.raises(HttpResponseError) as refused, server.client(admin) as client:
        client.virtual_machine_image_templates.begin_create_or_update(GROUP, "bad", body).result()
    assert refused.value.status_code == 400 and refused.value.error.code == "InvalidTemplate"
    targets = {d.target for d in refused.value.error.details}
    assert targets == {"$.properties.customize[0].type", "$.properties.buildTimeoutInMinutes"}, targets
    assert StateStore(server.home / "state.db").template("bad") is None  # nothing stored


def test_tokens_roles_and_scopes(server, admin, sub):
    reader = make_token(server.home, "viewer", "reader", f"/subscriptions/{sub}")
    other_group = make_token(server.home, "elsewhere", "contributor", f"/subscriptions/{sub}/resourceGroups/x")
    server.client(admin).virtual_machine_image_templates.begin_create_or_update(
        GROUP, "web", sdk_template(["echo hi"])).result()
    assert server.client(reader).virtual_machine_image_templates.get(GROUP, "web").name == "web"
    with pytest.raises(HttpResponseError) as denied:
        server.client(reader).virtual_machine_image_templates.begin_create_or_update(
            GROUP, "web2", sdk_template(["echo hi"])).result()
    assert denied.value.status_code == 403 and "may only read" in denied.value.message
    with pytest.raises(HttpResponseError) as outside:
        server.client(other_group).virtual_machine_image_templates.get(GROUP, "web")
    assert outside.value.status_code == 403
    assert list(server.client(other_group).virtual_machine_image_templates.list()) == []  # only its group's
    env = dict(os.environ, ORCHESTRATOR_HOME=str(server.home))
    listed = subprocess.run([sys.executable, "-m", "orchestrator", "token", "list"], capture_output=True, text=True,
                            env=env)
    assert "viewer" in listed.stdout and reader not in listed.stdout  # names only, never a token
    assert StateStore(server.home / "state.db").path.read_bytes().find(reader.encode()) == -1
    subprocess.run([sys.executable, "-m", "orchestrator", "token", "revoke", "viewer"], check=True, env=env,
                   capture_output=True)
    with pytest.raises(ClientAuthenticationError) as revoked:
        server.client(reader).virtual_machine_image_templates.get(GROUP, "web")
    assert revoked.value.status_code == 401


def _raw(server, method: str, path: str, token: str | None, **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if token:
        headers.setdefault("Authorization", f"Bearer {token}")
    return requests.request(method, server.url + path, headers=headers, verify=server.ca, timeout=30, **kwargs)


def test_bad_requests_get_arm_errors_never_a_500(server, admin, sub):
    base = f"/subscriptions/{sub}/resourceGroups/{GROUP}/providers/Microsoft.VirtualMachineImages/imageTemplates"
    cases = [
        ("PUT", f"{base}/web?{API}", {"data": b"{not json"}, 400, "InvalidRequestContent"),
        ("PUT", f"{base}/web?{API}", {"json": {"location": "x"}}, 400, "InvalidRequestContent"),
        ("PUT", f"{base}/web?{API}", {"json": [1, 2]}, 400, "InvalidRequestContent"),
        ("GET", f"{base}/web?api-version=2099-01-01", {}, 400, "InvalidApiVersionParameter"),
        ("GET", f"{base}/web", {}, 400, "MissingApiVersionParameter"),
        ("GET", f"/subscriptions/{sub}/resourceGroups/ends-with-a-dot./providers/Microsoft.VirtualMachineImages/"
                f"imageTemplates/web?{API}", {}, 400, "InvalidResourceGroupName"),
        ("GET", f"/subscriptions/{sub}/resourceGroups/no*stars/providers/Microsoft.VirtualMachineImages/"
                f"imageTemplates/web?{API}", {}, 400, "InvalidResourceGroupName"),
        ("PUT", f"{base}/bad$name?{API}", {"json": sdk_template(["true"]).as_dict()}, 400, "BadRequest"),
        ("GET", f"/subscriptions/99999999-0000-0000-0000-000000000000/resourceGroups/{GROUP}/providers/"
                f"Microsoft.VirtualMachineImages/imageTemplates/web?{API}", {}, 403, "AuthorizationFailed"),
        ("GET", f"{base}/missing?{API}", {}, 404, "ResourceNotFound"),
        ("GET", f"/nowhere?{API}", {}, 404, "NotFound"),
        ("PUT", f"{base}/big?{API}", {"data": b"{" + b" " * (5 * 2**20) + b"}"}, 413, "RequestEntityTooLarge"),
        ("POST", f"{base}/missing/run?{API}", {}, 404, "ResourceNotFound"),
    ]
    for method, path, extra, status, code in cases:
        answer = _raw(server, method, path, admin, **extra)
        assert answer.status_code == status, (method, path, answer.status_code, answer.text)
        assert answer.json()["error"]["code"] == code, (path, answer.text)
    wrong_form = _raw(server, "GET", f"{base}?{API}", None, headers={"Authorization": f"Token {admin}"})
    assert wrong_form.status_code == 401 and wrong_form.json()["error"]["code"] == "InvalidAuthenticationToken"
    nobody = _raw(server, "GET", f"{base}?{API}", None)
    assert nobody.status_code == 401 and nobody.headers["WWW-Authenticate"].startswith("Bearer")
    assert nobody.headers["Server-Timing"].startswith("app;dur=")  # the server's own time, for bench_api
    chunked = _raw(server, "PUT", f"{base}/big?{API}", admin, data=(b" " * 2**20 for _ in range(5)))
    assert chunked.status_code == 413  # no Content-Length: counted as it streams in


def test_signed_urls_never_come_back_in_an_answer_or_the_audit_log(server, admin, sub):
    body = sdk_template(["echo hi"]).as_dict()
    body["properties"]["customize"].append({"type": "Shell", "name": "fetched",
                                            "scriptUri": "https://files.example/setup.sh?sv=2022-11-02&sig=TOPSECRETSIG"})
    with server.client(admin) as client:
        made = client.virtual_machine_image_templates.begin_create_or_update(GROUP, "signed", body).result()
        assert made.properties.customize[1].script_uri == "https://files.example/setup.sh?***"
    path = f"/subscriptions/{sub}/resourceGroups/{GROUP}/providers/Microsoft.VirtualMachineImages/imageTemplates"
    for url in (f"{path}/signed?{API}", f"{path}?{API}"):
        answer = _raw(server, "GET", url, admin)
        assert answer.status_code == 200 and "TOPSECRETSIG" not in answer.text and "setup.sh?***" in answer.text
    assert "TOPSECRETSIG" not in (server.home / "audit.log").read_text()
    body["properties"]["customize"][1]["sha256Checksum"] = "not-a-digest"  # a problem at the signed URL's step
    refused = _raw(server, "PUT", f"{path}/signed-bad?{API}", admin, json=body)
    assert refused.status_code == 400 and "TOPSECRETSIG" not in refused.text, refused.text
    body["properties"]["customize"].pop(1)
    body["location"] = "west europe"  # a location that is no URL path segment: the operation's URL quotes it
    with server.client(admin) as client:
        assert client.virtual_machine_image_templates.begin_create_or_update(GROUP, "spaced", body).result().name


def test_a_templates_trigger_is_a_child_resource(server, admin):
    from azure.mgmt.imagebuilder import models

    with server.client(admin) as client:
        client.virtual_machine_image_templates.begin_create_or_update(GROUP, "nightly", sdk_template(["true"])).result()
        made = client.triggers.begin_create_or_update(
            GROUP, "nightly", "onSource", models.Trigger(properties=models.SourceImageTriggerProperties())).result()
        assert made.name == "onSource" and made.properties.kind == "SourceImage"
        assert made.properties.status.code == "Healthy"
        assert [t.name for t in client.triggers.list_by_image_template(GROUP, "nightly")] == ["onSource"]
        with pytest.raises(HttpResponseError) as second:  # AIB: one SourceImage trigger a template
            client.triggers.begin_create_or_update(
                GROUP, "nightly", "another", models.Trigger(properties=models.SourceImageTriggerProperties())).result()
        assert second.value.status_code == 409
        client.triggers.begin_delete(GROUP, "nightly", "onSource").result()
        with pytest.raises(ResourceNotFoundError):
            client.triggers.get(GROUP, "nightly", "onSource")


def test_lists_page_with_next_links_the_sdk_follows(server, admin, sub):
    from orchestrator.effects import api_state
    from orchestrator.service import templates as stored

    state = StateStore(server.home / "state.db")
    body = json.dumps({"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2024-02-01",
                       "location": "local", "properties": sdk_template(["true"]).as_dict()["properties"]})
    names = [f"page-{sub[:8]}-{i:03d}" for i in range(230)]
    for name in names:  # stored as the API stores them, without 230 PUTs
        resource = api_state.Resource(name, sub, GROUP, "local", {}, {})
        stored.create(state, name, body, {}, None, also=lambda db, r=resource: api_state.put_resource(db, r))
    path = f"/subscriptions/{sub}/resourceGroups/{GROUP}/providers/Microsoft.VirtualMachineImages/imageTemplates"
    first = _raw(server, "GET", f"{path}?{API}", admin).json()
    assert len(first["value"]) == 100 and "$skipToken=100" in first["nextLink"]
    with server.client(admin) as client:
        assert [t.name for t in client.virtual_machine_image_templates.list_by_resource_group(GROUP)] == names
        assert len(list(client.virtual_machine_image_templates.list())) == 230


def test_serve_refuses_a_bad_address_and_a_busy_port_clearly(tmp_path):
    import socket

    env = dict(os.environ, ORCHESTRATOR_HOME=str(tmp_path / "home"))
    serve = [sys.executable, "-m", "orchestrator", "serve", "--listen"]
    bad = subprocess.run([*serve, "nowhere"], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "is not HOST:PORT" in bad.stderr and "Traceback" not in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = subprocess.run([*serve, f"127.0.0.1:{port}"], capture_output=True, text=True, env=env, timeout=60)
    assert taken.returncode == 6 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr, taken.stderr
    assert "Traceback" not in taken.stderr
