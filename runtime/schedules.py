"""Noise schedules (sigma tables, schedulers, custom-sampling sigma nodes) as ComfyUI computes
them, in numpy.

Contract: every function here returns float32 sigma arrays, descending, usually ending in 0, in
the model sampling's own sigma units (``x = x0 + sigma * eps`` for EPS/V models, sigma in (0, 1]
for flow models). They agree with ComfyUI's torch code bit for bit on almost every input (the
recorded comparison, tests/runtime/test_schedules_comfyui_recording.py, finds all but a few
kl_optimal/VP/polyexponential values identical, those within 1 ulp): torch's float32 linspace
is a fused multiply-add, emulated here in float64, and exp/pow/tan are evaluated in float64 and
rounded, which matches torch's float32 kernels far more often than numpy's float32 ones do.
Bit equality matters: SDE samplers seed their Brownian tree with the schedule's ends and query
it at the sigmas rounded to 6 decimals.

Sources (ComfyUI 0.29, commit 4f874c5e: ``comfy/model_sampling.py``, ``comfy/samplers.py``
``SCHEDULER_HANDLERS``, ``calculate_sigmas``, ``KSampler.calculate_sigmas`` / ``set_steps`` /
``sample``; ``comfy/k_diffusion/sampling.py`` ``get_sigmas_*``;
``comfy_extras/nodes_custom_sampler.py`` and ``nodes_align_your_steps.py``).

* :class:`DiscreteSchedule` is the SD1.x/SD2.x/SDXL model table: betas
  ``linspace(sqrt(0.00085), sqrt(0.012), 1000)**2`` in float64, ``alphas_cumprod``, sigmas
  ``sqrt((1 - a) / a)`` stored as float32 (optionally rescaled to zero terminal SNR);
  ``timestep`` is an argmin over log sigmas (integer timesteps, like k-diffusion's
  ``quantize=True``), ``sigma`` a log-linear interpolation.
* :func:`calculate_sigmas` runs one scheduler (names and order of ComfyUI's combo) on any model
  sampling (:mod:`comfyc.runtime.model_sampling`; a :class:`DiscreteSchedule` or None means SD1
  eps). One deliberate difference: ``kl_optimal`` with 1 step gives ``[sigma_max, 0]`` where
  ComfyUI divides by zero and gives ``[nan, 0]``.
* :func:`ksampler_sigmas` is the KSampler node's schedule: the ``denoise`` window and the samplers
  that drop the penultimate sigma. :func:`advanced_sigmas` applies KSamplerAdvanced's
  ``start_at_step`` / ``end_at_step`` / ``return_with_leftover_noise``.
* The custom-sampling nodes: :func:`basic_scheduler`, :func:`karras_scheduler`,
  :func:`exponential_scheduler`, :func:`polyexponential_scheduler`, :func:`vp_scheduler`,
  :func:`laplace_scheduler`, :func:`sd_turbo_scheduler`, :func:`beta_sampling_scheduler`,
  :func:`align_your_steps_scheduler`, :func:`split_sigmas`, :func:`split_sigmas_denoise`,
  :func:`flip_sigmas`, :func:`set_first_sigma`, :func:`manual_sigmas` (ComfyUI's input names and
  defaults).
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    from .model_sampling import ModelSampling

__all__ = [
    "ALIGN_YOUR_STEPS_NOISE_LEVELS",
    "DISCARD_PENULTIMATE_SIGMA_SAMPLERS",
    "SCHEDULER_NAMES",
    "SD1_SCHEDULE",
    "DiscreteSchedule",
    "ScheduleError",
    "advanced_sigmas",
    "align_your_steps_scheduler",
    "basic_scheduler",
    "beta_ppf",
    "beta_sampling_scheduler",
    "calculate_sigmas",
    "exponential_scheduler",
    "flip_sigmas",
    "karras_scheduler",
    "ksampler_sigmas",
    "laplace_scheduler",
    "manual_sigmas",
    "polyexponential_scheduler",
    "regularized_incomplete_beta",
    "sd_turbo_scheduler",
    "set_first_sigma",
    "sigma_to_t",
    "split_sigmas",
    "split_sigmas_denoise",
    "t_to_sigma",
    "vp_scheduler",
]

#: Anything with a model's sigma table: a :class:`DiscreteSchedule` or a
#: :class:`~comfyc.runtime.model_sampling.ModelSampling` (SD1 eps when None).
SigmaSource = Union["DiscreteSchedule", "ModelSampling", None]

# NOTE: comfy/samplers.py SCHEDULER_HANDLERS insertion order = the KSampler combo order.
SCHEDULER_NAMES: tuple[str, ...] = (
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

# NOTE: comfy/samplers.py KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS: frozenset[str] = frozenset(
    {"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"}
)


class ScheduleError(ValueError):
    """A schedule request that cannot be computed (unknown scheduler, bad step count)."""


def _torch_linspace(start: float, end: float, steps: int, dtype: type = np.float32) -> np.ndarray:
    """``torch.linspace`` on the CPU: the first half counts up from ``start``, the second half
    down from ``end``, with ``step`` computed in ``dtype``.

    For float32, torch's kernel evaluates ``start + step * i`` (and ``end - step * (steps - i -
    1)``) as one fused multiply-add; it is emulated in float64 here (the float32 product is
    exact there), which matched torch 2.13 on every tested input.
    """
    if steps <= 0:
        return np.zeros(0, dtype=dtype)
    if steps == 1:
        return np.array([start], dtype=dtype)
    s = dtype(start)
    e = dtype(end)
    step = dtype((e - s) / dtype(steps - 1))
    idx = np.arange(steps)
    halfway = steps // 2
    out = np.empty(steps, dtype=dtype)
    lo = idx[:halfway]
    hi = idx[halfway:]
    if dtype is np.float32:
        step64, s64, e64 = np.float64(step), np.float64(s), np.float64(e)
        out[:halfway] = (step64 * lo + s64).astype(np.float32)
        out[halfway:] = (e64 - step64 * (steps - hi - 1)).astype(np.float32)
        return out
    out[:halfway] = s + step * lo.astype(dtype)
    out[halfway:] = e - step * (steps - hi - 1).astype(dtype)
    return out


class DiscreteSchedule:
    """A discrete-time DDPM model schedule (``comfy/model_sampling.py`` ModelSamplingDiscrete).

    Attributes:
        sigmas: float32[num_timesteps], ascending (index = model timestep).
        log_sigmas: float32 natural logs of ``sigmas`` (computed in float64, then rounded).
        sigma_min: ``sigmas[0]`` as a Python float.
        sigma_max: ``sigmas[-1]`` as a Python float.
    """

    __slots__ = ("_timesteps", "log_sigmas", "sigma_max", "sigma_min", "sigmas")

    def __init__(self, sigmas: np.ndarray, log_sigmas: np.ndarray | None = None) -> None:
        sigmas64 = np.asarray(sigmas, dtype=np.float64)
        if sigmas64.ndim != 1 or sigmas64.size < 2:
            raise ScheduleError(
                f"a model sigma table must be 1-D with at least 2 entries, got shape "
                f"{sigmas64.shape}"
            )
        self.sigmas = sigmas64.astype(np.float32)
        if log_sigmas is None:
            # NOTE: ComfyUI's set_sigmas takes the log of the float64 table, then rounds.
            log_sigmas = np.log(sigmas64)
        self.log_sigmas = np.asarray(log_sigmas).astype(np.float32)
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])
        # Scalar sigma -> timestep, remembered: a sampler asks for the same few sigmas every
        # image (a 1000-entry argmin each time was a measurable part of the tiny model's run).
        self._timesteps: dict[float, float] = {}

    @classmethod
    def linear(
        cls,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        timesteps: int = 1000,
        zsnr: bool = False,
    ) -> DiscreteSchedule:
        """The "linear" (scaled-linear) beta schedule used by SD1.x, SD2.x and SDXL.

        Args:
            linear_start: First beta (``0.00085`` for SD1/SD2/SDXL).
            linear_end: Last beta (``0.012``).
            timesteps: Number of training timesteps (1000).
            zsnr: Rescale to zero terminal SNR (``rescale_zero_terminal_snr_sigmas``, the
                ModelSamplingDiscrete node's ``zsnr``).

        Returns:
            The schedule.
        """
        # NOTE: ldm make_beta_schedule("linear"): linspace of square roots in float64, squared.
        betas = _torch_linspace(linear_start**0.5, linear_end**0.5, timesteps, np.float64) ** 2
        alphas_cumprod = np.cumprod(1.0 - betas)
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = _rescale_zero_terminal_snr(sigmas)
        return cls(sigmas)

    def timestep(self, sigma: float | np.ndarray) -> np.ndarray | float:
        """Model timestep for ``sigma``: index of the nearest log sigma (as a float).

        Args:
            sigma: A sigma or an array of sigmas (> 0).

        Returns:
            Integer-valued timesteps as float(s), same shape as ``sigma``.
        """
        scalar = np.ndim(sigma) == 0
        if scalar:
            key = float(np.float32(sigma))
            hit = self._timesteps.get(key)
            if hit is not None:
                return hit
        arr = np.asarray(sigma, dtype=np.float32)
        # NOTE: a correctly rounded float32 log (via float64), so that argmin ties between two
        # table entries resolve like torch's scalar path; numpy's float32 log can be 1 ulp off.
        with np.errstate(divide="ignore"):
            log_sigma = np.log(arr.astype(np.float64)).astype(np.float32)
        dists = np.abs(log_sigma.reshape(1, -1) - self.log_sigmas.reshape(-1, 1))
        t = np.argmin(dists, axis=0).astype(np.float32).reshape(arr.shape)
        if scalar:
            if len(self._timesteps) < 4096:
                self._timesteps[key] = float(t)
            return float(t)
        return t

    def sigma(self, timestep: float | np.ndarray) -> np.ndarray | float:
        """Sigma at a (fractional) timestep: log-linear interpolation of the table.

        Args:
            timestep: Timestep(s), clamped to ``[0, num_timesteps - 1]``.

        Returns:
            float32 sigma(s), same shape as ``timestep``.
        """
        t = np.clip(np.asarray(timestep, dtype=np.float32), 0, len(self.sigmas) - 1)
        low = np.floor(t).astype(np.int64)
        high = np.ceil(t).astype(np.int64)
        w = (t - np.trunc(t)).astype(np.float32)
        log_sigma = (np.float32(1.0) - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        # NOTE: exp in float64, then rounded: torch's float32 exp agrees with that in ~99.9 % of
        # inputs, numpy's float32 exp in ~60 %. An ulp matters: SDE samplers seed their
        # Brownian tree with the schedule's ends.
        out = np.exp(log_sigma.astype(np.float64)).astype(np.float32)
        return float(out) if np.ndim(timestep) == 0 else out

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at which a ``start_percent``/``end_percent`` boundary lies.

        Args:
            percent: Fraction of the sampling process, 0 = start (noisiest), 1 = end.

        Returns:
            ``999999999.9`` for percent <= 0, ``0.0`` for percent >= 1, else ``sigma(999 (1-p))``.
        """
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(np.float32((1.0 - percent) * 999.0)))


