"""ARM deployment templates: parameters, variables, expressions, and picking the imageTemplates resource."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st

from orchestrator.core.arm import expand_deployment
from orchestrator.core.document import load_document
from orchestrator.errors import TemplateInvalid
from tests.helpers import PROJECT_TEMPLATES, fill_placeholders, is_arm, project_samples, sample_cases, sample_data

IMAGE_TEMPLATE = "Microsoft.VirtualMachineImages/imageTemplates"
SAMPLE_PARAMETERS = {"imageTemplateName": "hello", "svclocation": "westus2"}
EXPRESSIONS = PROJECT_TEMPLATES / "arm-linux-expressions.json"


def deployment(resource_fields: dict[str, Any] | None = None, parameters: dict | None = None,
               variables: dict | None = None, extra_resources: list | None = None) -> dict[str, Any]:
    resource = {"type": IMAGE_TEMPLATE, "apiVersion": "2022-02-14", "name": "t", "location": "westus",
                "properties": {"source": {"type": "PlatformImage"}}}
    resource.update(resource_fields or {})
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": parameters or {},
        "variables": variables or {},
        "resources": [*(extra_resources or []), resource],
    }


def problems_of(data: dict, given: dict | None = None, context: dict | None = None) -> list:
    with pytest.raises(TemplateInvalid) as caught:
        expand_deployment(data, given or {}, context or {}, "test.json")
    assert caught.value.problems, "TemplateInvalid must list its problems"
    return caught.value.problems


def evaluate(expression: str, given: dict | None = None, context: dict | None = None, **sections: Any) -> Any:
    """The value `expression` gets when it is the image template's name."""
    data = deployment({"name": expression}, **sections)
    return expand_deployment(data, given or {}, context or {}, "test.json")["name"]


# --- the samples -----------------------------------------------------------------------------

def test_the_project_samples_hold_arm_deployment_templates() -> None:
    names = [p.name for p in project_samples() if is_arm(p)]
    assert len(names) >= 4 and EXPRESSIONS.name in names


@pytest.mark.parametrize("api", ["2020-02-14", "2022-02-14"])
@pytest.mark.parametrize("path", sample_cases(is_arm))
def test_sample_expands_and_loads_with_only_placeholders_left(path: Path, api: str) -> None:
    text = path.read_text()
    parameters = {**SAMPLE_PARAMETERS, "api-version": api}
    resource = expand_deployment(json.loads(text), parameters, {}, path.name)
    assert resource["name"] == "hello"
    assert resource["apiVersion"] == api
    assert resource["location"] == "westus2"
    assert resource["type"].lower() == IMAGE_TEMPLATE.lower()
    assert not any(isinstance(v, str) and v.startswith("[") for v in resource.values())
    try:
        template = load_document(text, path.name, parameters)
    except TemplateInvalid as error:
        rules = {p.rule for p in error.problems}
        assert rules == {"placeholder"}, [str(p) for p in error.problems]
    else:
        assert template.api_version == api


def _parameter_path(name: str) -> str:
    return f"$.parameters.{name}" if name.replace("_", "").isalnum() else f"$.parameters[{name!r}]"


@pytest.mark.parametrize("path", sample_cases(is_arm))
def test_sample_without_parameters_lists_every_missing_one(path: Path) -> None:
    with pytest.raises(TemplateInvalid) as caught:
        load_document(path.read_text(), path.name, {})
    missing = sorted(p.path for p in caught.value.problems if p.rule == "parameter-missing")
    declared = sample_data(path)["parameters"]
    assert missing == sorted(_parameter_path(n) for n, spec in declared.items() if "defaultValue" not in spec)


def test_sample_parameters_with_defaults_are_not_missing() -> None:
    with pytest.raises(TemplateInvalid) as caught:
        load_document(EXPRESSIONS.read_text(), EXPRESSIONS.name, {})
    assert sorted((p.path, p.rule) for p in caught.value.problems) == [
        ("$.parameters.imageTemplateName", "parameter-missing"), ("$.parameters.svclocation", "parameter-missing"),
        ("$.parameters['api-version']", "parameter-missing")]


