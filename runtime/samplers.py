"""ComfyUI's samplers over numpy arrays.

Contract (what the caller provides and gets back):

* ``denoiser(x, sigma) -> x0``: the model's denoised prediction for the noisy latent ``x`` at
  noise level ``sigma`` (a Python float), **already including CFG** (see
  :func:`comfyc.runtime.cfg.make_denoiser`). ``x`` is float32 ``[B, C, h, w]`` in the k-diffusion
  convention ``x = x0 + sigma * eps``.
* Latents are in **model space**: the caller multiplies a non-empty VAE latent by the latent
  format's scale factor (0.18215 for SD1/SD2) before sampling and divides the result by it after
  (ComfyUI ``CFGGuider.inner_sample``: ``process_latent_in`` only when the latent has a non-zero
  value, so an all-zero empty latent is not scaled). :func:`ksampler` does this for you.
* ``noise`` is the initial noise (:func:`comfyc.runtime.noise.prepare_noise`); ``sigmas`` come
  from :mod:`comfyc.runtime.schedules`.

:func:`sample` follows ``comfy/samplers.py`` ``KSAMPLER.sample``: the initial state is
``latent + noise * sqrt(1 + sigma0**2)`` when ``sigma0`` is (close to) the model's ``sigma_max``
("max denoise", ``Sampler.max_denoise``) and ``latent + noise * sigma0`` otherwise
(``comfy/model_sampling.py`` ``EPS.noise_scaling``); with a ``noise_mask`` every model call sees
``x * m + (latent + noise * sigma) * (1 - m)`` and returns ``x0 * m + latent * (1 - m)``
(``KSamplerX0Inpaint``).

Stochastic samplers draw noise as ComfyUI does on a **CPU** sampling device:

* ancestral samplers (euler_ancestral, dpm_2_ancestral, dpmpp_2s_ancestral, lcm) use a
  ``torch.Generator`` seeded with ``seed + 1`` (``comfy/k_diffusion/sampling.py``
  ``default_noise_sampler``: ``if x.device == cpu: seed += 1``), one ``randn`` of the latent's
  shape per draw. On a CUDA device ComfyUI seeds a CUDA generator with ``seed`` instead, whose
  stream differs, so results match ComfyUI runs that sample on the CPU.
* SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_2m_sde_heun, dpmpp_3m_sde and their ``_gpu``
  twins, which on a CPU device are identical) use a torchsde ``BrownianTree`` with entropy
  ``seed``; :class:`comfyc.runtime.noise.BrownianTreeNoise` reproduces it without torch.
* ``ddim`` is euler, except that with a ``noise_mask`` the re-noised unmasked area uses fresh
  noise from ``manual_seed(seed + 1)`` (``sampler_object("ddim")``, ``inpaint_options random``).

Arithmetic is float32 like ComfyUI's; scalar coefficients are computed with correctly rounded
float32 steps, so results agree with ComfyUI (on the same sigmas and denoiser) to float32 rounding
(about 1e-5 on latents of magnitude 1-3; tests/runtime/test_samplers.py states the tolerance per
sampler and schedule). One caveat: ``dpmpp_sde`` queries the Brownian tree at
``exp(-lambda_mid)``, and torchsde rounds query times to 6 decimals; torch's float32 ``exp`` is not
correctly rounded, so a last-bit difference occasionally selects a neighbouring tree point and
that step's noise differs by ~1e-3 of its size (ComfyUI on GPU and on CPU differ the same way).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from .noise import BrownianTreeNoise, TorchGenerator, prepare_noise
from .schedules import SD1_SCHEDULE, DiscreteSchedule

__all__ = [
    "SAMPLER_NAMES",
    "SUPPORTED_SAMPLERS",
    "Denoiser",
    "SamplerError",
    "StepCallback",
    "is_max_denoise",
    "ksampler",
    "noise_scaling",
    "prepare_mask",
    "sample",
]

#: ``denoiser(x, sigma) -> x0`` (CFG included).
Denoiser = Callable[[np.ndarray, float], np.ndarray]
#: ``callback(step, x0, x, total_steps)``, called once per step like ComfyUI's progress hook.
StepCallback = Callable[[int, np.ndarray, np.ndarray, int], None]

# NOTE: comfy/samplers.py KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"] = the combo order.
SAMPLER_NAMES: tuple[str, ...] = (
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "exp_heun_2_x0",
    "exp_heun_2_x0_sde",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "res_multistep",
    "res_multistep_cfg_pp",
    "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp",
    "gradient_estimation",
    "gradient_estimation_cfg_pp",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
)


class SamplerError(ValueError):
    """A sampling request that cannot be run (unknown or unsupported sampler, bad inputs)."""


def _f32(value: float) -> float:
    """Round a Python float to float32 (one correctly rounded float32 operation)."""
    return float(np.float32(value))


def _neg_log(sigma: float) -> float:
    """``-log(sigma)`` in float32, +inf for sigma 0 (``sigma.log().neg()`` on a tensor)."""
    return math.inf if sigma == 0.0 else _f32(-math.log(sigma))


def _exp_neg(t: float) -> float:
    """``exp(-t)`` in float32 (``t.neg().exp()``)."""
    return 0.0 if t == math.inf else _f32(math.exp(-t))


def _expm1(v: float) -> float:
    """``expm1`` in float32."""
    return -1.0 if v == -math.inf else _f32(math.expm1(v))


def _to_d(x: np.ndarray, sigma: float, denoised: np.ndarray) -> np.ndarray:
    """Karras ODE derivative ``(x - x0) / sigma``."""
    return (x - denoised) / np.float32(sigma)


def _ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """``get_ancestral_step``: (sigma_down, sigma_up) in float32 steps."""
    if not eta:
        return sigma_to, 0.0
    st2 = _f32(sigma_to * sigma_to)
    sf2 = _f32(sigma_from * sigma_from)
    up = _f32(math.sqrt(_f32(_f32(st2 * _f32(sf2 - st2)) / sf2)))
    sigma_up = min(sigma_to, _f32(eta * up))
    sigma_down = _f32(math.sqrt(_f32(st2 - _f32(sigma_up * sigma_up))))
    return sigma_down, sigma_up


class _Run:
    """Per-call state shared by the sampler functions: model, callback, seed, noise streams."""

    __slots__ = ("callback", "model", "seed", "total")

    def __init__(self, model: Denoiser, callback: StepCallback | None, seed: int, total: int):
        self.model = model
        self.callback = callback
        self.seed = seed
        self.total = total

    def report(self, step: int, denoised: np.ndarray, x: np.ndarray) -> None:
        if self.callback is not None:
            self.callback(step, denoised, x, self.total)

    def ancestral_noise(self, shape: tuple[int, ...]) -> Callable[[float, float], np.ndarray]:
        """ComfyUI's ``default_noise_sampler`` on a CPU device: a generator seeded ``seed + 1``."""
        # NOTE: torch would reject seed + 1 == 2**64; only its low 32 bits matter anyway.
        generator = TorchGenerator((self.seed + 1) & 0xFFFFFFFFFFFFFFFF)
        return lambda sigma, sigma_next: generator.randn(shape)

    def brownian_noise(
        self, shape: tuple[int, ...], sigmas: Sequence[float]
    ) -> Callable[[float, float], np.ndarray]:
        """ComfyUI's ``BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=True)``."""
        positive = [s for s in sigmas if s > 0]
        return BrownianTreeNoise(shape, min(positive), max(sigmas), self.seed)


