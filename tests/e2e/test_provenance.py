"""Images remember the user's workflow: for every example on the tiny model, the PNG an
artifact writes carries the workflow (params at the values of the run, no compiler
internals), `comfyc check` accepts it, and `comfyc run PNG` draws the same pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyc.cli.commands.check import check_file
from comfyc.cli.main import main
from comfyc.cli.templates import model_files
from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.frontends.load import load_workflow
from comfyc.runtime import load
from comfyc.runtime.nodes import registry
from comfyc.runtime.nodes.schema import INTERNAL_CATEGORY
from tests.conftest import REPO

EXAMPLES = REPO / "examples"
INPUT = EXAMPLES / "input"
TINY = REPO / "runtime" / "models" / "tiny-digits.safetensors"
#: The examples that run on the embedded tiny model alone (the others need model files: an
#: SDXL or Flux checkpoint, an upscale model, a ControlNet; their own tests make those).
TINY_EXAMPLES = sorted(p.stem for p in EXAMPLES.glob("*.cfy")
                       if "tiny-digits.safetensors" in p.read_text()
                       and not model_files(p.read_text(), p.name))

pytestmark = pytest.mark.skipif(not TINY.is_file(), reason="the tiny model is not built yet")


def _png(folder: Path) -> Path:
    [path] = sorted(folder.rglob("*.png"))
    return path


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def assert_user_workflow(chunks: dict[str, str], params: dict[str, object],
                         uses: dict[str, list[list[str]]]) -> dict[str, object]:
    """The prompt chunk is a ComfyUI prompt of built-in classes with the params' values."""
    prompt = json.loads(chunks["prompt"])
    for entry in prompt.values():
        node = registry().get(entry["class_type"])
        assert node is not None and node.schema.category != INTERNAL_CATEGORY, entry
        assert set(entry.get("_meta", {})) <= {"title"}, entry["_meta"]
        for value in entry["inputs"].values():
            assert not (isinstance(value, dict) and set(value) & {"$const", "$stage", "$ref"})
    for name, value in params.items():
        for node_id, input_name in uses[name]:
            assert prompt[node_id]["inputs"][input_name] == value, (name, node_id)
    return prompt


@pytest.mark.parametrize("name", TINY_EXAMPLES)
def test_artifact_png_reruns_to_the_same_pixels(name: str, tmp_path: Path) -> None:
    """Artifact PNG → `comfyc check PNG` passes and `comfyc run PNG` gives the same pixels
    (both on PyTorch, so equal to the bit)."""
    artifact = tmp_path / f"{name}.comfyc"
    compile_graph(load_workflow(EXAMPLES / f"{name}.cfy"), artifact,
                  CompileOptions(backend="torch", input_dir=str(INPUT)))
    program = load(artifact)
    params: dict[str, object] = {"seed": 123457}
    if "prompt" in program.params:
        params["prompt"] = "a handwritten digit four"
    program.run(params, output_dir=tmp_path / "first", input_dir=INPUT)
    first = _png(tmp_path / "first")
    chunks = dict(Image.open(first).text)
    assert set(chunks) == {"prompt"}  # A .cfy file carries no UI workflow.
    assert_user_workflow(chunks, params, program.meta["param_uses"])

    code, report = check_file(str(first), default_catalog())
    assert code == 0, report.get("errors")
    assert main(["run", str(first), "-o", str(tmp_path / "again"), "--input-dir", str(INPUT),
                 "-q"]) == 0
    again = _png(tmp_path / "again")
    assert np.array_equal(_pixels(first), _pixels(again)), (
        f"{name}: max difference {np.abs(_pixels(first) - _pixels(again)).max()}/255")
    # The second image carries the same workflow: provenance survives any number of reruns.
    assert json.loads(Image.open(again).text["prompt"]) == json.loads(chunks["prompt"])


def test_ui_workflow_chunk_gets_the_param_values(tmp_path: Path) -> None:
    """A UI workflow's image carries the workflow chunk with the run's seed in the sampler's
    widget, and ComfyUI's conversion of that chunk gives the prompt chunk."""
    from comfyc.frontends.comfy_json.ui import ui_to_api
    from tests.frontends.comfy_json.test_ui_features import _base, _by_id

    ui = _base()
    _by_id(ui, 6)["widgets_values"] = ["a handwritten digit two"]
    _by_id(ui, 3)["widgets_values"] = [7, "randomize", 4, 5.0, "euler", "normal", 1.0]
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(ui))
    assert main(["run", str(path), "--param", "seed=99", "-o", str(tmp_path / "out"),
                 "-q"]) == 0
    chunks = Image.open(_png(tmp_path / "out")).text
    workflow = json.loads(chunks["workflow"])
    assert _by_id(workflow, 3)["widgets_values"][:2] == [99, "randomize"]
    prompt = json.loads(chunks["prompt"])
    assert prompt["3"]["inputs"]["seed"] == 99
    converted = ui_to_api(workflow)
    assert {k: v["inputs"] for k, v in converted.items()} == {
        k: v["inputs"] for k, v in prompt.items()}
