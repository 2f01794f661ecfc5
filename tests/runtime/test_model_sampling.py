"""Model samplings against ComfyUI's own classes (recorded), plus the compatibility shims.

The recording holds, for SD1 eps, v-prediction, zSNR eps, SD3 (shift 3), AuraFlow (shift 1.73,
multiplier 1) and Flux at 1024x1024 and 768x512 (as ComfyUI's ModelSampling* nodes configure
them): the sigma table (Flux: every 10th entry), ``timestep`` and ``sigma`` on probes,
``percent_to_sigma``, and ``noise_scaling`` (with and without max denoise),
``inverse_noise_scaling``, ``calculate_input`` and ``calculate_denoised`` at three sigmas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from comfyc.runtime import model_sampling as M
from comfyc.runtime import schedules as SC

from .comfyui_samplers.load import load_recording
from .test_sampler_comfyui_recording import MODEL_SAMPLINGS

REC = load_recording()
KINDS = [k for k in REC.meta["model_samplings"] if k != "inputs"]


@pytest.mark.parametrize("kind", KINDS)
def test_table_and_maps_match_comfyui(kind: str) -> None:
    """Tables bit-exact; timestep/sigma/percent_to_sigma to float32 rounding."""
    entry = REC.meta["model_samplings"][kind]
    ms = MODEL_SAMPLINGS[kind]
    assert len(ms.sigmas) == entry["table_size"]
    table = ms.sigmas if len(ms.sigmas) <= 1000 else np.append(ms.sigmas[9::10], ms.sigmas[-1])
    assert np.array_equal(table, REC.get(entry["sigmas"]))
    assert ms.sigma_min == entry["sigma_min"] and ms.sigma_max == entry["sigma_max"]
    probes = REC.get(entry["probe_sigmas"])
    assert np.array_equal(np.asarray(ms.timestep(probes), np.float32), REC.get(entry["timestep"]))
    ts = REC.get(entry["probe_timesteps"])
    np.testing.assert_allclose(ms.sigma(ts), REC.get(entry["sigma_of_timestep"]), rtol=3e-7)
    got = [ms.percent_to_sigma(p) for p in entry["percents"]]
    np.testing.assert_allclose(got, entry["percent_to_sigma"], rtol=3e-7, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_parameterisation_matches_comfyui(kind: str) -> None:
    """noise_scaling, inverse_noise_scaling, calculate_input, calculate_denoised per kind."""
    entry = REC.meta["model_samplings"][kind]
    ms = MODEL_SAMPLINGS[kind]
    inputs = REC.meta["model_samplings"]["inputs"]
    x, noise, latent = (REC.get(inputs[k]) for k in ("x", "noise", "latent"))
    for case in entry["apply"]:
        sigma = case["sigma"]
        checks = {
            "noise_scaling": ms.noise_scaling(sigma, noise, latent),
            "noise_scaling_max": ms.noise_scaling(sigma, noise, latent, max_denoise=True),
            "inverse_noise_scaling": ms.inverse_noise_scaling(sigma, x),
            "calculate_input": ms.calculate_input(sigma, x),
            "calculate_denoised": ms.calculate_denoised(sigma, noise, x),
        }
        for name, got in checks.items():
            expected = REC.get(case[name])
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, expected, rtol=2e-7, atol=1e-7, err_msg=name)


def test_flux_shift_is_the_nodes_line() -> None:
    """ModelSamplingFlux: mu from the number of 2x2 latent patches, 1.15 at 1024x1024."""
    assert math.isclose(M.flux_shift(1.15, 0.5, 1024, 1024), 1.15, rel_tol=1e-12)
    assert math.isclose(M.flux_shift(1.15, 0.5, 256, 256), 0.5 + 0.65 * (256 - 256) / 3840)
    assert M.model_sampling_flux(width=768, height=512).shift == M.flux_shift(1.15, 0.5, 768, 512)


def test_half_log_snr_round_trip() -> None:
    """lambda = -log sigma (EPS), log((1 - sigma) / sigma) (CONST), and back."""
    eps, flow = M.SD1_EPS, M.model_sampling_sd3()
    for sigma in (0.05, 0.5, 3.0):
        lam = eps.half_log_snr(sigma)
        assert math.isclose(lam, -math.log(sigma), rel_tol=1e-6)
        assert math.isclose(eps.sigma_from_half_log_snr(lam), sigma, rel_tol=1e-6)
    for sigma in (0.05, 0.5, 0.95):
        lam = flow.half_log_snr(sigma)
        assert math.isclose(lam, math.log((1 - sigma) / sigma), rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(flow.sigma_from_half_log_snr(lam), sigma, rel_tol=1e-6)
    assert eps.half_log_snr(0.0) == math.inf and flow.half_log_snr(1.0) == -math.inf
    assert flow.offset_first_sigma([1.0, 0.5, 0.0])[0] == np.float32(
        flow.percent_to_sigma(1e-4)
    )
    assert eps.offset_first_sigma([14.6, 1.0, 0.0]) == [14.6, 1.0, 0.0]


def test_old_schedule_arguments_still_work() -> None:
    """None, SD1_SCHEDULE and a DiscreteSchedule are read as EPS model samplings."""
    assert M.as_model_sampling(None) is M.SD1_EPS
    assert M.as_model_sampling(SC.SD1_SCHEDULE) is M.SD1_EPS
    custom = SC.DiscreteSchedule.linear(0.0001, 0.02)
    ms = M.as_model_sampling(custom)
    assert ms.prediction == "eps" and np.array_equal(ms.sigmas, custom.sigmas)
    assert np.array_equal(SC.calculate_sigmas("karras", 5, SC.SD1_SCHEDULE),
                          SC.calculate_sigmas("karras", 5, M.SD1_EPS))
    with pytest.raises(M.ModelSamplingError):
        M.model_sampling_discrete("lcm")
    with pytest.raises(M.ModelSamplingError):
        M.as_model_sampling("sd1")  # type: ignore[arg-type]
