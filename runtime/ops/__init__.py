"""The runtime's ops: ComfyUI's non-model nodes as pure numpy functions.

The program interpreter runs these for the ops of an artifact, and the compiler's constant
folding runs the same functions at compile time. They need numpy and Pillow only (never torch).

Modules:
    latent: EmptyLatentImage, LatentUpscale(By), LatentComposite, LatentFromBatch,
        RepeatLatentBatch, SetLatentNoiseMask.
    image: ImageScale(By), ImageScaleToTotalPixels, ImageInvert, ImageBatch,
        ImagePadForOutpaint, EmptyImage, and the pixel side of VAEEncode / VAEEncodeForInpaint.
    conditioning: ConditioningCombine, -Concat, -Average, -SetArea, -SetAreaPercentage,
        -SetAreaStrength, -SetMask, -ZeroOut, -SetTimestepRange.
    resample: ``comfy.utils.common_upscale`` (torch ``interpolate`` modes, bislerp, lanczos).

Values follow ComfyUI's layouts in numpy: IMAGE float32 ``[B,H,W,C]``, MASK ``[B,H,W]``,
LATENT ``{"samples": [B,4,H/8,W/8], "noise_mask"?, "batch_index"?}``, CONDITIONING a list of
``{"cond": [1,T,D], "pooled_output": [1,D] | None, ...options}``. Inputs are never modified.
"""
from __future__ import annotations

from comfyc.runtime.ops._common import OpError
from comfyc.runtime.ops.conditioning import (
    conditioning_average,
    conditioning_combine,
    conditioning_concat,
    set_area,
    set_area_percentage,
    set_area_strength,
    set_mask,
    set_timestep_range,
    zero_out,
)
from comfyc.runtime.ops.image import (
    empty_image,
    image_batch,
    image_invert,
    image_pad_for_outpaint,
    image_scale,
    image_scale_by,
    image_scale_to_total_pixels,
    inpaint_prepare,
    vae_encode_crop,
)
from comfyc.runtime.ops.latent import (
    empty_latent_image,
    latent_composite,
    latent_from_batch,
    latent_upscale,
    latent_upscale_by,
    repeat_latent_batch,
    set_latent_noise_mask,
)
from comfyc.runtime.ops.resample import common_upscale

__all__ = [
    "OpError",
    "common_upscale",
    "conditioning_average",
    "conditioning_combine",
    "conditioning_concat",
    "empty_image",
    "empty_latent_image",
    "image_batch",
    "image_invert",
    "image_pad_for_outpaint",
    "image_scale",
    "image_scale_by",
    "image_scale_to_total_pixels",
    "inpaint_prepare",
    "latent_composite",
    "latent_from_batch",
    "latent_upscale",
    "latent_upscale_by",
    "repeat_latent_batch",
    "set_area",
    "set_area_percentage",
    "set_area_strength",
    "set_latent_noise_mask",
    "set_mask",
    "set_timestep_range",
    "vae_encode_crop",
    "zero_out",
]
