"""Architecture inference from tensor shapes, as ComfyUI's model detection does.

Given the weights of a single-file checkpoint (original names, component prefix removed), these
functions return the constructor arguments of the diffusers/transformers modules:

* UNet: model channels and channel multipliers (from each level's first resnet), layers per
  block, which levels have cross-attention, transformer depth, context dim (768 SD1 / 1024 SD2,
  from ``attn2.to_k``), linear vs 1x1-conv ``proj_in`` (SD2 is linear), in/out channels (9 input
  channels = inpainting), time-embedding width.
* Attention heads cannot be read from shapes. Like ComfyUI we use the family convention: SD1
  (conv proj_in) has 8 heads; SD2 (linear proj_in) has 64 channels per head. GroupNorm groups
  (32) and the CLIP activation (quick_gelu for OpenAI CLIP, gelu for OpenCLIP) are conventions
  too. comfyc writes its own files with a ``comfyc.config`` metadata entry that overrides them.
* SDXL: a ``label_emb.0.0`` linear makes the UNet ADM-conditioned (ComfyUI's
  ``num_classes="sequential"``); its input width is ``adm_in_channels`` (2816 base, 2560 refiner)
  and becomes diffusers' ``addition_embed_type="text_time"`` with 256-wide time-id embeddings
  (ComfyUI's ``Timestep(256)``). SDXL's UNet has no attention in its first level and per-level
  transformer depths ([0, 2, 10] base, [0, 4, 4, 0] refiner); both come out of the same rules.
* VAE: base channels, multipliers, res blocks per level, latent channels, mid attention, and
  whether the 1x1 quant convolutions exist (SD1/SD2/SDXL: yes; SD3/Flux 16-channel VAEs: no).
* CLIP text encoder: vocabulary, width, layers, MLP width, positions; heads = width / 64.

The inputs only need ``.shape`` and ``.ndim``, so meta tensors work. A value that the
conventions cannot give (e.g. SD2-style heads for channels that are not multiples of 64) is
returned as None; `require_complete` turns a None left after metadata overrides into an error.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

from comfyc.compiler.models.errors import ModelFormatError

__all__ = [
    "ADM_TIME_EMBED_DIM",
    "LATENT_SCALE",
    "SDXL_LATENT_SCALE",
    "infer_clip_config",
    "infer_unet_config",
    "infer_vae_config",
    "require_complete",
]

#: Latent scale of SD1.x and SD2.x (`LatentFormat SD15.scale_factor`).
LATENT_SCALE = 0.18215
#: Latent scale of SDXL base, refiner and Turbo (`LatentFormat SDXL.scale_factor`).
SDXL_LATENT_SCALE = 0.13025
#: Width of each sinusoidal size/crop/aesthetic embedding in SDXL's ADM vector (`Timestep(256)`).
ADM_TIME_EMBED_DIM = 256
_SD1_HEADS = 8
_SD2_HEAD_CHANNELS = 64
_CLIP_HEAD_CHANNELS = 64
_NORM_GROUPS = 32


class _Shaped(Protocol):
    @property
    def shape(self) -> Any: ...  # noqa: D102

    @property
    def ndim(self) -> int: ...  # noqa: D102


def _shape(state: Mapping[str, _Shaped], key: str, what: str) -> tuple[int, ...]:
    tensor = state.get(key)
    if tensor is None:
        raise ModelFormatError(
            f"the {what} has no weight {key!r}; expected an SD1.x/SD2.x/SDXL checkpoint in the "
            "original single-file layout (is this an SD3, Flux or other model?)"
        )
    return tuple(int(d) for d in tensor.shape)


def _indices(state: Mapping[str, Any], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := regex.match(k))})


def infer_unet_config(state: Mapping[str, _Shaped]) -> dict[str, Any]:
    """Infers a diffusers `UNet2DConditionModel` config from LDM UNet weights.

    Args:
        state: Weights named like ``input_blocks.1.0.in_layers.0.weight`` (prefix removed).

    Returns:
        Keyword arguments for ``UNet2DConditionModel(**config)``.

    Raises:
        ModelFormatError: The layout is not an SD1.x/SD2.x/SDXL-style UNet.
    """
    conv_in = _shape(state, "input_blocks.0.0.weight", "UNet")
    model_channels, in_channels = conv_in[0], conv_in[1]
    out_channels = _shape(state, "out.2.weight", "UNet")[0]
    time_dim = _shape(state, "time_embed.0.weight", "UNet")[0]

    levels: list[list[tuple[int, bool, int]]] = [[]]  # per level: (channels, attention, depth)
    for i in _indices(state, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{i}.0.op.weight" in state:
            levels.append([])
            continue
        channels = _shape(state, f"input_blocks.{i}.0.out_layers.3.weight", "UNet")[0]
        depth = len(_indices(state, rf"input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\."))
        levels[-1].append((channels, depth > 0, depth))
    if any(len(level) != len(levels[0]) or not level for level in levels):
        raise ModelFormatError(
            f"UNet levels hold {[len(level) for level in levels]} resnets; expected the same "
            "number in every level (SD1.x/SD2.x UNet)"
        )
    block_out = []
    attention = []
    depths = []
    for number, level in enumerate(levels):
        channel_set = {c for c, _, _ in level}
        attention_set = {a for _, a, _ in level}
        if len(channel_set) != 1 or len(attention_set) != 1:
            raise ModelFormatError(
                f"UNet level {number} mixes channel counts {sorted(channel_set)} or attention; "
                "expected uniform levels (SD1.x/SD2.x UNet)"
            )
        block_out.append(level[0][0])
        attention.append(level[0][1])
        depths.append(max(d for _, _, d in level))
    if not any(attention):
        raise ModelFormatError("the UNet has no cross-attention blocks; expected an SD1.x/SD2.x "
                               "UNet with transformer blocks")
    first = next(i for i in _indices(state, r"input_blocks\.(\d+)\.1\.proj_in\.weight"))
    proj_in = state[f"input_blocks.{first}.1.proj_in.weight"]
    linear = proj_in.ndim == 2
    context_dim = _shape(
        state, f"input_blocks.{first}.1.transformer_blocks.0.attn2.to_k.weight", "UNet"
    )[1]
    if "middle_block.1.proj_in.weight" not in state:
        raise ModelFormatError("the UNet has no middle_block.1 attention; expected an "
                               "SD1.x/SD2.x UNet (UNetMidBlock2DCrossAttn)")
    mid_depth = len(_indices(state, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    heads: int | list[int] | None
    if linear:
        # NOTE: None = not derivable; the loader fails unless metadata supplies the value.
        divisible = not any(c % _SD2_HEAD_CHANNELS for c in block_out)
        heads = [c // _SD2_HEAD_CHANNELS for c in block_out] if divisible else None
    else:
        heads = _SD1_HEADS
    # NOTE: diffusers takes one int when every transformer has the same depth, else a list per
    # down level (levels without attention ignore their entry; the mid block uses the last).
    distinct = {d for d, a in zip(depths, attention) if a} | {mid_depth}
    transformer_layers: int | list[int]
    if len(distinct) == 1:
        transformer_layers = distinct.pop()
    else:
        transformer_layers = [d if a else 1 for d, a in zip(depths, attention)]
    if model_channels != block_out[0]:
        raise ModelFormatError(
            f"UNet conv_in has {model_channels} channels but the first level {block_out[0]}; "
            "expected them equal (SD1.x/SD2.x UNet)"
        )
    config: dict[str, Any] = {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "block_out_channels": block_out,
        "layers_per_block": len(levels[0]),
        "down_block_types": [
            "CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention
        ],
        "up_block_types": [
            "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)
        ],
        "cross_attention_dim": context_dim,
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "transformer_layers_per_block": transformer_layers,
        "norm_num_groups": _NORM_GROUPS,
        "sample_size": 64,
    }
    if time_dim != 4 * model_channels:
        config["time_embedding_dim"] = time_dim
    if "label_emb.0.weight" in state:
        raise ModelFormatError(
            "the UNet has a class-label embedding (label_emb.0.weight, ComfyUI num_classes=int); "
            "comfyc supports SD1.x/SD2.x and SDXL's ADM vector (label_emb.0.0/0.2) only"
        )
    if "label_emb.0.0.weight" in state:
        adm = _shape(state, "label_emb.0.0.weight", "UNet")
        _shape(state, "label_emb.0.2.weight", "UNet")
        # NOTE: diffusers' text_time embedding = ldm's label_emb applied to the ADM vector
        # [pooled text embedding, 256-wide sinusoids of the size/crop/score ids].
        config["addition_embed_type"] = "text_time"
        config["addition_time_embed_dim"] = ADM_TIME_EMBED_DIM
        config["projection_class_embeddings_input_dim"] = adm[1]
    return config


def infer_vae_config(state: Mapping[str, _Shaped]) -> dict[str, Any]:
    """Infers a diffusers `AutoencoderKL` config from LDM autoencoder weights.

    Args:
        state: Weights named like ``encoder.down.0.block.0.conv1.weight`` (prefix removed).

    Returns:
        Keyword arguments for ``AutoencoderKL(**config)``.
    """
    conv_in = _shape(state, "encoder.conv_in.weight", "VAE")
    levels = _indices(state, r"encoder\.down\.(\d+)\.")
    if not levels:
        raise ModelFormatError("the VAE has no encoder.down.* weights; expected an LDM "
                               "AutoencoderKL (SD1.x/SD2.x VAE)")
    block_out = [
        _shape(state, f"encoder.down.{i}.block.0.conv2.weight", "VAE")[0] for i in levels
    ]
    per_level = len(_indices(state, r"encoder\.down\.0\.block\.(\d+)\."))
    latent2 = _shape(state, "encoder.conv_out.weight", "VAE")[0]
    return {
        "in_channels": conv_in[1],
        "out_channels": _shape(state, "decoder.conv_out.weight", "VAE")[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": block_out,
        "layers_per_block": per_level,
        "latent_channels": latent2 // 2,
        "norm_num_groups": _NORM_GROUPS,
        "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in state,
        "scaling_factor": LATENT_SCALE,
        "sample_size": 512,
        # NOTE: SD3's and Flux's 16-channel VAEs have no quant_conv / post_quant_conv.
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
    }


def infer_clip_config(
    state: Mapping[str, _Shaped], *, openclip: bool, text_projection_dim: int | None = None
) -> dict[str, Any]:
    """Infers a transformers `CLIPTextConfig` from text-encoder weights.

    Args:
        state: CLIPTextModel weights named ``text_model.*``.
        openclip: The weights came from an OpenCLIP tower (SD2): exact GELU, not quick GELU.
        text_projection_dim: Width of the OpenCLIP text projection, if there is one.

    Returns:
        Keyword arguments for ``CLIPTextConfig(**config)``.
    """
    vocab, hidden = _shape(state, "text_model.embeddings.token_embedding.weight", "text encoder")
    positions = _shape(state, "text_model.embeddings.position_embedding.weight", "text encoder")[0]
    layers = _indices(state, r"text_model\.encoder\.layers\.(\d+)\.")
    if not layers:
        raise ModelFormatError("the text encoder has no encoder layers; expected a CLIP text "
                               "transformer")
    mlp = _shape(state, "text_model.encoder.layers.0.mlp.fc1.weight", "text encoder")[0]
    heads = None if hidden % _CLIP_HEAD_CHANNELS else hidden // _CLIP_HEAD_CHANNELS
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "num_hidden_layers": len(layers),
        "num_attention_heads": heads,
        "max_position_embeddings": positions,
        "hidden_act": "gelu" if openclip else "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": text_projection_dim or hidden,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 0 if openclip else 49407,
    }


def require_complete(inferred: Mapping[str, Any], overrides: Mapping[str, Any], what: str) -> None:
    """Raises when shapes could not give a value (None) and metadata does not supply it.

    Args:
        inferred: The config returned by an ``infer_*`` function.
        overrides: Metadata values that replace inferred ones.
        what: ``"UNet"``, ``"VAE"`` or ``"text encoder"`` for the message.

    Raises:
        ModelFormatError: Naming the unresolved fields and how to provide them.
    """
    unresolved = [k for k, v in inferred.items() if v is None and k not in overrides]
    if unresolved:
        raise ModelFormatError(
            f"the {what}'s {', '.join(unresolved)} cannot be inferred from tensor shapes (its "
            f"widths do not follow the SD1/SD2 convention of {_SD2_HEAD_CHANNELS} channels per "
            "head); save the model with comfyc's save_single_file, which records the exact "
            "config in the file's comfyc.config metadata"
        )

