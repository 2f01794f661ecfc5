"""T2I-Adapters in workflows on tiny seeded models (a tiny SD1 checkpoint whose UNet has two
resnets per level, where ComfyUI's and diffusers' placements of the adapter's features agree,
and a full T2I-Adapter of the same widths, made by seeded scripts):

* diffusers' StableDiffusionAdapterPipeline (an oracle we did not write) on the same weights
  and initial noise: within 1/255 with ControlNetLoader + ControlNetApplyAdvanced on both
  prompts, at two strengths (the SD1 pipeline has no step window; the window rules are the
  ControlNets', tested in test_controlnet.py);
* the compiled artifact (adapter and UNet as ONNX stages) equals the torch path, with the
  strength a runtime param (0 gives the image without the adapter).

ComfyUI's own adapter code is compared with comfyc's stage in
tests/compiler/models/test_controlnet_comfyui_reference.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
from comfyc.compiler.passes.base import PassContext, PassOptions
from comfyc.compiler.pipeline import run_pipeline
from comfyc.frontends.dsl import parse_dsl
from comfyc.runtime import load
from comfyc.runtime.artifact import read_manifest

CKPT, ADAPTER, HINT = "host.safetensors", "t2iadapter_sketch.safetensors", "sketch.png"
SIZE, STEPS, PROMPT = 64, 8, "a sketch of a boat"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from PIL import Image

    from comfyc.compiler.models.controlnet_synthetic import (
        write_adapter_host_checkpoint,
        write_t2i_adapter,
    )

    root = tmp_path_factory.mktemp("t2i-models")
    for sub in ("checkpoints", "controlnet", "input"):
        (root / sub).mkdir()
    write_adapter_host_checkpoint(root / "checkpoints" / CKPT, "sd1", seed=11,
                                  dtype=torch.float32, jitter=0.02,
                                  diffusers_dir=root / "diffusers" / "host")
    write_t2i_adapter(root / "controlnet" / ADAPTER, "sd1", seed=12, layout="comfy",
                      dtype=torch.float32, jitter=0.02)
    write_t2i_adapter(root / "diffusers" / "adapter", "sd1", seed=12, layout="folder",
                      dtype=torch.float32, jitter=0.02)
    rng = np.random.default_rng(3)
    pixels = (rng.random((SIZE, SIZE)) > 0.7).astype(np.uint8) * 255
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(root / "input" / HINT)
    return root


@pytest.fixture(scope="module")
def cache(models: Path) -> TorchModelCache:
    return TorchModelCache(str(models))


def _workflow(seed: int, cfg: float, strength: str, end: float = 1.0) -> str:
    return textwrap.dedent(f"""
        param strength: FLOAT = {strength}
        ckpt = CheckpointLoaderSimple(ckpt_name="{CKPT}")
        adapter = ControlNetLoader(control_net_name="{ADAPTER}")
        hint = LoadImage(image="{HINT}")
        p = CLIPTextEncode(text="{PROMPT}", clip=ckpt.CLIP)
        n = CLIPTextEncode(text="", clip=ckpt.CLIP)
        pos, neg = ControlNetApplyAdvanced(positive=p, negative=n, control_net=adapter,
            image=hint.IMAGE, strength=strength, start_percent=0.0, end_percent={end})
        latent = EmptyLatentImage(width={SIZE}, height={SIZE}, batch_size=1)
        s = KSampler(model=ckpt.MODEL, seed={seed}, steps={STEPS}, cfg={cfg},
            sampler_name="euler", scheduler="normal", positive=pos, negative=neg,
            latent_image=latent, denoise=1.0)
        image = VAEDecode(samples=s, vae=ckpt.VAE)
        output image
    """)


def _ours(text: str, models: Path, cache: TorchModelCache, params=None) -> np.ndarray:  # type: ignore[no-untyped-def]
    graph = parse_dsl(text, "t2i.cfy", default_catalog())
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    program = lower_to_program(graph, cache=cache)
    return program.run(params or {}, input_dir=models / "input", save=False).images["image"]


def _theirs(models: Path, seed: int, cfg: float, scale: float) -> np.ndarray:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionAdapterPipeline, T2IAdapter
    from PIL import Image

    from comfyc.runtime.noise import prepare_noise

    adapter = T2IAdapter.from_pretrained(str(models / "diffusers" / "adapter"))
    pipe = StableDiffusionAdapterPipeline.from_pretrained(
        str(models / "diffusers" / "host"), adapter=adapter, safety_checker=None,
        requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                        timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    sigma_max = float(pipe.scheduler.sigmas.max())
    noise = torch.from_numpy(prepare_noise((1, 4, SIZE // 8, SIZE // 8), seed))
    latents = noise * ((1 + sigma_max**2) ** 0.5 / sigma_max)
    out = pipe(PROMPT, negative_prompt="", image=Image.open(models / "input" / HINT),
               num_inference_steps=STEPS, guidance_scale=cfg, height=SIZE, width=SIZE,
               latents=latents, output_type="np", adapter_conditioning_scale=scale)
    return np.asarray(out.images, dtype=np.float32)


def _close(name: str, ours: np.ndarray, theirs: np.ndarray, limit: float = 1 / 255) -> None:
    assert ours.shape == theirs.shape == (1, SIZE, SIZE, 3)
    diff = float(np.abs(ours - theirs).max())
    assert diff <= limit, f"{name}: max pixel difference {diff * 255:.2f}/255"


@pytest.mark.parametrize("seed,cfg,strength", [(0, 5.0, 1.0), (4, 3.0, 0.6)])
def test_t2i_adapter_matches_diffusers(models: Path, cache: TorchModelCache, seed: int,
                                       cfg: float, strength: float) -> None:
    theirs = _theirs(models, seed, cfg, strength)
    _close("torch path", _ours(_workflow(seed, cfg, str(strength)), models, cache), theirs)
    plain = _ours(_workflow(seed, cfg, "0.0"), models, cache)
    assert float(np.abs(plain - theirs).max()) > 10 / 255, "the adapter changed nothing"


def test_t2i_adapter_artifact(models: Path, cache: TorchModelCache, tmp_path: Path) -> None:
    artifact = tmp_path / "t2i.comfyc"
    text = _workflow(2, 5.0, "1.0")
    compile_graph(parse_dsl(text, "t2i.cfy", default_catalog()), artifact,
                  CompileOptions(models_dir=str(models), input_dir=str(models / "input"),
                                 store_torch=True))
    manifest = read_manifest(artifact, verify=False)
    kinds = {e.kind: e for e in manifest.stage_entries().values()}
    assert kinds["t2i_adapter"].file.endswith(".onnx") and not kinds["t2i_adapter"].fallback
    assert kinds["t2i_adapter"].torch  # Stored for the torch backend too (comfyc bench).
    program, on_torch = load(artifact), load(artifact, backend="torch")
    for strength in (1.0, 0.0):
        want = _ours(text, models, cache, {"strength": strength})
        for name, runner in (("ort", program), ("stored torch", on_torch)):
            ours = runner.run({"strength": strength}, input_dir=models / "input",
                              save=False).images["image"]
            _close(f"{name}, strength {strength}", ours, want, 2 / 255)
