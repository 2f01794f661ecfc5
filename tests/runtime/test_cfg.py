"""The CFG denoiser against k-diffusion's model wrappers and a straightforward torch reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from comfyc.runtime import cfg as C
from comfyc.runtime.schedules import SD1_SCHEDULE

from .kdiff_oracle import DummyUNet, comfy_sigma_tables, load_k_external

SIGMAS = [14.614642, 7.1, 1.25, 0.3, 0.0291675]


def _ctx(tokens: int, seed: int, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, tokens, dim)).astype(np.float32)


def _latent(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * np.float32(3)


def _k_model(unet: DummyUNet, v_prediction: bool = False):
    """k-diffusion's Discrete{Eps,V}DDPMDenoiser (quantize=True) over ComfyUI's table."""
    external = load_k_external()
    sigmas, log_sigmas = comfy_sigma_tables()
    base = external.DiscreteVDDPMDenoiser if v_prediction else external.DiscreteEpsDDPMDenoiser

    class _Eps(torch.nn.Module):
        def forward(self, x_in, t, cond):
            return unet.torch(x_in, t, cond)

    model = base(_Eps(), 1.0 / (sigmas.double() ** 2 + 1.0), quantize=True)
    model.register_buffer("sigmas", sigmas.clone())
    model.register_buffer("log_sigmas", log_sigmas.clone())
    return model


def _k_x0(model, x: np.ndarray, sigma: float, ctx: np.ndarray) -> np.ndarray:
    xt = torch.from_numpy(x)
    c = torch.from_numpy(ctx).expand(x.shape[0], -1, -1)
    with torch.no_grad():
        return model(xt, torch.full((x.shape[0],), sigma), cond=c).numpy()


@pytest.mark.parametrize("sigma", SIGMAS)
def test_single_cond_matches_k_diffusion(sigma: float) -> None:
    """cfg 1: x0 equals DiscreteEpsDDPMDenoiser(quantize=True); the negative is not evaluated."""
    unet = DummyUNet()
    x = _latent((2, 4, 8, 8))
    cond, uncond = _ctx(77, 1), _ctx(77, 2)
    den = C.make_denoiser(unet.numpy, [{"cond": cond}], [{"cond": uncond}], 1.0, x.shape)
    got = den(x, sigma)
    expected = _k_x0(_k_model(unet), x, sigma, cond)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    assert unet.rows == [2]  # one call, the positive only


@pytest.mark.parametrize("sigma", SIGMAS)
def test_v_prediction_matches_k_diffusion(sigma: float) -> None:
    """v_prediction: x0 equals DiscreteVDDPMDenoiser(quantize=True)."""
    unet = DummyUNet()
    x = _latent((1, 4, 8, 8), 3)
    cond = _ctx(77, 1)
    den = C.make_denoiser(
        unet.numpy, [{"cond": cond}], None, 1.0, x.shape, prediction_type="v_prediction"
    )
    expected = _k_x0(_k_model(unet, v_prediction=True), x, sigma, cond)
    np.testing.assert_allclose(den(x, sigma), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("cfg", [0.0, 3.5, 7.0, 12.0])
def test_cfg_batches_cond_and_uncond(cfg: float) -> None:
    """cfg != 1: one UNet call with cond and uncond rows; x0_u + (x0_c - x0_u) * cfg."""
    unet = DummyUNet()
    x = _latent((2, 4, 8, 8), 4)
    cond, uncond = _ctx(77, 1), _ctx(77, 2)
    den = C.make_denoiser(unet.numpy, [{"cond": cond}], [{"cond": uncond}], cfg, x.shape)
    got = den(x, 3.0)
    model = _k_model(unet)
    x0_c, x0_u = _k_x0(model, x, 3.0, cond), _k_x0(model, x, 3.0, uncond)
    np.testing.assert_allclose(got, x0_u + (x0_c - x0_u) * np.float32(cfg), rtol=0, atol=2e-5)
    assert unet.rows == [4]  # cond and uncond in one call (the oracle does not count)


def test_cfg_one_is_isclose() -> None:
    """math.isclose(cfg, 1.0) skips the negative even for 1.0 + 1e-12."""
    unet = DummyUNet()
    x = _latent((1, 4, 8, 8))
    den = C.make_denoiser(
        unet.numpy, [{"cond": _ctx(77, 1)}], [{"cond": _ctx(77, 2)}], 1.0 + 1e-12, x.shape
    )
    den(x, 1.0)
    assert unet.rows == [1]


def test_different_context_lengths_are_padded_by_repeat() -> None:
    """A 154-token prompt and a 77-token negative share one call; the 77 is repeated twice."""
    seen: list[tuple[int, ...]] = []
    unet = DummyUNet()

    def spy(x, t, context):
        seen.append(context.shape)
        return unet.numpy(x, t, context)

    x = _latent((1, 4, 8, 8), 5)
    cond, uncond = _ctx(154, 1), _ctx(77, 2)
    den = C.make_denoiser(spy, [{"cond": cond}], [{"cond": uncond}], 6.0, x.shape)
    got = den(x, 2.0)
    assert seen == [(2, 154, 8)]
    model = _k_model(unet)
    x0_c, x0_u = _k_x0(model, x, 2.0, cond), _k_x0(model, x, 2.0, uncond)
    # NOTE: repeating a context leaves cross-attention (here: the token mean) unchanged.
    np.testing.assert_allclose(got, x0_u + (x0_c - x0_u) * np.float32(6.0), rtol=0, atol=2e-5)


def test_context_lengths_too_far_apart_run_separately() -> None:
    """lcm / min > 4 (77 vs 385 tokens) cannot be batched: two UNet calls (CONDCrossAttn)."""
    seen: list[tuple[int, ...]] = []
    unet = DummyUNet()

    def spy(x, t, context):
        seen.append(context.shape)
        return unet.numpy(x, t, context)

    x = _latent((1, 4, 8, 8), 5)
    den = C.make_denoiser(spy, [{"cond": _ctx(385, 1)}], [{"cond": _ctx(77, 2)}], 6.0, x.shape)
    den(x, 2.0)
    assert sorted(seen) == [(1, 77, 8), (1, 385, 8)]


def test_max_batch_size_splits_rows_without_changing_results() -> None:
    """max_batch_size caps the rows per UNet call; the result is unchanged."""
    x = _latent((3, 4, 8, 8), 6)
    pos, neg = [{"cond": _ctx(77, 1)}], [{"cond": _ctx(77, 2)}]
    whole = DummyUNet()
    expected = C.make_denoiser(whole.numpy, pos, neg, 7.0, x.shape)(x, 1.5)
    split = DummyUNet()
    got = C.make_denoiser(split.numpy, pos, neg, 7.0, x.shape, max_batch_size=2)(x, 1.5)
    assert whole.rows == [6]
    assert max(split.rows) <= 2 and sum(split.rows) == 6
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Areas, masks, strengths and timestep ranges against a straightforward torch reference.


def _ref_feather(mult: torch.Tensor, area, full: tuple[int, int]) -> torch.Tensor:
    """Feathering as described in comfyui-format.md 4.5 (ramp over min(8, size // 4))."""
    h, w, y, x = area
    for axis, (size, offset, total) in enumerate(((h, y, full[0]), (w, x, full[1]))):
        rr = min(8, size // 4)
        for t in range(rr):
            factor = (t + 1) / rr
            if offset != 0:
                idx = [slice(None)] * 4
                idx[2 + axis] = t
                mult[tuple(idx)] *= factor
            if size + offset < total:
                idx = [slice(None)] * 4
                idx[2 + axis] = size - 1 - t
                mult[tuple(idx)] *= factor
    return mult


def _ref_side(model, x: torch.Tensor, sigma: float, entries: list[dict]) -> torch.Tensor:
    """Weighted average of per-entry x0 over their regions (torch, one entry at a time)."""
    num = torch.zeros_like(x)
    den = torch.full_like(x, 1e-37)
    for e in entries:
        if "start" in e and sigma > e["start"]:
            continue
        if "end" in e and sigma < e["end"]:
            continue
        h, w = x.shape[2:]
        area = e.get("area", (h, w, 0, 0))
        ah, aw, ay, ax = area
        crop = x[:, :, ay : ay + ah, ax : ax + aw]
        c = torch.from_numpy(e["cond"]).expand(x.shape[0], -1, -1)
        x0 = model(crop, torch.full((x.shape[0],), sigma), cond=c)
        if "mask" in e:
            m = torch.from_numpy(e["mask"])[None, None, ay : ay + ah, ax : ax + aw]
            mult = (m * e.get("mask_strength", 1.0)).expand_as(crop).clone()
        else:
            mult = torch.ones_like(crop)
            if "area" in e:
                mult = _ref_feather(mult, area, (h, w))
        mult = mult * e.get("strength", 1.0)
        num[:, :, ay : ay + ah, ax : ax + aw] += x0 * mult
        den[:, :, ay : ay + ah, ax : ax + aw] += mult
    return num / den


def test_area_strength_and_synthesised_uncond() -> None:
    """An area entry is feathered, weighted, and gets a same-area uncond from the negative."""
    unet = DummyUNet()
    shape = (1, 4, 16, 16)
    x = _latent(shape, 7)
    a, b, n = _ctx(77, 1), _ctx(77, 3), _ctx(77, 2)
    positive = [{"cond": a}, {"cond": b, "area": (8, 8, 4, 3), "strength": 0.8}]
    negative = [{"cond": n}]
    den = C.make_denoiser(unet.numpy, positive, negative, 5.0, shape)
    got = den(x, 2.5)
    model = _k_model(unet)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        pos = _ref_side(
            model, xt, 2.5, [{"cond": a}, {"cond": b, "area": (8, 8, 4, 3), "strength": 0.8}]
        )
        # NOTE: the synthesised uncond copies the area entry (area, strength) with n's context.
        neg = _ref_side(
            model, xt, 2.5, [{"cond": n}, {"cond": n, "area": (8, 8, 4, 3), "strength": 0.8}]
        )
    expected = (neg + (pos - neg) * 5.0).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    assert len(den.negative) == 2 and den.negative[1].area == (8, 8, 4, 3)


def test_area_clipped_to_latent_and_percentage_area() -> None:
    """Areas beyond the border are clipped; ("percentage", h, w, y, x) resolves to latent units."""
    unet = DummyUNet()
    shape = (1, 4, 16, 16)
    x = _latent(shape, 8)
    a, b = _ctx(77, 1), _ctx(77, 3)
    den = C.make_denoiser(
        unet.numpy,
        [{"cond": a}, {"cond": b, "area": ("percentage", 0.5, 0.75, 0.5, 0.5)}],
        None,
        1.0,
        shape,
    )
    assert den.positive[1].area == (8, 12, 8, 8)
    got = den(x, 1.0)
    model = _k_model(unet)
    with torch.no_grad():
        expected = _ref_side(
            model, torch.from_numpy(x), 1.0, [{"cond": a}, {"cond": b, "area": (8, 8, 8, 8)}]
        ).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


def test_mask_strength_and_bounds() -> None:
    """Masked entries weight by mask x mask_strength (no feathering); set_area_to_bounds crops."""
    unet = DummyUNet()
    shape = (1, 4, 16, 16)
    x = _latent(shape, 9)
    mask = np.zeros((16, 16), np.float32)
    mask[2:12, 5:15] = np.linspace(0.2, 1.0, 10, dtype=np.float32)[None, :]
    a, b = _ctx(77, 1), _ctx(77, 3)
    positive = [
        {"cond": a},
        {"cond": b, "mask": mask, "mask_strength": 0.7, "set_area_to_bounds": True},
    ]
    den = C.make_denoiser(unet.numpy, positive, None, 1.0, shape)
    assert den.positive[1].area == (10, 10, 2, 5)
    got = den(x, 0.8)
    model = _k_model(unet)
    with torch.no_grad():
        expected = _ref_side(
            model,
            torch.from_numpy(x),
            0.8,
            [
                {"cond": a},
                {"cond": b, "mask": mask, "mask_strength": 0.7, "area": (10, 10, 2, 5)},
            ],
        ).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


def test_mask_is_resized_bilinearly() -> None:
    """A pixel-size mask is resized to the latent like torch's bilinear interpolate."""
    mask = np.random.default_rng(3).random((64, 40)).astype(np.float32)
    den = C.make_denoiser(
        DummyUNet().numpy, [{"cond": _ctx(77, 1), "mask": mask}], None, 1.0, (1, 4, 8, 5)
    )
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(mask)[None, None], size=(8, 5), mode="bilinear", align_corners=False
    )[0].numpy()
    np.testing.assert_allclose(den.positive[0].mask, expected, rtol=0, atol=1e-6)


def test_start_end_percent() -> None:
    """Entries are active only while percent_to_sigma(end) <= sigma <= percent_to_sigma(start)."""
    unet = DummyUNet()
    shape = (1, 4, 8, 8)
    x = _latent(shape, 10)
    a, b = _ctx(77, 1), _ctx(77, 3)
    positive = [{"cond": a}, {"cond": b, "start_percent": 0.5, "end_percent": 0.9}]
    den = C.make_denoiser(unet.numpy, positive, None, 1.0, shape)
    start = SD1_SCHEDULE.percent_to_sigma(0.5)
    end = SD1_SCHEDULE.percent_to_sigma(0.9)
    assert den.positive[1].timestep_start == start and den.positive[1].timestep_end == end
    model = _k_model(unet)
    for sigma in (14.0, 0.5 * (start + end), 0.05):
        active = [{"cond": a}, {"cond": b, "start": start, "end": end}]
        with torch.no_grad():
            expected = _ref_side(model, torch.from_numpy(x), sigma, active).numpy()
        np.testing.assert_allclose(den(x, sigma), expected, rtol=0, atol=2e-5)


def test_comfy_pair_form_and_errors() -> None:
    """[cond, options] pairs are accepted; unsupported features and bad input raise clearly."""
    unet = DummyUNet()
    shape = (1, 4, 8, 8)
    den = C.make_denoiser(unet.numpy, [[_ctx(77, 1), {"strength": 1.0}]], None, 1.0, shape)
    assert den(_latent(shape), 1.0).shape == shape
    with pytest.raises(C.ConditioningError, match="ControlNet"):
        C.make_denoiser(unet.numpy, [{"cond": _ctx(77, 1), "control": object()}], None, 1.0, shape)
    with pytest.raises(C.ConditioningError, match="negative"):
        C.make_denoiser(unet.numpy, [{"cond": _ctx(77, 1)}], [], 7.0, shape)
    with pytest.raises(C.ConditioningError, match="prediction_type"):
        C.make_denoiser(unet.numpy, [{"cond": _ctx(77, 1)}], None, 1.0, shape, prediction_type="x0")


def test_concat_channels_for_inpainting_unets() -> None:
    """c_concat is appended after the input scaling (9-channel inpainting UNets)."""
    seen: list[np.ndarray] = []

    def unet(x, t, context):
        seen.append(x)
        return x[:, :4] * np.float32(0.5)

    shape = (1, 4, 8, 8)
    x = _latent(shape, 11)
    concat = np.ones((1, 5, 8, 8), np.float32)
    den = C.make_denoiser(unet, [{"cond": _ctx(77, 1)}], None, 1.0, shape, concat=concat)
    den(x, 2.0)
    assert seen[0].shape == (1, 9, 8, 8)
    np.testing.assert_allclose(seen[0][:, :4], x / math.sqrt(5.0), rtol=1e-6)
    assert (seen[0][:, 4:] == 1.0).all()
