"""Schedules against independent computations (k-diffusion, diffusers, scipy, direct formulas)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from comfyc.runtime import schedules as S

from .kdiff_oracle import comfy_sigma_tables, load_k_external, load_k_sampling

STEP_COUNTS = [1, 2, 3, 5, 7, 10, 20, 30, 33, 50]


def _k_schedule():
    """k-diffusion's DiscreteSchedule over ComfyUI's float32 tables (quantized timesteps)."""
    external = load_k_external()
    sigmas, log_sigmas = comfy_sigma_tables()
    schedule = external.DiscreteSchedule(sigmas.clone(), quantize=True)
    schedule.register_buffer("log_sigmas", log_sigmas.clone())
    return schedule


def test_sd1_table_matches_diffusers() -> None:
    """The SD1 sigma table equals diffusers' scaled_linear DDPM table (float32 betas there)."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    ac = scheduler.alphas_cumprod.double()
    expected = (((1 - ac) / ac) ** 0.5).numpy()
    np.testing.assert_allclose(S.SD1_SCHEDULE.sigmas, expected, rtol=2e-5)
    assert S.SD1_SCHEDULE.sigmas.dtype == np.float32
    assert math.isclose(S.SD1_SCHEDULE.sigma_min, 0.029167158, rel_tol=1e-6)
    assert math.isclose(S.SD1_SCHEDULE.sigma_max, 14.614642, rel_tol=1e-6)


def test_sd1_table_bitwise_comfy_formula() -> None:
    """Float64 betas -> alphas_cumprod -> sigmas stored float32, log taken before rounding."""
    sigmas, log_sigmas = comfy_sigma_tables()
    assert (S.SD1_SCHEDULE.sigmas == sigmas.numpy()).all()
    assert (S.SD1_SCHEDULE.log_sigmas == log_sigmas.numpy()).all()


def test_sigma_to_t_quantized_like_k_diffusion() -> None:
    """sigma_to_t is k-diffusion's quantized sigma_to_t (argmin over log sigmas)."""
    k = _k_schedule()
    rng = np.random.default_rng(0)
    table = S.SD1_SCHEDULE.sigmas
    probes = np.concatenate(
        [table, table * np.float32(1.0001), rng.uniform(0.03, 14.6, 200).astype(np.float32)]
    ).astype(np.float32)
    expected = k.sigma_to_t(torch.from_numpy(probes)).numpy().astype(np.float32)
    got = np.array([S.sigma_to_t(float(p)) for p in probes], dtype=np.float32)
    assert (got == expected).all()
    assert (S.sigma_to_t(probes) == expected).all()


def test_t_to_sigma_log_linear_like_k_diffusion() -> None:
    """t_to_sigma interpolates log sigma linearly, as k-diffusion's t_to_sigma."""
    k = _k_schedule()
    ts = np.concatenate([np.arange(1000), np.random.default_rng(1).uniform(0, 999, 500)])
    ts = ts.astype(np.float32)
    expected = k.t_to_sigma(torch.from_numpy(ts)).numpy()
    np.testing.assert_allclose(S.t_to_sigma(ts), expected, rtol=3e-7, atol=0)


def test_percent_to_sigma() -> None:
    """percent_to_sigma: inf-like at 0, 0 at 1, sigma(999 (1 - p)) between."""
    s = S.SD1_SCHEDULE
    assert s.percent_to_sigma(0.0) == 999999999.9
    assert s.percent_to_sigma(1.0) == 0.0
    assert math.isclose(s.percent_to_sigma(0.5), float(s.sigma(499.5)), rel_tol=1e-7)


