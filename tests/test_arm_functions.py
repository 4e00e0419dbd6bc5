"""ARM template functions, family by family, on the values Microsoft's function reference
documents for its examples (the example templates' parameters, variables and outputs)."""
from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.arm import expand_deployment
from orchestrator.errors import TemplateInvalid

IMAGE_TEMPLATE = "Microsoft.VirtualMachineImages/imageTemplates"
CONTEXT = {"resourceGroup": {"name": "rg1", "location": "westus2"}, "subscription": {"subscriptionId": "s1"}}
RG_ID = "/subscriptions/s1/resourceGroups/rg1"


def template(props: dict[str, Any], parameters: dict | None = None, variables: dict | None = None,
             resources: list | None = None, **sections: Any) -> dict[str, Any]:
    """A deployment whose image template carries `props` as its properties."""
    image = {"type": IMAGE_TEMPLATE, "apiVersion": "2022-02-14", "name": "t", "location": "westus",
             "properties": props}
    return {"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
            "contentVersion": "1.0.0.0", "parameters": parameters or {}, "variables": variables or {},
            "resources": [*(resources or []), image], **sections}


def outputs(values: dict[str, str], parameters: dict | None = None, variables: dict | None = None,
            context: dict | None = None, source: str = "test.json", **sections: Any) -> dict[str, Any]:
    """What each expression evaluates to, like the `outputs` table of the documentation."""
    data = template(dict(values), parameters, variables, **sections)
    return expand_deployment(data, {}, CONTEXT if context is None else context, source)["properties"]


def value(expression: str, **kwargs: Any) -> Any:
    return outputs({"v": expression}, **kwargs)["v"]


def problems(values: dict[str, Any], given: dict | None = None, **kwargs: Any) -> list:
    with pytest.raises(TemplateInvalid) as caught:
        expand_deployment(template(values, **kwargs), given or {}, CONTEXT, "test.json")
    return caught.value.problems


def defaults(**values: Any) -> dict[str, dict[str, Any]]:
    """Parameters with default values, typed from the values."""
    kinds = {str: "string", int: "int", bool: "bool", dict: "object", list: "array"}
    return {name: {"type": kinds[type(v)], "defaultValue": v} for name, v in values.items()}


# --- string ----------------------------------------------------------------------------------

def test_base64_family() -> None:
    got = outputs({"base64Output": "[variables('base64String')]",
                   "toStringOutput": "[base64ToString(variables('base64String'))]",
                   "toJsonOutput": "[base64ToJson(variables('base64Object'))]"},
                  defaults(stringData="one, two, three", jsonFormattedData="{'one': 'a', 'two': 'b'}"),
                  {"base64String": "[base64(parameters('stringData'))]",
                   "base64Object": "[base64(parameters('jsonFormattedData'))]"})
    assert got == {"base64Output": "b25lLCB0d28sIHRocmVl", "toStringOutput": "one, two, three",
                   "toJsonOutput": {"one": "a", "two": "b"}}


def test_data_uri_and_back() -> None:
    got = outputs({"dataUriOutput": "[dataUri(parameters('stringToTest'))]",
                   "toStringOutput": "[dataUriToString(parameters('dataFormattedString'))]"},
                  defaults(stringToTest="Hello", dataFormattedString="data:;base64,SGVsbG8sIFdvcmxkIQ=="))
    assert got == {"dataUriOutput": "data:text/plain;charset=utf8;base64,SGVsbG8=", "toStringOutput": "Hello, World!"}


def test_starts_with_and_ends_with_ignore_case() -> None:
    got = outputs({"startsTrue": "[startsWith('abcdef', 'ab')]", "startsCapTrue": "[startsWith('abcdef', 'A')]",
                   "startsFalse": "[startsWith('abcdef', 'e')]", "endsTrue": "[endsWith('abcdef', 'ef')]",
                   "endsCapTrue": "[endsWith('abcdef', 'F')]", "endsFalse": "[endsWith('abcdef', 'e')]"})
    assert got == {"startsTrue": True, "startsCapTrue": True, "startsFalse": False,
                   "endsTrue": True, "endsCapTrue": True, "endsFalse": False}


def test_format() -> None:
    got = value("[format('{0}, {1}. Formatted number: {2:N0}', parameters('greeting'), parameters('name'), "
                "parameters('numberToFormat'))]", parameters=defaults(greeting="Hello", name="User",
                                                                       numberToFormat=8175133))
    assert got == "Hello, User. Formatted number: 8,175,133"
    assert value("[format('{0:D5}|{0:X}|{1,-4}|{1,4}|{2:F1}', 255, 'ab', json('2.25'))]") == "00255|FF|ab  |  ab|2.3"  # .NET rounds halves away from zero