# ----------------------------------------------------------------------------------------------
# The samplers (comfy/k_diffusion/sampling.py, default arguments: eta 1, s_noise 1, s_churn 0).


def _euler(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        d = _to_d(x, s[i], denoised)
        run.report(i, denoised, x)
        x = x + d * np.float32(s[i + 1] - s[i])
    return x


def _euler_ancestral(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    noise = run.ancestral_noise(x.shape)
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        sigma_down, sigma_up = _ancestral_step(s[i], s[i + 1])
        run.report(i, denoised, x)
        if sigma_down == 0:
            x = denoised
        else:
            d = _to_d(x, s[i], denoised)
            x = x + d * np.float32(sigma_down - s[i]) + noise(s[i], s[i + 1]) * np.float32(sigma_up)
    return x


def _heun(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        d = _to_d(x, s[i], denoised)
        run.report(i, denoised, x)
        dt = np.float32(s[i + 1] - s[i])
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = run.model(x_2, s[i + 1])
            d_2 = _to_d(x_2, s[i + 1], denoised_2)
            x = x + (d + d_2) / np.float32(2) * dt
    return x


def _log_midpoint(a: float, b: float) -> float:
    """``a.log().lerp(b.log(), 0.5).exp()`` in float32 (torch lerp with weight >= 0.5)."""
    la, lb = _f32(math.log(a)), _f32(math.log(b))
    return _f32(math.exp(_f32(lb - _f32(_f32(lb - la) * 0.5))))


def _dpm_2(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        d = _to_d(x, s[i], denoised)
        run.report(i, denoised, x)
        if s[i + 1] == 0:
            x = x + d * np.float32(s[i + 1] - s[i])
        else:
            sigma_mid = _log_midpoint(s[i], s[i + 1])
            x_2 = x + d * np.float32(sigma_mid - s[i])
            denoised_2 = run.model(x_2, sigma_mid)
            d_2 = _to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * np.float32(s[i + 1] - s[i])
    return x


def _dpm_2_ancestral(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    noise = run.ancestral_noise(x.shape)
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        sigma_down, sigma_up = _ancestral_step(s[i], s[i + 1])
        run.report(i, denoised, x)
        d = _to_d(x, s[i], denoised)
        if sigma_down == 0:
            x = x + d * np.float32(sigma_down - s[i])
        else:
            sigma_mid = _log_midpoint(s[i], sigma_down)
            x_2 = x + d * np.float32(sigma_mid - s[i])
            denoised_2 = run.model(x_2, sigma_mid)
            d_2 = _to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * np.float32(sigma_down - s[i])
            x = x + noise(s[i], s[i + 1]) * np.float32(sigma_up)
    return x


_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(4)


def _lms_coeff(order: int, t: list[float], i: int, j: int) -> float:
    """Integral of the j-th Lagrange basis polynomial over [t[i], t[i+1]] (``sample_lms``).

    ComfyUI integrates with ``scipy.integrate.quad``; the integrand is a polynomial of degree
    < 4, which 4-point Gauss-Legendre integrates exactly.
    """
    a, b = t[i], t[i + 1]
    taus = 0.5 * (b - a) * _GAUSS_NODES + 0.5 * (b + a)
    prod = np.ones_like(taus)
    for k in range(order):
        if k != j:
            prod *= (taus - t[i - k]) / (t[i - j] - t[i - k])
    return float(0.5 * (b - a) * np.dot(_GAUSS_WEIGHTS, prod))


def _lms(run: _Run, x: np.ndarray, s: list[float], order: int = 4) -> np.ndarray:
    ds: list[np.ndarray] = []
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        ds.append(_to_d(x, s[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        run.report(i, denoised, x)
        if s[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [_lms_coeff(cur_order, s, i, j) for j in range(cur_order)]
            step = np.zeros_like(x)
            for coeff, d in zip(coeffs, reversed(ds), strict=False):
                step = step + np.float32(coeff) * d
            x = x + step
    return x


def _dpmpp_2s_ancestral(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    noise = run.ancestral_noise(x.shape)
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        sigma_down, sigma_up = _ancestral_step(s[i], s[i + 1])
        run.report(i, denoised, x)
        if sigma_down == 0:
            d = _to_d(x, s[i], denoised)
            x = x + d * np.float32(sigma_down - s[i])
        else:
            t, t_next = _neg_log(s[i]), _neg_log(sigma_down)
            h = _f32(t_next - t)
            mid = _f32(t + _f32(0.5 * h))
            sigma_s = _exp_neg(mid)
            sigma_t = _exp_neg(t)
            x_2 = (
                np.float32(_f32(sigma_s / sigma_t)) * x
                - np.float32(_expm1(_f32(-h * 0.5))) * denoised
            )
            denoised_2 = run.model(x_2, sigma_s)
            x = (
                np.float32(_f32(_exp_neg(t_next) / sigma_t)) * x
                - np.float32(_expm1(-h)) * denoised_2
            )
        if s[i + 1] > 0:
            x = x + noise(s[i], s[i + 1]) * np.float32(sigma_up)
    return x


def _dpmpp_2m(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    old_denoised: np.ndarray | None = None
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        t, t_next = _neg_log(s[i]), _neg_log(s[i + 1])
        h = math.inf if t_next == math.inf else _f32(t_next - t)
        ratio = np.float32(_f32(_exp_neg(t_next) / _exp_neg(t)))
        coeff = np.float32(_expm1(-h))
        if old_denoised is None or s[i + 1] == 0:
            x = ratio * x - coeff * denoised
        else:
            h_last = _f32(t - _neg_log(s[i - 1]))
            r = _f32(h_last / h)
            a = _f32(1.0 + _f32(1.0 / _f32(2.0 * r)))
            b = _f32(1.0 / _f32(2.0 * r))
            denoised_d = np.float32(a) * denoised - np.float32(b) * old_denoised
            x = ratio * x - coeff * denoised_d
        old_denoised = denoised
    return x


def _lcm(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    noise = run.ancestral_noise(x.shape)
    # NOTE: ComfyUI loops max(1, len - 1) times and so fails on a 1-sigma schedule; here that
    # schedule returns x unchanged like every other sampler.
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        x = denoised
        if s[i + 1] > 0:
            # NOTE: model_sampling.noise_scaling(sigma_next, noise, x) without max_denoise.
            x = noise(s[i], s[i + 1]) * np.float32(s[i + 1]) + x
    return x


def _dpmpp_sde(run: _Run, x: np.ndarray, s: list[float], r: float = 0.5) -> np.ndarray:
    if len(s) <= 1:
        return x
    noise = run.brownian_noise(x.shape, s)
    fac = 1.0 / (2.0 * r)
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        if s[i + 1] == 0:
            x = denoised
            continue
        # NOTE: comfy's sample_dpmpp_sde in half-logSNR form; for EPS models lambda = -log sigma
        # and alpha = sigma * exp(lambda) (== 1 up to rounding, kept for bit-faithfulness).
        lambda_s, lambda_t = _neg_log(s[i]), _neg_log(s[i + 1])
        h = _f32(lambda_t - lambda_s)
        lambda_s_1 = _f32(lambda_s + _f32(r * h))
        sigma_s_1 = _exp_neg(lambda_s_1)
        alpha_s = _f32(s[i] * _f32(math.exp(lambda_s)))
        alpha_s_1 = _f32(sigma_s_1 * _f32(math.exp(lambda_s_1)))
        alpha_t = _f32(s[i + 1] * _f32(math.exp(lambda_t)))
        # Step 1
        sd, su = _ancestral_step(_exp_neg(lambda_s), _exp_neg(lambda_s_1))
        h_ = _f32(_neg_log(sd) - lambda_s)
        x_2 = (
            np.float32(_f32(_f32(alpha_s_1 / alpha_s) * _f32(math.exp(-h_)))) * x
            - np.float32(_f32(alpha_s_1 * _expm1(-h_))) * denoised
        )
        x_2 = x_2 + np.float32(alpha_s_1) * noise(s[i], sigma_s_1) * np.float32(su)
        denoised_2 = run.model(x_2, sigma_s_1)
        # Step 2
        sd, su = _ancestral_step(_exp_neg(lambda_s), _exp_neg(lambda_t))
        h_ = _f32(_neg_log(sd) - lambda_s)
        denoised_d = np.float32(1.0 - fac) * denoised + np.float32(fac) * denoised_2
        x = (
            np.float32(_f32(_f32(alpha_t / alpha_s) * _f32(math.exp(-h_)))) * x
            - np.float32(_f32(alpha_t * _expm1(-h_))) * denoised_d
        )
        x = x + np.float32(alpha_t) * noise(s[i], s[i + 1]) * np.float32(su)
    return x


def _dpmpp_2m_sde(
    run: _Run, x: np.ndarray, s: list[float], solver_type: str = "midpoint", eta: float = 1.0
) -> np.ndarray:
    if len(s) <= 1:
        return x
    noise = run.brownian_noise(x.shape, s)
    old_denoised: np.ndarray | None = None
    h_last: float | None = None
    h: float | None = None
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        if s[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = _neg_log(s[i]), _neg_log(s[i + 1])
            h = _f32(lambda_t - lambda_s)
            h_eta = _f32(h * (eta + 1.0))
            alpha_t = _f32(s[i + 1] * _f32(math.exp(lambda_t)))
            phi = _f32(-_expm1(-h_eta))
            a = _f32(_f32(s[i + 1] / s[i]) * _f32(math.exp(_f32(-h * eta))))
            x = np.float32(a) * x + np.float32(_f32(alpha_t * phi)) * denoised
            if old_denoised is not None and h_last is not None:
                r = _f32(h_last / h)
                diff = denoised - old_denoised
                if solver_type == "heun":
                    c = _f32(_f32(alpha_t * _f32(_f32(phi / _f32(-h_eta)) + 1.0)) * _f32(1.0 / r))
                    x = x + np.float32(c) * diff
                else:
                    c = _f32(_f32(_f32(0.5 * alpha_t) * phi) * _f32(1.0 / r))
                    x = x + np.float32(c) * diff
            if eta > 0:
                scale = _f32(math.sqrt(_f32(-_expm1(_f32(-2.0 * h * eta)))))
                x = x + noise(s[i], s[i + 1]) * np.float32(s[i + 1]) * np.float32(scale)
        old_denoised = denoised
        h_last = h
    return x


def _dpmpp_3m_sde(run: _Run, x: np.ndarray, s: list[float], eta: float = 1.0) -> np.ndarray:
    if len(s) <= 1:
        return x
    noise = run.brownian_noise(x.shape, s)
    denoised_1: np.ndarray | None = None
    denoised_2: np.ndarray | None = None
    h: float | None = None
    h_1: float | None = None
    h_2: float | None = None
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        if s[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = _neg_log(s[i]), _neg_log(s[i + 1])
            h = _f32(lambda_t - lambda_s)
            h_eta = _f32(h * (eta + 1.0))
            alpha_t = _f32(s[i + 1] * _f32(math.exp(lambda_t)))
            phi_1 = _f32(-_expm1(-h_eta))
            a = _f32(_f32(s[i + 1] / s[i]) * _f32(math.exp(_f32(-h * eta))))
            x = np.float32(a) * x + np.float32(_f32(alpha_t * phi_1)) * denoised
            phi_2 = _f32(_f32(_expm1(-h_eta) / h_eta) + 1.0)
            if h_2 is not None and h_1 is not None:
                assert denoised_1 is not None and denoised_2 is not None
                r0 = _f32(h_1 / h)
                r1 = _f32(h_2 / h)
                d1_0 = (denoised - denoised_1) / np.float32(r0)
                d1_1 = (denoised_1 - denoised_2) / np.float32(r1)
                r_sum = np.float32(_f32(r0 + r1))
                d1 = d1_0 + (d1_0 - d1_1) * np.float32(r0) / r_sum
                d2 = (d1_0 - d1_1) / r_sum
                phi_3 = _f32(_f32(phi_2 / h_eta) - 0.5)
                x = (
                    x
                    + np.float32(_f32(alpha_t * phi_2)) * d1
                    - np.float32(_f32(alpha_t * phi_3)) * d2
                )
            elif h_1 is not None:
                assert denoised_1 is not None
                r = _f32(h_1 / h)
                d = (denoised - denoised_1) / np.float32(r)
                x = x + np.float32(_f32(alpha_t * phi_2)) * d
            if eta > 0:
                scale = _f32(math.sqrt(_f32(-_expm1(_f32(-2.0 * h * eta)))))
                x = x + noise(s[i], s[i + 1]) * np.float32(s[i + 1]) * np.float32(scale)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# ----------------------------------------------------------------------------------------------
# UniPC (comfy/extra_samplers/uni_pc.py: sample_unipc, UniPC.multistep_uni_pc_bh_update).
#
# NOTE: ComfyUI runs UniPC in variance-preserving coordinates through ``SigmaConvert``, whose
# float32 formulas lose precision at small sigma (e.g. the final 0.001: ``1 - exp(2 log a)``
# cancels). Those roundings change the result by ~1e-4, so they are reproduced here step by step
# with float32 rounding, as torch's scalar path computes them.


def _vp_log_alpha(sigma: float) -> float:
    """``0.5 * log(1 / (sigma**2 + 1))`` in float32 steps."""
    return _f32(0.5 * _f32(math.log(_f32(1.0 / _f32(_f32(sigma * sigma) + 1.0)))))


def _vp_alpha(sigma: float) -> float:
    return _f32(math.exp(_vp_log_alpha(sigma)))


def _vp_one_minus_alpha2(sigma: float) -> float:
    return _f32(1.0 - _f32(math.exp(_f32(2.0 * _vp_log_alpha(sigma)))))


def _vp_std(sigma: float) -> float:
    return _f32(math.sqrt(_vp_one_minus_alpha2(sigma)))


def _vp_lambda(sigma: float) -> float:
    return _f32(_vp_log_alpha(sigma) - _f32(0.5 * _f32(math.log(_vp_one_minus_alpha2(sigma)))))


def _uni_pc(run: _Run, x: np.ndarray, s: list[float], variant: str = "bh1") -> np.ndarray:
    ts = list(s)
    if ts[-1] == 0:
        ts[-1] = 0.001
    steps = len(ts) - 1
    order = min(3, len(ts) - 2)

    def model_fn(x_vp: np.ndarray, sigma: float) -> np.ndarray:
        # NOTE: predict_eps_sigma + UniPC.data_prediction_fn: back to k-space for the model,
        # eps from its x0, then x0 in VP space (float32 arithmetic as torch does it).
        x_k = x_vp * np.float32(_f32(math.sqrt(_f32(_f32(sigma * sigma) + 1.0))))
        eps = (x_k - run.model(x_k, sigma)) / np.float32(sigma)
        return (x_vp - np.float32(_vp_std(sigma)) * eps) / np.float32(_vp_alpha(sigma))

    def update(
        x: np.ndarray,
        model_prev: list[np.ndarray],
        t_prev: list[float],
        t: float,
        step_order: int,
        use_corrector: bool,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        t_prev_0 = t_prev[-1]
        lambda_prev_0 = _vp_lambda(t_prev_0)
        lambda_t = _vp_lambda(t)
        model_prev_0 = model_prev[-1]
        sigma_prev_0, sigma_t = _vp_std(t_prev_0), _vp_std(t)
        alpha_t = _f32(math.exp(_vp_log_alpha(t)))
        h = _f32(lambda_t - lambda_prev_0)
        rks: list[float] = []
        d1s: list[np.ndarray] = []
        for i in range(1, step_order):
            rk = _f32(_f32(_vp_lambda(t_prev[-(i + 1)]) - lambda_prev_0) / h)
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - model_prev_0) / np.float32(rk))
        rks.append(1.0)
        hh = -h
        h_phi_1 = _expm1(hh)
        b_h = hh if variant == "bh1" else _expm1(hh)
        # NOTE: recent ComfyUI computes the b vector in float64 (then float32), as here.
        h_phi_k = math.expm1(hh) / hh - 1.0
        b_h64 = hh if variant == "bh1" else math.expm1(hh)
        factorial = 1
        rks32 = np.array(rks, dtype=np.float32)
        big_r = np.stack([rks32 ** np.float32(k - 1) for k in range(1, step_order + 1)])
        b_list: list[float] = []
        for k in range(1, step_order + 1):
            b_list.append(h_phi_k * factorial / b_h64)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        b = np.array(b_list, dtype=np.float32)
        rhos_p: np.ndarray | None = None
        if d1s and step_order != 2:
            rhos_p = np.linalg.solve(big_r[:-1, :-1], b[:-1]).astype(np.float32)
        elif d1s:
            rhos_p = np.array([0.5], dtype=np.float32)
        rhos_c = (
            np.array([0.5], dtype=np.float32)
            if step_order == 1
            else np.linalg.solve(big_r, b).astype(np.float32)
        )
        x_t_ = (
            np.float32(_f32(sigma_t / sigma_prev_0)) * x
            - np.float32(_f32(alpha_t * h_phi_1)) * model_prev_0
        )
        scale = np.float32(_f32(alpha_t * b_h))
        if rhos_p is not None:
            pred_res = sum(np.float32(rhos_p[k]) * d1s[k] for k in range(len(d1s)))
            x_t = x_t_ - scale * pred_res
        else:
            x_t = x_t_ - scale * np.float32(0.0)
        model_t = None
        if use_corrector:
            model_t = model_fn(x_t, t)
            d1_t = model_t - model_prev_0
            if d1s:
                corr_res = sum(np.float32(rhos_c[k]) * d1s[k] for k in range(len(d1s)))
                x_t = x_t_ - scale * (corr_res + np.float32(rhos_c[-1]) * d1_t)
            else:
                x_t = x_t_ - scale * (np.float32(rhos_c[-1]) * d1_t)
        return x_t, model_t

    x = x / np.float32(_f32(math.sqrt(_f32(1.0 + _f32(ts[0] * ts[0])))))
    model_prev: list[np.ndarray] = []
    t_prev: list[float] = []
    for step_index in range(steps):
        if step_index == 0:
            model_prev = [model_fn(x, ts[0])]
            t_prev = [ts[0]]
        elif step_index < order:
            t = ts[step_index]
            x, model_x = update(x, model_prev, t_prev, t, step_index, use_corrector=True)
            if model_x is None:
                model_x = model_fn(x, t)
            model_prev.append(model_x)
            t_prev.append(t)
        else:
            last = step_index + (2 if step_index == steps - 1 else 1)
            for step in range(step_index, last):
                t = ts[step]
                step_order = min(order, steps + 1 - step)
                x, model_x = update(x, model_prev, t_prev, t, step_order, step != steps)
                for k in range(order - 1):
                    t_prev[k] = t_prev[k + 1]
                    model_prev[k] = model_prev[k + 1]
                t_prev[-1] = t
                if step < steps:
                    if model_x is None:
                        model_x = model_fn(x, t)
                    model_prev[-1] = model_x
        run.report(step_index, model_prev[-1], x)
    return x / np.float32(_vp_alpha(ts[-1]))


_SAMPLERS: dict[str, Callable[[_Run, np.ndarray, list[float]], np.ndarray]] = {
    "euler": _euler,
    "euler_ancestral": _euler_ancestral,
    "heun": _heun,
    "dpm_2": _dpm_2,
    "dpm_2_ancestral": _dpm_2_ancestral,
    "lms": _lms,
    "dpmpp_2s_ancestral": _dpmpp_2s_ancestral,
    "dpmpp_sde": _dpmpp_sde,
    # NOTE: the _gpu variants only move the Brownian tree to the sampling device; on a CPU
    # device (what this runtime reproduces) they are the same sampler.
    "dpmpp_sde_gpu": _dpmpp_sde,
    "dpmpp_2m": _dpmpp_2m,
    "dpmpp_2m_sde": _dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": _dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": lambda run, x, s: _dpmpp_2m_sde(run, x, s, solver_type="heun"),
    "dpmpp_2m_sde_heun_gpu": lambda run, x, s: _dpmpp_2m_sde(run, x, s, solver_type="heun"),
    "dpmpp_3m_sde": _dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": _dpmpp_3m_sde,
    "lcm": _lcm,
    # NOTE: sampler_object("ddim") is ksampler("euler") with random inpaint noise (see sample()).
    "ddim": _euler,
    "uni_pc": lambda run, x, s: _uni_pc(run, x, s, "bh1"),
    "uni_pc_bh2": lambda run, x, s: _uni_pc(run, x, s, "bh2"),
}

#: Samplers this runtime implements, in ComfyUI's combo order.
SUPPORTED_SAMPLERS: tuple[str, ...] = tuple(n for n in SAMPLER_NAMES if n in _SAMPLERS)


def _check_sampler(sampler_name: str) -> None:
    if sampler_name in _SAMPLERS:
        return
    supported = ", ".join(SUPPORTED_SAMPLERS)
    if sampler_name in SAMPLER_NAMES:
        raise SamplerError(
            f"sampler {sampler_name!r} is a ComfyUI sampler that comfyc does not implement yet; "
            f"supported samplers: {supported}. Pick one of these in the KSampler node."
        )
    raise SamplerError(
        f"unknown sampler {sampler_name!r}; ComfyUI's samplers are {', '.join(SAMPLER_NAMES)} "
        f"and comfyc supports {supported}"
    )


# ----------------------------------------------------------------------------------------------
# Noise scaling, inpainting masks, and the entry points.


def is_max_denoise(sigmas: np.ndarray | Sequence[float], sigma_max: float) -> bool:
    """``Sampler.max_denoise``: whether sampling starts at (or above) the model's sigma_max.

    Args:
        sigmas: The schedule.
        sigma_max: The model's largest sigma (``schedule.sigma_max``).

    Returns:
        True when ``sigmas[0]`` is within rel. 1e-5 of ``sigma_max`` or above it.
    """
    sigma = float(np.float32(sigmas[0]))
    return math.isclose(sigma_max, sigma, rel_tol=1e-05) or sigma > sigma_max


def noise_scaling(
    sigma: float, noise: np.ndarray, latent: np.ndarray, max_denoise: bool = False
) -> np.ndarray:
    """Initial noisy latent (``comfy/model_sampling.py`` ``EPS.noise_scaling``).

    Args:
        sigma: The first sigma of the schedule.
        noise: Standard normal noise.
        latent: The model-space latent (zeros for txt2img).
        max_denoise: Scale by ``sqrt(1 + sigma**2)`` instead of ``sigma`` (full denoise).

    Returns:
        ``latent + noise * scale`` in float32.
    """
    sigma = _f32(sigma)
    scale = _f32(math.sqrt(_f32(1.0 + _f32(sigma * sigma)))) if max_denoise else sigma
    return (noise * np.float32(scale) + latent).astype(np.float32)


def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch ``upsample_bilinear2d`` (align_corners=False) source indices and weights."""
    scale = np.float32(in_size / out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, lam


def _resize_bilinear(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of ``[N, 1, H, W]`` like ``torch.nn.functional.interpolate``."""
    if mask.shape[-2:] == (height, width):
        return mask
    y0, y1, ly = _source_index(height, mask.shape[-2])
    x0, x1, lx = _source_index(width, mask.shape[-1])
    top = mask[..., y0, :] * (np.float32(1) - ly)[:, None] + mask[..., y1, :] * ly[:, None]
    return (top[..., x0] * (np.float32(1) - lx) + top[..., x1] * lx).astype(np.float32)


def _repeat_to_batch(array: np.ndarray, batch: int) -> np.ndarray:
    """``comfy.utils.repeat_to_batch_size``."""
    if array.shape[0] > batch:
        return array[:batch]
    if array.shape[0] < batch:
        reps = math.ceil(batch / array.shape[0])
        return np.concatenate([array] * reps, axis=0)[:batch]
    return array


def prepare_mask(noise_mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize a LATENT ``noise_mask`` to the latent (``comfy.sampler_helpers.prepare_mask``).

    Args:
        noise_mask: ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]`` mask, usually at pixel size.
        shape: Latent shape ``[B, C, h, w]``.

    Returns:
        float32 mask ``[B, C, h, w]`` (bilinear resize, channels and batch repeated).
    """
    mask = np.asarray(noise_mask, dtype=np.float32)
    if mask.ndim < 2:
        raise SamplerError(f"noise_mask must be at least 2-D [H, W], got shape {mask.shape}")
    mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
    mask = _resize_bilinear(mask, int(shape[2]), int(shape[3]))
    mask = np.repeat(mask, int(shape[1]), axis=1)
    return np.ascontiguousarray(_repeat_to_batch(mask, int(shape[0])))


def sample(
    denoiser: Denoiser,
    latent: np.ndarray,
    noise: np.ndarray,
    sigmas: np.ndarray | Sequence[float],
    sampler_name: str,
    seed: int,
    noise_mask: np.ndarray | None = None,
    callback: StepCallback | None = None,
    schedule: DiscreteSchedule | None = None,
) -> np.ndarray:
    """Run one ComfyUI sampler (``KSAMPLER.sample``) and return the model-space result.

    Args:
        denoiser: ``denoiser(x, sigma) -> x0`` with CFG applied.
        latent: Model-space latent ``[B, C, h, w]`` (already multiplied by the scale factor when
            it is not empty; zeros for txt2img).
        noise: Initial noise of the same shape (zeros for ``add_noise = disable``).
        sigmas: The schedule (float32, descending); empty returns ``latent`` unchanged.
        sampler_name: One of :data:`SUPPORTED_SAMPLERS`.
        seed: The KSampler seed (seeds the ancestral/SDE noise).
        noise_mask: Optional inpainting mask (1 = regenerate); any spatial size, resized.
        callback: Optional ``callback(step, x0, x, total_steps)`` per step.
        schedule: The model schedule (for ``sigma_max``); defaults to SD1/SD2.

    Returns:
        float32 model-space latent (divide by the scale factor to get a LATENT).

    Raises:
        SamplerError: for an unknown/unsupported sampler or mismatching shapes.
    """
    _check_sampler(sampler_name)
    latent = np.asarray(latent, dtype=np.float32)
    noise = np.asarray(noise, dtype=np.float32)
    if latent.shape != noise.shape:
        raise SamplerError(
            f"noise shape {noise.shape} does not match the latent shape {latent.shape}; "
            "draw the noise with prepare_noise(latent.shape, seed)"
        )
    sig = [float(v) for v in np.asarray(sigmas, dtype=np.float32).reshape(-1)]
    if len(sig) == 0:
        return latent.copy()
    s = schedule or SD1_SCHEDULE
    mask = None if noise_mask is None else prepare_mask(noise_mask, latent.shape)

    inpaint_noise = noise
    if mask is not None and sampler_name == "ddim":
        # NOTE: KSAMPLER inpaint_options {"random": True}: fresh noise from manual_seed(seed + 1).
        inpaint_noise = TorchGenerator((seed + 1) & 0xFFFFFFFFFFFFFFFF).randn(noise.shape)

    def model(x: np.ndarray, sigma: float) -> np.ndarray:
        if mask is None:
            return np.asarray(denoiser(x, sigma), dtype=np.float32)
        # NOTE: KSamplerX0Inpaint: keep the unmasked area on the noised original latent.
        latent_mask = np.float32(1.0) - mask
        scaled = inpaint_noise * np.float32(sigma) + latent
        x = x * mask + scaled * latent_mask
        out = np.asarray(denoiser(x, sigma), dtype=np.float32)
        return out * mask + latent * latent_mask

    x = noise_scaling(sig[0], noise, latent, is_max_denoise(sig, s.sigma_max))
    run = _Run(model, callback, int(seed), len(sig) - 1)
    return np.asarray(_SAMPLERS[sampler_name](run, x, sig), dtype=np.float32)


def ksampler(
    denoiser: Denoiser,
    latent: np.ndarray,
    seed: int,
    sigmas: np.ndarray | Sequence[float] | None,
    sampler_name: str,
    *,
    add_noise: bool = True,
    batch_index: Sequence[int] | None = None,
    noise_mask: np.ndarray | None = None,
    latent_scale: float = 0.18215,
    callback: StepCallback | None = None,
    schedule: DiscreteSchedule | None = None,
) -> np.ndarray:
    """The KSampler / KSamplerAdvanced op on a raw LATENT (``nodes.common_ksampler``).

    Draws the seed's noise (or zeros when ``add_noise`` is off), scales a non-empty latent into
    model space, samples, and scales back. ``sigmas`` None (KSamplerAdvanced starting past the end)
    or empty (denoise 0) returns the latent unchanged, as ComfyUI does.

    Args:
        denoiser: ``denoiser(x, sigma) -> x0`` with CFG applied.
        latent: Raw LATENT samples ``[B, C, h, w]`` (VAE space).
        seed: KSampler seed / KSamplerAdvanced noise_seed.
        sigmas: From :func:`~comfyc.runtime.schedules.ksampler_sigmas` (and
            :func:`~comfyc.runtime.schedules.advanced_sigmas`).
        sampler_name: One of :data:`SUPPORTED_SAMPLERS`.
        add_noise: KSamplerAdvanced ``add_noise`` (False = zero initial noise).
        batch_index: The LATENT's ``batch_index``, if any.
        noise_mask: The LATENT's ``noise_mask``, if any.
        latent_scale: The latent format's scale factor (0.18215 for SD1/SD2).
        callback: Optional per-step callback.
        schedule: The model schedule; defaults to SD1/SD2.

    Returns:
        Raw LATENT samples (float32), same shape.
    """
    latent = np.asarray(latent, dtype=np.float32)
    if sigmas is None or len(sigmas) == 0:
        return latent.copy()
    _check_sampler(sampler_name)
    if add_noise:
        noise = prepare_noise(latent.shape, seed, batch_index)
    else:
        noise = np.zeros(latent.shape, dtype=np.float32)
    scale = np.float32(latent_scale)
    model_latent = latent * scale if np.count_nonzero(latent) > 0 else latent
    out = sample(
        denoiser, model_latent, noise, sigmas, sampler_name, seed, noise_mask, callback, schedule
    )
    return (out / scale).astype(np.float32)
