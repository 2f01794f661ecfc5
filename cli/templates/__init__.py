"""Starter workflows for ``comfyc init``: commented, ready-to-run DSL.

Each template is DSL text with ``$placeholders`` (:class:`string.Template`) filled from a
:class:`Profile`: :data:`TINY` for the embedded tiny-digits model (64x64 digits, runs in
seconds on a CPU), or :func:`checkpoint_profile` for a Stable Diffusion 1.x/2.x checkpoint the
user names (512x512, a photographic prompt). The templates are Python strings, so they ship
inside the package with no package data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from string import Template

__all__ = [
    "DESCRIPTIONS",
    "TEMPLATES",
    "TINY",
    "Profile",
    "checkpoint_profile",
    "render",
    "uses_input_image",
]


@dataclass(frozen=True)
class Profile:
    """The values a template is filled with.

    Attributes:
        ckpt: The checkpoint name (``checkpoints/`` folder, or the embedded model).
        size: Width and height of txt2img images.
        hires: The hires-fix pass's size.
        prompt: The default prompt.
        prompt_a: Area template: the left prompt.
        prompt_b: Area template: the right prompt.
        scene: Area template: the whole-image prompt.
        negative: The negative prompt.
        steps: Sampling steps.
        cfg: CFG scale.
        lora: The LoRA name (``loras/`` folder, or the embedded one).
        image: The input image LoadImage reads (from --input-dir).
        img2img_prompt: The img2img / inpaint prompt.
        model_note: One comment line about the model.
    """

    ckpt: str
    size: int
    hires: int
    prompt: str
    prompt_a: str
    prompt_b: str
    scene: str
    negative: str
    steps: int
    cfg: float
    lora: str
    image: str
    img2img_prompt: str
    model_note: str


#: The embedded tiny-digits model (and its LoRA, and the sample digit image).
TINY = Profile(
    ckpt="tiny-digits.safetensors", size=64, hires=128,
    prompt="a handwritten digit seven", prompt_a="a handwritten digit one",
    prompt_b="a handwritten digit two", scene="two handwritten digits", negative="",
    steps=20, cfg=5.0, lora="tiny-digits-lora.safetensors", image="digit.png",
    img2img_prompt="a handwritten digit three",
    model_note="For comfyc's embedded tiny model: 64x64 handwritten digits, nothing to download.",
)


def checkpoint_profile(ckpt: str, lora: str | None = None) -> Profile:
    """Values for a Stable Diffusion 1.x/2.x checkpoint named ``ckpt``."""
    return replace(
        TINY, ckpt=ckpt, size=512, hires=768,
        prompt="a photograph of a lighthouse on a rocky coast at sunset, detailed",
        prompt_a="a red apple on a wooden table", prompt_b="a green pear on a wooden table",
        scene="two fruits on a wooden table, still life photograph",
        negative="blurry, low quality, watermark", steps=25, cfg=7.0,
        lora=lora or "my-lora.safetensors", image="input.png",
        img2img_prompt="an oil painting of the same scene",
        model_note=f"Checkpoint {ckpt} from the models folder\n# (--models-dir or "
                   f"$COMFYC_MODELS, ComfyUI layout: checkpoints/).",
    )


_HEADER = """\
# $headline
# $model_note
#
#   comfyc check $file
#   comfyc run $file --out output$run_extra
#   comfyc compile $file -o $stem.comfyc && comfyc run $stem.comfyc$run_extra
#   comfyc viz $file -o $stem.html
#
# Params (`param ...`) stay runtime inputs: `comfyc run ... --param seed=7`.
"""

_TXT2IMG = """\
param seed: INT = 42 [min=0, max=18446744073709551615]
param prompt: STRING = "$prompt"

ckpt = CheckpointLoaderSimple(ckpt_name="$ckpt")
positive = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)
# A constant prompt is encoded once at compile time (the artifact ships no text encoder for it).
negative = CLIPTextEncode(text="$negative", clip=ckpt.CLIP)
latent = EmptyLatentImage(width=$size, height=$size, batch_size=1)
sampler = KSampler(
    model=ckpt.MODEL,
    seed=seed,
    steps=$steps,
    cfg=$cfg,
    sampler_name="euler",
    scheduler="normal",
    positive=positive,
    negative=negative,
    latent_image=latent,
    denoise=1.0,
)
image = VAEDecode(samples=sampler, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="txt2img")