def test_index_of_and_last_index_of_on_strings_ignore_case() -> None:
    got = outputs({"firstT": "[indexOf('test', 't')]", "lastT": "[lastIndexOf('test', 't')]",
                   "firstString": "[indexOf('abcdef', 'CD')]", "lastString": "[lastIndexOf('abcdef', 'AB')]",
                   "notFound": "[indexOf('abcdef', 'z')]"})
    assert got == {"firstT": 0, "lastT": 3, "firstString": 2, "lastString": 0, "notFound": -1}


def test_join() -> None:
    got = outputs({"firstOutput": "[join(variables('arrayString'), ',')]",
                   "secondOutput": "[join(variables('arrayString'), ';')]"},
                  variables={"arrayString": ["one", "two", "three"]})
    assert got == {"firstOutput": "one,two,three", "secondOutput": "one;two;three"}


def test_pad_left_replace_trim_and_case() -> None:
    got = outputs({"pad": "[padLeft(parameters('testString'), 10, '0')]",
                   "firstOutput": "[replace('123-123-1234', '-', '')]",
                   "secondOutput": "[replace('123-123-1234', '1234', 'xxxx')]",
                   "trimmed": "[trim('    one two three   ')]",
                   "toLowerOutput": "[toLower('One Two Three')]", "toUpperOutput": "[toUpper('One Two Three')]"},
                  defaults(testString="123"))
    assert got == {"pad": "0000000123", "firstOutput": "1231231234", "secondOutput": "123-123-xxxx",
                   "trimmed": "one two three", "toLowerOutput": "one two three", "toUpperOutput": "ONE TWO THREE"}


def test_split_on_one_or_several_delimiters() -> None:
    got = outputs({"firstOutput": "[split(parameters('firstString'), ',')]",
                   "secondOutput": "[split(parameters('secondString'), variables('delimiters'))]"},
                  defaults(firstString="one,two,three", secondString="one;two,three"), {"delimiters": [",", ";"]})
    assert got == {"firstOutput": ["one", "two", "three"], "secondOutput": ["one", "two", "three"]}


def test_string_of_objects_arrays_and_ints() -> None:
    got = outputs({"objectOutput": "[string(parameters('testObject'))]",
                   "arrayOutput": "[string(parameters('testArray'))]", "intOutput": "[string(parameters('testInt'))]"},
                  defaults(testObject={"valueA": 10, "valueB": "Example Text"}, testArray=["a", "b", "c"], testInt=5))
    assert got == {"objectOutput": '{"valueA":10,"valueB":"Example Text"}', "arrayOutput": '["a","b","c"]',
                   "intOutput": "5"}


def test_substring_and_its_documented_failure() -> None:
    assert value("[substring('one two three', 4, 3)]") == "two"
    (problem,) = problems({"v": "[substring('1234567890', 0, 11)]"})
    assert (problem.path, problem.rule) == ("$.resources[0].properties.v", "arm-argument")


def test_uri_functions() -> None:
    got = outputs({"uriOutput": "[variables('uriFormat')]", "componentOutput": "[variables('uriEncoded')]",
                   "toStringOutput": "[uriComponentToString(variables('uriEncoded'))]"},
                  variables={"uriFormat": "[uri('http://contoso.com/resources/', 'nested/azuredeploy.json')]",
                             "uriEncoded": "[uriComponent(variables('uriFormat'))]"})
    assert got == {"uriOutput": "http://contoso.com/resources/nested/azuredeploy.json",
                   "componentOutput": "http%3A%2F%2Fcontoso.com%2Fresources%2Fnested%2Fazuredeploy.json",
                   "toStringOutput": "http://contoso.com/resources/nested/azuredeploy.json"}
    documented = {"http://contoso.org/firstpath": "http://contoso.org/myscript.sh",
                  "http://contoso.org/firstpath/": "http://contoso.org/firstpath/myscript.sh",
                  "http://contoso.org/firstpath/azuredeploy.json": "http://contoso.org/firstpath/myscript.sh",
                  "http://contoso.org/firstpath/azuredeploy.json/":
                      "http://contoso.org/firstpath/azuredeploy.json/myscript.sh"}
    for base, expected in documented.items():
        assert value(f"[uri('{base}', 'myscript.sh')]") == expected


def test_unique_string_and_guid_have_azures_shape() -> None:
    got = outputs({"concatOutput": "[concat(parameters('prefix'), '-', uniqueString(resourceGroup().id))]",
                   "guid": "[guid(resourceGroup().id, deployment().name)]"}, defaults(prefix="prefix"))
    stamp = got["concatOutput"].removeprefix("prefix-")
    assert len(stamp) == 13 and stamp.isalnum() and stamp.islower()  # Azure's value: 5yj4yjf5mbg72
    assert len(got["guid"]) == 36 and got["guid"].count("-") == 4


