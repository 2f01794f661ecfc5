"""SDXL workflows on tiny seeded SDXL checkpoints: ComfyUI's own SDXL example (UI and API
forms, from the shared corpus) and comfyc's SDXL examples check, compile and run.

The checkpoints carry the real files' names (``sd_xl_base_1.0.safetensors`` …) in a models
folder, so the workflows run unchanged apart from a smaller latent (64–128 pixels instead
of 1024, to keep CI short). Pixel parity with diffusers is tests/e2e/test_oracle_sdxl.py;
here the artifact must equal the torch path within 2/255 and the schedules be ComfyUI's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
from comfyc.compiler.passes.base import PassContext, PassOptions
from comfyc.compiler.pipeline import run_pipeline
from comfyc.frontends.load import load_workflow
from comfyc.runtime import load
from tests.conftest import REPO, SDXL_BASE

TURBO = "sd_xl_turbo_1.0_fp16.safetensors"
CORPUS_NAME = "sdxl__sdxl_simple_example"


@pytest.fixture(scope="module")
def models(sdxl_models: Path) -> Path:
    """The tiny SDXL folder, with the base checkpoint also under SDXL-Turbo's name."""
    turbo = sdxl_models / "checkpoints" / TURBO
    if not turbo.exists():
        os.link(sdxl_models / "checkpoints" / SDXL_BASE, turbo)
    return sdxl_models


@pytest.fixture(scope="module")
def cache(models: Path) -> TorchModelCache:
    return TorchModelCache(str(models))


def _small(graph, size: int):  # type: ignore[no-untyped-def]
    for node in graph.nodes:
        if node.class_type == "EmptyLatentImage":
            graph.set_input(node, "width", size)
            graph.set_input(node, "height", size)
    return graph


def _torch(graph, models: Path, cache: TorchModelCache):  # type: ignore[no-untyped-def]
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    return lower_to_program(graph, cache=cache).run({}, save=False).images


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "comfyc.cli.main", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600)


@pytest.mark.parametrize("form", ["ui", "api"])
def test_comfyui_sdxl_example_checks(corpus: Path, models: Path, form: str) -> None:
    path = corpus / f"{CORPUS_NAME}.{form}.json"
    result = _cli("check", str(path), "--models-dir", str(models))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_comfyui_sdxl_example_compiles_and_runs(corpus: Path, models: Path,
                                                cache: TorchModelCache,
                                                tmp_path: Path) -> None:
    """The UI form compiled (ONNX stages for two checkpoints, 20+5 steps of the hand-over)
    equals the API form run on torch within 2/255."""
    artifact = tmp_path / "sdxl.comfyc"
    graph = _small(load_workflow(corpus / f"{CORPUS_NAME}.ui.json"), 128)
    compile_graph(graph, artifact, CompileOptions(models_dir=str(models)))
    ours = load(artifact).run({}, save=False).images
    reference = _torch(_small(load_workflow(corpus / f"{CORPUS_NAME}.api.json"), 128), models,
                       cache)
    assert len(ours) == 1 and len(reference) == 1
    (image,) = ours.values()
    (want,) = reference.values()
    assert image.shape == (1, 128, 128, 3)
    assert np.isfinite(image).all() and image.std() > 0.01
    assert float(np.abs(image - want).max()) <= 2 / 255


def test_sdxl_artifact_with_torch_stages(models: Path, cache: TorchModelCache,
                                        tmp_path: Path) -> None:
    """``compile --backend torch`` stores the SDXL UNet (the diffusers UNet behind ComfyUI's
    ``(x, t, context, y)`` call) and the artifact's image is the torch path's, bit for bit.

    The stored modules need no gradients, as the torch path's: a weight that requires grad
    makes torch split its 3-D matmuls differently, and on some CPUs (an AMX Xeon's MKL) that
    moved the image by 3e-6."""
    path = REPO / "examples" / "sdxl_txt2img.cfy"
    artifact = tmp_path / "sdxl-torch.comfyc"
    compile_graph(_small(load_workflow(path), 64), artifact,
                  CompileOptions(backend="torch", models_dir=str(models)))
    (unet,) = [folder for folder in (artifact / "torch").iterdir()
               if folder.name.startswith("unet")]
    assert '"UNet2DConditionModel"' in (unet / "config.json").read_text()
    program = load(artifact)
    stored = [stage for stage in program.stages.values()
              if getattr(stage, "backend", None) == "torch"]
    assert any(stage.kind == "unet" for stage in stored)
    assert not [name for stage in stored for name, weight in stage.module.named_parameters()
                if weight.requires_grad]
    ours = program.run({}, save=False).images["image"]
    want = _torch(_small(load_workflow(path), 64), models, cache)["image"]
    np.testing.assert_array_equal(ours, want)


