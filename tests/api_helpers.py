"""A real `orchestrate serve` on 127.0.0.1 (its own generated certificate), and Microsoft's own
clients pointed at it: azure-mgmt-imagebuilder, unmodified, and plain HTTPS requests."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from azure.core.credentials import AccessToken

SUBSCRIPTION = "11111111-2222-3333-4444-555555555555"
GROUP = "images-rg"


class StaticToken:
    """A credential that hands the SDK one bearer token (an orchestrate token)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


@dataclass
class Server:
    url: str
    ca: str
    home: Path
    process: subprocess.Popen

    def client(self, token: str, subscription: str = SUBSCRIPTION):
        from azure.mgmt.imagebuilder import ImageBuilderClient

        return ImageBuilderClient(StaticToken(token), subscription, base_url=self.url, connection_verify=self.ca,
                                  polling_interval=1)

    def path(self, name: str = "", group: str = GROUP, subscription: str = SUBSCRIPTION) -> str:
        return (f"{self.url}/subscriptions/{subscription}/resourceGroups/{group}/providers/"
                f"Microsoft.VirtualMachineImages/imageTemplates" + (f"/{name}" if name else ""))


def start_server(home: Path) -> Server:
    env = dict(os.environ, ORCHESTRATOR_HOME=str(home))
    process = subprocess.Popen([sys.executable, "-m", "orchestrator", "serve", "--listen", "127.0.0.1:0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = [process.stdout.readline(), process.stdout.readline()]  # printed once it listens
    match = re.search(r"listening on (https://\S+)", lines[0])
    ca = re.search(r"trust the CA in (\S+)", lines[1])
    if not match or not ca:
        process.kill()
        raise AssertionError(f"orchestrate serve did not start: {lines} {process.stderr.read()}")
    return Server(match.group(1), ca.group(1), home, process)


def make_token(home: Path, name: str, role: str, scope: str) -> str:
    env = dict(os.environ, ORCHESTRATOR_HOME=str(home))
    done = subprocess.run([sys.executable, "-m", "orchestrator", "token", "create", name, "--role", role,
                           "--scope", scope], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def sdk_template(inline: list[str], vm_size: str = "Standard_B2s"):
    """An image template as Microsoft's SDK models it (serialized by the SDK itself)."""
    from azure.mgmt.imagebuilder import models

    return models.ImageTemplate(
        location="westeurope", tags={"team": "platform"},
        identity=models.ImageTemplateIdentity(type="None"),
        properties=models.ImageTemplateProperties(
            source=models.ImageTemplatePlatformImageSource(publisher="Debian", offer="debian-12", sku="12",
                                                           version="latest"),
            customize=[models.ImageTemplateShellCustomizer(name="setup", inline=inline)],
            distribute=[models.ImageTemplateVhdDistributor(run_output_name="vhd")],
            vm_profile=models.ImageTemplateVmProfile(vm_size=vm_size),
            build_timeout_in_minutes=30))