def test_new_guid_only_in_a_parameter_default() -> None:
    parameters = {"guidValue": {"type": "string", "defaultValue": "[newGuid()]"}}
    guid = value("[parameters('guidValue')]", parameters=parameters)
    assert len(guid) == 36 and guid != value("[parameters('guidValue')]", parameters=parameters)
    (problem,) = problems({"v": "[newGuid()]"})
    assert problem.rule == "arm-function" and "defaultValue" in problem.message


# --- array -----------------------------------------------------------------------------------

def test_array_and_create_array() -> None:
    got = outputs({"intOutput": "[array(parameters('intToConvert'))]",
                   "stringOutput": "[array(parameters('stringToConvert'))]",
                   "objectOutput": "[array(parameters('objectToConvert'))]",
                   "stringArray": "[createArray('a', 'b', 'c')]", "intArray": "[createArray(1, 2, 3)]",
                   "arrayArray": "[createArray(createArray('one', 'two'))]", "emptyArray": "[createArray()]"},
                  defaults(intToConvert=1, stringToConvert="efgh", objectToConvert={"a": "b", "c": "d"}))
    assert got == {"intOutput": [1], "stringOutput": ["efgh"], "objectOutput": [{"a": "b", "c": "d"}],
                   "stringArray": ["a", "b", "c"], "intArray": [1, 2, 3], "arrayArray": [["one", "two"]],
                   "emptyArray": []}


def test_concat_arrays() -> None:
    got = value("[concat(parameters('firstArray'), parameters('secondArray'))]",
                parameters=defaults(firstArray=["1-1", "1-2", "1-3"], secondArray=["2-1", "2-2", "2-3"]))
    assert got == ["1-1", "1-2", "1-3", "2-1", "2-2", "2-3"]


def test_contains_empty_first_last_length() -> None:
    got = outputs({"stringTrue": "[contains('OneTwoThree', 'e')]", "stringFalse": "[contains('OneTwoThree', 'z')]",
                   "objectTrue": "[contains(parameters('o'), 'one')]", "objectFalse": "[contains(parameters('o'), 'a')]",
                   "arrayTrue": "[contains(parameters('a'), 'three')]", "arrayFalse": "[contains(parameters('a'), 'four')]",
                   "arrayEmpty": "[empty(createArray())]", "objectEmpty": "[empty(json('{}'))]",
                   "stringEmpty": "[empty('')]", "first": "[first(parameters('a'))]", "firstChar": "[first('One Two Three')]",
                   "last": "[last(parameters('a'))]", "lastChar": "[last('One Two Three')]",
                   "arrayLength": "[length(parameters('a'))]", "stringLength": "[length('One Two Three')]",
                   "objectLength": "[length(parameters('p'))]"},
                  defaults(o={"one": "a", "two": "b", "three": "c"}, a=["one", "two", "three"],
                           p={"propA": "one", "propB": "two", "propC": "three", "propD": {"propD-1": "sub"}}))
    assert got == {"stringTrue": True, "stringFalse": False, "objectTrue": True, "objectFalse": False,
                   "arrayTrue": True, "arrayFalse": False, "arrayEmpty": True, "objectEmpty": True,
                   "stringEmpty": True, "first": "one", "firstChar": "O", "last": "three", "lastChar": "e",
                   "arrayLength": 3, "stringLength": 13, "objectLength": 4}


def test_index_of_and_last_index_of_on_arrays_are_exact() -> None:
    variables = {"names": ["one", "two", "three"], "numbers": [4, 5, 6],
                 "collection": ["[variables('names')]", "[variables('numbers')]"], "duplicates": [1, 2, 3, 1]}
    got = outputs({"index1": "[lastIndexOf(variables('names'), 'two')]", "index2": "[indexOf(variables('names'), 'one')]",
                   "notFoundIndex1": "[lastIndexOf(variables('names'), 'Three')]",
                   "index3": "[lastIndexOf(variables('numbers'), 4)]", "index4": "[indexOf(variables('numbers'), 6)]",
                   "notFoundIndex2": "[lastIndexOf(variables('numbers'), '5')]",
                   "index5": "[indexOf(variables('collection'), variables('numbers'))]",
                   "index6": "[indexOf(variables('duplicates'), 1)]", "index7": "[lastIndexOf(variables('duplicates'), 1)]"},
                  variables=variables)
    assert got == {"index1": 1, "index2": 0, "notFoundIndex1": -1, "index3": 0, "index4": 2, "notFoundIndex2": -1,
                   "index5": 1, "index6": 0, "index7": 3}


