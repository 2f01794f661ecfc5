"""Flux and SD3.5 workflows on tiny seeded models: ComfyUI's own Flux-dev example (UI and API
forms, from the shared corpus) and comfyc's Flux/SD3.5 examples check, compile and run.

The models carry the published files' names in a models folder, so the workflows run unchanged
apart from a smaller latent (64 pixels instead of 1024) and fewer steps, to keep CI short.
Pixel parity with diffusers is tests/e2e/test_oracle_flow.py; here the artifact (ONNX stages)
must equal the torch path within 2/255, a constant-prompt Flux artifact must ship no text
encoder, and a prompt param must run in the lean runtime with torch blocked.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
from comfyc.compiler.passes.base import PassContext, PassOptions
from comfyc.compiler.pipeline import run_pipeline
from comfyc.frontends.load import load_workflow
from comfyc.runtime import load
from comfyc.runtime.artifact import read_manifest
from tests.conftest import REPO

CORPUS_NAME = "flux__flux_dev_example"
SIZE, STEPS = 64, 4


@pytest.fixture(scope="module")
def cache(flow_models: Path) -> TorchModelCache:
    return TorchModelCache(str(flow_models))


def _small(graph):  # type: ignore[no-untyped-def]
    """The workflow at SIZE pixels (ModelSamplingFlux's size too) and STEPS steps."""
    for node in graph.nodes:
        if node.class_type in ("EmptySD3LatentImage", "EmptyLatentImage", "ModelSamplingFlux"):
            graph.set_input(node, "width", SIZE)
            graph.set_input(node, "height", SIZE)
        if node.class_type in ("BasicScheduler", "KSampler"):
            graph.set_input(node, "steps", STEPS)
    return graph


def _torch(graph, models: Path, cache: TorchModelCache, params=None):  # type: ignore[no-untyped-def]
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    return lower_to_program(graph, cache=cache).run(params or {}, save=False).images


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "comfyc.cli.main", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=600)


def _stage_kinds(artifact: Path) -> dict[str, str]:
    manifest = read_manifest(artifact, verify=False)
    return {name: entry.kind for name, entry in manifest.stage_entries().items()}


@pytest.mark.parametrize("form", ["ui", "api"])
def test_comfyui_flux_example_checks(corpus: Path, flow_models: Path, form: str) -> None:
    result = _cli("check", str(corpus / f"{CORPUS_NAME}.{form}.json"), "--models-dir",
                  str(flow_models))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_comfyui_flux_example_compiles_and_runs(corpus: Path, flow_models: Path,
                                                cache: TorchModelCache, tmp_path: Path) -> None:
    """The UI form compiled (the transformer as an ONNX stage, the prompt folded: no text
    encoder in the artifact) equals the API form on torch within 2/255."""
    artifact = tmp_path / "flux.comfyc"
    graph = _small(load_workflow(corpus / f"{CORPUS_NAME}.ui.json"))
    compile_graph(graph, artifact, CompileOptions(models_dir=str(flow_models)))
    kinds = _stage_kinds(artifact)
    assert "text_encoder" not in kinds.values(), kinds
    manifest = read_manifest(artifact, verify=False)
    unet = next(e for e in manifest.stage_entries().values() if e.kind == "unet")
    assert unet.file and unet.file.endswith(".onnx") and not unet.fallback, unet
    ours = load(artifact).run({}, save=False).images
    reference = _torch(_small(load_workflow(corpus / f"{CORPUS_NAME}.api.json")), flow_models,
                       cache)
    (image,) = ours.values()
    (want,) = reference.values()
    assert image.shape == (1, SIZE, SIZE, 3) and image.std() > 0.01
    assert float(np.abs(image - want).max()) <= 2 / 255


@pytest.mark.parametrize("name,folder", [("flux_dev", ""), ("flux_schnell", ""),
                                         ("sd35", "sd3")])
def test_flow_examples_run(name: str, folder: str, flow_models: Path) -> None:
    models = flow_models / folder if folder else flow_models
    images = _torch(_small(load_workflow(REPO / "examples" / f"{name}.cfy")), models,
                    TorchModelCache(str(models)))
    image = images["image"]
    assert image.shape == (1, SIZE, SIZE, 3) and np.isfinite(image).all() and image.std() > 0.01


