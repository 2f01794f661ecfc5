"""The recursive-descent fast path builds exactly the AST of the Lark (reference) parser.

``parse_module`` tries :mod:`comfyc.frontends.dsl.fast` first and falls back to Lark for
anything it does not accept. These tests hold the two to the same result on every example,
every workflow of the corpus printed as DSL, generated graphs, and hand-picked corners of the
grammar (contextual keywords, raw strings, quoted names, trailing commas, comments); and they
check that malformed text always falls back, so errors keep Lark's positions and wording.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from comfyc.frontends.comfy_json.api import graph_from_api
from comfyc.frontends.comfy_json.ui import ui_to_api
from comfyc.frontends.dsl import fast, parse
from comfyc.frontends.dsl.parse import parse_module

from .test_dsl_perf import workflow
from .test_dsl_roundtrip import CATALOG, CORPUS, EXAMPLES, graphs


def _both(text: str) -> tuple[list, list]:
    """(fast AST, Lark AST) of well-formed ``text``; neither may record an error."""
    parse._state.errors = []
    parse._state.file = "t.cfy"
    got = fast.parse_statements(text, parse._DECODERS)
    assert parse._state.errors == []
    want = parse._lark_statements(text, "t.cfy")
    assert parse._state.errors == [], [str(e) for e in parse._state.errors]
    return got, want


def _assert_same(text: str) -> None:
    got, want = _both(text)
    assert got == want


def _corpus_texts() -> list[tuple[str, str]]:
    texts = []
    for path in sorted(CORPUS.glob("*.api.json")):
        prompt = json.loads(path.read_text(encoding="utf-8"))
        texts.append((path.name, str(graph_from_api(prompt, CATALOG, path.name))))
    for path in sorted(CORPUS.glob("*.json")):
        if path.name.endswith(".api.json"):
            continue
        prompt = ui_to_api(json.loads(path.read_text(encoding="utf-8")), CATALOG)
        texts.append((path.name, str(graph_from_api(prompt, CATALOG, path.name))))
    assert texts
    return texts


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse_alike(path: Path) -> None:
    _assert_same(path.read_text(encoding="utf-8"))


def test_corpus_workflows_parse_alike() -> None:
    for name, text in _corpus_texts():
        got, want = _both(text)
        assert got == want, name


def test_large_generated_workflow_parses_alike() -> None:
    _assert_same(workflow(300))


CORNERS = [
    "",
    "# only a comment\n   # and another",
    'param x: true = true [min=0, max=1,]\n',  # A type after ':' is a name, even `true`.
    'param p: STRING = """\nline one\n  "two"\n"""\nparam q: INT = -12 []\n',
    'output x = true\noutput y: IMAGE\noutput z: IMAGE = a[0]\noutput w = a.true\n',
    'true, param_, output_ = Foo(param=1, output=2, "a b"=null, c=[1, [true, x.y], {}],)\n',
    '@3 @"42:0" @title("T",) @extra({"a": [1, {"b": false}]},) x = "Quoted Class"(a=1e-3)\n',
    '@title() Foo()\n@0 Bar(1, x, y.z, y[2], y["out name"], Baz(q=1), "S"(r=2))\n',
    'x=Foo(a=-0.5E+10,b="esc \\" \\\\ \\n \\u00e9",c="""raw \\n""")#c\r\n# end',
    'a = Foo(\n  # inside a call\n  x=1, # after\n  y=[\n    1, # in a list\n  ],\n)\n',
    "_ = Foo(x='single')".replace("'single'", '"single"'),
]


@pytest.mark.parametrize("text", CORNERS)
def test_grammar_corners_parse_alike(text: str) -> None:
    _assert_same(text.replace("\r\n", "\n"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(with_dsl_facts=True))
def test_generated_graphs_parse_alike(graph) -> None:  # type: ignore[no-untyped-def]
    _assert_same(str(graph))


MALFORMED = [
    "x = ", "Foo(", "Foo(a=1", "Foo(a=1 b=2)", "Foo(true=1)", "param = Foo()",
    "output = Foo()", "@3.5 Foo()", "@title Foo()", "x = y", "Foo(a=x[-1])", "Foo(a=.5)",
    "Foo(a='s')", 'Foo(a="open)', 'Foo(a="""open)', "Foo(a={1: 2})", "Foo(,)", "Foo(a=[,])",
    "param x: INT = y", "output x = Foo()", "Foo() Bar", "x, = Foo()", "Foo(a=1)\v",
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_text_falls_back_to_lark(text: str) -> None:
    parse._state.errors = []
    parse._state.file = "t.cfy"
    with pytest.raises(fast.Fallback):
        fast.parse_statements(text, parse._DECODERS)
    with pytest.raises(Exception) as info:
        parse_module(text, "t.cfy")
    assert "t.cfy:" in str(info.value)

