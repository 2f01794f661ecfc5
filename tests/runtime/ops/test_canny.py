"""Canny against kornia's ``canny`` (what ComfyUI's node calls), on larger and harder inputs
than the ComfyUI recording holds; the hysteresis against kornia's iterated rounds."""

from __future__ import annotations

import numpy as np
import pytest

from comfyc.runtime.ops._common import OpError
from comfyc.runtime.ops.canny import _hysteresis, canny_image, gaussian_kernel

torch = pytest.importorskip("torch")
kornia = pytest.importorskip("kornia")


def _picture(shape: tuple[int, int, int, int], block: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    b, h, w, c = shape
    coarse = rng.random((b, h // block + 1, w // block + 1, c))
    up = np.repeat(np.repeat(coarse, block, 1), block, 2)[:, :h, :w]
    return (0.8 * up + 0.2 * rng.random(shape)).astype(np.float32)


def _kornia(image: np.ndarray, low: float, high: float) -> np.ndarray:
    _, edges = kornia.filters.canny(torch.from_numpy(image).movedim(-1, 1), low, high)
    return edges.repeat(1, 3, 1, 1).movedim(1, -1).numpy()


@pytest.mark.parametrize("shape,block", [((1, 300, 280, 3), 7), ((2, 57, 64, 1), 3),
                                         ((1, 5, 6, 3), 1)])
@pytest.mark.parametrize("low,high", [(0.4, 0.8), (0.05, 0.9), (0.2, 0.2)])
def test_edges_match_kornia(shape: tuple[int, int, int, int], block: int, low: float,
                            high: float) -> None:
    """The edge map is kornia's, pixel for pixel (large images take kornia's slice path)."""
    image = _picture(shape, block, seed=sum(shape))
    ours = canny_image(image, low, high)
    assert ours.shape == shape[:3] + (3,) and ours.dtype == np.float32
    assert np.array_equal(ours, _kornia(image, low, high))


def test_flat_and_step_images() -> None:
    """A flat image has no edges; a step has one line on the left (upper) side of a tie."""
    flat = np.full((1, 12, 12, 3), 0.5, dtype=np.float32)
    assert not canny_image(flat, 0.1, 0.2).any()
    step = np.zeros((1, 12, 12, 3), dtype=np.float32)
    step[:, :, 6:] = 1.0
    assert np.array_equal(canny_image(step, 0.1, 0.2), _kornia(step, 0.1, 0.2))


def test_gaussian_kernel_is_kornias() -> None:
    """The 5-tap sigma-1 kernel has kornia's exact float32 values."""
    expected = kornia.filters.get_gaussian_kernel1d(5, torch.tensor([[1.0]]))[0].numpy()
    assert np.array_equal(gaussian_kernel(), expected)


def test_hysteresis_is_kornias_fixed_point() -> None:
    """Union-find equals kornia's rounds: weak pixels 8-connected to a strong one survive."""
    rng = np.random.default_rng(5)
    levels = rng.choice([0.0, 0.5, 1.0], p=[0.5, 0.45, 0.05], size=(2, 40, 37))
    weak, strong = levels > 0, levels == 1
    edges = torch.from_numpy(levels.astype(np.float32))[:, None]
    kernels = kornia.filters.kernels.get_hysteresis_kernel()
    old = -torch.ones_like(edges)
    while (old - edges).abs().ne(0).any():
        old = edges
        hit = (torch.nn.functional.conv2d(edges, kernels, padding=1) == 1).any(1, keepdim=True)
        grown = hit.float() * (edges == 0.5).float() + (edges == 1).float()
        edges = grown + (grown == 0) * (edges == 0.5).float() * 0.5
    assert np.array_equal(_hysteresis(weak, strong), (edges == 1)[:, 0].numpy())


def test_refuses_alpha_and_tiny_images() -> None:
    """RGBA (kornia refuses it) and pictures under 3x3 (reflect padding) are clear errors."""
    with pytest.raises(OpError, match="channels"):
        canny_image(np.zeros((1, 8, 8, 4), np.float32), 0.4, 0.8)
    with pytest.raises(OpError, match="3x3"):
        canny_image(np.zeros((1, 2, 8, 3), np.float32), 0.4, 0.8)
    with pytest.raises(OpError, match="low_threshold"):
        canny_image(np.zeros((1, 8, 8, 3), np.float32), 0.9, 0.4)