def test_expressions_sample_expands_to_these_values() -> None:
    data = json.loads(fill_placeholders(EXPRESSIONS.read_text()))
    context = {"resourceGroup": {"name": "rg7", "location": "pool9"}, "subscription": {"subscriptionId": "s-1"}}
    resource = expand_deployment(data, {"imageTemplateName": "Edge", "api-version": "2022-02-14",
                                        "svclocation": "pool1", "imagePrefix": "Api"}, context, "t")
    assert resource["name"] == "Edge"
    assert resource["dependsOn"] == [
        "/subscriptions/s-1/resourceGroups/rg7/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api-edge-identity"]
    assert resource["tags"]["team"] == "API"
    stamp = resource["tags"]["stamp"]
    assert len(stamp) == 13 and stamp.isalnum() and stamp.islower()
    props = resource["properties"]
    assert props["buildTimeoutInMinutes"] == 75 and props["vmProfile"]["vmSize"] == "Standard_D2s_v3"
    setup, greet = props["customize"]
    assert setup["scriptUri"] == "https://artifacts.example.com/aib/customize-web.sh"
    assert greet["name"] == "greet-api-edge"
    assert greet["inline"] == ["echo built Edge for s-1 in pool9", "[ -d /tmp ]",
                               "printf '%s\\n' \"${HOME}\" '{{ .Path }}' '[not an expression]' > /tmp/arm-literals.txt"]
    managed, gallery = props["distribute"]
    assert managed == {"type": "ManagedImage", "location": "pool1", "runOutputName": "api-edge-managed",
                       "imageId": "/subscriptions/s-1/resourceGroups/rg7/providers/Microsoft.Compute/images/api-edge"}
    assert gallery["galleryImageId"] == ("/subscriptions/s-1/resourceGroups/rg7/providers/Microsoft.Compute/"
                                         "galleries/gallery/images/debian12")
    assert gallery["runOutputName"] == "api-edge-gallery"
    assert gallery["replicationRegions"] == ["pool1", "pool2"]


def test_expressions_sample_checks_its_parameter_constraints() -> None:
    given = {"imageTemplateName": "x", "api-version": "2022-02-14", "svclocation": "l",
             "imagePrefix": "much-too-long-prefix", "buildMinutes": "961", "vmSize": "Standard_XL"}
    problems = problems_of(json.loads(EXPRESSIONS.read_text()), given)
    assert [(p.path, p.rule) for p in problems] == [
        ("$.parameters.imagePrefix", "parameter-length"), ("$.parameters.buildMinutes", "parameter-range"),
        ("$.parameters.vmSize", "parameter-allowed")]


# --- parameters ------------------------------------------------------------------------------

def test_missing_parameter_is_reported_with_path_rule_and_hint() -> None:
    data = deployment({"name": "[toLower(parameters('imageName'))]"}, parameters={"imageName": {"type": "string"}})
    problems = problems_of(data)
    assert len(problems) == 1, "a missing parameter is reported where it is declared, not again where used"
    (problem,) = problems
    assert problem.path == "$.parameters.imageName"
    assert problem.rule == "parameter-missing"
    assert "-p imageName=" in (problem.hint or "")


def test_all_missing_parameters_are_reported_together() -> None:
    declared = {name: {"type": "string"} for name in ("a", "b", "c")}
    problems = problems_of(deployment(parameters=declared))
    assert [(p.path, p.rule) for p in problems] == [
        ("$.parameters.a", "parameter-missing"), ("$.parameters.b", "parameter-missing"),
        ("$.parameters.c", "parameter-missing")]


def test_default_values_are_used_and_may_be_expressions() -> None:
    parameters = {"name": {"type": "string", "defaultValue": "fallback"},
                  "where": {"type": "string", "defaultValue": "[resourceGroup().location]"}}
    data = deployment({"name": "[parameters('name')]", "location": "[parameters('where')]"},
                      parameters=parameters)
    resource = expand_deployment(data, {}, {"resourceGroup": {"location": "northeurope"}}, "t")
    assert resource["name"] == "fallback"
    assert resource["location"] == "northeurope"


def test_given_value_overrides_default_and_names_match_case_insensitively() -> None:
    parameters = {"ImageName": {"type": "string", "defaultValue": "fallback"}}
    assert evaluate("[parameters('imagename')]", {"imageName": "given"}, parameters=parameters) == "given"


