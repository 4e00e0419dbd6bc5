"""Which stored templates build from an image another one publishes, in what order they
build, and what a SourceImage trigger asks of a template. Pure: no I/O.

An edge B -> A says: A's source is an image B distributes, so B builds first.

- A's source `SharedImageVersion` `.../galleries/G/images/DEF/versions/latest` depends on every
  template with a `SharedImage` target in G/DEF (a generated version, or an explicit one) that
  is not `excludeFromLatest` (such a version never becomes `latest`).
- A's source `.../versions/X.Y.Z` depends on a template whose target names that very version.
- A's source `ManagedImage` `imageId` depends on a template with a `ManagedImage` target of
  that `imageId`.

Resource IDs compare without regard to case, as Azure compares them. A template that builds
from the image it publishes itself (a layer on its own definition's `latest`) has no edge to
itself: it orders like any other, and a trigger refuses it (AIB does too).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Iterable, Mapping

from orchestrator.core import model as m
from orchestrator.core.resource_ids import parse
from orchestrator.errors import UsageError


@dataclass(frozen=True)
class Edge:
    producer: str  # the template that distributes the image
    consumer: str  # the template whose source it is
    image: str  # the image as the consumer names it (G/DEF/latest, G/DEF/X.Y.Z, NAME)


@dataclass(frozen=True)
class Graph:
    names: tuple[str, ...]
    edges: tuple[Edge, ...]

    def producers(self, name: str) -> tuple[Edge, ...]:
        """The edges into `name`: the templates whose images it builds from."""
        return tuple(e for e in self.edges if e.consumer == name)

    def consumers(self, name: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.producer == name)


class DependencyCycle(UsageError):
    def __init__(self, cycles: Iterable[tuple[str, ...]]) -> None:
        self.cycles = tuple(cycles)
        shown = "; ".join(" -> ".join(c + (c[0],)) for c in self.cycles)
        super().__init__(f"stored templates build from each other's images in a cycle: {shown}",
                         hint="each arrow is 'publishes the source of': change one template's source or "
                              "distribute so that the chain has a beginning")


def source_image(source: m.Source) -> tuple[str, str] | None:
    """(key, short name) of the store image a source names, `latest` as the definition's key
    with `/latest`; None for sources outside the store (PlatformImage, ISO) or unparsable IDs."""
    if isinstance(source, m.SharedImageVersionSource):
        rid = parse(source.image_version_id)
        if rid is None or rid.kind != "ImageVersion":
            return None
        if rid.version == "latest":
            return rid.image_definition.key + "/latest", rid.short
        return rid.key, rid.short
    if isinstance(source, m.ManagedImageSource):
        rid = parse(source.image_id)
        if rid is None or rid.kind != "ManagedImage":
            return None
        return rid.key, rid.short
    return None


def published_images(template: m.ImageTemplate) -> frozenset[str]:
    """The keys a consumer's source may name to build from what this template distributes:
    an explicit version's own key, `DEF/latest` for any version that latest may pick, a
    managed image's key."""
    keys: set[str] = set()
    for target in template.distribute:
        if isinstance(target, m.SharedImageTarget):
            rid = parse(target.gallery_image_id)
            if rid is None or rid.kind not in ("ImageDefinition", "ImageVersion"):
                continue
            if rid.kind == "ImageVersion":
                keys.add(rid.key)
            if not target.exclude_from_latest:
                keys.add(rid.image_definition.key + "/latest")
        elif isinstance(target, m.ManagedImageTarget):
            rid = parse(target.image_id)
            if rid is not None and rid.kind == "ManagedImage":
                keys.add(rid.key)
    return frozenset(keys)


def dependency_graph(templates: Mapping[str, m.ImageTemplate | None]) -> Graph:
    """The edges among stored templates (a template that could not be read, None, has none)."""
    names = tuple(sorted(templates, key=str.lower))
    published = {name: published_images(t) for name, t in templates.items() if t is not None}
    edges = []
    for consumer in names:
        template = templates[consumer]
        image = source_image(template.source) if template is not None else None
        if image is None:
            continue
        key, short = image
        for producer in names:
            if producer != consumer and key in published.get(producer, ()):
                edges.append(Edge(producer, consumer, short))
    return Graph(names, tuple(edges))


