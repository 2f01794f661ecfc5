"""Model sampling as data: how a model's noise level, timestep and prediction relate, in numpy.

ComfyUI attaches a ``model_sampling`` object to every model (``comfy/model_sampling.py``,
composed by ``comfy/model_base.py`` ``model_sampling`` and replaced by the ``ModelSampling*``
nodes of ``comfy_extras/nodes_model_advanced.py``). It is two things in one:

* a **schedule**: the model's sigma table (``sigmas``, ascending, ``sigma_min``/``sigma_max``), the
  map between sigma and the timestep the model is called with (``timestep``/``sigma``) and
  ``percent_to_sigma`` (ConditioningSetTimestepRange, ControlNet start/end percent, SA-Solver's
  SDE interval);
* a **parameterisation**: how the noisy input is formed (``noise_scaling``,
  ``inverse_noise_scaling``), what the network is fed (``calculate_input``) and how x0
  follows from its output (``calculate_denoised``).

Kinds implemented here (names as ComfyUI's classes):

* :class:`DiscreteModelSampling` — ``ModelSamplingDiscrete`` with ``EPS`` or ``V_PREDICTION``
  (SD1.x, SD2.x, SDXL: the scaled-linear betas 0.00085..0.012 over 1000 steps, optionally
  rescaled to zero terminal SNR, ``zsnr``). Noisy latent ``x = x0 + sigma * noise``.
* :class:`FlowModelSampling` — ``ModelSamplingDiscreteFlow`` with ``CONST`` (SD3: ``shift`` 3.0,
  ``multiplier`` 1000; AuraFlow: ``shift`` 1.73, ``multiplier`` 1.0). ``x = sigma * noise +
  (1 - sigma) * x0`` with sigma in (0, 1].
* :class:`FluxModelSampling` — ``ModelSamplingFlux`` with ``CONST`` (Flux: ``shift`` is the
  ``mu`` of the time shift, from :func:`flux_shift` of the image size as the ModelSamplingFlux node
  computes it; the model's default is 1.15).

Float32 as ComfyUI: tables and per-sigma arithmetic are evaluated with float32 roundings in
ComfyUI's operation order (torch evaluates ``python_float * float32_tensor`` in float32, and
``python_float / tensor`` as ``tensor.reciprocal() * python_float``), so tables agree bit for bit
or to an ulp (tests/runtime/test_model_sampling.py compares with ComfyUI's recorded tables).

The half-log-SNR helpers (:meth:`ModelSampling.half_log_snr`,
:meth:`ModelSampling.sigma_from_half_log_snr`, :meth:`ModelSampling.offset_first_sigma`) are
``comfy/k_diffusion/sampling.py``'s ``sigma_to_half_log_snr``, ``half_log_snr_to_sigma`` and
``offset_first_sigma_for_snr``: for EPS ``lambda = -log(sigma)``, for CONST
``lambda = log((1 - sigma) / sigma)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .schedules import SD1_SCHEDULE, DiscreteSchedule, ScheduleError

__all__ = [
    "PREDICTIONS",
    "SD1_EPS",
    "DiscreteModelSampling",
    "FlowModelSampling",
    "FluxModelSampling",
    "ModelSampling",
    "ModelSamplingError",
    "as_model_sampling",
    "flux_shift",
    "flux_time_shift",
    "model_sampling_aura_flow",
    "model_sampling_discrete",
    "model_sampling_flux",
    "model_sampling_sd3",
    "time_snr_shift",
]

#: Parameterisations: ComfyUI's ``EPS``, ``V_PREDICTION`` and ``CONST`` classes.
PREDICTIONS: tuple[str, ...] = ("eps", "v_prediction", "const")

_F32 = np.float32


class ModelSamplingError(ScheduleError):
    """A model sampling that cannot be built (unknown kind, bad shift)."""


def _f32(value: float) -> float:
    return float(np.float32(value))


def time_snr_shift(alpha: float, t: np.ndarray | float) -> np.ndarray | float:
    """``comfy.model_sampling.time_snr_shift``: ``alpha t / (1 + (alpha - 1) t)``.

    Args:
        alpha: The shift (1.0 returns ``t`` unchanged).
        t: float32 array (evaluated in float32 like a tensor) or a Python float (double).

    Returns:
        The shifted time, same type as ``t``.
    """
    if alpha == 1.0:
        return t
    if isinstance(t, float):
        return alpha * t / (1 + (alpha - 1) * t)
    t = np.asarray(t, dtype=_F32)
    return (_F32(alpha) * t) / (_F32(1.0) + _F32(alpha - 1) * t)


def flux_time_shift(mu: float, sigma: float, t: np.ndarray | float) -> np.ndarray | float:
    """``comfy.model_sampling.flux_time_shift``: ``e^mu / (e^mu + (1 / t - 1) ** sigma)``.

    Args:
        mu: The Flux shift.
        sigma: The exponent (ComfyUI uses 1.0).
        t: float32 array (tensor semantics) or a Python float (double).

    Returns:
        The shifted time, same type as ``t``.
    """
    e = math.exp(mu)
    if isinstance(t, float):
        return e / (e + (1 / t - 1) ** sigma)
    t = np.asarray(t, dtype=_F32)
    # NOTE: torch evaluates `scalar / tensor` as tensor.reciprocal() * scalar (two roundings).
    with np.errstate(divide="ignore"):
        inner = (_F32(1.0) / t) * _F32(1.0) - _F32(1.0)
    if sigma != 1.0:
        inner = inner ** _F32(sigma)
    return (_F32(1.0) / (_F32(e) + inner)) * _F32(e)


def flux_shift(max_shift: float = 1.15, base_shift: float = 0.5, width: int = 1024,
               height: int = 1024) -> float:
    """The ``mu`` that the ModelSamplingFlux node derives from the image size.

    A line through ``(256, base_shift)`` and ``(4096, max_shift)`` evaluated at the number of
    2x2 latent patches, ``width * height / (8 * 8 * 2 * 2)``.

    Args:
        max_shift: Node input ``max_shift`` (default 1.15).
        base_shift: Node input ``base_shift`` (default 0.5).
        width: Image width in pixels (default 1024).
        height: Image height in pixels (default 1024).

    Returns:
        The shift (Python float, double precision like the node).
    """
    x1, x2 = 256, 4096
    mm = (max_shift - base_shift) / (x2 - x1)
    b = base_shift - mm * x1
    return (width * height / (8 * 8 * 2 * 2)) * mm + b


class ModelSampling:
    """Base class: a model's sigma table and parameterisation (see the module docstring).

    Attributes:
        prediction: One of :data:`PREDICTIONS`.
        memo: Results derived from it alone (schedules), by key.
        sigmas: float32 ascending sigma table.
        sigma_min: ``sigmas[0]`` as a Python float.
        sigma_max: ``sigmas[-1]`` as a Python float.
    """

    __slots__ = ("memo", "prediction", "sigma_max", "sigma_min", "sigmas")

    def __init__(self, prediction: str, sigmas: np.ndarray) -> None:
        if prediction not in PREDICTIONS:
            raise ModelSamplingError(
                f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}"
            )
        #: Results derived from this model sampling alone, by key (the schedulers' sigmas:
        #: ``calculate_sigmas``); a model sampling does not change once made.
        self.memo: dict[tuple[object, ...], np.ndarray] = {}
        self.prediction = prediction
        self.sigmas = np.asarray(sigmas, dtype=_F32)
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    # -- schedule -------------------------------------------------------------------------

    @property
    def is_const(self) -> bool:
        """True for CONST (flow matching) models."""
        return self.prediction == "const"

    def timestep(self, sigma: float | np.ndarray) -> float | np.ndarray:
        """The timestep the model is called with at ``sigma``."""
        raise NotImplementedError

    def sigma(self, timestep: float | np.ndarray) -> float | np.ndarray:
        """The sigma at a (fractional) timestep."""
        raise NotImplementedError

    def percent_to_sigma(self, percent: float) -> float:
        """The sigma at which a start/end percent of the sampling process lies."""
        raise NotImplementedError

    # -- parameterisation -----------------------------------------------------------------

    def calculate_input(self, sigma: float, x: np.ndarray) -> np.ndarray:
        """What the network is fed for the noisy latent ``x`` at ``sigma``.

        EPS/V: ``x / sqrt(sigma^2 + 1)``; CONST: ``x`` unchanged.
        """
        x = np.asarray(x, dtype=_F32)
        if self.is_const:
            return x
        s = _F32(sigma)
        return x / np.sqrt(s * s + _F32(1.0))

    def calculate_denoised(
        self, sigma: float, model_output: np.ndarray, model_input: np.ndarray
    ) -> np.ndarray:
        """x0 from the network's output (``model_output``) for the noisy ``model_input``.

        EPS and CONST: ``input - output * sigma``; V: ``input / (sigma^2 + 1) - output * sigma
        / sqrt(sigma^2 + 1)`` (``sigma_data`` 1).
        """
        out = np.asarray(model_output, dtype=_F32)
        x = np.asarray(model_input, dtype=_F32)
        s = _F32(sigma)
        if self.prediction == "v_prediction":
            denom = s * s + _F32(1.0)
            return x * _F32(1.0) / denom - out * s * _F32(1.0) / np.sqrt(denom)
        return x - out * s

    def noise_scaling(
        self, sigma: float, noise: np.ndarray, latent: np.ndarray, max_denoise: bool = False
    ) -> np.ndarray:
        """The noisy starting latent for ``sigma`` (``noise_scaling``).

        EPS/V: ``latent + noise * sigma``, or ``noise * sqrt(1 + sigma^2)`` at max denoise (the
        first sigma at or above ``sigma_max``); CONST: ``sigma * noise + (1 - sigma) * latent``
        (max denoise changes nothing).

        Args:
            sigma: The first sigma of the schedule.
            noise: Standard normal noise.
            latent: Model-space latent (zeros for txt2img).
            max_denoise: See above.

        Returns:
            float32 noisy latent.
        """
        noise = np.asarray(noise, dtype=_F32)
        latent = np.asarray(latent, dtype=_F32)
        s = _F32(sigma)
        if self.is_const:
            return s * noise + (_F32(1.0) - s) * latent
        scale = np.sqrt(_F32(1.0) + s * s) if max_denoise else s
        return noise * scale + latent

    def inverse_noise_scaling(self, sigma: float, latent: np.ndarray) -> np.ndarray:
        """Undo the scaling at the last sigma (``inverse_noise_scaling``).

        EPS/V: identity; CONST: ``latent / (1 - sigma)`` (identity for sigma 0).
        """
        latent = np.asarray(latent, dtype=_F32)
        if not self.is_const:
            return latent
        with np.errstate(divide="ignore", invalid="ignore"):
            return latent / (_F32(1.0) - _F32(sigma))

    def is_max_denoise(self, sigmas: np.ndarray | Sequence[float]) -> bool:
        """``Sampler.max_denoise``: the schedule starts at (rel. 1e-5) or above ``sigma_max``."""
        sigma = float(np.float32(sigmas[0]))
        return math.isclose(self.sigma_max, sigma, rel_tol=1e-05) or sigma > self.sigma_max

    # -- half-log-SNR (comfy/k_diffusion/sampling.py) ---------------------------------------

    def half_log_snr(self, sigma: float) -> float:
        """``sigma_to_half_log_snr`` in float32: ``-log sigma`` (EPS/V), ``-logit sigma`` (CONST).

        Returns +inf at sigma 0 (and -inf at sigma 1 for CONST), as torch does.
        """
        s = _f32(sigma)
        if s == 0.0:
            return math.inf
        if not self.is_const:
            return _f32(-math.log(s))
        one_minus = _f32(1.0 - s)
        if one_minus == 0.0:
            return -math.inf
        return -_f32(math.log(_f32(s / one_minus)))

    def sigma_from_half_log_snr(self, half_log_snr: float) -> float:
        """``half_log_snr_to_sigma`` in float32: ``exp(-lambda)`` or ``sigmoid(-lambda)``."""
        lam = float(half_log_snr)
        if not self.is_const:
            return 0.0 if lam == math.inf else _f32(math.exp(-lam))
        if lam > 88.8:
            return 0.0
        # NOTE: torch's scalar sigmoid, 1 / (1 + exp(-y)) with y = -lambda, rounded per step.
        return _f32(1.0 / _f32(1.0 + _f32(math.exp(lam))))

    def offset_first_sigma(self, sigmas: list[float]) -> list[float]:
        """``offset_first_sigma_for_snr``: a CONST schedule starting at sigma >= 1 starts at
        ``percent_to_sigma(1e-4)`` instead (its half-log-SNR would be -inf)."""
        if len(sigmas) <= 1 or not self.is_const or sigmas[0] < 1.0:
            return sigmas
        return [_f32(self.percent_to_sigma(1e-4)), *sigmas[1:]]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(prediction={self.prediction!r}, "
            f"sigma_min={self.sigma_min:.6g}, sigma_max={self.sigma_max:.6g})"
        )


class DiscreteModelSampling(ModelSampling):
    """``ModelSamplingDiscrete`` + ``EPS``/``V_PREDICTION`` over a :class:`DiscreteSchedule`.

    Args:
        schedule: The discrete table (default: SD1/SD2/SDXL's scaled-linear schedule).
        prediction: ``"eps"`` or ``"v_prediction"``.
    """

    __slots__ = ("log_sigmas", "schedule")

    def __init__(
        self, schedule: DiscreteSchedule | None = None, prediction: str = "eps"
    ) -> None:
        if prediction not in ("eps", "v_prediction"):
            raise ModelSamplingError(
                f"a discrete model sampling is 'eps' or 'v_prediction', got {prediction!r}"
            )
        self.schedule = schedule or SD1_SCHEDULE
        super().__init__(prediction, self.schedule.sigmas)
        self.log_sigmas = self.schedule.log_sigmas

    def timestep(self, sigma: float | np.ndarray) -> float | np.ndarray:
        """Nearest table index to ``sigma`` in log space (an integer-valued float)."""
        return self.schedule.timestep(sigma)

    def sigma(self, timestep: float | np.ndarray) -> float | np.ndarray:
        """Log-linear interpolation of the table."""
        return self.schedule.sigma(timestep)

    def percent_to_sigma(self, percent: float) -> float:
        """``999999999.9`` at 0, ``0`` at 1, else ``sigma(999 (1 - percent))`` (float32)."""
        return self.schedule.percent_to_sigma(percent)


class FlowModelSampling(ModelSampling):
    """``ModelSamplingDiscreteFlow`` + ``CONST`` (SD3, AuraFlow, and other flow models).

    Args:
        shift: The time shift (SD3 3.0; AuraFlow 1.73).
        multiplier: Timestep multiplier (SD3 1000; AuraFlow 1.0).
        timesteps: Table size (1000).
    """

    __slots__ = ("multiplier", "shift")

    def __init__(self, shift: float = 1.0, multiplier: float = 1000, timesteps: int = 1000) -> None:
        if not shift > 0:
            raise ModelSamplingError(f"a flow model's shift must be > 0, got {shift}")
        self.shift = float(shift)
        self.multiplier = float(multiplier)
        # NOTE: arange(1, T + 1) / T in float32, times the multiplier, then sigma() divides again.
        idx = np.arange(1, timesteps + 1, dtype=_F32) / _F32(timesteps)
        super().__init__("const", self.sigma(idx * _F32(self.multiplier)))

    def timestep(self, sigma: float | np.ndarray) -> float | np.ndarray:
        """``sigma * multiplier`` (float32)."""
        out = np.asarray(sigma, dtype=_F32) * _F32(self.multiplier)
        return float(out) if np.ndim(sigma) == 0 else out

    def sigma(self, timestep: float | np.ndarray) -> float | np.ndarray:
        """``time_snr_shift(shift, timestep / multiplier)`` (float32)."""
        t = np.asarray(timestep, dtype=_F32) / _F32(self.multiplier)
        out = np.asarray(time_snr_shift(self.shift, t), dtype=_F32)
        return float(out) if np.ndim(timestep) == 0 else out

    def percent_to_sigma(self, percent: float) -> float:
        """1 at percent 0, 0 at 1, else ``time_snr_shift(shift, 1 - percent)`` (double)."""
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(time_snr_shift(self.shift, 1.0 - percent))


class FluxModelSampling(ModelSampling):
    """``ModelSamplingFlux`` + ``CONST``: timestep = sigma, Flux's exponential time shift.

    Args:
        shift: ``mu`` of the time shift (the model default 1.15; the ModelSamplingFlux node
            computes it from the image size, :func:`flux_shift`).
        timesteps: Table size (10000).
    """

    __slots__ = ("shift",)

    def __init__(self, shift: float = 1.15, timesteps: int = 10000) -> None:
        self.shift = float(shift)
        idx = np.arange(1, timesteps + 1, dtype=_F32) / _F32(timesteps)
        super().__init__("const", self.sigma(idx))

    def timestep(self, sigma: float | np.ndarray) -> float | np.ndarray:
        """The sigma itself."""
        out = np.asarray(sigma, dtype=_F32)
        return float(out) if np.ndim(sigma) == 0 else out

    def sigma(self, timestep: float | np.ndarray) -> float | np.ndarray:
        """``flux_time_shift(shift, 1.0, timestep)`` (float32)."""
        out = np.asarray(flux_time_shift(self.shift, 1.0, np.asarray(timestep, _F32)), dtype=_F32)
        return float(out) if np.ndim(timestep) == 0 else out

    def percent_to_sigma(self, percent: float) -> float:
        """1 at percent 0, 0 at 1, else ``flux_time_shift(shift, 1, 1 - percent)`` (double)."""
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(flux_time_shift(self.shift, 1.0, 1.0 - percent))


#: SD1.x / SD2.x-base / SDXL epsilon models (the runtime's default).
SD1_EPS = DiscreteModelSampling()


def model_sampling_discrete(sampling: str = "eps", zsnr: bool = False) -> DiscreteModelSampling:
    """The ModelSamplingDiscrete node's model sampling for the SD1/SD2/SDXL table.

    Args:
        sampling: ``"eps"`` or ``"v_prediction"`` (the node's ``lcm``, ``x0`` and
            ``img_to_img`` are not supported).
        zsnr: Rescale the table to zero terminal SNR.

    Returns:
        The model sampling.

    Raises:
        ModelSamplingError: for an unsupported ``sampling``.
    """
    if sampling not in ("eps", "v_prediction"):
        raise ModelSamplingError(
            f"ModelSamplingDiscrete sampling {sampling!r} is not supported; use 'eps' or "
            "'v_prediction'"
        )
    schedule = DiscreteSchedule.linear(zsnr=True) if zsnr else SD1_SCHEDULE
    return DiscreteModelSampling(schedule, sampling)


def model_sampling_sd3(shift: float = 3.0, multiplier: float = 1000) -> FlowModelSampling:
    """The ModelSamplingSD3 node (and SD3's default with ``shift`` 3.0)."""
    return FlowModelSampling(shift=shift, multiplier=multiplier)


def model_sampling_aura_flow(shift: float = 1.73) -> FlowModelSampling:
    """The ModelSamplingAuraFlow node (multiplier 1.0; AuraFlow's default ``shift`` 1.73)."""
    return FlowModelSampling(shift=shift, multiplier=1.0)


def model_sampling_flux(max_shift: float = 1.15, base_shift: float = 0.5, width: int = 1024,
                        height: int = 1024) -> FluxModelSampling:
    """The ModelSamplingFlux node: Flux sampling with ``mu = flux_shift(...)``."""
    return FluxModelSampling(shift=flux_shift(max_shift, base_shift, width, height))


def as_model_sampling(schedule: DiscreteSchedule | ModelSampling | None) -> ModelSampling:
    """Accept the older ``schedule=`` arguments: None (SD1 eps), a table, or a model sampling.

    Args:
        schedule: None, a :class:`DiscreteSchedule` (read as an EPS model) or a model sampling.

    Returns:
        A :class:`ModelSampling`.
    """
    if schedule is None:
        return SD1_EPS
    if isinstance(schedule, ModelSampling):
        return schedule
    if isinstance(schedule, DiscreteSchedule):
        return SD1_EPS if schedule is SD1_SCHEDULE else DiscreteModelSampling(schedule, "eps")
    raise ModelSamplingError(
        f"expected a ModelSampling or DiscreteSchedule, got {type(schedule).__name__}"
    )
