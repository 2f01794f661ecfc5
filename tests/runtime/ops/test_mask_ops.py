"""Mask ops beyond the ComfyUI recording: GrowMask against scipy's grey morphology at large
expansions, error messages, and the new classes running in a compiled workflow."""

from __future__ import annotations

import numpy as np
import pytest

from comfyc.runtime.ops._common import OpError
from comfyc.runtime.ops.mask import grow_mask, image_to_mask, mask_composite

ndimage = pytest.importorskip("scipy.ndimage")


@pytest.mark.parametrize("expand", [-7, -2, 5, 12])
@pytest.mark.parametrize("tapered", [True, False])
def test_grow_mask_matches_scipy(expand: int, tapered: bool) -> None:
    """``|expand|`` rounds of scipy's grey_dilation/erosion with ComfyUI's footprints."""
    rng = np.random.default_rng(abs(expand))
    masks = ((rng.random((2, 31, 27)) > 0.9) * rng.random((2, 31, 27))).astype(np.float32)
    c = 0 if tapered else 1
    footprint = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
    expected = []
    for m in masks:
        for _ in range(abs(expand)):
            op = ndimage.grey_erosion if expand < 0 else ndimage.grey_dilation
            m = op(m, footprint=footprint)
        expected.append(m)
    assert np.array_equal(grow_mask(masks, expand, tapered), np.stack(expected))


def test_errors_say_what_and_how() -> None:
    """An alpha asked of an RGB image, or masks that cannot be combined, are OpErrors."""
    with pytest.raises(OpError, match="no alpha"):
        image_to_mask(np.zeros((1, 4, 4, 3), np.float32), "alpha")
    with pytest.raises(OpError, match="one per destination"):
        mask_composite(np.zeros((2, 4, 4), np.float32), np.zeros((3, 4, 4), np.float32), 0, 0,
                       "add")


def test_mask_nodes_in_a_workflow() -> None:
    """Canny, mask and compositing classes check, lower and run like any other class."""
    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.program import lower_to_program
    from comfyc.compiler.passes.validate import validate_graph
    from comfyc.frontends.dsl import parse_dsl

    text = """
image = EmptyImage(width=24, height=20, batch_size=1, color=16711680)
other = EmptyImage(width=8, height=8, batch_size=1, color=255)
painted = ImageCompositeMasked(destination=image, source=other, x=4, y=6, resize_source=false)
edges = Canny(image=painted, low_threshold=0.1, high_threshold=0.2)
mask = ImageToMask(image=edges, channel="red")
grown = GrowMask(mask=mask, expand=2, tapered_corners=true)
feathered = FeatherMask(mask=grown, left=2, top=0, right=0, bottom=3)
solid = SolidMask(value=0.5, width=8, height=8)
both = MaskComposite(destination=feathered, source=solid, x=0, y=0, operation="add")
inverted = InvertMask(mask=both)
rgba = JoinImageWithAlpha(image=painted, alpha=inverted)
split = SplitImageWithAlpha(image=rgba)
again = JoinImageWithAlpha(image=split.IMAGE, alpha=split.MASK)
output rgba
output again
"""
    graph = parse_dsl(text, "masks.cfy", default_catalog())
    validate_graph(graph, default_catalog(), all_nodes=True)
    result = lower_to_program(graph).run({}, save=False)
    rgba = result.images["rgba"]
    assert rgba.shape == (1, 20, 24, 4)
    # Alpha is the grown edge mask plus 0.5 over the solid mask's 8x8 corner (two inversions).
    alpha = rgba[0, :, :, 3]
    assert alpha[6, 6] == 1.0 and alpha[0, 0] == 0.5 and alpha[0, 23] == 0.0
    assert np.array_equal(result.images["again"], rgba)
