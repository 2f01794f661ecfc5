"""Round trips: JSON → DSL → JSON keeps every node, and DSL → JSON → DSL keeps the text.

The corpus is ComfyUI's own example workflows (API prompts and UI workflows converted by the
foundation); the examples are comfyc's; hypothesis adds random graphs from the catalogue.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfyc.compiler.catalog import Catalog, default_catalog
from comfyc.compiler.ir import Graph, Param, Value
from comfyc.compiler.ir.types import COMBO, LINK_TYPES, is_compatible
from comfyc.compiler.passes.validate import validate_graph
from comfyc.frontends.comfy_json.api import graph_from_api, graph_to_api
from comfyc.frontends.comfy_json.ui import ui_to_api
from comfyc.frontends.dsl import parse_dsl

REPO = Path(__file__).resolve().parents[3]
CORPUS = (REPO / ".." / "shared" / "corpus" / "comfyui-examples").resolve()
EXAMPLES = sorted((REPO / "examples").glob("*.cfy"))
EXTRA_OBJECT_INFO = REPO / "tests" / "data" / "comfy" / "object_info_extra.json"


def _catalog() -> Catalog:
    """The built-in catalogue plus the object_info fragment for the corpus's other nodes."""
    catalog = default_catalog().copy()
    catalog.load_object_info(EXTRA_OBJECT_INFO)
    return catalog


CATALOG = _catalog()


