"""Flux and SD3 images of comfyc equal diffusers' FluxPipeline and StableDiffusion3Pipeline
(oracles we did not write) on the same tiny random weights and the same initial noise.

Where the schedules coincide: ComfyUI's ``simple`` scheduler on a flow model picks the sigma
table at ``1 - i/N`` (the table has 1000 entries for SD3, 10000 for Flux, and N divides both),
then the model's shift; diffusers' FlowMatchEulerDiscreteScheduler given ``sigmas =
linspace(1, 1/N, N)`` applies the same shift (SD3: ``shift·s / (1 + (shift-1)·s)``, Flux: the
exponential time shift with ``mu`` from the image size, which ModelSamplingFlux computes the same
way for the same width and height). Without explicit sigmas diffusers' SD3 scheduler ends its
linspace at the *shifted* smallest training sigma and shifts again, which ComfyUI does not do;
that part of ComfyUI's schedule is checked against its formulas in
tests/runtime/test_schedules_comfyui_recording.py.

Prompts: T5 is padded to ComfyUI's lengths (77 tokens for SD3, 256 for Flux: the pipelines'
``max_sequence_length``); SD3's CLIP-L pooled output is unprojected in ComfyUI and projected in
diffusers, which the seeded folder reconciles with an identity projection for CLIP-L.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
from comfyc.compiler.passes.base import PassContext, PassOptions
from comfyc.compiler.pipeline import run_pipeline
from comfyc.frontends.dsl import parse_dsl
from tests.conftest import FLUX_CHECKPOINT, SD3_CHECKPOINT

PROMPT, NEGATIVE = "a photograph of a lighthouse at dusk", "blurry, low quality"
STEPS, SIZE = 10, 64


def _flux_split(seed: int, guidance: float) -> str:
    """ComfyUI's Flux-dev example structure (UNETLoader, DualCLIPLoader, VAELoader,
    FluxGuidance, BasicGuider, SamplerCustomAdvanced)."""
    return textwrap.dedent(f"""
        model = UNETLoader(unet_name="flux1-dev.safetensors", weight_dtype="default")
        clip = DualCLIPLoader(clip_name1="t5xxl_fp16.safetensors", clip_name2="clip_l.safetensors",
                              type="flux")
        vae = VAELoader(vae_name="ae.safetensors")
        shifted = ModelSamplingFlux(model=model, max_shift=1.15, base_shift=0.5, width={SIZE},
                                    height={SIZE})
        text = CLIPTextEncode(text="{PROMPT}", clip=clip)
        cond = FluxGuidance(conditioning=text, guidance={guidance})
        guider = BasicGuider(model=shifted, conditioning=cond)
        noise = RandomNoise(noise_seed={seed})
        sampler = KSamplerSelect(sampler_name="euler")
        sigmas = BasicScheduler(model=shifted, scheduler="simple", steps={STEPS}, denoise=1.0)
        latent = EmptySD3LatentImage(width={SIZE}, height={SIZE}, batch_size=1)
        out, x0 = SamplerCustomAdvanced(noise=noise, guider=guider, sampler=sampler,
                                        sigmas=sigmas, latent_image=latent)
        image = VAEDecode(samples=out, vae=vae)
        output image
    """)


def _flux_checkpoint(seed: int, guidance: float) -> str:
    """The all-in-one Flux checkpoint with KSampler at cfg 1 (ComfyUI's "flux fp8" example);
    ModelSamplingFlux sets the size so the shift matches diffusers' for SIZE."""
    return textwrap.dedent(f"""
        ckpt = CheckpointLoaderSimple(ckpt_name="{FLUX_CHECKPOINT}")
        shifted = ModelSamplingFlux(model=ckpt.MODEL, max_shift=1.15, base_shift=0.5,
                                    width={SIZE}, height={SIZE})
        pos = CLIPTextEncodeFlux(clip=ckpt.CLIP, clip_l="{PROMPT}", t5xxl="{PROMPT}",
                                 guidance={guidance})
        neg = CLIPTextEncode(text="", clip=ckpt.CLIP)
        latent = EmptySD3LatentImage(width={SIZE}, height={SIZE}, batch_size=1)
        s = KSampler(model=shifted, seed={seed}, steps={STEPS}, cfg=1.0, sampler_name="euler",
                     scheduler="simple", positive=pos, negative=neg, latent_image=latent,
                     denoise=1.0)
        image = VAEDecode(samples=s, vae=ckpt.VAE)
        output image
    """)


def _sd3(seed: int, cfg: float) -> str:
    return textwrap.dedent(f"""
        ckpt = CheckpointLoaderSimple(ckpt_name="{SD3_CHECKPOINT}")
        pos = CLIPTextEncode(text="{PROMPT}", clip=ckpt.CLIP)
        neg = CLIPTextEncode(text="{NEGATIVE}", clip=ckpt.CLIP)
        latent = EmptySD3LatentImage(width={SIZE}, height={SIZE}, batch_size=1)
        s = KSampler(model=ckpt.MODEL, seed={seed}, steps={STEPS}, cfg={cfg},
                     sampler_name="euler", scheduler="simple", positive=pos, negative=neg,
                     latent_image=latent, denoise=1.0)
        image = VAEDecode(samples=s, vae=ckpt.VAE)
        output image
    """)


@pytest.fixture(scope="module")
def cache(flow_models: Path) -> TorchModelCache:
    return TorchModelCache(str(flow_models))


def _ours(text: str, models: Path, cache: TorchModelCache) -> np.ndarray:
    graph = parse_dsl(text, "flow.cfy", default_catalog())
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    return lower_to_program(graph, cache=cache).run({}, save=False).images["image"]


def _noise(seed: int) -> object:
    import torch

    from comfyc.runtime.noise import prepare_noise

    return torch.from_numpy(prepare_noise((1, 16, SIZE // 8, SIZE // 8), seed))


def _sigmas() -> list[float]:
    return list(np.linspace(1.0, 1.0 / STEPS, STEPS))


def _theirs_flux(folder: Path, seed: int, guidance: float) -> np.ndarray:
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    noise = _noise(seed)
    packed = FluxPipeline._pack_latents(noise, 1, 16, SIZE // 8, SIZE // 8)
    out = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, sigmas=_sigmas(),
               guidance_scale=guidance, latents=packed, max_sequence_length=256,
               output_type="np")
    return np.asarray(out.images, dtype=np.float32)


def _theirs_sd3(folder: Path, seed: int, cfg: float) -> np.ndarray:
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE,
               num_inference_steps=STEPS, sigmas=_sigmas(), guidance_scale=cfg,
               latents=_noise(seed), max_sequence_length=77, output_type="np")
    return np.asarray(out.images, dtype=np.float32)


def _close(name: str, ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape == (1, SIZE, SIZE, 3)
    assert float(theirs.std()) > 0.01  # A real image, not a constant.
    diff = float(np.abs(ours - theirs).max())
    assert diff <= 1 / 255, f"{name}: max pixel difference {diff * 255:.2f}/255"


@pytest.mark.parametrize("seed,guidance", [(0, 3.5), (2**32 + 5, 6.0)])
def test_flux_dev_matches_flux_pipeline(flow_models: Path, cache: TorchModelCache, seed: int,
                                        guidance: float) -> None:
    theirs = _theirs_flux(flow_models / "diffusers" / "flux_dev", seed, guidance)
    _close("split files", _ours(_flux_split(seed, guidance), flow_models, cache), theirs)
    _close("checkpoint", _ours(_flux_checkpoint(seed, guidance), flow_models, cache), theirs)


@pytest.mark.parametrize("seed,cfg", [(0, 4.5), (7, 1.0)])
def test_sd3_matches_sd3_pipeline(flow_models: Path, cache: TorchModelCache, seed: int,
                                  cfg: float) -> None:
    theirs = _theirs_sd3(flow_models / "diffusers" / "sd35_medium", seed, cfg)
    _close("checkpoint", _ours(_sd3(seed, cfg), flow_models, cache), theirs)
