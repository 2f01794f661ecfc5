"""SamplerCustom(Advanced) semantics, sampler specs, CFG++ with the real CFG denoiser, and the
edge cases every sampler must survive (no ComfyUI needed)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from comfyc.runtime import cfg as cfg_mod
from comfyc.runtime import model_sampling as M
from comfyc.runtime import samplers as S
from comfyc.runtime import schedules as SC

from .comfyui_samplers.analytic import CFGPair, make_models

SHAPE = (1, 4, 4, 4)


def _pair(flow: bool = False, cfg: float = 3.0) -> CFGPair:
    cond, uncond = make_models(*SHAPE[1:], flow=flow)
    return CFGPair(cond, uncond, cfg)


def _latent() -> np.ndarray:
    return np.random.default_rng(3).normal(0, 2, SHAPE).astype(np.float32)


def test_empty_sigmas_return_the_latent() -> None:
    """CFGGuider.sample: no sigmas, no sampling; denoised_output is the output."""
    latent = _latent()
    res = S.sample_custom(_pair(), latent, S.ksampler_select("euler"), [], S.RandomNoise(1))
    assert np.array_equal(res.output, latent) and np.array_equal(res.denoised_output, latent)


def test_disable_noise_seeds_the_sampler_with_its_seed() -> None:
    """DisableNoise(seed) = zero initial noise, sampler noise from seed (KSamplerAdvanced)."""
    latent = _latent()
    sig = SC.basic_scheduler(M.SD1_EPS, "normal", 5, 0.6)
    got = S.sample_custom(_pair(), latent, S.sampler_euler_ancestral(0.7, 1.0), sig,
                          S.DisableNoise(seed=5))
    expected = S.ksampler(_pair(), latent, 5, sig, S.sampler_euler_ancestral(0.7, 1.0),
                          add_noise=False)
    assert np.array_equal(got.output, expected)


def test_random_noise_matches_ksampler_and_reports_last_x0() -> None:
    """RandomNoise(seed) draws ComfyUI's prepare_noise; denoised_output is the last x0."""
    latent = _latent()
    sig = SC.basic_scheduler(None, "karras", 4, 0.7)
    seen: list[np.ndarray] = []
    got = S.sample_custom(_pair(), latent, "dpmpp_2m", sig, S.RandomNoise(9),
                          callback=lambda i, x0, x, n: seen.append(x0))
    assert np.array_equal(got.output, S.ksampler(_pair(), latent, 9, sig, "dpmpp_2m"))
    assert np.allclose(got.denoised_output, seen[-1] / np.float32(0.18215), rtol=1e-6)


def test_latent_shift_factor_round_trip() -> None:
    """process_in ``(x - shift) * scale`` on non-empty latents, process_out always."""
    ms = M.model_sampling_sd3()
    latent = _latent()
    sig = SC.basic_scheduler(ms, "simple", 3, 0.5)
    out = S.ksampler(_pair(flow=True), latent, 2, sig, "euler", model_sampling=ms,
                     latent_scale=1.5305, latent_shift=0.0609)
    inner = S.sample(_pair(flow=True), (latent - np.float32(0.0609)) * np.float32(1.5305),
                     S.prepare_noise(SHAPE, 2), sig, "euler", 2, model_sampling=ms)
    np.testing.assert_allclose(out, inner / np.float32(1.5305) + np.float32(0.0609), rtol=1e-6)


def test_spec_constructors_follow_the_nodes() -> None:
    """Node option mapping: noise_device picks the _gpu twin, ER-SDE ODE zeroes the noise."""
    assert S.sampler_dpmpp_2m_sde("heun", noise_device="cpu").name == "dpmpp_2m_sde"
    assert S.sampler_dpmpp_3m_sde().name == "dpmpp_3m_sde_gpu"
    ode = S.sampler_er_sde("ODE", 2, 0.7, 1.0)
    assert ode.options == {"s_noise": 0.0, "max_stage": 2, "reverse_time_eta": 0.0}
    assert S.sampler_er_sde().options["reverse_time_eta"] is None
    sa = S.sampler_sa_solver(M.SD1_EPS, sde_start_percent=0.0, sde_end_percent=1.0)
    assert sa.options["sde_start_sigma"] == 999999999.9 and sa.options["sde_end_sigma"] == 0.0
    assert S.SamplerSpec("lms", {"order": 3}).option_names() == ("order",)