def _nodes(prompt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What ComfyUI executes, per id: class_type, inputs, and the title when there is one."""
    out = {}
    for node_id, entry in prompt.items():
        item = {"class_type": entry["class_type"], "inputs": entry["inputs"]}
        title = (entry.get("_meta") or {}).get("title")
        if title is not None:
            item["title"] = title
        out[node_id] = item
    return out


def _json_dsl_json(prompt: dict[str, Any], catalog: Catalog) -> tuple[dict[str, Any], str]:
    text = str(graph_from_api(prompt, catalog, "in.json"))
    again = graph_to_api(parse_dsl(text, "x.cfy", catalog))
    return again, text


def _assert_same_nodes(original: dict[str, Any], again: dict[str, Any]) -> None:
    want = _nodes(original)
    got = _nodes(again)
    for node_id, item in got.items():
        if "title" not in want.get(node_id, {}):
            item.pop("title", None)  # An export always writes one; compare only kept titles.
    assert got == want


def _corpus(pattern: str) -> list[Path]:
    files = sorted(CORPUS.glob(pattern))
    assert files, f"corpus missing at {CORPUS}"
    return files


@pytest.mark.parametrize("path", _corpus("*.api.json"), ids=lambda p: p.name)
def test_api_prompt_survives_json_dsl_json(path: Path) -> None:
    """Every corpus API prompt comes back exactly (class_type, inputs, titles) through the DSL."""
    original = json.loads(path.read_text(encoding="utf-8"))
    again, text = _json_dsl_json(original, CATALOG)
    _assert_same_nodes(original, again)
    assert list(again) == list(_nodes(original)) or set(again) == set(original)
    assert str(parse_dsl(text, "x.cfy", CATALOG)) == text  # The printer is idempotent.


@pytest.mark.parametrize("path", _corpus("*.ui.json"), ids=lambda p: p.name)
def test_ui_workflow_survives_json_dsl_json(path: Path) -> None:
    """Every corpus UI workflow, converted by the foundation, round-trips with its titles."""
    original = ui_to_api(json.loads(path.read_text(encoding="utf-8")), CATALOG, str(path))
    again, text = _json_dsl_json(original, CATALOG)
    _assert_same_nodes(original, again)
    assert str(parse_dsl(text, "x.cfy", CATALOG)) == text


def test_corpus_round_trip_with_the_builtin_catalogue() -> None:
    """Prompts whose nodes are all built in need no object_info to round-trip."""
    builtin = default_catalog()
    done = 0
    for path in _corpus("*.api.json"):
        original = json.loads(path.read_text(encoding="utf-8"))
        if not all(e["class_type"] in builtin for e in original.values()):
            continue
        again, _ = _json_dsl_json(original, builtin)
        _assert_same_nodes(original, again)
        done += 1
    assert done >= 10


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_prints_stably_and_round_trips(path: Path) -> None:
    """print(parse(s)) is a fixed point, and DSL → JSON → DSL gives the same text."""
    graph = parse_dsl(path.read_text(encoding="utf-8"), str(path))
    first = str(graph)
    assert str(parse_dsl(first, "x.cfy")) == first
    exported = graph_to_api(graph)
    assert str(graph_from_api(json.loads(json.dumps(exported)), default_catalog())) == first
    validate_graph(graph_from_api(exported), default_catalog())


def test_examples_are_all_there() -> None:
    """The five examples the brief asks for exist."""
    names = {p.stem for p in EXAMPLES}
    assert {"txt2img", "img2img", "hires_lora", "inpaint", "area"} <= names


def test_params_outputs_and_names_ride_in_meta() -> None:
    """DSL-only facts travel in _meta.dsl; an IMAGE output with no saver gets one, marked."""
    text = (
        'param seed: INT = 7 [min=0, max=100, doc="the seed"]\n'
        'param width: INT = 64\n'
        'latent = EmptyLatentImage(width=width, height=64, batch_size=1)\n'
        'ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")\n'
        'pos = CLIPTextEncode(text="a seven", clip=ckpt.CLIP)\n'
        'out = KSampler(model=ckpt.MODEL, seed=seed, steps=20, cfg=5.0, sampler_name="euler",\n'
        '               scheduler="normal", positive=pos, negative=pos, latent_image=latent,\n'
        '               denoise=1.0)\n'
        'picture = VAEDecode(samples=out, vae=ckpt.VAE)\n'
        'output image = picture\n'
        'output samples = out\n'
    )
    graph = parse_dsl(text, "x.cfy")
    prompt = graph_to_api(graph)
    assert prompt["4"]["inputs"]["seed"] == 7
    assert prompt["4"]["_meta"]["dsl"]["params"]["seed"] == {
        "param": "seed", "type": "INT", "order": 0, "min": 0, "max": 100, "doc": "the seed"}
    saver = prompt["6"]
    assert saver["class_type"] == "SaveImage" and saver["inputs"]["images"] == ["5", 0]
    assert saver["_meta"]["dsl"] == {"synthetic": True}
    back = graph_from_api(prompt)
    assert list(back.params) == ["seed", "width"] and list(back.outputs) == ["image", "samples"]
    assert [n.id for n in back.nodes] == [n.id for n in graph.nodes]  # The saver is dropped.
    assert str(back) == str(graph)
    # Without DSL facts the prompt is plain ComfyUI, still with a SaveImage for the output.
    plain = graph_to_api(graph, dsl_meta=False)
    assert all("dsl" not in e["_meta"] for e in plain.values())
    assert plain["6"]["class_type"] == "SaveImage"


def test_params_override_defaults_on_export() -> None:
    """A value given for a param is written, and the default rides along in _meta."""
    graph = parse_dsl('param w: INT = 64\nEmptyLatentImage(width=w, height=64, batch_size=1)\n')
    prompt = graph_to_api(graph, params={"w": 128})
    assert prompt["1"]["inputs"]["width"] == 128
    assert graph_from_api(prompt).params["w"].default == 64


def test_nasty_values_survive() -> None:
    """pydn's fixture list: trailing backslash, Windows path, emoji key, dict value, 42:0 ids,
    string seed, 0.7000000000000001, 'true' next to true, unicode and multi-line text."""
    prompt = {
        "42:0": {"class_type": "CheckpointLoaderSimple",
                 "inputs": {"ckpt_name": "XL\\turbo\\model.safetensors"},
                 "_meta": {"title": "Loader ✨", "color": "#123"}},
        "007": {"class_type": "CLIPTextEncode",
                "inputs": {"text": "ends with a backslash \\", "clip": ["42:0", 1]}},
        "8": {"class_type": "CLIPTextEncode",
              "inputs": {"text": "line one\n\"quoted\"\tline two 🎉", "clip": ["42:0", 1]}},
        "9": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64.0, "batch_size": "1"}},
        "10": {"class_type": "KSampler",
               "inputs": {"seed": "156680208700286", "steps": 20, "cfg": 0.7000000000000001,
                          "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
                          "model": ["42:0", 0], "positive": ["007", 0], "negative": ["8", 0],
                          "latent_image": ["9", 0], "➕ Add Lora": {"on": False, "lora": None},
                          "flag": "true", "other": True,
                          "list": {"__value__": [1, "a", ["x", 0]]}}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["42:0", 2]}},
        "12": {"class_type": "SaveImage",
               "inputs": {"images": ["11", 0], "filename_prefix": "C:\\out\\img"}},
    }
    again, text = _json_dsl_json(prompt, default_catalog())
    want = _nodes(prompt)
    got = _nodes(again)
    # The __value__ wrapper is how a list literal is written; compare the unwrapped value.
    assert got["10"]["inputs"].pop("list") == {"__value__": [1, "a", ["x", 0]]}
    del want["10"]["inputs"]["list"]
    for node_id in got:
        if "title" not in want[node_id]:
            got[node_id].pop("title")
    assert got == want
    assert again["42:0"]["_meta"]["color"] == "#123"
    assert '@"42:0"' in text and '@"007"' in text and "@extra(" in text
    assert str(parse_dsl(text, "x.cfy")) == text


# --------------------------------------------------------------------- hypothesis
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_WIDGET_VALUES = {
    "INT": st.one_of(st.integers(-2**63, 2**64 - 1), st.just("42")),
    "FLOAT": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-5, 5)),
    "STRING": st.one_of(_TEXT, st.just("a\nb"), st.just("\\"), st.just('"""')),
    "BOOLEAN": st.booleans(),
}
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6)
_NAMES = st.sampled_from(["seed", "prompt", "width", "strength", "flag", "text_2"])
_IDS = st.one_of(st.integers(1, 60).map(str), st.sampled_from(["42:0", "42:1", "007", "a b"]))


