"""Record ComfyUI's own sampling code on an analytic denoiser (run by hand; pytest never runs it).

The tests in ``tests/runtime/test_sampler_comfyui_recording.py`` and
``tests/runtime/test_schedules_comfyui_recording.py`` compare comfyc's numpy samplers, schedulers
and model samplings with ``recording.npz`` (beside this file), which this script writes. The tests
need neither ComfyUI nor torch.

Recorded with ComfyUI commit ``4f874c5e3a2fafb9938273c5f3fc47d2da017667`` (2026-07-29, version
0.29.0; the ``RECORDED_COMMIT`` constant below, also stored in the recording). Setup used::

    # ComfyUI source at that commit, outside the repository:
    #   /work/comfyui (a plain export of the tree; /work/comfyui/COMFYUI_COMMIT names the commit)
    python3 -m venv /work/comfyui-venv
    /work/comfyui-venv/bin/pip install torch==2.13.0        # the CPU wheel
    /work/comfyui-venv/bin/pip install torchsde scipy einops tqdm numpy safetensors psutil pyyaml \\
        pillow packaging transformers sentencepiece av comfy-aimdo==0.4.10 comfy-kitchen==0.2.24
    /work/comfyui-venv/bin/python tests/runtime/comfyui_samplers/record.py --comfyui /work/comfyui

What runs is ComfyUI's code: ``comfy.sample.prepare_noise`` and ``comfy.sample.sample``,
``comfy.samplers.KSampler`` (schedules, the denoise window, the KSamplerAdvanced step window,
``sampler_object``), ``KSAMPLER.sample`` (noise scaling, ``KSamplerX0Inpaint``, inverse noise
scaling), every ``comfy/k_diffusion/sampling.py`` sampler and ``uni_pc``,
``comfy.samplers.sampling_function``/``cfg_function`` (so the CFG++ samplers get the unconditional
prediction through ComfyUI's post-CFG hook), ComfyUI's model sampling classes composed as
``comfy.model_base.model_sampling`` composes them and configured by the ``ModelSampling*`` nodes,
and the custom-sampling nodes (``comfy_extras/nodes_custom_sampler.py``,
``nodes_align_your_steps.py``).

What is not ComfyUI's:

* The model. ``sampling_function`` is given a ``sampler_calc_cond_batch_function`` (ComfyUI's own
  hook for replacing ``calc_cond_batch``) that evaluates the closed-form mixture denoiser of
  ``analytic.py`` for the positive and negative prompt instead of a UNet.
* The CFGGuider plumbing around the model: ``comfy.samplers.sample`` is replaced by
  :func:`_guided_sample`, which does what ``CFGGuider.sample``/``inner_sample`` do for plain
  conditioning (return the latent for empty sigmas, ``process_latent_in`` on a non-empty latent,
  ``prepare_mask``, ``extra_args`` with the seed, ``sampler.sample``, ``process_latent_out``)
  without ComfyUI's model management, hooks and cond processing, which need a real model.
* Importing ``comfy.samplers`` imports every model architecture; two of them import
  ``torchvision``/``torchaudio``, whose PyPI wheels need CUDA torch. Those two packages are
  replaced by empty modules at import time; no recorded code touches them.

Keys of the recording (``numpy.load(path)``): ``meta`` (a JSON string: commit, constants, one
entry per case with its inputs, output keys and ComfyUI's error if it raised, and ``index``:
output key -> ``[offset, shape]``) and ``data`` (every output, float32, concatenated).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.abc
import importlib.machinery
import json
import math
import sys
import traceback
import types
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from analytic import CFGPair, make_models  # noqa: E402

RECORDED_COMMIT = "4f874c5e3a2fafb9938273c5f3fc47d2da017667"
SHAPE = (1, 4, 4, 4)
STEPS = 6
SEED = 1234
CFG = 4.5
# NOTE: LATENT-space image for img2img cases; its model-space version is about N(0, 1).
IMAGE_SEED = 77

# Latent formats (scale, shift) by model sampling kind: SD1 for the discrete kinds, SD3 and Flux
# for the flow kinds (comfy/latent_formats.py).
LATENT_FORMATS = {
    "eps": "SD15",
    "v": "SD15",
    "flow": "SD3",
    "aura": "SDXL",
    "flux": "Flux",
}


def _stub_unused_media_packages() -> None:
    """Empty ``torchvision``/``torchaudio`` modules for imports the recording never executes."""

    class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        prefixes = ("torchvision", "torchaudio")

        def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
            if name.split(".")[0] in self.prefixes:
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):  # noqa: ANN001, ANN201
            module = types.ModuleType(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):  # noqa: ANN001, ANN201
            return None

    sys.meta_path.insert(0, _Stub())


def _import_comfy(root: Path) -> types.SimpleNamespace:
    sys.path.insert(0, str(root))
    sys.argv = [sys.argv[0]]
    _stub_unused_media_packages()
    import comfy.cli_args
    import comfy.options  # noqa: F401

    comfy.cli_args.args.cpu = True
    import comfy.latent_formats
    import comfy.model_base
    import comfy.model_sampling
    import comfy.sample
    import comfy.sampler_helpers
    import comfy.samplers
    import comfy_extras.nodes_align_your_steps as ays
    import comfy_extras.nodes_custom_sampler as ncs
    import comfy_extras.nodes_model_advanced as nma
    import torch

    return types.SimpleNamespace(
        torch=torch,
        samplers=comfy.samplers,
        sample=comfy.sample,
        ms=comfy.model_sampling,
        lf=comfy.latent_formats,
        base=comfy.model_base,
        helpers=comfy.sampler_helpers,
        ncs=ncs,
        ays=ays,
        nma=nma,
    )


C: types.SimpleNamespace  # the imported ComfyUI modules, set by main()


class _Patcher:
    """The parts of a ModelPatcher that comfy.sample, KSampler, the samplers and nodes read."""

    def __init__(self, model_sampling: Any, latent_format: Any) -> None:
        torch = C.torch
        self.model_sampling = model_sampling
        self.latent_format = latent_format
        self.load_device = torch.device("cpu")
        self.model_options: dict[str, Any] = {"transformer_options": {}}
        self.model = types.SimpleNamespace(
            model_config=types.SimpleNamespace(sampling_settings={}),
            latent_format=latent_format,
        )

    def get_model_object(self, name: str) -> Any:
        return {"model_sampling": self.model_sampling, "latent_format": self.latent_format}[name]

    def clone(self) -> _Patcher:
        return _Patcher(self.model_sampling, self.latent_format)

    def add_object_patch(self, name: str, obj: Any) -> None:
        assert name == "model_sampling", name
        self.model_sampling = obj


class _Inner:
    """``BaseModel`` stand-in: its model_sampling and ComfyUI's own latent/inpaint methods."""

    def __init__(self, patcher: _Patcher) -> None:
        self.model_sampling = patcher.model_sampling
        self.latent_format = patcher.latent_format

    def process_latent_in(self, latent):  # noqa: ANN001, ANN201
        return C.base.BaseModel.process_latent_in(self, latent)

    def process_latent_out(self, latent):  # noqa: ANN001, ANN201
        return C.base.BaseModel.process_latent_out(self, latent)

    def scale_latent_inpaint(self, **kwargs):  # noqa: ANN003, ANN201
        return C.base.BaseModel.scale_latent_inpaint(self, **kwargs)


