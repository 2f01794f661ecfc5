"""Compositing nodes (``comfy_extras/nodes_compositing.py``): alpha channels and Porter-Duff.

ComfyUI passes alpha around as a MASK where 1 is transparent; these nodes convert between that
and an RGBA image's alpha channel. The array work is in :mod:`comfyc.runtime.ops.compositing`.
"""

from __future__ import annotations

from .registry import NodeDef, lazy_op
from .schema import combo, link, outputs, schema

__all__ = ["NODES", "PORTER_DUFF_MODES"]

#: ``mode`` choices of PorterDuffImageComposite, in ComfyUI's order (default ``DST``).
PORTER_DUFF_MODES = ["ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT",
                     "DST_OVER", "LIGHTEN", "MULTIPLY", "OVERLAY", "SCREEN", "SRC", "SRC_ATOP",
                     "SRC_IN", "SRC_OUT", "SRC_OVER", "XOR"]

_MODULE = "comfy_extras.nodes_compositing"
_CATEGORY = "image/compositing"

NODES: list[NodeDef] = [
    NodeDef(schema("PorterDuffImageComposite", [
        link("source", "IMAGE"), link("source_alpha", "MASK"), link("destination", "IMAGE"),
        link("destination_alpha", "MASK"), combo("mode", PORTER_DUFF_MODES, "DST"),
    ], outputs("IMAGE", "MASK"), "Porter-Duff Image Composite", _CATEGORY,
        python_module=_MODULE),
        run=lazy_op("compositing", "porter_duff_image_composite", 2), binding="composite"),
    NodeDef(schema("SplitImageWithAlpha", [link("image", "IMAGE")], outputs("IMAGE", "MASK"),
                   "Split Image with Alpha", _CATEGORY, python_module=_MODULE),
            run=lazy_op("compositing", "split_image_with_alpha", 2), binding="split"),
    NodeDef(schema("JoinImageWithAlpha", [link("image", "IMAGE"), link("alpha", "MASK")],
                   outputs("IMAGE"), "Join Image with Alpha", _CATEGORY, python_module=_MODULE),
            run=lazy_op("compositing", "join_image_with_alpha"), fold=True, binding="rgba"),
]
