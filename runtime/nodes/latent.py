"""Latent nodes: empty latents, scaling, compositing, batches, and the VAE nodes.

LATENT values are ``{"samples": float32 [B, C, h, w], "noise_mask"?: …, "batch_index"?: …}``
as ComfyUI's; the array work is in :mod:`comfyc.runtime.ops.latent`. ``VAEDecode`` and
``VAEEncode`` call the VAE's decoder / encoder stage (ComfyUI files them under ``latent``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ProgramError
from .registry import NodeDef, StageCall, lazy_op
from .schema import MAX_RESOLUTION, combo, float_input, int_input, link, outputs, schema

if TYPE_CHECKING:
    import numpy as np

    from ..values import VaeRef

__all__ = ["NODES", "vae_decode", "vae_encode", "LATENT_UPSCALE_METHODS"]

#: ``LatentUpscale.upscale_methods`` in ComfyUI's order.
LATENT_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]


def vae_decode(vae: VaeRef, samples: np.ndarray) -> np.ndarray:
    """Decode raw latents to an IMAGE ([B,H,W,3] in [0,1]) as ComfyUI's VAEDecode."""
    import numpy as np

    if vae.decoder is None:
        raise ProgramError("this VAE has no decoder stage")
    out = np.asarray(vae.decoder(np.asarray(samples, dtype=np.float32)), dtype=np.float32)
    # NOTE: ComfyUI's clamp((x + 1) / 2, 0, 1) in float32, in one new buffer (maximum and
    # minimum keep a NaN as torch.clamp does; np.clip with Python floats cost 4x more).
    image = np.add(out, np.float32(1.0))
    np.divide(image, np.float32(2.0), out=image)
    np.maximum(image, np.float32(0.0), out=image)
    np.minimum(image, np.float32(1.0), out=image)
    return np.ascontiguousarray(image.transpose(0, 2, 3, 1))


def vae_encode(vae: VaeRef, pixels: np.ndarray) -> np.ndarray:
    """Encode an IMAGE to raw latents (posterior mean) as ComfyUI's VAEEncode."""
    import numpy as np

    from ..ops.image import vae_encode_crop

    if vae.encoder is None:
        raise ProgramError("this VAE has no encoder stage")
    pixels = vae_encode_crop(np.asarray(pixels, dtype=np.float32))[..., :3]
    image = pixels.transpose(0, 3, 1, 2) * 2.0 - 1.0
    return np.asarray(vae.encoder(np.ascontiguousarray(image, dtype=np.float32)),
                      dtype=np.float32)


def _vae_decode(ctx: Any, *, samples: dict[str, Any], vae: VaeRef, **_: Any
                ) -> tuple[Any, ...]:
    return (vae_decode(vae, samples["samples"]),)


def _vae_encode(ctx: Any, *, pixels: np.ndarray, vae: VaeRef, **_: Any) -> tuple[Any, ...]:
    return ({"samples": vae_encode(vae, pixels)},)


def _vae_encode_for_inpaint(ctx: Any, *, pixels: np.ndarray, vae: VaeRef, mask: np.ndarray,
                            grow_mask_by: int = 6) -> tuple[Any, ...]:
    import numpy as np

    from ..ops.image import inpaint_prepare

    prepared, noise_mask = inpaint_prepare(np.asarray(pixels, dtype=np.float32),
                                           np.asarray(mask, dtype=np.float32), int(grow_mask_by))
    return ({"samples": vae_encode(vae, prepared), "noise_mask": noise_mask},)


_DECODE = (StageCall("vae_decoder", "vae"),)
_ENCODE = (StageCall("vae_encoder", "vae"),)


def _tiles(tile_step: int) -> list[Any]:
    return [int_input("tile_size", 512, 64, 4096, tile_step),
            int_input("overlap", 64, 0, 4096, 32), int_input("temporal_size", 64, 8, 4096, 4),
            int_input("temporal_overlap", 8, 4, 4096, 4)]


