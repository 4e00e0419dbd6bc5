"""Where things live, and the few settings a host may override by environment variable."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import EnvironmentProblem, UsageError

HOME_ENV = "ORCHESTRATOR_HOME"
ACCEL_ENV = "ORCHESTRATOR_ACCELERATOR"  # auto (default), kvm or tcg
# What ARM's resourceGroup() and subscription() return on-prem (defaults: "local", zero GUID).
ARM_ENV = {"ORCHESTRATOR_SUBSCRIPTION_ID": ("subscription", "subscriptionId"),
           "ORCHESTRATOR_RESOURCE_GROUP": ("resourceGroup", "name"),
           "ORCHESTRATOR_LOCATION": ("resourceGroup", "location")}


@dataclass(frozen=True)
class Config:
    home: Path
    accelerator: str = "auto"
    packer: str = "packer"
    qemu_img: str = "qemu-img"
    qemu_system: str = "qemu-system-x86_64"
    arm_context: tuple[tuple[str, str, str], ...] = ()  # (object, field, value)

    def arm_functions(self) -> dict[str, dict[str, str]]:
        context: dict[str, dict[str, str]] = {}
        for obj, name, value in self.arm_context:
            context.setdefault(obj, {})[name] = value
        return context

    @property
    def db_path(self) -> Path:
        return self.home / "state.db"

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache" / "downloads"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    def ensure(self) -> "Config":
        for path in (self.home, self.images_dir, self.cache_dir, self.runs_dir, self.artifacts_dir):
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise EnvironmentProblem(f"cannot create {path}: {exc.strerror}",
                                         hint=f"set {HOME_ENV} to a writable directory") from exc
        return self


def default_home() -> Path:
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser().resolve() / "orchestrator"


def load_config(home: str | None = None) -> Config:
    accel = os.environ.get(ACCEL_ENV, "auto").strip().lower() or "auto"
    if accel not in ("auto", "kvm", "tcg"):
        raise UsageError(f"{ACCEL_ENV}={accel!r} is not auto, kvm or tcg",
                         hint="unset it to let orchestrator probe whether KVM really runs a guest")
    path = Path(home).expanduser().resolve() if home else default_home()
    arm = tuple((obj, name, os.environ[var]) for var, (obj, name) in ARM_ENV.items() if os.environ.get(var))
    return Config(home=path, accelerator=accel, arm_context=arm)
