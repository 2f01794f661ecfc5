"""SD3/SD3.5 (MMDiT) and Flux transformers from tensor shapes, as ComfyUI's model detection.

Given the weights of a diffusion model in the original layout (``joint_blocks.*`` for SD3,
``double_blocks.*``/``single_blocks.*`` for Flux; any ``model.diffusion_model.`` prefix removed),
`detect_transformer` returns a `DetectedTransformer`: the family and variant, the fields that
ComfyUI's ``comfy/model_detection.py`` (``detect_unet_config``) reads, and the constructor
arguments of diffusers' ``SD3Transformer2DModel`` / ``FluxTransformer2DModel``.

SD3 / SD3.5 (ComfyUI's ``SD3`` class, one class for all of them):

* ``x_embedder.proj.weight`` ``[hidden, in_channels, p, p]``: the hidden size, the 16 latent
  channels and the patch size 2. ComfyUI's MMDiT fixes 64 channels per head, so
  ``depth = hidden / 64`` is both the number of heads and - in ComfyUI - the number of joint
  blocks: SD3 medium 24 (1536), SD3.5 medium 24, SD3.5 large 38 (2432). comfyc counts the
  blocks in the file instead (``num_layers``) and records in `DetectedTransformer.notes` when
  the two differ (ComfyUI could not load such a file).
* ``pos_embed`` ``[1, n, hidden]``: ``pos_embed_max_size = sqrt(n)`` (192 for SD3 medium and
  SD3.5 large, 384 for SD3.5 medium).
* ``context_embedder.weight`` ``[hidden, 4096]``: the context width (T5-XXL's); ``y_embedder.
  mlp.0.weight`` ``[hidden, 2048]``: the pooled width (CLIP-L 768 + CLIP-G 1280).
* ``joint_blocks.0.context_block.attn.ln_q.weight`` present: RMS q/k norm (SD3.5).
* ``joint_blocks.N.x_block.attn2.qkv.weight``: the dual-attention ("MMDiT-X") blocks of SD3.5
  medium (0..12).

Flux (ComfyUI's ``Flux``, ``FluxSchnell``, ``FluxInpaint``):

* ``img_in.weight`` ``[hidden, 16 * p * p]`` (p = 2): hidden 3072; heads = hidden / 128, since
  ComfyUI fixes the rotary axes at (16, 56, 56), 128 channels per head.
* ``txt_in.weight`` ``[hidden, 4096]`` (T5-XXL), ``vector_in.in_layer.weight``
  ``[hidden, 768]`` (CLIP-L pooled).
* ``guidance_in.in_layer.weight`` present: dev (guidance-distilled, family ``flux``); absent:
  schnell (family ``flux_schnell``). 96 input channels (``img_in`` 384 wide): Flux Fill
  (``FluxInpaint``).
* The number of ``double_blocks`` (19) and ``single_blocks`` (38). Norm scales are named
  ``*_norm.scale`` in Black Forest Labs' files and ``*_norm.weight`` once ComfyUI converted
  them; both are read.

Flux 2, Chroma and the other Flux relatives that ComfyUI detects in the same branch are refused
with a message naming them. The inputs only need ``.shape``, so meta tensors (or the shape table
of a file header) work.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comfyc.compiler.models.errors import ModelFormatError

__all__ = [
    "FLUX_AXES_DIM",
    "FLUX_HEAD_DIM",
    "FLUX_PUBLISHED",
    "SD3_HEAD_DIM",
    "SD3_PUBLISHED",
    "DetectedTransformer",
    "count_blocks",
    "detect_transformer",
    "detect_flux",
    "detect_sd3",
    "is_flux",
    "is_mmdit",
    "strip_prefix",
]

#: Channels per head of ComfyUI's MMDiT (``hidden_size = 64 * depth``, ``num_heads = depth``).
SD3_HEAD_DIM = 64
#: Rotary axes of Flux 1 (time/index, height, width); their sum is the head width.
FLUX_AXES_DIM = (16, 56, 56)
FLUX_HEAD_DIM = sum(FLUX_AXES_DIM)

#: Published SD3 variants, keyed by (hidden, blocks, qk_norm, dual layers, pos_embed_max_size).
SD3_PUBLISHED: dict[tuple[int, int, bool, tuple[int, ...], int], str] = {
    (1536, 24, False, (), 192): "sd3_medium",
    (1536, 24, True, tuple(range(13)), 384): "sd35_medium",
    (2432, 38, True, (), 192): "sd35_large",
}
#: Published Flux 1 variants, keyed by (hidden, double blocks, single blocks, in, guidance).
FLUX_PUBLISHED: dict[tuple[int, int, int, int, bool], str] = {
    (3072, 19, 38, 16, True): "flux_dev",
    (3072, 19, 38, 16, False): "flux_schnell",
    (3072, 19, 38, 96, True): "flux_fill",
}

_SD3_MARKER = "joint_blocks.0.context_block.attn.qkv.weight"
_FLUX_NORM_MARKERS = ("double_blocks.0.img_attn.norm.key_norm.scale",
                      "double_blocks.0.img_attn.norm.key_norm.weight")
# Flux-branch relatives in ComfyUI's detection that comfyc does not run (marker -> name).
_FLUX_RELATIVES = (
    ("double_stream_modulation_img.lin.weight", "Flux 2"),
    ("distilled_guidance_layer.norms.0.scale", "Chroma"),
    ("distilled_guidance_layer.norms.0.weight", "Chroma"),
    ("distilled_guidance_layer.0.norms.0.scale", "Chroma"),
    ("distilled_guidance_layer.0.norms.0.weight", "Chroma"),
    ("double_blocks.0.img_mlp.gate_proj.weight", "Ovis-Image (SwiGLU Flux)"),
    ("txt_norm.scale", "a Flux relative with a text norm (Ovis / LongCat)"),
    ("txt_norm.weight", "a Flux relative with a text norm (Ovis / LongCat)"),
)


@dataclass(frozen=True, slots=True)
class DetectedTransformer:
    """A diffusion transformer recognised from its weight shapes.

    Attributes:
        family: ComfyUI's model class in comfyc's vocabulary: ``"sd3"`` (SD3 and SD3.5, one
            class), ``"flux"`` (dev: guidance embedding), ``"flux_schnell"`` or
            ``"flux_inpaint"`` (Flux Fill, 96 input channels).
        variant: The published model with this structure: ``"sd3_medium"``, ``"sd35_medium"``,
            ``"sd35_large"``, ``"flux_dev"``, ``"flux_schnell"``, ``"flux_fill"``. When the
            widths or depths differ from every published model (comfyc's tiny and large test
            models) it is the closest one by structure and `published` is False.
        published: The shapes equal the published model's.
        comfy_config: The fields ComfyUI's ``detect_unet_config`` derives (its names:
            ``depth``, ``hidden_size``, ``num_heads``, ``patch_size``, ``in_channels``, ...).
        diffusers_config: Keyword arguments of ``SD3Transformer2DModel`` or
            ``FluxTransformer2DModel``.
        notes: Facts worth telling users (e.g. a block count ComfyUI would not load).
    """

    family: str
    variant: str
    published: bool
    comfy_config: dict[str, Any]
    diffusers_config: dict[str, Any]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def kind(self) -> str:
        """``"sd3"`` or ``"flux"``: which diffusers class and key map the model uses."""
        return "sd3" if self.family == "sd3" else "flux"


def strip_prefix(state: Mapping[str, Any], prefix: str = "model.diffusion_model.") -> dict[
        str, Any]:
    """The entries under `prefix` with it removed, or all entries when none has it.

    UNETLoader files come both bare (``double_blocks.0...``) and with the checkpoint prefix.
    """
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def count_blocks(state: Mapping[str, Any], prefix: str) -> int:
    """Consecutive block count from 0, as ComfyUI's ``count_blocks`` (``prefix`` + index + .)."""
    count = 0
    while any(k.startswith(f"{prefix}{count}.") for k in state):
        count += 1
    return count


