"""Sampling nodes: KSampler, KSamplerAdvanced and the model-sampling patches.

The samplers, schedules and CFG are numpy code shared by every backend
(:mod:`comfyc.runtime.samplers`, :mod:`comfyc.runtime.schedules`, :mod:`comfyc.runtime.cfg`);
these ops wire them to the MODEL's UNet stage. A sampler whose schedule inputs are constants
gets its sigmas precomputed by the compiler (the ``sigmas`` argument).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import ProgramError
from .registry import NodeDef, StageCall
from .schema import (
    MAX_RESOLUTION,
    MAX_SEED,
    bool_input,
    combo,
    float_input,
    int_input,
    link,
    outputs,
    schema,
)

if TYPE_CHECKING:
    import numpy as np

    from ..values import ModelRef

__all__ = ["NODES", "MODEL_SAMPLING_SPECS", "SAMPLER_NAMES", "SCHEDULER_NAMES",
           "advanced_schedule", "denoiser_for", "progress_callback", "run_noise_mode"]

#: ``KSampler.SAMPLERS`` in ComfyUI's combo order (``comfy/samplers.py``).
SAMPLER_NAMES: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "exp_heun_2_x0", "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast",
    "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde",
    "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
    "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
    "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)

#: ``SCHEDULER_HANDLERS`` in ComfyUI's combo order.
SCHEDULER_NAMES: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
)


def advanced_schedule(scheduler: str, steps: int, sampler_name: str, start_at_step: int,
                      end_at_step: int, leftover: bool, model_sampling: Any = None
                      ) -> np.ndarray | None:
    """KSamplerAdvanced's sigmas: the full schedule cut to the step window."""
    from ..schedules import advanced_sigmas, ksampler_sigmas

    full = ksampler_sigmas(scheduler, steps, sampler_name, 1.0, schedule=model_sampling)
    return advanced_sigmas(full, start_at_step, end_at_step, leftover)


def denoiser_for(model: ModelRef, positive: list[dict[str, Any]],
                 negative: list[dict[str, Any]] | None, cfg: float,
                 latent_shape: Any) -> Any:
    """The CFG denoiser of a MODEL: its stage, model sampling and extra model inputs."""
    from ..cfg import make_denoiser
    from ..families import model_conds

    if model.unet is None:
        raise ProgramError(f"the MODEL from {model.name or 'the checkpoint'} has no UNet stage in "
                           f"this program (it was not compiled in); compile the workflow again")
    return make_denoiser(model.unet, positive, negative, float(cfg), latent_shape,
                         model_sampling=model.sampling, model_conds=model_conds(model.family))


def run_noise_mode(ctx: Any, sampler: Any) -> str:
    """The run's noise mode for a sampler (a name or a SamplerSpec); notes it for the saved
    PNGs when it changes what the sampler draws."""
    from ..noise import DEFAULT_NOISE_MODE
    from ..samplers import noise_mode_matters

    mode = getattr(ctx, "noise_mode", DEFAULT_NOISE_MODE)
    if noise_mode_matters(sampler) and hasattr(ctx, "noise_mode_used"):
        ctx.noise_mode_used()
    return mode


def progress_callback(ctx: Any) -> Any:
    """``callback(step, x0, x, total)`` reporting a sampler's steps and previews to ``ctx``;
    None when ``ctx`` takes neither (nothing to call between the steps)."""
    if ctx.preview is None and ctx.progress is None:
        return None
    op = ctx.current
    label = f"#{op.id} {op.title or op.op}" if op else "sampling"

    def callback(step: int, x0: Any, x: Any, total: int) -> None:
        if ctx.preview is not None:
            ctx.preview(x0)
        if ctx.progress is not None:
            ctx.progress(label, step + 1, total)

    return callback


