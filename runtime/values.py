"""Runtime values of the link types that are not arrays: MODEL, CLIP and VAE.

They are thin handles on stages: a MODEL is a UNet stage plus how to read its output, a CLIP is
a text-encoder stage plus the tokenizer rules, a VAE is a decoder/encoder pair. LATENT, IMAGE,
MASK and CONDITIONING are plain numpy values (see :mod:`comfyc.runtime.ops`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backends.base import Stage

__all__ = ["ModelRef", "ClipRef", "VaeRef", "replace"]


@dataclass(frozen=True)
class ModelRef:
    """A MODEL: a UNet stage and its sampling parameterisation.

    Attributes:
        unet: The stage.
        prediction_type: ``epsilon`` or ``v_prediction``.
        latent_scale: The latent format's scale factor (0.18215 for SD1/SD2).
        in_channels: UNet input channels (9 for inpainting models).
        name: What it was loaded from, for messages.
    """

    unet: Stage
    prediction_type: str = "epsilon"
    latent_scale: float = 0.18215
    in_channels: int = 4
    name: str = ""


@dataclass(frozen=True)
class ClipRef:
    """A CLIP: a text encoder and its tokenizer rules.

    Attributes:
        encoders: Text-encoder stages by CLIP layer (``-1`` last, ``-2`` penultimate …); a
            compiled artifact carries only the layers its workflow uses.
        layer: The layer CLIPSetLastLayer chose (None: the model's default).
        default_layer: The model's default layer (-1 for SD1, -2 for SD2).
        pad_token: 49407 (SD1) or 0 (SD2).
        embeddings: Textual-inversion vectors by name (``[n, D]`` arrays).
        name: What it was loaded from, for messages.
    """

    encoders: dict[int, Stage]
    layer: int | None = None
    default_layer: int = -1
    pad_token: int = 49407
    embeddings: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    @property
    def effective_layer(self) -> int:
        """The CLIP layer encodings come from."""
        return self.layer if self.layer is not None else self.default_layer


@dataclass(frozen=True)
class VaeRef:
    """A VAE: decoder and encoder stages (either may be absent in an artifact)."""

    decoder: Stage | None
    encoder: Stage | None
    name: str = ""
