"""A runtime param that sets an image's or a batch's size makes the compiler export stages
that take any shape (``compile_graph``'s ``shape_params``, the registry's ``shape_inputs``).

The compiler records stage shapes from one probe run with the params' defaults. Before, a
``param batch: INT`` bound to ``EmptyLatentImage.batch_size`` compiled fine and then failed at
run time when a run asked for batch 2 (the VAE decoder was exported for batch 1).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph, shape_params
from comfyc.frontends.dsl import parse_dsl
from comfyc.runtime.artifact import load, read_manifest
from comfyc.runtime.nodes import registry

REPO = Path(__file__).resolve().parents[3]


def _workflow(width: str = "64", batch: str = "1") -> str:
    text = (REPO / "examples" / "txt2img.cfy").read_text()
    text = re.sub(r"steps=\d+", "steps=4", text)
    text = re.sub(r"width=\d+", f"width={width}", text)
    return re.sub(r"batch_size=\d+", f"batch_size={batch}", text)


def _sized_workflow() -> str:
    return _workflow("size", "batch").replace(
        "param prompt:", "param size: INT = 64 [min=64, max=256]\n"
        "param batch: INT = 1 [min=1, max=4]\nparam prompt:")


def test_the_registry_names_shape_inputs() -> None:
    nodes = registry()
    assert nodes.get("EmptyLatentImage").shape_inputs == ("width", "height", "batch_size")
    assert nodes.get("LoadImage").shape_inputs == ("image",)
    assert nodes.get("KSampler").shape_inputs == ()
    # The UNet runs on each area's crop of the latent; a mask's size can become an image's.
    for area in ("ConditioningSetArea", "ConditioningSetAreaPercentage"):
        assert nodes.get(area).shape_inputs == ("width", "height", "x", "y")
    assert nodes.get("SolidMask").shape_inputs == ("width", "height")
    assert nodes.get("CropMask").shape_inputs == ("x", "y", "width", "height")
    assert nodes.get("ConditioningSetAreaStrength").shape_inputs == ()


def test_shape_params_are_found() -> None:
    catalog = default_catalog()
    assert shape_params(parse_dsl(_sized_workflow(), "a.cfy", catalog)) == ["size", "batch"]
    # The seed and the prompt do not change any shape.
    assert shape_params(parse_dsl(_workflow(), "b.cfy", catalog)) == []


def test_a_batch_and_width_param_run_at_other_sizes(tmp_path: Path) -> None:
    catalog = default_catalog()
    said: list[str] = []
    sized = tmp_path / "sized.comfyc"
    compile_graph(parse_dsl(_sized_workflow(), "sized.cfy", catalog), sized, CompileOptions(),
                  progress=said.append)
    assert any("params size, batch set image, batch or area sizes" in m for m in said), said
    stages = read_manifest(sized).stages
    assert stages and all(e.dynamic for e in stages.values() if e.file), stages

    # The same workflow at batch 2 and width 96 as constants: static stages of that shape.
    fixed = tmp_path / "fixed.comfyc"
    compile_graph(parse_dsl(_workflow("96", "2"), "fixed.cfy", catalog), fixed, CompileOptions())
    assert not any(e.dynamic for e in read_manifest(fixed).stages.values())

    params = {"seed": 3, "prompt": "a handwritten digit four"}
    ours = load(sized).run({**params, "size": 96, "batch": 2}, save=False)
    theirs = load(fixed).run(params, save=False)
    assert ours.images.keys() == theirs.images.keys()
    for key, image in ours.images.items():
        assert np.asarray(image).shape == (2, 64, 96, 3)
        np.testing.assert_allclose(image, theirs.images[key], atol=2 / 255)
    # The defaults still run as compiled.
    for image in load(sized).run(params, save=False).images.values():
        assert np.asarray(image).shape == (1, 64, 64, 3)


_AREA = """
param seed: INT = 42 [min=0, max=18446744073709551615]
{param}
ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
one = CLIPTextEncode(text="a handwritten digit one", clip=ckpt.CLIP)
positive = ConditioningSetArea(conditioning=one, width={width}, height=64, x=0, y=0,
                               strength=1.0)
negative = CLIPTextEncode(text="", clip=ckpt.CLIP)
latent = EmptyLatentImage(width=128, height=64, batch_size=1)
sampler = KSampler(model=ckpt.MODEL, seed=seed, steps=3, cfg=5.0, sampler_name="euler",
                   scheduler="normal", positive=positive, negative=negative,
                   latent_image=latent, denoise=1.0)
image = VAEDecode(samples=sampler, vae=ckpt.VAE)
output image
"""


def test_an_area_param_runs_at_other_areas(tmp_path: Path) -> None:
    """At its default the area covers the whole latent, so the probe saw one UNet shape; a
    narrower area runs the UNet on an 8x8 crop, which a stage exported for 8x16 refused."""
    catalog = default_catalog()
    sized = tmp_path / "area.comfyc"
    compile_graph(parse_dsl(_AREA.format(param="param area_width: INT = 128 [min=64, max=128]",
                                         width="area_width"), "area.cfy", catalog),
                  sized, CompileOptions())
    assert all(e.dynamic for e in read_manifest(sized).stages.values() if e.file)
    fixed = tmp_path / "fixed.comfyc"
    compile_graph(parse_dsl(_AREA.format(param="", width="64"), "fixed.cfy", catalog), fixed,
                  CompileOptions())

    ours = load(sized).run({"seed": 5, "area_width": 64}, save=False).images
    theirs = load(fixed).run({"seed": 5}, save=False).images
    assert ours.keys() == theirs.keys()
    for key, image in ours.items():
        assert np.asarray(image).shape == (1, 64, 128, 3)
        np.testing.assert_allclose(image, theirs[key], atol=2 / 255)
