"""Custom-sampling scheduler and sigma functions against ComfyUI's own nodes (recorded).

``comfyui_samplers/recording.npz`` holds the outputs of ComfyUI's BasicScheduler (every scheduler
on SD1 eps, v-prediction, zSNR, SD3, AuraFlow and two Flux model samplings, at several step
counts and denoise values), BetaSamplingScheduler, SDTurboScheduler, KarrasScheduler,
ExponentialScheduler, PolyexponentialScheduler, VPScheduler, AlignYourStepsScheduler,
SplitSigmas, SplitSigmasDenoise, FlipSigmas and ManualSigmas. The comfyc functions of the same
names must give the same shapes and values to 2e-6 relative (float32 last-bit differences of
torch's exp/pow/linspace; most outputs are bit-identical).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from comfyc.runtime import schedules as SC

from .comfyui_samplers.load import load_recording
from .test_sampler_comfyui_recording import MODEL_SAMPLINGS

REC = load_recording()

_FUNCTIONS = {
    "BasicScheduler": SC.basic_scheduler,
    "BetaSamplingScheduler": SC.beta_sampling_scheduler,
    "SDTurboScheduler": SC.sd_turbo_scheduler,
    "KarrasScheduler": SC.karras_scheduler,
    "ExponentialScheduler": SC.exponential_scheduler,
    "PolyexponentialScheduler": SC.polyexponential_scheduler,
    "VPScheduler": SC.vp_scheduler,
    "AlignYourStepsScheduler": SC.align_your_steps_scheduler,
    "SplitSigmas": SC.split_sigmas,
    "SplitSigmasDenoise": SC.split_sigmas_denoise,
    "FlipSigmas": SC.flip_sigmas,
    "ManualSigmas": SC.manual_sigmas,
}
_WITH_MODEL = {"BasicScheduler", "BetaSamplingScheduler", "SDTurboScheduler"}


def _run(entry: dict[str, Any]) -> tuple[np.ndarray, ...]:
    fn = _FUNCTIONS[entry["node"]]
    inputs = dict(entry["inputs"])
    if entry["node"] in _WITH_MODEL:
        out = fn(MODEL_SAMPLINGS[entry["kind"]], **inputs)
    else:
        out = fn(**inputs)
    return out if isinstance(out, tuple) else (out,)


def _entry_id(entry: dict[str, Any]) -> str:
    inputs = ",".join(f"{k}={v}" for k, v in entry["inputs"].items() if k != "sigmas")
    return f"{entry['node']}[{entry['kind'] or ''}]({inputs})"


@pytest.mark.parametrize("entry", REC.meta["nodes"], ids=_entry_id)
def test_node_matches_comfyui(entry: dict[str, Any]) -> None:
    """Each scheduler/sigma node output equals ComfyUI's (shape exactly, values to 2e-6)."""
    got = _run(entry)
    expected = [REC.get(key) for key in entry["outputs"]]
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == np.float32
        assert g.shape == e.shape, (g, e)
        if entry["inputs"].get("scheduler") == "kl_optimal" and entry["inputs"]["steps"] == 1:
            # NOTE: ComfyUI's kl_optimal divides by steps - 1 and returns [nan, 0] for one step;
            # comfyc returns the formula's limit [sigma_max, 0] (documented in schedules.py).
            assert np.isnan(e[0]) and g[0] == np.float32(MODEL_SAMPLINGS[entry["kind"]].sigma_max)
            continue
        np.testing.assert_allclose(g, e, rtol=2e-6, atol=0)


def test_every_scheduler_on_every_model_sampling() -> None:
    """BasicScheduler was recorded for every scheduler on every model sampling kind."""
    seen = {
        (e["kind"], e["inputs"]["scheduler"])
        for e in REC.meta["nodes"]
        if e["node"] == "BasicScheduler"
    }
    for kind in MODEL_SAMPLINGS:
        for scheduler in SC.SCHEDULER_NAMES:
            assert (kind, scheduler) in seen


def test_denoise_edge_cases_follow_comfyui() -> None:
    """The windows' Python rounding quirks: split at 0 steps, AYS with round() to 0 steps."""
    sig = SC.karras_scheduler(4)
    high, low = SC.split_sigmas_denoise(sig, 0.0)
    assert high.size == 0 and np.array_equal(low, sig[-1:])
    assert np.array_equal(SC.align_your_steps_scheduler("SD1", 1, 0.25), np.zeros(1, np.float32))
    assert SC.align_your_steps_scheduler("SD1", 10, 0.0).size == 0
    assert SC.basic_scheduler(None, "normal", 5, 0.0).size == 0
    flipped = SC.flip_sigmas(sig)
    assert flipped[0] == np.float32(0.0001) and flipped[-1] == sig[0]
    assert SC.set_first_sigma(sig, 20.0)[0] == 20.0 and sig[0] != 20.0
    with pytest.raises(SC.ScheduleError, match="model_type"):
        SC.align_your_steps_scheduler("SD3", 10)


def test_laplace_scheduler_shape_and_range() -> None:
    """LaplaceScheduler: ``steps`` sigmas inside [sigma_min, sigma_max], no trailing zero."""
    sig = SC.laplace_scheduler(12, 14.6, 0.03, 0.0, 0.5)
    assert sig.shape == (12,) and sig.dtype == np.float32
    assert sig.min() >= np.float32(0.03) and sig.max() <= np.float32(14.6)
    assert (np.diff(sig) <= 0).all()
