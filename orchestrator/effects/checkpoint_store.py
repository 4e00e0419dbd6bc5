"""The checkpoint store: frozen qcow2 layers under the data home's checkpoints/ (one per
customizer of a build, `<key>-<run_id>.qcow2`), their rows in the state database, integrity
checks and least-recently-used eviction under [checkpoints] max_gib.

A layer's backing file is the layer below (`parent`), or the source image for the first layer
of a chain (parent None). Two runs can make layers with one key: both rows stay (each chain is
only valid with its own lower layers), so a registered layer is never replaced or renamed.

Removal (eviction, prune, a broken layer found by `find`) deletes the rows in one write
transaction and unlinks the files after it commits: no row ever names a file that was
removed on purpose, and a crash between the two leaves only an unregistered file, which the
next `sweep` removes. What active runs (Running, Canceling) started from or are writing, and
everything below it, is never removed; a run takes its starting checkpoint with `claim`, in a
transaction that eviction's own excludes, so a checkpoint cannot be evicted between a run's
`find` and its use.
"""
from __future__ import annotations

import dataclasses
import json
import os
import stat as stat_mode
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from orchestrator.config import Config
from orchestrator.core import checkpoints as pick
from orchestrator.core.warm import MachineConfig, WarmState
from orchestrator.effects import checkpoint_files as files
from orchestrator.effects import warm_states
from orchestrator.effects.checkpoint_files import backing_file, layer_path, norm, stat_key
from orchestrator.effects.files import sha256_file
from orchestrator.effects.state import StateStore
from orchestrator.errors import CheckpointFailed

ACTIVE = ("Running", "Canceling")
__all__ = ["Checkpoint", "CheckpointStore", "Kept", "PruneReport", "Removed", "backing_file", "layer_path"]


@dataclass(frozen=True)
class Checkpoint:
    path: str
    key: str
    parent: str | None  # the layer below; None: the source image
    run_id: str
    template_name: str
    step_index: int  # 1-based customizer index
    step_name: str
    sha256: str
    size_bytes: int  # allocated on disk (st_blocks * 512)
    created_at: float
    last_used_at: float
    stat: tuple[int, int, int] = (0, 0, 0)  # (size, mtime_ns, inode) when registered or last verified
    state_bytes: int = 0  # its warm state (VM memory), if one was saved: counted and removed with it

    @property
    def warm(self) -> bool:
        return self.state_bytes > 0

    @property
    def total_bytes(self) -> int:
        """The layer and its warm state: what it takes on disk and in the cap."""
        return self.size_bytes + self.state_bytes

    def layer(self) -> pick.Layer:
        return pick.Layer(self.path, self.parent, self.total_bytes, self.last_used_at,
                          self.created_at)

    def describe(self) -> str:
        return (f"checkpoint {self.key[:12]} (step {self.step_index} {self.step_name!r} of {self.template_name}, "
                f"run {self.run_id})")


@dataclass(frozen=True)
class Removed:
    path: str
    reason: str
    checkpoint: Checkpoint | None = None  # None: an unregistered file (sweep)
    error: str | None = None  # the unlink failed (the row is gone; the next sweep tries again)


@dataclass(frozen=True)
class Kept:
    checkpoint: Checkpoint
    reason: str


@dataclass(frozen=True)
class PruneReport:
    removed: tuple[Removed, ...]
    kept: tuple[Kept, ...]


def _checkpoint(row: Any) -> Checkpoint:
    data = dict(row)
    data["stat"] = tuple(json.loads(data["stat"]))
    return Checkpoint(**data)


_COLUMNS = ("path, key, parent, run_id, template_name, step_index, step_name, sha256, size_bytes, stat, "
            "created_at, last_used_at")