def test_intersection_and_union() -> None:
    got = outputs({"objectIntersection": "[intersection(parameters('o1'), parameters('o2'))]",
                   "arrayIntersection": "[intersection(parameters('a1'), parameters('a2'))]",
                   "objectUnion": "[union(parameters('u1'), parameters('u2'))]",
                   "arrayUnion": "[union(parameters('a1'), parameters('a3'))]"},
                  defaults(o1={"one": "a", "two": "b", "three": "c"}, o2={"one": "a", "two": "z", "three": "c"},
                           a1=["one", "two", "three"], a2=["two", "three"], a3=["three", "four"],
                           u1={"one": "a", "two": "b", "three": "c1"}, u2={"three": "c2", "four": "d", "five": "e"}))
    assert got == {"objectIntersection": {"one": "a", "three": "c"}, "arrayIntersection": ["two", "three"],
                   "objectUnion": {"one": "a", "two": "b", "three": "c2", "four": "d", "five": "e"},
                   "arrayUnion": ["one", "two", "three", "four"]}


def test_union_merges_nested_objects_and_replaces_nested_arrays() -> None:
    first = {"property": {"one": "a", "two": "b", "three": "c1"}, "nestedArray": [1, 2]}
    second = {"property": {"three": "c2", "four": "d", "five": "e"}, "nestedArray": [3, 4]}
    got = outputs({"objectOutput": "[union(parameters('first'), parameters('second'))]",
                   "arrayOutput": "[union(parameters('a'), parameters('b'))]"},
                  defaults(first=first, second=second, a=[["one", "two"], ["three"]], b=[["four", "two"]]))
    assert got["objectOutput"] == {"property": {"one": "a", "two": "b", "three": "c2", "four": "d", "five": "e"},
                                   "nestedArray": [3, 4]}
    assert got["arrayOutput"] == [["one", "two"], ["three"], ["four", "two"]]


def test_range_skip_take_flatten() -> None:
    got = outputs({"rangeOutput": "[range(parameters('startingInt'), parameters('numberOfElements'))]",
                   "skipArray": "[skip(parameters('a'), 2)]", "skipString": "[skip('one two three', 4)]",
                   "takeArray": "[take(parameters('a'), 2)]", "takeString": "[take('one two three', 2)]",
                   "flat": "[flatten(createArray(createArray('one', 'two'), createArray('three'), "
                           "createArray('four', 'five')))]"},
                  defaults(startingInt=5, numberOfElements=3, a=["one", "two", "three"]))
    assert got == {"rangeOutput": [5, 6, 7], "skipArray": ["three"], "skipString": "two three",
                   "takeArray": ["one", "two"], "takeString": "on",
                   "flat": ["one", "two", "three", "four", "five"]}


# --- object ----------------------------------------------------------------------------------

def test_create_object() -> None:
    got = value("[createObject('intProp', 1, 'stringProp', 'abc', 'boolProp', true(), 'arrayProp', "
                "createArray('a', 'b', 'c'), 'objectProp', createObject('key1', 'value1'))]")
    assert got == {"intProp": 1, "stringProp": "abc", "boolProp": True, "arrayProp": ["a", "b", "c"],
                   "objectProp": {"key1": "value1"}}


def test_json_null_and_their_documented_inputs() -> None:
    parameters = defaults(jsonEmptyObject="null", jsonObject='{"a": "b"}', jsonString='"test"', jsonBoolean="true",
                          jsonInt="3", jsonArray="[[1,2,3 ]", concatValue="demo value")
    got = outputs({"emptyObjectOutput": "[empty(json(parameters('jsonEmptyObject')))]",
                   "objectOutput": "[json(parameters('jsonObject'))]", "stringOutput": "[json(parameters('jsonString'))]",
                   "booleanOutput": "[json(parameters('jsonBoolean'))]", "intOutput": "[json(parameters('jsonInt'))]",
                   "arrayOutput": "[json(parameters('jsonArray'))]",
                   "concatObjectOutput": "[json(concat('{\"a\": \"', parameters('concatValue'), '\"}'))]",
                   "nullEmpty": "[empty(null())]"}, parameters)
    assert got == {"emptyObjectOutput": True, "objectOutput": {"a": "b"}, "stringOutput": "test",
                   "booleanOutput": True, "intOutput": 3, "arrayOutput": [1, 2, 3],
                   "concatObjectOutput": {"a": "demo value"}, "nullEmpty": True}


