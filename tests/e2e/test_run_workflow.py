"""`comfyc run WORKFLOW` on the torch backend, end to end on a random tiny SD1 model."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA

BASE = json.loads((DATA / "comfy" / "txt2img.api.json").read_text())


def _workflow(tmp_path: Path, **changes: object) -> Path:
    data = copy.deepcopy(BASE)
    data["4"]["inputs"]["ckpt_name"] = "random-sd1.safetensors"
    data["3"]["inputs"].update(steps=4, **changes)
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(data))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "comfyc.cli.main", *args],
                          capture_output=True, text=True, timeout=300)


def test_run_writes_png_with_the_prompt_that_made_it(tmp_path: Path,
                                                     random_models: Path) -> None:
    """run writes ComfyUI-named PNGs whose prompt chunk converts back to the executed prompt."""
    wf = _workflow(tmp_path)
    out = tmp_path / "out"
    result = _cli("run", str(wf), "--models-dir", str(random_models), "--output", str(out),
                  "--param", "seed=5", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    (path,) = summary["outputs"]["9"]
    assert Path(path).name == "digits_00001_.png"
    assert set(summary["timings"]["stages"]) >= {"unet_" + k.split("_", 1)[1] for k in
                                                summary["timings"]["stages"]
                                                if k.startswith("unet_")}
    image = Image.open(path)
    assert image.size == (64, 64) and image.mode == "RGB"
    back = _cli("convert", path, "--to", "api")
    assert back.returncode == 0, back.stderr
    prompt = json.loads(back.stdout)
    expected = json.loads(wf.read_text())
    expected["3"]["inputs"]["seed"] = 5  # The executed value of the seed param.
    assert {k: v["inputs"] for k, v in prompt.items()} == {
        k: v["inputs"] for k, v in expected.items()}
    # A second run numbers the next file, as ComfyUI does.
    again = _cli("run", str(wf), "--models-dir", str(random_models), "--output", str(out),
                 "--quiet")
    assert again.returncode == 0 and (out / "digits_00002_.png").exists()


def test_seed_changes_the_image_and_is_reproducible(tmp_path: Path,
                                                    random_models: Path) -> None:
    """Same seed, same pixels; another seed, other pixels."""
    from comfyc.compiler.lowering.program import lower_to_program
    from comfyc.compiler.passes.base import PassContext, PassManager
    from comfyc.compiler.passes.runtime_params import RuntimeParamsPass
    from comfyc.compiler.passes.validate import ValidatePass
    from comfyc.frontends.load import load_workflow

    graph = load_workflow(_workflow(tmp_path))
    ctx = PassContext()
    PassManager([ValidatePass(ctx), RuntimeParamsPass(ctx)], verify=True)(graph)
    program = lower_to_program(graph, models_dir=str(random_models))
    a = program.run({"seed": 1}, save=False).images["9"]
    b = program.run({"seed": 1}, save=False).images["9"]
    c = program.run({"seed": 2}, save=False).images["9"]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_unsupported_nodes_fail_before_any_work(tmp_path: Path, random_models: Path) -> None:
    """Nodes comfyc has no implementation of (here two an --object-info file defines) are
    named in the error, before any model is loaded, and nothing is written."""
    data = copy.deepcopy(BASE)
    data["4"]["inputs"]["ckpt_name"] = "random-sd1.safetensors"
    data["20"] = {"class_type": "ModelMergeSimple", "inputs": {
        "model1": ["4", 0], "model2": ["4", 0], "ratio": 0.5}}
    data["21"] = {"class_type": "ModelMergeSimple", "inputs": {
        "model1": ["20", 0], "model2": ["4", 0], "ratio": 0.25}}
    data["3"]["inputs"]["model"] = ["21", 0]
    wf = tmp_path / "merge.json"
    wf.write_text(json.dumps(data))
    out = tmp_path / "out"
    result = _cli("run", str(wf), "--models-dir", str(random_models), "--output", str(out),
                  "--object-info", str(DATA / "comfy" / "object_info_extra.json"))
    assert result.returncode == 1
    assert "#20 (ModelMergeSimple) cannot run" in result.stderr
    assert "#21 (ModelMergeSimple) cannot run" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_bad_params_are_reported(tmp_path: Path, random_models: Path) -> None:
    """Unknown and ill-typed params are clear errors."""
    wf = _workflow(tmp_path)
    result = _cli("run", str(wf), "--models-dir", str(random_models), "--param", "sed=1",
                  "--output", str(tmp_path / "o"))
    assert result.returncode == 1 and "unknown param 'sed'" in result.stderr
    assert "this program's params: seed" in result.stderr
    result = _cli("run", str(wf), "--models-dir", str(random_models), "--param", "seed=x",
                  "--output", str(tmp_path / "o"))
    assert result.returncode == 1 and "'x' is not a valid INT value" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["../escape.safetensors", "/etc/passwd"])
def test_model_names_cannot_escape_the_models_folder(tmp_path: Path, random_models: Path,
                                                     name: str) -> None:
    """Checkpoint names with .. or absolute paths are refused."""
    data = copy.deepcopy(BASE)
    data["4"]["inputs"]["ckpt_name"] = name
    wf = tmp_path / "esc.json"
    wf.write_text(json.dumps(data))
    result = _cli("run", str(wf), "--models-dir", str(random_models), "--output",
                  str(tmp_path / "o"))
    assert result.returncode != 0 and "Traceback" not in result.stderr