output image
"""

_IMG2IMG = """\
param seed: INT = 42 [min=0, max=18446744073709551615]
param prompt: STRING = "$img2img_prompt"
# How much of the input to redraw: 0 keeps it, 1 ignores it.
param denoise: FLOAT = 0.6 [min=0.0, max=1.0]

ckpt = CheckpointLoaderSimple(ckpt_name="$ckpt")
# LoadImage reads from the input folder (comfyc run --input-dir DIR; default ./input).
source = LoadImage(image="$image")  # outputs IMAGE and MASK
pixels = ImageScale(
    image=source.IMAGE,
    upscale_method="bilinear",
    width=$size,
    height=$size,
    crop="center",
)
latent = VAEEncode(pixels=pixels, vae=ckpt.VAE)
positive = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)
negative = CLIPTextEncode(text="$negative", clip=ckpt.CLIP)
sampler = KSampler(
    model=ckpt.MODEL,
    seed=seed,
    steps=$steps,
    cfg=$cfg,
    sampler_name="euler",
    scheduler="normal",
    positive=positive,
    negative=negative,
    latent_image=latent,
    denoise=denoise,
)
image = VAEDecode(samples=sampler, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="img2img")

output image
"""

_INPAINT = """\
param seed: INT = 42 [min=0, max=18446744073709551615]
param prompt: STRING = "$img2img_prompt"

ckpt = CheckpointLoaderSimple(ckpt_name="$ckpt")
# The image's transparent pixels are redrawn: LoadImage's MASK is 1 - alpha.
source = LoadImage(image="$image")
# Encode the image as it is and let the sampler add noise only inside the mask
# (VAEEncodeForInpaint is meant for inpainting checkpoints).
latent = VAEEncode(pixels=source.IMAGE, vae=ckpt.VAE)
masked = SetLatentNoiseMask(samples=latent, mask=source.MASK)
positive = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)
negative = CLIPTextEncode(text="$negative", clip=ckpt.CLIP)
sampler = KSampler(
    model=ckpt.MODEL,
    seed=seed,
    steps=$steps,
    cfg=$cfg,
    sampler_name="euler",
    scheduler="normal",
    positive=positive,
    negative=negative,
    latent_image=masked,
    denoise=1.0,
)
image = VAEDecode(samples=sampler, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="inpaint")

output image
"""

_HIRES = """\
param seed: INT = 42 [min=0, max=18446744073709551615]
param prompt: STRING = "$prompt"

ckpt = CheckpointLoaderSimple(ckpt_name="$ckpt")
positive = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)
negative = CLIPTextEncode(text="$negative", clip=ckpt.CLIP)
latent = EmptyLatentImage(width=$size, height=$size, batch_size=1)
# Pass 1: the whole schedule at the model's native size.
latent = KSampler(
    model=ckpt.MODEL,
    seed=seed,
    steps=$steps,
    cfg=$cfg,
    sampler_name="euler",
    scheduler="normal",
    positive=positive,
    negative=negative,
    latent_image=latent,
    denoise=1.0,
)
latent = LatentUpscale(
    samples=latent,
    upscale_method="nearest-exact",
    width=$hires,
    height=$hires,
    crop="disabled",
)
# Pass 2: add back half the noise at the larger size and refine the details.
latent = KSampler(
    model=ckpt.MODEL,
    seed=seed,
    steps=$steps,
    cfg=$cfg,
    sampler_name="euler",
    scheduler="normal",
    positive=positive,
    negative=negative,
    latent_image=latent,
    denoise=0.5,
)
image = VAEDecode(samples=latent, vae=ckpt.VAE)
@title("Hires result") SaveImage(images=image, filename_prefix="hires")

output image
"""

_LORA = """\
param seed: INT = 42 [min=0, max=18446744073709551615]
param prompt: STRING = "$prompt"

