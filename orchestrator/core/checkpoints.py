"""Which disk checkpoints to remove: eviction to a size cap (least recently used first) and
`orchestrate checkpoints prune`. Pure: no I/O; effects/checkpoint_store.py gathers the rows and
the active runs, and removes what these functions choose.

A checkpoint is a qcow2 layer whose backing file is the layer below (`parent`; None: the source
image). The rules, for both:

- never a protected layer (what an active run started from or is writing), nor any layer below
  one (a protected layer is only readable through its whole chain);
- a layer goes only together with, or after, every layer above it: removing a layer that still
  has a child would leave the child unreadable;
- eviction takes leaves only, the least recently used first (ties: the oldest, then the path),
  until the layers that remain take no more than the cap; the cap may stay exceeded when only
  protected layers are left.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Layer:
    """What the selection needs to know of one checkpoint."""

    path: str
    parent: str | None
    size_bytes: int
    last_used_at: float
    created_at: float


@dataclass(frozen=True)
class Eviction:
    remove: tuple[str, ...]  # in the order to remove them (children before their parents)
    remaining_bytes: int  # what the layers that stay take
    over_cap: bool  # the cap could not be met: what is left above it is protected


def protected_closure(layers: Sequence[Layer], protect: Iterable[str]) -> frozenset[str]:
    """`protect` and every layer below each of them."""
    parents = {layer.path: layer.parent for layer in layers}
    closed: set[str] = set()
    for path in protect:
        current: str | None = path
        while current is not None and current not in closed:
            closed.add(current)
            current = parents.get(current)
    return frozenset(closed)


def descendants(layers: Sequence[Layer], path: str) -> list[str]:
    """Every layer above `path` (children, their children, ...), nearest first."""
    children: dict[str, list[str]] = {}
    for layer in layers:
        if layer.parent is not None:
            children.setdefault(layer.parent, []).append(layer.path)
    found, queue, seen = [], list(children.get(path, [])), {path}
    while queue:
        child = queue.pop(0)
        if child in seen:
            continue
        seen.add(child)
        found.append(child)
        queue += children.get(child, [])
    return found


def select_evictions(layers: Sequence[Layer], protect: Iterable[str], cap_bytes: int) -> Eviction:
    """The leaves to remove, least recently used first, until the rest takes <= cap_bytes."""
    if cap_bytes < 0:
        raise ValueError("cap_bytes must be 0 or more")
    guarded = protected_closure(layers, protect)
    remaining = {layer.path: layer for layer in layers}
    child_count: dict[str, int] = {}
    for layer in layers:
        if layer.parent in remaining:
            child_count[layer.parent] = child_count.get(layer.parent, 0) + 1
    total = sum(layer.size_bytes for layer in layers)
    removed: list[str] = []
    while total > cap_bytes:
        leaves = [layer for path, layer in remaining.items()
                  if not child_count.get(path) and path not in guarded]
        if not leaves:
            break
        victim = min(leaves, key=lambda layer: (layer.last_used_at, layer.created_at, layer.path))
        removed.append(victim.path)
        total -= victim.size_bytes
        del remaining[victim.path]
        if victim.parent in child_count:
            child_count[victim.parent] -= 1
    return Eviction(tuple(removed), total, total > cap_bytes)


@dataclass(frozen=True)
class PruneDecision:
    path: str
    remove: bool
    reason: str


def select_prune(layers: Sequence[Layer], protect: Iterable[str], chosen: Iterable[str],
                 protect_reasons: dict[str, str] | None = None) -> list[PruneDecision]:
    """For each chosen layer: removed, or kept with why (protected, or a layer that stays is
    above it). Removals come children first."""
    guarded = protected_closure(layers, protect)
    wanted = set(chosen)
    by_path = {layer.path: layer for layer in layers}
    # a chosen layer stays when it is protected, or when any layer above it stays
    staying = {path for path in by_path if path not in wanted or path in guarded}
    changed = True
    while changed:
        changed = False
        for path in wanted - staying:
            if any(d in staying for d in descendants(layers, path)):
                staying.add(path)
                changed = True
    decisions = []
    for path in _children_first(layers, [p for p in wanted if p in by_path]):
        if path in guarded:
            why = (protect_reasons or {}).get(path) or "in use by an active run (or below a layer that is)"
            decisions.append(PruneDecision(path, False, why))
        elif path in staying:
            above = [d for d in descendants(layers, path) if d in staying]
            decisions.append(PruneDecision(path, False, f"{len(above)} checkpoint(s) that stay are built on it"))
        else:
            decisions.append(PruneDecision(path, True, "selected"))
    return decisions


def _children_first(layers: Sequence[Layer], paths: Sequence[str]) -> list[str]:
    """`paths` ordered so that every layer comes before the layers below it."""
    parents = {layer.path: layer.parent for layer in layers}

    def depth(path: str) -> int:
        count, current, seen = 0, parents.get(path), {path}
        while current is not None and current not in seen:
            seen.add(current)
            count += 1
            current = parents.get(current)
        return count

    return sorted(paths, key=lambda p: (-depth(p), p))
