"""`assert_pass`: DSL in, DSL out, with the verifier after the pass."""

from __future__ import annotations

import re
import textwrap
from typing import Any

import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.ir.core import Graph
from comfyc.compiler.ir.verify import verify_graph
from comfyc.frontends.dsl import parse_dsl


def parse(text: str) -> Graph:
    """Parse DSL text (dedented) with the built-in catalogue."""
    return parse_dsl(textwrap.dedent(text).strip() + "\n", "test.cfy", default_catalog())


_IDS = re.compile(r"^@\d+ ", re.MULTILINE)


def canonical(text: str) -> str:
    """The printer's canonical form of DSL text, without numeric ``@id`` decorators.

    Node ids are kept by passes but are not what these tests are about: removing a node makes
    the printer spell out the ids of the nodes after it.
    """
    return _IDS.sub("", str(parse(text)))


def run_pass(step: Any, before: str) -> tuple[Graph, Any]:
    """Parse, run one pass, verify; returns the graph and the pass result."""
    graph = parse(before)
    result = step.call(graph)
    verify_graph(graph, default_catalog(), after=step.name)
    return graph, result


@pytest.fixture
def assert_pass():  # type: ignore[no-untyped-def]
    """``assert_pass(step, before=..., after=..., modified=True)``."""

    def check(step: Any, *, before: str, after: str, modified: bool = True) -> Graph:
        graph, result = run_pass(step, before)
        assert _IDS.sub("", str(graph)) == canonical(after)
        assert result.modified is modified
        return graph

    return check