def test_undeclared_given_parameter_is_reported() -> None:
    problems = problems_of(deployment(parameters={"known": {"type": "string", "defaultValue": "x"}}),
                           {"unknwon": "1"})
    assert [(p.path, p.rule) for p in problems] == [("$.parameters.unknwon", "parameter-unknown")]
    assert "known" in (problems[0].hint or "")


def test_cli_strings_are_coerced_to_the_declared_type() -> None:
    parameters = {"timeout": {"type": "int"}, "flag": {"type": "Bool"},
                  "tags": {"type": "object"}, "regions": {"type": "array"}}
    data = deployment({"properties": {"buildTimeoutInMinutes": "[parameters('timeout')]",
                                      "flag": "[parameters('flag')]",
                                      "tags": "[parameters('tags')]",
                                      "regions": "[parameters('regions')]"}}, parameters=parameters)
    given = {"timeout": "90", "flag": "TRUE", "tags": '{"a": "b"}', "regions": '["x", "y"]'}
    props = expand_deployment(data, given, {}, "t")["properties"]
    assert props == {"buildTimeoutInMinutes": 90, "flag": True, "tags": {"a": "b"}, "regions": ["x", "y"]}


def test_impossible_coercion_is_a_clear_problem() -> None:
    parameters = {"timeout": {"type": "int"}, "flag": {"type": "bool"}}
    problems = problems_of(deployment(parameters=parameters), {"timeout": "ninety", "flag": "yes"})
    assert [(p.path, p.rule) for p in problems] == [("$.parameters.timeout", "parameter-type"),
                                                    ("$.parameters.flag", "parameter-type")]
    assert "`ninety` is not a whole number" in problems[0].message
    assert "-p timeout=5" in (problems[0].hint or "")


def test_secure_values_are_not_echoed_in_problems() -> None:
    parameters = {"secret": {"type": "securestring", "allowedValues": ["a"]}}
    (problem,) = problems_of(deployment(parameters=parameters), {"secret": "hunter2"})
    assert problem.rule == "parameter-allowed"
    assert "hunter2" not in problem.message


def test_allowed_values_violation() -> None:
    parameters = {"size": {"type": "string", "allowedValues": ["Standard_B2s", "Standard_D2s_v3"]}}
    (problem,) = problems_of(deployment(parameters=parameters), {"size": "Standard_XL"})
    assert (problem.path, problem.rule) == ("$.parameters.size", "parameter-allowed")
    assert "Standard_XL" in problem.message and "Standard_B2s" in (problem.hint or "")


def test_min_max_value_and_length() -> None:
    parameters = {"n": {"type": "int", "minValue": 1, "maxValue": 10},
                  "s": {"type": "string", "maxLength": 3}}
    problems = problems_of(deployment(parameters=parameters), {"n": "11", "s": "abcd"})
    assert [p.rule for p in problems] == ["parameter-range", "parameter-length"]


def test_default_of_the_wrong_type_is_reported() -> None:
    (problem,) = problems_of(deployment(parameters={"n": {"type": "int", "defaultValue": "5"}}))
    assert (problem.path, problem.rule) == ("$.parameters.n.defaultValue", "parameter-type")


# --- variables -------------------------------------------------------------------------------

def test_variables_may_reference_variables_and_parameters() -> None:
    variables = {"prefix": "[toLower(parameters('team'))]",
                 "full": "[concat(variables('prefix'), '-', variables('suffix'))]",
                 "suffix": "img"}
    name = evaluate("[variables('full')]", {"team": "WEB"},
                    parameters={"team": {"type": "string"}}, variables=variables)
    assert name == "web-img"


def test_object_variables_with_property_access_and_index() -> None:
    variables = {"config": {"regions": ["westus", "[parameters('second')]"], "size": "Standard_B2s"}}
    parameters = {"second": {"type": "string", "defaultValue": "eastus"}}
    assert evaluate("[variables('config').regions[1]]", parameters=parameters, variables=variables) == "eastus"
    assert evaluate("[variables('config')['SIZE']]", parameters=parameters, variables=variables) == "Standard_B2s"


def test_variable_cycle_is_detected_once() -> None:
    variables = {"a": "[variables('b')]", "b": "[concat(variables('a'), 'x')]", "c": "fine"}
    problems = problems_of(deployment({"name": "[variables('a')]"}, variables=variables))
    assert len(problems) == 1
    (problem,) = problems
    assert problem.rule == "variable-cycle"
    assert problem.path.startswith("$.variables.")
    assert "a -> b -> a" in problem.message