class _Guider:
    """The model_wrap the samplers see (``CFGGuider``'s predict path with an analytic model)."""

    def __init__(self, patcher: _Patcher, pair: CFGPair) -> None:
        self.model_patcher = patcher
        self.inner_model = _Inner(patcher)
        self.pair = pair
        self.cfg = pair.cfg
        self.positive = [{"model": pair.cond}]
        self.negative = [{"model": pair.uncond}]

    def _calc_cond_batch(self, args: dict[str, Any]) -> list[Any]:
        torch = C.torch
        x = args["input"]
        sigma = args["sigma"]
        assert bool((sigma == sigma[0]).all())
        out = []
        for cond in args["conds"]:
            if cond is None:
                out.append(torch.zeros_like(x))
            else:
                x0 = cond[0]["model"].x0(x.detach().cpu().numpy(), float(sigma[0]))
                out.append(torch.from_numpy(x0))
        return out

    def __call__(self, x, timestep, model_options=None, seed=None):  # noqa: ANN001, ANN201
        options = dict(model_options or {})
        options["sampler_calc_cond_batch_function"] = self._calc_cond_batch
        return C.samplers.sampling_function(
            self.inner_model, x, timestep, self.negative, self.positive, self.cfg,
            model_options=options, seed=seed,
        )


class _Capture:
    sigmas: Any = None


def _guided_sample(  # noqa: ANN201, PLR0913
    model, noise, positive, negative, cfg, device, sampler, sigmas,  # noqa: ANN001
    model_options=None, latent_image=None, denoise_mask=None, callback=None,  # noqa: ANN001
    disable_pbar=False, seed=None,  # noqa: ANN001
):
    """``comfy.samplers.sample`` without model management (see the module docstring)."""
    torch = C.torch
    _Capture.sigmas = sigmas.clone()
    if sigmas.shape[-1] == 0:
        return latent_image
    guider = _Guider(model, CFGPair(positive, negative, cfg))
    latent = latent_image
    if latent is not None and torch.count_nonzero(latent) > 0:
        latent = guider.inner_model.process_latent_in(latent)
    mask = None
    if denoise_mask is not None:
        mask = C.helpers.prepare_mask(denoise_mask, noise.shape, "cpu").float()
    extra_args = {"model_options": {"transformer_options": {"sample_sigmas": sigmas}}, "seed": seed}
    samples = sampler.sample(
        guider, sigmas, extra_args, callback, noise.to(torch.float32),
        latent.to(torch.float32), mask, disable_pbar,
    )
    return guider.inner_model.process_latent_out(samples.to(torch.float32))