def _expected(name: str, steps: int) -> np.ndarray:
    """Independent computation of each scheduler (see the module docstring)."""
    k = load_k_sampling()
    table = comfy_sigma_tables()[0].numpy()
    s_min, s_max = float(table[0]), float(table[-1])
    if name == "normal":
        return _k_schedule().get_sigmas(steps).numpy()
    if name == "sgm_uniform":
        ts = torch.linspace(999, 0, steps + 1)[:-1]
        return k.append_zero(_k_schedule().t_to_sigma(ts)).numpy()
    if name == "karras":
        return k.get_sigmas_karras(steps, s_min, s_max).numpy()
    if name == "exponential":
        return k.get_sigmas_exponential(steps, s_min, s_max).numpy()
    if name == "simple":
        idx = [999 - int(i * 1000 / steps) for i in range(steps)]
        return np.append(table[idx], 0.0)
    if name == "ddim_uniform":
        idx = list(range(1, 1000, 1000 // steps))
        return np.append(table[idx][::-1], 0.0)
    if name == "beta":
        from scipy import stats

        ts = np.rint(stats.beta.ppf(1 - np.arange(steps) / steps, 0.6, 0.6) * 999).astype(int)
        keep = [t for i, t in enumerate(ts) if i == 0 or t != ts[i - 1]]
        return np.append(table[keep], 0.0)
    if name == "linear_quadratic":
        if steps == 1:
            return np.array([s_max, 0.0])
        n_lin = steps // 2
        lin = [i * 0.025 / n_lin for i in range(n_lin)]
        diff = n_lin - 0.025 * steps
        n_quad = steps - n_lin
        a = diff / (n_lin * n_quad**2)
        b = 0.025 / n_lin - 2 * diff / n_quad**2
        c = a * n_lin**2
        quad = [a * i * i + b * i + c for i in range(n_lin, steps)]
        return (1.0 - np.array([*lin, *quad, 1.0])) * s_max
    if name == "kl_optimal":
        if steps == 1:
            return np.array([s_max, 0.0])
        u = np.arange(steps) / (steps - 1)
        return np.append(np.tan(u * math.atan(s_min) + (1 - u) * math.atan(s_max)), 0.0)
    raise AssertionError(name)


# Relative tolerance per scheduler: torch's float32 linspace (vectorised lanes), exp and pow
# round differently from numpy in the last bit or two.
SCHEDULE_RTOL = {
    "normal": 1e-6,
    "sgm_uniform": 1e-6,
    "karras": 2e-6,
    "exponential": 1e-6,
    "simple": 0.0,
    "ddim_uniform": 0.0,
    "beta": 0.0,
    "linear_quadratic": 2e-6,
    "kl_optimal": 5e-6,
}


@pytest.mark.parametrize("steps", STEP_COUNTS)
@pytest.mark.parametrize("name", S.SCHEDULER_NAMES)
def test_scheduler_matches_independent(name: str, steps: int) -> None:
    """Every scheduler agrees with an independent computation within SCHEDULE_RTOL."""
    got = S.calculate_sigmas(name, steps)
    expected = _expected(name, steps).astype(np.float64)
    assert got.dtype == np.float32
    assert got.shape == expected.shape, (got, expected)
    np.testing.assert_allclose(got, expected, rtol=SCHEDULE_RTOL[name], atol=1e-12)
    assert got[-1] == 0.0
    assert (np.diff(got) <= 0).all()


def test_scheduler_names_in_comfy_order() -> None:
    """The combo order of comfy/samplers.py SCHEDULER_HANDLERS."""
    assert S.SCHEDULER_NAMES == (
        "simple",
        "sgm_uniform",
        "karras",
        "exponential",
        "ddim_uniform",
        "beta",
        "normal",
        "linear_quadratic",
        "kl_optimal",
    )


def test_beta_schedule_all_step_counts() -> None:
    """The beta scheduler picks the same timesteps as scipy's ppf for 1..100 steps and more."""
    for steps in [*range(1, 101), 128, 150, 199, 200]:
        assert (S.calculate_sigmas("beta", steps) == _expected("beta", steps)).all(), steps


@pytest.mark.filterwarnings("ignore:Error in function boost")  # scipy's own ppf at p ~ 1
@pytest.mark.parametrize("a,b", [(0.6, 0.6), (0.5, 2.0), (2.0, 5.0), (1.0, 1.0), (0.3, 0.9)])
def test_beta_ppf_matches_scipy(a: float, b: float) -> None:
    """beta_ppf and regularized_incomplete_beta agree with scipy to ~1e-14."""
    from scipy import special, stats

    ps = np.concatenate(
        [np.linspace(0, 1, 401), 1 - np.logspace(-12, -1, 23), np.logspace(-12, -1, 23)]
    )
    got = np.array([S.beta_ppf(float(p), a, b) for p in ps])
    np.testing.assert_allclose(got, stats.beta.ppf(ps, a, b), rtol=0, atol=5e-14)
    xs = np.linspace(0, 1, 101)
    cdf = np.array([S.regularized_incomplete_beta(float(x), a, b) for x in xs])
    np.testing.assert_allclose(cdf, special.betainc(a, b, xs), rtol=0, atol=5e-15)


def test_denoise_window() -> None:
    """denoise < 1 keeps the last steps + 1 sigmas of the int(steps / denoise) schedule."""
    full = S.calculate_sigmas("normal", 40)
    np.testing.assert_array_equal(S.ksampler_sigmas("normal", 20, denoise=0.5), full[-21:])
    np.testing.assert_array_equal(
        S.ksampler_sigmas("karras", 10, denoise=0.87), S.calculate_sigmas("karras", 11)[-11:]
    )
    np.testing.assert_array_equal(
        S.ksampler_sigmas("normal", 20, denoise=0.99995), S.calculate_sigmas("normal", 20)
    )
    assert S.ksampler_sigmas("normal", 20, denoise=0.0).size == 0


@pytest.mark.parametrize("sampler_name", sorted(S.DISCARD_PENULTIMATE_SIGMA_SAMPLERS))
def test_discard_penultimate_sigma(sampler_name: str) -> None:
    """dpm_2, dpm_2_ancestral, uni_pc(_bh2) compute steps + 1 and drop the penultimate sigma."""
    got = S.ksampler_sigmas("normal", 10, sampler_name)
    base = S.calculate_sigmas("normal", 11)
    np.testing.assert_array_equal(got, np.concatenate([base[:-2], base[-1:]]))
    assert got.size == 11
    window = S.ksampler_sigmas("normal", 10, sampler_name, denoise=0.5)
    full = S.calculate_sigmas("normal", 21)
    np.testing.assert_array_equal(window, np.concatenate([full[:-2], full[-1:]])[-11:])


def test_advanced_window() -> None:
    """KSamplerAdvanced start/end/leftover noise (comfy KSampler.sample)."""
    sig = S.ksampler_sigmas("normal", 20)
    head = S.advanced_sigmas(sig, 0, 10, return_with_leftover_noise=True)
    np.testing.assert_array_equal(head, sig[:11])
    forced = S.advanced_sigmas(sig, 0, 10, return_with_leftover_noise=False)
    np.testing.assert_array_equal(forced[:-1], sig[:10])
    assert forced[-1] == 0.0
    np.testing.assert_array_equal(S.advanced_sigmas(sig, 10, 10000), sig[10:])
    assert S.advanced_sigmas(sig, 20, 10000) is None
    assert S.advanced_sigmas(sig, 5, 5) is None
    assert (S.advanced_sigmas(sig) == sig).all()
    assert sig[10] != 0.0  # the input schedule was not modified


def test_errors_are_explained() -> None:
    """Unknown schedulers and bad step counts raise errors that list the valid choices."""
    with pytest.raises(S.ScheduleError, match="karras"):
        S.calculate_sigmas("linear", 10)
    with pytest.raises(S.ScheduleError, match="steps"):
        S.calculate_sigmas("normal", 0)
