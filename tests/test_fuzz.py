"""Mutation fuzzing over the sample templates (the project's own; the public AIB samples too
when $ORCHESTRATOR_SAMPLES names them): every mutant ends in a model (and a plan and HCL) or in
TemplateInvalid with problems, never in another exception."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.core.document import load_document
from orchestrator.core.plan import ResolvedSource, make_plan
from orchestrator.core.render import RenderContext, render_linux
from orchestrator.core.render_windows import render_windows
from orchestrator.errors import OrchestratorError, TemplateInvalid

from tests.helpers import corpus_cases, fill_placeholders, is_trigger, sample_parameters

PARAMS = sample_parameters()


def documents(paths: list[Path]) -> list[Any]:
    """Valid documents (placeholders filled) to start from, so that mutants reach the plan and the HCL."""
    docs = [json.loads(fill_placeholders(p.read_text())) for p in paths if not is_trigger(p)]
    assert docs, "a corpus without templates fuzzes nothing"
    return docs

odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["${x}", "%{y}", "{{ .Path }}", "\"", "\\", "\n", "\x00", "<placeholder>", "[concat('a')]",
                     "[parameters('nope')]", "[[escaped", "ﬁ\u202e\ufeff", "😀" * 10, "a" * 100_000]),
)
leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                 st.floats(allow_nan=True), odd_text)
value = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                   st.dictionaries(odd_text, inner, max_size=4)), max_leaves=12)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for key, item in node.items():
            out += _paths(item, prefix + (key,))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            out += _paths(item, prefix + (index,))
    return out


def _mutate(doc: Any, path: tuple, action: str, payload: Any) -> Any:
    if not path:
        return payload if action == "replace" else doc
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if action == "drop":
        del parent[key]
    elif action == "duplicate" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    elif action == "duplicate" and isinstance(parent, dict):
        parent[f"{key}".upper()] = copy.deepcopy(parent[key])
    elif action == "retype":
        parent[key] = [parent[key]] if not isinstance(parent[key], list) else {"x": parent[key]}
    elif action == "deep":
        nested: Any = payload
        for _ in range(200):
            nested = [nested]
        parent[key] = nested
    else:
        parent[key] = payload
    return doc


@st.composite
def mutants(draw, docs: list[Any]) -> Any:
    doc = copy.deepcopy(draw(st.sampled_from(docs)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["drop", "duplicate", "retype", "replace", "deep", "replace"]))
        doc = _mutate(doc, path, action, draw(value))
    return doc


def _exercise(doc: Any, tmp: Path) -> str:
    """What became of the document: "unserializable", "invalid", "unplannable" or "rendered"
    (HCL that python-hcl2 parses back, one provisioner block per rendered provisioner)."""
    try:
        text = json.dumps(doc)
    except (ValueError, RecursionError):
        return "unserializable"
    try:
        template = load_document(text, "fuzz", PARAMS if "resources" in text else None)
    except TemplateInvalid as exc:
        assert exc.problems, "an invalid template must say why"
        assert all(p.path.startswith("$") and p.rule and p.message for p in exc.problems)
        return "invalid"
    source = ResolvedSource("fuzz", str(tmp / "base.qcow2"), "qcow2", 3 * 1024**3, "0" * 64, "1")
    try:
        plan = make_plan(template, source, "fuzz")
    except OrchestratorError:
        return "unplannable"
    downloads = {d.url: str(tmp / "dl") for d in plan.downloads}
    ctx = RenderContext(str(tmp), str(tmp / "out"), str(tmp / "key"), "ssh-ed25519 AAAA x", "tcg", downloads)
    rendered = render_windows(plan, ctx) if plan.os_type == "Windows" else render_linux(plan, ctx)
    parsed = hcl2.loads(rendered.hcl)
    assert len(parsed["build"][0]["provisioner"]) == len(rendered.provisioners)
    return "rendered"


@pytest.mark.parametrize("paths", corpus_cases())
def test_unmutated_samples_render(paths, tmp_path):
    """The fuzzer's starting points are valid: mutants start from templates that get as far as the HCL."""
    outcomes = {}
    for index, doc in enumerate(documents(paths)):
        (tmp_path / str(index)).mkdir()
        outcomes[index] = _exercise(doc, tmp_path / str(index))
    assert set(outcomes.values()) == {"rendered"}, outcomes


@pytest.mark.parametrize("paths", corpus_cases())
def test_mutated_samples_end_in_a_plan_or_a_clear_error(paths, tmp_path_factory):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(doc=mutants(documents(paths)))
    def check(doc):
        _exercise(doc, tmp_path_factory.mktemp("fuzz"))

    check()


@settings(max_examples=150, deadline=None)
@given(junk=value)
def test_arbitrary_json_ends_in_a_clear_error(junk, tmp_path_factory):
    _exercise(junk, tmp_path_factory.mktemp("junk"))
