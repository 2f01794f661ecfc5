"""Property test: mutated corpus workflows never raise anything but WorkflowError."""

from __future__ import annotations

import copy
import json
from typing import Any

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.errors import WorkflowError
from comfyc.compiler.passes.validate import validate_graph
from comfyc.frontends.comfy_json.api import graph_from_api, graph_to_api
from comfyc.frontends.comfy_json.ui import ui_to_api
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CORPUS

API = [json.loads(p.read_text()) for p in sorted(CORPUS.glob("*.api.json"))]
UI = [json.loads(p.read_text()) for p in sorted(CORPUS.glob("*.ui.json"))]
ODD_VALUES = st.one_of(
    st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=5), st.booleans(),
    st.none(), st.just([]), st.just(["1", 0]), st.just(["999", 0]), st.just([4, 0]),
    st.just({"__value__": [1, 2]}), st.just({"a": 1}), st.just(["3", 99]),
)


def _mutate_api(data: dict[str, Any], draw: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    ids = list(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop_input", "retype", "rewire", "delete", "class"]))
        node = data.get(draw(st.sampled_from(ids)))
        if not isinstance(node, dict):
            continue
        inputs = node.get("inputs", {})
        names = list(inputs)
        if op == "drop_input" and names:
            inputs.pop(draw(st.sampled_from(names)))
        elif op == "retype" and names:
            inputs[draw(st.sampled_from(names))] = draw(ODD_VALUES)
        elif op == "rewire" and names:
            inputs[draw(st.sampled_from(names))] = [draw(st.sampled_from(ids)),
                                                    draw(st.integers(-1, 3))]
        elif op == "delete":
            data.pop(draw(st.sampled_from(ids)), None)
        elif op == "class":
            node["class_type"] = draw(st.sampled_from(
                ["KSampler", "VAEDecode", "Nope", "", 5, "SaveImage", "LatentUpscale"]))
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_mutated_api_prompts_give_workflow_errors_only(data: st.DataObject) -> None:
    """Dropped inputs, retyped values, rewired links and deleted nodes are reported, not crashes."""
    prompt = _mutate_api(data.draw(st.sampled_from(API)), data.draw)
    catalog = default_catalog()
    try:
        graph = graph_from_api(prompt, catalog, "fuzz.json")
        validate_graph(graph, catalog)
        graph_to_api(graph)
    except WorkflowError as exc:
        assert exc.render()


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_mutated_ui_workflows_give_workflow_errors_only(data: st.DataObject) -> None:
    """Mutated UI workflows (links, widgets, modes, nodes) are reported, not crashes."""
    ui = copy.deepcopy(data.draw(st.sampled_from(UI)))
    nodes = ui["nodes"]
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["widgets", "mode", "delete", "link", "droplink"]))
        if not nodes:
            break
        node = data.draw(st.sampled_from(nodes))
        if op == "widgets":
            node["widgets_values"] = data.draw(st.one_of(
                st.none(), st.lists(ODD_VALUES, max_size=8), st.just({"seed": 1})))
        elif op == "mode":
            node["mode"] = data.draw(st.sampled_from([0, 2, 4, 7, "x"]))
        elif op == "delete":
            nodes.remove(node)
        elif op == "link" and node.get("inputs"):
            node["inputs"][0]["link"] = data.draw(st.integers(-5, 80))
        elif op == "droplink" and ui.get("links"):
            ui["links"].pop(data.draw(st.integers(0, len(ui["links"]) - 1)))
    catalog = default_catalog()
    try:
        graph = graph_from_api(ui_to_api(ui, catalog, "fuzz.ui.json"), catalog, "fuzz.ui.json")
        validate_graph(graph, catalog)
    except WorkflowError as exc:
        assert exc.render()