@pytest.mark.parametrize("name", ["sdxl_txt2img", "sdxl_refiner"])
def test_sdxl_examples_run(name: str, models: Path, cache: TorchModelCache) -> None:
    images = _torch(_small(load_workflow(REPO / "examples" / f"{name}.cfy"), 64), models, cache)
    image = images["image"]
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_sdxl_turbo_example_compiles_one_folded_step(models: Path, cache: TorchModelCache,
                                                     tmp_path: Path) -> None:
    """SDTurboScheduler folds to ComfyUI's 1-step schedule (timestep 999 → sigma 14.6146);
    the artifact's seed stays a param and its image equals the torch path's."""
    from comfyc.runtime.schedules import sd_turbo_scheduler

    path = REPO / "examples" / "sdxl_turbo.cfy"
    graph = _small(load_workflow(path), 64)
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    folded = [n for n in graph.nodes if n.class_type == "FoldedSigmas"]
    assert len(folded) == 1
    sigmas = graph.constants[folded[0].inputs["key"]]
    np.testing.assert_array_equal(sigmas, sd_turbo_scheduler(None, 1))
    assert sigmas.shape == (2,) and abs(float(sigmas[0]) - 14.6146) < 1e-3
    artifact = tmp_path / "turbo.comfyc"
    compile_graph(_small(load_workflow(path), 64), artifact,
                  CompileOptions(models_dir=str(models)))
    program = load(artifact)
    assert "seed" in program.params
    ours = program.run({"seed": 5}, save=False).images["image"]
    want = _torch(_small(load_workflow(path), 64), models, cache)
    reference = lower_to_program(graph, cache=cache).run({"seed": 5}, save=False).images
    assert float(np.abs(ours - reference["image"]).max()) <= 2 / 255
    assert float(np.abs(ours - want["image"]).max()) > 0  # seed 42 vs 5: another image


def test_init_sdxl_template_checks(models: Path, tmp_path: Path) -> None:
    target = tmp_path / "sdxl.cfy"
    result = _cli("init", "--template", "sdxl", "-o", str(target))
    assert result.returncode == 0, result.stderr
    text = target.read_text()
    assert f'ckpt_name="{SDXL_BASE}"' in text and "--models-dir models" in text
    result = _cli("check", str(target), "--models-dir", str(models))
    assert result.returncode == 0, result.stderr


def test_sdxl_sampler_step_graph(models: Path, tmp_path: Path) -> None:
    """The SDXL UNet's step graph (issue #22) takes the ADM input ``y`` of both CFG rows:
    dpmpp_2m/karras steps all go through it, and the image equals the numpy steps' bit for
    bit."""
    from comfyc.runtime.backends.step_graph import StepGraphUNet

    artifact = tmp_path / "sdxl.comfyc"
    compile_graph(_small(load_workflow(REPO / "examples" / "sdxl_txt2img.cfy"), 64), artifact,
                  CompileOptions(models_dir=str(models)))
    fused, plain = load(artifact), load(artifact, step_graph=False)
    ours = fused.run({}, save=False).images
    want = plain.run({}, save=False).images
    (unet,) = [s for s in fused.stages.values() if getattr(s, "kind", None) == "unet"]
    assert isinstance(unet, StepGraphUNet) and unet.extra_inputs == ("y",)
    assert unet.step_calls > 0 and unet._plain is None
    np.testing.assert_array_equal(ours["image"], want["image"])
