"""Every sampler against ComfyUI's own sampling code (recorded; needs neither ComfyUI nor torch).

``comfyui_samplers/recording.npz`` holds what ComfyUI (commit in ``meta["comfyui_commit"]``)
computed for an analytic mixture denoiser (``comfyui_samplers/analytic.py``): every name of
``SAMPLER_NAMES`` x every scheduler for an SD1 EPS model and an SD3 flow (CONST) model, Flux
img2img, edge cases (1 step, denoise 0.01, KSamplerAdvanced one-step windows with and without
leftover noise, add_noise off, cfg 1 for CFG++), inpainting masks, batches with ``batch_index``,
v-prediction/zSNR/AuraFlow tables, and the sampler option nodes through SamplerCustomAdvanced.

Each case is rerun here through the public entry points (:func:`ksampler` with the schedule from
:func:`ksampler_sigmas`/:func:`advanced_sigmas`, or :func:`sample_custom` with a node-built
:class:`SamplerSpec`) and compared with the recorded LATENT. The sampler is fed the recorded
sigmas (the schedules are checked separately, here to 2e-6 and in
test_schedules_comfyui_recording.py): SDE samplers seed a Brownian tree with the schedule's ends,
so a last-ulp schedule difference would change every noise draw a little.

The error measure is ``max |got - expected| / max(1, max |expected|)`` on the LATENT (|x| up to
~20 for SD1 latents). ``TOLERANCE`` lists the allowance per sampler with the measured maximum
over all of its recorded cases on this machine; the allowance is about 3x that, 1e-5 at least.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from comfyc.runtime import model_sampling as M
from comfyc.runtime import samplers as S
from comfyc.runtime import schedules as SC

from .comfyui_samplers.load import box_mask, image_latent, load_recording, pair_for

REC = load_recording()

MODEL_SAMPLINGS: dict[str, M.ModelSampling] = {
    "eps": M.SD1_EPS,
    "v": M.model_sampling_discrete("v_prediction"),
    "eps_zsnr": M.model_sampling_discrete("eps", zsnr=True),
    "flow": M.model_sampling_sd3(),
    "aura": M.model_sampling_aura_flow(),
    "flux": M.model_sampling_flux(),
    "flux_768x512": M.model_sampling_flux(width=768, height=512),
}

# Allowed error per sampler (see the module docstring); measured maximum in the comment.
TOLERANCE: dict[str, float] = {
    "euler": 1e-5,  # 3.4e-7
    "euler_cfg_pp": 1e-5,  # 7.4e-7
    "euler_ancestral": 1e-5,  # 1.5e-6
    "euler_ancestral_cfg_pp": 2e-5,  # 5.1e-6
    "heun": 1e-5,  # 2.2e-7
    "heunpp2": 1e-5,  # 2.9e-7
    "exp_heun_2_x0": 1e-5,  # 2.5e-7
    "exp_heun_2_x0_sde": 1e-5,  # 6.9e-7
    "dpm_2": 1e-5,  # 6.5e-7
    "dpm_2_ancestral": 2e-5,  # 3.8e-6
    # ComfyUI integrates the LMS coefficients with scipy's quad over float32 sigmas, which
    # under numpy 2 evaluates the integrand in float32 (visible on linear_quadratic's sigmas,
    # 0.8 % apart: 5.2e-5); comfyc integrates exactly.
    "lms": 2e-4,
    "dpm_fast": 1e-5,  # 4.8e-7
    # Accept/reject decisions on a float32 error norm; none flipped in the recording.
    "dpm_adaptive": 2e-5,  # 3.9e-6
    "dpmpp_2s_ancestral": 1e-5,  # 3.1e-6
    # The second model call's uncond enters with a factor ~1/sigma (1-ulp sensitivity 2e-5).
    "dpmpp_2s_ancestral_cfg_pp": 6e-5,  # 1.9e-5
    # The Brownian tree is queried at exp(-lambda_mid), rounded to 6 decimals by torchsde: a
    # last-bit difference in exp can pick the neighbouring tree point (2.4e-5).
    "dpmpp_sde": 1e-4,
    "dpmpp_sde_gpu": 1e-4,
    "dpmpp_2m": 1e-5,  # 1.6e-6
    "dpmpp_2m_cfg_pp": 1e-5,  # 6.8e-7
    "dpmpp_2m_sde": 1e-5,  # 1.2e-6
    "dpmpp_2m_sde_gpu": 1e-5,  # 1.2e-6
    "dpmpp_2m_sde_heun": 1e-5,  # 1.6e-6
    "dpmpp_2m_sde_heun_gpu": 1e-5,  # 1.6e-6
    "dpmpp_3m_sde": 2e-5,  # 6.4e-6
    "dpmpp_3m_sde_gpu": 2e-5,  # 6.4e-6
    "ddpm": 1e-5,  # 8.6e-7
    "lcm": 1e-5,  # 0
    "ipndm": 1e-5,  # 1.0e-6
    "ipndm_v": 1e-5,  # 3.7e-7
    # 10000-point float32 sums for the coefficients (summation order differs from torch's).
    "deis": 3e-5,  # 7.7e-6
    "res_multistep": 1e-5,  # 1.4e-6
    "res_multistep_cfg_pp": 1e-5,  # 3.5e-7
    # phi_2(h) = (phi_1(h) - 1) / h cancels in float32 for the tiny last steps of ddim_uniform
    # on a flow model (5.4e-5); float32 expm1 rounding decides the last digits there.
    "res_multistep_ancestral": 2e-4,
    "res_multistep_ancestral_cfg_pp": 2e-4,  # 4.5e-5
    "gradient_estimation": 1e-5,  # 2.4e-7
    "gradient_estimation_cfg_pp": 1e-5,  # 4.1e-7
    "er_sde": 1e-5,  # 1.8e-6
    "seeds_2": 1e-5,  # 4.3e-7
    "seeds_3": 1e-5,  # 2.8e-6
    # Vandermonde systems solved in float32 (LAPACK gesv as torch; blocking may differ).
    "sa_solver": 1e-4,  # 3.6e-5
    "sa_solver_pece": 1e-5,  # 1.1e-6
    "ddim": 1e-5,  # 3.4e-7
    "uni_pc": 2e-5,  # 5.7e-6
    "uni_pc_bh2": 2e-5,  # 5.0e-6
}

# Option-node cases (SamplerCustomAdvanced) measured at most 8.8e-7.
CUSTOM_TOLERANCE = 1e-5

_NODE_SPECS = {
    "KSamplerSelect": S.ksampler_select,
    "SamplerEulerAncestral": S.sampler_euler_ancestral,
    "SamplerEulerAncestralCFGPP": S.sampler_euler_ancestral_cfg_pp,
    "SamplerDPMPP_2S_Ancestral": S.sampler_dpmpp_2s_ancestral,
    "SamplerDPMPP_2M_SDE": S.sampler_dpmpp_2m_sde,
    "SamplerDPMPP_SDE": S.sampler_dpmpp_sde,
    "SamplerDPMPP_3M_SDE": S.sampler_dpmpp_3m_sde,
    "SamplerLMS": S.sampler_lms,
    "SamplerDPMAdaptative": S.sampler_dpm_adaptative,
    "SamplerER_SDE": S.sampler_er_sde,
    "SamplerSEEDS2": S.sampler_seeds_2,
}


def _relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    if expected.size == 0:
        return 0.0
    scale = max(1.0, float(np.max(np.abs(expected))))
    return float(np.max(np.abs(got.astype(np.float64) - expected))) / scale


def _latent(case: dict[str, Any]) -> tuple[np.ndarray, tuple[int, ...]]:
    shape = tuple(case.get("shape", REC.meta["shape"]))
    if case.get("latent", "empty") == "image":
        return image_latent(shape, REC.meta["image_seed"]), shape
    return np.zeros(shape, np.float32), shape


def _spec(case: dict[str, Any], ms: M.ModelSampling) -> S.SamplerSpec:
    if case["node"] == "SamplerSASolver":
        return S.sampler_sa_solver(ms, **case["inputs"])
    return _NODE_SPECS[case["node"]](**case["inputs"])


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Rerun one recorded case through comfyc; returns sigmas, outputs, calls, steps."""
    ms = MODEL_SAMPLINGS[case["kind"]]
    latent, shape = _latent(case)
    pair = pair_for(case, shape, ms.is_const, REC.meta["cfg"])
    scale, shift = REC.meta["latent_formats"][case["kind"]]
    steps: list[int] = []

    def callback(step: int, x0: np.ndarray, x: np.ndarray, total: int) -> None:
        assert np.isfinite(x0).all()
        steps.append(step)

    result: dict[str, Any] = {}
    if case["mode"] == "ksampler":
        sigmas = SC.ksampler_sigmas(
            case["scheduler"], case["steps"], case["sampler"], case.get("denoise", 1.0), ms
        )
        if case.get("start_step") is not None or case.get("last_step") is not None:
            sigmas = SC.advanced_sigmas(
                sigmas, case.get("start_step"), case.get("last_step"),
                not case.get("force_full_denoise", False),
            )
        result["sigmas"] = sigmas
        feed = REC.get(case["sigmas"]) if "sigmas" in case else sigmas
        result["out"] = S.ksampler(
            pair, latent, case.get("seed", REC.meta["seed"]), feed, case["sampler"],
            add_noise=case.get("add_noise", True), batch_index=case.get("batch_index"),
            noise_mask=box_mask(shape) if case.get("mask") else None, latent_scale=scale,
            latent_shift=shift, model_sampling=ms, callback=callback,
        )
    else:
        if "sigmas_given" in case:
            sigmas = np.array(case["sigmas_given"], np.float32)
        else:
            sigmas = SC.basic_scheduler(ms, case["scheduler"], case["steps"],
                                        case.get("denoise", 1.0))
        result["sigmas"] = sigmas
        noise = (
            S.RandomNoise(case["noise_seed"]) if case.get("add_noise", True) else S.DisableNoise()
        )
        res = S.sample_custom(
            pair, latent, _spec(case, ms), REC.get(case["sigmas"]), noise, model_sampling=ms,
            latent_scale=scale, latent_shift=shift, callback=callback,
        )
        result["out"], result["denoised_out"] = res.output, res.denoised_output
    result["calls"] = pair.calls
    result["steps"] = steps
    return result


