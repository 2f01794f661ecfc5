"""ComfyUI's samplers over numpy arrays: every name on the KSampler list, with their options.

Contract (what the caller provides and gets back):

* ``denoiser(x, sigma) -> x0``: the model's denoised prediction for the noisy latent ``x`` at
  noise level ``sigma`` (a Python float), **already including CFG** (see
  :func:`comfyc.runtime.cfg.make_denoiser`). ``x`` is float32 ``[B, C, h, w]`` in the model
  sampling's convention: ``x = x0 + sigma * eps`` for EPS/V models, ``x = (1 - sigma) x0 +
  sigma * eps`` for CONST (flow) models.
* CFG++ samplers (the ``*_cfg_pp`` names) also need the negative prompt's own x0. A denoiser
  that offers ``denoise_with_uncond(x, sigma) -> (x0, uncond_x0)`` provides it (like ComfyUI
  with ``disable_cfg1_optimization``, it must evaluate the negative prompt even at cfg 1);
  :class:`comfyc.runtime.cfg.CFGDenoiser` does. A plain callable is treated as an unguided model
  whose unconditional prediction is its own output. Other samplers never call it.
* Latents are in **model space**: :func:`ksampler` and :func:`sample_custom` apply the latent
  format (``(latent - shift) * scale`` on a non-empty latent before sampling, ``x / scale +
  shift`` after, ComfyUI ``CFGGuider.inner_sample``); :func:`sample` takes model-space latents.
* ``model_sampling`` (:mod:`comfyc.runtime.model_sampling`; default SD1 eps) supplies
  ``noise_scaling`` (the initial noisy latent, ``max_denoise`` when the schedule starts at
  ``sigma_max``), ``inverse_noise_scaling``, the half-log-SNR maps of the newer samplers and the
  CONST branches of the ancestral samplers (``*_RF`` in ComfyUI).

:func:`sample` follows ``comfy/samplers.py`` ``KSAMPLER.sample``; with a ``noise_mask`` every model
call sees ``x * m + noise_scaling(sigma, noise, latent) * (1 - m)`` and returns ``x0 * m + latent
* (1 - m)`` (``KSamplerX0Inpaint``). Sampler options (``eta``, ``s_noise``, ``order``, ...) come
in a :class:`SamplerSpec`, built by the functions named after ComfyUI's sampler nodes
(:func:`ksampler_select`, :func:`sampler_euler_ancestral`, ...).

Stochastic samplers draw noise as ComfyUI does on the sampling device that ``noise_mode``
names (:data:`~comfyc.runtime.noise.NOISE_MODES`; default
:data:`~comfyc.runtime.noise.DEFAULT_NOISE_MODE`, ``cpu``):

* ``default_noise_sampler`` samplers (:data:`DEVICE_NOISE_SAMPLERS`: ancestral, cfg_pp
  ancestral, ddpm, lcm, res_multistep ancestral, er_sde, seeds, sa_solver, exp_heun_2_x0_sde,
  dpm_fast/adaptive with eta) draw one ``randn`` of the latent's shape per draw from a generator
  on the latent's device: ``cpu``, a CPU ``torch.Generator`` seeded ``seed + 1`` (``if x.device
  == cpu: seed += 1``, ComfyUI since its #11528); ``cpu-legacy``, seeded ``seed`` (before it);
  ``cuda``, torch's CUDA generator seeded ``seed``
  (:class:`comfyc.runtime.noise.CudaGenerator`).
* SDE samplers (dpmpp_sde, dpmpp_2m_sde, dpmpp_2m_sde_heun, dpmpp_3m_sde) use a torchsde
  ``BrownianTree`` with entropy ``seed`` kept on the CPU on every device
  (:class:`comfyc.runtime.noise.BrownianTreeNoise`). Their ``_gpu`` twins build the tree on the
  latent's device: the same on a CPU, drawn from the CUDA generator in ``cuda`` mode.
* ``ddim`` is euler, except that with a ``noise_mask`` the re-noised unmasked area uses fresh
  noise from ``manual_seed(seed + 1)`` on the CPU in every mode (``sampler_object("ddim")``,
  ``inpaint_options random``).

Arithmetic is float32 like ComfyUI's: per-step scalar coefficients are evaluated in float32 in
ComfyUI's operation order (numpy float32 scalars, or ``_f32`` roundings), array updates keep
ComfyUI's association order. Results agree with ComfyUI's own code on the same sigmas and
denoiser to float32 rounding (~1e-6 on latents of magnitude 1-3); the tests state the tolerance
per sampler (tests/runtime/test_sampler_comfyui_recording.py, test_samplers.py). Caveats:
``dpmpp_sde`` queries the Brownian tree at ``exp(-lambda_mid)`` and torchsde rounds query times to
6 decimals, so a last-bit difference in ``exp`` can select a neighbouring tree point; ``deis``
integrates its coefficients over 10000 float32 points and ``dpm_adaptive`` accepts or rejects
steps on a float32 error norm, so both agree a little less tightly.

Sources, per sampler: Karras et al. 2022 (euler, heun, dpm_2 and their ancestral forms, via
k-diffusion); Lu et al. 2022 DPM-Solver (dpm_fast, dpm_adaptive) and DPM-Solver++ (dpmpp_*);
Zhao et al. 2023 UniPC (uni_pc); Chung et al. 2024 CFG++ (``*_cfg_pp``); Ho et al. 2020 DDPM;
Luo et al. 2023 LCM; Zhang & Chen 2023 DEIS and iPNDM (via zju-pi/diff-sampler); Zhang et al.
2023 RES multistep (res_multistep); Permenter & Yuan 2024 (gradient_estimation); Cui et al.
2023 ER-SDE-Solver (er_sde); Gonzalez et al. 2023 SEEDS (seeds_2, seeds_3, exp_heun_2_x0);
Xue et al. 2023 SA-Solver (sa_solver); heunpp2 from Carzit/sd-webui-samplers-scheduler. Each
follows ComfyUI's ``comfy/k_diffusion/sampling.py`` (or ``comfy/extra_samplers/uni_pc.py``)
as of ComfyUI 0.29 (commit 4f874c5e), which the recorded tests check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .model_sampling import ModelSampling, as_model_sampling
from .noise import (
    DEFAULT_NOISE_MODE,
    BrownianTreeNoise,
    TorchGenerator,
    check_noise_mode,
    prepare_noise,
    sampler_noise_generator,
)
from .schedules import DiscreteSchedule, _torch_linspace

__all__ = [
    "DEVICE_NOISE_SAMPLERS",
    "SAMPLER_NAMES",
    "SUPPORTED_SAMPLERS",
    "CustomSampleResult",
    "Denoiser",
    "DisableNoise",
    "RandomNoise",
    "SamplerError",
    "SamplerSpec",
    "StepCallback",
    "is_max_denoise",
    "ksampler",
    "ksampler_select",
    "noise_mode_matters",
    "noise_scaling",
    "prepare_mask",
    "sample",
    "sample_custom",
    "sampler_dpm_adaptative",
    "sampler_dpmpp_2m_sde",
    "sampler_dpmpp_2s_ancestral",
    "sampler_dpmpp_3m_sde",
    "sampler_dpmpp_sde",
    "sampler_er_sde",
    "sampler_euler_ancestral",
    "sampler_euler_ancestral_cfg_pp",
    "sampler_lms",
    "sampler_sa_solver",
    "sampler_seeds_2",
    "sampler_uses_step_graph",
]

#: ``denoiser(x, sigma) -> x0`` (CFG included); may also offer ``denoise_with_uncond``.
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

_F = np.float32
_ONE = np.float32(1.0)


class SamplerError(ValueError):
    """A sampling request that cannot be run (unknown sampler or option, bad inputs)."""


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


def _exp32(v: float) -> float:
    """``exp`` in float32 (0 for -inf, inf on overflow)."""
    if v == -math.inf:
        return 0.0
    try:
        return _f32(math.exp(v))
    except OverflowError:
        return math.inf


def _log32(v: float) -> float:
    """``log`` in float32 (-inf for 0)."""
    return -math.inf if v == 0.0 else _f32(math.log(v))


def _e(v: Any) -> Any:
    """float32 ``exp`` (scalar or array) via float64: torch's float32 exp agrees with the
    correctly rounded value far more often than numpy's float32 exp does."""
    if isinstance(v, np.ndarray):
        with np.errstate(over="ignore"):
            return np.exp(v.astype(np.float64)).astype(np.float32)
    try:
        return _F(math.exp(float(v)))
    except OverflowError:
        return _F(math.inf)


def _em1(v: Any) -> Any:
    """float32 ``expm1`` (scalar or array) via float64."""
    if isinstance(v, np.ndarray):
        with np.errstate(over="ignore"):
            return np.expm1(v.astype(np.float64)).astype(np.float32)
    try:
        return _F(math.expm1(float(v)))
    except OverflowError:
        return _F(math.inf)


def _ln(v: Any) -> Any:
    """float32 ``log`` (scalar or array) via float64 (-inf at 0)."""
    if isinstance(v, np.ndarray):
        with np.errstate(divide="ignore"):
            return np.log(v.astype(np.float64)).astype(np.float32)
    v = float(v)
    return _F(-math.inf) if v == 0.0 else _F(math.log(v))


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
    sigma_up = min(sigma_to, _f32(_f32(eta) * up))
    sigma_down = _f32(math.sqrt(_f32(st2 - _f32(sigma_up * sigma_up))))
    return sigma_down, sigma_up


def _lerp(start: Any, end: Any, weight: float) -> Any:
    """``torch.lerp`` (scalar weight) as torch's CPU kernel computes it: one fused multiply-add,
    ``fma(w, end - start, start)`` for w < 0.5, else ``fma(w - 1, end - start, end)`` (emulated
    in float64); float32 for arrays and np.float32 scalars."""
    w = _F(weight)
    diff = np.asarray(end - start, dtype=np.float64)
    if weight < 0.5:
        out = np.float64(w) * diff + np.asarray(start, dtype=np.float64)
    else:
        out = np.float64(w - _ONE) * diff + np.asarray(end, dtype=np.float64)
    return out.astype(np.float32) if isinstance(out, np.ndarray) and out.ndim else _F(out)


#: At most this much noise is drawn ahead (one block per sampling run).
_PREFETCH_BYTES = 64 * 1024 * 1024


class _Prefetched:
    """``noise(sigma, sigma_next)``: consecutive ``generator.randn(shape)`` draws of a CPU
    generator, ``count`` of them made in one call.

    torch's CPU ``randn`` fills a tensor of at least 16 values 16 at a time from one uniform
    per value, so ``randn((k, *shape))`` is ``k`` consecutive ``randn(shape)`` calls stacked
    when the shape holds a multiple of 16 values (a latent: 4 or 16 channels); one call costs
    about what one step's draw did (a per-step draw was most of an ancestral sampler's own
    time on a small model). Other shapes draw one at a time; so do draws beyond ``count``,
    which continue the same stream.
    """

    __slots__ = ("_block", "_count", "_generator", "_next", "_shape")

    def __init__(self, generator: TorchGenerator, shape: tuple[int, ...], count: int) -> None:
        self._generator = generator
        self._shape = tuple(int(v) for v in shape)
        numel = math.prod(self._shape)
        fits = numel >= 16 and numel % 16 == 0 and 4 * numel * count <= _PREFETCH_BYTES
        self._count = count if fits and count > 1 else 0
        self._block: np.ndarray | None = None
        self._next = 0

    def __call__(self, sigma: float, sigma_next: float) -> np.ndarray:
        if self._block is None and self._count:
            self._block = self._generator.randn((self._count, *self._shape))
        if self._block is not None and self._next < self._count:
            self._next += 1
            return self._block[self._next - 1]
        return self._generator.randn(self._shape)


