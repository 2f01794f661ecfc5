"""Image nodes: loading and saving images, scaling, batching, padding.

IMAGE values are float32 ``[B, H, W, C]`` arrays in [0, 1] and MASK values ``[B, H, W]``, as
ComfyUI's; the array work is in :mod:`comfyc.runtime.ops.image`, file I/O (PNG metadata as
ComfyUI writes it) in :mod:`comfyc.runtime.image_io`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import NodeDef, StageCall, lazy_op
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


def _image_upscale_with_model(ctx: Any, *, upscale_model: Any, image: np.ndarray
                              ) -> tuple[Any, ...]:
    """``ImageUpscaleWithModel``: ComfyUI's 512-pixel tiles (overlap 32) through the model's
    network stage, each tile padded as spandrel pads it (:mod:`comfyc.runtime.ops.tiles`)."""
    from ..errors import ProgramError
    from ..ops.tiles import upscale_with_model

    model = upscale_model
    if getattr(model, "stage", None) is None:
        raise ProgramError("ImageUpscaleWithModel's upscale_model has no network stage in this "
                           "program; compile the workflow again")
    return (upscale_with_model(image, model.stage, model.scale, minimum=model.size_minimum,
                               multiple_of=model.size_multiple,
                               network_multiple=model.network_multiple,
                               out_channels=model.out_channels),)


def _note_is_changed(ctx: Any, image: str) -> None:
    """Put the loaded file's SHA-256 in the prompt the PNGs embed, as ComfyUI does.

    ComfyUI's cache calls LoadImage's (and LoadImageMask's) ``IS_CHANGED`` - the hex SHA-256 of
    the file - and stores it in the prompt's node as ``"is_changed": [digest]``; that prompt is
    the ``prompt`` chunk of every image it saves (``execution.py`` ``IsChangedCache``).
    """
    import hashlib

    from ..image_io import resolve_image_path

    op = getattr(ctx, "current", None)
    prompt = getattr(ctx, "prompt", None)
    if op is None or not isinstance(prompt, dict) or not isinstance(prompt.get(op.id), dict):
        return
    path = resolve_image_path(image, ctx.input_dir, output_dir=ctx.output_dir,
                              temp_dir=ctx.output_dir / "temp")
    prompt[op.id]["is_changed"] = [hashlib.sha256(path.read_bytes()).hexdigest()]


def _load_image(ctx: Any, *, image: str, **_: Any) -> tuple[Any, ...]:
    from ..image_io import load_image

    # NOTE: "name [output]" / "name [temp]" read a previous run's output (the temp folder is
    # `temp/` inside the output folder, where PreviewImage writes).
    out = load_image(image, ctx.input_dir, output_dir=ctx.output_dir,
                     temp_dir=ctx.output_dir / "temp")
    _note_is_changed(ctx, image)
    return out


def _load_image_mask(ctx: Any, *, image: str, channel: str = "alpha", **_: Any
                     ) -> tuple[Any, ...]:
    from ..image_io import load_image_mask

    out = (load_image_mask(image, ctx.input_dir, channel, output_dir=ctx.output_dir,
                           temp_dir=ctx.output_dir / "temp"),)
    _note_is_changed(ctx, image)
    return out


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


def _gaussian_kernel(radius: int, sigma: float) -> np.ndarray:
    """ComfyUI's ``gaussian_kernel``: a ``(2r+1)²`` Gaussian over [-1, 1]², normalised.

    Coordinates are ``linspace(-1, 1, 2r+1)`` (torch's float32 linspace: from the start in the
    first half, from the end in the second), distances squared as ``sqrt(x²+y²)²``.
    """
    import numpy as np

    size = 2 * radius + 1
    f32 = np.float32
    step = f32(2.0) / f32(size - 1)
    index = np.arange(size, dtype=f32)
    coords = np.where(index < size // 2, f32(-1.0) + step * index,
                      f32(1.0) - step * (f32(size - 1) - index)).astype(f32)
    x, y = np.meshgrid(coords, coords, indexing="ij")
    d = np.sqrt(x * x + y * y)
    g = np.exp(-(d * d) / f32(2.0 * sigma * sigma)).astype(f32)
    return (g / g.sum(dtype=f32)).astype(f32)


def _filter(image: np.ndarray, kernel: np.ndarray, radius: int) -> np.ndarray:
    """Convolve every channel of ``[B,H,W,C]`` with ``kernel`` after reflect padding by
    ``radius`` (ComfyUI pads with ``reflect`` then keeps the inner ``H×W`` of the result)."""
    import numpy as np

    from ..ops._common import as_image

    image = as_image(image)
    padded = np.pad(image, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    height, width = image.shape[1:3]
    out = np.zeros_like(image, dtype=np.float32)
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            out += kernel[dy, dx] * padded[:, dy:dy + height, dx:dx + width, :]
    return out


def _image_blur(ctx: Any, *, image: np.ndarray, blur_radius: int = 1, sigma: float = 1.0
                ) -> tuple[Any, ...]:
    """``ImageBlur`` (comfy_extras/nodes_post_processing.py): a Gaussian blur."""
    radius = int(blur_radius)
    if radius == 0:
        return (image,)
    return (_filter(image, _gaussian_kernel(radius, float(sigma)), radius),)


def _image_sharpen(ctx: Any, *, image: np.ndarray, sharpen_radius: int = 1,
                   sigma: float = 1.0, alpha: float = 1.0) -> tuple[Any, ...]:
    """``ImageSharpen``: the image minus ``alpha·10`` times its Gaussian blur (an unsharp
    kernel whose centre makes the weights sum to 1), clamped to [0, 1]."""
    import numpy as np

    radius = int(sharpen_radius)
    if radius == 0:
        return (image,)
    kernel = _gaussian_kernel(radius, float(sigma)) * np.float32(-(float(alpha) * 10))
    kernel[radius, radius] = kernel[radius, radius] - kernel.sum(dtype=np.float32) + 1.0
    return (np.clip(_filter(image, kernel.astype(np.float32), radius), 0.0, 1.0),)


_SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
_FILTERS = "comfy_extras.nodes_post_processing"

NODES: list[NodeDef] = [
    # NOTE: loading reads a file when the program runs (it is not folded: an input image may
    # change between runs); two loads of one file are still one load.
    NodeDef(schema("LoadImage", [files("image", "input", image_upload=True)],
                   outputs("IMAGE", "MASK"), "Load Image", "image"),
            run=_load_image, binding="input_image",
            shape_inputs=("image",)),
    NodeDef(schema("LoadImageMask", [
        files("image", "input", image_upload=True),
        combo("channel", ["alpha", "red", "green", "blue"]),
    ], outputs("MASK"), "Load Image (as Mask)", "mask"),
        run=_load_image_mask, binding="mask",
        shape_inputs=("image",)),
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
        run=lazy_op("image", "image_scale"), binding="scaled",
        shape_inputs=("width", "height")),
    NodeDef(schema("ImageScaleBy", [
        link("image", "IMAGE"), combo("upscale_method", IMAGE_UPSCALE_METHODS),
        float_input("scale_by", 1.0, 0.01, 8.0),
    ], outputs("IMAGE"), "Upscale Image By", "image/upscaling"),
        run=lazy_op("image", "image_scale_by"), binding="scaled",
        shape_inputs=("scale_by",)),
    NodeDef(schema("ImageScaleToTotalPixels", [
        link("image", "IMAGE"), combo("upscale_method", IMAGE_UPSCALE_METHODS),
        float_input("megapixels", 1.0, 0.01, 16.0), int_input("resolution_steps", 1, 1, 256),
    ], outputs("IMAGE"), "Scale Image to Total Pixels", "image/upscaling",
        python_module="comfy_extras.nodes_post_processing"),
        run=lazy_op("image", "image_scale_to_total_pixels"), binding="scaled",
        shape_inputs=("megapixels", "resolution_steps")),
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
        run=lazy_op("image", "image_pad_for_outpaint", 2), binding="padded",
        shape_inputs=("left", "top", "right", "bottom")),
    NodeDef(schema("EmptyImage", [
        int_input("width", 512, 1, MAX_RESOLUTION), int_input("height", 512, 1, MAX_RESOLUTION),
        int_input("batch_size", 1, 1, 4096), int_input("color", 0, 0, 0xFFFFFF),
    ], outputs("IMAGE"), "EmptyImage", "image"),
        run=lazy_op("image", "empty_image"),
        shape_inputs=("width", "height", "batch_size")),
    NodeDef(schema("ImageBlur", [
        link("image", "IMAGE"), int_input("blur_radius", 1, 1, 31),
        float_input("sigma", 1.0, 0.1, 10.0, 0.1),
    ], outputs("IMAGE"), "Blur Image", "image/filters", python_module=_FILTERS),
        run=_image_blur, binding="blurred"),
    NodeDef(schema("ImageSharpen", [
        link("image", "IMAGE"), int_input("sharpen_radius", 1, 1, 31),
        float_input("sigma", 1.0, 0.1, 10.0, 0.01), float_input("alpha", 1.0, 0.0, 5.0, 0.01),
    ], outputs("IMAGE"), "Sharpen Image", "image/filters", python_module=_FILTERS),
        run=_image_sharpen, binding="sharpened"),
    NodeDef(schema("ImageUpscaleWithModel", [
        link("upscale_model", "UPSCALE_MODEL"), link("image", "IMAGE"),
    ], outputs("IMAGE"), "Upscale Image (using Model)", "image/upscaling",
        python_module="comfy_extras.nodes_upscale_model"),
        run=_image_upscale_with_model, calls=(StageCall("upscale", "upscale_model"),),
        binding="upscaled"),
]