def _sample(ctx: Any, model: ModelRef, seed: int, cfg: float, sampler_name: str,
            positive: list[dict[str, Any]], negative: list[dict[str, Any]],
            latent: dict[str, Any], sigmas: np.ndarray | None, add_noise: bool = True
            ) -> tuple[Any, ...]:
    import numpy as np

    from ..samplers import ksampler

    samples = np.asarray(latent["samples"], dtype=np.float32)
    denoiser = denoiser_for(model, positive, negative, cfg, samples.shape)
    out = ksampler(denoiser, samples, int(seed), sigmas, sampler_name, add_noise=add_noise,
                   batch_index=latent.get("batch_index"), noise_mask=latent.get("noise_mask"),
                   latent_scale=model.latent_scale, latent_shift=model.latent_shift,
                   model_sampling=model.sampling, callback=progress_callback(ctx),
                   noise_mode=run_noise_mode(ctx, sampler_name))
    result = dict(latent)
    result["samples"] = out
    return (result,)


def _ksampler(ctx: Any, *, model: ModelRef, seed: int, steps: int, cfg: float,
              sampler_name: str, scheduler: str, positive: list, negative: list,
              latent_image: dict[str, Any], denoise: float = 1.0, sigmas: Any = None
              ) -> tuple[Any, ...]:
    import numpy as np

    from ..schedules import ksampler_sigmas

    if sigmas is None:
        sigmas = ksampler_sigmas(scheduler, int(steps), sampler_name, float(denoise),
                                 schedule=model.sampling)
    return _sample(ctx, model, seed, cfg, sampler_name, positive, negative, latent_image,
                   np.asarray(sigmas, dtype=np.float32))


def _ksampler_advanced(ctx: Any, *, model: ModelRef, add_noise: str, noise_seed: int,
                       steps: int, cfg: float, sampler_name: str, scheduler: str,
                       positive: list, negative: list, latent_image: dict[str, Any],
                       start_at_step: int = 0, end_at_step: int = 10000,
                       return_with_leftover_noise: str = "disable", sigmas: Any = None
                       ) -> tuple[Any, ...]:
    import numpy as np

    if sigmas is None:
        sigmas = advanced_schedule(scheduler, int(steps), sampler_name, int(start_at_step),
                                   int(end_at_step), return_with_leftover_noise == "enable",
                                   model.sampling)
    return _sample(ctx, model, noise_seed, cfg, sampler_name, positive, negative, latent_image,
                   None if sigmas is None else np.asarray(sigmas, dtype=np.float32),
                   add_noise=add_noise == "enable")


def _discrete_spec(sampling: str = "eps", zsnr: bool = False) -> dict[str, Any]:
    if sampling not in ("eps", "v_prediction"):
        raise ProgramError(f"ModelSamplingDiscrete sampling={sampling!r} is not supported yet; "
                           f"supported: eps and v_prediction (with or without zsnr)")
    return {"kind": "discrete", "prediction": sampling, "zsnr": bool(zsnr)}


def _sd3_spec(shift: float = 3.0) -> dict[str, Any]:
    return {"kind": "sd3", "shift": float(shift), "multiplier": 1000.0}


def _aura_flow_spec(shift: float = 1.73) -> dict[str, Any]:
    return {"kind": "aura_flow", "shift": float(shift)}


def _flux_spec(max_shift: float = 1.15, base_shift: float = 0.5, width: int = 1024,
               height: int = 1024) -> dict[str, Any]:
    return {"kind": "flux", "max_shift": float(max_shift), "base_shift": float(base_shift),
            "width": int(width), "height": int(height)}


#: The model-sampling patch nodes: class → ``spec(**widget inputs)``, the description
#: :func:`~comfyc.runtime.values.model_sampling_from_json` reads (the compiler uses these
#: to precompute schedules for a patched MODEL).
MODEL_SAMPLING_SPECS: dict[str, Any] = {
    "ModelSamplingDiscrete": _discrete_spec,
    "ModelSamplingSD3": _sd3_spec,
    "ModelSamplingAuraFlow": _aura_flow_spec,
    "ModelSamplingFlux": _flux_spec,
}