def test_flux_prompt_param_runs_without_torch(flow_models: Path, cache: TorchModelCache,
                                              tmp_path: Path) -> None:
    """flux_schnell's prompt is a param: the artifact carries CLIP-L and T5 as ONNX stages,
    and runs in the lean runtime with torch blocked, equal to the torch path within 2/255."""
    path = REPO / "examples" / "flux_schnell.cfy"
    artifact = tmp_path / "schnell.comfyc"
    compile_graph(_small(load_workflow(path)), artifact,
                  CompileOptions(models_dir=str(flow_models)))
    manifest = read_manifest(artifact, verify=False)
    encoders = {n: e for n, e in manifest.stage_entries().items() if e.kind == "text_encoder"}
    assert len(encoders) == 2 and all(e.file.endswith(".onnx") and not e.fallback
                                      for e in encoders.values()), encoders
    prompt = "a (lighthouse:1.3) in a storm"
    out = tmp_path / "image.npy"
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "diffusers", "transformers", "onnx"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import comfyc.runtime
        program = comfyc.runtime.load({str(artifact)!r})
        image = program.run({{"prompt": {prompt!r}, "seed": 3}}, save=False).images["image"]
        np.save({str(out)!r}, image)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    want = _torch(_small(load_workflow(path)), flow_models, cache,
                  {"prompt": prompt, "seed": 3})["image"]
    assert float(np.abs(np.load(out) - want).max()) <= 2 / 255


def test_init_flux_and_sd3_templates_check(flow_models: Path, tmp_path: Path) -> None:
    for template, models in (("flux", flow_models), ("sd3", flow_models / "sd3")):
        target = tmp_path / f"{template}.cfy"
        result = _cli("init", "--template", template, "-o", str(target))
        assert result.returncode == 0, result.stderr
        result = _cli("check", str(target), "--models-dir", str(models))
        assert result.returncode == 0, result.stderr


def test_flux_transformer_as_a_torch_stage(corpus: Path, flow_models: Path, tmp_path: Path
                                           ) -> None:
    """backend unet=torch stores the diffusers transformer (the runtime wraps it in
    ComfyUI's call again); the image equals the ONNX artifact's within 2/255."""
    graph = _small(load_workflow(corpus / f"{CORPUS_NAME}.api.json"))
    torch_artifact = tmp_path / "torch.comfyc"
    compile_graph(graph, torch_artifact, CompileOptions(models_dir=str(flow_models),
                                                        backend={"unet": "torch"}))
    manifest = read_manifest(torch_artifact, verify=False)
    unet = next(e for e in manifest.stage_entries().values() if e.kind == "unet")
    assert unet.backend == "torch" and unet.torch
    onnx_artifact = tmp_path / "onnx.comfyc"
    compile_graph(_small(load_workflow(corpus / f"{CORPUS_NAME}.api.json")), onnx_artifact,
                  CompileOptions(models_dir=str(flow_models)))
    (a,) = load(torch_artifact).run({}, save=False).images.values()
    (b,) = load(onnx_artifact).run({}, save=False).images.values()
    assert float(np.abs(a - b).max()) <= 2 / 255


def test_flux_fp16_artifact(corpus: Path, flow_models: Path, cache: TorchModelCache,
                            tmp_path: Path) -> None:
    """`compile --fp16` on Flux: float16 ONNX stages (transformer and VAE decoder) that run
    and stay close to the torch path (float16 rounding: a looser bound than fp32's 2/255)."""
    import onnx

    artifact = tmp_path / "flux16.comfyc"
    graph = _small(load_workflow(corpus / f"{CORPUS_NAME}.ui.json"))
    compile_graph(graph, artifact, CompileOptions(models_dir=str(flow_models), fp16=True))
    manifest = read_manifest(artifact, verify=False)
    unet = next(e for e in manifest.stage_entries().values() if e.kind == "unet")
    model = onnx.load(str(artifact / unet.file), load_external_data=False)
    halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert halves, "no float16 weights in the fp16 transformer stage"
    (image,) = load(artifact).run({}, save=False).images.values()
    reference = _torch(_small(load_workflow(corpus / f"{CORPUS_NAME}.api.json")), flow_models,
                       cache)
    (want,) = reference.values()
    assert image.shape == want.shape and np.isfinite(image).all() and image.std() > 0.01
    assert float(np.abs(image - want).mean()) <= 2 / 255