def _components(graph: Graph) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative), each in name order."""
    succ = {n: sorted({e.consumer for e in graph.consumers(n)}, key=str.lower) for n in graph.names}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph.names:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(succ[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(sorted(component, key=str.lower))
    return found


def _cycle_path(graph: Graph, members: list[str]) -> tuple[str, ...]:
    """One cycle through the component's first member: a -> b -> ... (back to a)."""
    inside = set(members)
    start = members[0]
    paths = {start: (start,)}
    queue = [start]
    while queue:  # breadth first: the shortest way back to the start
        node = queue.pop(0)
        for nxt in sorted({e.consumer for e in graph.consumers(node)} & inside, key=str.lower):
            if nxt == start:
                return paths[node]
            if nxt not in paths:
                paths[nxt] = paths[node] + (nxt,)
                queue.append(nxt)
    return tuple(members)


def ordered(graph: Graph) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(every template, producers before consumers; the cycles). Ties go by name; the members
    of a cycle come together, in name order, where the cycle as a whole would."""
    components = _components(graph)
    of = {name: i for i, comp in enumerate(components) for name in comp}
    preds: dict[int, set[int]] = {i: set() for i in range(len(components))}
    for e in graph.edges:
        if of[e.producer] != of[e.consumer]:
            preds[of[e.consumer]].add(of[e.producer])
    waiting = {i: len(p) for i, p in preds.items()}
    succs: dict[int, set[int]] = {i: set() for i in preds}
    for i, p in preds.items():
        for j in p:
            succs[j].add(i)
    ready = [(components[i][0].lower(), i) for i, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, i = heapq.heappop(ready)
        order += components[i]
        for j in succs[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, (components[j][0].lower(), j))
    cycles = tuple(_cycle_path(graph, c) for c in components if len(c) > 1)
    return tuple(order), tuple(sorted(cycles, key=lambda c: c[0].lower()))


def topological_order(graph: Graph) -> tuple[str, ...]:
    """Producers before consumers, or DependencyCycle naming every cycle."""
    order, cycles = ordered(graph)
    if cycles:
        raise DependencyCycle(cycles)
    return order


def dependants(graph: Graph, names: Iterable[str]) -> frozenset[str]:
    """Every template that builds, directly or through others, from an image of `names`
    (`names` themselves not included unless a cycle leads back to them)."""
    found: set[str] = set()
    todo = list(names)
    while todo:
        for edge in graph.consumers(todo.pop()):
            if edge.consumer not in found:
                found.add(edge.consumer)
                todo.append(edge.consumer)
    return frozenset(found)


# --- SourceImage triggers ---------------------------------------------------------------------
TRIGGER_KINDS = ("SourceImage",)


def trigger_refusals(template: m.ImageTemplate) -> list[str]:
    """Why AIB would not accept a SourceImage trigger on this template ([] when it would):
    the source is a PlatformImage at `latest` or a gallery image at `.../versions/latest`;
    no SharedImage target names an explicit version (versions must be generated); and no
    SharedImage target is the source's own image definition."""
    reasons = []
    source = template.source
    source_definition = None
    if isinstance(source, m.SharedImageVersionSource):
        rid = parse(source.image_version_id)
        if rid is None or rid.kind != "ImageVersion" or rid.version != "latest":
            reasons.append(f"its source {source.image_version_id} is not a gallery image's `latest` version "
                           "(.../galleries/G/images/DEF/versions/latest)")
        else:
            source_definition = rid.image_definition.key
    elif isinstance(source, m.PlatformImageSource):
        if source.version.lower() != "latest":
            reasons.append(f"its PlatformImage source is pinned to version {source.version}, not `latest`")
    else:
        reasons.append(f"its source is a {source.kind}; a SourceImage trigger needs a gallery image at "
                       "`.../versions/latest` (or a PlatformImage at `latest`)")
    for target in template.distribute:
        if not isinstance(target, m.SharedImageTarget):
            continue
        rid = parse(target.gallery_image_id)
        if rid is None:
            continue
        if rid.kind == "ImageVersion":
            reasons.append(f"distribute {target.run_output_name!r} names the version {rid.version}; with a "
                           "trigger, versions must be generated (name the image definition)")
        if source_definition is not None and rid.image_definition.key == source_definition:
            reasons.append(f"distribute {target.run_output_name!r} publishes to {rid.image_definition.short}, "
                           "the source's own image definition")
    return reasons
