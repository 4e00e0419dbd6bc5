"""The ARM template language around the functions: copy loops, reference() of declared
resources, user-defined functions, bicep's languageVersion 2.0 output, limits, and the layering
of the orchestrator.core.arm package."""
from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.arm import expand_deployment
from orchestrator.core.document import load_document, parse_json
from orchestrator.errors import TemplateInvalid
from tests.helpers import dumps, linux_template
from tests.test_arm_functions import CONTEXT, IMAGE_TEMPLATE, RG_ID, outputs, problems, template
from tests.test_layers import forbidden_imports

ARM = Path(__file__).resolve().parents[1] / "orchestrator" / "core" / "arm"
SOURCE = {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12", "version": "latest"}


def expand(data: dict, given: dict | None = None) -> dict:
    return expand_deployment(data, given or {}, CONTEXT, "test.json")


def image(**fields: Any) -> dict[str, Any]:
    return {"type": IMAGE_TEMPLATE, "apiVersion": "2022-02-14", "name": "t", "location": "westus",
            "properties": {"source": SOURCE}, **fields}


def deployment(*resources: dict, **sections: Any) -> dict[str, Any]:
    return {"contentVersion": "1.0.0.0", "resources": list(resources), **sections}


# --- copy loops ------------------------------------------------------------------------------

def test_property_copy_builds_the_customizers() -> None:
    steps = {"type": "array", "defaultValue": ["apt-get update", "apt-get -y upgrade"]}
    props = {"source": SOURCE, "copy": [{
        "name": "customize", "count": "[length(parameters('steps'))]",
        "input": {"type": "Shell", "name": "[concat('step', copyIndex('customize'))]",
                  "inline": ["[parameters('steps')[copyIndex('customize')]]", "[format('echo {0}', copyIndex('customize', 1))]"]}}]}
    got = expand(template(props, parameters={"steps": steps}))["properties"]
    assert got == {"source": SOURCE, "customize": [
        {"type": "Shell", "name": "step0", "inline": ["apt-get update", "echo 1"]},
        {"type": "Shell", "name": "step1", "inline": ["apt-get -y upgrade", "echo 2"]}]}


def test_variable_copy_as_documented() -> None:
    variables = {"copy": [
        {"name": "disks", "count": 3, "input": {"name": "[concat('myDataDisk', copyIndex('disks', 1))]",
                                                "diskSizeGB": "1", "diskIndex": "[copyIndex('disks')]"}},
        {"name": "diskNames", "count": 3, "input": "[concat('myDataDisk', copyIndex('diskNames', 1))]"},
        {"name": "itemForLoop", "count": "[length(range(0, 10))]", "input": "[range(0, 10)[copyIndex('itemForLoop')]]"}],
        "diskObject": {"copy": [{"name": "disks", "count": 2, "input": {"lun": "[copyIndex('disks')]"}}]}}
    got = outputs({"disks": "[variables('disks')]", "names": "[variables('diskNames')]",
                   "filteredLoop": "[filter(variables('itemForLoop'), lambda('i', greater(lambdaVariables('i'), 5)))]",
                   "object": "[variables('diskObject')]"}, variables=variables)
    assert got["disks"] == [{"name": f"myDataDisk{i + 1}", "diskSizeGB": "1", "diskIndex": i} for i in range(3)]
    assert got["names"] == ["myDataDisk1", "myDataDisk2", "myDataDisk3"]
    assert got["filteredLoop"] == [6, 7, 8, 9]
    assert got["object"] == {"disks": [{"lun": 0}, {"lun": 1}]}


def test_resource_copy_instances_are_referenced_by_name() -> None:
    storage = {"type": "Microsoft.Storage/storageAccounts", "apiVersion": "2022-09-01",
               "name": "[format('{0}storage', range(0, 2)[copyIndex()])]", "copy": {"name": "storagecopy", "count": 2},
               "properties": {"label": "[concat('disk-', copyIndex('storagecopy', 1))]"}}
    data = deployment(storage, image(tags={"first": "[reference('0storage').label]",
                                           "second": "[reference(resourceId('Microsoft.Storage/storageAccounts', "
                                                     "'1storage')).label]"}))
    assert expand(data)["tags"] == {"first": "disk-1", "second": "disk-2"}


def test_an_image_template_copy_of_one_expands_and_of_more_is_refused() -> None:
    one = image(name="[concat('img', copyIndex(10))]", copy={"name": "images", "count": 1})
    assert expand(deployment(one))["name"] == "img10"
    (problem,) = problems_of(deployment(image(copy={"name": "images", "count": "[add(1, 2)]"})))
    assert (problem.path, problem.rule) == ("$.resources[0].copy", "arm-copy")
    assert "3 imageTemplates" in problem.message
    (problem,) = problems_of(deployment(image(copy={"name": "images", "count": 0})))
    assert problem.rule == "no-image-template"


@pytest.mark.parametrize("count, shown", [(-1, "-1"), (801, "801"), ("x", "a string")])
def test_a_copy_count_must_be_0_to_800(count: Any, shown: str) -> None:
    props = {"source": SOURCE, "copy": [{"name": "customize", "count": count, "input": {}}]}
    (problem,) = problems_of(template(props))
    assert (problem.path, problem.rule) == ("$.resources[0].properties.copy[0].count", "arm-copy")
    assert shown in problem.message


def test_copy_index_problems() -> None:
    props = {"outside": "[copyIndex()]",
             "copy": [{"name": "items", "count": 1, "input": "[copyIndex('other')]"},
                      {"name": "outside", "count": 1, "input": 1}, {"count": 1, "input": 1}]}
    found = problems_of(template(props))
    assert [(p.path, p.rule) for p in found] == [
        ("$.resources[0].properties.outside", "arm-function"),
        ("$.resources[0].properties.copy[0].input", "arm-function"),
        ("$.resources[0].properties.copy[1].name", "arm-copy"),
        ("$.resources[0].properties.copy[2]", "arm-copy")]
    assert "outside a copy loop" in found[0].message and "items" in (found[1].hint or "")


# --- reference() of declared resources ---------------------------------------------------------

IDENTITY = {"type": "Microsoft.ManagedIdentity/userAssignedIdentities", "apiVersion": "2023-01-31",
            "name": "[concat(parameters('prefix'), '-id')]", "location": "[resourceGroup().location]",
            "properties": {"note": "[concat('for ', parameters('prefix'))]"}}
PREFIX = {"prefix": {"type": "string", "defaultValue": "web"}}


def test_reference_reads_declared_properties_by_name_id_or_full() -> None:
    data = deployment(IDENTITY, image(tags={
        "byName": "[reference('web-id').note]",
        "byId": "[reference(resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', 'web-id'), '2023-01-31').note]",
        "full": "[reference('web-id', '2023-01-31', 'Full').location]",
        "id": "[reference('web-id', '2023-01-31', 'Full').id]"}), parameters=PREFIX)
    assert expand(data)["tags"] == {"byName": "for web", "byId": "for web", "full": "westus2",
                                    "id": f"{RG_ID}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/web-id"}


def test_reference_of_a_nested_child_resource() -> None:
    vnet = {"type": "Microsoft.Network/virtualNetworks", "apiVersion": "2023-04-01", "name": "vnet",
            "resources": [{"type": "subnets", "apiVersion": "2023-04-01", "name": "build",
                           "properties": {"addressPrefix": "10.0.1.0/24"}}]}
    data = deployment(vnet, image(tags={"prefix": "[reference(resourceId('Microsoft.Network/virtualNetworks/subnets', "
                                                  "'vnet', 'build')).addressPrefix]",
                                        "byName": "[reference('vnet/build').addressPrefix]"}))
    assert expand(data)["tags"] == {"prefix": "10.0.1.0/24", "byName": "10.0.1.0/24"}


def test_reference_problems() -> None:
    off = {**IDENTITY, "name": "off", "condition": "[false()]"}
    loop_a = {"type": "Microsoft.Foo/bars", "name": "a", "properties": {"x": "[reference('b').x]"}}
    loop_b = {"type": "Microsoft.Foo/bars", "name": "b", "properties": {"x": "[reference('a').x]"}}
    twin = {"type": "Microsoft.Other/things", "name": "web-id"}
    data = deployment(IDENTITY, off, loop_a, loop_b, twin, image(tags={
        "off": "[reference('off').note]", "cycle": "[reference('a').x]", "twice": "[reference('web-id').note]"}),
        parameters={**PREFIX, "p": {"type": "string", "defaultValue": "[reference('web-id').note]"}})
    found = problems_of(data)
    assert [(p.path, p.rule) for p in found] == [
        ("$.parameters.p.defaultValue", "arm-function"),
        ("$.resources[5].tags.off", "arm-function"),
        ("$.resources[3].properties.x", "resource-cycle"),
        ("$.resources[5].tags.twice", "arm-function")]
    assert "not deployed" in found[1].message and "a -> b -> a" in found[2].message
    assert "2 resources" in found[3].message


def test_other_resources_are_only_evaluated_when_referenced() -> None:
    broken = {"type": "Microsoft.Storage/storageAccounts", "name": "st",
              "properties": {"keys": "[listKeys('x', '2022-09-01')]", "ok": "yes"}}
    assert expand(deployment(broken, image()))["name"] == "t"
    (problem,) = problems_of(deployment(broken, image(tags={"k": "[reference('st').ok]"})))
    assert (problem.path, problem.rule) == ("$.resources[0].properties.keys", "arm-function")


# --- user-defined functions ------------------------------------------------------------------

FUNCTIONS = [{"namespace": "contoso", "members": {
    "uniqueName": {"parameters": [{"name": "namePrefix", "type": "string"}],
                   "output": {"type": "string",
                              "value": "[concat(toLower(parameters('namePrefix')), uniqueString(resourceGroup().id))]"}},
    "twice": {"parameters": [{"name": "n", "type": "int"}], "output": {"type": "int", "value": "[mul(parameters('n'), 2)]"}},
    "label": {"parameters": [{"name": "n", "type": "int"}],
              "output": {"type": "object", "value": {"name": "[contoso.uniqueName('X')]", "double": "[contoso.twice(parameters('n'))]"}}},
    "bad": {"parameters": [], "output": {"type": "string", "value": "[variables('v')]"}},
    "loop": {"parameters": [], "output": {"type": "string", "value": "[contoso.loop()]"}},
    "wrongType": {"parameters": [], "output": {"type": "int", "value": "text"}}}}]


def test_user_defined_functions_as_documented() -> None:
    got = outputs({"name": "[contoso.uniqueName('Web')]", "label": "[Contoso.Label(21)]"}, functions=FUNCTIONS)
    assert got["name"].startswith("web") and len(got["name"]) == 16
    assert got["label"]["double"] == 42 and got["label"]["name"].startswith("x")


def test_user_defined_function_problems() -> None:
    found = problems({"a": "[contoso.bad()]", "b": "[contoso.loop()]", "c": "[contoso.wrongType()]",
                      "d": "[contoso.twice('2')]", "e": "[contoso.twice()]", "f": "[contoso.nope()]"},
                     functions=FUNCTIONS, variables={"v": "x"})
    paths = [(p.path, p.rule) for p in found]
    assert paths == [("$.functions[0].members.bad.output.value", "arm-function"),
                     ("$.functions[0].members.loop.output.value", "function-cycle"),
                     ("$.resources[0].properties.c", "arm-function"),
                     ("$.resources[0].properties.d", "arm-argument"),
                     ("$.resources[0].properties.e", "arm-argument"),
                     ("$.resources[0].properties.f", "arm-function")]


# --- bicep's languageVersion 2.0 -------------------------------------------------------------

BICEP = {
    "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
    "languageVersion": "2.0",
    "contentVersion": "1.0.0.0",
    "metadata": {"_generator": {"name": "bicep", "version": "0.30.23.60470", "templateHash": "1"}},
    "definitions": {
        "step": {"type": "object", "properties": {"name": {"type": "string"}, "command": {"type": "string"},
                                                  "restart": {"type": "bool", "nullable": True}},
                 "additionalProperties": False},
        "steps": {"type": "array", "items": {"$ref": "#/definitions/step"}, "minLength": 1}},
    "functions": [{"namespace": "__bicep", "members": {"stepName": {
        "parameters": [{"type": "string", "name": "prefix"}, {"type": "int", "name": "i"}],
        "output": {"type": "string", "value": "[format('{0}-{1}', parameters('prefix'), parameters('i'))]"}}}}],
    "parameters": {
        "imageTemplateName": {"type": "string"},
        "steps": {"$ref": "#/definitions/steps", "defaultValue": [{"name": "hello", "command": "echo hello"}]},
        "location": {"type": "string", "defaultValue": "[resourceGroup().location]"}},
    "variables": {"identityName": "[format('{0}-id', parameters('imageTemplateName'))]"},
    "resources": {
        "identity": {"type": "Microsoft.ManagedIdentity/userAssignedIdentities", "apiVersion": "2023-01-31",
                     "name": "[variables('identityName')]", "location": "[parameters('location')]",
                     "properties": {"tier": "basic"}},
        "gallery": {"existing": True, "type": "Microsoft.Compute/galleries", "apiVersion": "2022-03-03", "name": "shared"},
        "stores": {"copy": {"name": "stores", "count": 2}, "type": "Microsoft.Storage/storageAccounts",
                   "apiVersion": "2022-09-01", "name": "[format('st{0}', copyIndex())]",
                   "properties": {"n": "[copyIndex()]"}},
        "template": {
            "type": IMAGE_TEMPLATE, "apiVersion": "2022-02-14", "name": "[parameters('imageTemplateName')]",
            "location": "[parameters('location')]",
            "tags": {"tier": "[reference('identity').tier]", "second": "[string(reference('stores[1]').n)]",
                     "gallery": "[resourceId('Microsoft.Compute/galleries', 'shared')]"},
            "properties": {"source": SOURCE, "copy": [{
                "name": "customize", "count": "[length(parameters('steps'))]",
                "input": {"type": "Shell", "name": "[__bicep.stepName(parameters('steps')[copyIndex('customize')].name, "
                                                   "copyIndex('customize'))]",
                          "inline": ["[parameters('steps')[copyIndex('customize')].command]"]}}],
                "distribute": [{"type": "VHD", "runOutputName": "vhd"}]},
            "dependsOn": ["identity", "gallery", "stores"]}}}


def test_bicep_output_expands() -> None:
    got = expand(copy.deepcopy(BICEP), {"imageTemplateName": "web"})
    assert got["name"] == "web" and got["location"] == "westus2"
    assert got["tags"] == {"tier": "basic", "second": "1",
                           "gallery": f"{RG_ID}/providers/Microsoft.Compute/galleries/shared"}
    assert got["properties"]["customize"] == [{"type": "Shell", "name": "hello-0", "inline": ["echo hello"]}]
    assert got["dependsOn"] == [f"{RG_ID}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/web-id",
                                f"{RG_ID}/providers/Microsoft.Storage/storageAccounts/st0",
                                f"{RG_ID}/providers/Microsoft.Storage/storageAccounts/st1"]


def test_bicep_user_defined_types_check_parameters() -> None:
    steps = [{"name": "a", "command": "x", "extra": 1}, {"name": "b"}, {"name": "c", "command": 3}]
    found = problems_of(copy.deepcopy(BICEP), {"imageTemplateName": "web", "steps": steps})
    assert {(p.path, p.rule) for p in found} == {("$.parameters.steps", "parameter-type")}
    messages = " | ".join(p.message for p in found)
    assert "`steps[0]` has the property `extra`" in messages
    assert "`steps[1].command` is missing" in messages and "`steps[2].command` must be a string" in messages
    (problem,) = problems_of(copy.deepcopy(BICEP), {"imageTemplateName": "web", "steps": []})
    assert problem.rule == "parameter-length"


def test_existing_resources_are_not_deployed_and_have_no_properties_here() -> None:
    data = copy.deepcopy(BICEP)
    data["resources"]["template"]["tags"]["x"] = "[reference('gallery').identifier]"
    (problem,) = problems_of(data, {"imageTemplateName": "web"})
    assert (problem.path, problem.rule) == ("$.resources.template.tags.x", "arm-function")
    assert "existing" in problem.message
    existing_image = copy.deepcopy(BICEP)
    existing_image["resources"]["other"] = {**existing_image["resources"]["template"], "existing": True}
    assert expand(existing_image, {"imageTemplateName": "web"})["name"] == "web"


# --- JSON with comments and a byte order mark ------------------------------------------------

def test_comments_and_a_bom_are_accepted_in_plain_and_arm_templates() -> None:
    text = dumps(linux_template()).replace('"properties": {', '"properties": { // the AIB part\n /* [[[ not JSON ]]] */')
    template = load_document("\ufeff// built on-prem\n" + text, "t.json")
    assert template.customize[0].inline == ("echo hello",)
    arm = "/* header */\n" + dumps(deployment(image(name="[concat('a', '//b')]"), parameters={}))
    assert expand(parse_json(arm, "t.json"))["name"] == "a//b"


def test_comments_keep_line_numbers_and_limits() -> None:
    with pytest.raises(TemplateInvalid) as caught:
        parse_json('{\n  /* one\n  two */ "a": 1,,\n}', "t.json")
    assert "line 3" in caught.value.problems[0].message
    with pytest.raises(TemplateInvalid) as caught:
        parse_json('{"a": 1 /* open', "t.json")
    (problem,) = caught.value.problems
    assert (problem.path, problem.rule) == ("$", "json") and "line 1, column 9" in problem.message
    assert parse_json('{"url": "https://x/*y*/", "c": "//"} // end', "t") == {"url": "https://x/*y*/", "c": "//"}
    assert parse_json("/*" + "[" * 100 + "*/ [1]", "t") == [1]  # brackets in comments do not nest
    with pytest.raises(TemplateInvalid):
        parse_json("// x\n" + "[" * 65 + "]" * 65, "t")


# --- limits and layering ---------------------------------------------------------------------

def test_runaway_evaluation_is_a_problem_not_a_hang() -> None:
    big = "[map(range(0, 10000), lambda('i', map(range(0, 10000), lambda('j', 1))))]"
    (problem,) = problems({"v": big})
    assert problem.rule == "arm-limit"
    deep = "[" + "concat(" * 5000 + "'x'" + ")" * 5000 + "]"
    (problem,) = problems({"v": deep})
    assert problem.rule == "arm-expression" and "nest" in problem.message
    chain = {f"v{i}": f"[variables('v{i + 1}')]" for i in range(300)} | {"v300": "end"}
    assert {p.rule for p in problems({"v": "[variables('v0')]"}, variables=chain)} == {"arm-limit"}


def test_the_arm_package_does_no_io_and_its_modules_form_no_cycle() -> None:
    modules = {p.stem: p for p in ARM.glob("*.py")}
    assert {"syntax", "expand", "strings", "arrays", "objects", "numeric", "logic", "dates", "deployment",
            "resources", "scope", "lambdas"} <= set(modules)
    offenders = [f"{name}: {bad}" for name, path in modules.items() for bad in forbidden_imports(path.read_text())]
    assert offenders == []
    imports = {name: {node.module.rsplit(".", 1)[-1] for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("orchestrator.core.arm.")}
               | {alias.name for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.ImportFrom) and node.module == "orchestrator.core.arm" for alias in node.names}
               for name, path in modules.items()}
    assert "syntax" not in imports or not imports["syntax"]

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in imports.get(start, ()))
    assert [name for name in modules if reaches(name, name, set())] == []
    assert max(len(p.read_text().splitlines()) for p in modules.values()) <= 400


def problems_of(data: dict, given: dict | None = None) -> list:
    with pytest.raises(TemplateInvalid) as caught:
        expand(data, given)
    return caught.value.problems