def _tolerance(case: dict[str, Any]) -> float:
    if case["mode"] == "custom":
        return CUSTOM_TOLERANCE
    return TOLERANCE[case["sampler"]]


@pytest.mark.parametrize("case", REC.cases(), ids=lambda c: c["id"])
def test_matches_comfyui(case: dict[str, Any]) -> None:
    """Same schedule, model calls, callbacks and LATENT as ComfyUI's own code."""
    assert "error" not in case, f"ComfyUI raised: {case['error']}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow/invalid warnings on these runs
        got = run_case(case)
    expected_sigmas = REC.get(case["sigmas"])
    assert got["sigmas"].shape == expected_sigmas.shape, (got["sigmas"], expected_sigmas)
    np.testing.assert_allclose(got["sigmas"], expected_sigmas, rtol=2e-6, atol=0)
    assert got["calls"] == case["calls"]
    assert got["steps"] == case["callback_steps"]
    out = got["out"]
    assert out.dtype == np.float32 and np.isfinite(out).all()
    err = _relative_error(out, REC.get(case["out"]))
    assert err <= _tolerance(case), (case["id"], err)
    if "denoised_out" in case:
        err = _relative_error(got["denoised_out"], REC.get(case["denoised_out"]))
        assert err <= _tolerance(case), (case["id"], "denoised_output", err)


