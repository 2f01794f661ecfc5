"""UI workflow features beyond the corpus: v1 links, reroutes, primitives, mute, bypass,
subgraphs, defaults for missing widgets, new-frontend uploads."""

from __future__ import annotations

from typing import Any

import pytest

from comfyc.compiler.errors import WorkflowErrors
from comfyc.frontends.comfy_json.ui import ui_to_api


def _node(id: int, type: str, widgets: Any = None, inputs: list | None = None,
          outputs: list | None = None, mode: int = 0, **kw: Any) -> dict[str, Any]:
    node = {"id": id, "type": type, "mode": mode, "inputs": inputs or [],
            "outputs": outputs or [], **kw}
    if widgets is not None:
        node["widgets_values"] = widgets
    return node


def _inp(name: str, type: str, link: int | None, widget: bool = False) -> dict[str, Any]:
    out = {"name": name, "type": type, "link": link}
    if widget:
        out["widget"] = {"name": name}
    return out


def _base(links_v1: bool = False, frontend: bool = True) -> dict[str, Any]:
    links = [
        [1, 4, 0, 3, 0, "MODEL"], [2, 4, 1, 6, 0, "CLIP"], [3, 6, 0, 3, 1, "CONDITIONING"],
        [4, 6, 0, 3, 2, "CONDITIONING"], [5, 5, 0, 3, 3, "LATENT"],
        [6, 3, 0, 8, 0, "LATENT"], [7, 4, 2, 8, 1, "VAE"], [8, 8, 0, 9, 0, "IMAGE"],
    ]
    nodes = [
        _node(4, "CheckpointLoaderSimple", ["tiny-digits.safetensors"]),
        _node(5, "EmptyLatentImage", [64, 64, 1]),
        _node(6, "CLIPTextEncode", ["a digit"], [_inp("clip", "CLIP", 2)]),
        _node(3, "KSampler", [7, "fixed", 10, 5.0, "euler", "normal", 1.0], [
            _inp("model", "MODEL", 1), _inp("positive", "CONDITIONING", 3),
            _inp("negative", "CONDITIONING", 4), _inp("latent_image", "LATENT", 5)],
            title="Sampler A"),
        _node(8, "VAEDecode", None, [_inp("samples", "LATENT", 6), _inp("vae", "VAE", 7)]),
        _node(9, "SaveImage", ["out"], [_inp("images", "IMAGE", 8)]),
    ]
    data: dict[str, Any] = {"nodes": nodes, "links": links, "version": 0.4,
                            "extra": {"frontendVersion": "1.30.0"} if frontend else {}}
    if links_v1:
        data["version"] = 1
        data["links"] = [dict(zip(
            ["id", "origin_id", "origin_slot", "target_id", "target_slot", "type"], link))
            for link in links]
    return data


def _by_id(data: dict[str, Any], id: int) -> dict[str, Any]:
    return next(n for n in data["nodes"] if n["id"] == id)


def test_basic_and_titles() -> None:
    """Widgets map positionally (control slot skipped); custom titles become _meta.title."""
    api = ui_to_api(_base())
    assert api["3"]["inputs"] == {
        "seed": 7, "steps": 10, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["6", 0],
        "latent_image": ["5", 0]}
    assert api["3"]["_meta"]["title"] == "Sampler A"
    assert api["8"]["_meta"]["title"] == "VAE Decode"


def test_v1_link_objects_give_the_same_prompt() -> None:
    """Schema 1.0 link objects convert like 0.4 arrays."""
    assert ui_to_api(_base(links_v1=True)) == ui_to_api(_base())


def test_missing_trailing_widgets_take_defaults() -> None:
    """A short widgets_values array is completed with defaults."""
    data = _base()
    _by_id(data, 3)["widgets_values"] = [7, "fixed", 10]
    api = ui_to_api(data)
    assert api["3"]["inputs"]["cfg"] == 8.0 and api["3"]["inputs"]["sampler_name"] == "euler"
    assert api["3"]["inputs"]["denoise"] == 1.0