def _rescale_zero_terminal_snr(sigmas: np.ndarray) -> np.ndarray:
    """``rescale_zero_terminal_snr_sigmas`` (Lin et al. 2023, "Common Diffusion Noise Schedules
    and Sample Steps are Flawed", algorithm 1), in float64 like ComfyUI."""
    alphas_bar_sqrt = np.sqrt(1.0 / (sigmas * sigmas + 1.0))
    first = alphas_bar_sqrt[0]
    last = alphas_bar_sqrt[-1]
    alphas_bar_sqrt = alphas_bar_sqrt - last
    alphas_bar_sqrt = alphas_bar_sqrt * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    # NOTE: ComfyUI pins the last value so that the largest sigma stays finite (~4518.8).
    alphas_bar[-1] = 4.8973451890853435e-08
    return ((1.0 - alphas_bar) / alphas_bar) ** 0.5


#: The SD1.x / SD2.x schedule (betas 0.00085 .. 0.012, 1000 steps).
SD1_SCHEDULE = DiscreteSchedule.linear()


def sigma_to_t(
    sigma: float | np.ndarray, schedule: DiscreteSchedule | None = None
) -> np.ndarray | float:
    """Model timestep for ``sigma`` (nearest log sigma), as ComfyUI's ``timestep()``.

    Args:
        sigma: Sigma value(s).
        schedule: The model schedule; defaults to SD1/SD2.

    Returns:
        Integer-valued float timestep(s).
    """
    return (schedule or SD1_SCHEDULE).timestep(sigma)


