"""The Canny edge detector (``comfy_extras/nodes_canny.py``), the usual ControlNet hint.

ComfyUI runs kornia's ``canny``; :mod:`comfyc.runtime.ops.canny` reproduces it in numpy (same
blur, unnormalised Sobel magnitude, non-maximum suppression and hysteresis). The node is pure
and folded on a constant image, so a fixed control image costs nothing at run time.
"""

from __future__ import annotations

from .registry import NodeDef, lazy_op
from .schema import float_input, link, outputs, schema

__all__ = ["NODES"]

NODES: list[NodeDef] = [
    NodeDef(schema("Canny", [
        link("image", "IMAGE"), float_input("low_threshold", 0.4, 0.01, 0.99),
        float_input("high_threshold", 0.8, 0.01, 0.99),
    ], outputs("IMAGE"), "Detect Edges (Canny)", "image/filters",
        python_module="comfy_extras.nodes_canny"),
        run=lazy_op("canny", "canny_image"), fold=True, binding="edges"),
]