def test_unknown_variable_is_reported_at_the_use() -> None:
    (problem,) = problems_of(deployment({"location": "[variables('nope')]"}))
    assert (problem.path, problem.rule) == ("$.resources[0].location", "variable-unknown")


# --- functions -------------------------------------------------------------------------------

def test_concat_format_and_case() -> None:
    assert evaluate("[concat('img-', toLower('WEB'), '-', 3)]") == "img-web-3"
    assert evaluate("[concat(split('a,b', ','), split('c', ','))[2]]") == "c"
    assert evaluate("[format('{0}-{1} {{literal}} {2:N0}', 'a', toUpper('b'), 8175133)]") == "a-B {literal} 8,175,133"


def test_resource_group_and_subscription_from_context_with_local_defaults() -> None:
    context = {"resourceGroup": {"name": "rg1", "location": "uksouth"},
               "subscription": {"subscriptionId": "1111"}}
    assert evaluate("[resourceGroup().location]", context=context) == "uksouth"
    assert evaluate("[subscription().subscriptionId]", context=context) == "1111"
    assert evaluate("[resourceGroup().id]", context=context) == "/subscriptions/1111/resourceGroups/rg1"
    assert evaluate("[resourceGroup().name]") == "local"
    assert evaluate("[subscription().subscriptionId]") == "00000000-0000-0000-0000-000000000000"


def test_resource_id() -> None:
    context = {"resourceGroup": {"name": "rg1"}, "subscription": {"subscriptionId": "s1"}}
    assert evaluate("[resourceId('Microsoft.Compute/galleries/images', 'gal', 'def')]", context=context) == \
        "/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.Compute/galleries/gal/images/def"
    assert evaluate("[resourceId('s2', 'rg2', 'Microsoft.Compute/images', 'img')]") == \
        "/subscriptions/s2/resourceGroups/rg2/providers/Microsoft.Compute/images/img"
    (problem,) = problems_of(deployment({"name": "[resourceId('Microsoft.Compute/galleries/images', 'g')]"}))
    assert problem.rule == "arm-argument"


def test_logic_and_conversions() -> None:
    assert evaluate("[if(and(equals(int('5'), 5), not(bool('false'))), 'yes', parameters('undeclared'))]") == "yes"
    assert evaluate("[if(or(false(), empty('')), string(true()), 'no')]") == "True"
    assert evaluate("[contains(createArray('a', 'b'), 'b')]") is True
    assert evaluate("[equals(1, true())]") is False
    assert evaluate("[coalesce(null(), 'x')]") == "x"
    assert evaluate("[length(trim('  abc '))]") == 3
    assert evaluate("[substring(replace('a-b-c', '-', ''), 1, 1)]") == "b"
    assert evaluate("[last(split('a/b/c', '/'))]") == "c"
    assert evaluate("[first('xyz')]") == "x"


def test_unique_string_and_guid_are_deterministic() -> None:
    first = evaluate("[uniqueString(resourceGroup().id, 'x')]")
    assert first == evaluate("[uniqueString(resourceGroup().id, 'x')]")
    assert first != evaluate("[uniqueString(resourceGroup().id, 'y')]")
    assert len(first) == 13 and first.isalnum() and first.islower()
    guid = evaluate("[guid('a', 'b')]")
    assert guid == evaluate("[guid('a', 'b')]") and len(guid) == 36 and guid.count("-") == 4


def test_unknown_function_names_it_and_lists_supported_ones() -> None:
    data = deployment({"properties": {"customize": [{}, {"inline": ["echo", "[reference('x').id]"]}]}})
    (problem,) = problems_of(data)
    assert problem.rule == "arm-function"
    assert problem.path == "$.resources[0].properties.customize[1].inline[1]"
    assert "`reference`" in problem.message
    assert "concat" in (problem.hint or "") and "uniqueString" in (problem.hint or "")


def test_syntax_error_names_the_expression_and_column() -> None:
    (problem,) = problems_of(deployment({"name": "[concat('a' 'b')]"}))
    assert problem.rule == "arm-expression"
    assert "[concat('a' 'b')]" in problem.message
    assert "column 13" in problem.message  # where 'b' starts