def t_to_sigma(
    t: float | np.ndarray, schedule: DiscreteSchedule | None = None
) -> np.ndarray | float:
    """Sigma at a (fractional) timestep, log-linear interpolation, as ComfyUI's ``sigma()``.

    Args:
        t: Timestep value(s) in ``[0, 999]``.
        schedule: The model schedule; defaults to SD1/SD2.

    Returns:
        float32 sigma value(s).
    """
    return (schedule or SD1_SCHEDULE).sigma(t)


# ----------------------------------------------------------------------------------------------
# Regularised incomplete beta and its inverse (the "beta" scheduler needs scipy.stats.beta.ppf,
# and scipy is not a runtime dependency).


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (modified Lentz), valid for x < (a + 1) / (a + b + 2)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = tiny if abs(d) < tiny else d
    d = 1.0 / d
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return h


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """``I_x(a, b)``, the beta distribution's CDF at ``x`` (double precision).

    Args:
        x: Point in ``[0, 1]``.
        a: First shape parameter (> 0).
        b: Second shape parameter (> 0).

    Returns:
        The CDF value in ``[0, 1]``.
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _beta_ppf_lower(p: float, a: float, b: float) -> float:
    """Solve ``I_x(a, b) = p`` for x, by bisection refined with safeguarded Newton steps."""
    lo, hi = 0.0, 1.0
    x = 0.5
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    for _ in range(200):
        f = regularized_incomplete_beta(x, a, b) - p
        if f == 0.0:
            return x
        if f < 0.0:
            lo = x
        else:
            hi = x
        pdf = math.exp(log_norm + (a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x))
        candidate = x - f / pdf if pdf > 0.0 and math.isfinite(pdf) else -1.0
        if not lo < candidate < hi:
            candidate = 0.5 * (lo + hi)
        if abs(candidate - x) <= 4e-16 * max(x, 1e-300) or hi - lo <= 1e-300:
            return candidate
        x = candidate
    return x


def beta_ppf(p: float, a: float, b: float) -> float:
    """Inverse CDF of the beta distribution (``scipy.stats.beta.ppf(p, a, b)``), without scipy.

    Args:
        p: Probability in ``[0, 1]``.
        a: First shape parameter (> 0).
        b: Second shape parameter (> 0).

    Returns:
        x in ``[0, 1]`` with ``I_x(a, b) = p``, to about 1e-15.
    """
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ScheduleError(f"beta_ppf needs a probability in [0, 1], got {p}")
    if p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    if a == b and p == 0.5:
        # NOTE: exact by symmetry; ComfyUI's beta scheduler rounds ppf * 999 = 499.5, a tie,
        # so an answer 1 ulp off would pick a different timestep.
        return 0.5
    # NOTE: solve on the side where the answer has more relative precision: for p > 1/2 solve the
    # mirrored problem I_{1-x}(b, a) = 1 - p and return 1 - y.
    if p > 0.5:
        return 1.0 - _beta_ppf_lower(1.0 - p, b, a)
    return _beta_ppf_lower(p, a, b)


# ----------------------------------------------------------------------------------------------
# Schedulers (comfy/samplers.py).


def _simple(schedule: DiscreteSchedule | ModelSampling, steps: int) -> np.ndarray:
    n = len(schedule.sigmas)
    ss = n / steps
    sigs = [float(schedule.sigmas[-(1 + int(x * ss))]) for x in range(steps)]
    return np.array([*sigs, 0.0], dtype=np.float32)


def _ddim_uniform(schedule: DiscreteSchedule | ModelSampling, steps: int) -> np.ndarray:
    sigmas = schedule.sigmas
    x = 1
    # NOTE: comfy ddim_scheduler: a table whose sigma[1] is ~0 gets one more step and no 0.
    if math.isclose(float(sigmas[x]), 0.0, abs_tol=0.00001):
        steps += 1
        sigs: list[float] = []
    else:
        sigs = [0.0]
    ss = max(len(sigmas) // steps, 1)
    while x < len(sigmas):
        sigs.append(float(sigmas[x]))
        x += ss
    return np.array(sigs[::-1], dtype=np.float32)


def _normal(
    schedule: DiscreteSchedule | ModelSampling, steps: int, sgm: bool = False
) -> np.ndarray:
    start = schedule.timestep(schedule.sigma_max)
    end = schedule.timestep(schedule.sigma_min)
    append_zero = True
    if sgm:
        timesteps = _torch_linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(schedule.sigma(np.float32(end))), 0.0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = _torch_linspace(start, end, steps)
    sigs = [float(schedule.sigma(ts)) for ts in timesteps]
    if append_zero:
        sigs.append(0.0)
    return np.array(sigs, dtype=np.float32)


def _karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    # NOTE: k-diffusion get_sigmas_karras: float32 ramp, Python-float constants.
    ramp = _torch_linspace(0.0, 1.0, n)
    min_inv_rho = sigma_min ** (1.0 / rho)
    max_inv_rho = sigma_max ** (1.0 / rho)
    base = np.float32(max_inv_rho) + ramp * np.float32(min_inv_rho - max_inv_rho)
    # NOTE: pow (and exp/tan below) in float64, then rounded: closer to torch's float32 kernels
    # than numpy's float32 ones (an ulp matters to SDE samplers, see DiscreteSchedule.sigma).
    sigmas = base.astype(np.float64) ** np.float64(np.float32(rho))
    return np.concatenate([sigmas.astype(np.float32), np.zeros(1, np.float32)])


def _exponential(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    ramp = _torch_linspace(math.log(sigma_max), math.log(sigma_min), n)
    sigmas = np.exp(ramp.astype(np.float64))
    return np.concatenate([sigmas.astype(np.float32), np.zeros(1, np.float32)])


def _beta(
    schedule: DiscreteSchedule | ModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6
) -> np.ndarray:
    total_timesteps = len(schedule.sigmas) - 1
    ts = 1.0 - np.linspace(0.0, 1.0, steps, endpoint=False)
    ts = np.rint(np.array([beta_ppf(float(p), alpha, beta) for p in ts]) * total_timesteps)
    sigs: list[float] = []
    last_t = -1.0
    for t in ts:
        if t != last_t:
            sigs.append(float(schedule.sigmas[int(t)]))
        last_t = t
    sigs.append(0.0)
    return np.array(sigs, dtype=np.float32)


def _linear_quadratic(
    schedule: DiscreteSchedule | ModelSampling,
    steps: int,
    threshold_noise: float = 0.025,
    linear_steps: int | None = None,
) -> np.ndarray:
    # NOTE: comfy linear_quadratic_schedule (from genmo's Mochi), scaled by sigma_max.
    if steps == 1:
        sigma_schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        threshold_noise_step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = threshold_noise_step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * threshold_noise_step_diff / (
            quadratic_steps**2
        )
        const = quadratic_coef * (linear_steps**2)
        quadratic = [
            quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, steps)
        ]
        sigma_schedule = [1.0 - x for x in [*linear, *quadratic, 1.0]]
    return np.array(sigma_schedule, dtype=np.float32) * np.float32(schedule.sigma_max)


def _kl_optimal(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    # NOTE: comfy kl_optimal_scheduler divides by n - 1, which gives NaN for n = 1 in ComfyUI;
    # here one step is [sigma_max, 0] (the limit of the formula's first point).
    if n == 1:
        return np.array([sigma_max, 0.0], dtype=np.float32)
    adj = np.arange(n, dtype=np.float32) / np.float32(n - 1)
    arg = adj * np.float32(math.atan(sigma_min)) + (np.float32(1.0) - adj) * np.float32(
        math.atan(sigma_max)
    )
    sig = np.tan(arg.astype(np.float64))
    return np.concatenate([sig.astype(np.float32), np.zeros(1, np.float32)])


def calculate_sigmas(scheduler: str, steps: int, schedule: SigmaSource = None) -> np.ndarray:
    """Sigmas of one scheduler, as ComfyUI's ``comfy.samplers.calculate_sigmas``.

    Args:
        scheduler: One of :data:`SCHEDULER_NAMES`.
        steps: Number of sampling steps (>= 1).
        schedule: The model sampling (or its table); defaults to SD1/SD2 eps. Every scheduler
            works on every model sampling, flow models included, as ComfyUI's
            ``calculate_sigmas(model_sampling, scheduler, steps)``.

    Returns:
        float32 sigmas, descending, normally ``steps + 1`` values ending in 0 (``beta`` can give
        fewer when timesteps repeat; ``ddim_uniform`` can give more when 1000 % steps != 0).

    Raises:
        ScheduleError: for an unknown scheduler or ``steps < 1``.
    """
    s = schedule or SD1_SCHEDULE
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ScheduleError(f"steps must be an integer >= 1, got {steps!r}")
    steps = int(steps)
    # NOTE: a model sampling's schedules depend on nothing else: computed once per model
    # sampling (hundreds of microseconds, paid again on every image otherwise).
    memo = getattr(s, "memo", None)
    if memo is None:
        return _calculate(scheduler, steps, s)
    key = ("sigmas", scheduler, steps)
    if key not in memo:
        memo[key] = _calculate(scheduler, steps, s)
    return memo[key].copy()


def _calculate(scheduler: str, steps: int, s: Any) -> np.ndarray:
    """:func:`calculate_sigmas` without its checks and memo."""
    if scheduler == "simple":
        return _simple(s, steps)
    if scheduler == "sgm_uniform":
        return _normal(s, steps, sgm=True)
    if scheduler == "karras":
        return _karras(steps, s.sigma_min, s.sigma_max)
    if scheduler == "exponential":
        return _exponential(steps, s.sigma_min, s.sigma_max)
    if scheduler == "ddim_uniform":
        return _ddim_uniform(s, steps)
    if scheduler == "beta":
        return _beta(s, steps)
    if scheduler == "normal":
        return _normal(s, steps)
    if scheduler == "linear_quadratic":
        return _linear_quadratic(s, steps)
    if scheduler == "kl_optimal":
        return _kl_optimal(steps, s.sigma_min, s.sigma_max)
    raise ScheduleError(
        f"unknown scheduler {scheduler!r}; expected one of {', '.join(SCHEDULER_NAMES)}"
    )


def ksampler_sigmas(
    scheduler: str,
    steps: int,
    sampler_name: str = "euler",
    denoise: float | None = 1.0,
    schedule: SigmaSource = None,
) -> np.ndarray:
    """The schedule the KSampler node samples with (``comfy/samplers.py`` ``KSampler.set_steps``).

    * ``denoise`` > 0.9999 (or None): the full schedule for ``steps``.
    * ``0 < denoise <= 0.9999``: the schedule for ``int(steps / denoise)`` steps, keeping the last
      ``steps + 1`` sigmas (img2img / hires-fix second pass).
    * ``denoise <= 0``: an empty schedule (the sampler returns the latent unchanged).
    * Samplers in :data:`DISCARD_PENULTIMATE_SIGMA_SAMPLERS` compute one step more and drop the
      penultimate sigma.

    Args:
        scheduler: Scheduler name.
        steps: KSampler steps (>= 1).
        sampler_name: Sampler name (only matters for the penultimate-sigma rule).
        denoise: KSampler denoise in ``[0, 1]``.
        schedule: The model schedule; defaults to SD1/SD2.

    Returns:
        float32 sigmas (possibly empty).
    """

    def compute(n: int) -> np.ndarray:
        discard = sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS
        sig = calculate_sigmas(scheduler, n + 1 if discard else n, schedule)
        if discard:
            sig = np.concatenate([sig[:-2], sig[-1:]])
        return sig

    if denoise is None or denoise > 0.9999:
        return compute(steps)
    if denoise <= 0.0:
        return np.zeros(0, dtype=np.float32)
    new_steps = int(steps / denoise)
    return compute(new_steps)[-(steps + 1) :]


def advanced_sigmas(
    sigmas: np.ndarray,
    start_at_step: int | None = None,
    end_at_step: int | None = None,
    return_with_leftover_noise: bool = False,
) -> np.ndarray | None:
    """KSamplerAdvanced's step window (``comfy/samplers.py`` ``KSampler.sample``).

    ``end_at_step < len(sigmas) - 1`` keeps ``sigmas[:end + 1]`` and, unless leftover noise is
    requested, forces the last kept sigma to 0. Then ``start_at_step < len(sigmas) - 1`` keeps
    ``sigmas[start:]``; otherwise nothing is sampled.

    Args:
        sigmas: The full schedule (from :func:`ksampler_sigmas` with denoise 1.0).
        start_at_step: First step to run (None = 0).
        end_at_step: Step to stop at (None = run to the end).
        return_with_leftover_noise: KSamplerAdvanced ``return_with_leftover_noise == "enable"``.

    Returns:
        The windowed float32 sigmas, or None when the latent must be returned unchanged.
    """
    out = np.array(sigmas, dtype=np.float32, copy=True)
    if end_at_step is not None and end_at_step < len(out) - 1:
        out = out[: end_at_step + 1].copy()
        if not return_with_leftover_noise:
            out[-1] = 0.0
    if start_at_step is not None:
        if start_at_step < len(out) - 1:
            out = out[start_at_step:]
        else:
            return None
    return out


# ----------------------------------------------------------------------------------------------
# Custom-sampling schedulers and sigma utilities (comfy_extras/nodes_custom_sampler.py,
# nodes_align_your_steps.py). Each function takes the node's inputs under ComfyUI's names, with
# ComfyUI's defaults, and returns what the node's SIGMAS output holds (float32).


def _check_steps(steps: int) -> int:
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ScheduleError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def _as_sigmas(sigmas: np.ndarray | Sequence[float]) -> np.ndarray:
    return np.array(sigmas, dtype=np.float32, copy=True).reshape(-1)


def basic_scheduler(
    model_sampling: SigmaSource, scheduler: str = "simple", steps: int = 20, denoise: float = 1.0
) -> np.ndarray:
    """BasicScheduler: ``scheduler`` over the model's sampling, cut to the ``denoise`` window.

    Unlike the KSampler node there is no 0.9999 threshold (any ``denoise < 1`` computes
    ``int(steps / denoise)`` steps and keeps the last ``steps + 1`` sigmas) and no sampler-specific
    penultimate-sigma rule.

    Args:
        model_sampling: The MODEL's sampling (None = SD1 eps).
        scheduler: One of :data:`SCHEDULER_NAMES`.
        steps: Steps (1..10000, default 20).
        denoise: 0..1 (default 1.0); ``<= 0`` gives an empty schedule.

    Returns:
        float32 sigmas.
    """
    steps = _check_steps(steps)
    total_steps = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return np.zeros(0, dtype=np.float32)
        total_steps = int(steps / denoise)
    return calculate_sigmas(scheduler, total_steps, model_sampling)[-(steps + 1) :]


def karras_scheduler(
    steps: int = 20, sigma_max: float = 14.614642, sigma_min: float = 0.0291675, rho: float = 7.0
) -> np.ndarray:
    """KarrasScheduler: Karras et al. (2022) sigmas, ``steps`` values then 0."""
    return _karras(_check_steps(steps), sigma_min, sigma_max, rho)


def exponential_scheduler(
    steps: int = 20, sigma_max: float = 14.614642, sigma_min: float = 0.0291675
) -> np.ndarray:
    """ExponentialScheduler: sigmas evenly spaced in log sigma, then 0."""
    return _exponential(_check_steps(steps), sigma_min, sigma_max)


def polyexponential_scheduler(
    steps: int = 20, sigma_max: float = 14.614642, sigma_min: float = 0.0291675, rho: float = 1.0
) -> np.ndarray:
    """PolyexponentialScheduler: log sigma a polynomial of degree ``rho`` in time, then 0."""
    n = _check_steps(steps)
    ramp = _torch_linspace(1.0, 0.0, n)
    if rho != 1.0:
        ramp = (ramp.astype(np.float64) ** np.float64(np.float32(rho))).astype(np.float32)
    span = np.float32(math.log(sigma_max) - math.log(sigma_min))
    sigmas = np.exp((ramp * span + np.float32(math.log(sigma_min))).astype(np.float64))
    return np.concatenate([sigmas.astype(np.float32), np.zeros(1, np.float32)])


def vp_scheduler(
    steps: int = 20, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 0.001
) -> np.ndarray:
    """VPScheduler: the continuous VP schedule (Song et al. 2021), then 0."""
    t = _torch_linspace(1.0, eps_s, _check_steps(steps))
    inner = np.float32(beta_d) * (t * t) / np.float32(2) + np.float32(beta_min) * t
    sigmas = np.sqrt(np.expm1(inner.astype(np.float64)).astype(np.float32))
    return np.concatenate([sigmas.astype(np.float32), np.zeros(1, np.float32)])


def laplace_scheduler(
    steps: int = 20,
    sigma_max: float = 14.614642,
    sigma_min: float = 0.0291675,
    mu: float = 0.0,
    beta: float = 0.5,
) -> np.ndarray:
    """LaplaceScheduler (Tiankai et al. 2024): ``steps`` sigmas clamped to the range, no final 0."""
    x = _torch_linspace(0.0, 1.0, _check_steps(steps))
    half = np.float32(0.5) - x
    inner = np.float32(1.0) - np.float32(2.0) * np.abs(half) + np.float32(1e-5)
    with np.errstate(divide="ignore"):
        log = np.log(inner.astype(np.float64)).astype(np.float32)
        lmb = np.float32(mu) - np.float32(beta) * np.sign(half) * log
    sigmas = np.exp(lmb.astype(np.float64)).astype(np.float32)
    return np.clip(sigmas, np.float32(sigma_min), np.float32(sigma_max)).astype(np.float32)


def sd_turbo_scheduler(
    model_sampling: SigmaSource, steps: int = 1, denoise: float = 1.0
) -> np.ndarray:
    """SDTurboScheduler: up to 10 steps on timesteps 999, 899, ..., 99, starting by ``denoise``.

    Args:
        model_sampling: The MODEL's sampling (None = SD1 eps).
        steps: 1..10 (default 1).
        denoise: 0..1 (default 1.0): skips the first ``10 - int(10 * denoise)`` timesteps.

    Returns:
        float32 sigmas ending in 0.
    """
    s = SD1_SCHEDULE if model_sampling is None else model_sampling
    steps = _check_steps(steps)
    start_step = 10 - int(10 * denoise)
    timesteps = (np.arange(1, 11) * 100 - 1)[::-1][start_step : start_step + steps]
    sigmas = np.asarray(s.sigma(timesteps.astype(np.float32)), dtype=np.float32).reshape(-1)
    return np.concatenate([sigmas, np.zeros(1, np.float32)])


def beta_sampling_scheduler(
    model_sampling: SigmaSource, steps: int = 20, alpha: float = 0.6, beta: float = 0.6
) -> np.ndarray:
    """BetaSamplingScheduler: the beta scheduler with its ``alpha``/``beta`` shape exposed."""
    s = SD1_SCHEDULE if model_sampling is None else model_sampling
    return _beta(s, _check_steps(steps), alpha, beta)


# NOTE: the published AYS noise levels (research.nvidia.com/labs/toronto-ai/AlignYourSteps),
# as ComfyUI's nodes_align_your_steps.py lists them.
ALIGN_YOUR_STEPS_NOISE_LEVELS: dict[str, tuple[float, ...]] = {
    "SD1": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
            0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "SDXL": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
    "SVD": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}


def _loglinear_interp(t_steps: Sequence[float], num_steps: int) -> np.ndarray:
    """Log-linear interpolation of a decreasing sequence to ``num_steps`` points (float64)."""
    xs = np.linspace(0, 1, len(t_steps))
    ys = np.log(np.asarray(t_steps, dtype=np.float64)[::-1])
    new_ys = np.interp(np.linspace(0, 1, num_steps), xs, ys)
    return np.exp(new_ys)[::-1].copy()


def align_your_steps_scheduler(
    model_type: str = "SD1", steps: int = 10, denoise: float = 1.0
) -> np.ndarray:
    """AlignYourStepsScheduler (Sabour et al. 2024): NVIDIA's optimised 10-step noise levels,
    log-linearly interpolated to ``steps``, cut to the last ``round(steps * denoise)`` steps.

    Args:
        model_type: ``"SD1"``, ``"SDXL"`` or ``"SVD"``.
        steps: 1..10000 (default 10).
        denoise: 0..1 (default 1.0); ``<= 0`` gives an empty schedule. The window uses Python's
            ``round`` (half to even), as the node does.

    Returns:
        float32 sigmas, the last one 0.
    """
    if model_type not in ALIGN_YOUR_STEPS_NOISE_LEVELS:
        raise ScheduleError(
            f"unknown AlignYourSteps model_type {model_type!r}; expected one of "
            f"{', '.join(ALIGN_YOUR_STEPS_NOISE_LEVELS)}"
        )
    steps = _check_steps(steps)
    total_steps = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return np.zeros(0, dtype=np.float32)
        total_steps = round(steps * denoise)
    levels = np.array(ALIGN_YOUR_STEPS_NOISE_LEVELS[model_type], dtype=np.float64)
    if steps + 1 != len(levels):
        levels = _loglinear_interp(levels, steps + 1)
    out = levels[-(total_steps + 1) :].copy()
    out[-1] = 0.0
    return out.astype(np.float32)


def split_sigmas(
    sigmas: np.ndarray | Sequence[float], step: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """SplitSigmas: ``(high_sigmas, low_sigmas) = (sigmas[:step + 1], sigmas[step:])``."""
    s = _as_sigmas(sigmas)
    return s[: step + 1].copy(), s[step:].copy()


def split_sigmas_denoise(
    sigmas: np.ndarray | Sequence[float], denoise: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """SplitSigmasDenoise: the last ``round(steps * denoise)`` steps become ``low_sigmas``.

    As in ComfyUI, ``high_sigmas`` is ``sigmas[:-n]`` (so it is empty when ``n`` is 0) and
    ``low_sigmas`` is ``sigmas[-(n + 1):]``.
    """
    s = _as_sigmas(sigmas)
    steps = max(s.shape[-1] - 1, 0)
    total_steps = round(steps * denoise)
    return s[:-total_steps].copy(), s[-(total_steps + 1) :].copy()


def flip_sigmas(sigmas: np.ndarray | Sequence[float]) -> np.ndarray:
    """FlipSigmas: reversed (for unsampling); a leading 0 becomes 0.0001."""
    s = _as_sigmas(sigmas)
    if s.size == 0:
        return s
    s = s[::-1].copy()
    if s[0] == 0:
        s[0] = np.float32(0.0001)
    return s


def set_first_sigma(sigmas: np.ndarray | Sequence[float], sigma: float = 136.0) -> np.ndarray:
    """SetFirstSigma: a copy with the first sigma replaced."""
    s = _as_sigmas(sigmas)
    s[0] = np.float32(sigma)
    return s


def manual_sigmas(sigmas: str = "1, 0.5") -> np.ndarray:
    """ManualSigmas: every number in the text, in order (ComfyUI's regular expression)."""
    found = re.findall(r"[-+]?(?:\d*\.*\d+)", sigmas)
    return np.array([float(v) for v in found], dtype=np.float32)
