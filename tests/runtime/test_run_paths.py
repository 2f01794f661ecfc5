"""A run's cheap paths against their references: the per-stage timing summary
(``RunResult.timings["stages"]``) and VAEDecode's conversion to an IMAGE."""

from __future__ import annotations

import numpy as np
import pytest

from comfyc.runtime.backends.base import StageTimer


@pytest.mark.parametrize("count", [1, 2, 5, 20, 21])
def test_summary_matches_numpy(count: int) -> None:
    """Calls, total and median per stage, the median as numpy.median computes it."""
    times = list(np.random.default_rng(count).random(count) * 1e-3)
    timer = StageTimer()
    for t in times:
        timer.add("unet", t)
    timer.add("vae_decoder", 0.5)
    summary = timer.summary()
    assert summary["unet"] == {"calls": count, "total_s": float(sum(times)),
                               "median_s": float(np.median(times))}
    assert summary["vae_decoder"]["median_s"] == 0.5
    assert timer.total() == pytest.approx(sum(times) + 0.5)
    timer.reset()
    assert timer.summary() == {} and timer.total() == 0


def test_vae_decode_output_is_torch_clamp() -> None:
    """VAEDecode's IMAGE is ComfyUI's clamp((x + 1) / 2, 0, 1) moved to channels-last, bit
    for bit, NaN and infinities included (torch is the oracle)."""
    import torch

    from comfyc.runtime.nodes.latent import vae_decode
    from comfyc.runtime.values import VaeRef

    raw = np.random.default_rng(3).standard_normal((2, 3, 5, 4)).astype(np.float32) * 2
    raw[0, 0, 0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    got = vae_decode(VaeRef(lambda samples: raw, None, "v"), np.zeros((2, 4, 1, 1), np.float32))
    want = torch.clamp((torch.from_numpy(raw) + 1.0) / 2.0, min=0.0, max=1.0)
    assert got.flags.c_contiguous and got.dtype == np.float32
    assert np.array_equal(got, want.movedim(1, -1).numpy(), equal_nan=True)
