"""SD3/SD3.5 and Flux models: UNETLoader files, all-in-one checkpoints, and ComfyUI's call.

Entry points (the node each one serves):

* `load_diffusion_model(path, weight_dtype=...)` - ``UNETLoader``: a diffusion model alone,
  bare keys (``joint_blocks.0...`` / ``double_blocks.0...``) or under ``model.diffusion_model.``;
  returns a `DiffusionModel` (the MODEL).
* `load_flow_checkpoint(path)` - ``CheckpointLoaderSimple`` for SD3.5 and Flux all-in-one files:
  ``model.diffusion_model.*``, the VAE (``first_stage_model.*`` for SD3, ``vae.*`` for Flux) and
  ``text_encoders.{clip_l,clip_g,t5xxl}.transformer.*``; returns a `FlowCheckpoint`.
* `load_any_checkpoint(path)` dispatches between these and the SD1/SD2/SDXL
  `comfyc.compiler.models.single_file.load_checkpoint`; `checkpoint_family(path)` reads only the
  header to say which family a file is.
* VAEs: `comfyc.compiler.models.single_file.load_vae(path, family=...)` (``VAELoader``; Flux's
  ``ae.safetensors``); text encoders: `comfyc.compiler.models.text_encoders`.

The transformer is a diffusers ``SD3Transformer2DModel`` / ``FluxTransformer2DModel`` built for
the detected architecture (`comfyc.compiler.models.dit_configs`) and filled through comfyc's key
maps (`comfyc.compiler.models.dit_keymap`). `DiffusionModel.comfy_module` wraps it with
ComfyUI's signature, which is what the compiler exports:

* SD3: ``model(x, timestep, context, y)`` with ``x`` ``[B, 16, H, W]`` (latent after the model's
  ``process_in``), ``timestep = sigma * 1000``, ``context`` ``[B, T, 4096]`` and the pooled
  ``y`` ``[B, 2048]``; odd sizes are padded circularly to the patch size and cropped, as ComfyUI.
* Flux: ``model(x, timestep, context, y, guidance)`` with ``timestep = sigma`` (the embedder
  multiplies by 1000 in both implementations), ``y`` the CLIP-L pooled ``[B, 768]`` and
  ``guidance`` ``[B]`` (dev and fill only; ComfyUI's default 3.5, ``FluxGuidance`` sets it).
  The latent is cut into 2x2 patches (``b c (h 2) (w 2) -> b (h w) (c 2 2)``) with image
  position ids ``(0, row, column)`` and all-zero text ids.

The output is ComfyUI's CONST (flow) prediction: ``denoised = x - sigma * output``.

Facts ComfyUI's ``supported_models`` attaches (`DiffusionModel` properties):

=============  =============  ============================  ==========================
family         latent format  model sampling (default)      notes
=============  =============  ============================  ==========================
sd3            scale 1.5305,  ModelSamplingDiscreteFlow,    pooled y = CLIP-L | CLIP-G
               shift 0.0609   shift 3.0, multiplier 1000
flux           scale 0.3611,  ModelSamplingFlux, shift      guidance input; the
               shift 0.1159   1.15 (= max_shift at 1024^2;  ModelSamplingFlux node:
                              base_shift 0.5)               max 1.15, base 0.5
flux_schnell   as flux        ModelSamplingDiscreteFlow,    no guidance input
                              shift 1.0, multiplier 1.0
flux_inpaint   as flux        as flux                       96 input channels (Fill)
=============  =============  ============================  ==========================

``weight_dtype`` (UNETLoader): ``default`` keeps the file's values; ``fp8_e4m3fn``,
``fp8_e4m3fn_fast`` and ``fp8_e5m2`` make ComfyUI store every weight of the diffusion model in
that fp8 type and compute in the compute dtype, so the values the model computes with are the
file's rounded to fp8. comfyc reproduces exactly that: each floating tensor is rounded through
the fp8 type and kept in `dtype` (``fp8_e4m3fn_fast`` only adds fp8 matrix multiplies on GPUs
that have them, which ComfyUI uses on such GPUs only; comfyc treats it as ``fp8_e4m3fn``). fp8
*files* (``F8_E4M3``/``F8_E5M2``, ComfyUI's scaled fp8) are read and upcast (exact).
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from comfyc.compiler.models.dit_configs import (
    DetectedTransformer,
    detect_transformer,
    is_flux,
    is_mmdit,
)
from comfyc.compiler.models.dit_keymap import (
    normalize_flux_keys,
    plans_for,
    split_original,
)
from comfyc.compiler.models.errors import ModelFormatError
from comfyc.compiler.models.text_encoders import TextEncoders, text_encoders_from_checkpoint
from comfyc.compiler.models.weights import WeightSource, is_fp8
from comfyc.runtime.backends.torch_dit import FluxModel, Sd3Model

__all__ = [
    "FLOW_FAMILIES",
    "FLUX_LATENT_FORMAT",
    "SAMPLING_SETTINGS",
    "SD3_LATENT_FORMAT",
    "WEIGHT_DTYPES",
    "DiffusionModel",
    "FlowCheckpoint",
    "FluxModel",
    "LatentFormat",
    "Sd3Model",
    "build_transformer",
    "checkpoint_family",
    "diffusion_model_from_weights",
    "flow_checkpoint_from_weights",
    "latent_format_for",
    "load_any_checkpoint",
    "load_diffusion_model",
    "load_flow_checkpoint",
]

_log = logging.getLogger(__name__)

#: `DiffusionModel.family` values (ComfyUI's supported_models classes SD3, Flux, FluxSchnell,
#: FluxInpaint).
FLOW_FAMILIES = ("sd3", "flux", "flux_schnell", "flux_inpaint")
#: UNETLoader's weight_dtype choices.
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
_FP8_OF = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
           "fp8_e5m2": torch.float8_e5m2}
_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIXES = {"sd3": "first_stage_model.", "flux": "vae."}
_CONFIG_KEY = "comfyc.config"


@dataclass(frozen=True, slots=True)
class LatentFormat:
    """ComfyUI's ``latent_formats`` entry of a model: how sampling space relates to VAE space.

    ComfyUI's LATENT holds VAE latents; the model's ``process_in`` maps them into the space the
    sampler works in and ``process_out`` back (before VAEDecode).

    Attributes:
        name: ``"sd3"`` or ``"flux"``.
        channels: Latent channels (16).
        scale: ``scale_factor``.
        shift: ``shift_factor``.
    """

    name: str
    channels: int
    scale: float
    shift: float

    def process_in(self, latent: Any) -> Any:
        """``(latent - shift) * scale`` (torch tensors or numpy arrays)."""
        return (latent - self.shift) * self.scale

    def process_out(self, latent: Any) -> Any:
        """``latent / scale + shift``."""
        return latent / self.scale + self.shift


#: ``comfy/latent_formats.py`` SD3 (SD3 and SD3.5).
SD3_LATENT_FORMAT = LatentFormat("sd3", 16, 1.5305, 0.0609)
#: ``comfy/latent_formats.py`` Flux (Flux.1 dev, schnell, fill).
FLUX_LATENT_FORMAT = LatentFormat("flux", 16, 0.3611, 0.1159)
#: ``sampling_settings`` of ComfyUI's supported_models classes, per family.
SAMPLING_SETTINGS: dict[str, dict[str, float]] = {
    "sd3": {"shift": 3.0},
    "flux": {},
    "flux_schnell": {"multiplier": 1.0, "shift": 1.0},
    "flux_inpaint": {},
}
_FLUX_DEFAULT_SHIFT = 1.15


def latent_format_for(family: str) -> LatentFormat:
    """The latent format of a family (``sd3``; ``flux``, ``flux_schnell``, ``flux_inpaint``)."""
    if family == "sd3":
        return SD3_LATENT_FORMAT
    if family.startswith("flux"):
        return FLUX_LATENT_FORMAT
    raise ValueError(f"family {family!r} has no 16-channel latent format; expected one of "
                     f"{FLOW_FAMILIES}")


# -- the model wrappers (ComfyUI's call signature) -----------------------------------------------


# -- the loaded objects --------------------------------------------------------------------------


@dataclass(slots=True)
class DiffusionModel:
    """An SD3/SD3.5 or Flux diffusion model (ComfyUI's MODEL from UNETLoader or a checkpoint).

    Attributes:
        transformer: diffusers ``SD3Transformer2DModel`` or ``FluxTransformer2DModel`` (eval,
            no grad), in the requested dtype.
        detected: Family, variant, ComfyUI-style and diffusers configs
            (`comfyc.compiler.models.dit_configs.DetectedTransformer`).
        weight_dtype: UNETLoader's ``weight_dtype`` applied (see the module docstring).
        source: The file.
        metadata: The file's safetensors metadata.
        file_dtypes: Floating dtypes stored in the file (``"bfloat16"``, ``"float8_e4m3fn"``).
    """

    transformer: Any
    detected: DetectedTransformer
    weight_dtype: str = "default"
    source: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    file_dtypes: frozenset[str] = frozenset()
    _wrapper: Any = None

    @property
    def family(self) -> str:
        """``"sd3"``, ``"flux"``, ``"flux_schnell"`` or ``"flux_inpaint"``."""
        return self.detected.family

    @property
    def variant(self) -> str:
        """The published model with this structure (``"sd35_large"``, ``"flux_dev"``, ...)."""
        return self.detected.variant

    @property
    def latent_format(self) -> LatentFormat:
        """The family's latent format (scale and shift)."""
        return latent_format_for(self.family)

    @property
    def guidance_embed(self) -> bool:
        """True when the model takes Flux's distilled guidance input (dev, fill)."""
        return bool(self.detected.comfy_config.get("guidance_embed", False))

    @property
    def in_channels(self) -> int:
        """Latent channels the model takes (16; 96 for Flux Fill)."""
        return int(self.detected.comfy_config["in_channels"])

    @property
    def context_dim(self) -> int:
        """Width of the text context (4096, T5-XXL's)."""
        return int(self.detected.comfy_config["context_in_dim"])

    @property
    def pooled_dim(self) -> int:
        """Width of the pooled input ``y`` (2048 SD3, 768 Flux)."""
        config = self.detected.comfy_config
        return int(config.get("adm_in_channels") or config["vec_in_dim"])

    @property
    def sampling_settings(self) -> dict[str, float]:
        """ComfyUI's ``sampling_settings`` of the family (shift, multiplier)."""
        return dict(SAMPLING_SETTINGS[self.family])

    def model_sampling(self) -> Any:
        """The family's default model sampling as the runtime's object.

        Returns:
            ``FlowModelSampling(3.0, 1000)`` (SD3), ``FluxModelSampling(1.15)`` (Flux dev/fill),
            ``FlowModelSampling(1.0, 1.0)`` (schnell); ``comfyc.runtime.model_sampling``.
        """
        from comfyc.runtime.model_sampling import FlowModelSampling, FluxModelSampling

        settings = SAMPLING_SETTINGS[self.family]
        if self.family in ("flux", "flux_inpaint"):
            return FluxModelSampling(settings.get("shift", _FLUX_DEFAULT_SHIFT))
        return FlowModelSampling(shift=settings.get("shift", 1.0),
                                 multiplier=settings.get("multiplier", 1000.0))

    @property
    def comfy_module(self) -> torch.nn.Module:
        """The transformer wrapped with ComfyUI's call signature (`Sd3Model` / `FluxModel`)."""
        if self._wrapper is None:
            wrapper = Sd3Model if self.detected.kind == "sd3" else FluxModel
            self._wrapper = wrapper(self.transformer)
        return self._wrapper


@dataclass(slots=True)
class FlowCheckpoint:
    """An SD3.5 or Flux all-in-one checkpoint (CheckpointLoaderSimple's MODEL, CLIP, VAE).

    Attributes:
        model: The diffusion model.
        vae: diffusers ``AutoencoderKL`` (16 latent channels, no quant convs; ``scaling_factor``
            and ``shift_factor`` set to the family's latent format), or None.
        text_encoders: The encoders in the file (``clip_type`` ``"sd3"`` or ``"flux"``).
        source: The file.
        metadata: Its safetensors metadata.
    """

    model: DiffusionModel
    vae: Any | None
    text_encoders: TextEncoders
    source: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """The model's family."""
        return self.model.family

    @property
    def latent_format(self) -> LatentFormat:
        """The model's latent format."""
        return self.model.latent_format


# -- building ------------------------------------------------------------------------------------


def build_transformer(detected: DetectedTransformer | Mapping[str, Any], kind: str | None = None,
                      *, device: str = "meta") -> Any:
    """The diffusers transformer for a detection (or a diffusers config plus its kind).

    Args:
        detected: A `DetectedTransformer`, or a diffusers config mapping.
        kind: ``"sd3"`` or ``"flux"`` when `detected` is a config.
        device: Where to allocate (``"meta"``: shapes only).
    """
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    if isinstance(detected, DetectedTransformer):
        config, kind = dict(detected.diffusers_config), detected.kind
    else:
        config = dict(detected)
    cls = SD3Transformer2DModel if kind == "sd3" else FluxTransformer2DModel
    with torch.device(device):
        return cls.from_config(config)


def _as_weights(state: Mapping[str, torch.Tensor] | WeightSource,
                metadata: Mapping[str, str] | None, source: Path | None) -> WeightSource:
    if isinstance(state, WeightSource):
        return state
    return WeightSource.from_dict(state, metadata, source)


def diffusion_model_from_weights(
    state: Mapping[str, torch.Tensor] | WeightSource,
    metadata: Mapping[str, str] | None = None,
    *,
    dtype: torch.dtype | None = torch.float32,
    weight_dtype: str = "default",
    source: Path | None = None,
) -> DiffusionModel:
    """Builds an SD3/Flux diffusion model from its weights (see `load_diffusion_model`).

    Args:
        state: The diffusion model's weights, bare or under ``model.diffusion_model.`` (other
            entries of a full checkpoint are ignored). Meta tensors give a meta module.
        metadata: safetensors metadata (``comfyc.config`` / ``comfyc.variant`` of comfyc's
            files).
        dtype: Floating dtype of the module (None keeps the file's; fp8 files give float32).
        weight_dtype: One of `WEIGHT_DTYPES`.
        source: The file, for messages.

    Returns:
        The diffusion model.

    Raises:
        ModelFormatError: Not an SD3/Flux model, or weights that do not fit.
    """
    from comfyc.compiler.models.single_file import _populate

    if weight_dtype not in WEIGHT_DTYPES:
        raise ModelFormatError(f"weight_dtype {weight_dtype!r}; expected one of {WEIGHT_DTYPES}")
    weights = _as_weights(state, metadata, source)
    metadata = dict(metadata if metadata is not None else weights.metadata)
    file_dtypes = weights.floating_dtypes()
    if weights.has_prefix(_UNET_PREFIX):
        weights = weights.view(_UNET_PREFIX)
    weights = weights.dequantize()
    shapes = weights.shape_table()
    if is_flux(shapes):
        names = {new: old for old, new in zip(weights.shapes, normalize_flux_keys(
            dict.fromkeys(weights.shapes)))}
        weights = weights.renamed(names)
        shapes = weights.shape_table()
    elif not is_mmdit(shapes):
        where = f" in {str(source)!r}" if source else ""
        raise ModelFormatError(
            f"the diffusion model{where} is neither SD3/SD3.5 nor Flux; UNet models (SD1.x, "
            "SD2.x, SDXL) load as checkpoints (load_checkpoint)"
        )
    detected = detect_transformer(shapes, metadata)
    overrides = json.loads(metadata.get(_CONFIG_KEY, "{}")).get("transformer")
    if overrides:
        detected = DetectedTransformer(
            detected.family, detected.variant, detected.published, detected.comfy_config,
            {**detected.diffusers_config, **overrides}, detected.notes)
    for note in detected.notes:
        _log.info("%s", note)
    module = build_transformer(detected)
    module_shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    plans = plans_for(detected.kind)(module_shapes)
    unexpected = sorted(set(weights.shapes) - {p.original for p in plans})
    if unexpected:
        raise ModelFormatError(
            f"the {detected.variant} diffusion model has weights the detected architecture "
            f"does not use: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}; the file "
            "may be a variant comfyc does not support"
        )
    quantize = _FP8_OF.get(weight_dtype)
    tensors: dict[str, torch.Tensor] = {}
    for plan in plans:
        if plan.original not in weights:
            raise ModelFormatError(
                f"the {detected.variant} diffusion model lacks weight {plan.original!r}; the "
                "file is incomplete or damaged"
            )
        original = weights[plan.original]
        if not original.is_meta:
            original = original.float() if is_fp8(original) else original
        for name, part in split_original(plan, original, module_shapes).items():
            tensors[name] = _to_module_dtype(part, dtype, quantize)
        del original
    module = _populate(module, tensors, f"{detected.variant} transformer")
    return DiffusionModel(module, detected, weight_dtype, source, metadata, file_dtypes)


def _to_module_dtype(tensor: torch.Tensor, dtype: torch.dtype | None,
                     quantize: torch.dtype | None) -> torch.Tensor:
    """A fresh, contiguous copy in `dtype`, rounded through `quantize` (fp8) when given."""
    target = dtype or (torch.float32 if is_fp8(tensor) else tensor.dtype)
    if tensor.is_meta:
        return tensor.to(target)
    if quantize is not None and tensor.is_floating_point():
        tensor = tensor.to(quantize).to(target)
    return torch.empty(tensor.shape, dtype=target).copy_(tensor)


def load_diffusion_model(
    path: str | os.PathLike[str],
    *,
    weight_dtype: str = "default",
    dtype: torch.dtype | None = torch.float32,
) -> DiffusionModel:
    """UNETLoader: loads an SD3/SD3.5 or Flux diffusion model from one file.

    Tensors are read one at a time, so memory stays near the size of the finished module.

    Args:
        path: ``.safetensors`` (or a weights-only pickle): a diffusion-model-only file or a full
            checkpoint (its diffusion model is taken).
        weight_dtype: UNETLoader's choice (`WEIGHT_DTYPES`; see the module docstring).
        dtype: Floating dtype of the module (float32 by default; None keeps the file's).

    Returns:
        The diffusion model.
    """
    file = Path(path)
    weights = WeightSource.open(file)
    return diffusion_model_from_weights(weights, weights.metadata, dtype=dtype,
                                        weight_dtype=weight_dtype, source=file)


def flow_checkpoint_from_weights(
    state: Mapping[str, torch.Tensor] | WeightSource,
    metadata: Mapping[str, str] | None = None,
    *,
    dtype: torch.dtype | None = torch.float32,
    source: Path | None = None,
) -> FlowCheckpoint:
    """Builds the modules of an SD3.5 / Flux all-in-one checkpoint (see `load_flow_checkpoint`).
    """
    from comfyc.compiler.models.single_file import vae_from_state_dict

    weights = _as_weights(state, metadata, source)
    metadata = dict(metadata if metadata is not None else weights.metadata)
    if not weights.has_prefix(_UNET_PREFIX):
        raise ModelFormatError(
            f"no model.diffusion_model.* weights{' in ' + repr(str(source)) if source else ''}; "
            "a diffusion-model-only file loads with load_diffusion_model (UNETLoader)"
        )
    model = diffusion_model_from_weights(weights, metadata, dtype=dtype, source=source)
    kind = model.detected.kind
    vae = None
    for prefix in (_VAE_PREFIXES[kind], *(p for p in _VAE_PREFIXES.values()
                                         if p != _VAE_PREFIXES[kind])):
        if weights.has_prefix(prefix):
            vae_state = dict(weights.view(prefix).items())
            overrides = json.loads(metadata.get(_CONFIG_KEY, "{}")).get("vae", {})
            vae = vae_from_state_dict(vae_state, dtype=dtype, overrides=overrides,
                                      family=model.family)
            break
    if vae is None:
        _log.warning("no VAE weights in %s; pass a separate VAE (VAELoader)", source)
    clip_type = "sd3" if kind == "sd3" else "flux"
    encoders = text_encoders_from_checkpoint(weights, clip_type, dtype=dtype, metadata=metadata,
                                             source=source)
    return FlowCheckpoint(model, vae, encoders, source, metadata)


def load_flow_checkpoint(
    path: str | os.PathLike[str], *, dtype: torch.dtype | None = torch.float32
) -> FlowCheckpoint:
    """CheckpointLoaderSimple for SD3.5 / Flux all-in-one files (or a diffusers folder).

    Args:
        path: A ``.safetensors`` checkpoint, or a diffusers ``StableDiffusion3Pipeline`` /
            ``FluxPipeline`` folder.
        dtype: Floating dtype of all modules.

    Returns:
        The checkpoint.
    """
    file = Path(path)
    if file.is_dir():
        from comfyc.compiler.models.flow_folder import load_flow_folder

        return load_flow_folder(file, dtype=dtype)
    weights = WeightSource.open(file)
    return flow_checkpoint_from_weights(weights, weights.metadata, dtype=dtype, source=file)


def checkpoint_family(path: str | os.PathLike[str]) -> str:
    """The family of a checkpoint or diffusion-model file, from its header only.

    Returns:
        ``"sd1"``, ``"sd2"``, ``"sdxl"``, ``"sdxl_refiner"`` or one of `FLOW_FAMILIES`.

    Raises:
        ModelFormatError: Not a model comfyc knows.
    """
    file = Path(path)
    if file.is_dir():
        from comfyc.compiler.models.flow_folder import folder_family

        return folder_family(file)
    weights = WeightSource.open(file)
    shapes = weights.shape_table()
    bare = {k[len(_UNET_PREFIX):]: v for k, v in shapes.items() if k.startswith(_UNET_PREFIX)}
    bare = bare or shapes
    if is_mmdit(bare) or is_flux(bare):
        return detect_transformer(normalize_flux_keys(bare), weights.metadata).family
    from comfyc.compiler.models.single_file import checkpoint_from_state_dict

    return checkpoint_from_state_dict(shapes, weights.metadata, source=file).family


def load_any_checkpoint(
    path: str | os.PathLike[str], *, dtype: torch.dtype | None = torch.float32
) -> Any:
    """CheckpointLoaderSimple for every supported family.

    Returns:
        A `FlowCheckpoint` (SD3/SD3.5, Flux) or a `LoadedCheckpoint` (SD1/SD2/SDXL).
    """
    family = checkpoint_family(path)
    if family in FLOW_FAMILIES:
        return load_flow_checkpoint(path, dtype=dtype)
    from comfyc.compiler.models.single_file import load_checkpoint

    return load_checkpoint(path, dtype=dtype)