# ----------------------------------------------------------------------------------------------
# Model samplings, as ComfyUI's ModelSampling* nodes configure them.


def _model_samplings() -> dict[str, _Patcher]:
    ms, lf, nma = C.ms, C.lf, C.nma

    class EpsDiscrete(ms.ModelSamplingDiscrete, ms.EPS):
        pass

    base = _Patcher(EpsDiscrete(None), lf.SD15())
    out = {"eps": base}
    out["v"] = nma.ModelSamplingDiscrete().patch(base, "v_prediction", False)[0]
    out["eps_zsnr"] = nma.ModelSamplingDiscrete().patch(base, "eps", True)[0]
    flow = nma.ModelSamplingSD3().patch(_Patcher(None, lf.SD3()), 3.0)[0]
    out["flow"] = flow
    out["aura"] = nma.ModelSamplingAuraFlow().patch_aura(_Patcher(None, lf.SDXL()), 1.73)[0]
    out["flux"] = nma.ModelSamplingFlux().patch(_Patcher(None, lf.Flux()), 1.15, 0.5, 1024, 1024)[0]
    out["flux_768x512"] = nma.ModelSamplingFlux().patch(
        _Patcher(None, lf.Flux()), 1.15, 0.5, 768, 512
    )[0]
    return out


# ----------------------------------------------------------------------------------------------
# Recording helpers.


class Recorder:
    """Collects outputs into one flat float32 buffer; ``meta`` maps keys to (offset, shape).

    One array per output would cost an npz member header (~0.3 KiB) per array.
    """

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.index: dict[str, list[Any]] = {}
        self.size = 0
        self.cases: list[dict[str, Any]] = []

    def put(self, key: str, value: Any) -> str:
        torch = C.torch
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        array = np.asarray(value, dtype=np.float32)
        assert key not in self.index, key
        self.index[key] = [self.size, list(array.shape)]
        self.chunks.append(array.reshape(-1))
        self.size += array.size
        return key

    def drop(self, prefix: str) -> None:
        for key in [k for k in self.index if k.startswith(prefix)]:
            del self.index[key]  # NOTE: the data stays in the buffer, unreferenced.

    def data(self) -> np.ndarray:
        if not self.chunks:
            return np.zeros(0, np.float32)
        return np.concatenate(self.chunks).astype(np.float32)


def _image_latent(shape: tuple[int, ...]) -> np.ndarray:
    """A deterministic non-empty LATENT (raw VAE space) for img2img cases."""
    return (np.random.default_rng(IMAGE_SEED).normal(0.0, 1.0, shape) * 2.0).astype(np.float32)


