"""Samplers against independent implementations (k-diffusion, diffusers) on a dummy denoiser.

Every supported sampler x every scheduler runs the runtime's numpy sampler (driven by
``cfg.make_denoiser`` over :class:`DummyUNet`) and an oracle in torch on the same SD1 sigma table,
the same prompts, seed and initial noise, and compares the final latents. The oracles:

* k-diffusion 0.1.1 ``sample_*`` (euler, euler_ancestral, heun, dpm_2, dpm_2_ancestral, lms,
  dpmpp_2s_ancestral, dpmpp_2m, dpmpp_sde, dpmpp_2m_sde(_heun), dpmpp_3m_sde) with
  ``DiscreteEpsDDPMDenoiser(quantize=True)``, ComfyUI's initial noise scaling, ComfyUI's CPU
  ancestral noise (generator seeded seed + 1) and k-diffusion's ``BrownianTreeNoiseSampler``.
  Where ComfyUI's sampling.py deviates from k-diffusion 0.1.1, the oracle follows ComfyUI: lms
  ends with ``x = denoised`` at the step to sigma 0 (k-diffusion integrates it).
* ``ddim`` is ComfyUI's euler: oracle ``sample_euler``.
* ``uni_pc`` / ``uni_pc_bh2``: diffusers ``UniPCMultistepScheduler`` (same B(h) predictor-corrector,
  ``predict_x0``, ``lower_order_final``) driven with ComfyUI's sigmas, last sigma 0.001 and
  ComfyUI's float32 ``SigmaConvert`` for alpha/sigma (ComfyUI's own coordinates).
* ``lcm``: k-diffusion has no LCM sampler and diffusers' LCMScheduler works on timesteps with
  boundary conditions, so the oracle is the multistep LCM update written directly in torch:
  ``x = x0(x, s_i); x += s_{i+1} * noise`` with the seed + 1 generator.

For karras and exponential the oracle takes its sigmas from k-diffusion's ``get_sigmas_*``.

Tolerances (max abs difference of final latents whose magnitude is about 1-3):
see ``TOLERANCE`` below. They come from float32 rounding (torch's float32 ``sqrt`` is not
correctly rounded, scalar coefficients are computed in float32 vs float64, summation order) and,
for lms, scipy's ``quad`` evaluating k-diffusion's integrand in float32 under numpy 2.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from comfyc.runtime import cfg as cfg_mod
from comfyc.runtime import samplers
from comfyc.runtime.noise import prepare_noise
from comfyc.runtime.schedules import (
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS,
    SCHEDULER_NAMES,
    SD1_SCHEDULE,
    ksampler_sigmas,
)

from .kdiff_oracle import (
    DummyUNet,
    comfy_k_denoiser,
    comfy_noise_scaling,
    cpu_noise_sampler,
    load_k_sampling,
)

SHAPE = (1, 4, 8, 8)
STEPS = 6
SEED = 1234
CFG = 5.0

# Max abs difference of the final latents (|x| ~ 1-3) allowed per sampler, for every scheduler
# unless PAIR_TOLERANCE says otherwise. Measured maxima (STEPS=6, SEED=1234) are in the comments;
# the allowance is about 3x that.
TOLERANCE = {
    "euler": 2e-5,  # 4.5e-6
    "ddim": 2e-5,  # 4.5e-6 (euler)
    "euler_ancestral": 3e-5,  # 9.5e-6
    "heun": 3e-5,  # 9.1e-6
    "dpm_2": 3e-5,  # 9.5e-6
    "dpm_2_ancestral": 3e-5,  # 9.5e-6
    "lms": 2e-5,  # 4.8e-6
    "dpmpp_2s_ancestral": 2e-5,  # 3.8e-6
    "dpmpp_2m": 2e-5,  # 7.2e-6
    "lcm": 2e-5,  # 6.7e-6
    "dpmpp_sde": 3e-5,  # 6.7e-6
    "dpmpp_2m_sde": 3e-5,  # 7.6e-6
    "dpmpp_2m_sde_heun": 3e-5,  # 1.1e-5
    "dpmpp_3m_sde": 5e-5,  # 1.7e-5
    "uni_pc": 3e-5,  # 1.0e-5
    "uni_pc_bh2": 5e-5,  # 1.5e-5
}

# Pairs that need more, and why.
PAIR_TOLERANCE = {
    # linear_quadratic starts with sigmas 0.8 % apart (14.61, 14.49, 14.37, ...): LMS's
    # Lagrange coefficients reach ~1e4 with alternating signs, so float32 rounding of the
    # derivatives (1e-7 relative) is amplified ~1e4 (measured 2.2e-3).
    ("lms", "linear_quadratic"): 5e-3,
    # The same close sigmas amplify rounding in the 3M-SDE's divided differences (9.3e-5).
    ("dpmpp_3m_sde", "linear_quadratic"): 3e-4,
    # dpmpp_sde queries the Brownian tree at exp(-lambda_mid); torchsde rounds query times to 6
    # decimals, so a 1-2 ulp difference between torch's float32 exp (MKL/SLEEF) and a correctly
    # rounded exp can select the neighbouring tree point, changing that increment by ~1e-3 of its
    # size (measured 1.6e-4 here; ComfyUI on GPU vs CPU differs the same way).
    ("dpmpp_sde", "ddim_uniform"): 2e-3,
    # The oracle's model quantizes sigma to a timestep. dpm_2_ancestral's log-midpoint sigma and
    # dpmpp_2s_ancestral's exp(-t_mid) come out 1 ulp apart in numpy and torch (exp rounding),
    # and here the two values straddle a timestep boundary: the DummyUNet's sin(t / 50) term
    # then differs by ~1e-3 for that one call (measured 4.9e-4 and 2.3e-4 on the final latent).
    ("dpm_2_ancestral", "normal"): 2e-3,
    ("dpmpp_2s_ancestral", "sgm_uniform"): 2e-3,
}

# The _gpu samplers only move the Brownian tree to the sampling device; on the CPU they are the
# same function (checked by test_gpu_aliases), so one scheduler is enough for them.
GPU_ALIASES = {
    "dpmpp_sde_gpu": "dpmpp_sde",
    "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
    "dpmpp_2m_sde_heun_gpu": "dpmpp_2m_sde_heun",
    "dpmpp_3m_sde_gpu": "dpmpp_3m_sde",
}


def _tolerance(sampler_name: str, scheduler: str) -> float:
    base = GPU_ALIASES.get(sampler_name, sampler_name)
    return PAIR_TOLERANCE.get((base, scheduler), TOLERANCE[base])


#: Samplers with an independent (k-diffusion / diffusers / direct torch) oracle here; every
#: sampler is also checked against ComfyUI's own code in test_sampler_comfyui_recording.py.
KDIFF_SAMPLERS: tuple[str, ...] = tuple(
    n for n in samplers.SAMPLER_NAMES if n in TOLERANCE or n in GPU_ALIASES
)


def _cases() -> list[tuple[str, str]]:
    cases = []
    for sampler_name in KDIFF_SAMPLERS:
        if sampler_name in GPU_ALIASES:
            cases.append((sampler_name, "karras"))
            continue
        cases.extend((sampler_name, scheduler) for scheduler in SCHEDULER_NAMES)
    return cases


def _prompts() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    cond = rng.standard_normal((1, 5, 8)).astype(np.float32)
    uncond = rng.standard_normal((1, 5, 8)).astype(np.float32) * np.float32(0.3)
    return cond, uncond


def _oracle_sigmas(scheduler: str, sampler_name: str) -> torch.Tensor:
    """Oracle schedule: k-diffusion's for karras/exponential, else the runtime's.

    The runtime's karras/exponential sigmas equal torch's bit for bit (float32 linspace with
    torch's fused multiply-add, pow/exp rounded from float64), which matters to the SDE
    samplers: their Brownian tree is queried at the sigmas rounded to 6 decimals.
    """
    k = load_k_sampling()
    if scheduler not in ("karras", "exponential"):
        return torch.from_numpy(ksampler_sigmas(scheduler, STEPS, sampler_name))
    n = STEPS + 1 if sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS else STEPS
    s_min, s_max = SD1_SCHEDULE.sigma_min, SD1_SCHEDULE.sigma_max
    fn = k.get_sigmas_karras if scheduler == "karras" else k.get_sigmas_exponential
    sig = fn(n, s_min, s_max)
    if sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        sig = torch.cat([sig[:-2], sig[-1:]])
    return sig.float()


def _unipc_oracle(model, x: torch.Tensor, sigmas: torch.Tensor, variant: str) -> torch.Tensor:
    from diffusers import UniPCMultistepScheduler

    ts = sigmas.clone()
    if ts[-1] == 0:
        ts[-1] = 0.001
    steps = len(ts) - 1
    order = min(3, len(ts) - 2)
    sched = UniPCMultistepScheduler(
        solver_order=order,
        solver_type=variant,
        predict_x0=True,
        lower_order_final=True,
        prediction_type="epsilon",
    )
    sched.set_timesteps(steps)
    sched.sigmas = ts.clone()
    sched.timesteps = torch.arange(steps, dtype=torch.int64)
    sched.set_begin_index(0)

    def convert(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # NOTE: ComfyUI's SigmaConvert in float32 (its coordinates, including their rounding).
        log_alpha = 0.5 * torch.log(1 / ((sigma * sigma) + 1))
        alpha = torch.exp(log_alpha)
        std = torch.sqrt(1.0 - torch.exp(2.0 * log_alpha))
        return alpha, std

    sched._sigma_to_alpha_sigma_t = convert
    sample = x / torch.sqrt(1.0 + ts[0] ** 2.0)
    for i in range(steps):
        sigma = ts[i]
        x_k = sample * ((sigma**2 + 1.0) ** 0.5)
        eps = (x_k - model(x_k, sigma.reshape(1))) / sigma
        sample = sched.step(eps, sched.timesteps[i], sample).prev_sample
    return sample / convert(ts[-1])[0]


def _lcm_oracle(model, x: torch.Tensor, sigmas: torch.Tensor, seed: int) -> torch.Tensor:
    noise = cpu_noise_sampler(tuple(x.shape), seed)
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i].reshape(1))
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
    return x


def _run_oracle(sampler_name: str, scheduler: str, unet: DummyUNet) -> np.ndarray:
    k = load_k_sampling()
    cond, uncond = _prompts()
    model = comfy_k_denoiser(unet, cond, uncond, CFG)
    sigmas = _oracle_sigmas(scheduler, sampler_name)
    torch.manual_seed(SEED)
    noise = torch.randn(SHAPE)
    x = comfy_noise_scaling(noise, sigmas[0])
    shape = tuple(x.shape)
    if sampler_name == "lms":
        coeff = k.linear_multistep_coeff
        if not getattr(coeff, "float64", False):

            def coeff64(order, t, i, j):
                return coeff(order, np.asarray(t, dtype=np.float64), i, j)

            coeff64.float64 = True  # type: ignore[attr-defined]
            k.linear_multistep_coeff = coeff64
    if sampler_name in ("euler", "ddim"):
        out = k.sample_euler(model, x, sigmas, disable=True)
    elif sampler_name == "euler_ancestral":
        ns = cpu_noise_sampler(shape, SEED)
        out = k.sample_euler_ancestral(model, x, sigmas, disable=True, noise_sampler=ns)
    elif sampler_name == "heun":
        out = k.sample_heun(model, x, sigmas, disable=True)
    elif sampler_name == "dpm_2":
        out = k.sample_dpm_2(model, x, sigmas, disable=True)
    elif sampler_name == "dpm_2_ancestral":
        ns = cpu_noise_sampler(shape, SEED)
        out = k.sample_dpm_2_ancestral(model, x, sigmas, disable=True, noise_sampler=ns)
    elif sampler_name == "lms":
        if sigmas[-1] == 0:
            # NOTE: k-diffusion integrates the LMS basis polynomials with scipy's quad over the
            # float32 sigmas, which under numpy 2 evaluates the integrand in float32 (errors up
            # to ~2e-3 on linear_quadratic's close-together sigmas); the oracle integrates in
            # float64, as the runtime does (exactly, by Gauss-Legendre).
            # NOTE: ComfyUI's sample_lms ends with x = denoised at the step to sigma 0.
            x = k.sample_lms(model, x, sigmas[:-1], disable=True)
            out = model(x, sigmas[-2].reshape(1))
        else:
            out = k.sample_lms(model, x, sigmas, disable=True)
    elif sampler_name == "dpmpp_2s_ancestral":
        ns = cpu_noise_sampler(shape, SEED)
        out = k.sample_dpmpp_2s_ancestral(model, x, sigmas, disable=True, noise_sampler=ns)
    elif sampler_name == "dpmpp_2m":
        out = k.sample_dpmpp_2m(model, x, sigmas, disable=True)
    elif sampler_name in (
        "dpmpp_sde",
        "dpmpp_sde_gpu",
        "dpmpp_2m_sde",
        "dpmpp_2m_sde_gpu",
        "dpmpp_2m_sde_heun",
        "dpmpp_2m_sde_heun_gpu",
        "dpmpp_3m_sde",
        "dpmpp_3m_sde_gpu",
    ):
        positive = sigmas[sigmas > 0]
        tree = k.BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=SEED)

        def ns(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
            # NOTE: k-diffusion 0.1.1's dpmpp_sde queries the tree at exp(-(-log sigma_i)),
            # 1 ulp off sigma_i at times; ComfyUI queries at sigma_i itself. A time 1 ulp off
            # can round (to 6 decimals) to another tree point, and the increment then differs
            # by ~sqrt(1e-6), so the oracle snaps such times back to the schedule.
            def snap(v: torch.Tensor) -> torch.Tensor:
                near = torch.isclose(sigmas, v, rtol=3e-7, atol=0.0)
                return sigmas[near][0] if bool(near.any()) else v

            return tree(snap(sigma), snap(sigma_next))

        base = sampler_name.removesuffix("_gpu")
        if base == "dpmpp_sde":
            out = k.sample_dpmpp_sde(model, x, sigmas, disable=True, noise_sampler=ns)
        elif base == "dpmpp_3m_sde":
            out = k.sample_dpmpp_3m_sde(model, x, sigmas, disable=True, noise_sampler=ns)
        else:
            solver = "heun" if base.endswith("heun") else "midpoint"
            out = k.sample_dpmpp_2m_sde(
                model, x, sigmas, disable=True, noise_sampler=ns, solver_type=solver
            )
    elif sampler_name == "lcm":
        out = _lcm_oracle(model, x, sigmas, SEED)
    elif sampler_name in ("uni_pc", "uni_pc_bh2"):
        out = _unipc_oracle(model, x, sigmas, "bh1" if sampler_name == "uni_pc" else "bh2")
    else:  # pragma: no cover - the parametrisation lists only supported samplers
        raise AssertionError(sampler_name)
    return out.numpy()


def _run_runtime(sampler_name: str, scheduler: str, unet: DummyUNet) -> np.ndarray:
    cond, uncond = _prompts()
    denoiser = cfg_mod.make_denoiser(unet.numpy, [{"cond": cond}], [{"cond": uncond}], CFG, SHAPE)
    sigmas = ksampler_sigmas(scheduler, STEPS, sampler_name)
    noise = prepare_noise(SHAPE, SEED)
    latent = np.zeros(SHAPE, np.float32)
    return samplers.sample(denoiser, latent, noise, sigmas, sampler_name, SEED)


@pytest.mark.parametrize(("sampler_name", "scheduler"), _cases())
def test_sampler_matches_oracle(sampler_name: str, scheduler: str) -> None:
    """Each sampler x scheduler agrees with its independent oracle within its tolerance."""
    unet = DummyUNet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde's clamping warnings
        with torch.no_grad():
            expected = _run_oracle(sampler_name, scheduler, unet)
    got = _run_runtime(sampler_name, scheduler, unet)
    assert got.dtype == np.float32 and got.shape == SHAPE
    assert np.isfinite(got).all()
    diff = float(np.abs(got - expected).max())
    assert diff <= _tolerance(sampler_name, scheduler), (sampler_name, scheduler, diff)


def test_supported_list_covers_the_brief() -> None:
    """Every ComfyUI sampler is implemented, in ComfyUI's order."""
    required = {
        "euler",
        "euler_ancestral",
        "heun",
        "dpm_2",
        "dpm_2_ancestral",
        "lms",
        "dpmpp_2s_ancestral",
        "dpmpp_2m",
        "lcm",
        "ddim",
        "uni_pc",
        "uni_pc_bh2",
    }
    assert required <= set(samplers.SUPPORTED_SAMPLERS)
    assert samplers.SUPPORTED_SAMPLERS == samplers.SAMPLER_NAMES
    assert len(samplers.SAMPLER_NAMES) == 44
    assert set(TOLERANCE) | set(GPU_ALIASES) == set(KDIFF_SAMPLERS)


def test_gpu_aliases() -> None:
    """On a CPU device the _gpu SDE samplers are the same sampler as their plain twins."""
    for alias, base in GPU_ALIASES.items():
        unet = DummyUNet()
        assert (_run_runtime(alias, "normal", unet) == _run_runtime(base, "normal", unet)).all()


# ----------------------------------------------------------------------------------------------
# sample() / ksampler() semantics around the samplers.


def _simple_denoiser(unet: DummyUNet):
    cond, uncond = _prompts()
    return cfg_mod.make_denoiser(unet.numpy, [{"cond": cond}], [{"cond": uncond}], CFG, SHAPE)


def _inpaint_oracle(
    sigmas: torch.Tensor, latent: np.ndarray, mask: np.ndarray, noise_seed: int, renoise_seed: int
) -> np.ndarray:
    """k-diffusion euler with the inpainting blend of comfyui-format.md 4.6, written in torch."""
    k = load_k_sampling()
    cond, uncond = _prompts()
    inner = comfy_k_denoiser(DummyUNet(), cond, uncond, CFG)
    lat = torch.from_numpy(latent)
    torch.manual_seed(noise_seed)
    noise = torch.randn(SHAPE)
    torch.manual_seed(renoise_seed)
    renoise = torch.randn(SHAPE)
    m = torch.nn.functional.interpolate(
        torch.from_numpy(mask)[None, None], size=SHAPE[2:], mode="bilinear", align_corners=False
    ).expand(SHAPE)

    def model(x, sigma):
        x = x * m + (lat + renoise * sigma.reshape(-1, 1, 1, 1)) * (1 - m)
        return inner(x, sigma) * m + lat * (1 - m)

    x = lat + noise * sigmas[0]  # sigma0 < sigma_max: img2img scaling
    with torch.no_grad():
        return k.sample_euler(model, x, sigmas, disable=True).numpy()


@pytest.mark.parametrize("sampler_name", ["euler", "ddim"])
def test_inpaint_noise_mask(sampler_name: str) -> None:
    """noise_mask blends each model call; ddim re-noises with manual_seed(seed + 1) noise."""
    latent = np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32)
    mask = np.zeros((64, 64), np.float32)
    mask[10:50, 20:60] = 1.0
    sigmas = ksampler_sigmas("normal", STEPS, sampler_name, denoise=0.7)
    got = samplers.sample(
        _simple_denoiser(DummyUNet()),
        latent,
        prepare_noise(SHAPE, SEED),
        sigmas,
        sampler_name,
        SEED,
        noise_mask=mask,
    )
    renoise_seed = SEED + 1 if sampler_name == "ddim" else SEED
    expected = _inpaint_oracle(torch.from_numpy(sigmas), latent, mask, SEED, renoise_seed)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


