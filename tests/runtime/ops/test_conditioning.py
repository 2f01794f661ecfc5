"""Tests for comfyc.runtime.ops.conditioning: ComfyUI's conditioning nodes on small entries."""
from __future__ import annotations

import copy
import logging

import numpy as np
import pytest

from comfyc.runtime.ops import OpError
from comfyc.runtime.ops.conditioning import (
    conditioning_average,
    conditioning_combine,
    conditioning_concat,
    set_area,
    set_area_percentage,
    set_area_strength,
    set_mask,
    set_timestep_range,
    zero_out,
)


def _cond(tokens: int = 4, dim: int = 3, value: float = 1.0, pooled: bool = True) -> dict:
    return {
        "cond": np.full((1, tokens, dim), value, np.float32),
        "pooled_output": np.full((1, dim), value, np.float32) if pooled else None,
    }


def test_combine_concatenates_lists_without_sharing_dicts() -> None:
    """ConditioningCombine: first list then second; new dicts."""
    a, b = [_cond(value=1)], [_cond(value=2), _cond(value=3)]
    out = conditioning_combine(a, b)
    assert [e["cond"][0, 0, 0] for e in out] == [1, 2, 3]
    assert out[0] is not a[0]
    out[0]["strength"] = 2.0
    assert "strength" not in a[0]


def test_concat_appends_first_from_entry(caplog: pytest.LogCaptureFixture) -> None:
    """ConditioningConcat: tokens of conditioning_from[0] appended to each entry; warns on more."""
    to = [_cond(tokens=4, value=1) | {"strength": 0.5}, _cond(tokens=2, value=2)]
    frm = [_cond(tokens=3, value=9), _cond(tokens=3, value=7)]
    with caplog.at_level(logging.WARNING):
        out = conditioning_concat(to, frm)
    assert "only the first one" in caplog.text
    assert out[0]["cond"].shape == (1, 7, 3) and out[1]["cond"].shape == (1, 5, 3)
    np.testing.assert_array_equal(out[0]["cond"][0, 4:], 9)
    assert out[0]["strength"] == 0.5
    assert to[0]["cond"].shape == (1, 4, 3)  # input untouched


def test_average_hand_computed_and_token_padding() -> None:
    """ConditioningAverage: to * s + from * (1 - s); from cut or zero-padded to T tokens."""
    to = [_cond(tokens=4, value=1.0), _cond(tokens=2, value=1.0)]
    frm = [_cond(tokens=3, value=3.0)]
    out = conditioning_average(to, frm, 0.25)
    np.testing.assert_allclose(out[0]["cond"][0, :, 0], [2.5, 2.5, 2.5, 0.25])  # padded token
    np.testing.assert_allclose(out[1]["cond"][0, :, 0], [2.5, 2.5])  # cut to 2 tokens
    np.testing.assert_allclose(out[0]["pooled_output"], 2.5)


def test_average_pooled_cases() -> None:
    """Pooled: mixed when both exist, taken from `from` when `to` has none, else left alone."""
    out = conditioning_average([_cond(pooled=False)], [_cond(value=2.0)], 0.5)
    np.testing.assert_array_equal(out[0]["pooled_output"], 2.0)
    out = conditioning_average([_cond(value=4.0)], [_cond(pooled=False)], 0.5)
    np.testing.assert_array_equal(out[0]["pooled_output"], 4.0)
    missing = {"cond": np.ones((1, 4, 3), np.float32)}
    out = conditioning_average([missing], [_cond(value=2.0)], 0.5)
    np.testing.assert_allclose(out[0]["pooled_output"], 2.0)


def test_set_area_pixels_to_latent() -> None:
    """ConditioningSetArea stores (h//8, w//8, y//8, x//8), strength, bounds False."""
    src = [_cond()]
    out = set_area(src, width=200, height=64, x=17, y=8, strength=0.8)
    assert out[0]["area"] == (8, 25, 1, 2)
    assert out[0]["strength"] == 0.8 and out[0]["set_area_to_bounds"] is False
    assert "area" not in src[0] and out[0]["cond"] is src[0]["cond"]


def test_set_area_percentage_and_strength() -> None:
    """Percentage areas are stored tagged, in (h, w, y, x) order; strength alone can be set."""
    out = set_area_percentage([_cond()], width=0.5, height=0.25, x=0.1, y=0.2, strength=1.5)
    assert out[0]["area"] == ("percentage", 0.25, 0.5, 0.2, 0.1)
    out = set_area_strength(out, 3.0)
    assert out[0]["strength"] == 3.0 and out[0]["area"][0] == "percentage"


def test_set_mask() -> None:
    """ConditioningSetMask: 3-D mask, mask_strength, bounds for 'mask bounds'."""
    out = set_mask([_cond()], np.ones((8, 8), np.float32), 0.7, "mask bounds")
    assert out[0]["mask"].shape == (1, 8, 8)
    assert out[0]["mask_strength"] == 0.7 and out[0]["set_area_to_bounds"] is True
    out = set_mask([_cond()], np.ones((2, 8, 8), np.float32), 1.0, "default")
    assert out[0]["set_area_to_bounds"] is False
    with pytest.raises(OpError, match="set_cond_area 'bounds'"):
        set_mask([_cond()], np.ones((8, 8), np.float32), 1.0, "bounds")


def test_zero_out() -> None:
    """ConditioningZeroOut: zeros for cond and pooled_output (None stays None)."""
    src = [_cond(value=5.0), _cond(value=5.0, pooled=False)]
    before = copy.deepcopy(src)
    out = zero_out(src)
    assert not out[0]["cond"].any() and not out[0]["pooled_output"].any()
    assert out[1]["pooled_output"] is None and out[0]["cond"].shape == (1, 4, 3)
    np.testing.assert_array_equal(src[0]["cond"], before[0]["cond"])


def test_set_timestep_range() -> None:
    """ConditioningSetTimestepRange stores start_percent / end_percent as given."""
    out = set_timestep_range([_cond()], 0.2, 0.9)
    assert out[0]["start_percent"] == 0.2 and out[0]["end_percent"] == 0.9


def test_bad_conditioning_is_refused() -> None:
    """A ComfyUI [cond, options] pair or a bare array gets an error saying how to convert it."""
    with pytest.raises(OpError, match=r"\{'cond': cond, \*\*options\}"):
        zero_out([[np.zeros((1, 4, 3)), {}]])
    with pytest.raises(OpError, match="expected a CONDITIONING list"):
        zero_out(np.zeros((1, 4, 3)))
    with pytest.raises(OpError, match="conditioning_from is empty"):
        conditioning_concat([_cond()], [])