ckpt = CheckpointLoaderSimple(ckpt_name="$ckpt")
# A LoRA with constant strengths is merged into the UNet and text-encoder weights at compile
# time; make a strength a param (or compile with --lora-runtime) to change it without a
# recompile. LoRA files live in the models folder's loras/.
model, clip = LoraLoader(
    model=ckpt.MODEL,
    clip=ckpt.CLIP,
    lora_name="$lora",
    strength_model=0.8,
    strength_clip=0.8,
)
positive = CLIPTextEncode(text=prompt, clip=clip)
negative = CLIPTextEncode(text="$negative", clip=clip)
latent = EmptyLatentImage(width=$size, height=$size, batch_size=1)
sampler = KSampler(
    model=model,
    seed=seed,
    steps=$steps,
    cfg=$cfg,
    sampler_name="euler",
    scheduler="normal",
    positive=positive,
    negative=negative,
    latent_image=latent,
    denoise=1.0,
)
image = VAEDecode(samples=sampler, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="lora")

output image
"""

_AREA = """\
param seed: INT = 42 [min=0, max=18446744073709551615]

ckpt = CheckpointLoaderSimple(ckpt_name="$ckpt")
# One prompt for the whole picture and one per half. ConditioningSetArea works in pixels
# (multiples of 8). All these prompts are constants, so they are encoded and combined at
# compile time.
scene = CLIPTextEncode(text="$scene", clip=ckpt.CLIP)
left = CLIPTextEncode(text="$prompt_a", clip=ckpt.CLIP)
left_area = ConditioningSetArea(
    conditioning=left, width=$size, height=$size, x=0, y=0, strength=1.0)
right = CLIPTextEncode(text="$prompt_b", clip=ckpt.CLIP)
right_area = ConditioningSetArea(
    conditioning=right, width=$size, height=$size, x=$size, y=0, strength=1.0)
areas = ConditioningCombine(conditioning_1=left_area, conditioning_2=right_area)
positive = ConditioningCombine(conditioning_1=areas, conditioning_2=scene)
negative = CLIPTextEncode(text="$negative", clip=ckpt.CLIP)
latent = EmptyLatentImage(width=$double, height=$size, batch_size=1)
sampler = KSampler(
    model=ckpt.MODEL,
    seed=seed,
    steps=$steps,
    cfg=$cfg,
    sampler_name="euler",
    scheduler="normal",
    positive=positive,
    negative=negative,
    latent_image=latent,
    denoise=1.0,
)
image = VAEDecode(samples=sampler, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="area")

output image
"""

#: name → (headline, body).
TEMPLATES: dict[str, tuple[str, str]] = {
    "txt2img": ("Text to image: one prompt, one picture.", _TXT2IMG),
    "img2img": ("Image to image: redraw an input image with a new prompt.", _IMG2IMG),
    "inpaint": ("Inpainting: redraw only the transparent part of an input image.", _INPAINT),
    "hires-fix": ("Hires fix: sample small, upscale the latent, refine at the larger size.",
                  _HIRES),
    "lora": ("Text to image with a LoRA merged into the model.", _LORA),
    "area": ("Area composition: a different prompt for each half of the picture.", _AREA),
}

#: name → one line for ``comfyc init --help``.
DESCRIPTIONS = {name: headline for name, (headline, _) in TEMPLATES.items()}


def uses_input_image(name: str) -> bool:
    """True when the template reads an image with LoadImage."""
    return "LoadImage(" in TEMPLATES[name][1]


def render(name: str, profile: Profile = TINY, *, file: str = "workflow.cfy",
           input_dir: str = "input") -> str:
    """The DSL text of template ``name`` filled from ``profile``.

    Args:
        name: A key of :data:`TEMPLATES`.
        profile: The model's values.
        file: The file name the header's example commands use.
        input_dir: The input folder they name (templates that read an image).

    Raises:
        KeyError: No such template.
    """
    headline, body = TEMPLATES[name]
    values = {k: (_dsl_string(v) if isinstance(v, str) else v)
              for k, v in asdict(profile).items()}
    values["model_note"] = profile.model_note
    values["double"] = profile.size * 2
    stem = file.rsplit("/", 1)[-1].removesuffix(".cfy") or "workflow"
    run_extra = f" --input-dir {input_dir}" if uses_input_image(name) else ""
    header = Template(_HEADER).substitute(headline=headline, model_note=profile.model_note,
                                          file=file, stem=stem, run_extra=run_extra)
    return header + "\n" + Template(body).substitute(values)


def _dsl_string(text: str) -> str:
    """The inside of a DSL "..." string (JSON escapes)."""
    import json

    return json.dumps(text, ensure_ascii=False)[1:-1]
