"""UI → API conversion against the API prompts ComfyUI itself produced (the corpus)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.errors import WorkflowErrors
from comfyc.compiler.passes.validate import validate_graph
from comfyc.frontends.comfy_json.api import graph_from_api, graph_to_api
from comfyc.frontends.comfy_json.ui import ui_to_api
from tests.conftest import CORPUS, DATA

UI_FILES = sorted(CORPUS.glob("*.ui.json"))
API_FILES = sorted(CORPUS.glob("*.api.json"))


def _strip(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def _extended_catalog():
    catalog = default_catalog().copy()
    catalog.load_object_info(DATA / "comfy" / "object_info_extra.json")
    return catalog


def _catalogued(path: Path) -> bool:
    api = json.loads(path.with_name(path.name.replace(".ui.json", ".api.json")).read_text())
    ui = json.loads(path.read_text())
    types = {n["class_type"] for n in api.values()} | {
        n["type"] for n in ui["nodes"] if n.get("mode", 0) == 0
        and n["type"] not in ("Note", "PrimitiveNode", "Reroute", "MarkdownNote")
    }
    return all(t in default_catalog() for t in types)


def test_corpus_is_there() -> None:
    """The corpus holds UI/API pairs."""
    assert len(UI_FILES) >= 10 and len(UI_FILES) == len(API_FILES)


#: Widgets newer than a corpus file's ComfyUI: the file's widgets_values stop before them, and
#: today's frontend (and the conversion) gives them their defaults — (node id, input): value.
NEWER_WIDGETS = {"flux__flux_dev_example.ui.json": {("11", "device"): "default"}}


@pytest.mark.parametrize("ui_path", UI_FILES, ids=lambda p: p.name)
def test_ui_converts_to_the_api_prompt_comfyui_made(ui_path: Path) -> None:
    """Converting a catalogued UI workflow gives exactly ComfyUI's API prompt (plus the
    defaults of widgets newer than the file)."""
    expected = json.loads(ui_path.with_name(ui_path.name.replace(".ui", ".api")).read_text())
    for (node_id, name), value in NEWER_WIDGETS.get(ui_path.name, {}).items():
        expected[node_id]["inputs"][name] = value
    ui = json.loads(ui_path.read_text())
    if _catalogued(ui_path):
        assert _strip(ui_to_api(ui, file=str(ui_path))) == _strip(expected)
    else:
        with pytest.raises(WorkflowErrors) as info:
            ui_to_api(ui, file=str(ui_path))
        first = info.value.errors[0]
        assert first.kind == "invalid_prompt" and "unknown node" in first.message
        assert "--object-info" in (first.help or "")
        # With an object_info fragment for those nodes it converts exactly.
        got = ui_to_api(ui, _extended_catalog(), file=str(ui_path))
        assert _strip(got) == _strip(expected)


#: Corpus API prompts made by a ComfyUI older than a widget of theirs: today's ComfyUI server
#: rejects them (``required_input_missing``), and so does comfyc. Their UI workflows load,
#: since the frontend fills the widget with its default (see test_ui_features).
OLDER_THAN_A_WIDGET = {"inpaint__inpaint_example.api.json": ("26", "grow_mask_by")}


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.name)
def test_api_prompts_load_validate_and_write_back(api_path: Path) -> None:
    """Every corpus API prompt loads, validates (or lacks a widget its ComfyUI version did not
    have, as today's ComfyUI says) and writes back unchanged."""
    data = json.loads(api_path.read_text())
    catalog = _extended_catalog()
    graph = graph_from_api(data, catalog, str(api_path))
    if api_path.name in OLDER_THAN_A_WIDGET:
        with pytest.raises(WorkflowErrors) as info:
            validate_graph(graph, catalog)
        [error] = info.value.errors
        assert error.kind == "required_input_missing"
        assert (error.loc.node_id, error.loc.input_name) == OLDER_THAN_A_WIDGET[api_path.name]
    else:
        validate_graph(graph, catalog)
    assert _strip(graph_to_api(graph)) == _strip(data)
    # Every node gets a title for ComfyUI's UI.
    assert all("title" in v["_meta"] for v in graph_to_api(graph).values())


def test_unknown_nodes_are_listed_together_with_close_names(corpus: Path) -> None:
    """All unknown classes are named at once, with a close catalogued name when there is one."""
    data = json.loads((corpus / "flux__flux_dev_example.api.json").read_text())
    # NOTE: comfyc runs Flux's nodes now (issue #16); custom nodes' names stand in for them.
    renamed = {"DualCLIPLoader": "DualCLIPLoaderGGUF", "UNETLoader": "UnetLoaderGGUF",
               "SamplerCustomAdvanced": "SamplerCustomAdvancedPro",
               "EmptySD3LatentImage": "EmptyLatentImageSDX"}
    for node in data.values():
        node["class_type"] = renamed.get(node["class_type"], node["class_type"])
    with pytest.raises(WorkflowErrors) as info:
        graph_from_api(data, file="flux.json")
    error = info.value.errors[0]
    for name in renamed.values():
        assert name in error.message
    assert any("did you mean 'EmptyLatentImage'" in n for n in error.notes), error.notes
