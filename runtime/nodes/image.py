"""Image nodes: loading and saving images, scaling, batching, padding.

IMAGE values are float32 ``[B, H, W, C]`` arrays in [0, 1] and MASK values ``[B, H, W]``, as
ComfyUI's; the array work is in :mod:`comfyc.runtime.ops.image`, file I/O (PNG metadata as
ComfyUI writes it) in :mod:`comfyc.runtime.image_io`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import NodeDef, lazy_op
from .schema import (
    MAX_RESOLUTION,
    combo,
    files,
    float_input,
    int_input,
    link,
    outputs,
    schema,
    string_input,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = ["NODES", "IMAGE_UPSCALE_METHODS"]

#: ``upscale_method`` choices of the ImageScale nodes, in ComfyUI's order.
IMAGE_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
_NOT_YET_UPSCALE = ("upscale models (ESRGAN, SwinIR …) are not supported by comfyc yet; use "
                    "ImageScale/ImageScaleBy or run this workflow in ComfyUI")


def _load_image(ctx: Any, *, image: str, **_: Any) -> tuple[Any, ...]:
    from ..image_io import load_image

    return load_image(image, ctx.input_dir)


def _load_image_mask(ctx: Any, *, image: str, channel: str = "alpha", **_: Any
                     ) -> tuple[Any, ...]:
    from ..image_io import load_image_mask

    return (load_image_mask(image, ctx.input_dir, channel),)


def _save_image(ctx: Any, *, images: np.ndarray, filename_prefix: str = "ComfyUI"
                ) -> tuple[Any, ...]:
    from ..image_io import save_images

    op = ctx.current
    ctx.images[op.id] = images
    if ctx.save:
        ctx.files[op.id] = save_images(images, ctx.output_dir, filename_prefix, ctx.prompt,
                                       ctx.extra_pnginfo)
    return ()


def _preview_image(ctx: Any, *, images: np.ndarray) -> tuple[Any, ...]:
    from ..image_io import save_preview

    op = ctx.current
    ctx.images[op.id] = images
    if ctx.save:
        # NOTE: ComfyUI writes previews to its temp folder; ours is `temp/` inside the output
        # folder, so nothing is written outside the folder the user chose.
        ctx.files[op.id] = save_preview(images, ctx.output_dir / "temp", ctx.prompt,
                                        ctx.extra_pnginfo)
    return ()


_SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}

NODES: list[NodeDef] = [
    # NOTE: loading reads a file when the program runs (it is not folded: an input image may
    # change between runs); two loads of one file are still one load.
    NodeDef(schema("LoadImage", [files("image", "input", image_upload=True)],
                   outputs("IMAGE", "MASK"), "Load Image", "image"),
            run=_load_image, binding="input_image"),
    NodeDef(schema("LoadImageMask", [
        files("image", "input", image_upload=True),
        combo("channel", ["alpha", "red", "green", "blue"]),
    ], outputs("MASK"), "Load Image (as Mask)", "mask"),
        run=_load_image_mask, binding="mask"),
    NodeDef(schema("SaveImage", [
        link("images", "IMAGE"), string_input("filename_prefix", "ComfyUI"),
    ], [], "Save Image", "image", output_node=True, side_effect=True, hidden=_SAVE_HIDDEN),
        run=_save_image),
    NodeDef(schema("PreviewImage", [link("images", "IMAGE")], [], "Preview Image", "image",
                   output_node=True, side_effect=True, hidden=_SAVE_HIDDEN),
            run=_preview_image),
    NodeDef(schema("ImageScale", [
        link("image", "IMAGE"), combo("upscale_method", IMAGE_UPSCALE_METHODS),
        int_input("width", 512, 0, MAX_RESOLUTION), int_input("height", 512, 0, MAX_RESOLUTION),
        combo("crop", ["disabled", "center"]),
    ], outputs("IMAGE"), "Upscale Image", "image/upscaling"),
        run=lazy_op("image", "image_scale"), binding="scaled"),
    NodeDef(schema("ImageScaleBy", [
        link("image", "IMAGE"), combo("upscale_method", IMAGE_UPSCALE_METHODS),
        float_input("scale_by", 1.0, 0.01, 8.0),
    ], outputs("IMAGE"), "Upscale Image By", "image/upscaling"),
        run=lazy_op("image", "image_scale_by"), binding="scaled"),
    NodeDef(schema("ImageScaleToTotalPixels", [
        link("image", "IMAGE"), combo("upscale_method", IMAGE_UPSCALE_METHODS),
        float_input("megapixels", 1.0, 0.01, 16.0), int_input("resolution_steps", 1, 1, 256),
    ], outputs("IMAGE"), "Scale Image to Total Pixels", "image/upscaling",
        python_module="comfy_extras.nodes_post_processing"),
        run=lazy_op("image", "image_scale_to_total_pixels"), binding="scaled"),
    NodeDef(schema("ImageInvert", [link("image", "IMAGE")], outputs("IMAGE"), "Invert Image",
                   "image"),
            run=lazy_op("image", "image_invert")),
    NodeDef(schema("ImageBatch", [link("image1", "IMAGE"), link("image2", "IMAGE")],
                   outputs("IMAGE"), "Batch Images", "image"),
            run=lazy_op("image", "image_batch")),
    NodeDef(schema("ImagePadForOutpaint", [
        link("image", "IMAGE"),
        int_input("left", 0, 0, MAX_RESOLUTION, 8), int_input("top", 0, 0, MAX_RESOLUTION, 8),
        int_input("right", 0, 0, MAX_RESOLUTION, 8),
        int_input("bottom", 0, 0, MAX_RESOLUTION, 8),
        int_input("feathering", 40, 0, MAX_RESOLUTION),
    ], outputs("IMAGE", "MASK"), "Pad Image for Outpainting", "image"),
        run=lazy_op("image", "image_pad_for_outpaint", 2), binding="padded"),
    NodeDef(schema("EmptyImage", [
        int_input("width", 512, 1, MAX_RESOLUTION), int_input("height", 512, 1, MAX_RESOLUTION),
        int_input("batch_size", 1, 1, 4096), int_input("color", 0, 0, 0xFFFFFF),
    ], outputs("IMAGE"), "EmptyImage", "image"),
        run=lazy_op("image", "empty_image")),
    NodeDef(schema("ImageUpscaleWithModel", [
        link("upscale_model", "UPSCALE_MODEL"), link("image", "IMAGE"),
    ], outputs("IMAGE"), "Upscale Image (using Model)", "image/upscaling",
        python_module="comfy_extras.nodes_upscale_model"),
        check_only=_NOT_YET_UPSCALE, binding="upscaled"),
]