class CheckpointStore:
    def __init__(self, config: Config, state: StateStore) -> None:
        self.config = config
        self.state = state
        self.root = config.checkpoints_dir

    # --- reading -------------------------------------------------------------------------
    def _rows(self, db: Any, where: str = "", args: tuple[Any, ...] = ()) -> list[Checkpoint]:
        states = dict(db.execute("SELECT layer_path, size_bytes FROM warm_states").fetchall())
        return [dataclasses.replace(row, state_bytes=states.get(row.path, 0))
                for row in map(_checkpoint, db.execute(f"SELECT {_COLUMNS} FROM checkpoints {where}", args))]

    def warm_state(self, path: str | Path) -> WarmState | None:
        with self.state._connect() as db:
            return warm_states.get(db, norm(path))

    def get(self, path: str | Path) -> Checkpoint | None:
        with self.state._connect() as db:
            rows = self._rows(db, "WHERE path = ?", (norm(path),))
        return rows[0] if rows else None

    def listing(self, template: str | None = None) -> list[Checkpoint]:
        """Every checkpoint (of `template`), by template, then chain order."""
        where, args = ("WHERE template_name = ? COLLATE NOCASE", (template,)) if template else ("", ())
        with self.state._connect() as db:
            return self._rows(db, where + " ORDER BY template_name, created_at, step_index", args)

    def for_run(self, run_id: str) -> list[Checkpoint]:
        with self.state._connect() as db:
            return self._rows(db, "WHERE run_id = ? ORDER BY step_index", (run_id,))

    def chain(self, path: str | Path) -> list[Checkpoint]:
        """The layer and every registered layer below it, bottom-up ([] if it is not registered).
        The first one's parent is None when the chain is whole (it stands on the source image)."""
        found: list[Checkpoint] = []
        current: str | None = norm(path)
        with self.state._connect() as db:
            while current is not None and current not in {c.path for c in found}:
                rows = self._rows(db, "WHERE path = ?", (current,))
                if not rows:
                    break
                found.append(rows[0])
                current = rows[0].parent
        return found[::-1]

    def total_bytes(self) -> int:
        with self.state._connect() as db:
            return sum(int(db.execute(f"SELECT COALESCE(SUM(size_bytes), 0) FROM {table}").fetchone()[0])
                       for table in ("checkpoints", "warm_states"))

    def protected(self) -> dict[str, str]:
        """Path -> why it must stay: what active runs started from or made, and what is below."""
        with self.state._connect() as db:
            return self._protected(db, self._rows(db))

    def _protected(self, db: Any, rows: list[Checkpoint]) -> dict[str, str]:
        reasons: dict[str, str] = {}
        runs = db.execute("SELECT id, started_from FROM runs WHERE run_state IN (?, ?) ORDER BY rowid",
                          ACTIVE).fetchall()
        active = {r["id"] for r in runs}
        for run in runs:
            if run["started_from"]:
                reasons.setdefault(norm(run["started_from"]), f"active run {run['id']} started from it")
        for row in rows:
            if row.run_id in active:
                reasons.setdefault(row.path, f"made by active run {row.run_id}")
        for path, disk in files.kept_disks(self.config).items():
            reasons.setdefault(path, f"a kept build VM disk stands on it ({disk}; remove its staging when done)")
        parents = {r.path: r.parent for r in rows}
        for path, why in list(reasons.items()):
            below, seen = parents.get(path), {path}
            while below is not None and below not in seen:
                seen.add(below)
                reasons.setdefault(below, f"below a layer that must stay ({why})")
                below = parents.get(below)
        return reasons

    # --- registering and using -----------------------------------------------------------
    def register(self, run_id: str, template_name: str, key: str, step_index: int, step_name: str,
                 path: str | Path, parent: str | Path | None,
                 warm: tuple[dict[str, Any], MachineConfig, str] | None = None) -> Checkpoint:
        """Records a frozen layer (QEMU no longer writes it): its sha256 and allocated size, one
        row. The same layer registered again returns its row; another layer at a registered
        path is refused (a layer is never replaced). The file becomes read-only (0400).
        `warm`: the state the hook saved with it (its record, the machine, the public key)."""
        path, parent = norm(path), (norm(parent) if parent else None)
        wanted = (key, run_id, parent, step_index)

        def same(existing: Checkpoint) -> Checkpoint:
            if (existing.key, existing.run_id, existing.parent, existing.step_index) == wanted:
                return existing
            raise CheckpointFailed(f"{path} is already registered as {existing.describe()}",
                                   hint="a registered layer is never replaced: give each layer its own name "
                                        "(checkpoint_store.layer_path(config, key, run_id))")

        existing = self.get(path)
        if existing is not None:
            return same(existing)
        if os.path.dirname(path) != norm(self.root):
            raise CheckpointFailed(f"{path} is not in the checkpoint store {self.root}",
                                   hint="make each layer at checkpoint_store.layer_path(config, key, run_id)")
        try:
            info = os.lstat(path)
            if not stat_mode.S_ISREG(info.st_mode):
                raise CheckpointFailed(f"the checkpoint layer {path} is not a regular file")
            backing = backing_file(path)
        except (OSError, ValueError) as exc:
            raise CheckpointFailed(f"the checkpoint layer {path} cannot be registered: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
        if parent is not None and (backing is None or norm(backing) != parent):
            raise CheckpointFailed(f"the checkpoint layer {path} stands on {backing or 'no backing file'}, "
                                   f"not on its parent {parent}")
        try:
            digest = sha256_file(Path(path))
            after = os.lstat(path)
        except OSError as exc:
            raise CheckpointFailed(f"the checkpoint layer {path} cannot be read: {exc.strerror or exc}") from None
        if stat_key(after) != stat_key(info):
            raise CheckpointFailed(f"the checkpoint layer {path} changed while it was hashed",
                                   hint="register a layer only once QEMU no longer writes it (after the snapshot)")
        try:
            os.chmod(path, 0o400)  # ctime only: the recorded (size, mtime, inode) stay
        except OSError:
            pass
        now = time.time()
        row = Checkpoint(path, key, parent, run_id, template_name, step_index, step_name, digest,
                         after.st_blocks * 512, now, now, stat_key(after))
        with self.state.immediate() as db:
            found = self._rows(db, "WHERE path = ?", (path,))
            if found:  # registered meanwhile by another process
                return same(found[0])
            if parent is not None and not self._rows(db, "WHERE path = ?", (parent,)):
                raise CheckpointFailed(f"the parent {parent} of checkpoint layer {path} is not a registered "
                                       "checkpoint (removed since?)")
            db.execute(f"INSERT INTO checkpoints ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", (
                row.path, row.key, row.parent, row.run_id, row.template_name, row.step_index, row.step_name,
                row.sha256, row.size_bytes, json.dumps(list(row.stat)), row.created_at, row.last_used_at))
            if warm is not None:
                saved = warm_states.record(db, row.path, row.sha256, *warm)
                row = dataclasses.replace(row, state_bytes=saved.size_bytes)
        return row

    def find(self, key: str) -> tuple[Checkpoint | None, list[str]]:
        """The newest checkpoint of `key` whose layer and whole chain below are registered and
        intact (size, mtime and inode as recorded, else the sha256 decides), and whose source
        image is there; with why the others were not used. A layer that is gone or changed is
        dropped (its row and the rows above it; their files too, unless an active run holds
        them)."""
        with self.state._connect() as db:
            candidates = self._rows(db, "WHERE key = ? ORDER BY created_at DESC, rowid DESC", (key,))
        reasons: list[str] = []
        for candidate in candidates:
            chain = self.chain(candidate.path)
            if not chain or chain[-1].path != candidate.path:
                continue  # dropped with a broken layer below another candidate
            if chain[0].parent is not None:
                reasons.append(self._drop(chain[0], f"the layer below it, {chain[0].parent}, is no longer a "
                                                    "checkpoint", candidate))
                continue
            broken = self._broken(chain)
            if broken is not None:
                layer, why, drop = broken
                reasons.append(self._drop(layer, why, candidate) if drop else f"{candidate.describe()} not used: {why}")
                continue
            source = files.source_missing(chain[0].path)
            if source:
                reasons.append(f"{candidate.describe()} not used: {source}")
                continue
            return candidate, reasons
        return None, reasons

    def _broken(self, chain: list[Checkpoint]) -> tuple[Checkpoint, str, bool] | None:
        for layer in chain:
            found = self._intact(layer)
            if found is not None:
                return layer, *found
        return None

    def _intact(self, layer: Checkpoint) -> tuple[str, bool] | None:
        """None if the layer's file is as registered; else (why, whether to drop the row)."""
        try:
            info = os.lstat(layer.path)
        except FileNotFoundError:
            return f"its layer {layer.path} is gone", True
        except OSError as exc:
            return f"its layer {layer.path} cannot be read ({exc.strerror})", False
        if not stat_mode.S_ISREG(info.st_mode):
            return f"its layer {layer.path} is no longer a regular file", True
        if info.st_size != layer.stat[0]:
            return f"its layer {layer.path} changed since it was registered (size {info.st_size}, not {layer.stat[0]})", True
        if stat_key(info) == layer.stat:
            return None
        try:
            digest = sha256_file(Path(layer.path))
        except OSError as exc:
            return f"its layer {layer.path} cannot be read ({exc.strerror})", False
        if digest != layer.sha256:
            return f"its layer {layer.path} changed since it was registered (sha256 {digest}, recorded {layer.sha256})", True
        with self.state._connect() as db:  # touched, same bytes: the new stat saves the next hash
            db.execute("UPDATE checkpoints SET stat = ? WHERE path = ?", (json.dumps(list(stat_key(info))), layer.path))
        return None

    def _drop(self, layer: Checkpoint, why: str, candidate: Checkpoint) -> str:
        """Removes a broken layer's row and the rows above it; their files unless protected."""
        with self.state.immediate() as db:
            rows = self._rows(db)
            gone = [layer.path, *pick.descendants([r.layer() for r in rows], layer.path)]
            guarded = self._protected(db, rows)
            _delete(db, gone)
        self._unlink([p for p in gone if p not in guarded])
        above = f" and {len(gone) - 1} layer(s) above it" if len(gone) > 1 else ""
        return f"{candidate.describe()} not used: {why}; dropped {layer.describe()}{above}"

    def touch(self, path: str | Path) -> None:
        """The layer and every layer below it were used now."""
        with self.state.immediate() as db:
            self._touch(db, norm(path), time.time())

    def _touch(self, db: Any, path: str | None, now: float) -> int:
        count, seen = 0, set()
        while path is not None and path not in seen:
            seen.add(path)
            row = db.execute("SELECT parent FROM checkpoints WHERE path = ?", (path,)).fetchone()
            if row is None:
                break
            db.execute("UPDATE checkpoints SET last_used_at = ? WHERE path = ?", (now, path))
            count, path = count + 1, row["parent"]
        return count

    def claim(self, run_id: str, path: str | Path) -> bool:
        """Records that `run_id` (active) starts from the checkpoint at `path` (runs.started_from)
        and touches its chain, in one write transaction; False if it was removed since `find`."""
        path = norm(path)
        with self.state.immediate() as db:
            if not self._rows(db, "WHERE path = ?", (path,)):
                return False
            db.execute("UPDATE runs SET started_from = ? WHERE id = ?", (path, run_id))
            self._touch(db, path, time.time())
        return True

    # --- removing ------------------------------------------------------------------------
    def evict(self, cap_bytes: int | None = None, protect: Iterable[str] = ()) -> list[Removed]:
        """Removes least recently used leaves until the checkpoints take <= cap_bytes (default
        [checkpoints] max_gib), never what active runs use (nor `protect`); then sweeps."""
        cap = self.config.checkpoints_max_bytes if cap_bytes is None else cap_bytes
        with self.state.immediate() as db:
            rows = self._rows(db)
            guarded = {**self._protected(db, rows), **{norm(p): "protected by the caller" for p in protect}}
            chosen = pick.select_evictions([r.layer() for r in rows], guarded, cap)
            by_path = {r.path: r for r in rows}
            _delete(db, list(chosen.remove))
        why = f"least recently used, over the cap of {cap / 2**30:g} GiB"
        removed = self._unlink(chosen.remove, why, by_path)
        return removed + self.sweep()

    def prune(self, template: str | None = None, older_than_days: float | None = None,
              everything: bool = False) -> PruneReport:
        """Removes unused checkpoints: every one (`everything`), a template's, or those not used
        for `older_than_days` (together: both must hold); with none of these, evicts to the cap.
        A layer stays while an active run needs it or a layer that stays is built on it."""
        if template is None and older_than_days is None and not everything:
            return PruneReport(tuple(self.evict()), ())
        horizon = None if older_than_days is None else time.time() - older_than_days * 86400
        with self.state.immediate() as db:
            rows = self._rows(db)
            guarded = self._protected(db, rows)
            chosen = [r.path for r in rows
                      if (template is None or r.template_name.lower() == template.lower())
                      and (horizon is None or r.last_used_at < horizon)]
            decisions = pick.select_prune([r.layer() for r in rows], guarded, chosen, guarded)
            remove = [d.path for d in decisions if d.remove]
            _delete(db, remove)
        by_path = {r.path: r for r in rows}
        removed = self._unlink(remove, "pruned", by_path)
        kept = tuple(Kept(by_path[d.path], d.reason) for d in decisions if not d.remove)
        return PruneReport(tuple(removed + self.sweep()), kept)

    def sweep(self) -> list[Removed]:
        """Removes the files in checkpoints/ that no row names and no active run needs: layers
        and overlays of runs that ended (killed) before registering them, rows already dropped.
        A file an active run may still write carries its id (`<key>-<run_id>.qcow2[.part]`)."""
        listed = files.listed(self.root)  # listed before the rows are read: see files.orphans
        if not listed:
            return []
        with self.state._connect() as db:
            registered = [r[0] for r in db.execute("SELECT path FROM checkpoints")]
            runs = [dict(r) for r in db.execute("SELECT id, started_from FROM runs WHERE run_state IN (?, ?)",
                                                ACTIVE)]
        kept = list(files.kept_disks(self.config))
        return self._unlink(files.orphans(listed, registered + kept, runs), "not registered, and no active run uses it")

    def _unlink(self, paths: Iterable[str], why: str = "", rows: dict[str, Checkpoint] | None = None) -> list[Removed]:
        removed = []
        for path in paths:
            error = files.unlink(path)
            for companion in files.companions(path):  # its state and key go with it
                error = error or files.unlink(companion)
            removed.append(Removed(path, why, (rows or {}).get(path), error))
        return removed


def _delete(db: Any, paths: list[str]) -> None:
    db.executemany("DELETE FROM checkpoints WHERE path = ?", [(p,) for p in paths])
    warm_states.delete(db, paths)
