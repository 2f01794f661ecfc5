"""The image of `comfyc run` equals diffusers' StableDiffusionPipeline (an oracle we did not
write) on the same weights: Euler, normal/linspace schedule, 10 steps (integer timesteps),
started from ComfyUI's initial latent."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
from comfyc.compiler.passes.base import PassContext
from comfyc.compiler.pipeline import run_pipeline
from comfyc.frontends.dsl import parse_dsl
from tests.conftest import REPO

TINY = REPO / "runtime" / "models" / "tiny-digits.safetensors"


def _models(random_models: Path) -> list[tuple[str, Path]]:
    found = [("random-sd1.safetensors", random_models)]
    if TINY.is_file():
        found.append(("tiny-digits.safetensors", random_models))  # Resolved from the package.
    return found


def comfyc_image(ckpt: str, models: Path, seed: int, prompt: str, cfg: float) -> np.ndarray:
    """The float image (before 8-bit quantisation) comfyc computes on the torch backend."""
    text = textwrap.dedent(f"""
        ckpt = CheckpointLoaderSimple(ckpt_name="{ckpt}")
        pos = CLIPTextEncode(text="{prompt}", clip=ckpt.CLIP)
        neg = CLIPTextEncode(text="", clip=ckpt.CLIP)
        latent = EmptyLatentImage(width=64, height=64, batch_size=1)
        s = KSampler(model=ckpt.MODEL, seed={seed}, steps=10, cfg={cfg}, sampler_name="euler",
                     scheduler="normal", positive=pos, negative=neg, latent_image=latent,
                     denoise=1.0)
        image = VAEDecode(samples=s, vae=ckpt.VAE)
        output image
    """)
    graph = parse_dsl(text, "oracle.cfy", default_catalog())
    cache = TorchModelCache(str(models))
    run_pipeline(graph, PassContext(models=cache))
    return lower_to_program(graph, cache=cache).run({}, save=False).images["image"]


def diffusers_image(folder: Path, seed: int, prompt: str, cfg: float) -> np.ndarray:
    """diffusers' own pipeline, started from ComfyUI's initial latent."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from comfyc.runtime.noise import prepare_noise

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                        timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    sigma_max = float(pipe.scheduler.sigmas.max())
    # ComfyUI: x = noise * sqrt(1 + sigma_max^2); diffusers' linspace Euler multiplies the
    # given latents by init_noise_sigma = sigma_max, so pre-scale by the ratio.
    noise = torch.from_numpy(prepare_noise((1, 4, 8, 8), seed))
    latents = noise * ((1 + sigma_max**2) ** 0.5 / sigma_max)
    out = pipe(prompt, negative_prompt="", num_inference_steps=10, guidance_scale=cfg,
               height=64, width=64, latents=latents, output_type="np")
    return np.asarray(out.images, dtype=np.float32)


@pytest.mark.parametrize("seed", [0, 2**32 + 5])
def test_euler_matches_diffusers(random_models: Path, tmp_path: Path, seed: int) -> None:
    """Within 1/255 per pixel (ComfyUI truncates to 8 bits, diffusers rounds)."""
    from comfyc.compiler.models.diffusers_folder import write_diffusers_folder
    from comfyc.runtime.model_paths import resolve

    for ckpt, models in _models(random_models):
        folder = tmp_path / ckpt
        write_diffusers_folder(resolve("checkpoints", ckpt, str(models)), folder)
        ours = comfyc_image(ckpt, models, seed, "a handwritten digit seven", 5.0)
        theirs = diffusers_image(folder, seed, "a handwritten digit seven", 5.0)
        assert ours.shape == theirs.shape == (1, 64, 64, 3)
        diff = np.abs(ours - theirs).max()
        assert diff <= 1 / 255, f"{ckpt}: max pixel difference {diff * 255:.2f}/255"