def test_items_sorts_by_key_and_object_keys_keep_order() -> None:
    got = outputs({"itemsOutput": "[items(variables('unsortedObject'))]", "keys": "[objectKeys(variables('obj'))]"},
                  variables={"unsortedObject": {"b": "value2", "c": "value3", "a": "value1"}, "obj": {"a": 1, "b": 2}})
    assert got == {"itemsOutput": [{"key": "a", "value": "value1"}, {"key": "b", "value": "value2"},
                                   {"key": "c", "value": "value3"}], "keys": ["a", "b"]}


def test_shallow_merge_and_try_get() -> None:
    got = outputs({"firstOutput": "[shallowMerge(variables('firstArray'))]",
                   "secondOutput": "[shallowMerge(variables('secondArray'))]",
                   "found": "[tryGet(variables('secondArray'), 0, 'nested', 'a')]",
                   "absent": "[tryGet(variables('secondArray'), 5)]"},
                  variables={"firstArray": [{"one": "a"}, {"two": "b"}, {"two": "c"}],
                             "secondArray": [{"one": "a", "nested": {"a": 1, "nested": {"c": 3}}},
                                             {"two": "b", "nested": {"b": 2}}]})
    assert got == {"firstOutput": {"one": "a", "two": "c"}, "secondOutput": {"one": "a", "nested": {"b": 2}, "two": "b"},
                   "found": 1, "absent": None}


# --- numeric ---------------------------------------------------------------------------------

def test_numeric_functions() -> None:
    got = outputs({"addResult": "[add(5, 3)]", "divResult": "[div(8, 3)]", "modResult": "[mod(7, 3)]",
                   "mulResult": "[mul(mul(5, 3), 3)]", "subResult": "[sub(7, 3)]", "intResult": "[int('4')]",
                   "float1": "[float('3.0')]", "float2": "[float(3)]", "maxArray": "[max(parameters('a'))]",
                   "maxInts": "[max(0, 3, 2, 5, 4)]", "minArray": "[min(parameters('a'))]", "minInts": "[min(0, 3, 2, 5, 4)]",
                   "netDiv": "[div(-7, 2)]", "netMod": "[mod(-7, 2)]"}, defaults(a=[0, 3, 2, 5, 4]))
    assert got == {"addResult": 8, "divResult": 2, "modResult": 1, "mulResult": 45, "subResult": 4, "intResult": 4,
                   "float1": 3.0, "float2": 3.0, "maxArray": 5, "maxInts": 5, "minArray": 0, "minInts": 0,
                   "netDiv": -3, "netMod": -1}


def test_string_of_a_float_is_dotnets() -> None:
    assert value("[concat(string(float('3.0')), '|', string(json('2.5')), '|', string(json('1e20')))]") == "3|2.5|1E+20"


def test_arithmetic_problems() -> None:
    found = problems({"a": "[div(1, 0)]", "b": "[mul(9223372036854775807, 2)]", "c": "[add('1', 2)]"})
    assert [(p.path, p.rule) for p in found] == [("$.resources[0].properties.a", "arm-argument"),
                                                 ("$.resources[0].properties.b", "arm-argument"),
                                                 ("$.resources[0].properties.c", "arm-argument")]


# --- comparison and logical ------------------------------------------------------------------

def test_coalesce() -> None:
    parameters = defaults(objectToTest={"null1": None, "null2": None, "string": "default", "int": 1,
                                        "object": {"first": "default"}, "array": [1]})
    nulls = "parameters('objectToTest').null1, parameters('objectToTest').null2"
    got = outputs({name: f"[coalesce({nulls}, parameters('objectToTest').{name})]"
                   for name in ("string", "int", "object", "array")} | {"empty": f"[empty(coalesce({nulls}))]"},
                  parameters)
    assert got == {"string": "default", "int": 1, "object": {"first": "default"}, "array": [1], "empty": True}


def test_equals_greater_less() -> None:
    parameters = defaults(firstInt=1, secondInt=2, firstString="A", secondString="a")
    ints, strings = "parameters('firstInt'), parameters('secondInt')", "parameters('firstString'), parameters('secondString')"
    got = outputs({f"{fn}{kind}": f"[{fn}({args})]" for fn in ("greater", "greaterOrEquals", "less", "lessOrEquals")
                   for kind, args in (("Ints", ints), ("Strings", strings))}, parameters)
    # ARM orders strings as .NET's culture does: 'A' is greater than 'a'
    assert got == {"greaterInts": False, "greaterStrings": True, "greaterOrEqualsInts": False,
                   "greaterOrEqualsStrings": True, "lessInts": True, "lessStrings": False,
                   "lessOrEqualsInts": True, "lessOrEqualsStrings": False}
    got = outputs({"checkInts": "[equals(1, 1)]", "checkStrings": "[equals('a', 'a')]",
                   "checkArrays": "[equals(createArray('a', 'b'), createArray('a', 'b'))]",
                   "checkObjects": "[equals(json('{\"a\": \"b\"}'), createObject('a', 'b'))]",
                   "checkNotEquals": "[not(equals(1, 2))]"})
    assert all(got.values())