def _box_mask(shape: tuple[int, ...]) -> np.ndarray:
    """A soft pixel-space inpainting mask (8x the latent size), resized by ComfyUI."""
    h, w = shape[2] * 8, shape[3] * 8
    mask = np.zeros((h, w), np.float32)
    mask[h // 4 : 3 * h // 4, w // 8 : 7 * w // 8] = 1.0
    mask[:, : w // 8] = 0.5
    return mask


def _latent_for(case: dict[str, Any]) -> np.ndarray:
    shape = tuple(case.get("shape", SHAPE))
    if case.get("latent", "empty") == "image":
        return _image_latent(shape)
    return np.zeros(shape, np.float32)


def _pair_for(case: dict[str, Any], flow: bool) -> CFGPair:
    shape = tuple(case.get("shape", SHAPE))
    cond, uncond = make_models(shape[1], shape[2], shape[3], flow=flow)
    return CFGPair(cond, uncond, case.get("cfg", CFG))


def _is_flow(patcher: _Patcher) -> bool:
    return isinstance(patcher.model_sampling, C.ms.CONST)


def _run_ksampler(rec: Recorder, patcher: _Patcher, case: dict[str, Any]) -> None:
    """One KSampler / KSamplerAdvanced run through ``comfy.sample.sample`` (common_ksampler)."""
    torch = C.torch
    latent = torch.from_numpy(_latent_for(case))
    add_noise = case.get("add_noise", True)
    seed = case.get("seed", SEED)
    if add_noise:
        noise = C.sample.prepare_noise(latent, seed, case.get("batch_index"))
    else:
        noise = torch.zeros(latent.shape, dtype=latent.dtype)
    mask = None if case.get("mask") is None else torch.from_numpy(_box_mask(latent.shape))
    pair = _pair_for(case, _is_flow(patcher))
    denoised: list[Any] = []
    steps_seen: list[int] = []

    def callback(step, x0, x, total):  # noqa: ANN001, ANN202
        denoised.append(x0.clone())
        steps_seen.append(int(step))

    _Capture.sigmas = None
    out = C.sample.sample(
        patcher, noise, case["steps"], pair.cfg, case["sampler"], case["scheduler"],
        pair.cond, pair.uncond, latent, denoise=case.get("denoise", 1.0),
        disable_noise=not add_noise, start_step=case.get("start_step"),
        last_step=case.get("last_step"), force_full_denoise=case.get("force_full_denoise", False),
        noise_mask=mask, callback=callback, disable_pbar=True, seed=seed,
    )
    cid = case["id"]
    case["out"] = rec.put(f"{cid}/out", out)
    if _Capture.sigmas is not None:
        case["sigmas"] = rec.put(f"{cid}/sigmas", _Capture.sigmas)
    case["calls"] = pair.calls
    case["callback_steps"] = steps_seen
    if case.get("trajectory") and denoised:
        case["trajectory"] = rec.put(f"{cid}/denoised", torch.stack(denoised))


def _custom_sampler(patcher: _Patcher, node: str, inputs: dict[str, Any]) -> Any:
    ncs = C.ncs
    cls = getattr(ncs, node)
    if node == "SamplerSASolver":
        return cls.execute(patcher, **inputs)[0]
    return cls.execute(**inputs)[0]


def _run_custom(rec: Recorder, patcher: _Patcher, case: dict[str, Any]) -> None:
    """SamplerCustomAdvanced: NOISE + CFG guider + SAMPLER + SIGMAS."""
    torch = C.torch
    ncs = C.ncs
    latent = torch.from_numpy(_latent_for(case))
    latent_dict = {"samples": latent}
    noise_obj = (
        ncs.Noise_RandomNoise(case["noise_seed"])
        if case.get("add_noise", True)
        else ncs.Noise_EmptyNoise()
    )
    sampler = _custom_sampler(patcher, case["node"], case["inputs"])
    if "sigmas_given" in case:
        sigmas = torch.tensor(case["sigmas_given"], dtype=torch.float32)
    else:
        sigmas = ncs.BasicScheduler.execute(
            patcher, case["scheduler"], case["steps"], case.get("denoise", 1.0)
        )[0]
    pair = _pair_for(case, _is_flow(patcher))
    x0_output: dict[str, Any] = {}
    steps_seen: list[int] = []

    def callback(step, x0, x, total):  # noqa: ANN001, ANN202
        x0_output["x0"] = x0
        steps_seen.append(int(step))

    out = _guided_sample(
        patcher, noise_obj.generate_noise(latent_dict), pair.cond, pair.uncond, pair.cfg, "cpu",
        sampler, sigmas, latent_image=latent, callback=callback, seed=noise_obj.seed,
    )
    cid = case["id"]
    case["sigmas"] = rec.put(f"{cid}/sigmas", sigmas)
    case["out"] = rec.put(f"{cid}/out", out)
    if "x0" in x0_output:
        case["denoised_out"] = rec.put(
            f"{cid}/denoised_out", patcher.latent_format.process_out(x0_output["x0"])
        )
    case["calls"] = pair.calls
    case["callback_steps"] = steps_seen


def _run_case(rec: Recorder, patchers: dict[str, _Patcher], case: dict[str, Any]) -> None:
    patcher = patchers[case["kind"]]
    try:
        if case["mode"] == "ksampler":
            _run_ksampler(rec, patcher, case)
        else:
            _run_custom(rec, patcher, case)
    except Exception as exc:  # noqa: BLE001 - ComfyUI's failures are part of the record
        case["error"] = f"{type(exc).__name__}: {exc}"
        case["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
        rec.drop(case["id"] + "/")
        for key in ("out", "sigmas", "denoised_out", "trajectory"):
            case.pop(key, None)
    rec.cases.append(case)


# ----------------------------------------------------------------------------------------------
# The cases.


def _ksampler_cases(sampler_names: list[str], scheduler_names: list[str]) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    # Every sampler x every scheduler, txt2img, for an EPS and a CONST (SD3) model.
    for kind in ("eps", "flow"):
        for sampler in sampler_names:
            for scheduler in scheduler_names:
                cases.append({
                    "id": f"grid/{kind}/{sampler}/{scheduler}", "group": "grid", "mode": "ksampler",
                    "kind": kind, "sampler": sampler, "scheduler": scheduler, "steps": STEPS,
                    "trajectory": kind == "eps" and scheduler == "karras",
                })
    # Flux's 10000-entry table, img2img (process_latent_in/out with a shift factor).
    for sampler in sampler_names:
        for scheduler in ("simple", "beta"):
            cases.append({
                "id": f"flux/{sampler}/{scheduler}", "group": "flux", "mode": "ksampler",
                "kind": "flux", "sampler": sampler, "scheduler": scheduler, "steps": 5,
                "latent": "image", "denoise": 0.8,
            })
    # Edge cases ComfyUI handles.
    for kind in ("eps", "flow"):
        for sampler in sampler_names:
            base = {"group": "edge", "mode": "ksampler", "kind": kind, "sampler": sampler}
            cases.append({**base, "id": f"edge/{kind}/{sampler}/one_step", "scheduler": "normal",
                          "steps": 1})
            cases.append({**base, "id": f"edge/{kind}/{sampler}/denoise_0.01",
                          "scheduler": "karras", "steps": 3, "denoise": 0.01, "latent": "image"})
            cases.append({**base, "id": f"edge/{kind}/{sampler}/window_one_step_leftover",
                          "scheduler": "simple", "steps": 8, "start_step": 3, "last_step": 4,
                          "force_full_denoise": False, "latent": "image"})
            cases.append({**base, "id": f"edge/{kind}/{sampler}/first_half_leftover",
                          "scheduler": "normal", "steps": 8, "start_step": 0, "last_step": 4,
                          "force_full_denoise": False})
            cases.append({**base, "id": f"edge/{kind}/{sampler}/second_half_no_noise",
                          "scheduler": "normal", "steps": 8, "start_step": 4, "last_step": 10000,
                          "force_full_denoise": True, "add_noise": False, "latent": "image"})
            cases.append({**base, "id": f"edge/{kind}/{sampler}/window_forced_zero",
                          "scheduler": "beta", "steps": 8, "start_step": 2, "last_step": 5,
                          "force_full_denoise": True, "latent": "image"})
            if "cfg_pp" in sampler:
                cases.append({**base, "id": f"edge/{kind}/{sampler}/cfg_1", "scheduler": "normal",
                              "steps": 4, "cfg": 1.0})
    # Inpainting (noise_mask) and a batch of two with batch_index.
    for sampler in ("euler", "ddim", "euler_ancestral", "dpmpp_2m_sde", "res_multistep_cfg_pp",
                    "uni_pc", "lcm", "sa_solver"):
        for kind in ("eps", "flow"):
            cases.append({"id": f"mask/{kind}/{sampler}", "group": "mask", "mode": "ksampler",
                          "kind": kind, "sampler": sampler, "scheduler": "normal", "steps": 5,
                          "denoise": 0.8, "latent": "image", "mask": "box"})
    for sampler in ("euler_ancestral", "dpmpp_sde", "er_sde", "seeds_3"):
        cases.append({"id": f"batch/eps/{sampler}", "group": "batch", "mode": "ksampler",
                      "kind": "eps", "sampler": sampler, "scheduler": "karras", "steps": 4,
                      "shape": [2, 4, 4, 4], "batch_index": [3, 1]})
    # V-prediction and zSNR tables (the sampler does not care; the schedules do).
    for kind in ("v", "eps_zsnr", "aura", "flux_768x512"):
        for scheduler in scheduler_names:
            cases.append({"id": f"tables/{kind}/euler/{scheduler}", "group": "tables",
                          "mode": "ksampler", "kind": kind, "sampler": "euler",
                          "scheduler": scheduler, "steps": 5})
    return cases


def _custom_cases() -> list[dict[str, Any]]:
    """Sampler option nodes through SamplerCustomAdvanced."""
    specs: list[tuple[str, dict[str, Any]]] = [
        ("SamplerEulerAncestral", {"eta": 0.5, "s_noise": 0.8}),
        ("SamplerEulerAncestralCFGPP", {"eta": 0.6, "s_noise": 1.1}),
        ("SamplerDPMPP_2S_Ancestral", {"eta": 0.7, "s_noise": 0.9}),
        ("SamplerDPMPP_2M_SDE", {"solver_type": "heun", "eta": 0.7, "s_noise": 1.1,
                                 "noise_device": "cpu"}),
        ("SamplerDPMPP_2M_SDE", {"solver_type": "midpoint", "eta": 0.0, "s_noise": 1.0,
                                 "noise_device": "gpu"}),
        ("SamplerDPMPP_SDE", {"eta": 0.6, "s_noise": 0.9, "r": 0.4, "noise_device": "cpu"}),
        ("SamplerDPMPP_3M_SDE", {"eta": 0.5, "s_noise": 1.2, "noise_device": "gpu"}),
        ("SamplerLMS", {"order": 2}),
        ("SamplerDPMAdaptative", {"order": 2, "rtol": 0.1, "atol": 0.01, "h_init": 0.1,
                                  "pcoeff": 0.1, "icoeff": 0.9, "dcoeff": 0.05,
                                  "accept_safety": 0.8, "eta": 0.5, "s_noise": 1.0}),
        ("SamplerDPMAdaptative", {"order": 3, "rtol": 0.05, "atol": 0.0078, "h_init": 0.05,
                                  "pcoeff": 0.0, "icoeff": 1.0, "dcoeff": 0.0,
                                  "accept_safety": 0.81, "eta": 0.0, "s_noise": 1.0}),
        ("SamplerER_SDE", {"solver_type": "ER-SDE", "max_stage": 3, "eta": 1.0, "s_noise": 1.0}),
        ("SamplerER_SDE", {"solver_type": "Reverse-time SDE", "max_stage": 2, "eta": 0.5,
                           "s_noise": 0.8}),
        ("SamplerER_SDE", {"solver_type": "ODE", "max_stage": 3, "eta": 1.0, "s_noise": 1.0}),
        ("SamplerSASolver", {"eta": 0.8, "sde_start_percent": 0.1, "sde_end_percent": 0.9,
                             "s_noise": 1.0, "predictor_order": 2, "corrector_order": 1,
                             "use_pece": True, "simple_order_2": True}),
        ("SamplerSASolver", {"eta": 1.0, "sde_start_percent": 0.2, "sde_end_percent": 0.8,
                             "s_noise": 0.7, "predictor_order": 3, "corrector_order": 4,
                             "use_pece": False, "simple_order_2": False}),
        ("SamplerSEEDS2", {"solver_type": "phi_2", "eta": 0.5, "s_noise": 1.0, "r": 0.7}),
        ("SamplerSEEDS2", {"solver_type": "phi_1", "eta": 1.0, "s_noise": 0.5, "r": 0.3}),
        ("KSamplerSelect", {"sampler_name": "dpmpp_2m"}),
    ]
    cases: list[dict[str, Any]] = []
    for kind in ("eps", "flow"):
        for index, (node, inputs) in enumerate(specs):
            cases.append({"id": f"custom/{kind}/{index}_{node}", "group": "custom",
                          "mode": "custom", "kind": kind, "node": node, "inputs": inputs,
                          "scheduler": "karras", "steps": 5, "noise_seed": 99})
    # SamplerCustomAdvanced semantics: DisableNoise (seed 0), img2img, given sigmas, no sigmas.
    cases.append({"id": "custom/eps/disable_noise_img2img", "group": "custom", "mode": "custom",
                  "kind": "eps", "node": "SamplerEulerAncestral",
                  "inputs": {"eta": 1.0, "s_noise": 1.0}, "add_noise": False, "latent": "image",
                  "scheduler": "normal", "steps": 5, "denoise": 0.5, "noise_seed": 5})
    cases.append({"id": "custom/flow/random_noise_img2img", "group": "custom", "mode": "custom",
                  "kind": "flow", "node": "KSamplerSelect", "inputs": {"sampler_name": "euler"},
                  "latent": "image", "scheduler": "simple", "steps": 4, "denoise": 0.6,
                  "noise_seed": 7})
    cases.append({"id": "custom/eps/sigmas_given", "group": "custom", "mode": "custom",
                  "kind": "eps", "node": "KSamplerSelect", "inputs": {"sampler_name": "heun"},
                  "sigmas_given": [10.0, 3.0, 1.0, 0.3, 0.0], "noise_seed": 3})
    cases.append({"id": "custom/eps/sigmas_empty", "group": "custom", "mode": "custom",
                  "kind": "eps", "node": "KSamplerSelect", "inputs": {"sampler_name": "euler"},
                  "sigmas_given": [], "latent": "image", "noise_seed": 3})
    cases.append({"id": "custom/eps/sigmas_leftover", "group": "custom", "mode": "custom",
                  "kind": "eps", "node": "KSamplerSelect",
                  "inputs": {"sampler_name": "dpmpp_2m_sde"},
                  "sigmas_given": [14.614642, 5.0, 2.0, 0.8], "noise_seed": 11})
    return cases


def _record_schedule_nodes(rec: Recorder, patchers: dict[str, _Patcher],
                           scheduler_names: list[str]) -> list[dict[str, Any]]:
    """Outputs of the custom-sampling scheduler and sigma nodes."""
    ncs, ays = C.ncs, C.ays
    torch = C.torch
    out: list[dict[str, Any]] = []

    def put(node: str, inputs: dict[str, Any], value: Any, kind: str | None = None) -> None:
        key = f"node/{len(out)}_{node}"
        entry = {"node": node, "inputs": inputs, "kind": kind}
        if isinstance(value, tuple):
            entry["outputs"] = [rec.put(f"{key}/{i}", v) for i, v in enumerate(value)]
        else:
            entry["outputs"] = [rec.put(f"{key}/0", value)]
        out.append(entry)

    for kind in ("eps", "v", "eps_zsnr", "flow", "aura", "flux", "flux_768x512"):
        patcher = patchers[kind]
        for scheduler in scheduler_names:
            for steps, denoise in ((1, 1.0), (7, 1.0), (10, 0.6), (3, 0.01), (5, 0.0)):
                inputs = {"scheduler": scheduler, "steps": steps, "denoise": denoise}
                put("BasicScheduler", inputs,
                    ncs.BasicScheduler.execute(patcher, **inputs)[0], kind)
        for steps, alpha, beta in ((10, 0.6, 0.6), (7, 0.5, 0.7), (1, 0.6, 0.6)):
            inputs = {"steps": steps, "alpha": alpha, "beta": beta}
            put("BetaSamplingScheduler", inputs,
                ncs.BetaSamplingScheduler.execute(patcher, **inputs)[0], kind)
    for kind in ("eps", "v"):
        for steps in (1, 2, 4, 10):
            for denoise in (1.0, 0.5, 0.33):
                inputs = {"steps": steps, "denoise": denoise}
                put("SDTurboScheduler", inputs,
                    ncs.SDTurboScheduler.execute(patchers[kind], **inputs)[0], kind)
    for steps, smax, smin, rho in ((20, 14.614642, 0.0291675, 7.0), (1, 14.6, 0.03, 7.0),
                                   (9, 80.0, 0.002, 5.0), (6, 1.0, 0.0064, 3.0)):
        put("KarrasScheduler", {"steps": steps, "sigma_max": smax, "sigma_min": smin, "rho": rho},
            ncs.KarrasScheduler.execute(steps, smax, smin, rho)[0])
        put("ExponentialScheduler", {"steps": steps, "sigma_max": smax, "sigma_min": smin},
            ncs.ExponentialScheduler.execute(steps, smax, smin)[0])
        put("PolyexponentialScheduler",
            {"steps": steps, "sigma_max": smax, "sigma_min": smin, "rho": rho / 7.0},
            ncs.PolyexponentialScheduler.execute(steps, smax, smin, rho / 7.0)[0])
    for steps, beta_d, beta_min, eps_s in ((20, 19.9, 0.1, 0.001), (1, 19.9, 0.1, 0.001),
                                           (8, 10.0, 0.5, 0.01)):
        inputs = {"steps": steps, "beta_d": beta_d, "beta_min": beta_min, "eps_s": eps_s}
        put("VPScheduler", inputs, ncs.VPScheduler.execute(**inputs)[0])
    for model_type in ("SD1", "SDXL", "SVD"):
        for steps in (1, 4, 10, 15, 37):
            for denoise in (1.0, 0.5, 0.25, 0.0):
                inputs = {"model_type": model_type, "steps": steps, "denoise": denoise}
                put("AlignYourStepsScheduler", inputs,
                    ays.AlignYourStepsScheduler.execute(**inputs)[0])
    base = ncs.BasicScheduler.execute(patchers["eps"], "karras", 8, 1.0)[0]
    for step in (0, 1, 4, 8, 12):
        put("SplitSigmas", {"sigmas": base.tolist(), "step": step},
            tuple(ncs.SplitSigmas.execute(base.clone(), step)))
    for denoise in (0.0, 0.3, 0.5, 0.99, 1.0):
        put("SplitSigmasDenoise", {"sigmas": base.tolist(), "denoise": denoise},
            tuple(ncs.SplitSigmasDenoise.execute(base.clone(), denoise)))
    for sig in (base, torch.tensor([5.0, 2.0, 1.0]), torch.tensor([], dtype=torch.float32)):
        put("FlipSigmas", {"sigmas": sig.tolist()}, ncs.FlipSigmas.execute(sig.clone())[0])
    for text in ("1, 0.5", "14.6, 7.2,3 , 0.0", "0.9 0.5 -0.1"):
        put("ManualSigmas", {"sigmas": text}, ncs.ManualSigmas.execute(text)[0])
    return out


def _record_model_samplings(rec: Recorder, patchers: dict[str, _Patcher]) -> dict[str, Any]:
    """Tables and the per-kind functions of each model sampling."""
    torch = C.torch
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(0, 1, SHAPE).astype(np.float32))
    noise = torch.from_numpy(rng.normal(0, 1, SHAPE).astype(np.float32))
    latent = torch.from_numpy(rng.normal(0, 1, SHAPE).astype(np.float32))
    percents = [0.0, 1e-4, 0.1, 0.2, 0.25, 0.5, 0.8, 0.9999, 1.0]
    out: dict[str, Any] = {}
    for kind, patcher in patchers.items():
        s = patcher.model_sampling
        entry: dict[str, Any] = {"class": [c.__name__ for c in type(s).__mro__[1:3]]}
        key = f"ms/{kind}"
        # NOTE: Flux's table has 10000 entries; every 10th (and the last) is enough to check it.
        table = s.sigmas if len(s.sigmas) <= 1000 else torch.cat([s.sigmas[9::10], s.sigmas[-1:]])
        entry["sigmas"] = rec.put(f"{key}/sigmas", table)
        entry["table_size"] = len(s.sigmas)
        entry["sigma_min"] = float(s.sigma_min)
        entry["sigma_max"] = float(s.sigma_max)
        probes = torch.cat([s.sigmas[:: max(1, len(s.sigmas) // 37)], s.sigmas[-3:]])
        entry["probe_sigmas"] = rec.put(f"{key}/probe_sigmas", probes)
        entry["timestep"] = rec.put(f"{key}/timestep", s.timestep(probes).float())
        ts = torch.linspace(float(s.timestep(s.sigma_min)), float(s.timestep(s.sigma_max)), 23)
        entry["probe_timesteps"] = rec.put(f"{key}/probe_timesteps", ts)
        entry["sigma_of_timestep"] = rec.put(f"{key}/sigma_of_timestep", s.sigma(ts))
        entry["percents"] = percents
        entry["percent_to_sigma"] = [float(s.percent_to_sigma(p)) for p in percents]
        for sigma in (float(s.sigma_max), float(s.sigmas[len(s.sigmas) // 2]), 0.0):
            name = f"{key}/sigma_{sigma:.6g}"
            sig = torch.tensor([sigma], dtype=torch.float32)
            entry.setdefault("apply", []).append({
                "sigma": sigma,
                "noise_scaling": rec.put(f"{name}/noise_scaling",
                                         s.noise_scaling(sig, noise.clone(), latent.clone())),
                "noise_scaling_max": rec.put(f"{name}/noise_scaling_max",
                                             s.noise_scaling(sig, noise.clone(), latent.clone(),
                                                             max_denoise=True)),
                "inverse_noise_scaling": rec.put(f"{name}/inverse_noise_scaling",
                                                 s.inverse_noise_scaling(sig, x.clone())),
                "calculate_input": rec.put(f"{name}/calculate_input",
                                           s.calculate_input(sig, x.clone())),
                "calculate_denoised": rec.put(f"{name}/calculate_denoised",
                                              s.calculate_denoised(sig, noise.clone(), x.clone())),
            })
        out[kind] = entry
    out["inputs"] = {"x": rec.put("ms/x", x), "noise": rec.put("ms/noise", noise),
                     "latent": rec.put("ms/latent", latent)}
    return out


def main() -> None:
    global C
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, default=Path("/work/comfyui"))
    parser.add_argument("--out", type=Path, default=HERE / "recording.npz")
    parser.add_argument("--only", default="", help="record only case ids starting with this")
    args = parser.parse_args()
    C = _import_comfy(args.comfyui.resolve())
    commit_file = args.comfyui / "COMFYUI_COMMIT"
    commit = commit_file.read_text().strip() if commit_file.exists() else "unknown"
    if commit != RECORDED_COMMIT:
        print(f"warning: ComfyUI at {commit}, the docstring names {RECORDED_COMMIT}")
    C.samplers.sample = _guided_sample  # the CFGGuider stand-in (see the module docstring)
    torch = C.torch
    torch.set_num_threads(1)
    sampler_names = list(C.samplers.SAMPLER_NAMES)
    scheduler_names = list(C.samplers.SCHEDULER_NAMES)
    patchers = _model_samplings()
    rec = Recorder()
    cases = _ksampler_cases(sampler_names, scheduler_names) + _custom_cases()
    if args.only:
        cases = [c for c in cases if c["id"].startswith(args.only)]
    for index, case in enumerate(cases):
        _run_case(rec, patchers, case)
        if index % 100 == 0:
            print(f"{index}/{len(cases)} {case['id']}", flush=True)
    meta = {
        "comfyui_commit": commit,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "shape": list(SHAPE),
        "steps": STEPS,
        "seed": SEED,
        "cfg": CFG,
        "image_seed": IMAGE_SEED,
        "sampler_names": sampler_names,
        "scheduler_names": scheduler_names,
        "latent_formats": {
            kind: [float(p.latent_format.scale_factor),
                   float(getattr(p.latent_format, "shift_factor", None) or 0.0)]
            for kind, p in patchers.items()
        },
        "cases": rec.cases,
        "nodes": [] if args.only else _record_schedule_nodes(rec, patchers, scheduler_names),
        "model_samplings": {} if args.only else _record_model_samplings(rec, patchers),
        "image_latent_sha": hashlib.sha256(_image_latent(SHAPE).tobytes()).hexdigest(),
        "box_mask_sha": hashlib.sha256(_box_mask(SHAPE).tobytes()).hexdigest(),
    }
    errors = [c for c in rec.cases if "error" in c]
    print(f"{len(rec.cases)} cases, {len(errors)} raised in ComfyUI:")
    for c in errors:
        print(f"  {c['id']}: {c['error']}")
    meta["index"] = rec.index
    np.savez_compressed(args.out, meta=np.array(json.dumps(meta)), data=rec.data())
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1024:.0f} KiB, {len(rec.index)} arrays)")
    assert math.isfinite(size)


if __name__ == "__main__":
    main()