@st.composite
def graphs(draw: st.DrawFn, with_dsl_facts: bool) -> Graph:
    """A random graph of catalogued nodes; with DSL facts: params, outputs, bindings, auto ids."""
    catalog = default_catalog()
    schemas = [s for s in catalog if s.class_type != "PrimitiveStringMultiline"]
    graph = Graph()
    used_ids: set[str] = set()
    values: list[Value] = []
    for _ in range(draw(st.integers(1, 7))):
        schema = draw(st.sampled_from(schemas))
        inputs: dict[str, Any] = {}
        for spec in schema.inputs:
            if draw(st.integers(0, 9)) == 0:
                continue  # Inputs may be missing; the printer does not validate.
            if spec.type in LINK_TYPES:
                fits = [v for v in values if is_compatible(v.type, spec.type)]
                if fits:
                    inputs[spec.name] = draw(st.sampled_from(fits))
            elif spec.type == COMBO:
                inputs[spec.name] = draw(st.sampled_from(spec.choices) if spec.choices
                                         else _TEXT)
            elif with_dsl_facts and spec.type in _WIDGET_VALUES and draw(st.booleans()):
                name = draw(_NAMES)
                param = graph.params.get(name)
                if param is None:
                    param = graph.add_param(Param(
                        name, spec.type, draw(_WIDGET_VALUES[spec.type].filter(
                            lambda v, t=spec.type: _fits(t, v))),
                        min=draw(st.sampled_from([None, 0])) if spec.type == "INT" else None))
                if param.type == spec.type:
                    inputs[spec.name] = param
            else:
                inputs[spec.name] = draw(st.one_of(_WIDGET_VALUES.get(spec.type, _JSON), _JSON))
        auto = with_dsl_facts and draw(st.booleans())
        node_id = draw(_IDS.filter(lambda i: i not in used_ids))
        used_ids.add(node_id)
        node = graph.add_node(schema.class_type, schema.output_types(), id=node_id,
                              title=draw(st.none() | _TEXT), inputs=inputs)
        if with_dsl_facts:
            facts: dict[str, Any] = {"auto_id": True} if auto else {}
            if node.outputs and draw(st.booleans()):
                if len(node.outputs) > 1 and draw(st.booleans()):
                    facts["bind"] = [draw(st.sampled_from(["a", "b", "_", "model", "true"]))
                                     for _ in node.outputs]
                else:
                    facts["bind"] = draw(st.sampled_from(["a", "latent", "seed", "x y", "_"]))
            node.meta["dsl"] = facts
            if node.outputs and draw(st.integers(0, 3)) == 0:
                graph.outputs[draw(st.sampled_from(["image", "result", "out"]))] = \
                    draw(st.sampled_from(node.outputs))
        if draw(st.integers(0, 5)) == 0:
            node.meta["extra_inputs"] = {"➕ Add Lora": draw(_JSON)}
        values.extend(node.outputs)
    for name in [n for n, p in graph.params.items() if not p.uses()]:
        graph.remove_param(name)  # An unused param cannot survive export (by design).
    return graph


def _fits(type_name: str, value: Any) -> bool:
    if type_name == "INT":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "FLOAT":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_name == "STRING":
        return isinstance(value, str)
    return isinstance(value, bool)


# NOTE: COMFYC_DSL_EXAMPLES raises the count for a deeper (slower) search.
_SETTINGS = settings(max_examples=int(os.environ.get("COMFYC_DSL_EXAMPLES", "40")), deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@_SETTINGS
@given(graphs(with_dsl_facts=False))
def test_random_graphs_json_dsl_json(graph: Graph) -> None:
    """Any catalogued graph: JSON → DSL → JSON gives the same nodes, inputs and titles."""
    prompt = json.loads(json.dumps(graph_to_api(graph)))
    again, text = _json_dsl_json(prompt, default_catalog())
    assert _nodes(again) == _nodes(prompt)
    assert str(parse_dsl(text, "x.cfy")) == text


@_SETTINGS
@given(graphs(with_dsl_facts=True))
def test_random_graphs_dsl_json_dsl(graph: Graph) -> None:
    """Any graph with params, outputs and names: DSL → JSON → DSL gives the same text."""
    text = str(graph)
    parsed = parse_dsl(text, "x.cfy")
    assert str(parsed) == text
    prompt = json.loads(json.dumps(graph_to_api(parsed)))
    assert str(graph_from_api(prompt, default_catalog())) == text


def test_hypothesis_names_are_printable() -> None:
    """The strategies' odd binding names are among the cases the printer must rename."""
    assert not {"true", "x y", "_"} <= set(string.ascii_letters)