class _Run:
    """Per-call state shared by the sampler functions: model, callback, seed, noise streams."""

    __slots__ = ("callback", "model", "model_uncond", "ms", "noise_mode", "seed", "stepper",
                 "total")

    def __init__(
        self,
        model: Callable[[np.ndarray, float], np.ndarray],
        model_uncond: Callable[[np.ndarray, float], tuple[np.ndarray, np.ndarray]],
        callback: StepCallback | None,
        seed: int,
        total: int,
        ms: ModelSampling,
        noise_mode: str = DEFAULT_NOISE_MODE,
        stepper: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        self.model = model
        self.model_uncond = model_uncond
        self.callback = callback
        self.seed = seed
        self.total = total
        self.ms = ms
        self.noise_mode = noise_mode
        self.stepper = stepper

    def fused(self, x: np.ndarray) -> Any:
        """The denoiser's whole-step path for a latent like ``x`` (``CFGDenoiser.stepper``:
        the UNet stage's sampler-step graph), or None: step with :attr:`model` and numpy."""
        return None if self.stepper is None else self.stepper(x)

    def report(self, step: int, denoised: np.ndarray, x: np.ndarray) -> None:
        if self.callback is not None:
            self.callback(step, denoised, x, self.total)

    def ancestral_noise(self, shape: tuple[int, ...]) -> Callable[[float, float], np.ndarray]:
        """ComfyUI's ``default_noise_sampler(x, seed)`` on the noise mode's device."""
        generator = sampler_noise_generator(self.noise_mode, self.seed)
        if isinstance(generator, TorchGenerator):
            return _Prefetched(generator, shape, self.total)
        return lambda sigma, sigma_next: generator.randn(shape)

    def brownian_noise(
        self, shape: tuple[int, ...], sigmas: Sequence[float], gpu_tree: bool = False
    ) -> Callable[[float, float], np.ndarray]:
        """ComfyUI's ``BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=not gpu_tree)``.

        A ``_gpu`` sampler's tree lives on the latent's device: a CUDA tree in ``cuda`` mode.
        """
        positive = [s for s in sigmas if s > 0]
        if not positive:
            raise SamplerError("an SDE sampler needs at least one positive sigma")
        device = "cuda" if gpu_tree and self.noise_mode == "cuda" else "cpu"
        return BrownianTreeNoise(shape, min(positive), max(sigmas), self.seed, device=device)


# ----------------------------------------------------------------------------------------------
# Karras et al. (2022) samplers (comfy/k_diffusion/sampling.py; ComfyUI's defaults: s_churn 0).


def _euler(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    """Euler steps (Karras et al. 2022, algorithm 2 without churn)."""
    fused = run.fused(x)
    if fused is not None:  # The same arithmetic in the UNet stage's step graph.
        return fused.euler(x, s, run.report if run.callback is not None else None)
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        d = _to_d(x, s[i], denoised)
        run.report(i, denoised, x)
        x = x + d * np.float32(s[i + 1] - s[i])
    return x


def _rf_ancestral(s_i: float, s_next: float, eta: float) -> tuple[float, float, float, float]:
    """The CONST ancestral step of ComfyUI's ``*_RF`` samplers: (sigma_down, alpha_ip1,
    alpha_down, renoise_coeff), float32."""
    s0, s1 = _F(s_i), _F(s_next)
    downstep_ratio = _ONE + (s1 / s0 - _ONE) * _F(eta)
    sigma_down = s1 * downstep_ratio
    alpha_ip1 = _ONE - s1
    alpha_down = _ONE - sigma_down
    renoise = np.sqrt(s1 * s1 - sigma_down * sigma_down * (alpha_ip1 * alpha_ip1)
                      / (alpha_down * alpha_down))
    return float(sigma_down), float(alpha_ip1), float(alpha_down), float(renoise)


def _euler_ancestral(
    run: _Run, x: np.ndarray, s: list[float], eta: float = 1.0, s_noise: float = 1.0
) -> np.ndarray:
    """Ancestral Euler (k-diffusion); the CONST form is ComfyUI's ``sample_euler_ancestral_RF``."""
    noise = run.ancestral_noise(x.shape)
    const = run.ms.is_const
    fused = None if const else run.fused(x)
    if fused is not None:  # The same arithmetic in the UNet stage's step graph.
        steps = [_ancestral_step(s[i], s[i + 1], eta) for i in range(len(s) - 1)]
        return fused.euler_ancestral(x, s, [down for down, _ in steps],
                                     [up for _, up in steps], s_noise, noise,
                                     run.report if run.callback is not None else None)
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        if const:
            if s[i + 1] == 0:
                x = denoised
                continue
            sigma_down, alpha_ip1, alpha_down, renoise = _rf_ancestral(s[i], s[i + 1], eta)
            ratio = _F(sigma_down) / _F(s[i])
            x = ratio * x + (_ONE - ratio) * denoised
            if eta > 0:
                x = (_F(alpha_ip1) / _F(alpha_down)) * x + noise(s[i], s[i + 1]) * _F(
                    s_noise
                ) * _F(renoise)
            continue
        sigma_down, sigma_up = _ancestral_step(s[i], s[i + 1], eta)
        if sigma_down == 0:
            x = denoised
        else:
            d = _to_d(x, s[i], denoised)
            x = x + d * np.float32(sigma_down - s[i]) + noise(s[i], s[i + 1]) * _F(
                s_noise
            ) * np.float32(sigma_up)
    return x


def _heun(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    """Heun's method (Karras et al. 2022, algorithm 2 without churn)."""
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


def _heunpp2(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    """Heun++ (third-order where the schedule allows, from Carzit/sd-webui-samplers-scheduler).

    NOTE: ComfyUI also draws ``torch.randn_like(x)`` from torch's global generator every step
    for its (unused) churn; that draw never reaches the result and is not reproduced.
    """
    sf = [_F(v) for v in s]
    s_end = sf[-1]
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        d = _to_d(x, s[i], denoised)
        run.report(i, denoised, x)
        dt = sf[i + 1] - sf[i]
        if sf[i + 1] == s_end:
            x = x + d * dt
        elif sf[i + 2] == s_end:
            x_2 = x + d * dt
            denoised_2 = run.model(x_2, s[i + 1])
            d_2 = _to_d(x_2, s[i + 1], denoised_2)
            w = _F(2) * sf[0]
            w2 = sf[i + 1] / w
            w1 = _ONE - w2
            x = x + (d * w1 + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            denoised_2 = run.model(x_2, s[i + 1])
            d_2 = _to_d(x_2, s[i + 1], denoised_2)
            dt_2 = sf[i + 2] - sf[i + 1]
            x_3 = x_2 + d_2 * dt_2
            denoised_3 = run.model(x_3, s[i + 2])
            d_3 = _to_d(x_3, s[i + 2], denoised_3)
            w = _F(3) * sf[0]
            w2 = sf[i + 1] / w
            w3 = sf[i + 2] / w
            w1 = _ONE - w2 - w3
            x = x + (w1 * d + w2 * d_2 + w3 * d_3) * dt
    return x


def _log_midpoint(a: float, b: float) -> float:
    """``a.log().lerp(b.log(), 0.5).exp()`` in float32 (torch lerp with weight >= 0.5)."""
    la, lb = _f32(math.log(a)), _f32(math.log(b))
    return _f32(math.exp(_f32(lb - _f32(_f32(lb - la) * 0.5))))


def _dpm_2(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    """DPM-Solver-2-style second-order steps (Karras et al. 2022, k-diffusion ``sample_dpm_2``)."""
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


def _dpm_2_ancestral(
    run: _Run, x: np.ndarray, s: list[float], eta: float = 1.0, s_noise: float = 1.0
) -> np.ndarray:
    """Ancestral DPM-2 (k-diffusion); the CONST form is ComfyUI's ``_RF`` variant."""
    noise = run.ancestral_noise(x.shape)
    const = run.ms.is_const
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        if const:
            sigma_down, alpha_ip1, alpha_down, renoise = _rf_ancestral(s[i], s[i + 1], eta)
            sigma_up = 0.0
        else:
            sigma_down, sigma_up = _ancestral_step(s[i], s[i + 1], eta)
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
            if const:
                x = (_F(alpha_ip1) / _F(alpha_down)) * x + noise(s[i], s[i + 1]) * _F(
                    s_noise
                ) * _F(renoise)
            else:
                x = x + noise(s[i], s[i + 1]) * _F(s_noise) * np.float32(sigma_up)
    return x


_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(4)


def _lms_coeff(order: int, t: list[float], i: int, j: int) -> float:
    """Integral of the j-th Lagrange basis polynomial over [t[i], t[i+1]] (``sample_lms``).

    ComfyUI integrates with ``scipy.integrate.quad``; the integrand is a polynomial of degree
    < order, which Gauss-Legendre integrates exactly with enough nodes.
    """
    a, b = t[i], t[i + 1]
    nodes, weights = (
        (_GAUSS_NODES, _GAUSS_WEIGHTS)
        if order <= 8
        else np.polynomial.legendre.leggauss((order + 1) // 2 + 1)
    )
    taus = 0.5 * (b - a) * nodes + 0.5 * (b + a)
    prod = np.ones_like(taus)
    for k in range(order):
        if k != j:
            prod *= (taus - t[i - k]) / (t[i - j] - t[i - k])
    return float(0.5 * (b - a) * np.dot(weights, prod))


def _lms(run: _Run, x: np.ndarray, s: list[float], order: int = 4) -> np.ndarray:
    """Linear multistep (k-diffusion ``sample_lms``); ends with ``x = denoised`` at sigma 0."""
    if order < 1:
        raise SamplerError(f"lms order must be >= 1, got {order}")
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


# ----------------------------------------------------------------------------------------------
# DPM-Solver (Lu et al. 2022): dpm_fast and dpm_adaptive (k-diffusion ``DPMSolver``).


class _DPMSolver:
    """k-diffusion's ``DPMSolver`` in ``t = -log(sigma)`` (every model kind), float32 scalars."""

    __slots__ = ("run",)

    def __init__(self, run: _Run) -> None:
        self.run = run

    @staticmethod
    def t(sigma: np.float32) -> np.float32:
        return -_ln(_F(sigma))

    @staticmethod
    def sigma(t: np.float32) -> np.float32:
        return _e(-_F(t))

    def eps(
        self, cache: dict[str, np.ndarray], key: str, x: np.ndarray, t: np.float32
    ) -> np.ndarray:
        if key in cache:
            return cache[key]
        sigma = self.sigma(t)
        eps = (x - self.run.model(x, float(sigma))) / sigma
        cache[key] = eps
        return eps

    def step_1(self, x: np.ndarray, t: Any, t_next: Any, cache: dict) -> np.ndarray:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * _em1(h) * eps

    def step_2(self, x: np.ndarray, t: Any, t_next: Any, cache: dict, r1: float = 0.5):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + _F(r1) * h
        u1 = x - self.sigma(s1) * _em1(_F(r1) * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        sig_n = self.sigma(t_next)
        return (
            x
            - sig_n * _em1(h) * eps
            - sig_n / _F(2 * r1) * _em1(h) * (eps_r1 - eps)
        )

    def step_3(self, x: np.ndarray, t: Any, t_next: Any, cache: dict,
               r1: float = 1 / 3, r2: float = 2 / 3) -> np.ndarray:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + _F(r1) * h
        s2 = t + _F(r2) * h
        u1 = x - self.sigma(s1) * _em1(_F(r1) * h) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        r2h = _F(r2) * h
        u2 = (
            x
            - self.sigma(s2) * _em1(r2h) * eps
            - self.sigma(s2) * _F(r2 / r1) * (_em1(r2h) / r2h - _ONE) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        sig_n = self.sigma(t_next)
        return (
            x
            - sig_n * _em1(h) * eps
            - sig_n / _F(r2) * (_em1(h) / h - _ONE) * (eps_r2 - eps)
        )


def _dpm_range(s: list[float]) -> tuple[float, float] | None:
    """ComfyUI's dpm_fast/dpm_adaptive wrapper: (sigma_min, sigma_max), sigma_min the last
    positive sigma; None for a schedule without steps."""
    if len(s) <= 1:
        return None
    sigma_min = s[-1] if s[-1] != 0 else s[-2]
    if sigma_min <= 0 or s[0] <= 0:
        raise SamplerError("dpm_fast/dpm_adaptive need sigma_min and sigma_max > 0")
    return sigma_min, s[0]


def _dpm_fast(run: _Run, x: np.ndarray, s: list[float], eta: float = 0.0,
              s_noise: float = 1.0) -> np.ndarray:
    """DPM-Solver-fast: fixed steps of order 3 (then 2/1) spending ``len(sigmas) - 1`` model
    calls between the first and the last positive sigma (it ends at that sigma, with its noise)."""
    rng = _dpm_range(s)
    if rng is None:
        return x
    sigma_min, sigma_max = rng
    solver = _DPMSolver(run)
    noise = run.ancestral_noise(x.shape)
    nfe = len(s) - 1
    t_start, t_end = solver.t(_F(sigma_max)), solver.t(_F(sigma_min))
    if not t_end > t_start and eta:
        raise SamplerError("dpm_fast: eta must be 0 for reverse sampling")
    m = nfe // 3 + 1
    ts = _torch_linspace(float(t_start), float(t_end), m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict[str, np.ndarray] = {}
        t, t_next = ts[i], ts[i + 1]
        su = _F(0.0)
        t_next_ = t_next
        if eta:
            sd, _ = _ancestral_step(float(solver.sigma(t)), float(solver.sigma(t_next)), eta)
            t_next_ = min(t_end, solver.t(_F(sd)))
            su = np.sqrt(solver.sigma(t_next) ** 2 - solver.sigma(t_next_) ** 2)
        eps = solver.eps(cache, "eps", x, t)
        denoised = x - solver.sigma(t) * eps
        run.report(i, denoised, x)
        if order == 1:
            x = solver.step_1(x, t, t_next_, cache)
        elif order == 2:
            x = solver.step_2(x, t, t_next_, cache)
        else:
            x = solver.step_3(x, t, t_next_, cache)
        # NOTE: ComfyUI draws this noise even when eta is 0 (times 0); it changes nothing.
        if eta:
            x = x + su * _F(s_noise) * noise(float(solver.sigma(t)), float(solver.sigma(t_next)))
    return x


def _dpm_adaptive(
    run: _Run,
    x: np.ndarray,
    s: list[float],
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> np.ndarray:
    """DPM-Solver-12/23 with PID step size control between the first and last positive sigma."""
    rng = _dpm_range(s)
    if rng is None:
        return x
    if order not in (2, 3):
        raise SamplerError(f"dpm_adaptive order must be 2 or 3, got {order}")
    sigma_min, sigma_max = rng
    solver = _DPMSolver(run)
    noise = run.ancestral_noise(x.shape)
    t_start, t_end = solver.t(_F(sigma_max)), solver.t(_F(sigma_min))
    forward = t_end > t_start
    if not forward and eta:
        raise SamplerError("dpm_adaptive: eta must be 0 for reverse sampling")
    # NOTE: PIDStepSizeController in Python doubles, as ComfyUI's.
    h = abs(h_init) * (1 if forward else -1)
    ctrl_order = 1.5 if eta else order
    b1 = (pcoeff + icoeff + dcoeff) / ctrl_order
    b2 = -(pcoeff + 2 * dcoeff) / ctrl_order
    b3 = dcoeff / ctrl_order
    errs: list[float] = []
    atol32, rtol32 = _F(atol), _F(rtol)
    cur = t_start
    x_prev = x
    steps = 0
    limit = t_end - _F(1e-5) if forward else t_end + _F(1e-5)
    while (cur < limit) if forward else (cur > limit):
        cache: dict[str, np.ndarray] = {}
        t = min(t_end, cur + _F(h)) if forward else max(t_end, cur + _F(h))
        su = _F(0.0)
        t_ = t
        if eta:
            sd, _ = _ancestral_step(float(solver.sigma(cur)), float(solver.sigma(t)), eta)
            t_ = min(t_end, solver.t(_F(sd)))
            su = np.sqrt(solver.sigma(t) ** 2 - solver.sigma(t_) ** 2)
        eps = solver.eps(cache, "eps", x, cur)
        denoised = x - solver.sigma(cur) * eps
        if order == 2:
            x_low = solver.step_1(x, cur, t_, cache)
            x_high = solver.step_2(x, cur, t_, cache)
        else:
            x_low = solver.step_2(x, cur, t_, cache, r1=1 / 3)
            x_high = solver.step_3(x, cur, t_, cache)
        delta = np.maximum(atol32, rtol32 * np.maximum(np.abs(x_low), np.abs(x_prev)))
        ratio = ((x_low - x_high) / delta).astype(np.float64)
        error = _f32(_f32(math.sqrt(float(np.sum(ratio * ratio)))) / _f32(x.size**0.5))
        inv_error = 1 / (error + 1e-8)
        if not errs:
            errs = [inv_error, inv_error, inv_error]
        errs[0] = inv_error
        factor = errs[0] ** b1 * errs[1] ** b2 * errs[2] ** b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= accept_safety
        if accept:
            errs[2] = errs[1]
            errs[1] = errs[0]
        h *= factor
        if accept:
            x_prev = x_low
            x = x_high
            if eta:
                x = x + su * _F(s_noise) * noise(float(solver.sigma(cur)), float(solver.sigma(t)))
            cur = t
        steps += 1
        run.report(steps - 1, denoised, x)
    return x


# ----------------------------------------------------------------------------------------------
# DPM-Solver++ (Lu et al. 2022): dpmpp_2s_ancestral, dpmpp_sde, dpmpp_2m, dpmpp_2m_sde,
# dpmpp_3m_sde, in half-log-SNR time for the SDE samplers (CONST models included).


def _dpmpp_2s_ancestral(
    run: _Run, x: np.ndarray, s: list[float], eta: float = 1.0, s_noise: float = 1.0
) -> np.ndarray:
    """DPM-Solver++(2S) with ancestral noise; the CONST form is ComfyUI's ``_RF`` variant."""
    noise = run.ancestral_noise(x.shape)
    if run.ms.is_const:
        return _dpmpp_2s_ancestral_rf(run, x, s, eta, s_noise, noise)
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        sigma_down, sigma_up = _ancestral_step(s[i], s[i + 1], eta)
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
            x = x + noise(s[i], s[i + 1]) * _F(s_noise) * np.float32(sigma_up)
    return x


def _dpmpp_2s_ancestral_rf(
    run: _Run, x: np.ndarray, s: list[float], eta: float, s_noise: float,
    noise: Callable[[float, float], np.ndarray],
) -> np.ndarray:
    """``sample_dpmpp_2s_ancestral_RF``: the CONST (flow) form of DPM-Solver++(2S) ancestral."""
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        sigma_down, alpha_ip1, alpha_down, renoise = _rf_ancestral(s[i], s[i + 1], eta)
        run.report(i, denoised, x)
        if s[i + 1] == 0:
            d = _to_d(x, s[i], denoised)
            x = x + d * _F(_F(sigma_down) - _F(s[i]))
        else:
            if s[i] == 1.0:
                sigma_s = _F(0.9999)
            else:
                s_i, s_d = _F(s[i]), _F(sigma_down)
                t_i = _ln((_ONE - s_i) / s_i)
                t_down = _ln((_ONE - s_d) / s_d)
                h = t_down - t_i
                mid = t_i + _F(0.5) * h
                sigma_s = _ONE / (_e(mid) + _ONE)
            ratio_s = _F(sigma_s) / _F(s[i])
            u = ratio_s * x + (_ONE - ratio_s) * denoised
            d_i = run.model(u, float(sigma_s))
            ratio_d = _F(sigma_down) / _F(s[i])
            x = ratio_d * x + (_ONE - ratio_d) * d_i
        if s[i + 1] > 0 and eta > 0:
            x = (_F(alpha_ip1) / _F(alpha_down)) * x + noise(s[i], s[i + 1]) * _F(
                s_noise
            ) * _F(renoise)
    return x


def _dpmpp_sde(
    run: _Run, x: np.ndarray, s: list[float], eta: float = 1.0, s_noise: float = 1.0,
    r: float = 0.5, gpu_tree: bool = False,
) -> np.ndarray:
    """DPM-Solver++ (stochastic) with Brownian-tree noise, in half-log-SNR time."""
    if len(s) <= 1:
        return x
    noise = run.brownian_noise(x.shape, s, gpu_tree)
    ms = run.ms
    s = ms.offset_first_sigma(s)
    fac = 1.0 / (2.0 * r)
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        if s[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = ms.half_log_snr(s[i]), ms.half_log_snr(s[i + 1])
        h = _f32(lambda_t - lambda_s)
        lambda_s_1 = _f32(lambda_s + _f32(_f32(r) * h))
        sigma_s_1 = ms.sigma_from_half_log_snr(lambda_s_1)
        alpha_s = _f32(s[i] * _exp32(lambda_s))
        alpha_s_1 = _f32(sigma_s_1 * _exp32(lambda_s_1))
        alpha_t = _f32(s[i + 1] * _exp32(lambda_t))
        # Step 1
        sd, su = _ancestral_step(_exp_neg(lambda_s), _exp_neg(lambda_s_1), eta)
        h_ = _f32(_neg_log(sd) - lambda_s)
        x_2 = (
            np.float32(_f32(_f32(alpha_s_1 / alpha_s) * _exp32(-h_))) * x
            - np.float32(_f32(alpha_s_1 * _expm1(-h_))) * denoised
        )
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + np.float32(alpha_s_1) * noise(s[i], sigma_s_1) * _F(s_noise) * _F(su)
        denoised_2 = run.model(x_2, sigma_s_1)
        # Step 2
        sd, su = _ancestral_step(_exp_neg(lambda_s), _exp_neg(lambda_t), eta)
        h_ = _f32(_neg_log(sd) - lambda_s)
        denoised_d = np.float32(1.0 - fac) * denoised + np.float32(fac) * denoised_2
        x = (
            np.float32(_f32(_f32(alpha_t / alpha_s) * _exp32(-h_))) * x
            - np.float32(_f32(alpha_t * _expm1(-h_))) * denoised_d
        )
        if eta > 0 and s_noise > 0:
            x = x + np.float32(alpha_t) * noise(s[i], s[i + 1]) * _F(s_noise) * _F(su)
    return x


def _dpmpp_2m(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    """DPM-Solver++(2M) (multistep, data prediction, ``t = -log sigma``)."""
    steps = len(s) - 1
    ratio, coeff, a, b, first = [], [], [], [], []
    for i in range(steps):
        t, t_next = _neg_log(s[i]), _neg_log(s[i + 1])
        h = math.inf if t_next == math.inf else _f32(t_next - t)
        ratio.append(np.float32(_f32(_exp_neg(t_next) / _exp_neg(t))))
        coeff.append(np.float32(_expm1(-h)))
        first.append(i == 0 or s[i + 1] == 0)
        r = 0.0 if first[i] else _f32(_f32(t - _neg_log(s[i - 1])) / h)
        a.append(0.0 if first[i] else _f32(1.0 + _f32(1.0 / _f32(2.0 * r))))
        b.append(0.0 if first[i] else _f32(1.0 / _f32(2.0 * r)))
    fused = run.fused(x)
    if fused is not None:  # The same arithmetic in the UNet stage's step graph.
        return fused.dpmpp_2m(x, s, ratio, coeff, a, b, first,
                              run.report if run.callback is not None else None)
    old_denoised: np.ndarray | None = None
    for i in range(steps):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        if first[i]:
            x = ratio[i] * x - coeff[i] * denoised
        else:
            denoised_d = np.float32(a[i]) * denoised - np.float32(b[i]) * old_denoised
            x = ratio[i] * x - coeff[i] * denoised_d
        old_denoised = denoised
    return x


def _sde_noise_scale(h: float, eta: float) -> float:
    """``(-2 h eta).expm1().neg().sqrt()`` in float32."""
    return _f32(math.sqrt(_f32(-_expm1(_f32(_f32(-2.0 * h) * _f32(eta))))))


def _dpmpp_2m_sde(
    run: _Run, x: np.ndarray, s: list[float], eta: float = 1.0, s_noise: float = 1.0,
    solver_type: str = "midpoint", gpu_tree: bool = False,
) -> np.ndarray:
    """DPM-Solver++(2M) SDE (midpoint or heun correction) with Brownian-tree noise."""
    if len(s) <= 1:
        return x
    if solver_type not in ("heun", "midpoint"):
        raise SamplerError(f"solver_type must be 'heun' or 'midpoint', got {solver_type!r}")
    noise = run.brownian_noise(x.shape, s, gpu_tree)
    ms = run.ms
    s = ms.offset_first_sigma(s)
    eta32 = _f32(eta)
    noisy = eta > 0 and s_noise > 0
    # Per step: (a, alpha_t * phi, c or None, noise scale), None for a step to sigma 0.
    weights: list[tuple[float, float, float | None, float] | None] = []
    h_last: float | None = None
    h: float | None = None
    for i in range(len(s) - 1):
        if s[i + 1] == 0:
            weights.append(None)
        else:
            lambda_s, lambda_t = ms.half_log_snr(s[i]), ms.half_log_snr(s[i + 1])
            h = _f32(lambda_t - lambda_s)
            h_eta = _f32(h * _f32(eta + 1.0))
            alpha_t = _f32(s[i + 1] * _exp32(lambda_t))
            phi = _f32(-_expm1(-h_eta))
            a = _f32(_f32(s[i + 1] / s[i]) * _exp32(_f32(-h * eta32)))
            c = None
            if i > 0 and h_last is not None:
                r = _f32(h_last / h)
                if solver_type == "heun":
                    c = _f32(_f32(alpha_t * _f32(_f32(phi / _f32(-h_eta)) + 1.0)) * _f32(1.0 / r))
                else:
                    c = _f32(_f32(_f32(0.5 * alpha_t) * phi) * _f32(1.0 / r))
            scale = _sde_noise_scale(h, eta) if noisy else 0.0
            weights.append((a, _f32(alpha_t * phi), c, scale))
        h_last = h
    fused = run.fused(x)
    if fused is not None and fused.has("sde_first"):  # The same arithmetic in the step graph.
        return fused.dpmpp_2m_sde(
            x, s, [w[0] if w else 0.0 for w in weights], [w[1] if w else 0.0 for w in weights],
            [w[2] if w else None for w in weights], [w[3] if w else 0.0 for w in weights],
            s_noise, noisy, noise, run.report if run.callback is not None else None)
    old_denoised: np.ndarray | None = None
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        step = weights[i]
        if step is None:
            x = denoised
        else:
            a, b, c, scale = step
            x = np.float32(a) * x + np.float32(b) * denoised
            if c is not None and old_denoised is not None:
                x = x + np.float32(c) * (denoised - old_denoised)
            if noisy:
                x = x + noise(s[i], s[i + 1]) * np.float32(s[i + 1]) * np.float32(
                    scale) * _F(s_noise)
        old_denoised = denoised
    return x


def _dpmpp_3m_sde(
    run: _Run, x: np.ndarray, s: list[float], eta: float = 1.0, s_noise: float = 1.0,
    gpu_tree: bool = False,
) -> np.ndarray:
    """DPM-Solver++(3M) SDE with Brownian-tree noise."""
    if len(s) <= 1:
        return x
    noise = run.brownian_noise(x.shape, s, gpu_tree)
    ms = run.ms
    s = ms.offset_first_sigma(s)
    denoised_1: np.ndarray | None = None
    denoised_2: np.ndarray | None = None
    h: float | None = None
    h_1: float | None = None
    h_2: float | None = None
    eta32 = _f32(eta)
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        if s[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = ms.half_log_snr(s[i]), ms.half_log_snr(s[i + 1])
            h = _f32(lambda_t - lambda_s)
            h_eta = _f32(h * _f32(eta + 1.0))
            alpha_t = _f32(s[i + 1] * _exp32(lambda_t))
            phi_1 = _f32(-_expm1(-h_eta))
            a = _f32(_f32(s[i + 1] / s[i]) * _exp32(_f32(-h * eta32)))
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
            if eta > 0 and s_noise > 0:
                x = x + noise(s[i], s[i + 1]) * np.float32(s[i + 1]) * np.float32(
                    _sde_noise_scale(h, eta)
                ) * _F(s_noise)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# ----------------------------------------------------------------------------------------------
# DDPM (Ho et al. 2020) and LCM (Luo et al. 2023).


def _ddpm(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    """Ancestral DDPM steps in variance-preserving coordinates (``sample_ddpm``)."""
    noise = run.ancestral_noise(x.shape)
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        sigma, sigma_prev = _F(s[i]), _F(s[i + 1])
        x_in = x / np.sqrt(_ONE + sigma * sigma)
        eps = (x - denoised) / sigma
        alpha_cumprod = _ONE / (sigma * sigma + _ONE)
        alpha_cumprod_prev = _ONE / (sigma_prev * sigma_prev + _ONE)
        alpha = alpha_cumprod / alpha_cumprod_prev
        mu = np.sqrt(_ONE / alpha) * (x_in - (_ONE - alpha) * eps / np.sqrt(_ONE - alpha_cumprod))
        if sigma_prev > 0:
            scale = np.sqrt((_ONE - alpha) * (_ONE - alpha_cumprod_prev) / (_ONE - alpha_cumprod))
            mu = mu + scale * noise(s[i], s[i + 1])
        x = mu
        if s[i + 1] != 0:
            x = x * np.sqrt(_ONE + sigma_prev * sigma_prev)
    return x


def _lcm(
    run: _Run, x: np.ndarray, s: list[float], s_noise: float = 1.0,
    s_noise_end: float | None = None, noise_clip_std: float = 0.0,
) -> np.ndarray:
    """LCM multistep sampling: jump to x0, re-noise to the next sigma with fresh noise."""
    noise = run.ancestral_noise(x.shape)
    n_steps = max(1, len(s) - 1)
    s_start = float(s_noise)
    s_end = s_start if s_noise_end is None else float(s_noise_end)
    # NOTE: ComfyUI loops max(1, len - 1) times and so fails on a 1-sigma schedule; here that
    # schedule returns x unchanged like every other sampler.
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        x = denoised
        if s[i + 1] > 0:
            n = noise(s[i], s[i + 1])
            if noise_clip_std > 0:
                std = np.float32(np.std(n.astype(np.float64), ddof=1))
                clip = _F(noise_clip_std) * std
                n = np.clip(n, -clip, clip)
            t = (i / (n_steps - 1)) if n_steps > 1 else 0.0
            s_noise_i = s_start + (s_end - s_start) * t
            if s_noise_i != 1.0:
                n = n * _F(s_noise_i)
            x = run.ms.noise_scaling(s[i + 1], n, x)
    return x


# ----------------------------------------------------------------------------------------------
# iPNDM, iPNDM-v and DEIS (Zhang & Chen 2023; ComfyUI's port of zju-pi/diff-sampler).


def _ipndm(run: _Run, x: np.ndarray, s: list[float], max_order: int = 4) -> np.ndarray:
    """Improved PNDM: Adams-Bashforth on the Karras derivative with fixed coefficients."""
    sf = [_F(v) for v in s]
    buffer: list[np.ndarray] = []
    for i in range(len(s) - 1):
        t_cur, t_next = sf[i], sf[i + 1]
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        dt = t_next - t_cur
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + dt * d_cur
        elif order == 2:
            x_next = x + dt * (_F(3) * d_cur - buffer[-1]) / _F(2)
        elif order == 3:
            x_next = x + dt * (_F(23) * d_cur - _F(16) * buffer[-1] + _F(5) * buffer[-2]) / _F(12)
        else:
            x_next = x + dt * (
                _F(55) * d_cur - _F(59) * buffer[-1] + _F(37) * buffer[-2] - _F(9) * buffer[-3]
            ) / _F(24)
        if len(buffer) == max_order - 1:
            buffer = [*buffer[1:], d_cur]
        else:
            buffer.append(d_cur)
        x = x_next
    return x


def _ipndm_v(run: _Run, x: np.ndarray, s: list[float], max_order: int = 4) -> np.ndarray:
    """iPNDM with variable step sizes (coefficients from the actual sigma spacing)."""
    t_steps = [_F(v) for v in s]
    buffer: list[np.ndarray] = []
    for i in range(len(s) - 1):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        else:
            h_n = t_next - t_cur
            h_n_1 = t_cur - t_steps[i - 1]
            if order == 2:
                coeff1 = (_F(2) + (h_n / h_n_1)) / _F(2)
                coeff2 = -(h_n / h_n_1) / _F(2)
                x_next = x + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer[-1])
            elif order == 3:
                h_n_2 = t_steps[i - 1] - t_steps[i - 2]
                temp = (_ONE - h_n / (_F(3) * (h_n + h_n_1)) * (h_n * (h_n + h_n_1))
                        / (h_n_1 * (h_n_1 + h_n_2))) / _F(2)
                coeff1 = (_F(2) + (h_n / h_n_1)) / _F(2) + temp
                coeff2 = -(h_n / h_n_1) / _F(2) - (_ONE + h_n_1 / h_n_2) * temp
                coeff3 = temp * h_n_1 / h_n_2
                x_next = x + (t_next - t_cur) * (
                    coeff1 * d_cur + coeff2 * buffer[-1] + coeff3 * buffer[-2]
                )
            else:
                h_n_2 = t_steps[i - 1] - t_steps[i - 2]
                h_n_3 = t_steps[i - 2] - t_steps[i - 3]
                temp1 = (_ONE - h_n / (_F(3) * (h_n + h_n_1)) * (h_n * (h_n + h_n_1))
                         / (h_n_1 * (h_n_1 + h_n_2))) / _F(2)
                temp2 = (
                    (_ONE - h_n / (_F(3) * (h_n + h_n_1))) / _F(2)
                    + (_ONE - h_n / (_F(2) * (h_n + h_n_1))) * h_n / (_F(6) * (h_n + h_n_1 + h_n_2))
                ) * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (
                    h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3)
                )
                ratio = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
                coeff1 = (_F(2) + (h_n / h_n_1)) / _F(2) + temp1 + temp2
                coeff2 = (
                    -(h_n / h_n_1) / _F(2)
                    - (_ONE + h_n_1 / h_n_2) * temp1
                    - (_ONE + (h_n_1 / h_n_2) + ratio) * temp2
                )
                coeff3 = temp1 * h_n_1 / h_n_2 + (
                    (h_n_1 / h_n_2) + ratio * (_ONE + h_n_2 / h_n_3)
                ) * temp2
                coeff4 = -temp2 * ratio * h_n_1 / h_n_2
                x_next = x + (t_next - t_cur) * (
                    coeff1 * d_cur + coeff2 * buffer[-1] + coeff3 * buffer[-2]
                    + coeff4 * buffer[-3]
                )
        if len(buffer) == max_order - 1:
            buffer = [*buffer[1:], d_cur]
        else:
            buffer.append(d_cur)
        x = x_next
    return x


_DEIS_POINTS = 10000


def _deis_coefficients(sigmas: list[float], max_order: int) -> list[list[np.float32]]:
    """``deis.get_deis_coeff_list(..., deis_mode='tab')``: DEIS's time-integrated Lagrange
    coefficients in VP time (EDM's sigma_min 0.002 / sigma_max 80 VP fit), float32."""
    eps_s, smin, smax = _F(1e-3), _F(0.002), _F(80.0)
    beta_d = _F(2) * (_ln(smin * smin + _ONE) / eps_s - _ln(smax * smax + _ONE)) / (
        eps_s - _ONE
    )
    beta_min = _ln(smax * smax + _ONE) - _F(0.5) * beta_d
    edm = np.array(sigmas, dtype=_F)
    t_steps = (np.sqrt(beta_min * beta_min + _F(2) * beta_d * _ln(edm * edm + _ONE)) - beta_min
               ) / beta_d
    beta_0, beta_1 = beta_min, beta_d + beta_min
    out: list[list[np.float32]] = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        order = min(i + 1, max_order)
        if order == 1:
            out.append([])
            continue
        taus = _torch_linspace(float(t_cur), float(t_next), _DEIS_POINTS)
        dtau = (t_next - t_cur) / _F(_DEIS_POINTS)
        prev_t = [t_steps[i - k] for k in range(order)]
        # NOTE: ComfyUI differentiates log(alpha(t)) with autograd; these are the same float32
        # operations (log backward 1/alpha, exp backward alpha, then the chain rule).
        alpha = _e(_F(-0.5) * (taus * taus) * (beta_1 - beta_0) - taus * beta_0)
        grad = (_ONE / alpha) * alpha
        d_log_alpha = (grad * (beta_1 - beta_0)) * _F(-0.5) * (taus * _F(2)) + (-grad) * beta_0
        integrand = _F(-0.5) * d_log_alpha / np.sqrt(alpha * (_ONE - alpha))
        coeffs: list[np.float32] = []
        for j in range(order):
            poly = None
            for k in range(order):
                if k == j:
                    continue
                term = (taus - prev_t[k]) / (prev_t[j] - prev_t[k])
                poly = term if poly is None else poly * term
            coeffs.append(_F(np.sum(integrand * poly, dtype=_F) * dtau))
        out.append(coeffs)
    return out


def _deis(run: _Run, x: np.ndarray, s: list[float], max_order: int = 3,
          deis_mode: str = "tab") -> np.ndarray:
    """DEIS multistep (``tab`` mode: numerically integrated coefficients)."""
    if deis_mode != "tab":
        raise SamplerError(f"deis_mode {deis_mode!r} is not supported; ComfyUI uses 'tab'")
    sf = [_F(v) for v in s]
    coeffs = _deis_coefficients(s, max_order) if len(s) > 1 else []
    buffer: list[np.ndarray] = []
    for i in range(len(s) - 1):
        t_cur, t_next = sf[i], sf[i + 1]
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next <= 0:
            order = 1
        if order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        else:
            c = coeffs[i]
            x_next = x + c[0] * d_cur
            for k in range(1, order):
                x_next = x_next + c[k] * buffer[-k]
        if len(buffer) == max_order - 1:
            buffer = [*buffer[1:], d_cur]
        else:
            buffer.append(d_cur)
        x = x_next
    return x


# ----------------------------------------------------------------------------------------------
# CFG++ samplers (Chung et al. 2024): the step uses the unconditional x0 for the renoising
# direction. ComfyUI reads it through a post-CFG hook with the cfg=1 shortcut disabled.


def _euler_ancestral_cfg_pp(
    run: _Run, x: np.ndarray, s: list[float], eta: float = 1.0, s_noise: float = 1.0
) -> np.ndarray:
    """Euler (ancestral) CFG++: DDIM-style step from the guided x0 along the unconditional eps."""
    noise = run.ancestral_noise(x.shape)
    ms = run.ms
    for i in range(len(s) - 1):
        denoised, uncond = run.model_uncond(x, s[i])
        run.report(i, denoised, x)
        if s[i + 1] == 0:
            x = denoised
            continue
        alpha_s = _F(_f32(s[i] * _exp32(ms.half_log_snr(s[i]))))
        alpha_t = _F(_f32(s[i + 1] * _exp32(ms.half_log_snr(s[i + 1]))))
        d = (x - alpha_s * uncond) / _F(s[i])
        sigma_down, sigma_up = _ancestral_step(
            float(_F(s[i]) / alpha_s), float(_F(s[i + 1]) / alpha_t), eta
        )
        sigma_down = alpha_t * _F(sigma_down)
        x = alpha_t * denoised + sigma_down * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise(s[i], s[i + 1]) * _F(s_noise) * _F(sigma_up)
    return x


def _euler_cfg_pp(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    """Euler CFG++: the ancestral form with eta 0."""
    return _euler_ancestral_cfg_pp(run, x, s, eta=0.0, s_noise=0.0)


def _dpmpp_2s_ancestral_cfg_pp(
    run: _Run, x: np.ndarray, s: list[float], eta: float = 1.0, s_noise: float = 1.0
) -> np.ndarray:
    """DPM-Solver++(2S) ancestral, CFG++ form."""
    noise = run.ancestral_noise(x.shape)
    for i in range(len(s) - 1):
        denoised, uncond = run.model_uncond(x, s[i])
        sigma_down, sigma_up = _ancestral_step(s[i], s[i + 1], eta)
        run.report(i, denoised, x)
        if sigma_down == 0:
            d = (x - uncond) / _F(s[i])
            x = denoised + d * _F(sigma_down)
        else:
            t, t_next = _F(_neg_log(s[i])), _F(_neg_log(sigma_down))
            h = t_next - t
            mid = t + _F(0.5) * h
            sigma_t = _e(-t)
            x_2 = (_e(-mid) / sigma_t) * (x + (denoised - uncond)) - _em1(
                -h * _F(0.5)
            ) * denoised
            # NOTE: ComfyUI's post-CFG hook has overwritten its stored uncond with the second
            # call's by now, and the step uses that one.
            denoised_2, uncond = run.model_uncond(x_2, float(_e(-mid)))
            x = (_e(-t_next) / sigma_t) * (x + (denoised - uncond)) - _em1(
                -h
            ) * denoised_2
        if s[i + 1] > 0:
            x = x + noise(s[i], s[i + 1]) * _F(s_noise) * _F(sigma_up)
    return x


def _dpmpp_2m_cfg_pp(run: _Run, x: np.ndarray, s: list[float]) -> np.ndarray:
    """DPM-Solver++(2M), CFG++ form."""
    old_uncond: np.ndarray | None = None
    for i in range(len(s) - 1):
        denoised, uncond = run.model_uncond(x, s[i])
        run.report(i, denoised, x)
        t, t_next = _F(_neg_log(s[i])), _F(_neg_log(s[i + 1]))
        h = t_next - t
        exp_h = _e(-h)
        if old_uncond is None or s[i + 1] == 0:
            mix = -exp_h * uncond
        else:
            h_last = t - _F(_neg_log(s[i - 1]))
            r = h_last / h
            mix = -exp_h * uncond - _em1(-h) * (_ONE / (_F(2) * r)) * (denoised - old_uncond)
        x = denoised + mix + exp_h * x
        old_uncond = uncond
    return x


# ----------------------------------------------------------------------------------------------
# RES multistep (Zhang et al. 2023, arXiv 2308.02157) and gradient estimation (Permenter &
# Yuan 2024).


def _phi1(t: np.float32) -> np.float32:
    return _em1(t) / t


def _phi2(t: np.float32) -> np.float32:
    return (_phi1(t) - _ONE) / t


def _res_multistep(
    run: _Run, x: np.ndarray, s: list[float], s_noise: float = 1.0, eta: float = 1.0,
    cfg_pp: bool = False,
) -> np.ndarray:
    """Second-order exponential multistep (``res_multistep``) with optional ancestral noise."""
    noise = run.ancestral_noise(x.shape)
    old_sigma_down: float | None = None
    old_denoised: np.ndarray | None = None
    for i in range(len(s) - 1):
        if cfg_pp:
            denoised, uncond = run.model_uncond(x, s[i])
        else:
            denoised, uncond = run.model(x, s[i]), None
        sigma_down, sigma_up = _ancestral_step(s[i], s[i + 1], eta)
        run.report(i, denoised, x)
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                d = (x - uncond) / _F(s[i])
                x = denoised + d * _F(sigma_down)
            else:
                d = _to_d(x, s[i], denoised)
                x = x + d * _F(_F(sigma_down) - _F(s[i]))
        else:
            t = _F(_neg_log(s[i]))
            t_old = _F(_neg_log(old_sigma_down))
            t_next = _F(_neg_log(sigma_down))
            t_prev = _F(_neg_log(s[i - 1]))
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1_val, phi2_val = _phi1(-h), _phi2(-h)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                b1 = _F(np.nan_to_num(phi1_val - phi2_val / c2, nan=0.0))
                b2 = _F(np.nan_to_num(phi2_val / c2, nan=0.0))
            if cfg_pp:
                x = x + (denoised - uncond)
                x = _e(-h) * x + h * (b1 * uncond + b2 * old_denoised)
            else:
                x = _e(-h) * x + h * (b1 * denoised + b2 * old_denoised)
        if s[i + 1] > 0:
            x = x + noise(s[i], s[i + 1]) * _F(s_noise) * _F(sigma_up)
        old_denoised = uncond if cfg_pp else denoised
        old_sigma_down = sigma_down
    return x


def _gradient_estimation(
    run: _Run, x: np.ndarray, s: list[float], ge_gamma: float = 2.0, cfg_pp: bool = False
) -> np.ndarray:
    """Euler with the gradient-estimation correction ``(gamma - 1)(d - d_prev)``."""
    old_d: np.ndarray | None = None
    for i in range(len(s) - 1):
        if cfg_pp:
            denoised, uncond = run.model_uncond(x, s[i])
            d = (x - uncond) / _F(s[i])
        else:
            denoised = run.model(x, s[i])
            d = _to_d(x, s[i], denoised)
        run.report(i, denoised, x)
        dt = _F(s[i + 1]) - _F(s[i])
        if s[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * _F(s[i + 1]) if cfg_pp else x + d * dt
            if i >= 1:
                assert old_d is not None
                d_bar = _F(ge_gamma - 1) * (d - old_d)
                x = x + d_bar * dt
        old_d = d
    return x


# ----------------------------------------------------------------------------------------------
# ER-SDE-Solver-3 (Cui et al. 2023) and SEEDS (Gonzalez et al. 2023), in half-log-SNR time.


def _er_sde_default_scaler(x: Any) -> Any:
    """``x (e^(x^0.3) + 10)``, ER-SDE's default noise scale function."""
    return x * (_e(x ** _F(0.3)) + _F(10.0))


def _er_sde(
    run: _Run, x: np.ndarray, s: list[float], s_noise: float = 1.0, max_stage: int = 3,
    reverse_time_eta: float | None = None,
) -> np.ndarray:
    """Extended reverse-time SDE solver (VP ER-SDE-Solver-3, ``sample_er_sde``).

    ``reverse_time_eta`` selects the SamplerER_SDE node's "Reverse-time SDE"/"ODE" noise scaler
    ``x ** (eta + 1)``; None is the ER-SDE default.
    """
    if reverse_time_eta is None:
        scaler = _er_sde_default_scaler
    else:
        power = _F(reverse_time_eta + 1)

        def scaler(v: Any) -> Any:
            return v ** power

    noise = run.ancestral_noise(x.shape)
    ms = run.ms
    s = ms.offset_first_sigma(s)
    points = np.arange(0, 200, dtype=_F)
    er_lambdas = [_F(_exp32(-ms.half_log_snr(v))) for v in s]
    old_denoised: np.ndarray | None = None
    old_denoised_d: np.ndarray | None = None
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        stage_used = min(max_stage, i + 1)
        if s[i + 1] == 0:
            x = denoised
        else:
            er_s, er_t = er_lambdas[i], er_lambdas[i + 1]
            alpha_s = _F(s[i]) / er_s
            alpha_t = _F(s[i + 1]) / er_t
            r_alpha = alpha_t / alpha_s
            r = scaler(er_t) / scaler(er_s)
            x = r_alpha * r * x + alpha_t * (_ONE - r) * denoised
            if stage_used >= 2:
                assert old_denoised is not None
                dt = er_t - er_s
                step = -dt / _F(200.0)
                pos = er_t + points * step
                scaled = scaler(pos)
                integral = np.sum((_ONE / scaled) * _ONE, dtype=_F) * step
                denoised_d = (denoised - old_denoised) / (er_s - er_lambdas[i - 1])
                x = x + alpha_t * (dt + integral * scaler(er_t)) * denoised_d
                if stage_used >= 3:
                    assert old_denoised_d is not None
                    integral_u = np.sum((pos - er_s) / scaled, dtype=_F) * step
                    span = (er_s - er_lambdas[i - 2]) / _F(2)
                    denoised_u = (denoised_d - old_denoised_d) / span
                    x = x + alpha_t * ((dt * dt) / _F(2) + integral_u * scaler(er_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                with np.errstate(invalid="ignore"):
                    scale = np.sqrt(er_t * er_t - er_s * er_s * (r * r))
                scale = _F(0.0) if np.isnan(scale) else scale
                x = x + alpha_t * noise(s[i], s[i + 1]) * _F(s_noise) * scale
        old_denoised = denoised
    return x


def _ei_phi_1(h: np.float32) -> np.float32:
    """``h * phi_1(h) = expm1(h)``."""
    return _em1(h)


def _ei_phi_2(h: np.float32) -> np.float32:
    """``h * phi_2(h) = (expm1(h) - h) / h``."""
    return (_em1(h) - h) / h


def _seeds_2(
    run: _Run, x: np.ndarray, s: list[float], eta: float = 1.0, s_noise: float = 1.0,
    r: float = 0.5, solver_type: str = "phi_1",
) -> np.ndarray:
    """SEEDS-2 (stochastic exponential derivative-free, data prediction, stage 2).

    ``solver_type`` ``phi_2`` with ``r`` 1 is the exponential Heun method (``exp_heun_2_x0``).
    """
    if solver_type not in ("phi_1", "phi_2"):
        raise SamplerError(f"solver_type must be 'phi_1' or 'phi_2', got {solver_type!r}")
    noise = run.ancestral_noise(x.shape)
    inject = eta > 0 and s_noise > 0
    ms = run.ms
    s = ms.offset_first_sigma(s)
    fac = 1 / (2 * r)
    eta32, r32 = _F(eta), _F(r)
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        if s[i + 1] == 0:
            x = denoised
            continue
        s0, s1 = _F(s[i]), _F(s[i + 1])
        lambda_s, lambda_t = _F(ms.half_log_snr(s[i])), _F(ms.half_log_snr(s[i + 1]))
        h = lambda_t - lambda_s
        h_eta = h * _F(eta + 1)
        lambda_s_1 = _lerp(lambda_s, lambda_t, r)
        sigma_s_1 = _F(ms.sigma_from_half_log_snr(float(lambda_s_1)))
        alpha_s_1 = sigma_s_1 * _e(lambda_s_1)
        alpha_t = s1 * _e(lambda_t)
        # Step 1
        x_2 = sigma_s_1 / s0 * _e(_F(-r) * h * eta32) * x - alpha_s_1 * _ei_phi_1(
            _F(-r) * h_eta
        ) * denoised
        if inject:
            sde_noise = np.sqrt(-_em1(_F(-2 * r) * h * eta32)) * noise(s[i], float(sigma_s_1))
            x_2 = x_2 + sde_noise * sigma_s_1 * _F(s_noise)
        denoised_2 = run.model(x_2, float(sigma_s_1))
        # Step 2
        if solver_type == "phi_1":
            denoised_d = _lerp(denoised, denoised_2, fac)
            x = s1 / s0 * _e(-h * eta32) * x - alpha_t * _ei_phi_1(-h_eta) * denoised_d
        else:
            b2 = _ei_phi_2(-h_eta) / r32
            b1 = _ei_phi_1(-h_eta) - b2
            x = s1 / s0 * _e(-h * eta32) * x - alpha_t * (b1 * denoised + b2 * denoised_2)
        if inject:
            segment = _F(r - 1) * h * eta32
            sde_noise = sde_noise * _e(segment)
            sde_noise = sde_noise + np.sqrt(-_em1(segment * _F(2))) * noise(
                float(sigma_s_1), s[i + 1]
            )
            x = x + sde_noise * s1 * _F(s_noise)
    return x


def _seeds_3(
    run: _Run, x: np.ndarray, s: list[float], eta: float = 1.0, s_noise: float = 1.0,
    r_1: float = 1.0 / 3, r_2: float = 2.0 / 3,
) -> np.ndarray:
    """SEEDS-3 (stochastic exponential derivative-free, data prediction, stage 3)."""
    noise = run.ancestral_noise(x.shape)
    inject = eta > 0 and s_noise > 0
    ms = run.ms
    s = ms.offset_first_sigma(s)
    eta32 = _F(eta)
    for i in range(len(s) - 1):
        denoised = run.model(x, s[i])
        run.report(i, denoised, x)
        if s[i + 1] == 0:
            x = denoised
            continue
        s0, s1 = _F(s[i]), _F(s[i + 1])
        lambda_s, lambda_t = _F(ms.half_log_snr(s[i])), _F(ms.half_log_snr(s[i + 1]))
        h = lambda_t - lambda_s
        h_eta = h * _F(eta + 1)
        lambda_s_1 = _lerp(lambda_s, lambda_t, r_1)
        lambda_s_2 = _lerp(lambda_s, lambda_t, r_2)
        sigma_s_1 = _F(ms.sigma_from_half_log_snr(float(lambda_s_1)))
        sigma_s_2 = _F(ms.sigma_from_half_log_snr(float(lambda_s_2)))
        alpha_s_1 = sigma_s_1 * _e(lambda_s_1)
        alpha_s_2 = sigma_s_2 * _e(lambda_s_2)
        alpha_t = s1 * _e(lambda_t)
        # Step 1
        x_2 = sigma_s_1 / s0 * _e(_F(-r_1) * h * eta32) * x - alpha_s_1 * _ei_phi_1(
            _F(-r_1) * h_eta
        ) * denoised
        if inject:
            sde_noise = np.sqrt(-_em1(_F(-2 * r_1) * h * eta32)) * noise(
                s[i], float(sigma_s_1)
            )
            x_2 = x_2 + sde_noise * sigma_s_1 * _F(s_noise)
        denoised_2 = run.model(x_2, float(sigma_s_1))
        # Step 2
        a3_2 = _F(r_2 / r_1) * _ei_phi_2(_F(-r_2) * h_eta)
        a3_1 = _ei_phi_1(_F(-r_2) * h_eta) - a3_2
        x_3 = sigma_s_2 / s0 * _e(_F(-r_2) * h * eta32) * x - alpha_s_2 * (
            a3_1 * denoised + a3_2 * denoised_2
        )
        if inject:
            segment = _F(r_1 - r_2) * h * eta32
            sde_noise = sde_noise * _e(segment)
            sde_noise = sde_noise + np.sqrt(-_em1(segment * _F(2))) * noise(
                float(sigma_s_1), float(sigma_s_2)
            )
            x_3 = x_3 + sde_noise * sigma_s_2 * _F(s_noise)
        denoised_3 = run.model(x_3, float(sigma_s_2))
        # Step 3
        b3 = _ei_phi_2(-h_eta) / _F(r_2)
        b1 = _ei_phi_1(-h_eta) - b3
        x = s1 / s0 * _e(-h * eta32) * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject:
            segment = _F(r_2 - 1) * h * eta32
            sde_noise = sde_noise * _e(segment)
            sde_noise = sde_noise + np.sqrt(-_em1(segment * _F(2))) * noise(
                float(sigma_s_2), s[i + 1]
            )
            x = x + sde_noise * s1 * _F(s_noise)
    return x


def _exp_heun_2_x0(run: _Run, x: np.ndarray, s: list[float],
                   solver_type: str = "phi_2") -> np.ndarray:
    """Deterministic exponential Heun (x0 prediction, log-SNR time): SEEDS-2, r 1, eta 0."""
    return _seeds_2(run, x, s, eta=0.0, s_noise=0.0, r=1.0, solver_type=solver_type)


def _exp_heun_2_x0_sde(
    run: _Run, x: np.ndarray, s: list[float], eta: float = 1.0, s_noise: float = 1.0,
    solver_type: str = "phi_2",
) -> np.ndarray:
    """Stochastic exponential Heun: SEEDS-2 with r 1."""
    return _seeds_2(run, x, s, eta=eta, s_noise=s_noise, r=1.0, solver_type=solver_type)


# ----------------------------------------------------------------------------------------------
# SA-Solver (Xue et al. 2023): stochastic Adams predictor-corrector in half-log-SNR time.


def _sa_exponential_coeffs(s: np.float32, t: np.float32, order: int, tau: float) -> np.ndarray:
    """``sa_solver.compute_exponential_coeffs`` (float32)."""
    tau_mul = 1 + tau**2
    h = t - s
    p = np.arange(order, dtype=_F)
    factored = t**p - s**p * _e(_F(-tau_mul) * h)
    depth = p[:, None] - p[None, :]
    log_fact = np.array([math.lgamma(k + 1) for k in range(order)], dtype=_F)
    mat = log_fact[:, None] - log_fact[None, :]
    if tau > 0:
        mat = mat - depth * _F(math.log(tau_mul))
    signs = np.where(depth % 2 == 0, _F(1.0), _F(-1.0))
    mat = np.tril(_e(mat) * signs).astype(_F)
    return (mat @ factored).astype(_F)


def _sa_b_coeffs(
    sigma_next: float, lambdas: np.ndarray, lambda_s: np.float32, lambda_t: np.float32,
    tau: float, simple_order_2: bool, corrector: bool,
) -> np.ndarray:
    """``sa_solver.compute_stochastic_adams_b_coeffs`` (float32)."""
    n = lambdas.shape[0]
    alpha_t = _F(sigma_next) * _e(lambda_t)
    if simple_order_2 and n == 2:
        tau_mul = 1 + tau**2
        h = lambda_t - lambda_s
        if corrector:
            b_1 = alpha_t * (_F(0.5 * tau_mul) * h)
            b_2 = alpha_t * -_em1(-h * _F(tau_mul)) - b_1
        else:
            b_2 = alpha_t * (_F(0.5 * tau_mul) * (h * h)) / (lambdas[-2] - lambda_s)
            b_1 = alpha_t * -_em1(-h * _F(tau_mul)) - b_2
        return np.array([b_2, b_1], dtype=_F)
    integrals = _sa_exponential_coeffs(lambda_s, lambda_t, n, tau)
    vander = np.vander(lambdas, n, increasing=True).T.astype(_F)
    # NOTE: float32 LAPACK solve (gesv) like torch.linalg.solve on float32 tensors.
    solved = np.linalg.solve(vander, integrals.astype(_F))
    return (alpha_t * solved.astype(_F)).astype(_F)


def _sa_solver(
    run: _Run,
    x: np.ndarray,
    s: list[float],
    s_noise: float = 1.0,
    predictor_order: int = 3,
    corrector_order: int = 4,
    use_pece: bool = False,
    simple_order_2: bool = False,
    eta: float = 1.0,
    sde_start_sigma: float | None = None,
    sde_end_sigma: float | None = None,
) -> np.ndarray:
    """SA-Solver predictor-corrector; noise is added where ``sde_end <= sigma <= sde_start``.

    The SDE interval defaults to ``percent_to_sigma(0.2)``..``percent_to_sigma(0.8)`` with eta 1,
    as ComfyUI's default ``tau_func`` (SamplerSASolver passes its own).
    """
    if len(s) <= 1:
        return x
    noise = run.ancestral_noise(x.shape)
    ms = run.ms
    s = ms.offset_first_sigma(s)
    lambdas = np.array([ms.half_log_snr(v) for v in s], dtype=_F)
    start = ms.percent_to_sigma(0.2) if sde_start_sigma is None else sde_start_sigma
    end = ms.percent_to_sigma(0.8) if sde_end_sigma is None else sde_end_sigma

    def tau_func(sigma: float) -> float:
        if eta <= 0:
            return 0.0
        return eta if start >= sigma >= end else 0.0

    max_used = max(predictor_order, corrector_order)
    x_pred = x
    h: Any = 0.0
    tau_t = 0.0
    noise_term: Any = 0.0
    preds: list[np.ndarray] = []
    lower_order_to_end = s[-1] == 0
    for i in range(len(s) - 1):
        denoised = run.model(x_pred, s[i])
        run.report(i, denoised, x_pred)
        preds.append(denoised)
        preds = preds[-max_used:]
        p_used = min(predictor_order, len(preds))
        if i == 0 or (s[i + 1] == 0 and not use_pece):
            c_used = 0
        else:
            c_used = min(corrector_order, len(preds))
        if lower_order_to_end:
            p_used = min(p_used, len(s) - 2 - i)
            c_used = min(c_used, len(s) - 1 - i)
        if c_used == 0:
            x = x_pred
        else:
            b = _sa_b_coeffs(s[i], lambdas[i - c_used + 1 : i + 1], lambdas[i - 1], lambdas[i],
                             tau_t, simple_order_2, corrector=True)
            corr = _weighted_sum(preds[-c_used:], b)
            x = _F(s[i]) / _F(s[i - 1]) * _e(_F(-(tau_t**2)) * _F(h)) * x + corr
            if tau_t > 0 and s_noise > 0:
                x = x + noise_term
            if use_pece:
                denoised = run.model(x, s[i])
                preds[-1] = denoised
        if s[i + 1] == 0:
            x_pred = denoised
        else:
            tau_t = tau_func(s[i + 1])
            b = _sa_b_coeffs(s[i + 1], lambdas[i - p_used + 1 : i + 1], lambdas[i],
                             lambdas[i + 1], tau_t, simple_order_2, corrector=False)
            pred = _weighted_sum(preds[-p_used:], b)
            h = lambdas[i + 1] - lambdas[i]
            x_pred = _F(s[i + 1]) / _F(s[i]) * _e(_F(-(tau_t**2)) * h) * x + pred
            if tau_t > 0 and s_noise > 0:
                scale = np.sqrt(-_em1(_F(-2 * tau_t**2) * h))
                noise_term = noise(s[i], s[i + 1]) * _F(s[i + 1]) * scale * _F(s_noise)
                x_pred = x_pred + noise_term
    return x_pred


def _weighted_sum(arrays: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """``tensordot(stack(arrays, 1), weights, ([1], [0]))``, summed in order in float32."""
    out = arrays[0] * weights[0]
    for a, w in zip(arrays[1:], weights[1:], strict=True):
        out = out + a * w
    return out



# ----------------------------------------------------------------------------------------------
# UniPC (Zhao et al. 2023; comfy/extra_samplers/uni_pc.py sample_unipc and
# multistep_uni_pc_bh_update).
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




# ----------------------------------------------------------------------------------------------
# The sampler table: name -> (function, fixed options). Options a SamplerSpec may set are the
# function's keyword arguments minus the fixed ones.


def _fixed(fn: Callable[..., np.ndarray], **fixed: Any) -> tuple[Callable[..., np.ndarray], dict]:
    return fn, fixed


_SAMPLERS: dict[str, tuple[Callable[..., np.ndarray], dict[str, Any]]] = {
    "euler": _fixed(_euler),
    "euler_cfg_pp": _fixed(_euler_cfg_pp),
    "euler_ancestral": _fixed(_euler_ancestral),
    "euler_ancestral_cfg_pp": _fixed(_euler_ancestral_cfg_pp),
    "heun": _fixed(_heun),
    "heunpp2": _fixed(_heunpp2),
    "exp_heun_2_x0": _fixed(_exp_heun_2_x0),
    "exp_heun_2_x0_sde": _fixed(_exp_heun_2_x0_sde),
    "dpm_2": _fixed(_dpm_2),
    "dpm_2_ancestral": _fixed(_dpm_2_ancestral),
    "lms": _fixed(_lms),
    "dpm_fast": _fixed(_dpm_fast),
    "dpm_adaptive": _fixed(_dpm_adaptive),
    "dpmpp_2s_ancestral": _fixed(_dpmpp_2s_ancestral),
    "dpmpp_2s_ancestral_cfg_pp": _fixed(_dpmpp_2s_ancestral_cfg_pp),
    "dpmpp_sde": _fixed(_dpmpp_sde, gpu_tree=False),
    # NOTE: the _gpu variants only move the Brownian tree to the sampling device: the same
    # sampler on a CPU device, a tree drawn from the CUDA generator in noise mode cuda.
    "dpmpp_sde_gpu": _fixed(_dpmpp_sde, gpu_tree=True),
    "dpmpp_2m": _fixed(_dpmpp_2m),
    "dpmpp_2m_cfg_pp": _fixed(_dpmpp_2m_cfg_pp),
    "dpmpp_2m_sde": _fixed(_dpmpp_2m_sde, gpu_tree=False),
    "dpmpp_2m_sde_gpu": _fixed(_dpmpp_2m_sde, gpu_tree=True),
    "dpmpp_2m_sde_heun": _fixed(_dpmpp_2m_sde, solver_type="heun", gpu_tree=False),
    "dpmpp_2m_sde_heun_gpu": _fixed(_dpmpp_2m_sde, solver_type="heun", gpu_tree=True),
    "dpmpp_3m_sde": _fixed(_dpmpp_3m_sde, gpu_tree=False),
    "dpmpp_3m_sde_gpu": _fixed(_dpmpp_3m_sde, gpu_tree=True),
    "ddpm": _fixed(_ddpm),
    "lcm": _fixed(_lcm),
    "ipndm": _fixed(_ipndm),
    "ipndm_v": _fixed(_ipndm_v),
    "deis": _fixed(_deis),
    "res_multistep": _fixed(_res_multistep, eta=0.0, cfg_pp=False),
    "res_multistep_cfg_pp": _fixed(_res_multistep, eta=0.0, cfg_pp=True),
    "res_multistep_ancestral": _fixed(_res_multistep, cfg_pp=False),
    "res_multistep_ancestral_cfg_pp": _fixed(_res_multistep, cfg_pp=True),
    "gradient_estimation": _fixed(_gradient_estimation, cfg_pp=False),
    "gradient_estimation_cfg_pp": _fixed(_gradient_estimation, cfg_pp=True),
    "er_sde": _fixed(_er_sde),
    "seeds_2": _fixed(_seeds_2),
    "seeds_3": _fixed(_seeds_3),
    "sa_solver": _fixed(_sa_solver),
    "sa_solver_pece": _fixed(_sa_solver, use_pece=True),
    # NOTE: sampler_object("ddim") is ksampler("euler") with random inpaint noise (see sample()).
    "ddim": _fixed(_euler),
    "uni_pc": _fixed(_uni_pc, variant="bh1"),
    "uni_pc_bh2": _fixed(_uni_pc, variant="bh2"),
}


#: The sampler functions that step through a UNet's step graph where the stage has one; the
#: others call the UNet once per model evaluation.
_STEPPED: frozenset[Callable[..., np.ndarray]] = frozenset(
    {_euler, _euler_ancestral, _dpmpp_2m, _dpmpp_2m_sde})


def sampler_uses_step_graph(name: str) -> bool | None:
    """Whether KSampler's sampler ``name`` steps through a UNet's step graph (None for a
    name this runtime does not know). The compiler writes no step graph for a workflow
    whose samplers never do."""
    entry = _SAMPLERS.get(name)
    return None if entry is None else entry[0] in _STEPPED


#: Samplers this runtime implements, in ComfyUI's combo order (all of ComfyUI's names).
SUPPORTED_SAMPLERS: tuple[str, ...] = tuple(n for n in SAMPLER_NAMES if n in _SAMPLERS)

#: Samplers whose default options add noise from ``default_noise_sampler`` (the latent's device
#: generator), so that their result depends on the noise mode. ``dpm_fast``/``dpm_adaptive`` do
#: so only with ``eta > 0``; the ``*_sde_gpu`` samplers only in ``cuda`` mode (their tree).
DEVICE_NOISE_SAMPLERS: frozenset[str] = frozenset({
    "euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "ddpm", "lcm", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2", "seeds_3", "exp_heun_2_x0_sde",
    "sa_solver", "sa_solver_pece",
})
_GPU_TREE_SAMPLERS = frozenset(
    {"dpmpp_sde_gpu", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde_gpu"}
)


def noise_mode_matters(sampler: str | SamplerSpec) -> bool:
    """Whether a sampler's result can change with the noise mode (for warnings and metadata).

    Args:
        sampler: A sampler name or :class:`SamplerSpec`.

    Returns:
        True for :data:`DEVICE_NOISE_SAMPLERS` (unless ``eta`` or ``s_noise`` is set to 0), the
        ``*_sde_gpu`` samplers, and ``dpm_fast``/``dpm_adaptive`` with ``eta > 0``.
    """
    spec = _as_spec(sampler)
    options = dict(spec.options)
    if spec.name in _GPU_TREE_SAMPLERS:
        return True
    if spec.name in ("dpm_fast", "dpm_adaptive"):
        return float(options.get("eta", 0.0)) > 0 and float(options.get("s_noise", 1.0)) != 0
    if spec.name not in DEVICE_NOISE_SAMPLERS:
        return False
    return float(options.get("eta", 1.0)) != 0 and float(options.get("s_noise", 1.0)) != 0


def _check_sampler(sampler_name: str) -> None:
    if sampler_name in _SAMPLERS:
        return
    raise SamplerError(
        f"unknown sampler {sampler_name!r}; ComfyUI's samplers are {', '.join(SAMPLER_NAMES)}"
    )


def _option_names(name: str) -> tuple[str, ...]:
    fn, fixed = _SAMPLERS[name]
    code = fn.__code__
    args = code.co_varnames[3 : code.co_argcount + code.co_kwonlyargcount]
    return tuple(a for a in args if a not in fixed)


# ----------------------------------------------------------------------------------------------
# SAMPLER objects: a name plus options, as KSamplerSelect and the sampler option nodes build them.


@dataclass(frozen=True, slots=True)
class SamplerSpec:
    """A SAMPLER value: ComfyUI's ``KSAMPLER(sampler_function, extra_options)`` as data.

    Attributes:
        name: One of :data:`SAMPLER_NAMES`.
        options: Keyword options of that sampler (``eta``, ``s_noise``, ``order``, ...); the
            names each sampler accepts are ComfyUI's ``sample_*`` keyword arguments (see
            :meth:`option_names`). JSON-serialisable values only.
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_sampler(self.name)
        allowed = _option_names(self.name)
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise SamplerError(
                f"sampler {self.name!r} has no option(s) {', '.join(unknown)}; its options are "
                f"{', '.join(allowed) or '(none)'}"
            )

    def option_names(self) -> tuple[str, ...]:
        """The option names this sampler accepts."""
        return _option_names(self.name)


def _check_noise_mode(noise_mode: str) -> None:
    try:
        check_noise_mode(noise_mode)
    except ValueError as exc:
        raise SamplerError(str(exc)) from None


def _as_spec(sampler: str | SamplerSpec) -> SamplerSpec:
    if isinstance(sampler, SamplerSpec):
        return sampler
    if not isinstance(sampler, str):
        raise SamplerError(f"expected a sampler name or SamplerSpec, got {type(sampler).__name__}")
    return SamplerSpec(sampler)


def ksampler_select(sampler_name: str = "euler") -> SamplerSpec:
    """KSamplerSelect: a sampler by name with ComfyUI's default options."""
    return SamplerSpec(sampler_name)


def _noise_device_name(base: str, noise_device: str) -> str:
    if noise_device not in ("gpu", "cpu"):
        raise SamplerError(f"noise_device must be 'gpu' or 'cpu', got {noise_device!r}")
    # NOTE: on a CPU sampling device the _gpu samplers are the same functions (see _SAMPLERS).
    return base if noise_device == "cpu" else f"{base}_gpu"


def sampler_euler_ancestral(eta: float = 1.0, s_noise: float = 1.0) -> SamplerSpec:
    """SamplerEulerAncestral: ancestral Euler with ``eta`` (noise amount) and ``s_noise``."""
    return SamplerSpec("euler_ancestral", {"eta": eta, "s_noise": s_noise})


def sampler_euler_ancestral_cfg_pp(eta: float = 1.0, s_noise: float = 1.0) -> SamplerSpec:
    """SamplerEulerAncestralCFGPP (displayed "SamplerEulerAncestralCFG++")."""
    return SamplerSpec("euler_ancestral_cfg_pp", {"eta": eta, "s_noise": s_noise})


def sampler_dpmpp_2s_ancestral(eta: float = 1.0, s_noise: float = 1.0) -> SamplerSpec:
    """SamplerDPMPP_2S_Ancestral."""
    return SamplerSpec("dpmpp_2s_ancestral", {"eta": eta, "s_noise": s_noise})


def sampler_dpmpp_2m_sde(
    solver_type: str = "midpoint", eta: float = 1.0, s_noise: float = 1.0,
    noise_device: str = "gpu",
) -> SamplerSpec:
    """SamplerDPMPP_2M_SDE: ``solver_type`` ``midpoint``/``heun``; ``noise_device`` picks the
    ``_gpu`` name (identical on a CPU sampling device)."""
    if solver_type not in ("midpoint", "heun"):
        raise SamplerError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    return SamplerSpec(
        _noise_device_name("dpmpp_2m_sde", noise_device),
        {"eta": eta, "s_noise": s_noise, "solver_type": solver_type},
    )


def sampler_dpmpp_sde(
    eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5, noise_device: str = "gpu"
) -> SamplerSpec:
    """SamplerDPMPP_SDE: ``r`` is the relative position of the intermediate step."""
    return SamplerSpec(
        _noise_device_name("dpmpp_sde", noise_device), {"eta": eta, "s_noise": s_noise, "r": r}
    )


def sampler_dpmpp_3m_sde(
    eta: float = 1.0, s_noise: float = 1.0, noise_device: str = "gpu"
) -> SamplerSpec:
    """SamplerDPMPP_3M_SDE."""
    return SamplerSpec(
        _noise_device_name("dpmpp_3m_sde", noise_device), {"eta": eta, "s_noise": s_noise}
    )


def sampler_lms(order: int = 4) -> SamplerSpec:
    """SamplerLMS: linear multistep of ``order`` (1..100)."""
    return SamplerSpec("lms", {"order": int(order)})


def sampler_dpm_adaptative(
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> SamplerSpec:
    """SamplerDPMAdaptative (ComfyUI's spelling): dpm_adaptive with every option."""
    return SamplerSpec("dpm_adaptive", {
        "order": int(order), "rtol": rtol, "atol": atol, "h_init": h_init, "pcoeff": pcoeff,
        "icoeff": icoeff, "dcoeff": dcoeff, "accept_safety": accept_safety, "eta": eta,
        "s_noise": s_noise,
    })


def sampler_er_sde(
    solver_type: str = "ER-SDE", max_stage: int = 3, eta: float = 1.0, s_noise: float = 1.0
) -> SamplerSpec:
    """SamplerER_SDE: ``ER-SDE`` (its own noise scaler), ``Reverse-time SDE`` (scaler
    ``x ** (eta + 1)``) or ``ODE`` (no noise); ``eta`` applies to the reverse-time SDE only."""
    if solver_type not in ("ER-SDE", "Reverse-time SDE", "ODE"):
        raise SamplerError(
            f"solver_type must be 'ER-SDE', 'Reverse-time SDE' or 'ODE', got {solver_type!r}"
        )
    if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
        eta = 0.0
        s_noise = 0.0
    reverse_eta = None if solver_type == "ER-SDE" else float(eta)
    return SamplerSpec("er_sde", {
        "s_noise": s_noise, "max_stage": int(max_stage), "reverse_time_eta": reverse_eta,
    })


def sampler_sa_solver(
    model_sampling: ModelSampling | DiscreteSchedule | None = None,
    eta: float = 1.0,
    sde_start_percent: float = 0.2,
    sde_end_percent: float = 0.8,
    s_noise: float = 1.0,
    predictor_order: int = 3,
    corrector_order: int = 4,
    use_pece: bool = False,
    simple_order_2: bool = False,
) -> SamplerSpec:
    """SamplerSASolver: the SDE interval is given in percent of the model's sampling."""
    ms = as_model_sampling(model_sampling)
    return SamplerSpec("sa_solver", {
        "eta": eta,
        "sde_start_sigma": ms.percent_to_sigma(sde_start_percent),
        "sde_end_sigma": ms.percent_to_sigma(sde_end_percent),
        "s_noise": s_noise,
        "predictor_order": int(predictor_order),
        "corrector_order": int(corrector_order),
        "use_pece": bool(use_pece),
        "simple_order_2": bool(simple_order_2),
    })


def sampler_seeds_2(
    solver_type: str = "phi_1", eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5
) -> SamplerSpec:
    """SamplerSEEDS2: seeds_2, or exp_heun_2_x0(_sde) with ``phi_2``, ``r`` 1 (and ``eta`` 0)."""
    return SamplerSpec(
        "seeds_2", {"solver_type": solver_type, "eta": eta, "s_noise": s_noise, "r": r}
    )


# ----------------------------------------------------------------------------------------------
# Noise scaling, inpainting masks, and the entry points.


def is_max_denoise(sigmas: np.ndarray | Sequence[float], sigma_max: float) -> bool:
    """``Sampler.max_denoise``: whether sampling starts at (or above) the model's sigma_max.

    Args:
        sigmas: The schedule.
        sigma_max: The model's largest sigma (``model_sampling.sigma_max``).

    Returns:
        True when ``sigmas[0]`` is within rel. 1e-5 of ``sigma_max`` or above it.
    """
    sigma = float(np.float32(sigmas[0]))
    return math.isclose(sigma_max, sigma, rel_tol=1e-05) or sigma > sigma_max


def noise_scaling(
    sigma: float, noise: np.ndarray, latent: np.ndarray, max_denoise: bool = False
) -> np.ndarray:
    """Initial noisy latent of an EPS/V model (``EPS.noise_scaling``).

    See :meth:`comfyc.runtime.model_sampling.ModelSampling.noise_scaling` for other kinds.

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
    sampler_name: str | SamplerSpec,
    seed: int,
    noise_mask: np.ndarray | None = None,
    callback: StepCallback | None = None,
    schedule: DiscreteSchedule | ModelSampling | None = None,
    *,
    model_sampling: ModelSampling | None = None,
    noise_mode: str = DEFAULT_NOISE_MODE,
) -> np.ndarray:
    """Run one ComfyUI sampler (``KSAMPLER.sample``) and return the model-space result.

    Args:
        denoiser: ``denoiser(x, sigma) -> x0`` with CFG applied (see the module docstring for
            the CFG++ extension).
        latent: Model-space latent ``[B, C, h, w]`` (already through the latent format when it
            is not empty; zeros for txt2img).
        noise: Initial noise of the same shape (zeros for ``add_noise = disable``).
        sigmas: The schedule (float32, descending); empty returns ``latent`` unchanged.
        sampler_name: One of :data:`SUPPORTED_SAMPLERS`, or a :class:`SamplerSpec` with options.
        seed: The sampler seed (seeds the ancestral/SDE noise).
        noise_mask: Optional inpainting mask (1 = regenerate); any spatial size, resized.
        callback: Optional ``callback(step, x0, x, total_steps)`` per step.
        schedule: Older spelling of ``model_sampling`` (a table is read as an EPS model).
        model_sampling: The model's sampling; defaults to SD1 eps.
        noise_mode: Whose sampler noise to reproduce: ``cpu`` (ComfyUI on a CPU), ``cpu-legacy``
            (ComfyUI on a CPU before its #11528) or ``cuda`` (ComfyUI on an NVIDIA GPU); see
            :func:`comfyc.runtime.noise.check_noise_mode`.

    Returns:
        float32 model-space latent (through ``inverse_noise_scaling``).

    Raises:
        SamplerError: for an unknown sampler, option or noise mode, or mismatching shapes.
    """
    spec = _as_spec(sampler_name)
    _check_noise_mode(noise_mode)
    ms = as_model_sampling(model_sampling if model_sampling is not None else schedule)
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
    mask = None if noise_mask is None else prepare_mask(noise_mask, latent.shape)

    inpaint_noise = noise
    if mask is not None and spec.name == "ddim":
        # NOTE: KSAMPLER inpaint_options {"random": True}: fresh noise from manual_seed(seed + 1).
        inpaint_noise = TorchGenerator((seed + 1) & 0xFFFFFFFFFFFFFFFF).randn(noise.shape)
    latent_mask = None if mask is None else np.float32(1.0) - mask
    with_uncond = getattr(denoiser, "denoise_with_uncond", None)

    def masked_input(x: np.ndarray, sigma: float) -> np.ndarray:
        # NOTE: KSamplerX0Inpaint: keep the unmasked area on the noised original latent.
        scaled = ms.noise_scaling(sigma, inpaint_noise, latent)
        return x * mask + scaled * latent_mask

    def model(x: np.ndarray, sigma: float) -> np.ndarray:
        if mask is None:
            return np.asarray(denoiser(x, sigma), dtype=np.float32)
        out = np.asarray(denoiser(masked_input(x, sigma), sigma), dtype=np.float32)
        return out * mask + latent * latent_mask

    def model_uncond(x: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        x_in = x if mask is None else masked_input(x, sigma)
        if with_uncond is not None:
            out, uncond = with_uncond(x_in, sigma)
            out = np.asarray(out, dtype=np.float32)
            uncond = np.asarray(uncond, dtype=np.float32)
        else:
            out = np.asarray(denoiser(x_in, sigma), dtype=np.float32)
            uncond = out
        if mask is not None:
            out = out * mask + latent * latent_mask
        return out, uncond

    x = ms.noise_scaling(sig[0], noise, latent, ms.is_max_denoise(sig))
    # NOTE: whole steps in the UNet stage's graph where the denoiser offers them; the noise
    # mask's blending happens around each model call, so masked runs step in numpy.
    stepper = getattr(denoiser, "stepper", None) if mask is None else None
    run = _Run(model, model_uncond, callback, int(seed), len(sig) - 1, ms, noise_mode, stepper)
    fn, fixed = _SAMPLERS[spec.name]
    # NOTE: torch computes inf/nan silently where ComfyUI's formulas divide by zero on paths
    # whose result is unused or finite in the end (deis's coefficients for the last step, a
    # CONST model's alpha = 0 at sigma 1); numpy would warn on each.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = fn(run, x, sig, **fixed, **dict(spec.options))
    last = sig[-1]
    if fn is _uni_pc and last == 0:
        # NOTE: ComfyUI's sample_unipc sets the caller's last sigma to 0.001 in place
        # (timesteps = sigmas[:]), and KSAMPLER then undoes the noise scaling at 0.001.
        last = 0.001
    return np.asarray(ms.inverse_noise_scaling(last, out), dtype=np.float32)


def _process_in(latent: np.ndarray, scale: float, shift: float) -> np.ndarray:
    """``latent_format.process_in``, only for a non-empty latent (``CFGGuider.inner_sample``)."""
    if np.count_nonzero(latent) == 0:
        return latent
    if shift == 0.0:
        return latent * np.float32(scale)
    return (latent - np.float32(shift)) * np.float32(scale)


def _process_out(latent: np.ndarray, scale: float, shift: float) -> np.ndarray:
    """``latent_format.process_out``."""
    out = latent / np.float32(scale)
    if shift != 0.0:
        out = out + np.float32(shift)
    return out.astype(np.float32, copy=False)


def ksampler(
    denoiser: Denoiser,
    latent: np.ndarray,
    seed: int,
    sigmas: np.ndarray | Sequence[float] | None,
    sampler_name: str | SamplerSpec,
    *,
    add_noise: bool = True,
    batch_index: Sequence[int] | None = None,
    noise_mask: np.ndarray | None = None,
    latent_scale: float = 0.18215,
    callback: StepCallback | None = None,
    schedule: DiscreteSchedule | ModelSampling | None = None,
    latent_shift: float = 0.0,
    model_sampling: ModelSampling | None = None,
    noise_mode: str = DEFAULT_NOISE_MODE,
) -> np.ndarray:
    """The KSampler / KSamplerAdvanced op on a raw LATENT (``nodes.common_ksampler``).

    Draws the seed's noise (or zeros when ``add_noise`` is off), applies the latent format to a
    non-empty latent, samples, and undoes the latent format. ``sigmas`` None (KSamplerAdvanced
    starting past the end) or empty (denoise 0) returns the latent unchanged, as ComfyUI does.

    Args:
        denoiser: ``denoiser(x, sigma) -> x0`` with CFG applied.
        latent: Raw LATENT samples ``[B, C, h, w]`` (VAE space).
        seed: KSampler seed / KSamplerAdvanced noise_seed.
        sigmas: From :func:`~comfyc.runtime.schedules.ksampler_sigmas` (and
            :func:`~comfyc.runtime.schedules.advanced_sigmas`).
        sampler_name: One of :data:`SUPPORTED_SAMPLERS` (or a :class:`SamplerSpec`).
        add_noise: KSamplerAdvanced ``add_noise`` (False = zero initial noise).
        batch_index: The LATENT's ``batch_index``, if any.
        noise_mask: The LATENT's ``noise_mask``, if any.
        latent_scale: The latent format's scale factor (0.18215 SD1/SD2, 0.13025 SDXL, 1.5305
            SD3, 0.3611 Flux).
        callback: Optional per-step callback.
        schedule: Older spelling of ``model_sampling``.
        latent_shift: The latent format's shift factor (0 SD1/SDXL, 0.0609 SD3, 0.1159 Flux).
        model_sampling: The model's sampling; defaults to SD1 eps.
        noise_mode: ``cpu``, ``cpu-legacy`` or ``cuda``: the sampling device whose per-step
            noise to reproduce (see :func:`sample`); the initial noise is the same in all.

    Returns:
        Raw LATENT samples (float32), same shape.
    """
    _check_noise_mode(noise_mode)
    latent = np.asarray(latent, dtype=np.float32)
    if sigmas is None or len(sigmas) == 0:
        return latent.copy()
    spec = _as_spec(sampler_name)
    if add_noise:
        noise = prepare_noise(latent.shape, seed, batch_index)
    else:
        noise = np.zeros(latent.shape, dtype=np.float32)
    model_latent = _process_in(latent, latent_scale, latent_shift)
    out = sample(
        denoiser, model_latent, noise, sigmas, spec, seed, noise_mask, callback, schedule,
        model_sampling=model_sampling, noise_mode=noise_mode,
    )
    return _process_out(out, latent_scale, latent_shift)


@dataclass(frozen=True, slots=True)
class RandomNoise:
    """The RandomNoise node's NOISE: ComfyUI's ``prepare_noise`` for ``noise_seed``."""

    noise_seed: int = 0

    @property
    def seed(self) -> int:
        """The seed the sampler's own noise uses (``noise.seed``)."""
        return int(self.noise_seed)

    def generate(self, shape: Sequence[int], batch_index: Sequence[int] | None = None
                 ) -> np.ndarray:
        """The initial noise for a latent of ``shape``."""
        return prepare_noise(shape, self.noise_seed, batch_index)


@dataclass(frozen=True, slots=True)
class DisableNoise:
    """The DisableNoise node's NOISE: zeros. Its ``seed`` (0) still seeds the sampler's noise.

    SamplerCustom with ``add_noise`` off behaves as ``DisableNoise(seed=noise_seed)``.
    """

    seed: int = 0

    def generate(self, shape: Sequence[int], batch_index: Sequence[int] | None = None
                 ) -> np.ndarray:
        """Zeros of ``shape``."""
        return np.zeros(tuple(int(v) for v in shape), dtype=np.float32)


@dataclass(frozen=True, slots=True)
class CustomSampleResult:
    """SamplerCustom / SamplerCustomAdvanced outputs (raw LATENT samples).

    Attributes:
        output: The sampled latent.
        denoised_output: The last step's x0 prediction (``output`` when no step ran).
    """

    output: np.ndarray
    denoised_output: np.ndarray


def sample_custom(
    denoiser: Denoiser,
    latent: np.ndarray,
    sampler: str | SamplerSpec,
    sigmas: np.ndarray | Sequence[float],
    noise: RandomNoise | DisableNoise | None = None,
    *,
    batch_index: Sequence[int] | None = None,
    noise_mask: np.ndarray | None = None,
    model_sampling: ModelSampling | DiscreteSchedule | None = None,
    latent_scale: float = 0.18215,
    latent_shift: float = 0.0,
    callback: StepCallback | None = None,
    noise_mode: str = DEFAULT_NOISE_MODE,
) -> CustomSampleResult:
    """SamplerCustomAdvanced: NOISE + guider (``denoiser``) + SAMPLER + SIGMAS + LATENT.

    Follows ``comfy/samplers.py`` ``CFGGuider.sample``: empty ``sigmas`` return the latent as it
    is; otherwise a non-empty latent goes through the latent format (``(x - shift) * scale``),
    the sampler runs from ``noise_scaling(sigmas[0], noise, latent)`` (max denoise when
    ``sigmas[0]`` reaches the model's ``sigma_max``), and the result and the last x0 come back
    through ``x / scale + shift``. The sampler's own noise is seeded with ``noise.seed``.
    SamplerCustom(add_noise, noise_seed) is ``noise=RandomNoise(noise_seed)`` when ``add_noise``
    is on and ``DisableNoise(seed=noise_seed)`` when it is off.

    Args:
        denoiser: The guider: ``denoiser(x, sigma) -> x0`` (CFG included).
        latent: Raw LATENT samples ``[B, C, h, w]``.
        sampler: A :class:`SamplerSpec` (or a sampler name).
        sigmas: The SIGMAS (e.g. :func:`~comfyc.runtime.schedules.basic_scheduler`).
        noise: :class:`RandomNoise` or :class:`DisableNoise` (default ``RandomNoise(0)``).
        batch_index: The LATENT's ``batch_index``, if any.
        noise_mask: The LATENT's ``noise_mask``, if any.
        model_sampling: The model's sampling; defaults to SD1 eps.
        latent_scale: Latent format scale factor.
        latent_shift: Latent format shift factor.
        callback: Optional per-step callback.
        noise_mode: ``cpu``, ``cpu-legacy`` or ``cuda`` (see :func:`sample`).

    Returns:
        :class:`CustomSampleResult` with ``output`` and ``denoised_output``.
    """
    _check_noise_mode(noise_mode)
    noise = RandomNoise(0) if noise is None else noise
    latent = np.asarray(latent, dtype=np.float32)
    sig = np.asarray(sigmas, dtype=np.float32).reshape(-1)
    initial = noise.generate(latent.shape, batch_index)
    if sig.size == 0:
        return CustomSampleResult(latent.copy(), latent.copy())
    last_x0: list[np.ndarray] = []

    def hook(step: int, x0: np.ndarray, x: np.ndarray, total: int) -> None:
        if last_x0:
            last_x0[0] = x0
        else:
            last_x0.append(x0)
        if callback is not None:
            callback(step, x0, x, total)

    ms = as_model_sampling(model_sampling)
    model_latent = _process_in(latent, latent_scale, latent_shift)
    out = sample(
        denoiser, model_latent, initial, sig, _as_spec(sampler), noise.seed, noise_mask, hook,
        model_sampling=ms, noise_mode=noise_mode,
    )
    output = _process_out(out, latent_scale, latent_shift)
    denoised = _process_out(last_x0[0], latent_scale, latent_shift) if last_x0 else output
    return CustomSampleResult(output, denoised)