def test_logical_functions() -> None:
    got = outputs({"and": "[and(bool('true'), bool('false'))]", "or": "[or(bool('true'), bool('false'))]",
                   "not": "[not(bool('true'))]", "trueString": "[bool('true')]", "falseString": "[bool('false')]",
                   "trueInt": "[bool(1)]", "falseInt": "[bool(0)]", "false": "[false()]", "true": "[true()]",
                   "yesOutput": "[if(equals('a', 'a'), 'yes', 'no')]", "noOutput": "[if(equals('a', 'b'), 'yes', 'no')]",
                   "objectOutput": "[if(equals('a', 'a'), json('{\"test\": \"value1\"}'), json('null'))]"})
    assert got == {"and": False, "or": True, "not": False, "trueString": True, "falseString": False, "trueInt": True,
                   "falseInt": False, "false": False, "true": True, "yesOutput": "yes", "noOutput": "no",
                   "objectOutput": {"test": "value1"}}


# --- date ------------------------------------------------------------------------------------

NOW = {**CONTEXT, "utcNow": "2019-03-05T17:53:18Z"}


def test_utc_now_in_parameter_defaults_only() -> None:
    parameters = {"utcValue": {"type": "string", "defaultValue": "[utcNow()]"},
                  "utcShortValue": {"type": "string", "defaultValue": "[utcNow('d')]"},
                  "utcCustomValue": {"type": "string", "defaultValue": "[utcNow('M d')]"}}
    got = outputs({name: f"[parameters('{name}')]" for name in parameters}, parameters, context=NOW)
    assert got == {"utcValue": "20190305T175318Z", "utcShortValue": "3/5/2019", "utcCustomValue": "3 5"}
    (problem,) = problems({"stamp": "[utcNow()]"})
    assert (problem.path, problem.rule) == ("$.resources[0].properties.stamp", "arm-function")
    assert "defaultValue" in problem.message


def test_date_time_add_keeps_the_base_format() -> None:
    parameters = {"baseTime": {"type": "string", "defaultValue": "[utcNow('u')]"}}
    got = outputs({"add3Years": "[dateTimeAdd(parameters('baseTime'), 'P3Y')]",
                   "subtract9Days": "[dateTimeAdd(parameters('baseTime'), '-P9D')]",
                   "add1Hour": "[dateTimeAdd(parameters('baseTime'), 'PT1H')]",
                   "formatted": "[dateTimeAdd('2020-01-31T00:00:00Z', 'P1M', 'yyyy-MM-dd')]"},
                  parameters, context={**CONTEXT, "utcNow": "2020-04-07T14:53:14Z"})
    assert got == {"add3Years": "2023-04-07 14:53:14Z", "subtract9Days": "2020-03-29 14:53:14Z",
                   "add1Hour": "2020-04-07 15:53:14Z", "formatted": "2020-02-29"}
    (problem,) = problems({"v": "[dateTimeAdd('2020-01-01T00:00:00Z', 'one day')]"})
    assert problem.rule == "arm-argument" and "ISO 8601 duration" in problem.message


def test_epoch_conversions() -> None:
    got = outputs({"fromEpoch": "[dateTimeFromEpoch(1683040573)]",
                   "toEpoch": "[dateTimeToEpoch('2023-05-02T15:16:13Z')]"})
    assert got == {"fromEpoch": "2023-05-02T15:16:13Z", "toEpoch": 1683040573}


# --- deployment ------------------------------------------------------------------------------

def test_parameters_and_variables_functions() -> None:
    parameters = defaults(stringParameter="option 1", intParameter=1, objectParameter={"one": "a", "two": "b"},
                          arrayParameter=[1, 2, 3]) | {"crossParameter": {"type": "string",
                                                                          "defaultValue": "[parameters('stringParameter')]"}}
    got = outputs({"stringOutput": "[parameters('stringParameter')]", "crossOutput": "[parameters('crossParameter')]",
                   "objectOutput": "[parameters('objectParameter')]", "var3": "[variables('var3')]",
                   "var4": "[variables('var4')]"}, parameters,
                  {"var1": "myVariable", "var3": "[ variables('var1') ]", "var4": {"property1": "value1"}})
    assert got == {"stringOutput": "option 1", "crossOutput": "option 1", "objectOutput": {"one": "a", "two": "b"},
                   "var3": "myVariable", "var4": {"property1": "value1"}}