NODES: list[NodeDef] = [
    NodeDef(schema("EmptyLatentImage", [
        int_input("width", 512, 16, MAX_RESOLUTION, 8),
        int_input("height", 512, 16, MAX_RESOLUTION, 8), int_input("batch_size", 1, 1, 4096),
    ], outputs("LATENT"), "Empty Latent Image", "latent"),
        run=lazy_op("latent", "empty_latent_image"), binding="latent",
        shape_inputs=("width", "height", "batch_size")),
    NodeDef(schema("EmptySD3LatentImage", [
        int_input("width", 1024, 16, MAX_RESOLUTION, 16),
        int_input("height", 1024, 16, MAX_RESOLUTION, 16), int_input("batch_size", 1, 1, 4096),
    ], outputs("LATENT"), "EmptySD3LatentImage", "model/latent/stable diffusion",
        python_module="comfy_extras.nodes_sd3"),
        run=lazy_op("latent", "empty_sd3_latent_image"), binding="latent",
        shape_inputs=("width", "height", "batch_size")),
    NodeDef(schema("LatentUpscale", [
        link("samples", "LATENT"), combo("upscale_method", LATENT_UPSCALE_METHODS),
        int_input("width", 512, 0, MAX_RESOLUTION, 8),
        int_input("height", 512, 0, MAX_RESOLUTION, 8), combo("crop", ["disabled", "center"]),
    ], outputs("LATENT"), "Upscale Latent", "latent"),
        run=lazy_op("latent", "latent_upscale"), binding="upscaled",
        shape_inputs=("width", "height")),
    NodeDef(schema("LatentUpscaleBy", [
        link("samples", "LATENT"), combo("upscale_method", LATENT_UPSCALE_METHODS),
        float_input("scale_by", 1.5, 0.01, 8.0),
    ], outputs("LATENT"), "Upscale Latent By", "latent"),
        run=lazy_op("latent", "latent_upscale_by"), binding="upscaled",
        shape_inputs=("scale_by",)),
    NodeDef(schema("LatentComposite", [
        link("samples_to", "LATENT"), link("samples_from", "LATENT"),
        int_input("x", 0, 0, MAX_RESOLUTION, 8), int_input("y", 0, 0, MAX_RESOLUTION, 8),
        int_input("feather", 0, 0, MAX_RESOLUTION, 8),
    ], outputs("LATENT"), "Latent Composite", "latent"),
        run=lazy_op("latent", "latent_composite")),
    NodeDef(schema("LatentFromBatch", [
        link("samples", "LATENT"), int_input("batch_index", 0, 0, 63),
        int_input("length", 1, 1, 64),
    ], outputs("LATENT"), "Latent From Batch", "latent/batch"),
        run=lazy_op("latent", "latent_from_batch"),
        shape_inputs=("batch_index", "length")),
    NodeDef(schema("RepeatLatentBatch", [
        link("samples", "LATENT"), int_input("amount", 1, 1, 64),
    ], outputs("LATENT"), "Repeat Latent Batch", "latent/batch"),
        run=lazy_op("latent", "repeat_latent_batch"),
        shape_inputs=("amount",)),
    NodeDef(schema("SetLatentNoiseMask", [link("samples", "LATENT"), link("mask", "MASK")],
                   outputs("LATENT"), "Set Latent Noise Mask", "latent/inpaint"),
            run=lazy_op("latent", "set_latent_noise_mask")),
    # ------------------------------------------------------------------------- VAE
    NodeDef(schema("VAEDecode", [link("samples", "LATENT"), link("vae", "VAE")],
                   outputs("IMAGE"), "VAE Decode", "latent"),
            run=_vae_decode, calls=_DECODE, binding="image"),
    NodeDef(schema("VAEEncode", [link("pixels", "IMAGE"), link("vae", "VAE")],
                   outputs("LATENT"), "VAE Encode", "latent"),
            run=_vae_encode, calls=_ENCODE, binding="latent"),
    NodeDef(schema("VAEEncodeForInpaint", [
        link("pixels", "IMAGE"), link("vae", "VAE"), link("mask", "MASK"),
        int_input("grow_mask_by", 6, 0, 64),
    ], outputs("LATENT"), "VAE Encode (for Inpainting)", "latent/inpaint"),
        run=_vae_encode_for_inpaint, calls=_ENCODE, binding="latent"),
    # NOTE: the tiled variants run untiled: the same result up to the seams ComfyUI's tiling
    # blends, and no tiling is needed at the sizes an artifact is compiled for.
    NodeDef(schema("VAEDecodeTiled", [link("samples", "LATENT"), link("vae", "VAE"), *_tiles(32)],
                   outputs("IMAGE"), "VAE Decode (Tiled)", "_for_testing"),
            run=_vae_decode, calls=_DECODE, binding="image"),
    NodeDef(schema("VAEEncodeTiled", [
        link("pixels", "IMAGE"), link("vae", "VAE"), *_tiles(64),
    ], outputs("LATENT"), "VAE Encode (Tiled)", "_for_testing"),
        run=_vae_encode, calls=_ENCODE, binding="latent"),
]
