"""What the compiler's model store loads for each kind of loader, behind one interface.

A MODEL / CLIP / VAE value is traced back at compile time to the loader that made it, and the
store (:class:`comfyc.compiler.lowering.program.TorchModelCache`) loads it by a *weights key*:

========================================  ==============================================
key                                       loader
========================================  ==============================================
``NAME``                                  CheckpointLoaderSimple (every family)
``<unet WEIGHT_DTYPE> NAME``              UNETLoader (SD3/SD3.5 and Flux diffusion models)
``<clip TYPE> NAME[ + NAME2[ + NAME3]]``  CLIPLoader, DualCLIPLoader, TripleCLIPLoader
========================================  ==============================================

(ComfyUI names come from a folder listing; a name beginning ``<`` is not one a Windows user can
make, and :func:`parse_weights_key` only reads the two forms above.)

A checkpoint of the SD1/SD2/SDXL families loads as a
:class:`~comfyc.compiler.models.single_file.LoadedCheckpoint`; everything else loads as a
:class:`FlowLoaded`, which has the same attributes the lowering reads (``unet``, ``vae``,
``text_encoders``, ``family`` …), holding the parts a loader gives (a UNETLoader key has a
``unet`` only, a CLIP loader key text encoders only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelFormatError

__all__ = ["FlowEncoderSpec", "FlowLoaded", "unet_key", "clip_key", "parse_weights_key",
           "flow_from_checkpoint", "flow_from_diffusion_model", "flow_from_text_encoders",
           "runtime_family"]

_KEY = re.compile(r"^<(unet|clip) ([^>]*)> (.+)$")
_CLIP_SEPARATOR = " + "


def unet_key(name: str, weight_dtype: str) -> str:
    """The weights key of ``UNETLoader(unet_name=name, weight_dtype=...)``."""
    return f"<unet {weight_dtype}> {name}"


def clip_key(names: list[str] | tuple[str, ...], clip_type: str) -> str:
    """The weights key of a CLIP loader (one to three files and ComfyUI's ``type``)."""
    return f"<clip {clip_type}> {_CLIP_SEPARATOR.join(names)}"


def parse_weights_key(key: str) -> tuple[str, str, list[str]]:
    """``(kind, option, names)``: ``("checkpoint", "", [name])``, ``("unet", dtype, [name])``
    or ``("clip", type, names)``."""
    match = _KEY.match(key)
    if match is None:
        return "checkpoint", "", [key]
    kind, option, rest = match.groups()
    names = rest.split(_CLIP_SEPARATOR) if kind == "clip" else [rest]
    return kind, option, names


def runtime_family(family: str) -> str:
    """The runtime's family for a loaded one: ``flux_schnell`` conditions as ``flux``."""
    return "flux" if family.startswith("flux") else family


@dataclass(frozen=True)
class FlowEncoderSpec:
    """How ComfyUI runs one text encoder of an SD3 / Flux CLIP (what a prompt needs).

    Attributes:
        attribute: The :class:`FlowLoaded` attribute holding the module.
        name: ``clip_l``, ``clip_g`` or ``t5xxl``.
        width: Hidden width.
        pad_token: Pad id (49407 CLIP-L, 0 CLIP-G and T5).
        default_layer: The layer without CLIPSetLastLayer (-2 SD3's CLIPs, -1 the last).
        layer_norm_hidden_state: A chosen hidden layer goes through the final norm.
        pooled: Its pooled output is the conditioning's (or part of it).
        tokenizer: ``clip`` or ``t5``.
        min_length: T5's minimum padded length (77 SD3, 256 Flux).
        projected: The pooled output goes through ``text_projection`` (CLIP-G).
    """

    attribute: str
    name: str
    width: int
    pad_token: int
    default_layer: int
    layer_norm_hidden_state: bool
    pooled: bool = True
    tokenizer: str = "clip"
    min_length: int = 77
    projected: bool = False


@dataclass
class FlowLoaded:
    """An SD3 / Flux model part as the lowering reads a checkpoint (see the module docstring).

    Attributes:
        family: ``sd3`` or ``flux`` (the runtime's); ``clip_type`` for a CLIP loader's.
        unet: The diffusion model called as ComfyUI calls it, ``(x, t, context, y[,
            guidance])`` (:attr:`DiffusionModel.comfy_module`), or None.
        vae: diffusers ``AutoencoderKL`` (16 channels), or None.
        clip_l, clip_g, t5xxl: Text-encoder modules, or None.
        text_encoders: Their specs, in ComfyUI's order.
        model: The :class:`~comfyc.compiler.models.flow.DiffusionModel`, or None.
        source: Where it came from (for messages).
    """

    family: str
    unet: Any = None
    vae: Any = None
    clip_l: Any = None
    clip_g: Any = None
    t5xxl: Any = None
    text_encoders: list[FlowEncoderSpec] = field(default_factory=list)
    model: Any = None
    source: Path | None = None
    adm_in_channels: int | None = None
    prediction_type: str = "const"
    #: LoRA merging reads these components (none for flow models yet).
    components: tuple[str, ...] = ("unet", "clip_l", "clip_g", "t5xxl")

    @property
    def latent_scale(self) -> float:
        """The latent format's scale (1.5305 SD3, 0.3611 Flux)."""
        return float(self.model.latent_format.scale) if self.model is not None else 1.0

    @property
    def latent_shift(self) -> float:
        """The latent format's shift (0.0609 SD3, 0.1159 Flux)."""
        return float(self.model.latent_format.shift) if self.model is not None else 0.0

    @property
    def latent_channels(self) -> int:
        """16."""
        return int(self.model.latent_format.channels) if self.model is not None else 16

    @property
    def in_channels(self) -> int:
        """The model's input channels (16)."""
        return int(self.model.in_channels) if self.model is not None else 16

    def unet_info(self) -> dict[str, Any]:
        """The diffusion-model stage's facts (its extra inputs: ``y``, Flux-dev's
        ``guidance``)."""
        model = self._need_model()
        extra = ["y", "guidance"] if model.guidance_embed else ["y"]
        return {"prediction_type": "const", "family": self.family, "arch": "dit",
                "variant": model.variant, "out_channels": 16, "extra_inputs": extra,
                "pooled_dim": int(model.pooled_dim), "context_dim": int(model.context_dim)}

    def model_sampling_spec(self) -> dict[str, Any]:
        """The model's own sampling as a program describes it."""
        model = self._need_model()
        settings = model.sampling_settings
        if self.family == "flux" and model.family != "flux_schnell":
            return {"kind": "flux", "shift": float(settings.get("shift", 1.15))}
        return {"kind": "sd3", "shift": float(settings.get("shift", 1.0)),
                "multiplier": float(settings.get("multiplier", 1000.0))}

    def _need_model(self) -> Any:
        if self.model is None:
            raise ModelFormatError(f"{self.source or 'this file'} holds no diffusion model")
        return self.model


def _specs(encoders: Any, clip_type: str) -> list[FlowEncoderSpec]:
    """The encoder specs of a ComfyUI CLIP of ``clip_type`` (``sd3`` or ``flux``)."""
    t5_min = 256 if clip_type == "flux" else 77
    out = []
    if encoders.clip_l is not None:
        if clip_type == "flux":
            out.append(FlowEncoderSpec("clip_l", "clip_l", encoders.clip_l.width, 49407, -1,
                                       True))
        else:
            out.append(FlowEncoderSpec("clip_l", "clip_l", encoders.clip_l.width, 49407, -2,
                                       False))
    if encoders.clip_g is not None:
        out.append(FlowEncoderSpec("clip_g", "clip_g", encoders.clip_g.width, 0, -2, False,
                                   projected=True))
    if encoders.t5xxl is not None:
        out.append(FlowEncoderSpec("t5xxl", "t5xxl", encoders.t5xxl.width, 0, -1, True,
                                   pooled=False, tokenizer="t5", min_length=t5_min))
    return out


def flow_from_text_encoders(encoders: Any, source: Path | None = None) -> FlowLoaded:
    """A CLIP loader's :class:`~comfyc.compiler.models.text_encoders.TextEncoders`.

    Raises:
        ModelFormatError: A type comfyc does not run (only ``sd3`` and ``flux``).
    """
    if encoders.clip_type not in ("sd3", "flux"):
        raise ModelFormatError(
            f"CLIP type {encoders.clip_type!r} is not supported by comfyc's runtime yet; it runs "
            f"'sd3' and 'flux' text encoders from separate files (SD1/SDXL prompts use the "
            f"checkpoint's own CLIP)")
    return FlowLoaded(
        encoders.clip_type,
        clip_l=encoders.clip_l.module if encoders.clip_l is not None else None,
        clip_g=encoders.clip_g.module if encoders.clip_g is not None else None,
        t5xxl=encoders.t5xxl.module if encoders.t5xxl is not None else None,
        text_encoders=_specs(encoders, encoders.clip_type), source=source)


def flow_from_diffusion_model(model: Any) -> FlowLoaded:
    """UNETLoader's :class:`~comfyc.compiler.models.flow.DiffusionModel`.

    Raises:
        ModelFormatError: Flux Fill (its image-and-mask input is not supported yet).
    """
    if model.family == "flux_inpaint":
        raise ModelFormatError(
            f"{model.source or 'the model'} is a Flux Fill (inpainting) model; its 96-channel "
            "image-and-mask input is not supported by comfyc yet")
    return FlowLoaded(runtime_family(model.family), unet=model.comfy_module, model=model,
                      source=model.source)


def flow_from_checkpoint(checkpoint: Any) -> FlowLoaded:
    """An all-in-one SD3.5 / Flux :class:`~comfyc.compiler.models.flow.FlowCheckpoint`."""
    loaded = flow_from_diffusion_model(checkpoint.model)
    encoders = checkpoint.text_encoders
    loaded.vae = checkpoint.vae
    loaded.clip_l = encoders.clip_l.module if encoders.clip_l is not None else None
    loaded.clip_g = encoders.clip_g.module if encoders.clip_g is not None else None
    loaded.t5xxl = encoders.t5xxl.module if encoders.t5xxl is not None else None
    loaded.text_encoders = _specs(encoders, encoders.clip_type)
    loaded.source = checkpoint.source
    return loaded
