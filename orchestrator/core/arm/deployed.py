"""The resources a deployment template declares: which one is the image template to build, and
what reference() of the others gives.

Resources are an array, or (languageVersion 2.0, bicep's output) an object keyed by symbolic
name; nested `resources` are child resources. A resource `copy` loop makes `count` instances
with copyIndex() 0..count-1. Only one imageTemplates resource is built, so a copy loop of more
than one is refused. reference(name, symbolic name or id) gives the declared `properties` of a
resource of this template, evaluated where it is declared; an `existing: true` resource gives
what it declares (nothing, usually: only Azure knows it) and is never deployed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from orchestrator.core.arm.loops import copy_count
from orchestrator.core.arm.registry import Runtime, Scope
from orchestrator.core.arm.resources import group_resource_id, typed_path
from orchestrator.core.arm.syntax import Failure, Reported, is_expression, parse
from orchestrator.core.arm.values import MISSING, lookup_key, section, to_string
from orchestrator.core.problems import child
from orchestrator.core.reader import type_name

IMAGE_TEMPLATE = "microsoft.virtualmachineimages/imagetemplates"
_DROPPED = {"condition", "copy", "comments", "resources", "existing"}  # ARM's, not the resource's
_NOT_FOUND_HINT = ("declare the resource in this template, or pass what you need from it as parameters; "
                   "ids and names can be computed with functions such as resourceId(), concat() or uniqueString()")


@dataclass(frozen=True)
class Declared:
    path: str
    raw: dict
    symbolic: str | None  # languageVersion 2.0
    parent: Declared | None  # for a nested child resource


@dataclass(frozen=True)
class Instance:
    declared: Declared
    loops: tuple[tuple[str, int], ...]  # the resource copy loop, if any: ((name, index),)
    parent: Instance | None

    @property
    def key(self) -> str:
        return f"{self.declared.path}#{','.join(str(i) for _, i in self.loops)}"

    def scope(self) -> Scope:
        return Scope(where="resource", loops=self.loops, resource_loop=self.loops[-1][0] if self.loops else None)


class Resources:
    def __init__(self, ex: Runtime) -> None:
        self.ex = ex
        self._declared: list[Declared] | None = None
        self._instances: dict[str, list[Instance]] = {}
        self._quiet: dict[tuple[str, str], Any] = {}
        self._values: dict[tuple[str, str], Any] = {}

    @property
    def symbolic(self) -> bool:
        return isinstance(section(self.ex.data, "resources")[1], dict)

    def declared(self) -> list[Declared]:
        if self._declared is None:
            key, raw = section(self.ex.data, "resources")
            entries = raw.items() if isinstance(raw, dict) else enumerate(raw) if isinstance(raw, list) else ()
            self._declared = []
            for name, item in entries:
                self._walk(item, child(child("$", key), name), name if isinstance(raw, dict) else None, None)
        return self._declared

    def _walk(self, raw: Any, path: str, symbolic: str | None, parent: Declared | None) -> None:
        if not isinstance(raw, dict):
            return
        declared = Declared(path, raw, symbolic, parent)
        self._declared.append(declared)  # type: ignore[union-attr]
        key = next((k for k in raw if k.lower() == "resources"), None)
        if key is not None and isinstance(raw[key], list):
            for index, item in enumerate(raw[key]):
                self._walk(item, child(child(path, key), index), None, declared)

    # --- evaluating what identifies a resource, quietly: a resource nobody asks for is not checked ---

    def quiet(self, raw: Any, instance: Instance) -> Any:
        if not isinstance(raw, str) or not is_expression(raw):
            return raw
        if raw.startswith("[["):
            return raw[1:]
        try:
            with self.ex.scoped(instance.scope()):
                return self.ex.evaluate(parse(raw), raw)
        except (Failure, Reported, RecursionError):
            return MISSING

    def instances(self, declared: Declared) -> list[Instance]:
        if declared.path not in self._instances:
            parents = self.instances(declared.parent) if declared.parent else [None]
            copy = lookup_key(declared.raw, "copy")
            out: list[Instance] = []
            for parent in parents:
                loops = parent.loops if parent else ()
                if not isinstance(copy, dict):
                    out.append(Instance(declared, loops, parent))
                    continue
                name = lookup_key(copy, "name")
                count = self.quiet(lookup_key(copy, "count"), Instance(declared, loops, parent))
                if isinstance(name, str) and isinstance(count, int) and not isinstance(count, bool):
                    out += [Instance(declared, loops + ((name, i),), parent) for i in range(min(count, 800))]
            self._instances[declared.path] = out
        return self._instances[declared.path]

    def identity(self, instance: Instance) -> tuple[Any, Any]:
        """(full type, full name), each MISSING when it cannot be evaluated."""
        key = (instance.key, "identity")
        if key not in self._quiet:
            kind = self.quiet(lookup_key(instance.declared.raw, "type"), instance)
            name = self.quiet(lookup_key(instance.declared.raw, "name"), instance)
            if instance.parent is not None and isinstance(kind, str) and "/" not in kind:
                parent_kind, parent_name = self.identity(instance.parent)
                kind = f"{parent_kind}/{kind}" if isinstance(parent_kind, str) else MISSING
                name = f"{parent_name}/{name}" if isinstance(parent_name, str) and isinstance(name, str) else MISSING
            self._quiet[key] = (kind if isinstance(kind, str) else MISSING, name if isinstance(name, str) else MISSING)
        return self._quiet[key]

    def resource_id(self, instance: Instance) -> str | None:
        kind, name = self.identity(instance)
        if kind is MISSING or name is MISSING:
            return None
        try:
            path = typed_path("resourceId", kind, name.split("/"))
        except Failure:
            return None
        scope = self.quiet(lookup_key(instance.declared.raw, "scope"), instance)
        if isinstance(scope, str) and scope.startswith("/"):
            return f"{scope.rstrip('/')}/providers/{path}"
        return group_resource_id(self.ex.context, path)

    def every_instance(self) -> list[Instance]:
        return [instance for declared in self.declared() for instance in self.instances(declared)]

    def find(self, target: str) -> list[Instance]:
        if self.symbolic:
            match = re.fullmatch(r"(.+)\[(\d+)\]", target)
            name, index = (match.group(1), int(match.group(2))) if match else (target, None)
            for declared in self.declared():
                if declared.symbolic is not None and declared.symbolic.lower() == name.lower():
                    found = self.instances(declared)
                    return found if index is None else found[index:index + 1]
        if target.startswith("/"):
            return [i for i in self.every_instance() if (self.resource_id(i) or "").lower() == target.lower()]
        return [i for i in self.every_instance() if str(self.identity(i)[1]).lower() == target.lower()]

    # --- reference() ---

    def reference(self, fn: str, target: str, full: bool) -> Any:
        if self.ex.scope.where == "function":
            raise Failure("arm-function", f"a user-defined function cannot use {fn}(), as in ARM",
                          "pass what it needs from the resource as one of the function's parameters")
        if self.ex.scope.where == "parameter":
            raise Failure("arm-function", f"a parameter's defaultValue cannot use {fn}(), as in ARM",
                          f"use {fn}() in a variable or in the resource, where the value is needed")
        found = self.find(target)
        if not found:
            raise Failure("arm-function", f"`{fn}` cannot read `{target}`: this template declares no such "
                          "resource, and on-prem there is no Azure to ask", _NOT_FOUND_HINT)
        if len(found) > 1:
            listed = ", ".join(f"{i.declared.path} ({to_string(self.identity(i)[0])})" for i in found[:5])
            raise Failure("arm-function", f"`{fn}('{target}')` matches {len(found)} resources: {listed}",
                          "name one: reference(resourceId('Type', 'name')), or a copy loop's 'name[index]'")
        instance = found[0]
        if lookup_key(instance.declared.raw, "existing") is True:
            if lookup_key(instance.declared.raw, "properties") is MISSING and not full:
                raise Failure("arm-function", f"`{target}` is an `existing` resource: only Azure knows its "
                              f"properties, so {fn}() cannot read them on-prem", _NOT_FOUND_HINT)
        elif not self.condition(instance):
            raise Failure("arm-function", f"{fn}('{target}'): that resource is not deployed (its condition "
                          "is false)", "reference it under the same condition, with if()")
        return self.evaluated(instance, "full" if full else "properties")

    def evaluated(self, instance: Instance, part: str) -> Any:
        """The instance's `properties`, `condition` or everything ("full"), evaluated once, where
        it is declared; its problems are reported at its paths."""
        key = (instance.key, part)
        if key not in self._values:
            declared = instance.declared
            shown = declared.symbolic or to_string(self.identity(instance)[1]) or declared.path
            with self.ex.nested("resources", f"{instance.key}/{part}", shown), self.ex.scoped(instance.scope()):
                before = self.ex.failures
                if part == "full":
                    value: Any = {k: self.ex.value(v, child(declared.path, k)) for k, v in declared.raw.items()
                                  if k.lower() not in _DROPPED}
                    kind, name = self.identity(instance)
                    value.update({"id": self.resource_id(instance), "type": kind, "name": name})
                else:
                    spelled = next((k for k in declared.raw if k.lower() == part), part)
                    raw = declared.raw.get(spelled, {} if part == "properties" else True)
                    value = self.ex.value(raw, child(declared.path, spelled))
            self._values[key] = MISSING if self.ex.failures > before else value
        if self._values[key] is MISSING:
            raise Reported()
        return self._values[key]

    def condition(self, instance: Instance) -> bool:
        try:
            deployed = self.evaluated(instance, "condition")
        except Reported:
            return True  # reported where it is; the image template's own check says more
        if not isinstance(deployed, bool):
            self.ex.problem(child(instance.declared.path, "condition"), "arm-condition",
                            f"`condition` must be true or false, not {type_name(deployed)}")
            return True
        return deployed

    # --- the image template ---

    def image_template(self) -> dict | None:
        key, resources = section(self.ex.data, "resources")
        where = child("$", key)
        if not isinstance(resources, (list, dict)):
            self.ex.problem(where, "type", f"`{key}` must be an array, not {type_name(resources)}")
            return None
        found: list[Instance] = []
        refused = False
        for declared in self.declared():
            if declared.parent is not None or not self.is_image_template(declared):
                continue
            instances = self.template_instances(declared)
            refused |= instances is None
            found += [i for i in instances or () if self.condition(i)]
        if refused and not found:
            return None
        if not found:
            self.ex.problem(where, "no-image-template", "no Microsoft.VirtualMachineImages/imageTemplates "
                            "resource in this deployment template", "add one, or pass the image template JSON itself")
            return None
        if len(found) > 1:
            listed = ", ".join(f"{i.declared.path} ({to_string(lookup_key(i.declared.raw, 'name'))})" for i in found)
            self.ex.problem(where, "several-image-templates", f"{len(found)} imageTemplates resources: {listed}; "
                            "which one should be built?", "keep one per file, or give the others a `condition` that is false")
            return None
        self.ex.template_path = found[0].declared.path  # where its own problems are reported
        return self.output(found[0])

    def is_image_template(self, declared: Declared) -> bool:
        kind = lookup_key(declared.raw, "type")
        if isinstance(kind, str) and is_expression(kind):
            kind = self.ex.value(kind, child(declared.path, "type"))
        return (isinstance(kind, str) and kind.lower() == IMAGE_TEMPLATE
                and lookup_key(declared.raw, "existing") is not True)

    def template_instances(self, declared: Declared) -> list[Instance] | None:
        """The image template's instances: one, or none (count 0); None (and a problem) for a
        copy loop of more, or a broken one."""
        key = next((k for k in declared.raw if k.lower() == "copy"), None)
        if key is None:
            return [Instance(declared, (), None)]
        path, copy = child(declared.path, key), declared.raw[key]
        name, count = (lookup_key(copy, "name"), lookup_key(copy, "count")) if isinstance(copy, dict) else (None, None)
        if not isinstance(name, str) or count is MISSING or count is None:
            self.ex.problem(path, "arm-copy", "a resource's `copy` must be an object with a `name` and a `count`",
                            'e.g. "copy": {"name": "loop", "count": 1}')
            return None
        number = copy_count(self.ex, count, child(path, "count"))
        if number is None:
            return None
        if number > 1:
            self.ex.problem(path, "arm-copy", f"a copy loop of {number} imageTemplates resources; one "
                            "deployment here builds one image template",
                            "build them one at a time: drop `copy` and pass what differs as parameters")
            return None
        return [Instance(declared, ((name, index),), None) for index in range(number)]

    def output(self, instance: Instance) -> dict:
        out: dict[str, Any] = {}
        declared = instance.declared
        with self.ex.scoped(instance.scope()):
            for name, raw in declared.raw.items():
                if name.lower() in _DROPPED:
                    continue
                value = self.ex.value(raw, child(declared.path, name))
                if name.lower() == "dependson" and self.symbolic and isinstance(value, list):
                    value = self.depends_on(value)
                out[name] = value
        return out

    def depends_on(self, entries: list[Any]) -> list[Any]:
        """languageVersion 2.0 names dependencies by symbolic name: give their resource ids, as the
        classic form does (an entry that names no resource of the template stays as written)."""
        out: list[Any] = []
        for entry in entries:
            found = self.find(entry) if isinstance(entry, str) and not entry.startswith("/") else []
            ids = [self.resource_id(i) for i in found if lookup_key(i.declared.raw, "existing") is not True]
            out += [i for i in ids if i] or ([] if found else [entry])
        return out
