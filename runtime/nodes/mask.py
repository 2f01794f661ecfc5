"""Mask nodes (``comfy_extras/nodes_mask.py``): making, converting, combining and reshaping masks.

MASK values are float32 ``[B,H,W]`` arrays (1 marks the area a mask selects); the array work is
in :mod:`comfyc.runtime.ops.mask`. Every class here is pure; the single-output ones are marked
for folding, so a mask built from constants (a ``SolidMask``, a mask of a fixed image) can be
computed at compile time.
"""

from __future__ import annotations

from typing import Any

from .registry import NodeDef, lazy_op
from .schema import (
    MAX_RESOLUTION,
    bool_input,
    combo,
    float_input,
    int_input,
    link,
    optional_link,
    outputs,
    schema,
)

__all__ = ["NODES", "MASK_CHANNELS", "MASK_OPERATIONS"]

#: ``channel`` choices of ImageToMask, in ComfyUI's order.
MASK_CHANNELS = ["red", "green", "blue", "alpha"]
#: ``operation`` choices of MaskComposite, in ComfyUI's order.
MASK_OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]

_MODULE = "comfy_extras.nodes_mask"
_MASK = "image/mask"


def _latent_composite_masked(ctx: Any, *, destination: dict[str, Any], source: dict[str, Any],
                             x: int = 0, y: int = 0, resize_source: bool = False,
                             mask: Any = None) -> tuple[Any, ...]:
    """LatentCompositeMasked: ``composite`` on the samples (positions in pixels, /8)."""
    from ..ops._common import as_latent
    from ..ops.mask import composite

    out, dest = as_latent(destination, "destination")
    _, src = as_latent(source, "source")
    out["samples"] = composite(dest, src, x, y, mask, 8, bool(resize_source))
    return (out,)


def _xy() -> list[Any]:
    return [int_input("x", 0, 0, MAX_RESOLUTION), int_input("y", 0, 0, MAX_RESOLUTION)]


def _node(class_type: str, inputs: list[Any], outs: list[Any], display: str, op: Any,
          binding: str | None = "mask", category: str = _MASK,
          shape_inputs: tuple[str, ...] = ()) -> NodeDef:
    return NodeDef(schema(class_type, inputs, outs, display, category, python_module=_MODULE),
                   run=op, fold=len(outs) == 1, binding=binding, shape_inputs=shape_inputs)


NODES: list[NodeDef] = [
    _node("LatentCompositeMasked", [
        link("destination", "LATENT"), link("source", "LATENT"),
        int_input("x", 0, 0, MAX_RESOLUTION, 8), int_input("y", 0, 0, MAX_RESOLUTION, 8),
        bool_input("resize_source", False), optional_link("mask", "MASK"),
    ], outputs("LATENT"), "Latent Composite Masked", _latent_composite_masked, "composite",
        "model/latent"),
    _node("ImageCompositeMasked", [
        link("destination", "IMAGE"), link("source", "IMAGE"), *_xy(),
        bool_input("resize_source", False), optional_link("mask", "MASK"),
    ], outputs("IMAGE"), "Image Composite Masked", lazy_op("mask", "image_composite_masked"),
        "composite", "image/compositing"),
    _node("MaskToImage", [link("mask", "MASK")], outputs("IMAGE"), "Convert Mask to Image",
          lazy_op("mask", "mask_to_image"), "image"),
    _node("ImageToMask", [link("image", "IMAGE"), combo("channel", MASK_CHANNELS)],
          outputs("MASK"), "Convert Image to Mask", lazy_op("mask", "image_to_mask")),
    _node("ImageColorToMask", [link("image", "IMAGE"), int_input("color", 0, 0, 0xFFFFFF)],
          outputs("MASK"), "Convert Image Color to Mask",
          lazy_op("mask", "image_color_to_mask")),
    _node("SolidMask", [
        float_input("value", 1.0, 0.0, 1.0),
        int_input("width", 512, 1, MAX_RESOLUTION), int_input("height", 512, 1, MAX_RESOLUTION),
    ], outputs("MASK"), "Create Solid Mask", lazy_op("mask", "solid_mask"),
        shape_inputs=("width", "height")),
    _node("InvertMask", [link("mask", "MASK")], outputs("MASK"), "Invert Mask",
          lazy_op("mask", "invert_mask")),
    _node("CropMask", [
        link("mask", "MASK"), *_xy(),
        int_input("width", 512, 1, MAX_RESOLUTION), int_input("height", 512, 1, MAX_RESOLUTION),
    ], outputs("MASK"), "Crop Mask", lazy_op("mask", "crop_mask"),
        # NOTE: x and y too: a crop past the mask's edge is cut short there.
        shape_inputs=("x", "y", "width", "height")),
    _node("MaskComposite", [
        link("destination", "MASK"), link("source", "MASK"), *_xy(),
        combo("operation", MASK_OPERATIONS),
    ], outputs("MASK"), "Combine Masks", lazy_op("mask", "mask_composite")),
    _node("FeatherMask", [
        link("mask", "MASK"),
        *(int_input(side, 0, 0, MAX_RESOLUTION) for side in ("left", "top", "right", "bottom")),
    ], outputs("MASK"), "Feather Mask", lazy_op("mask", "feather_mask")),
    _node("GrowMask", [
        link("mask", "MASK"), int_input("expand", 0, -MAX_RESOLUTION, MAX_RESOLUTION),
        bool_input("tapered_corners", True),
    ], outputs("MASK"), "Grow Mask", lazy_op("mask", "grow_mask")),
    _node("ThresholdMask", [link("mask", "MASK"), float_input("value", 0.5, 0.0, 1.0)],
          outputs("MASK"), "Threshold Mask", lazy_op("mask", "threshold_mask")),
]
