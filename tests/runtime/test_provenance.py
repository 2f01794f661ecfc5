"""The workflow chunks of saved images: the user's workflow with the run's param values.

The UI workflow round trip is the oracle: put new values in with ``executed_workflow``,
convert with the frontend's rules, and the API prompt must carry exactly those values where
``executed_prompt`` puts them — for every widget of every corpus workflow and for reroutes,
primitives and subgraphs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.frontends.comfy_json.ui import ui_to_api
from comfyc.runtime.nodes import registry
from comfyc.runtime.provenance import executed_prompt, executed_workflow
from tests.conftest import CORPUS, DATA
from tests.frontends.comfy_json.test_ui_features import _base, _by_id, _inp, _node

UI_FILES = sorted(CORPUS.glob("*.ui.json"))


def _catalog() -> Any:
    catalog = default_catalog().copy()
    catalog.load_object_info(DATA / "comfy" / "object_info_extra.json")
    return catalog


def _changed(value: Any) -> Any:
    if isinstance(value, float):
        return value + 0.25
    if isinstance(value, int):
        return value + 1
    return f"{value} (changed)"


def _every_widget(api: dict[str, Any]) -> tuple[dict[str, list[list[str]]], dict[str, Any]]:
    """One param per literal widget input of a built-in class, each with a new value."""
    uses: dict[str, list[list[str]]] = {}
    params: dict[str, Any] = {}
    for node_id, entry in api.items():
        node = registry().get(entry["class_type"])
        if node is None:
            continue
        for name, value in entry["inputs"].items():
            spec = node.schema.input(name)
            if spec is None or not spec.is_widget or isinstance(value, (list, dict, bool)):
                continue
            key = f"p{len(params)}"
            uses[key] = [[node_id, name]]
            params[key] = _changed(value)
    return uses, params


def _inputs(prompt: dict[str, Any]) -> dict[str, Any]:
    return {k: v["inputs"] for k, v in prompt.items()}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_every_widget_of_the_corpus_round_trips(path: Path) -> None:
    """New values put into a corpus UI workflow convert to the prompt that holds them."""
    catalog = _catalog()
    ui = json.loads(path.read_text())
    api = ui_to_api(ui, catalog)
    uses, params = _every_widget(api)
    assert params, "the workflow has no widget to change"
    before = copy.deepcopy(ui)
    changed = executed_workflow(ui, uses, params)
    assert ui == before, "the workflow given was changed"
    got = _inputs(ui_to_api(changed, catalog))
    expected = _inputs(executed_prompt(api, uses, params))
    for node_id, inputs in expected.items():
        for name, value in inputs.items():
            # NOTE: an input that shares a PrimitiveNode with a changed one changes with it,
            # as it does in ComfyUI (one widget feeds both).
            assert got[node_id][name] in (value, _changed(value)), (node_id, name)
    assert {k: v for k, v in got.items() if k in expected} == got
    for key, [[node_id, name]] in uses.items():
        assert got[node_id][name] == params[key], (node_id, name)


def test_primitive_reroute_and_subgraph_widgets() -> None:
    """A value fed by a PrimitiveNode, through a Reroute, or into a subgraph (promoted from
    the instance's widgets or kept on the inner node) lands where the frontend reads it."""
    data = _base()
    # steps: from a PrimitiveNode through a Reroute.
    data["nodes"].append(_node(21, "PrimitiveNode", [10, "fixed"], [],
                               [{"name": "INT", "type": "INT", "links": [10],
                                 "widget": {"name": "steps"}}]))
    data["nodes"].append(_node(22, "Reroute", None, [_inp("", "*", 10)],
                               [{"name": "", "type": "INT", "links": [11]}]))
    data["links"] += [[10, 21, 0, 22, 0, "INT"], [11, 22, 0, 3, 4, "INT"]]
    _by_id(data, 3)["inputs"].append(_inp("steps", "INT", 11, widget=True))
    # The prompt text: inside a subgraph, promoted as the instance's widget (older files).
    data["nodes"] = [n for n in data["nodes"] if n["id"] != 6]
    data["definitions"] = {"subgraphs": [{
        "id": "sg", "name": "Encode",
        "inputs": [{"id": "i0", "name": "clip", "type": "CLIP", "linkIds": [100]},
                   {"id": "i1", "name": "text", "type": "STRING", "linkIds": [102]}],
        "outputs": [{"id": "o0", "name": "CONDITIONING", "type": "CONDITIONING",
                     "linkIds": [101]}],
        "nodes": [_node(1, "CLIPTextEncode", ["inner"], [
            _inp("clip", "CLIP", 100), _inp("text", "STRING", 102, widget=True)])],
        "links": [[100, -10, 0, 1, 0, "CLIP"], [101, 1, 0, -20, 0, "CONDITIONING"],
                  [102, -10, 1, 1, 1, "STRING"]],
    }]}
    data["nodes"].append(_node(6, "sg", ["promoted"], [_inp("clip", "CLIP", 2),
                                                      _inp("text", "STRING", None)],
                               [{"name": "CONDITIONING", "type": "CONDITIONING",
                                 "links": [3, 4]}]))
    api = ui_to_api(data)
    assert api["3"]["inputs"]["steps"] == 10 and api["6:1"]["inputs"]["text"] == "promoted"
    uses = {"steps": [["3", "steps"]], "seed": [["3", "seed"]], "prompt": [["6:1", "text"]]}
    params = {"steps": 12, "seed": 99, "prompt": "a handwritten digit three"}
    changed = executed_workflow(data, uses, params)
    assert _by_id(changed, 21)["widgets_values"] == [12, "fixed"]
    assert _by_id(changed, 3)["widgets_values"][:2] == [99, "fixed"]
    assert _inputs(ui_to_api(changed)) == _inputs(executed_prompt(api, uses, params))
    # Newer files keep a promoted value on the inner node (proxyWidgets).
    instance = _by_id(data, 6)
    instance["properties"] = {"proxyWidgets": [["1", "text"]]}
    del instance["widgets_values"]
    _by_id(data["definitions"]["subgraphs"][0], 1)["inputs"].pop()
    data["definitions"]["subgraphs"][0]["links"].pop()
    data["definitions"]["subgraphs"][0]["inputs"].pop()
    instance["inputs"].pop()
    changed = executed_workflow(data, uses, params)
    assert ui_to_api(changed)["6:1"]["inputs"]["text"] == "a handwritten digit three"


def test_prompt_drops_comfyc_facts_and_keeps_the_rest() -> None:
    """``_meta.dsl`` (params, bindings) goes; titles and unknown ``_meta`` keys stay; the
    given prompt is not changed; a place that is not in the prompt is skipped."""
    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20},
                    "_meta": {"title": "S", "dsl": {"bind": "s"}, "color": "red"}}}
    out = executed_prompt(prompt, {"seed": [["3", "seed"], ["9", "seed"]], "x": [["3", "y"]]},
                          {"seed": 7})
    assert out == {"3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 20},
                         "_meta": {"title": "S", "color": "red"}}}
    assert prompt["3"]["_meta"]["dsl"] == {"bind": "s"} and prompt["3"]["inputs"]["seed"] == 1