def test_prepare_mask_like_comfy() -> None:
    """prepare_mask: bilinear resize, channel and batch repeat (comfy.utils.reshape_mask)."""
    mask = np.random.default_rng(2).random((1, 37, 53)).astype(np.float32)
    got = samplers.prepare_mask(mask, (3, 4, 9, 13))
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(mask)[:, None], size=(9, 13), mode="bilinear"
    ).repeat(3, 4, 1, 1)
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-6)


def test_noise_scaling_max_denoise_and_img2img() -> None:
    """sqrt(1 + s0^2) at sigma_max (txt2img), s0 below it (img2img), latent added."""
    noise = prepare_noise(SHAPE, 3)
    latent = np.full(SHAPE, 0.5, np.float32)
    full = ksampler_sigmas("normal", 10)
    assert samplers.is_max_denoise(full, SD1_SCHEDULE.sigma_max)
    np.testing.assert_allclose(
        samplers.noise_scaling(full[0], noise, latent, True),
        latent + noise * np.float32(np.sqrt(1 + full[0].astype(np.float64) ** 2)),
        rtol=1e-6,
    )
    part = ksampler_sigmas("normal", 10, denoise=0.5)
    assert not samplers.is_max_denoise(part, SD1_SCHEDULE.sigma_max)
    np.testing.assert_allclose(
        samplers.noise_scaling(part[0], noise, latent, False), latent + noise * part[0], rtol=1e-6
    )
    assert not samplers.is_max_denoise(ksampler_sigmas("ddim_uniform", 10), 14.614642)