def _shape(state: Mapping[str, Any], key: str, what: str) -> tuple[int, ...]:
    tensor = state.get(key)
    if tensor is None:
        raise ModelFormatError(
            f"the {what} has no weight {key!r}; the file is incomplete or another architecture"
        )
    return tuple(int(d) for d in tensor.shape)


def is_mmdit(state: Mapping[str, Any]) -> bool:
    """True for SD3/SD3.5 MMDiT weights (prefix removed)."""
    return _SD3_MARKER in state


def is_flux(state: Mapping[str, Any]) -> bool:
    """True for weights in ComfyUI's Flux detection branch (Flux 1, 2, Chroma, ...)."""
    return any(m in state for m in _FLUX_NORM_MARKERS)


def detect_transformer(
    state: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> DetectedTransformer:
    """Recognises an SD3/SD3.5 or Flux transformer from its weight shapes.

    Args:
        state: Diffusion-model weights in the original layout, prefix removed (see
            `strip_prefix`); only ``.shape`` is used.
        metadata: safetensors metadata; ``comfyc.variant`` names the variant of comfyc's own
            reduced models.

    Returns:
        The detection.

    Raises:
        ModelFormatError: Neither SD3 nor a supported Flux, with what was found.
    """
    if is_mmdit(state):
        return detect_sd3(state, metadata)
    if is_flux(state):
        return detect_flux(state, metadata)
    names = sorted({k.split(".", 1)[0] for k in state})[:8]
    raise ModelFormatError(
        f"the diffusion model is neither SD3/SD3.5 (joint_blocks.*) nor Flux (double_blocks.*); "
        f"found top-level names {names}"
    )


def detect_sd3(
    state: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> DetectedTransformer:
    """SD3/SD3.5 MMDiT detection (see the module docstring)."""
    what = "SD3 transformer"
    hidden, in_channels, patch, _ = _shape(state, "x_embedder.proj.weight", what)
    out_rows = _shape(state, "final_layer.linear.weight", what)[0]
    out_channels = out_rows // (patch * patch)
    if "pos_embed" not in state:
        raise ModelFormatError(
            "the SD3 transformer has no stored pos_embed (ComfyUI then computes sin-cos "
            "positions on the fly); comfyc supports the published layout with pos_embed"
        )
    patches = _shape(state, "pos_embed", what)[1]
    pos_max = round(math.sqrt(patches))
    if pos_max * pos_max != patches:
        raise ModelFormatError(f"SD3 pos_embed holds {patches} positions; expected a square")
    context_out, context_dim = _shape(state, "context_embedder.weight", what)
    if "y_embedder.mlp.0.weight" not in state:
        raise ModelFormatError("the SD3 transformer has no y_embedder (pooled text input); "
                               "expected the published SD3/SD3.5 layout")
    pooled_dim = _shape(state, "y_embedder.mlp.0.weight", what)[1]
    if "context_processor.layers.0.attn.qkv.weight" in state:
        raise ModelFormatError("the SD3 transformer has a context_processor; comfyc supports "
                               "SD3 medium, SD3.5 medium and SD3.5 large")
    if hidden % SD3_HEAD_DIM:
        raise ModelFormatError(f"SD3 hidden size {hidden} is not a multiple of 64")
    if context_out != hidden:
        raise ModelFormatError(
            f"SD3 context_embedder projects to {context_out}, the hidden size is {hidden}; "
            "expected them equal"
        )
    depth = hidden // SD3_HEAD_DIM
    blocks = count_blocks(state, "joint_blocks.")
    qk_norm = "joint_blocks.0.context_block.attn.ln_q.weight" in state
    dual = tuple(sorted({int(m.group(1)) for k in state
                         if (m := re.match(r"joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight$",
                                           k))}))
    key = (hidden, blocks, qk_norm, dual, pos_max)
    published = key in SD3_PUBLISHED
    if published:
        variant = SD3_PUBLISHED[key]
    else:
        # NOTE: the structure decides: dual attention = SD3.5 medium, q/k norm alone = SD3.5
        # large, neither = SD3 medium.
        variant = "sd35_medium" if dual else ("sd35_large" if qk_norm else "sd3_medium")
    variant = (metadata or {}).get("comfyc.variant", variant)
    notes = []
    if blocks != depth:
        notes.append(
            f"{blocks} joint blocks at hidden size {hidden}: ComfyUI's MMDiT builds "
            f"hidden / 64 = {depth} blocks, so ComfyUI itself cannot load this file (comfyc's "
            "reduced 'large' test models only)"
        )
    comfy = {
        "in_channels": in_channels, "out_channels": out_channels, "patch_size": patch,
        "depth": depth, "hidden_size": hidden, "num_heads": depth, "num_blocks": blocks,
        "adm_in_channels": pooled_dim, "context_in_dim": context_dim,
        "pos_embed_max_size": pos_max, "num_patches": patches,
        "qk_norm": "rms" if qk_norm else None, "x_block_self_attn_layers": list(dual),
    }
    diffusers = {
        "sample_size": 128, "patch_size": patch, "in_channels": in_channels,
        "num_layers": blocks, "attention_head_dim": SD3_HEAD_DIM,
        "num_attention_heads": hidden // SD3_HEAD_DIM, "joint_attention_dim": context_dim,
        "caption_projection_dim": hidden, "pooled_projection_dim": pooled_dim,
        "out_channels": out_channels, "pos_embed_max_size": pos_max,
        "dual_attention_layers": list(dual), "qk_norm": "rms_norm" if qk_norm else None,
    }
    return DetectedTransformer("sd3", variant, published, comfy, diffusers, tuple(notes))


def detect_flux(
    state: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> DetectedTransformer:
    """Flux 1 (dev, schnell, fill) detection (see the module docstring)."""
    what = "Flux transformer"
    for marker, name in _FLUX_RELATIVES:
        if marker in state:
            raise ModelFormatError(
                f"this is {name} (weight {marker!r}), a relative of Flux that comfyc does not "
                "support; comfyc runs Flux.1 dev, schnell and fill"
            )
    if "img_in.weight" not in state:
        raise ModelFormatError("the Flux transformer has no img_in.weight (Chroma Radiance?); "
                               "comfyc runs Flux.1 dev, schnell and fill")
    patch = 2
    hidden, packed_in = _shape(state, "img_in.weight", what)
    in_channels = packed_in // (patch * patch)
    out_packed = _shape(state, "final_layer.linear.weight", what)[0]
    context_dim = _shape(state, "txt_in.weight", what)[1]
    if "vector_in.in_layer.weight" not in state:
        raise ModelFormatError("the Flux transformer has no vector_in (pooled CLIP input); "
                               "comfyc runs Flux.1 dev, schnell and fill")
    pooled_dim = _shape(state, "vector_in.in_layer.weight", what)[1]
    if hidden % FLUX_HEAD_DIM:
        raise ModelFormatError(f"Flux hidden size {hidden} is not a multiple of "
                               f"{FLUX_HEAD_DIM} (sum of the rotary axes {FLUX_AXES_DIM})")
    heads = hidden // FLUX_HEAD_DIM
    depth = count_blocks(state, "double_blocks.")
    single = count_blocks(state, "single_blocks.")
    mlp = _shape(state, "double_blocks.0.img_mlp.0.weight", what)[0] if depth else 4 * hidden
    if mlp != 4 * hidden:
        raise ModelFormatError(f"Flux MLP width {mlp} is not 4 x hidden ({4 * hidden}); "
                               "diffusers' Flux transformer fixes mlp_ratio 4")
    if depth and "double_blocks.0.img_attn.qkv.bias" not in state:
        raise ModelFormatError("the Flux attention has no qkv bias; Flux.1 has one")
    guidance = "guidance_in.in_layer.weight" in state
    if in_channels > 16:
        family = "flux_inpaint"
    else:
        family = "flux" if guidance else "flux_schnell"
    key = (hidden, depth, single, in_channels, guidance)
    published = key in FLUX_PUBLISHED
    variant = FLUX_PUBLISHED.get(key) or {
        "flux_inpaint": "flux_fill", "flux": "flux_dev", "flux_schnell": "flux_schnell"}[family]
    variant = (metadata or {}).get("comfyc.variant", variant)
    comfy = {
        "image_model": "flux", "in_channels": in_channels, "out_channels": out_packed // 4,
        "patch_size": patch, "hidden_size": hidden, "num_heads": heads,
        "axes_dim": list(FLUX_AXES_DIM), "theta": 10000, "mlp_ratio": 4.0, "qkv_bias": True,
        "context_in_dim": context_dim, "vec_in_dim": pooled_dim, "depth": depth,
        "depth_single_blocks": single, "guidance_embed": guidance,
    }
    diffusers = {
        "patch_size": 1, "in_channels": packed_in, "out_channels": out_packed,
        "num_layers": depth, "num_single_layers": single, "attention_head_dim": FLUX_HEAD_DIM,
        "num_attention_heads": heads, "joint_attention_dim": context_dim,
        "pooled_projection_dim": pooled_dim, "guidance_embeds": guidance,
        "axes_dims_rope": list(FLUX_AXES_DIM),
    }
    return DetectedTransformer(family, variant, published, comfy, diffusers)
