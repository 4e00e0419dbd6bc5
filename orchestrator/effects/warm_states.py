"""Warm states in the checkpoint store: the VM state saved with a checkpoint's layer
(`<layer>.state.zst`) and the saved run's SSH key (`<layer>.key`), both owner-only (guest RAM
holds the secrets of earlier steps; the key opens the restored guest). One row each in
warm_states, keyed by the layer: the checkpoint store counts their size with the layer's,
removes them with it, and `usable` says whether one may be restored for a build."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from orchestrator.core.warm import KEY_SUFFIX, STATE_SUFFIX, MachineConfig, WarmState, refusal
from orchestrator.effects.checkpoint_files import norm
from orchestrator.effects.files import sha256_file
from orchestrator.errors import CheckpointFailed


def _state(row: Any) -> WarmState:
    return WarmState(row["path"], row["sha256"], row["size_bytes"], row["layer_sha256"],
                     MachineConfig.from_json(row["machine"]), row["key_path"], row["public_key"],
                     row["pause_seconds"])


def record(db: Any, layer: str, layer_sha256: str, warm: dict[str, Any], machine: MachineConfig,
           public_key: str) -> WarmState:
    """Registers the state the hook saved with `layer` (inside the caller's write transaction,
    which registers the layer): hashed, owner-only, bound to the layer's digest."""
    state, key = norm(warm["state"]), norm(warm["key"])
    if state != norm(layer + STATE_SUFFIX) or key != norm(layer + KEY_SUFFIX):
        raise CheckpointFailed(f"the warm state {state} is not the one of layer {layer}")
    try:
        for path in (state, key):
            os.chmod(path, 0o600)
        digest, size = sha256_file(Path(state)), os.stat(state).st_blocks * 512
    except OSError as exc:
        raise CheckpointFailed(f"the warm state {state} cannot be registered: {exc.strerror or exc}") from None
    row = WarmState(state, digest, size, layer_sha256, machine, key, public_key.strip(),
                    float(warm.get("pause_seconds", 0.0)))
    db.replace("warm_states", {
        "layer_path": norm(layer), "path": row.path, "sha256": row.sha256, "size_bytes": row.size_bytes,
        "layer_sha256": row.layer_sha256, "machine": machine.to_json(), "key_path": row.key_path,
        "public_key": row.public_key, "pause_seconds": row.pause_seconds, "created_at": time.time()},
        key=("layer_path",))
    return row


def get(db: Any, layer: str) -> WarmState | None:
    row = db.execute("SELECT * FROM warm_states WHERE layer_path = ?", (norm(layer),)).fetchone()
    return _state(row) if row else None


def delete(db: Any, layers: list[str]) -> None:
    db.executemany("DELETE FROM warm_states WHERE layer_path = ?", [(p,) for p in layers])


def usable(state: WarmState, layer_sha256: str, machine: MachineConfig) -> str | None:
    """Why `state` may not be restored on `machine` over the layer whose registered digest is
    `layer_sha256` (None: it may). Hashes the state file (a truncated one is caught here,
    before QEMU starts)."""
    try:
        digest: str | None = sha256_file(Path(state.path))
    except FileNotFoundError:
        digest = None
    except OSError as exc:
        return f"its state file {state.path} cannot be read: {exc.strerror or exc}"
    return refusal(state, layer_sha256, machine, digest, os.path.isfile(state.key_path))