def test_cfg_pp_uses_the_cfg_denoisers_uncond() -> None:
    """CFGDenoiser.denoise_with_uncond evaluates the negative even at cfg 1 (ComfyUI's
    disable_cfg1_optimization), and a plain callable counts as its own uncond."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (4, 4)).astype(np.float32)

    def unet(x, t, context):
        return (np.einsum("oc,bchw->bohw", w, x) * np.float32(0.5)
                + context.mean(axis=(1, 2))[:, None, None, None]).astype(np.float32)

    cond = rng.normal(0, 1, (1, 3, 8)).astype(np.float32)
    unc = rng.normal(0, 1, (1, 3, 8)).astype(np.float32)
    den = cfg_mod.make_denoiser(unet, [{"cond": cond}], [{"cond": unc}], 1.0, SHAPE)
    x = rng.normal(0, 3, SHAPE).astype(np.float32)
    out, uncond = den.denoise_with_uncond(x, 2.0)
    # NOTE: at cfg 1 the two agree up to rounding: uncond + (cond - uncond) * 1 vs cond.
    np.testing.assert_allclose(out, den(x, 2.0), rtol=0, atol=1e-5)
    assert not np.array_equal(uncond, out)
    sig = SC.ksampler_sigmas("normal", 4)
    noise = S.prepare_noise(SHAPE, 1)
    lat = np.zeros(SHAPE, np.float32)
    assert not np.allclose(S.sample(den, lat, noise, sig, "euler_cfg_pp", 1),
                           S.sample(den, lat, noise, sig, "euler", 1), atol=1e-4)
    plain = _pair()
    np.testing.assert_allclose(
        S.sample(plain.__call__, lat, noise, sig, "euler_cfg_pp", 1),
        S.sample(plain.__call__, lat, noise, sig, "euler", 1), rtol=0, atol=2e-5,
    )


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize("name", S.SAMPLER_NAMES)
def test_short_and_odd_schedules_do_not_crash(name: str, kind: str) -> None:
    """1 sigma, [s, 0], and leftover-noise windows [s1, s2] all run.

    A CONST model's single-sigma schedule [1.0] ends in ``inverse_noise_scaling`` dividing by
    ``1 - 1.0``, inf as in ComfyUI, so only its shape is checked.
    """
    ms = M.SD1_EPS if kind == "eps" else M.model_sampling_sd3()
    full = SC.ksampler_sigmas("normal", 6, name, 1.0, ms)
    cases = [full[:1], full[-2:], full[2:4], SC.advanced_sigmas(full, 5, 6, False)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for index, sig in enumerate(cases):
            out = S.ksampler(_pair(flow=kind == "flow"), _latent(), 3, sig, name,
                             model_sampling=ms)
            assert out.shape == SHAPE, (name, sig)
            if not (kind == "flow" and index == 0):
                assert np.isfinite(out).all(), (name, sig)


def test_sampler_overhead_is_small() -> None:
    """Per-step numpy overhead of the deterministic samplers stays far below a model call."""
    import time

    shape = (1, 4, 32, 32)
    lat = np.zeros(shape, np.float32)
    noise = S.prepare_noise(shape, 1)
    sig = SC.ksampler_sigmas("karras", 20)

    def den(x: np.ndarray, s: float) -> np.ndarray:
        return x * np.float32(0.5)

    for name in ("euler", "dpmpp_2m", "uni_pc", "deis", "res_multistep"):
        start = time.perf_counter()
        S.sample(den, lat, noise, sig, name, 1)
        per_step = (time.perf_counter() - start) / 20
        assert per_step < 0.02, (name, per_step)
