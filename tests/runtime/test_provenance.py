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
from comfyc.runtime.provenance import executed_prompt, executed_workflow, json_text
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


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_plan_gives_what_the_direct_copies_give(path: Path) -> None:
    """A ProvenancePlan's prompt and workflow equal executed_prompt / executed_workflow for
    any values, run after run, and neither the plan's sources nor earlier results change."""
    from comfyc.runtime.provenance import ProvenancePlan

    catalog = _catalog()
    ui = json.loads(path.read_text())
    api = ui_to_api(ui, catalog)
    api[next(iter(api))]["_meta"] = {"title": "T", "dsl": {"bind": "x"}}
    uses, params = _every_widget(api)
    before_ui, before_api = copy.deepcopy(ui), copy.deepcopy(api)
    plan = ProvenancePlan(api, ui, uses)
    first = plan.prompt(params), plan.workflow(params)
    kept = copy.deepcopy(first)
    second_params = {k: _changed(v) for k, v in params.items()}
    second = plan.prompt(second_params), plan.workflow(second_params)
    assert first == kept, "a later run changed an earlier run's chunks"
    assert first == (executed_prompt(api, uses, params), executed_workflow(ui, uses, params))
    assert second == (executed_prompt(api, uses, second_params),
                      executed_workflow(ui, uses, second_params))
    # Their JSON text (the PNG chunks) is json.dumps of the direct copies, cut from the plan's.
    assert json_text(second[0]) == json.dumps(executed_prompt(api, uses, second_params))
    assert json_text(second[1]) == json.dumps(executed_workflow(ui, uses, second_params))
    assert json_text(first[1]) == json.dumps(executed_workflow(ui, uses, params))
    assert (ui, api) == (before_ui, before_api)
    # Params that leave some use out take the direct path (the place keeps its value).
    partial = dict(list(params.items())[1:])
    assert plan.prompt(partial) == executed_prompt(api, uses, partial)
    assert plan.workflow(partial) == executed_workflow(ui, uses, partial)


def test_a_program_plans_its_workflow_from_the_second_save(tmp_path: Path) -> None:
    """Program.run builds the plan when it saves the same workflow again, the PNG chunks stay
    those of the direct copies, and a new prompt in meta (the server's jobs) drops the plan."""
    from PIL import Image

    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.frontends.dsl import parse_dsl
    from comfyc.runtime import load
    from tests.conftest import REPO

    if not (REPO / "runtime" / "models" / "tiny-digits.safetensors").is_file():
        pytest.skip("the tiny model is not built yet")
    text = """
param seed: INT = 42 [min=0, max=18446744073709551615]
ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
pos = CLIPTextEncode(text="a handwritten digit two", clip=ckpt.CLIP)
neg = CLIPTextEncode(text="", clip=ckpt.CLIP)
latent = EmptyLatentImage(width=32, height=32, batch_size=1)
s = KSampler(model=ckpt.MODEL, seed=seed, steps=2, cfg=5.0, sampler_name="euler",
             scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
image = VAEDecode(samples=s, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="plan")
"""
    artifact = tmp_path / "plan.comfyc"
    compile_graph(parse_dsl(text, "plan.cfy", default_catalog()), artifact,
                  CompileOptions(backend="torch"))
    program = load(artifact)
    chunks = []
    for seed in (1, 2, 3):
        result = program.run({"seed": seed}, output_dir=tmp_path / "out")
        (file,) = next(iter(result.files.values()))
        with Image.open(tmp_path / "out" / file["subfolder"] / file["filename"]) as picture:
            chunks.append(json.loads(picture.text["prompt"]))
        expected = executed_prompt(program.meta["prompt"], program.meta["param_uses"],
                                   program.resolve_params({"seed": seed}))
        assert chunks[-1] == json.loads(json.dumps(expected))
    assert program._provenance is not None and program._provenance[1] is not None
    assert [c for c in chunks if any(e.get("inputs", {}).get("seed") == 3
                                     for e in c.values())] == [chunks[2]]
    program.meta["prompt"] = copy.deepcopy(program.meta["prompt"])
    assert program._plan(False) is None
    # A program that carries a UI workflow (its PNG's workflow chunk) plans both chunks.
    ui = _base()
    program.meta.update(prompt=ui_to_api(ui), extra_pnginfo={"workflow": ui},
                        param_uses={"seed": [["3", "seed"]]})
    for seed in (4, 5, 6):
        result = program.run({"seed": seed}, output_dir=tmp_path / "ui")
        (file,) = next(iter(result.files.values()))
        with Image.open(tmp_path / "ui" / file["filename"]) as picture:
            text = dict(picture.text)
        uses = program.meta["param_uses"]
        assert text["prompt"] == json.dumps(executed_prompt(program.meta["prompt"], uses,
                                                            {"seed": seed}))
        assert text["workflow"] == json.dumps(executed_workflow(ui, uses, {"seed": seed}))
        assert _by_id(json.loads(text["workflow"]), 3)["widgets_values"][0] == seed
    assert program._provenance[1] is not None and ui == _base()


def test_plan_text_with_odd_values_and_the_token_in_the_workflow() -> None:
    """Values JSON writes specially (non-ASCII, quotes, NaN, None, nested) come out as
    json.dumps writes them; a workflow that happens to hold the plan's cut token still gets
    its exact text (the plan then dumps it whole)."""
    from comfyc.runtime.provenance import ProvenancePlan

    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 1, "text": "a"}},
              "4": {"class_type": "Note", "inputs": {"text": "\0comfyc-param\0"}}}
    uses = {"seed": [["3", "seed"]], "text": [["3", "text"]]}
    for params in ({"seed": float("nan"), "text": 'é "quoted" \n'},
                   {"seed": None, "text": ["x", {"y": 2}]}):
        for source in (prompt, {k: v for k, v in prompt.items() if k != "4"}):
            got = ProvenancePlan(source, None, uses).prompt(params)
            assert json_text(got) == json.dumps(executed_prompt(source, uses, params))
