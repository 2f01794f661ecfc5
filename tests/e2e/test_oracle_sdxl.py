"""SDXL images of comfyc equal diffusers' SDXL pipelines (an oracle we did not write) on the
same tiny random weights: txt2img with StableDiffusionXLPipeline, and the refiner's img2img
hand-over with StableDiffusionXLImg2ImgPipeline (aesthetic scores 6 / 2.5, the last 4 of 10
steps) — Euler, the normal/linspace schedule, started from ComfyUI's noise, within 1/255 per
pixel; for the torch path and for the compiled artifact."""

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
from tests.conftest import SDXL_BASE, SDXL_REFINER

PROMPT, NEGATIVE = "a photograph of a lighthouse", "blurry"
# NOTE: 10 steps: diffusers' linspace timesteps are then integers (999 / 9 = 111), where its
# linear sigma interpolation and ComfyUI's log-linear one agree.
STEPS, CFG, SIZE = 10, 5.0, 64


def _txt2img(seed: int) -> str:
    return textwrap.dedent(f"""
        ckpt = CheckpointLoaderSimple(ckpt_name="{SDXL_BASE}")
        pos = CLIPTextEncode(text="{PROMPT}", clip=ckpt.CLIP)
        neg = CLIPTextEncode(text="{NEGATIVE}", clip=ckpt.CLIP)
        latent = EmptyLatentImage(width={SIZE}, height={SIZE}, batch_size=1)
        s = KSampler(model=ckpt.MODEL, seed={seed}, steps={STEPS}, cfg={CFG},
                     sampler_name="euler", scheduler="normal", positive=pos, negative=neg,
                     latent_image=latent, denoise=1.0)
        image = VAEDecode(samples=s, vae=ckpt.VAE)
        output image
    """)


def _refine(seed: int, start: int) -> str:
    """The refiner redraws the last steps of an image given as input (img2img hand-over)."""
    return textwrap.dedent(f"""
        ckpt = CheckpointLoaderSimple(ckpt_name="{SDXL_REFINER}")
        source = LoadImage(image="start.png")
        latent = VAEEncode(pixels=source.IMAGE, vae=ckpt.VAE)
        pos = CLIPTextEncodeSDXLRefiner(ascore=6.0, width={SIZE}, height={SIZE},
                                        text="{PROMPT}", clip=ckpt.CLIP)
        neg = CLIPTextEncodeSDXLRefiner(ascore=2.5, width={SIZE}, height={SIZE},
                                        text="{NEGATIVE}", clip=ckpt.CLIP)
        s = KSamplerAdvanced(model=ckpt.MODEL, add_noise="enable", noise_seed={seed},
                             steps={STEPS}, cfg={CFG}, sampler_name="euler",
                             scheduler="normal", positive=pos, negative=neg,
                             latent_image=latent, start_at_step={start},
                             end_at_step=10000, return_with_leftover_noise="disable")
        image = VAEDecode(samples=s, vae=ckpt.VAE)
        output image
    """)


def _ours(text: str, models: Path, input_dir: Path, artifact: Path | None) -> np.ndarray:
    """The float image on the torch path (artifact None) or from a compiled artifact."""
    graph = parse_dsl(text, "sdxl.cfy", default_catalog())
    if artifact is not None:
        compile_graph(graph, artifact, CompileOptions(models_dir=str(models),
                                                      input_dir=str(input_dir)))
        return load(artifact).run({}, input_dir=input_dir).images["image"]
    cache = TorchModelCache(str(models))
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    return lower_to_program(graph, cache=cache).run({}, input_dir=input_dir).images["image"]


