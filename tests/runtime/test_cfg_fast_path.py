"""CFG's common-case path computes bit for bit what the general path computes (issue #22).

The fast path (one whole-latent entry per side) reuses its context and input buffer across
steps; these tests run it against ``_calc_cond_batch`` on a UNet whose output depends on the
row, the context and the timestep, so any reordering or rounding difference shows.
"""

from __future__ import annotations

import numpy as np
import pytest

from comfyc.runtime.cfg import make_denoiser


def fake_unet(x: np.ndarray, t: np.ndarray, context: np.ndarray, **extras: np.ndarray
              ) -> np.ndarray:
    """Row-dependent, context-dependent, nonlinear: a stand-in UNet."""
    mix = context.mean(axis=(1, 2)).reshape(-1, 1, 1, 1).astype(np.float32)
    out = np.tanh(x * np.float32(1.3) + mix) + t.reshape(-1, 1, 1, 1) * np.float32(1e-3)
    for value in extras.values():
        out = out + value.mean(axis=1).reshape(-1, 1, 1, 1)
    return out.astype(np.float32)


def cond(rng: np.random.Generator, tokens: int = 77, **options: object) -> dict[str, object]:
    return {"cond": rng.standard_normal((1, tokens, 8)).astype(np.float32), **options}


def generic(denoiser: object, x: np.ndarray, sigma: float) -> np.ndarray:
    """What CFGDenoiser.__call__ computed before the fast path."""
    import math

    uncond = None if math.isclose(denoiser.cfg, 1.0) else denoiser.negative  # type: ignore[attr-defined]
    c, u = denoiser._calc_cond_batch([denoiser.positive, uncond], x, sigma)  # type: ignore[attr-defined]
    return u + (c - u) * np.float32(denoiser.cfg)  # type: ignore[attr-defined]


@pytest.mark.parametrize("cfg,strength,tokens", [
    (7.0, 1.0, 77), (1.0, 1.0, 77), (1.00000001, 1.0, 77), (5.0, 0.6, 77), (3.0, 1.0, 154)],
    ids=["cfg7", "cfg1", "cfg-near-1", "strength", "token-lcm"])
def test_fast_path_is_bitwise_the_general_path(cfg: float, strength: float,
                                               tokens: int) -> None:
    """Same bits for several steps, batch 2, strengths and mixed context lengths."""
    rng = np.random.default_rng(0)
    positive = [cond(rng, tokens, strength=strength)]
    negative = [cond(rng)]
    shape = (2, 4, 8, 8)
    denoiser = make_denoiser(fake_unet, positive, negative, cfg, shape)
    for sigma in (14.6, 7.1, 2.0, 0.3):
        x = rng.standard_normal(shape).astype(np.float32)
        fast = denoiser(x, sigma)
        assert denoiser._fast  # the fast path was taken
        np.testing.assert_array_equal(fast, generic(denoiser, x, sigma))


def test_general_path_still_serves_areas_and_extras() -> None:
    """An area entry takes the general path (and the result is its result)."""
    rng = np.random.default_rng(1)
    positive = [cond(rng), cond(rng, area=(4, 4, 0, 0), strength=0.5)]
    negative = [cond(rng)]
    denoiser = make_denoiser(fake_unet, positive, negative, 6.0, (1, 4, 8, 8))
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(denoiser(x, 3.0), generic(denoiser, x, 3.0))
    assert denoiser._fast.get(True) is None