def test_ksampler_scales_nonempty_latents_only() -> None:
    """ksampler multiplies a non-empty latent by 0.18215 before and divides after sampling."""
    unet = DummyUNet()
    sigmas = ksampler_sigmas("karras", 4, denoise=0.6)
    raw = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    got = samplers.ksampler(_simple_denoiser(unet), raw, SEED, sigmas, "euler")
    inner = samplers.sample(
        _simple_denoiser(unet),
        raw * np.float32(0.18215),
        prepare_noise(SHAPE, SEED),
        sigmas,
        "euler",
        SEED,
    )
    np.testing.assert_allclose(got, inner / np.float32(0.18215), rtol=1e-6)
    empty = np.zeros(SHAPE, np.float32)
    got = samplers.ksampler(
        _simple_denoiser(unet), empty, SEED, ksampler_sigmas("normal", 4), "euler"
    )
    inner = samplers.sample(
        _simple_denoiser(unet),
        empty,
        prepare_noise(SHAPE, SEED),
        ksampler_sigmas("normal", 4),
        "euler",
        SEED,
    )
    np.testing.assert_allclose(got, inner / np.float32(0.18215), rtol=1e-6)


def test_ksampler_returns_latent_unchanged_without_steps() -> None:
    """denoise 0 (empty sigmas) and a KSamplerAdvanced window past the end return the input."""
    raw = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    den = _simple_denoiser(DummyUNet())
    assert (
        samplers.ksampler(den, raw, 0, ksampler_sigmas("normal", 5, denoise=0.0), "euler") == raw
    ).all()
    assert (samplers.ksampler(den, raw, 0, None, "euler") == raw).all()