def test_reroute_and_primitive() -> None:
    """Reroutes are followed; a PrimitiveNode's value replaces the linked widget."""
    data = _base()
    data["nodes"].append(_node(20, "Reroute", None, [_inp("", "*", 7)],
                               [{"name": "", "type": "VAE", "links": [9]}]))
    data["links"] = [link for link in data["links"] if link[0] != 7]
    data["links"] += [[7, 4, 2, 20, 0, "VAE"], [9, 20, 0, 8, 1, "VAE"]]
    _by_id(data, 8)["inputs"][1]["link"] = 9
    data["nodes"].append(_node(21, "PrimitiveNode", [99, "fixed"], [],
                               [{"name": "INT", "type": "INT", "links": [10],
                                 "widget": {"name": "steps"}}]))
    data["links"].append([10, 21, 0, 3, 4, "INT"])
    _by_id(data, 3)["inputs"].append(_inp("steps", "INT", 10, widget=True))
    api = ui_to_api(data)
    assert api["8"]["inputs"]["vae"] == ["4", 2]
    assert api["3"]["inputs"]["steps"] == 99
    assert "20" not in api and "21" not in api


def test_muted_node_drops_links_and_bypass_rewires() -> None:
    """Mode 2 removes the node and the inputs it fed; mode 4 passes through by type."""
    data = _base()
    # A LoraLoader between checkpoint and sampler, bypassed: the sampler gets the checkpoint.
    data["nodes"].append(_node(30, "LoraLoader", ["x.safetensors", 1.0, 1.0], [
        _inp("model", "MODEL", 11), _inp("clip", "CLIP", 12)],
        [{"name": "MODEL", "type": "MODEL", "links": [13]},
         {"name": "CLIP", "type": "CLIP", "links": []}], mode=4))
    data["links"] = [link for link in data["links"] if link[0] != 1]
    data["links"] += [[11, 4, 0, 30, 0, "MODEL"], [12, 4, 1, 30, 1, "CLIP"],
                      [13, 30, 0, 3, 0, "MODEL"]]
    _by_id(data, 3)["inputs"][0]["link"] = 13
    api = ui_to_api(data)
    assert "30" not in api and api["3"]["inputs"]["model"] == ["4", 0]
    # Muting the decoder drops it and the SaveImage loses its input.
    _by_id(data, 8)["mode"] = 2
    api = ui_to_api(data)
    assert "8" not in api and "images" not in api["9"]["inputs"]


def test_uploads_are_not_sent_by_new_frontends() -> None:
    """LoadImage's upload slot is skipped (new frontend) or sent as the legacy input."""
    data = _base()
    data["nodes"].append(_node(40, "LoadImage", ["digit.png", "image"]))
    assert ui_to_api(data)["40"]["inputs"] == {"image": "digit.png"}
    data["extra"] = {}
    assert ui_to_api(data)["40"]["inputs"] == {"image": "digit.png",
                                               "choose file to upload": "image"}


def test_subgraph_is_flattened_with_outer_inner_ids() -> None:
    """A subgraph instance becomes its inner nodes, ids 'instance:inner', links resolved."""
    data = _base()
    # Replace the text encoder by a subgraph that wraps it; the prompt is promoted.
    data["nodes"] = [n for n in data["nodes"] if n["id"] != 6]
    definition = {
        "id": "sg-uuid", "name": "Encode", "version": 1,
        "inputs": [{"id": "i0", "name": "clip", "type": "CLIP", "linkIds": [100]}],
        "outputs": [{"id": "o0", "name": "CONDITIONING", "type": "CONDITIONING",
                     "linkIds": [101]}],
        "nodes": [_node(1, "CLIPTextEncode", ["inner prompt"], [_inp("clip", "CLIP", 100)])],
        "links": [
            {"id": 100, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0,
             "type": "CLIP"},
            {"id": 101, "origin_id": 1, "origin_slot": 0, "target_id": -20, "target_slot": 0,
             "type": "CONDITIONING"}],
    }
    data["definitions"] = {"subgraphs": [definition]}
    data["nodes"].append(_node(6, "sg-uuid", None, [_inp("clip", "CLIP", 2)],
                               [{"name": "CONDITIONING", "type": "CONDITIONING",
                                 "links": [3, 4]}]))
    api = ui_to_api(data)
    assert "6" not in api
    assert api["6:1"] == {"inputs": {"text": "inner prompt", "clip": ["4", 1]},
                          "class_type": "CLIPTextEncode",
                          "_meta": {"title": "CLIP Text Encode (Prompt)"}}
    assert api["3"]["inputs"]["positive"] == ["6:1", 0]


def test_broken_links_are_reported() -> None:
    """A link id missing from the links table is an error naming node and input."""
    data = _base()
    _by_id(data, 8)["inputs"][1]["link"] = 555
    with pytest.raises(WorkflowErrors) as info:
        ui_to_api(data, file="w.json")
    assert "uses link 555" in info.value.errors[0].message
    assert str(info.value.errors[0].loc) == "w.json: node #8, input 'vae'"
