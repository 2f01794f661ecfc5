"""The per-stage timing summary of a run (``RunResult.timings["stages"]``)."""

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