def test_add_noise_disabled_uses_zero_noise() -> None:
    """KSamplerAdvanced add_noise=disable: zero initial noise (ancestral noise still seeded)."""
    unet = DummyUNet()
    raw = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    sigmas = ksampler_sigmas("normal", 4)[2:]
    got = samplers.ksampler(
        _simple_denoiser(unet), raw, SEED, sigmas, "euler_ancestral", add_noise=False
    )
    inner = samplers.sample(
        _simple_denoiser(unet),
        raw * np.float32(0.18215),
        np.zeros(SHAPE, np.float32),
        sigmas,
        "euler_ancestral",
        SEED,
    )
    np.testing.assert_allclose(got, inner / np.float32(0.18215), rtol=1e-6)


def test_callback_once_per_step() -> None:
    """The callback gets (step, x0, x, total) once per step, like ComfyUI's progress hook."""
    seen: list[tuple[int, int]] = []
    sigmas = ksampler_sigmas("normal", 5, "uni_pc")
    for name in ("euler", "heun", "uni_pc"):
        seen.clear()
        samplers.sample(
            _simple_denoiser(DummyUNet()),
            np.zeros(SHAPE, np.float32),
            prepare_noise(SHAPE, 1),
            sigmas,
            name,
            1,
            callback=lambda i, x0, x, n: seen.append((i, n)),
        )
        assert seen == [(i, 5) for i in range(5)], name


