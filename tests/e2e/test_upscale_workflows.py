"""Upscale models in workflows: ComfyUI's own ESRGAN example (UI and API forms, from the shared
corpus) checks, compiles (the network as an ONNX stage) and runs on a tiny SD1 checkpoint and a
tiny seeded RealESRGAN x2, saved under the example's names (a pickled ``.ckpt`` and a ``.pth``
with ``params_ema``, as the published files are).

The network against spandrel's own model is tests/compiler/models/test_upscale.py; ComfyUI's
tiling against ComfyUI's ``tiled_scale`` is tests/runtime/nodes/test_comfyui_images.py. Here
the artifact must equal the torch path within 2/255 and the upscaled image must be the model's
scale.
"""

from __future__ import annotations

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
from comfyc.runtime.artifact import read_manifest
from tests.conftest import REPO

CORPUS_NAME = "upscale_models__esrgan_example"
SIZE = 64


def _pickle_friendly_sd1():  # type: ignore[no-untyped-def]
    """A tiny random SD1 whose config a plain ``.ckpt`` state dict gives back (ComfyUI's
    conventions: 64-wide CLIP heads, 8 UNet heads, VAE group norms of 32)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(3)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=1, max_position_embeddings=77, projection_dim=64,
        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407))
    unet = UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
        attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=32,
        latent_channels=4)
    return unet.eval(), vae.eval(), text.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from comfyc.compiler.models.single_file import save_single_file
    from comfyc.compiler.models.upscale import write_random_upscale_model

    root = tmp_path_factory.mktemp("upscale-models")
    (root / "checkpoints").mkdir()
    unet, vae, text = _pickle_friendly_sd1()
    single = root / "sd1.safetensors"
    save_single_file(single, unet, vae, text)
    from safetensors.torch import load_file

    torch.save({"state_dict": load_file(str(single))},
               str(root / "checkpoints" / "v1-5-pruned-emaonly.ckpt"))
    single.unlink()
    write_random_upscale_model(root / "upscale_models" / "RealESRGAN_x2.pth", "realesrgan-x2",
                               "tiny", seed=4)
    return root


def _small(graph):  # type: ignore[no-untyped-def]
    for node in graph.nodes:
        if node.class_type == "EmptyLatentImage":
            graph.set_input(node, "width", SIZE)
            graph.set_input(node, "height", SIZE)
        if node.class_type == "KSampler":
            graph.set_input(node, "steps", 4)
    return graph


@pytest.mark.parametrize("form", ["ui", "api"])
def test_comfyui_esrgan_example_checks(corpus: Path, models: Path, form: str) -> None:
    result = subprocess.run([sys.executable, "-m", "comfyc.cli.main", "check",
                             str(corpus / f"{CORPUS_NAME}.{form}.json"), "--models-dir",
                             str(models)], capture_output=True, text=True, cwd=REPO,
                            timeout=600)
    assert result.returncode == 0, result.stderr


def test_comfyui_esrgan_example_compiles_and_runs(corpus: Path, models: Path,
                                                  tmp_path: Path) -> None:
    artifact = tmp_path / "esrgan.comfyc"
    compile_graph(_small(load_workflow(corpus / f"{CORPUS_NAME}.ui.json")), artifact,
                  CompileOptions(models_dir=str(models)))
    manifest = read_manifest(artifact, verify=False)
    upscale = [e for e in manifest.stage_entries().values() if e.kind == "upscale"]
    assert len(upscale) == 1 and upscale[0].file.endswith(".onnx"), upscale
    ours = load(artifact).run({}, save=False).images
    graph = _small(load_workflow(corpus / f"{CORPUS_NAME}.api.json"))
    cache = TorchModelCache(str(models))
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    reference = lower_to_program(graph, cache=cache).run({}, save=False).images
    assert ours.keys() == reference.keys() and len(ours) == 1
    (key, image), = ours.items()
    assert image.shape == (1, 2 * SIZE, 2 * SIZE, 3) and image.std() > 0.01
    assert float(np.abs(image - reference[key]).max()) <= 2 / 255


def test_esrgan_hires_fix_example_runs(models: Path, tmp_path: Path) -> None:
    """The example on the embedded tiny model with the seeded RealESRGAN x2: the artifact
    equals the torch path within 2/255 at the upscaled size."""
    path = REPO / "examples" / "esrgan_hires_fix.cfy"
    artifact = tmp_path / "hires.comfyc"
    compile_graph(load_workflow(path), artifact, CompileOptions(models_dir=str(models)))
    ours = load(artifact).run({}, save=False).images["image"]
    graph = load_workflow(path)
    cache = TorchModelCache(str(models))
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    want = lower_to_program(graph, cache=cache).run({}, save=False).images["image"]
    assert ours.shape == want.shape == (1, 128, 128, 3)
    assert float(np.abs(ours - want).max()) <= 2 / 255
