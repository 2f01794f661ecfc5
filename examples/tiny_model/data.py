"""Training data for the tiny digits model: scikit-learn's digits as 64x64 RGB images, and prompts.

Images are **dark ink on white paper**: pixel = 1 - ink, the same value in R, G and B, in [0, 1]
(the VAE sees them as ``2 * pixel - 1`` in [-1, 1]). The 8x8 digits (values 0..16) are upscaled
bicubically to 64x64 so that one source pixel covers one 8x8 block exactly; area-averaging a
64x64 image back to 8x8 therefore gives (nearly) the source digit, which is what the independent
classifier (``classifier.py``) relies on.

Augmentation (per sample, seeded): a small affine transform (shift up to +-3 px at 64x64,
rotation up to +-8 degrees, scale 0.93..1.07) and a stroke-thickness change (ink ** gamma with
gamma in 0.75..1.33: below 1 thickens and darkens, above 1 thins).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

__all__ = [
    "DIGIT_WORDS",
    "IMAGE_SIZE",
    "PROMPT_TEMPLATES",
    "augment",
    "digit_prompts",
    "load_ink_64",
]

IMAGE_SIZE = 64
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Prompt templates; ``{word}`` is the digit's name, ``{n}`` its numeral.
PROMPT_TEMPLATES = (
    "a handwritten digit {word}",
    "a handwritten digit {n}",
    "the number {n}",
    "the number {word}",
    "{n}",
    "{word}",
    "digit {n}",
    "digit {word}",
    "a digit {word}",
    "handwritten {word}",
    "the handwritten number {word}",
    "a drawing of the number {n}",
)


def digit_prompts(digit: int) -> list[str]:
    """Returns every training prompt for ``digit`` (one per template).

    Args:
        digit: 0..9.
    """
    return [t.format(word=DIGIT_WORDS[digit], n=digit) for t in PROMPT_TEMPLATES]


def load_ink_64() -> tuple[torch.Tensor, torch.Tensor]:
    """Loads the digits dataset as 64x64 ink maps.

    Returns:
        ``(ink, labels)``: ink is float32 [N, 1, 64, 64] in [0, 1] (1 = full ink), labels is
        int64 [N]. N = 1797.
    """
    digits = load_digits()
    ink8 = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    ink = F.interpolate(ink8, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=False)
    return ink.clamp(0.0, 1.0), torch.from_numpy(digits.target.astype(np.int64))


def augment(ink: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Applies the light random augmentation and turns ink into RGB paper images.

    Args:
        ink: [B, 1, H, W] ink maps in [0, 1].
        generator: Seeded CPU generator driving every random choice.

    Returns:
        [B, 3, H, W] images in [-1, 1], dark ink on white paper.
    """
    b, _, h, _ = ink.shape

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=generator)

    angle = uniform(-8.0, 8.0) * (math.pi / 180.0)
    scale = uniform(0.93, 1.07)
    shift = torch.stack([uniform(-3.0, 3.0), uniform(-3.0, 3.0)], dim=1) * (2.0 / h)
    gamma = torch.exp(uniform(math.log(0.75), math.log(1.33)))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # NOTE: affine_grid maps output coordinates to input coordinates, so the inverse transform
    # (rotation by -angle, 1/scale) is what we write down.
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(ink.shape), align_corners=False)
    moved = F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    moved = moved.clamp(0.0, 1.0) ** gamma[:, None, None, None]
    paper = 1.0 - moved
    return (paper * 2.0 - 1.0).expand(-1, 3, -1, -1).contiguous()