def test_unknown_sampler_and_option_errors_name_the_alternatives() -> None:
    """An unknown sampler name or option raises with the valid choices."""
    args = (
        _simple_denoiser(DummyUNet()),
        np.zeros(SHAPE, np.float32),
        np.zeros(SHAPE, np.float32),
        ksampler_sigmas("normal", 3),
    )
    with pytest.raises(samplers.SamplerError, match="unknown sampler.*euler_ancestral"):
        samplers.sample(*args, "eulr", 0)
    with pytest.raises(samplers.SamplerError, match="its options are eta, s_noise"):
        samplers.SamplerSpec("euler_ancestral", {"order": 2})
    with pytest.raises(samplers.SamplerError, match="noise_device"):
        samplers.sampler_dpmpp_sde(noise_device="tpu")


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (2, 16, 3, 5), (1, 4, 3, 3), (1, 1, 2, 3)])
def test_prefetched_ancestral_noise_is_the_stream(shape: tuple[int, ...]) -> None:
    """Ancestral samplers draw their per-step noise in one call (issue #22): the draws equal
    consecutive ``randn(shape)`` calls of torch's CPU generator, beyond the prefetched count
    too, whatever the shape (shapes that are not a multiple of 16 values draw one by one)."""
    from comfyc.runtime.noise import TorchGenerator
    from comfyc.runtime.samplers import _Prefetched

    torch = pytest.importorskip("torch")
    noise = _Prefetched(TorchGenerator(1234), shape, 5)
    generator = torch.Generator().manual_seed(1234)
    for _ in range(8):  # 5 prefetched, then 3 more from the same stream
        want = torch.randn(shape, generator=generator).numpy()
        np.testing.assert_array_equal(noise(1.0, 0.5), want)