def test_deployment_is_the_local_file() -> None:
    got = outputs({"name": "[deployment().name]", "version": "[deployment().properties.template.contentVersion]",
                   "mode": "[deployment().properties.mode]"}, source="/srv/templates/web-image.json")
    assert got == {"name": "web-image", "version": "1.0.0.0", "mode": "Incremental"}
    (problem,) = problems({"v": "[uri(deployment().properties.templateLink.uri, 'x.sh')]"})
    assert problem.rule == "arm-property" and "templateLink" in problem.message


def test_environment_is_the_public_azure_cloud() -> None:
    got = outputs({"name": "[environment().name]", "blob": "[format('https://acct.blob.{0}/s.sh', "
                                                            "environment().suffixes.storage)]"})
    assert got == {"name": "AzureCloud", "blob": "https://acct.blob.core.windows.net/s.sh"}


# --- resource and scope ----------------------------------------------------------------------

def test_resource_ids() -> None:
    got = outputs({"sameRG": "[resourceId('Microsoft.Storage/storageAccounts', 'examplestorage')]",
                   "differentRG": "[resourceId('otherResourceGroup', 'Microsoft.Storage/storageAccounts', 'examplestorage')]",
                   "differentSub": "[resourceId('11111111-1111-1111-1111-111111111111', 'otherResourceGroup', "
                                   "'Microsoft.Storage/storageAccounts', 'examplestorage')]",
                   "nested": "[resourceId('Microsoft.SQL/servers/databases', 'serverName', 'databaseName')]",
                   "subscription": "[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', "
                                   "'8e3af657-a8ff-443c-a75c-2fe8c4bcb635')]",
                   "tenant": "[tenantResourceId('Microsoft.Authorization/policyDefinitions', "
                             "'0a914e76-4921-4c19-b460-a2d36003525a')]",
                   "extension": "[extensionResourceId(resourceGroup().Id, 'Microsoft.Authorization/locks', 'lock1')]",
                   "managementGroup": "[managementGroupResourceId('Microsoft.Authorization/policyDefinitions', "
                                      "'locationRG')]"})
    assert got == {
        "sameRG": f"{RG_ID}/providers/Microsoft.Storage/storageAccounts/examplestorage",
        "differentRG": "/subscriptions/s1/resourceGroups/otherResourceGroup/providers/Microsoft.Storage/"
                       "storageAccounts/examplestorage",
        "differentSub": "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/otherResourceGroup/"
                        "providers/Microsoft.Storage/storageAccounts/examplestorage",
        "nested": f"{RG_ID}/providers/Microsoft.SQL/servers/serverName/databases/databaseName",
        "subscription": "/subscriptions/s1/providers/Microsoft.Authorization/roleDefinitions/"
                        "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
        "tenant": "/providers/Microsoft.Authorization/policyDefinitions/0a914e76-4921-4c19-b460-a2d36003525a",
        "extension": f"{RG_ID}/providers/Microsoft.Authorization/locks/lock1",
        "managementGroup": "/providers/Microsoft.Management/managementGroups/local/providers/"
                           "Microsoft.Authorization/policyDefinitions/locationRG"}


@pytest.mark.parametrize("expression, named", [
    ("[listKeys(resourceId('Microsoft.Storage/storageAccounts', 'st'), '2022-09-01').keys[0].value]", "listKeys"),
    ("[listSecrets('x', '2020-01-01')]", "listSecrets"),
    ("[pickZones('Microsoft.Compute', 'virtualMachines', 'westus2')]", "pickZones"),
    ("[providers('Microsoft.Compute')]", "providers"),
])
def test_functions_that_only_azure_can_answer_are_named_at_their_path(expression: str, named: str) -> None:
    (problem,) = problems({"customize": [{"inline": [expression]}]})
    assert (problem.path, problem.rule) == ("$.resources[0].properties.customize[0].inline[0]", "arm-function")
    assert f"{named}()" in problem.message and "parameter" in (problem.hint or "")


def test_scope_objects() -> None:
    got = outputs({"rg": "[resourceGroup()]", "sub": "[subscription().id]", "tenant": "[tenant().tenantId]",
                   "mg": "[managementGroup().id]"})
    assert got["rg"]["id"] == RG_ID and got["rg"]["location"] == "westus2" and got["rg"]["name"] == "rg1"
    assert got["sub"] == "/subscriptions/s1"
    assert got["tenant"] == "00000000-0000-0000-0000-000000000000"
    assert got["mg"] == "/providers/Microsoft.Management/managementGroups/local"


# --- lambda ----------------------------------------------------------------------------------

DOGS = [{"name": "Evie", "age": 5, "interests": ["Ball", "Frisbee"]},
        {"name": "Casper", "age": 3, "interests": ["Other dogs"]},
        {"name": "Indy", "age": 2, "interests": ["Butter"]},
        {"name": "Kira", "age": 8, "interests": ["Rubs"]}]