def test_recording_covers_every_sampler_and_scheduler() -> None:
    """The recording has every SAMPLER_NAMES entry x scheduler for an EPS and a CONST model."""
    assert tuple(REC.meta["sampler_names"]) == S.SAMPLER_NAMES == S.SUPPORTED_SAMPLERS
    assert tuple(REC.meta["scheduler_names"]) == SC.SCHEDULER_NAMES
    grid = {(c["kind"], c["sampler"], c["scheduler"]) for c in REC.cases("grid")}
    for kind in ("eps", "flow"):
        for name in S.SAMPLER_NAMES:
            for scheduler in SC.SCHEDULER_NAMES:
                assert (kind, name, scheduler) in grid
    assert set(TOLERANCE) == set(S.SAMPLER_NAMES)
    assert not [c["id"] for c in REC.cases() if "error" in c]


def test_trajectory_recorded_for_every_sampler() -> None:
    """A per-step x0 trajectory (karras, EPS) exists for each sampler, and comfyc's matches."""
    for case in REC.cases("grid"):
        if not case.get("trajectory"):
            continue
        expected = REC.get(case["trajectory"])
        ms = MODEL_SAMPLINGS["eps"]
        latent, shape = _latent(case)
        pair = pair_for(case, shape, False, REC.meta["cfg"])
        seen: list[np.ndarray] = []
        S.ksampler(pair, latent, REC.meta["seed"], REC.get(case["sigmas"]), case["sampler"],
                   model_sampling=ms, callback=lambda i, x0, x, n, s=seen: s.append(x0.copy()))
        assert len(seen) == expected.shape[0], case["id"]
        scale = max(1.0, float(np.abs(expected).max()))
        err = float(np.abs(np.stack(seen) - expected).max()) / scale
        assert err <= TOLERANCE[case["sampler"]], (case["id"], err)
