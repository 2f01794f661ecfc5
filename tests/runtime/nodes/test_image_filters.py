"""ImageBlur and ImageSharpen against torch's own pad and conv2d, as ComfyUI computes them.

The reference follows comfy_extras/nodes_post_processing.py (ComfyUI 4f874c5e): a Gaussian over
``linspace(-1, 1, 2r+1)²``, ``F.pad(..., "reflect")`` by the radius, a depthwise
``F.conv2d`` with ``padding=r`` and the inner ``H×W`` kept; sharpening scales the kernel by
``-10·alpha``, fixes the centre so the weights sum to 1, and clamps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comfyc.runtime.nodes import registry


def _torch_kernel(size: int, sigma: float) -> torch.Tensor:
    x, y = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                          indexing="ij")
    d = torch.sqrt(x * x + y * y)
    g = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    return g / g.sum()


def _torch_filter(image: np.ndarray, kernel: torch.Tensor, radius: int) -> np.ndarray:
    channels = image.shape[-1]
    weights = kernel.repeat(channels, 1, 1).unsqueeze(1)
    tensor = torch.from_numpy(image).permute(0, 3, 1, 2)
    padded = F.pad(tensor, (radius,) * 4, "reflect")
    out = F.conv2d(padded, weights, padding=kernel.shape[0] // 2, groups=channels)
    return out[:, :, radius:-radius, radius:-radius].permute(0, 2, 3, 1).numpy()


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(3).random((2, 19, 23, 3), dtype=np.float32)


@pytest.mark.parametrize("radius,sigma", [(1, 1.0), (3, 0.5), (7, 4.0)])
def test_blur_matches_torch(image: np.ndarray, radius: int, sigma: float) -> None:
    """Every radius and sigma: float32 agreement with torch's conv2d."""
    (out,) = registry().op("ImageBlur")(None, image=image, blur_radius=radius, sigma=sigma)
    expected = _torch_filter(image, _torch_kernel(2 * radius + 1, sigma), radius)
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.abs(out - expected).max() < 2e-6


@pytest.mark.parametrize("radius,sigma,alpha", [(1, 1.0, 1.0), (2, 0.3, 0.5), (5, 2.0, 3.0)])
def test_sharpen_matches_torch(image: np.ndarray, radius: int, sigma: float,
                               alpha: float) -> None:
    """The unsharp kernel sums to 1 and the result is clamped, as ComfyUI's."""
    (out,) = registry().op("ImageSharpen")(None, image=image, sharpen_radius=radius,
                                           sigma=sigma, alpha=alpha)
    kernel = _torch_kernel(2 * radius + 1, sigma) * -(alpha * 10)
    kernel[radius, radius] = kernel[radius, radius] - kernel.sum() + 1.0
    expected = torch.clamp(torch.from_numpy(_torch_filter(image, kernel, radius)), 0, 1)
    assert np.abs(out - expected.numpy()).max() < 2e-5
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_filters_in_a_workflow(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The classes check, convert and run like any other: registry entries are enough."""
    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.program import lower_to_program
    from comfyc.compiler.passes.validate import validate_graph
    from comfyc.frontends.dsl import parse_dsl

    text = """
image = EmptyImage(width=16, height=12, batch_size=1, color=16711680)
soft = ImageBlur(image=image, blur_radius=2, sigma=1.5)
sharp = ImageSharpen(image=soft, sharpen_radius=1, sigma=1.0, alpha=0.5)
output sharp
"""
    graph = parse_dsl(text, "filters.cfy", default_catalog())
    validate_graph(graph, default_catalog(), all_nodes=True)
    result = lower_to_program(graph).run({}, save=False)
    out = result.images["sharp"]
    assert out.shape == (1, 12, 16, 3)
    assert np.allclose(out[..., 0], 1.0, atol=1e-5) and np.allclose(out[..., 1:], 0, atol=1e-5)