def test_filter() -> None:
    got = outputs({"oldDogs": "[filter(variables('dogs'), lambda('dog', greaterOrEquals(lambdaVariables('dog').age, 5)))]",
                   "isEven": "[filter(range(0, 10), lambda('i', equals(0, mod(lambdaVariables('i'), 2))))]",
                   "dogNameIndex": "[filter(variables('dogs'), lambda('val', 'i', and(less(lambdaVariables('i'), 2), "
                                   "equals(substring(lambdaVariables('val').name, 0, 1), 'C'))))]"},
                  variables={"dogs": DOGS})
    assert got == {"oldDogs": [DOGS[0], DOGS[3]], "isEven": [0, 2, 4, 6, 8], "dogNameIndex": [DOGS[1]]}


def test_map() -> None:
    got = outputs({"dogNames": "[map(variables('dogs'), lambda('dog', lambdaVariables('dog').name))]",
                   "sayHi": "[map(variables('dogs'), lambda('dog', format('Hello {0}!', lambdaVariables('dog').name)))]",
                   "mapObject": "[map(range(0, length(variables('dogs'))), lambda('i', createObject('i', "
                                "lambdaVariables('i'), 'dog', variables('dogs')[lambdaVariables('i')].name, 'greeting', "
                                "format('Ahoy, {0}!', variables('dogs')[lambdaVariables('i')].name))))]"},
                  variables={"dogs": DOGS})
    assert got["dogNames"] == ["Evie", "Casper", "Indy", "Kira"]
    assert got["sayHi"] == ["Hello Evie!", "Hello Casper!", "Hello Indy!", "Hello Kira!"]
    assert got["mapObject"][1] == {"i": 1, "dog": "Casper", "greeting": "Ahoy, Casper!"} and len(got["mapObject"]) == 4


def test_reduce() -> None:
    add = "lambda('cur', 'next', add(lambdaVariables('cur'), lambdaVariables('next')))"
    got = outputs({"totalAge": f"[reduce(variables('ages'), 0, {add})]",
                   "totalAgeAdd1": f"[reduce(variables('ages'), 1, {add})]",
                   "reduceObjectUnion": "[reduce(createArray(createObject('foo', 123), createObject('bar', 456), "
                                        "createObject('baz', 789)), createObject(), lambda('cur', 'next', "
                                        "union(lambdaVariables('cur'), lambdaVariables('next'))))]"},
                  variables={"dogs": DOGS, "ages": "[map(variables('dogs'), lambda('dog', lambdaVariables('dog').age))]"})
    assert got == {"totalAge": 18, "totalAgeAdd1": 19, "reduceObjectUnion": {"foo": 123, "bar": 456, "baz": 789}}


def test_sort_to_object_group_by_map_values() -> None:
    got = outputs({"dogsByAge": "[sort(variables('dogs'), lambda('a', 'b', less(lambdaVariables('a').age, "
                                "lambdaVariables('b').age)))]",
                   "dogsObject": "[toObject(variables('dogs'), lambda('entry', lambdaVariables('entry').name))]",
                   "ages": "[toObject(variables('dogs'), lambda('e', lambdaVariables('e').name), "
                           "lambda('e', lambdaVariables('e').age))]",
                   "grouped": "[groupBy(createArray('foo', 'bar', 'baz'), lambda('x', substring(lambdaVariables('x'), 0, 1)))]",
                   "upper": "[mapValues(createObject('foo', 'foo'), lambda('val', toUpper(lambdaVariables('val'))))]"},
                  variables={"dogs": DOGS})
    assert [d["name"] for d in got["dogsByAge"]] == ["Indy", "Casper", "Evie", "Kira"]
    assert got["dogsObject"] == {d["name"]: d for d in DOGS}
    assert got["ages"] == {"Evie": 5, "Casper": 3, "Indy": 2, "Kira": 8}
    assert got["grouped"] == {"f": ["foo"], "b": ["bar", "baz"]}
    assert got["upper"] == {"foo": "FOO"}


def test_lambdas_nest_and_misuse_is_a_problem() -> None:
    nested = ("[map(createArray(1, 2), lambda('x', map(createArray(10, 20), "
              "lambda('y', add(lambdaVariables('x'), lambdaVariables('y'))))))]")
    assert value(nested) == [[11, 21], [12, 22]]
    found = problems({"a": "[lambda('x', 1)]", "b": "[createArray(lambda('x', 1))]",
                      "c": "[lambdaVariables('x')]", "d": "[map(createArray(1), lambda('a', 'b', 'c', 1))]"})
    assert [p.rule for p in found] == ["arm-function", "arm-argument", "arm-function", "arm-argument"]
