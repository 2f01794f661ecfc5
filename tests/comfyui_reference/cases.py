"""The recorded workflows: ComfyUI API JSON built in code, shared by ``record.py`` and the tests.

Every case is a small SD1.5 workflow (64x64 pixels, an 8x8 latent, few steps) on the seeded
random-weight checkpoint of :mod:`.models`. The set covers each of ComfyUI's 44 sampler names
once (txt2img), each scheduler once (euler), img2img, inpainting (VAEEncodeForInpaint, and
SetLatentNoiseMask with ddim's random inpaint noise), hires fix (LatentUpscale + a second
KSampler), a random kohya LoRA, area composition with CLIP skip, a KSamplerAdvanced hand-over,
a textual-inversion embedding, batch 2, seeds above 2**32 and a seeded random-weight ControlNet
at the published SD1.5 ControlNet architecture (ControlNetApplyAdvanced with a timestep range,
and the deprecated ControlNetApply). ``LEGACY_CASES`` are the
samplers whose noise depends on ComfyUI's noise device, recorded again with a ComfyUI from
before its pull request #11528.

``SDXL_CASES`` (a heavier tier, their own recording set ``sdxl``) run a seeded random-weight
checkpoint at SDXL's published architecture: CLIPTextEncode and CLIPTextEncodeSDXL, an ODE and
an ancestral sampler, 64x64 pixels (an 8x8 latent; the UNet's smallest level is 2x2).

The workflows contain only nodes comfyc runs; ``record.py`` adds a SaveLatent node for
ComfyUI (the sampled LATENT is stored beside the PNG, for diagnosis).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CASES",
    "CHECKPOINT",
    "CONTROLNET",
    "EMBEDDING",
    "LEGACY_CASES",
    "LORA",
    "SAMPLERS",
    "SCHEDULERS",
    "SDXL_CASES",
    "SD3_CASES",
    "SD3_CLIP_G",
    "SD3_CLIP_L",
    "SD3_UNET",
    "SD3_VAE",
    "SDXL_CHECKPOINT",
    "SETS",
    "Case",
    "case_by_name",
]

CHECKPOINT = "sd15-ref.safetensors"
LORA = "sd15-ref-lora.safetensors"
#: A textual-inversion embedding (``embeddings/``; used as ``embedding:sd15-ref-emb``).
EMBEDDING = "sd15-ref-emb.safetensors"
#: A checkpoint at SDXL's published architecture (the ``sdxl`` set; about 7 GB in float16).
SDXL_CHECKPOINT = "sdxl-ref.safetensors"
#: The ``sd3`` set's separate files (diffusion_models/, text_encoders/, vae/).
SD3_UNET = "sd3-ref.safetensors"
SD3_CLIP_L = "sd3-ref-clip_l.safetensors"
SD3_CLIP_G = "sd3-ref-clip_g.safetensors"
SD3_VAE = "sd3-ref-vae.safetensors"
#: A ControlNet at the published SD1.5 ControlNet architecture (``controlnet/``).
CONTROLNET = "sd15-ref-controlnet.safetensors"
INPUT_IMAGE = "ref-input.png"
INPUT_MASKED = "ref-input-masked.png"
SIZE = 64
STEPS = 4
CFG = 5.0
SEED = 20251203
POSITIVE = "a photo of a (red:1.2) cat sitting on a wooden table, detailed"
NEGATIVE = "blurry, low quality"

# NOTE: ComfyUI's KSampler combo order (comfy/samplers.py KSAMPLER_NAMES + ddim, uni_pc(_bh2)).
SAMPLERS: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde",
    "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
    "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece",
    "ddim", "uni_pc", "uni_pc_bh2",
)
SCHEDULERS: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
)
# NOTE: samplers whose noise is drawn by default_noise_sampler (the device generator): the
# ones whose images changed with ComfyUI's #11528 (seed + 1 on a CPU).
DEVICE_NOISE = frozenset({
    "euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "ddpm", "lcm", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2", "seeds_3", "exp_heun_2_x0_sde",
    "sa_solver", "sa_solver_pece",
})
# NOTE: Brownian-tree (SDE) samplers: their noise is exact, but a last-bit difference in a sigma
# or an x0 moves every tree query a little, so their bound is wider than the ODE samplers'.
SDE = frozenset({
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu",
})


@dataclass(frozen=True)
class Case:
    """One recorded workflow.

    Attributes:
        name: Unique name (also the SaveImage prefix and the recording's file stem).
        prompt: ComfyUI API JSON (node id -> ``{"class_type", "inputs"}``).
        kind: ``sampler``, ``scheduler``, ``img2img``, ``inpaint``, ``hires``, ``lora``, ``area``,
            ``advanced``, ``embedding``, ``batch``, ``controlnet`` or ``sdxl``: what the case is
            about.
        sampler: The (first) sampler name.
        slow: Only in the full test tier.
        noise_mode: comfyc's noise mode that reproduces the ComfyUI it was recorded with.
        inputs: Files the workflow loads from the input folder.
    """

    name: str
    prompt: dict[str, Any]
    kind: str
    sampler: str
    slow: bool = True
    noise_mode: str = "cpu"
    inputs: tuple[str, ...] = field(default_factory=tuple)

    def workflow(self) -> dict[str, Any]:
        """A deep copy of the API JSON."""
        return copy.deepcopy(self.prompt)


def _node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _base(name: str, *, clip_skip: int | None = None, lora: bool = False,
          batch: int = 1, checkpoint: str = CHECKPOINT) -> dict[str, Any]:
    """Checkpoint, prompts and an empty latent; nodes 1-5 (and 20 for LoRA, 21 for CLIP skip)."""
    p: dict[str, Any] = {"1": _node("CheckpointLoaderSimple", ckpt_name=checkpoint)}
    model: list[Any] = ["1", 0]
    clip: list[Any] = ["1", 1]
    if lora:
        p["20"] = _node("LoraLoader", model=model, clip=clip, lora_name=LORA,
                        strength_model=0.8, strength_clip=0.8)
        model, clip = ["20", 0], ["20", 1]
    if clip_skip is not None:
        p["21"] = _node("CLIPSetLastLayer", clip=clip, stop_at_clip_layer=clip_skip)
        clip = ["21", 0]
    p["2"] = _node("CLIPTextEncode", clip=clip, text=POSITIVE)
    p["3"] = _node("CLIPTextEncode", clip=clip, text=NEGATIVE)
    p["4"] = _node("EmptyLatentImage", width=SIZE, height=SIZE, batch_size=batch)
    p["_model"] = model  # NOTE: removed by _finish; where the sampler takes its MODEL from
    return p


def _ksampler(p: dict[str, Any], node_id: str, latent: list[Any], *, sampler: str,
              scheduler: str = "normal", steps: int = STEPS, seed: int = SEED,
              denoise: float = 1.0, positive: list[Any] | None = None,
              negative: list[Any] | None = None) -> list[Any]:
    p[node_id] = _node("KSampler", model=p["_model"], seed=seed, steps=steps, cfg=CFG,
                       sampler_name=sampler, scheduler=scheduler,
                       positive=positive or ["2", 0], negative=negative or ["3", 0],
                       latent_image=latent, denoise=denoise)
    return [node_id, 0]


def _finish(p: dict[str, Any], latent: list[Any], name: str) -> dict[str, Any]:
    p.pop("_model")
    p["8"] = _node("VAEDecode", samples=latent, vae=["1", 2])
    p["9"] = _node("SaveImage", images=["8", 0], filename_prefix=name)
    return p


def _txt2img(name: str, sampler: str, scheduler: str = "normal", *, seed: int = SEED,
             batch: int = 1) -> dict[str, Any]:
    p = _base(name, batch=batch)
    out = _ksampler(p, "5", ["4", 0], sampler=sampler, scheduler=scheduler, seed=seed)
    return _finish(p, out, name)


def _img2img(name: str) -> dict[str, Any]:
    p = _base(name)
    p["10"] = _node("LoadImage", image=INPUT_IMAGE)
    p["11"] = _node("VAEEncode", pixels=["10", 0], vae=["1", 2])
    out = _ksampler(p, "5", ["11", 0], sampler="dpmpp_2m", scheduler="karras", denoise=0.6,
                    steps=6)
    return _finish(p, out, name)


def _inpaint_vae(name: str) -> dict[str, Any]:
    p = _base(name)
    p["10"] = _node("LoadImage", image=INPUT_MASKED)
    p["11"] = _node("VAEEncodeForInpaint", pixels=["10", 0], vae=["1", 2], mask=["10", 1],
                    grow_mask_by=6)
    out = _ksampler(p, "5", ["11", 0], sampler="euler", scheduler="normal")
    return _finish(p, out, name)


def _inpaint_noise_mask(name: str) -> dict[str, Any]:
    p = _base(name)
    p["10"] = _node("LoadImage", image=INPUT_MASKED)
    p["11"] = _node("VAEEncode", pixels=["10", 0], vae=["1", 2])
    p["12"] = _node("SetLatentNoiseMask", samples=["11", 0], mask=["10", 1])
    # NOTE: ddim re-noises the unmasked area with fresh noise (manual_seed(seed + 1)).
    out = _ksampler(p, "5", ["12", 0], sampler="ddim", scheduler="ddim_uniform", denoise=0.8)
    return _finish(p, out, name)


def _hires(name: str) -> dict[str, Any]:
    p = _base(name)
    first = _ksampler(p, "5", ["4", 0], sampler="euler", scheduler="normal")
    p["12"] = _node("LatentUpscale", samples=first, upscale_method="nearest-exact",
                    width=96, height=96, crop="disabled")
    out = _ksampler(p, "13", ["12", 0], sampler="dpmpp_2m", scheduler="karras", denoise=0.5,
                    seed=SEED + 1)
    return _finish(p, out, name)


def _lora(name: str) -> dict[str, Any]:
    p = _base(name, lora=True)
    out = _ksampler(p, "5", ["4", 0], sampler="euler", scheduler="normal")
    return _finish(p, out, name)


def _area(name: str) -> dict[str, Any]:
    p = _base(name, clip_skip=-2)
    # NOTE: ConditioningSetArea's smallest area is 64x64, so the picture is 128x64.
    p["4"] = _node("EmptyLatentImage", width=2 * SIZE, height=SIZE, batch_size=1)
    p["30"] = _node("CLIPTextEncode", clip=["21", 0], text="a (blue:1.3) sky with clouds")
    p["31"] = _node("ConditioningSetArea", conditioning=["30", 0], width=64, height=64, x=64,
                    y=0, strength=1.0)
    p["32"] = _node("ConditioningCombine", conditioning_1=["2", 0], conditioning_2=["31", 0])
    out = _ksampler(p, "5", ["4", 0], sampler="dpmpp_2m", scheduler="karras",
                    positive=["32", 0])
    return _finish(p, out, name)


def _advanced(name: str) -> dict[str, Any]:
    p = _base(name)
    common = {"model": p["_model"], "cfg": CFG, "positive": ["2", 0], "negative": ["3", 0],
              "steps": 6, "sampler_name": "euler", "scheduler": "karras"}
    p["5"] = _node("KSamplerAdvanced", add_noise="enable", noise_seed=SEED, start_at_step=0,
                   end_at_step=3, return_with_leftover_noise="enable", latent_image=["4", 0],
                   **common)
    p["6"] = _node("KSamplerAdvanced", add_noise="disable", noise_seed=SEED, start_at_step=3,
                   end_at_step=10000, return_with_leftover_noise="disable",
                   latent_image=["5", 0], **common)
    return _finish(p, ["6", 0], name)


def _embedding(name: str) -> dict[str, Any]:
    """Textual inversion: the three vectors of the embedding inside the prompt, once plain and
    once weighted, and once in the negative prompt (ComfyUI's ``embedding:NAME``)."""
    p = _base(name)
    stem = EMBEDDING.removesuffix(".safetensors")
    p["2"]["inputs"]["text"] = (f"a photo of a embedding:{stem} cat sitting on a table, "
                                f"(embedding:{stem}:1.2)")
    p["3"]["inputs"]["text"] = f"blurry, embedding:{stem}.safetensors"
    out = _ksampler(p, "5", ["4", 0], sampler="euler", scheduler="normal")
    return _finish(p, out, name)


def _controlnet(name: str, *, sampler: str, scheduler: str, strength: float,
                start: float = 0.0, end: float = 1.0, legacy_node: bool = False) -> dict[str, Any]:
    """ControlNetLoader and an apply node on both prompts; the hint is the input picture (64x64,
    the latent size x 8, so ComfyUI's resize keeps it as it is)."""
    p = _base(name)
    p["40"] = _node("ControlNetLoader", control_net_name=CONTROLNET)
    p["41"] = _node("LoadImage", image=INPUT_IMAGE)
    if legacy_node:
        # NOTE: the deprecated node sets the control on the positive prompt only; ComfyUI copies
        # it onto the negative entries (control_apply_to_uncond).
        p["42"] = _node("ControlNetApply", conditioning=["2", 0], control_net=["40", 0],
                        image=["41", 0], strength=strength)
        positive, negative = ["42", 0], ["3", 0]
    else:
        p["42"] = _node("ControlNetApplyAdvanced", positive=["2", 0], negative=["3", 0],
                        control_net=["40", 0], image=["41", 0], strength=strength,
                        start_percent=start, end_percent=end)
        positive, negative = ["42", 0], ["42", 1]
    out = _ksampler(p, "5", ["4", 0], sampler=sampler, scheduler=scheduler, positive=positive,
                    negative=negative)
    return _finish(p, out, name)


def _cases() -> list[Case]:
    out: list[Case] = []
    # NOTE: the fast tier (make test-fast) runs a few representative cases; the rest are slow.
    fast_samplers = {"euler", "euler_ancestral", "dpmpp_2m_sde"}
    for sampler in SAMPLERS:
        name = f"sampler_{sampler}"
        out.append(Case(name, _txt2img(name, sampler), "sampler", sampler,
                        slow=sampler not in fast_samplers))
    for scheduler in SCHEDULERS:
        name = f"scheduler_{scheduler}"
        out.append(Case(name, _txt2img(name, "euler", scheduler), "scheduler", "euler"))
    out.append(Case("img2img", _img2img("img2img"), "img2img", "dpmpp_2m", slow=False,
                    inputs=(INPUT_IMAGE,)))
    out.append(Case("inpaint_vae", _inpaint_vae("inpaint_vae"), "inpaint", "euler",
                    inputs=(INPUT_MASKED,)))
    out.append(Case("inpaint_noise_mask", _inpaint_noise_mask("inpaint_noise_mask"), "inpaint",
                    "ddim", inputs=(INPUT_MASKED,)))
    out.append(Case("hires", _hires("hires"), "hires", "euler"))
    out.append(Case("lora", _lora("lora"), "lora", "euler"))
    out.append(Case("area_clip_skip", _area("area_clip_skip"), "area", "dpmpp_2m"))
    out.append(Case("advanced_handover", _advanced("advanced_handover"), "advanced", "euler"))
    out.append(Case("embedding", _embedding("embedding"), "embedding", "euler", slow=False))
    big = 2**32 + 12345
    out.append(Case("batch2_large_seed", _txt2img("batch2_large_seed", "euler", seed=big,
                                                  batch=2), "batch", "euler"))
    out.append(Case("batch2_ancestral_large_seed",
                    _txt2img("batch2_ancestral_large_seed", "euler_ancestral", seed=2**63 + 7,
                             batch=2), "batch", "euler_ancestral"))
    out.append(Case("controlnet", _controlnet("controlnet", sampler="euler", scheduler="normal",
                                              strength=0.8), "controlnet", "euler",
                    inputs=(INPUT_IMAGE,)))
    out.append(Case("controlnet_range",
                    _controlnet("controlnet_range", sampler="dpmpp_2m", scheduler="karras",
                                strength=1.0, start=0.2, end=0.7), "controlnet", "dpmpp_2m",
                    inputs=(INPUT_IMAGE,)))
    out.append(Case("controlnet_apply_old",
                    _controlnet("controlnet_apply_old", sampler="euler_ancestral",
                                scheduler="normal", strength=0.6, legacy_node=True),
                    "controlnet", "euler_ancestral", inputs=(INPUT_IMAGE,)))
    return out


def _legacy_cases() -> list[Case]:
    out: list[Case] = []
    for sampler in SAMPLERS:
        if sampler not in DEVICE_NOISE:
            continue
        name = f"legacy_{sampler}"
        out.append(Case(name, _txt2img(name, sampler), "sampler", sampler,
                        slow=sampler != "euler_ancestral", noise_mode="cpu-legacy"))
    name = "legacy_batch2_ancestral_large_seed"
    out.append(Case(name, _txt2img(name, "euler_ancestral", seed=2**63 + 7, batch=2), "batch",
                    "euler_ancestral", noise_mode="cpu-legacy"))
    return out


def _sdxl(name: str, *, sampler: str, scheduler: str, sdxl_encode: bool) -> dict[str, Any]:
    """SDXL txt2img, 3 steps; with ``sdxl_encode`` the prompts go through CLIPTextEncodeSDXL
    (separate clip_g/clip_l texts and size conditioning) instead of CLIPTextEncode."""
    p = _base(name, checkpoint=SDXL_CHECKPOINT)
    if sdxl_encode:
        size = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0,
                "target_width": 1024, "target_height": 1024}
        p["2"] = _node("CLIPTextEncodeSDXL", clip=["1", 1], text_g=POSITIVE,
                       text_l="a cat, (detailed:1.1)", **size)
        p["3"] = _node("CLIPTextEncodeSDXL", clip=["1", 1], text_g=NEGATIVE, text_l=NEGATIVE,
                       **size)
    out = _ksampler(p, "5", ["4", 0], sampler=sampler, scheduler=scheduler, steps=3)
    return _finish(p, out, name)


def _sdxl_cases() -> list[Case]:
    return [
        Case("sdxl_euler", _sdxl("sdxl_euler", sampler="euler", scheduler="normal",
                                 sdxl_encode=False), "sdxl", "euler"),
        Case("sdxl_encode_euler_ancestral",
             _sdxl("sdxl_encode_euler_ancestral", sampler="euler_ancestral", scheduler="karras",
                   sdxl_encode=True), "sdxl", "euler_ancestral"),
    ]


def _sd3(name: str, *, sampler: str, scheduler: str, shift: float | None = None,
         img2img: bool = False) -> dict[str, Any]:
    """SD3 from separate files (UNETLoader, DualCLIPLoader type sd3, VAELoader), 4 steps, cfg
    4.5; optionally ModelSamplingSD3 with another shift, or img2img from the input picture."""
    p: dict[str, Any] = {
        "1": _node("UNETLoader", unet_name=SD3_UNET, weight_dtype="default"),
        "10": _node("DualCLIPLoader", clip_name1=SD3_CLIP_L, clip_name2=SD3_CLIP_G, type="sd3"),
        "11": _node("VAELoader", vae_name=SD3_VAE),
    }
    p["2"] = _node("CLIPTextEncode", text=POSITIVE, clip=["10", 0])
    p["3"] = _node("CLIPTextEncode", text=NEGATIVE, clip=["10", 0])
    model: list[Any] = ["1", 0]
    if shift is not None:
        p["12"] = _node("ModelSamplingSD3", model=model, shift=shift)
        model = ["12", 0]
    if img2img:
        p["13"] = _node("LoadImage", image=INPUT_IMAGE)
        p["4"] = _node("VAEEncode", pixels=["13", 0], vae=["11", 0])
        denoise = 0.6
    else:
        p["4"] = _node("EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=1)
        denoise = 1.0
    p["5"] = _node("KSampler", model=model, seed=SEED, steps=STEPS, cfg=4.5,
                   sampler_name=sampler, scheduler=scheduler, positive=["2", 0],
                   negative=["3", 0], latent_image=["4", 0], denoise=denoise)
    p["8"] = _node("VAEDecode", samples=["5", 0], vae=["11", 0])
    p["9"] = _node("SaveImage", images=["8", 0], filename_prefix=name)
    return p


def _sd3_cases() -> list[Case]:
    return [
        Case("sd3_euler", _sd3("sd3_euler", sampler="euler", scheduler="simple"), "sd3",
             "euler", slow=False),
        Case("sd3_shift_euler_ancestral",
             _sd3("sd3_shift_euler_ancestral", sampler="euler_ancestral",
                  scheduler="sgm_uniform", shift=2.0), "sd3", "euler_ancestral", slow=False),
        Case("sd3_img2img_dpmpp_2m",
             _sd3("sd3_img2img_dpmpp_2m", sampler="dpmpp_2m", scheduler="beta", img2img=True),
             "sd3", "dpmpp_2m", slow=False, inputs=(INPUT_IMAGE,)),
    ]


#: Cases recorded with the current ComfyUI (noise mode ``cpu``).
CASES: tuple[Case, ...] = tuple(_cases())
#: Cases recorded with ComfyUI before #11528 (noise mode ``cpu-legacy``).
LEGACY_CASES: tuple[Case, ...] = tuple(_legacy_cases())
#: SDXL cases (recording set ``sdxl``, current ComfyUI, noise mode ``cpu``; a heavy tier).
SDXL_CASES: tuple[Case, ...] = tuple(_sdxl_cases())
#: The cases of each recording set.
#: SD3 cases (recording set ``sd3``, current ComfyUI, noise mode ``cpu``; separate files).
SD3_CASES: tuple[Case, ...] = tuple(_sd3_cases())
#: The cases of each recording set.
SETS: dict[str, tuple[Case, ...]] = {"current": CASES, "legacy": LEGACY_CASES,
                                     "sdxl": SDXL_CASES, "sd3": SD3_CASES}


def case_by_name(name: str) -> Case:
    """The case called ``name`` (any set)."""
    for case in (*CASES, *LEGACY_CASES, *SDXL_CASES, *SD3_CASES):
        if case.name == name:
            return case
    raise KeyError(name)