def _euler(pipe):  # type: ignore[no-untyped-def]
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                        timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _theirs_txt2img(folder: Path, seed: int) -> np.ndarray:
    import torch
    from diffusers import StableDiffusionXLPipeline

    from comfyc.runtime.noise import prepare_noise

    pipe = _euler(StableDiffusionXLPipeline.from_pretrained(str(folder)))
    sigma_max = float(pipe.scheduler.sigmas.max())
    # ComfyUI starts from noise * sqrt(1 + sigma_max^2); diffusers multiplies the latents it is
    # given by init_noise_sigma = sigma_max (linspace spacing), so pre-scale by the ratio.
    noise = torch.from_numpy(prepare_noise((1, 4, SIZE // 8, SIZE // 8), seed))
    latents = noise * ((1 + sigma_max**2) ** 0.5 / sigma_max)
    out = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG,
               height=SIZE, width=SIZE, latents=latents, output_type="np")
    return np.asarray(out.images, dtype=np.float32)


def _theirs_refine(folder: Path, seed: int, start: int, pixels: np.ndarray) -> np.ndarray:
    """diffusers' refiner img2img over the same window: its timesteps are the last
    ``STEPS - start`` of the STEPS-step schedule, and its noise is ComfyUI's."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from comfyc.runtime.noise import prepare_noise

    pipe = _euler(StableDiffusionXLImg2ImgPipeline.from_pretrained(str(folder)))
    noise = torch.from_numpy(prepare_noise((1, 4, SIZE // 8, SIZE // 8), seed))

    class Posterior:  # VAEEncode takes the posterior mean, as ComfyUI does.
        def __init__(self, mean):  # type: ignore[no-untyped-def]
            self.mean = mean

        def sample(self, generator=None):  # type: ignore[no-untyped-def]
            return self.mean

    encode = pipe.vae.encode

    def posterior_mean(x, **kwargs):  # type: ignore[no-untyped-def]
        latent = encode(x).latent_dist.mean
        return type("Encoded", (), {"latent_dist": Posterior(latent)})()

    pipe.vae.encode = posterior_mean  # type: ignore[method-assign]

    def comfy_noise(*args, **kwargs):  # type: ignore[no-untyped-def]
        return noise.clone().to(kwargs.get("dtype", torch.float32))

    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as module

    original = module.randn_tensor
    module.randn_tensor = comfy_noise  # The pipeline's noise is ComfyUI's seed's noise.
    try:
        image = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        out = pipe(PROMPT, negative_prompt=NEGATIVE, image=image, strength=(STEPS - start) / STEPS,
                   num_inference_steps=STEPS, guidance_scale=CFG, aesthetic_score=6.0,
                   negative_aesthetic_score=2.5, output_type="np")
    finally:
        module.randn_tensor = original
    return np.asarray(out.images, dtype=np.float32)


@pytest.mark.parametrize("seed", [0, 2**32 + 7])
def test_sdxl_txt2img_matches_diffusers(sdxl_models: Path, tmp_path: Path, seed: int) -> None:
    """Torch path and artifact: within 1/255 of StableDiffusionXLPipeline."""
    theirs = _theirs_txt2img(sdxl_models / "diffusers" / "sdxl", seed)
    ours = _ours(_txt2img(seed), sdxl_models, tmp_path, None)
    compiled = _ours(_txt2img(seed), sdxl_models, tmp_path, tmp_path / "sdxl.comfyc")
    assert ours.shape == theirs.shape == (1, SIZE, SIZE, 3)
    for name, image in (("torch path", ours), ("artifact", compiled)):
        diff = float(np.abs(image - theirs).max())
        assert diff <= 1 / 255, f"{name}: max pixel difference {diff * 255:.2f}/255"


def test_refiner_img2img_matches_diffusers(sdxl_models: Path, tmp_path: Path) -> None:
    """The refiner's hand-over (KSamplerAdvanced window, aesthetic scores): within 1/255."""
    from PIL import Image

    rng = np.random.default_rng(4)
    pixels = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "start.png")
    start = 6
    theirs = _theirs_refine(sdxl_models / "diffusers" / "sdxl_refiner", 11, start,
                            pixels[None].astype(np.float32) / 255)
    ours = _ours(_refine(11, start), sdxl_models, tmp_path, None)
    compiled = _ours(_refine(11, start), sdxl_models, tmp_path, tmp_path / "refiner.comfyc")
    for name, image in (("torch path", ours), ("artifact", compiled)):
        diff = float(np.abs(image - theirs).max())
        assert diff <= 1 / 255, f"{name}: max pixel difference {diff * 255:.2f}/255"
