"""Runtime values of the link types that are not arrays: MODEL, CLIP and VAE.

They are thin handles on stages: a MODEL is a diffusion-model stage plus how to sample it (its
model sampling, latent format and the extra conditioning it takes), a CLIP is one or more
text-encoder stages plus the tokenizer rules, a VAE is a decoder/encoder pair. LATENT, IMAGE,
MASK and CONDITIONING are plain numpy values (see :mod:`comfyc.runtime.ops`).

Handles are described in programs as plain JSON (the ``LoadCheckpoint`` op's arguments), so
an artifact can rebuild them without the compiler: :func:`model_sampling_from_json` reads the
model-sampling facts.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends.base import Stage

__all__ = ["ModelRef", "ClipRef", "TextEncoderRef", "VaeRef", "UpscaleModelRef", "replace",
           "FAMILIES", "model_sampling_from_json"]

#: Model families the runtime knows how to condition (their UNet inputs and prompt rules).
FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner", "sd3", "flux")


def model_sampling_from_json(spec: Mapping[str, Any] | str | None) -> Any:
    """A :class:`~comfyc.runtime.model_sampling.ModelSampling` from its program description.

    Args:
        spec: ``{"kind": "discrete", "prediction": "eps" | "v_prediction", "zsnr": False}``,
            ``{"kind": "sd3", "shift": 3.0, "multiplier": 1000}``, ``{"kind": "flux",
            "max_shift", "base_shift", "width", "height"}`` (the ModelSamplingFlux node) or
            ``{"kind": "flux", "shift": mu}`` (a Flux checkpoint's own),
            ``{"kind": "aura_flow", "shift"}``, or the older plain prediction type string
            (``"epsilon"`` / ``"v_prediction"``); None is SD1's.
    """
    if spec is None or isinstance(spec, str):
        return _model_sampling_of(spec)
    try:
        key = tuple(sorted(spec.items()))
        hash(key)
    except TypeError:  # values that are not plain numbers or text: build it every time
        return _model_sampling_from_json(spec)
    return _model_sampling_of(key)


@functools.lru_cache(maxsize=64)
def _model_sampling_of(key: tuple[tuple[str, Any], ...] | str | None) -> Any:
    """One shared model sampling per description (ModelRef.sampling asks for it several times
    per image, and a flow model's table is 1,000-10,000 values to build; schedules computed on
    it are kept in its ``memo``)."""
    return _model_sampling_from_json(key if key is None or isinstance(key, str) else dict(key))


def _model_sampling_from_json(spec: Mapping[str, Any] | str | None) -> Any:
    from . import model_sampling as ms

    if spec is None or isinstance(spec, str):
        prediction = {"epsilon": "eps", None: "eps"}.get(spec, spec)  # type: ignore[arg-type]
        return ms.model_sampling_discrete(prediction)
    kind = spec.get("kind", "discrete")
    if kind == "discrete":
        return ms.model_sampling_discrete(spec.get("prediction", "eps"),
                                          bool(spec.get("zsnr", False)))
    if kind == "sd3":
        return ms.model_sampling_sd3(float(spec.get("shift", 3.0)),
                                     float(spec.get("multiplier", 1000)))
    if kind == "aura_flow":
        return ms.model_sampling_aura_flow(float(spec.get("shift", 1.73)))
    if kind == "flux" and "shift" in spec:  # A checkpoint's own: mu given directly.
        return ms.FluxModelSampling(shift=float(spec["shift"]))
    if kind == "flux":
        return ms.model_sampling_flux(float(spec.get("max_shift", 1.15)),
                                      float(spec.get("base_shift", 0.5)),
                                      int(spec.get("width", 1024)), int(spec.get("height", 1024)))
    from .errors import ProgramError

    raise ProgramError(f"unknown model sampling {kind!r} in this program; the artifact needs a "
                       f"newer comfyc")


@dataclass(frozen=True)
class ModelRef:
    """A MODEL: a diffusion-model stage and how to sample it.

    Attributes:
        unet: The stage (``unet(x, timestep, context, **extras)``).
        model_sampling: The sampling parameterisation (a
            :class:`~comfyc.runtime.model_sampling.ModelSampling`, or its JSON description).
        latent_scale: The latent format's scale factor (0.18215 SD1/SD2, 0.13025 SDXL).
        latent_shift: The latent format's shift (0 for SD1/SD2/SDXL).
        in_channels: UNet input channels (9 for inpainting models).
        name: What it was loaded from, for messages.
        family: ``sd1``, ``sd2``, ``sdxl`` or ``sdxl_refiner``: which extra conditioning the
            UNet takes (SDXL's ADM vector ``y``).
        latent_channels: The latent format's channels (4 SD1/SD2/SDXL, 16 SD3/Flux): an
            all-zero latent of another width is widened to it before sampling.
    """

    unet: Stage | None
    model_sampling: Any = None
    latent_scale: float = 0.18215
    in_channels: int = 4
    name: str = ""
    family: str = "sd1"
    latent_shift: float = 0.0
    latent_channels: int = 4

    @property
    def sampling(self) -> Any:
        """The model sampling as an object (built from its description when needed)."""
        value = self.model_sampling
        if value is None or isinstance(value, (str, Mapping)):
            return model_sampling_from_json(value)
        return value

    @property
    def prediction_type(self) -> str:
        """``epsilon``, ``v_prediction`` or ``const`` (for messages and older callers)."""
        prediction = self.sampling.prediction
        return "epsilon" if prediction == "eps" else prediction


@dataclass(frozen=True)
class TextEncoderRef:
    """One text encoder of a CLIP: its stages by layer and its tokenizer rules.

    Attributes:
        name: ComfyUI's name (``clip_l``, ``clip_h``, ``clip_g``).
        stages: Stages by CLIP layer (``-1`` last, ``-2`` penultimate …); a compiled artifact
            carries only the layers its workflow uses; the torch path makes any on demand.
        pad_token: The tokenizer's pad id (49407 pads with the end token; 0 with ``!``).
        default_layer: The layer used without CLIPSetLastLayer.
        pooled: This encoder gives the conditioning's pooled output.
        tokenizer: ``clip`` (77-token chunks with start and end tokens) or ``t5`` (one
            sequence ending in ``</s>``, padded to ``min_length``).
        min_length: T5's minimum padded length (77 SD3, 256 Flux).
        width: The hidden width (for the zeros ComfyUI puts in place of a missing encoder).
    """

    name: str
    stages: Mapping[int, Stage]
    pad_token: int = 49407
    default_layer: int = -1
    pooled: bool = True
    tokenizer: str = "clip"
    min_length: int = 77
    width: int = 0


@dataclass(frozen=True)
class ClipRef:
    """A CLIP: its text encoders (concatenated along the feature axis) and tokenizer rules.

    Attributes:
        encoders: The encoders in concatenation order (SD1: clip_l; SD2: clip_h; SDXL: clip_l
            then clip_g; the refiner: clip_g).
        layer: The layer CLIPSetLastLayer chose (None: each encoder's default).
        embeddings: Textual-inversion vectors by name (``[n, D]`` arrays).
        name: What it was loaded from, for messages.
        family: The model family it belongs to.
    """

    encoders: tuple[TextEncoderRef, ...]
    layer: int | None = None
    embeddings: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    family: str = "sd1"

    def layer_of(self, encoder: TextEncoderRef) -> int:
        """The CLIP layer an encoder's hidden states come from."""
        return self.layer if self.layer is not None else encoder.default_layer

    @property
    def effective_layer(self) -> int:
        """The first encoder's layer (single-encoder models)."""
        return self.layer_of(self.encoders[0]) if self.encoders else -1


@dataclass(frozen=True)
class VaeRef:
    """A VAE: decoder and encoder stages (either may be absent in an artifact)."""

    decoder: Stage | None
    encoder: Stage | None
    name: str = ""


@dataclass(frozen=True)
class UpscaleModelRef:
    """An UPSCALE_MODEL: the bare network stage and spandrel's facts ComfyUI's node uses.

    Attributes:
        stage: ``upscale(image [1,C,h,w]) -> [1,C',h·s,w·s]`` (no padding, no clamp).
        scale: Output pixels per input pixel.
        in_channels: Input channels.
        out_channels: Output channels.
        size_minimum: Smallest input side (smaller tiles are padded).
        size_multiple: Sides are padded to a multiple of this.
        network_multiple: A multiple the network pads to itself (SwinIR's window).
        architecture: ``ESRGAN``, ``Compact`` or ``SwinIR``.
        name: The file, for messages.
    """

    stage: Stage | None
    scale: int
    in_channels: int = 3
    out_channels: int = 3
    size_minimum: int = 0
    size_multiple: int = 1
    network_multiple: int = 1
    architecture: str = ""
    name: str = ""
