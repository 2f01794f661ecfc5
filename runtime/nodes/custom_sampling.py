"""Custom sampling: SAMPLER, SIGMAS, NOISE and GUIDER values and the nodes that combine them.

ComfyUI's ``comfy_extras/nodes_custom_sampler.py`` (and ``nodes_align_your_steps.py``) split a
KSampler into parts: a sampler (``KSamplerSelect`` or an option node such as
``SamplerEulerAncestral``), a schedule (``BasicScheduler``, ``KarrasScheduler``,
``SDTurboScheduler`` … and the sigma utilities), a noise source (``RandomNoise`` /
``DisableNoise``) and a guider (``BasicGuider``, ``CFGGuider``, ``DualCFGGuider``), which
``SamplerCustom`` or ``SamplerCustomAdvanced`` run. The values are plain data
(:class:`~comfyc.runtime.samplers.SamplerSpec`, float32 sigma arrays,
:class:`~comfyc.runtime.samplers.RandomNoise`, :class:`~comfyc.runtime.guiders.Guider`); the
numerics are :mod:`comfyc.runtime.samplers` and :mod:`comfyc.runtime.schedules`. Schedules
whose inputs are constants are folded at compile time (``FoldedSigmas``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ProgramError
from .registry import NodeDef, StageCall
from .sampling import SAMPLER_NAMES, SCHEDULER_NAMES, denoiser_for, progress_callback
from .schema import (
    MAX_SEED,
    bool_input,
    combo,
    float_input,
    int_input,
    link,
    outputs,
    schema,
    string_input,
)

if TYPE_CHECKING:
    from ..values import ModelRef

__all__ = ["NODES", "fix_empty_latent_channels"]

_SCHEDULERS = "model/sampling/schedulers"
_SAMPLERS = "model/sampling/samplers"
_SIGMAS = "model/sampling/sigmas"
_NOISE = "model/sampling/noise"
_GUIDERS = "model/sampling/guiders"
_CUSTOM = "model/sampling/custom"
_MODULE = "comfy_extras.nodes_custom_sampler"
_COND = "CONDITIONING"
_SIGMA_MAX = 14.614642
_SIGMA_MIN = 0.0291675


def fix_empty_latent_channels(model: ModelRef, samples: Any) -> Any:
    """ComfyUI's ``fix_empty_latent_channels``: an all-zero latent made for another family
    (``EmptyLatentImage``'s 4 channels before a 16-channel SD3/Flux model) takes the model's
    latent channels; any other latent is returned as it is."""
    import numpy as np

    samples = np.asarray(samples, dtype=np.float32)
    channels = int(getattr(model, "latent_channels", 4) or 4)
    if samples.ndim == 4 and samples.shape[1] != channels and not np.any(samples):
        return np.zeros((samples.shape[0], channels, *samples.shape[2:]), dtype=np.float32)
    return samples


def _sigmas_array(sigmas: Any, node: str) -> Any:
    import numpy as np

    out = np.asarray(sigmas, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(out)):
        raise ProgramError(f"{node}: the SIGMAS input holds values that are not finite numbers")
    return out


def _sample_custom(ctx: Any, model: ModelRef, denoiser: Any, noise: Any, sampler: Any,
                   sigmas: Any, latent: dict[str, Any], node: str) -> tuple[Any, ...]:
    from ..samplers import sample_custom
    from .sampling import run_noise_mode

    res = sample_custom(denoiser, latent["samples"], sampler, _sigmas_array(sigmas, node), noise,
                        batch_index=latent.get("batch_index"),
                        noise_mask=latent.get("noise_mask"), model_sampling=model.sampling,
                        latent_scale=model.latent_scale, latent_shift=model.latent_shift,
                        callback=progress_callback(ctx), noise_mode=run_noise_mode(ctx, sampler))
    out = dict(latent)
    out["samples"] = res.output
    denoised = dict(latent)
    denoised["samples"] = res.denoised_output
    return out, denoised


def _latent_for(model: ModelRef, latent: dict[str, Any]) -> dict[str, Any]:
    out = dict(latent)
    out["samples"] = fix_empty_latent_channels(model, latent["samples"])
    return out


def _sampler_custom(ctx: Any, *, model: ModelRef, add_noise: bool = True, noise_seed: int = 0,
                    cfg: float = 8.0, positive: list, negative: list, sampler: Any,
                    sigmas: Any, latent_image: dict[str, Any]) -> tuple[Any, ...]:
    from ..samplers import DisableNoise, RandomNoise

    latent = _latent_for(model, latent_image)
    noise = RandomNoise(int(noise_seed)) if add_noise else DisableNoise(seed=int(noise_seed))
    denoiser = denoiser_for(model, positive, negative, cfg, latent["samples"].shape)
    return _sample_custom(ctx, model, denoiser, noise, sampler, sigmas, latent, "SamplerCustom")


def _sampler_custom_advanced(ctx: Any, *, noise: Any, guider: Any, sampler: Any, sigmas: Any,
                             latent_image: dict[str, Any]) -> tuple[Any, ...]:
    from ..guiders import Guider

    if not isinstance(guider, Guider):
        raise ProgramError("SamplerCustomAdvanced's guider input is not a GUIDER; connect a "
                           "BasicGuider, CFGGuider or DualCFGGuider")
    latent = _latent_for(guider.model, latent_image)
    denoiser = guider.denoiser(latent["samples"].shape)
    return _sample_custom(ctx, guider.model, denoiser, noise, sampler, sigmas, latent,
                          "SamplerCustomAdvanced")


# ------------------------------------------------------------------------------ guiders


def _basic_guider(ctx: Any, *, model: ModelRef, conditioning: list) -> tuple[Any, ...]:
    from ..guiders import Guider

    return (Guider(model, "basic", list(conditioning)),)


def _cfg_guider(ctx: Any, *, model: ModelRef, positive: list, negative: list,
                cfg: float = 8.0) -> tuple[Any, ...]:
    from ..guiders import Guider

    return (Guider(model, "cfg", list(positive), list(negative), float(cfg)),)


def _dual_cfg_guider(ctx: Any, *, model: ModelRef, cond1: list, cond2: list, negative: list,
                     cfg_conds: float = 8.0, cfg_cond2_negative: float = 8.0,
                     style: str = "regular") -> tuple[Any, ...]:
    from ..guiders import Guider

    if style not in ("regular", "nested"):
        raise ProgramError(f"DualCFGGuider style {style!r} is not one of regular, nested")
    return (Guider(model, "dual_cfg", list(cond1), list(negative), float(cfg_conds),
                   list(cond2), float(cfg_cond2_negative), style == "nested"),)


# ------------------------------------------------------------------------------ noise


def _random_noise(ctx: Any, *, noise_seed: int = 0) -> tuple[Any, ...]:
    from ..samplers import RandomNoise

    return (RandomNoise(int(noise_seed)),)


def _disable_noise(ctx: Any) -> tuple[Any, ...]:
    from ..samplers import DisableNoise

    return (DisableNoise(),)


# ------------------------------------------------------------------------------ samplers


def _sampler_op(function: str, *, with_model: bool = False) -> Any:
    """An op building a SAMPLER with :mod:`comfyc.runtime.samplers`' ``function``."""

    def op(ctx: Any, **kw: Any) -> tuple[Any, ...]:
        from .. import samplers

        if with_model:
            kw["model_sampling"] = kw.pop("model").sampling
        try:
            return (getattr(samplers, function)(**kw),)
        except samplers.SamplerError as exc:
            raise ProgramError(str(exc)) from None

    op.__name__ = f"_{function}"
    return op


# ------------------------------------------------------------------------------ schedules


def _schedule_op(function: str, *, with_model: bool = False) -> Any:
    """An op computing SIGMAS with :mod:`comfyc.runtime.schedules`' ``function``."""

    def op(ctx: Any, **kw: Any) -> tuple[Any, ...]:
        from .. import schedules

        if with_model:
            kw["model_sampling"] = kw.pop("model").sampling
        try:
            result = getattr(schedules, function)(**kw)
        except schedules.ScheduleError as exc:
            raise ProgramError(str(exc)) from None
        return result if isinstance(result, tuple) else (result,)

    op.__name__ = f"_{function}"
    return op


def _sigma_range() -> list[Any]:
    return [float_input("sigma_max", _SIGMA_MAX, 0.0, 5000.0, 0.01),
            float_input("sigma_min", _SIGMA_MIN, 0.0, 5000.0, 0.01)]


def _eta_noise(eta_max: float = 100.0, s_noise_max: float = 100.0) -> list[Any]:
    return [float_input("eta", 1.0, 0.0, eta_max, 0.01),
            float_input("s_noise", 1.0, 0.0, s_noise_max, 0.01)]


_NOISE_DEVICE = combo("noise_device", ["gpu", "cpu"])


def _scheduler(class_type: str, inputs: list[Any], function: str, *, with_model: bool = False,
               fold: bool = True, category: str = _SCHEDULERS, module: str = _MODULE,
               display: str = "") -> NodeDef:
    return NodeDef(schema(class_type, inputs, outputs("SIGMAS"), display or class_type, category,
                          python_module=module),
                   run=_schedule_op(function, with_model=with_model),
                   fold=fold and not with_model, binding="sigmas")


def _sampler(class_type: str, inputs: list[Any], function: str, *, with_model: bool = False,
             display: str = "") -> NodeDef:
    return NodeDef(schema(class_type, inputs, outputs("SAMPLER"), display or class_type,
                          _SAMPLERS, python_module=_MODULE),
                   run=_sampler_op(function, with_model=with_model), binding="sampler")


NODES: list[NodeDef] = [
    # -- samplers
    _sampler("KSamplerSelect", [combo("sampler_name", SAMPLER_NAMES)], "ksampler_select"),
    _sampler("SamplerDPMPP_3M_SDE", [*_eta_noise(), _NOISE_DEVICE], "sampler_dpmpp_3m_sde"),
    _sampler("SamplerDPMPP_2M_SDE", [combo("solver_type", ["midpoint", "heun"]), *_eta_noise(),
                                     _NOISE_DEVICE], "sampler_dpmpp_2m_sde"),
    _sampler("SamplerDPMPP_SDE", [*_eta_noise(), float_input("r", 0.5, 0.0, 100.0, 0.01),
             _NOISE_DEVICE],
             "sampler_dpmpp_sde"),
    _sampler("SamplerDPMPP_2S_Ancestral", _eta_noise(), "sampler_dpmpp_2s_ancestral"),
    _sampler("SamplerEulerAncestral", _eta_noise(), "sampler_euler_ancestral"),
    _sampler("SamplerEulerAncestralCFGPP", _eta_noise(1.0, 10.0),
             "sampler_euler_ancestral_cfg_pp", display="SamplerEulerAncestralCFG++"),
    _sampler("SamplerLMS", [int_input("order", 4, 1, 100)], "sampler_lms"),
    _sampler("SamplerDPMAdaptative", [
        int_input("order", 3, 2, 3),
        float_input("rtol", 0.05, 0.0, 100.0, 0.01),
        float_input("atol", 0.0078, 0.0, 100.0, 0.01),
        float_input("h_init", 0.05, 0.0, 100.0, 0.01),
        float_input("pcoeff", 0.0, 0.0, 100.0, 0.01),
        float_input("icoeff", 1.0, 0.0, 100.0, 0.01),
        float_input("dcoeff", 0.0, 0.0, 100.0, 0.01),
        float_input("accept_safety", 0.81, 0.0, 100.0, 0.01),
        float_input("eta", 0.0, 0.0, 100.0, 0.01),
        float_input("s_noise", 1.0, 0.0, 100.0, 0.01),
    ], "sampler_dpm_adaptative"),
    _sampler("SamplerER_SDE", [
        combo("solver_type", ["ER-SDE", "Reverse-time SDE", "ODE"]),
        int_input("max_stage", 3, 1, 3), *_eta_noise(),
    ], "sampler_er_sde"),
    _sampler("SamplerSASolver", [
        link("model", "MODEL"), float_input("eta", 1.0, 0.0, 10.0, 0.01),
        float_input("sde_start_percent", 0.2, 0.0, 1.0, 0.001),
        float_input("sde_end_percent", 0.8, 0.0, 1.0, 0.001),
        float_input("s_noise", 1.0, 0.0, 100.0, 0.01),
        int_input("predictor_order", 3, 1, 6), int_input("corrector_order", 4, 0, 6),
        bool_input("use_pece", False), bool_input("simple_order_2", False),
    ], "sampler_sa_solver", with_model=True),
    _sampler("SamplerSEEDS2", [
        combo("solver_type", ["phi_1", "phi_2"]), *_eta_noise(),
        float_input("r", 0.5, 0.01, 1.0, 0.01),
    ], "sampler_seeds_2"),
    # -- schedules
    _scheduler("BasicScheduler", [
        link("model", "MODEL"), combo("scheduler", SCHEDULER_NAMES),
        int_input("steps", 20, 1, 10000), float_input("denoise", 1.0, 0.0, 1.0, 0.01),
    ], "basic_scheduler", with_model=True),
    _scheduler("KarrasScheduler", [int_input("steps", 20, 1, 10000), *_sigma_range(),
                                   float_input("rho", 7.0, 0.0, 100.0, 0.01)],
               "karras_scheduler"),
    _scheduler("ExponentialScheduler", [int_input("steps", 20, 1, 10000), *_sigma_range()],
               "exponential_scheduler"),
    _scheduler("PolyexponentialScheduler", [
        int_input("steps", 20, 1, 10000), *_sigma_range(),
        float_input("rho", 1.0, 0.0, 100.0, 0.01),
    ], "polyexponential_scheduler"),
    _scheduler("LaplaceScheduler", [
        int_input("steps", 20, 1, 10000), *_sigma_range(),
        float_input("mu", 0.0, -10.0, 10.0, 0.1),
        float_input("beta", 0.5, 0.0, 10.0, 0.1),
    ], "laplace_scheduler"),
    _scheduler("SDTurboScheduler", [
        link("model", "MODEL"), int_input("steps", 1, 1, 10),
        float_input("denoise", 1.0, 0.0, 1.0, 0.01),
    ], "sd_turbo_scheduler", with_model=True),
    _scheduler("BetaSamplingScheduler", [
        link("model", "MODEL"), int_input("steps", 20, 1, 10000),
        float_input("alpha", 0.6, 0.0, 50.0, 0.01),
        float_input("beta", 0.6, 0.0, 50.0, 0.01),
    ], "beta_sampling_scheduler", with_model=True),
    _scheduler("VPScheduler", [
        int_input("steps", 20, 1, 10000),
        float_input("beta_d", 19.9, 0.0, 5000.0, 0.01),
        float_input("beta_min", 0.1, 0.0, 5000.0, 0.01),
        float_input("eps_s", 0.001, 0.0, 1.0, 0.0001),
    ], "vp_scheduler"),
    _scheduler("AlignYourStepsScheduler", [
        combo("model_type", ["SD1", "SDXL", "SVD"]), int_input("steps", 10, 1, 10000),
        float_input("denoise", 1.0, 0.0, 1.0, 0.01),
    ], "align_your_steps_scheduler", module="comfy_extras.nodes_align_your_steps"),
    # -- sigma utilities
    NodeDef(schema("SplitSigmas", [link("sigmas", "SIGMAS"), int_input("step", 0, 0, 10000)],
                   outputs("high_sigmas:SIGMAS", "low_sigmas:SIGMAS"), "SplitSigmas", _SIGMAS,
                   python_module=_MODULE),
            run=_schedule_op("split_sigmas")),
    NodeDef(schema("SplitSigmasDenoise", [link("sigmas", "SIGMAS"),
                                          float_input("denoise", 1.0, 0.0, 1.0, 0.01)],
                   outputs("high_sigmas:SIGMAS", "low_sigmas:SIGMAS"), "SplitSigmasDenoise",
                   _SIGMAS, python_module=_MODULE),
            run=_schedule_op("split_sigmas_denoise")),
    _scheduler("FlipSigmas", [link("sigmas", "SIGMAS")], "flip_sigmas", category=_SIGMAS),
    _scheduler("SetFirstSigma", [link("sigmas", "SIGMAS"),
                                 float_input("sigma", 136.0, 0.0, 20000.0, 0.001)],
               "set_first_sigma", category=_SIGMAS),
    _scheduler("ManualSigmas", [string_input("sigmas", "1, 0.5", multiline=False)],
               "manual_sigmas", category=_SIGMAS),
    # -- noise
    NodeDef(schema("RandomNoise", [int_input("noise_seed", 0, 0, MAX_SEED,
                                             control_after_generate=True)],
                   outputs("NOISE"), "RandomNoise", _NOISE, python_module=_MODULE),
            run=_random_noise, seed_input="noise_seed", binding="noise"),
    NodeDef(schema("DisableNoise", [], outputs("NOISE"), "DisableNoise", _NOISE,
                   python_module=_MODULE),
            run=_disable_noise, binding="noise"),
    # -- guiders
    NodeDef(schema("BasicGuider", [link("model", "MODEL"), link("conditioning", _COND)],
                   outputs("GUIDER"), "Basic Guider", _GUIDERS, python_module=_MODULE),
            run=_basic_guider, calls=(StageCall("unet", "model"),), binding="guider"),
    NodeDef(schema("CFGGuider", [
        link("model", "MODEL"), link("positive", _COND), link("negative", _COND),
        float_input("cfg", 8.0, 0.0, 100.0, 0.1),
    ], outputs("GUIDER"), "CFG Guider", _GUIDERS, python_module=_MODULE),
        run=_cfg_guider, calls=(StageCall("unet", "model"),), binding="guider"),
    NodeDef(schema("DualCFGGuider", [
        link("model", "MODEL"), link("cond1", _COND), link("cond2", _COND),
        link("negative", _COND),
        float_input("cfg_conds", 8.0, 0.0, 100.0, 0.1),
        float_input("cfg_cond2_negative", 8.0, 0.0, 100.0, 0.1),
        combo("style", ["regular", "nested"]),
    ], outputs("GUIDER"), "Dual CFG Guider", _GUIDERS, python_module=_MODULE),
        run=_dual_cfg_guider, calls=(StageCall("unet", "model"),), binding="guider"),
    # -- samplers that run
    NodeDef(schema("SamplerCustom", [
        link("model", "MODEL"), bool_input("add_noise", True),
        int_input("noise_seed", 0, 0, MAX_SEED, control_after_generate=True),
        float_input("cfg", 8.0, 0.0, 100.0, 0.1),
        link("positive", _COND), link("negative", _COND), link("sampler", "SAMPLER"),
        link("sigmas", "SIGMAS"), link("latent_image", "LATENT"),
    ], outputs("output:LATENT", "denoised_output:LATENT"), "SamplerCustom", _CUSTOM,
        python_module=_MODULE),
        run=_sampler_custom, calls=(StageCall("unet", "model"),), seed_input="noise_seed"),
    NodeDef(schema("SamplerCustomAdvanced", [
        link("noise", "NOISE"), link("guider", "GUIDER"), link("sampler", "SAMPLER"),
        link("sigmas", "SIGMAS"), link("latent_image", "LATENT"),
    ], outputs("output:LATENT", "denoised_output:LATENT"), "SamplerCustomAdvanced", _CUSTOM,
        python_module=_MODULE),
        run=_sampler_custom_advanced),
]