def _model_sampling_op(class_type: str) -> Any:
    spec_of = MODEL_SAMPLING_SPECS[class_type]

    def op(ctx: Any, *, model: ModelRef, **widgets: Any) -> tuple[Any, ...]:
        return (replace(model, model_sampling=spec_of(**widgets)),)

    op.__name__ = f"_{class_type}"
    return op


_UNET = (StageCall("unet", "model"),)
_COND = "CONDITIONING"

NODES: list[NodeDef] = [
    NodeDef(schema("KSampler", [
        link("model", "MODEL"), int_input("seed", 0, 0, MAX_SEED, control_after_generate=True),
        int_input("steps", 20, 1, 10000), float_input("cfg", 8.0, 0.0, 100.0, 0.1),
        combo("sampler_name", SAMPLER_NAMES), combo("scheduler", SCHEDULER_NAMES),
        link("positive", _COND), link("negative", _COND), link("latent_image", "LATENT"),
        float_input("denoise", 1.0, 0.0, 1.0),
    ], outputs("LATENT"), "KSampler", "sampling"),
        run=_ksampler, calls=_UNET, seed_input="seed", binding="sampler"),
    NodeDef(schema("KSamplerAdvanced", [
        link("model", "MODEL"), combo("add_noise", ["enable", "disable"]),
        int_input("noise_seed", 0, 0, MAX_SEED, control_after_generate=True),
        int_input("steps", 20, 1, 10000), float_input("cfg", 8.0, 0.0, 100.0, 0.1),
        combo("sampler_name", SAMPLER_NAMES), combo("scheduler", SCHEDULER_NAMES),
        link("positive", _COND), link("negative", _COND), link("latent_image", "LATENT"),
        int_input("start_at_step", 0, 0, 10000), int_input("end_at_step", 10000, 0, 10000),
        combo("return_with_leftover_noise", ["disable", "enable"]),
    ], outputs("LATENT"), "KSampler (Advanced)", "sampling"),
        run=_ksampler_advanced, calls=_UNET, seed_input="noise_seed", binding="sampler"),
    NodeDef(schema("ModelSamplingDiscrete", [
        link("model", "MODEL"),
        combo("sampling", ["eps", "v_prediction", "lcm", "x0", "img_to_img"]),
        bool_input("zsnr", False),
    ], outputs("MODEL"), "ModelSamplingDiscrete", "advanced/model",
        python_module="comfy_extras.nodes_model_advanced"),
        run=_model_sampling_op("ModelSamplingDiscrete"), weights_from=(("MODEL", "model"),)),
    NodeDef(schema("ModelSamplingSD3", [
        link("model", "MODEL"), float_input("shift", 3.0, 0.0, 100.0, 0.01),
    ], outputs("MODEL"), "ModelSamplingSD3", "model/patch/stable diffusion",
        python_module="comfy_extras.nodes_model_advanced"),
        run=_model_sampling_op("ModelSamplingSD3"), weights_from=(("MODEL", "model"),)),
    NodeDef(schema("ModelSamplingAuraFlow", [
        link("model", "MODEL"), float_input("shift", 1.73, 0.0, 100.0, 0.01),
    ], outputs("MODEL"), "ModelSamplingAuraFlow", "model/patch",
        python_module="comfy_extras.nodes_model_advanced"),
        run=_model_sampling_op("ModelSamplingAuraFlow"), weights_from=(("MODEL", "model"),)),
    NodeDef(schema("ModelSamplingFlux", [
        link("model", "MODEL"), float_input("max_shift", 1.15, 0.0, 100.0, 0.01),
        float_input("base_shift", 0.5, 0.0, 100.0, 0.01),
        int_input("width", 1024, 16, MAX_RESOLUTION, 8),
        int_input("height", 1024, 16, MAX_RESOLUTION, 8),
    ], outputs("MODEL"), "ModelSamplingFlux", "model/patch/flux",
        python_module="comfy_extras.nodes_model_advanced"),
        run=_model_sampling_op("ModelSamplingFlux"), weights_from=(("MODEL", "model"),)),
]