def test_bare_true_is_a_syntax_error_with_a_hint() -> None:
    (problem,) = problems_of(deployment({"name": "[if(true, 'a', 'b')]"}))
    assert problem.rule == "arm-expression"
    assert "true()" in (problem.hint or "")


def test_every_broken_expression_is_reported_at_once() -> None:
    data = deployment({"name": "[nope()]", "location": "[concat(]", "tags": {"t": "[variables('x')]"}})
    assert [p.rule for p in problems_of(data)] == ["arm-function", "arm-expression", "variable-unknown"]


def test_double_bracket_escapes_a_literal_bracket() -> None:
    assert evaluate("[[parameters('x')]") == "[parameters('x')]"
    assert evaluate("[not an expression") == "[not an expression"


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_quoted_string_literal_round_trips(text: str) -> None:
    assert evaluate("['" + text.replace("'", "''") + "']") == text


def test_keys_are_not_evaluated() -> None:
    data = deployment({"tags": {"[concat('a', 'b')]": "[concat('c', 'd')]"}})
    assert expand_deployment(data, {}, {}, "t")["tags"] == {"[concat('a', 'b')]": "cd"}


def test_non_string_values_pass_through_and_input_is_not_mutated() -> None:
    data = deployment({"properties": {"buildTimeoutInMinutes": 60, "x": None, "y": [True]}})
    before = copy.deepcopy(data)
    assert expand_deployment(data, {}, {}, "t")["properties"] == {"buildTimeoutInMinutes": 60, "x": None, "y": [True]}
    assert data == before


# --- the resource ----------------------------------------------------------------------------

def test_no_image_template_resource() -> None:
    data = deployment()
    data["resources"] = [{"type": "Microsoft.ManagedIdentity/userAssignedIdentities", "name": "id"}]
    (problem,) = problems_of(data)
    assert (problem.path, problem.rule) == ("$.resources", "no-image-template")


def test_several_image_templates_ask_which() -> None:
    other = {"type": IMAGE_TEMPLATE.lower(), "name": "second", "apiVersion": "2022-02-14"}
    (problem,) = problems_of(deployment(extra_resources=[other]))
    assert problem.rule == "several-image-templates"
    assert "second" in problem.message and "$.resources[1]" in problem.message


def test_other_resources_and_false_conditions_are_ignored() -> None:
    identity = {"type": "Microsoft.ManagedIdentity/userAssignedIdentities", "name": "[reference('x')]"}
    skipped = {"type": IMAGE_TEMPLATE, "name": "off", "condition": "[equals('a', 'b')]"}
    data = deployment({"condition": "[true()]", "comments": "kept out"}, extra_resources=[identity, skipped])
    resource = expand_deployment(data, {}, {}, "t")
    assert resource["name"] == "t"
    assert "condition" not in resource and "comments" not in resource


def test_copy_is_reported_as_unsupported() -> None:
    (problem,) = problems_of(deployment({"copy": {"name": "loop", "count": 2}}))
    assert (problem.path, problem.rule) == ("$.resources[0].copy", "arm-copy")


def test_expanded_resource_loads_as_an_image_template() -> None:
    parameters = {"name": {"type": "string"}, "timeout": {"type": "int", "defaultValue": 60}}
    variables = {"script": "[concat('echo ', parameters('name'))]"}
    data = deployment({
        "name": "[parameters('name')]",
        "location": "[resourceGroup().location]",
        "properties": {
            "buildTimeoutInMinutes": "[parameters('timeout')]",
            "source": {"type": "PlatformImage", "publisher": "Canonical", "offer": "ubuntu-24_04-lts",
                       "sku": "server", "version": "latest"},
            "customize": [{"type": "Shell", "name": "hello", "inline": ["[variables('script')]"]}],
            "distribute": [{"type": "VHD", "runOutputName": "[concat(parameters('name'), '-vhd')]"}],
        },
    }, parameters=parameters, variables=variables)
    template = load_document(json.dumps(data), "t.json", {"name": "web"})
    assert template.name == "web"
    assert template.build_timeout_minutes == 60
    assert template.customize[0].inline == ("echo web",)
    assert template.distribute[0].run_output_name == "web-vhd"
