"""Weight-name maps between diffusers/transformers modules and the original (LDM) layout.

Single-file Stable Diffusion checkpoints use the names of the original CompVis/Stability code:

* UNet ``model.diffusion_model.*``: ``input_blocks.N.M`` (N counts conv_in, then each resnet,
  attention pair and each downsampler in order), ``middle_block.{0,1,2}``, ``output_blocks.N.M``,
  ``time_embed.{0,2}``, ``out.{0,2}``; resnets say ``in_layers``/``emb_layers``/``out_layers``.
* VAE ``first_stage_model.*``: ``encoder.down.I.block.J``, ``decoder.up.I`` (numbered from the
  lowest resolution, the reverse of diffusers' ``up_blocks``), ``mid.block_1/attn_1/block_2``,
  attention projections as 1x1 convolutions named ``q, k, v, proj_out``.
* SD1 text encoder ``cond_stage_model.transformer.*``: already transformers' CLIPTextModel names.
* SD2 text encoder ``cond_stage_model.model.*``: OpenCLIP names (``transformer.resblocks.I``,
  a fused ``attn.in_proj_weight`` for q, k and v, ``ln_final``, ``text_projection``).
* SDXL (Stability's ``sgm`` layout): the UNet adds ``label_emb.0.{0,2}`` (the ADM / "vector"
  embedding, diffusers' ``add_embedding.linear_{1,2}``); the text encoders sit under
  ``conditioner.embedders.N.``: base ``0.transformer.text_model.*`` (CLIP ViT-L, transformers
  names) and ``1.model.*`` (OpenCLIP ViT-bigG, OpenCLIP names incl. ``text_projection``);
  the refiner has only ``0.model.*`` (bigG). The VAE is ``first_stage_model.*`` as before.

The maps are computed from the diffusers key set alone (layers per block and which up blocks
have attention follow from the keys), so one function serves both directions: to load a
checkpoint we build the diffusers module for the inferred config, list its keys, map each to the
original name and pick the tensor.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from comfyc.compiler.models.errors import ModelFormatError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CLIP_OPENAI_PREFIX",
    "CLIP_OPENCLIP_PREFIX",
    "SDXL_CLIP_G_PREFIX",
    "SDXL_CLIP_L_PREFIX",
    "SDXL_REFINER_CLIP_G_PREFIX",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "clip_hf_to_openclip",
    "clip_openclip_to_hf",
    "unet_diffusers_to_ldm_map",
    "vae_diffusers_to_ldm_map",
    "vae_tensor_to_diffusers",
    "vae_tensor_to_ldm",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_OPENAI_PREFIX = "cond_stage_model.transformer."
CLIP_OPENCLIP_PREFIX = "cond_stage_model.model."
#: SDXL base: CLIP ViT-L (transformers names follow) and OpenCLIP ViT-bigG (OpenCLIP names).
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
#: SDXL refiner: OpenCLIP ViT-bigG only, as embedder 0.
SDXL_REFINER_CLIP_G_PREFIX = "conditioner.embedders.0.model."

# diffusers ResnetBlock2D leaf -> LDM ResBlock leaf (UNet).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# diffusers SDXL addition embedding (TimestepEmbedding) -> LDM label_emb (Sequential(Sequential(
# Linear, SiLU, Linear))); ComfyUI's unet_to_diffusers pairs the same names.
_UNET_ADD_EMBEDDING = {"linear_1": "label_emb.0.0", "linear_2": "label_emb.0.2"}
# diffusers Attention (VAE mid block) leaf -> LDM AttnBlock leaf.
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _count(keys: Iterable[str], pattern: str) -> int:
    """Number of distinct integers captured by `pattern` over `keys` (max + 1)."""
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def _unknown(kind: str, key: str) -> ModelFormatError:
    return ModelFormatError(
        f"{kind} weight {key!r} has no counterpart in the SD1.x/SD2.x/SDXL single-file "
        "layout; comfyc supports the plain SD1.x/SD2.x UNets and SDXL's text_time addition "
        "embedding (no class embeddings, no other addition embeddings); convert such models "
        "with their own tools"
    )


def unet_diffusers_to_ldm_map(diffusers_keys: Iterable[str]) -> dict[str, str]:
    """Maps each diffusers `UNet2DConditionModel` weight name to its LDM name (no prefix).

    Args:
        diffusers_keys: The keys of the UNet's state dict.

    Returns:
        ``{"down_blocks.0.resnets.0.norm1.weight": "input_blocks.1.0.in_layers.0.weight", ...}``

    Raises:
        ModelFormatError: A key that the SD1/SD2 layout cannot hold.
    """
    keys = list(diffusers_keys)
    per_level = _count(keys, r"down_blocks\.0\.resnets\.(\d+)\.")
    if per_level == 0:
        raise ModelFormatError(
            "the UNet has no down_blocks.0.resnets weights; expected a diffusers "
            "UNet2DConditionModel state dict"
        )
    stride = per_level + 1  # LDM blocks per level: the resnets plus a downsampler/upsampler
    up_has_attention = {
        int(m.group(1)) for k in keys if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))
    }
    mapping: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        head = parts[0]
        if head == "conv_in":
            new = "input_blocks.0.0." + ".".join(parts[1:])
        elif head == "time_embedding" and parts[1] in ("linear_1", "linear_2"):
            new = f"time_embed.{0 if parts[1] == 'linear_1' else 2}." + ".".join(parts[2:])
        elif head in ("conv_norm_out", "conv_out"):
            new = f"out.{0 if head == 'conv_norm_out' else 2}." + ".".join(parts[1:])
        elif head == "add_embedding" and parts[1] in _UNET_ADD_EMBEDDING:
            new = _UNET_ADD_EMBEDDING[parts[1]] + "." + ".".join(parts[2:])
        elif head in ("down_blocks", "up_blocks", "mid_block"):
            new = _unet_block_key(parts, stride, up_has_attention)
            if new is None:
                raise _unknown("UNet", key)
        else:
            raise _unknown("UNet", key)
        mapping[key] = new
    return mapping


def _unet_block_key(parts: list[str], stride: int, up_has_attention: set[int]) -> str | None:
    """LDM name of a weight inside down_blocks / mid_block / up_blocks (None if unknown)."""
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), parts[3:]
        if kind == "resnets" and index in (0, 1):
            return f"middle_block.{2 * index}." + _resnet_leaf(rest)
        if kind == "attentions" and index == 0:
            return "middle_block.1." + ".".join(rest)
        return None
    block, kind = int(parts[1]), parts[2]
    index, rest = int(parts[3]), parts[4:]
    if parts[0] == "down_blocks":
        position = 1 + block * stride + index
        if kind == "resnets":
            return f"input_blocks.{position}.0." + _resnet_leaf(rest)
        if kind == "attentions":
            return f"input_blocks.{position}.1." + ".".join(rest)
        if kind == "downsamplers" and index == 0 and rest[:1] == ["conv"]:
            return f"input_blocks.{(block + 1) * stride}.0.op." + ".".join(rest[1:])
        return None
    position = block * stride + index
    if kind == "resnets":
        return f"output_blocks.{position}.0." + _resnet_leaf(rest)
    if kind == "attentions":
        return f"output_blocks.{position}.1." + ".".join(rest)
    if kind == "upsamplers" and index == 0 and rest[:1] == ["conv"]:
        slot = 2 if block in up_has_attention else 1
        return f"output_blocks.{block * stride + stride - 1}.{slot}.conv." + ".".join(rest[1:])
    return None


def _resnet_leaf(rest: list[str]) -> str:
    leaf = ".".join(rest)
    for old, new in _UNET_RESNET.items():
        if leaf.startswith(old + "."):
            return new + leaf[len(old) :]
    return leaf


def vae_diffusers_to_ldm_map(diffusers_keys: Iterable[str]) -> dict[str, str]:
    """Maps each diffusers `AutoencoderKL` weight name to its LDM name (no prefix).

    Args:
        diffusers_keys: The keys of the VAE's state dict.

    Returns:
        ``{"decoder.up_blocks.0.resnets.0.conv1.weight": "decoder.up.3.block.0.conv1.weight"}``

    Raises:
        ModelFormatError: A key that the LDM autoencoder cannot hold.
    """
    keys = list(diffusers_keys)
    levels = _count(keys, r"decoder\.up_blocks\.(\d+)\.")
    mapping: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        new: str | None
        if parts[0] in ("quant_conv", "post_quant_conv"):
            new = key
        elif parts[0] in ("encoder", "decoder"):
            new = _vae_coder_key(parts, levels)
        else:
            new = None
        if new is None:
            raise _unknown("VAE", key)
        mapping[key] = new
    return mapping


def _vae_coder_key(parts: list[str], levels: int) -> str | None:
    side, head, rest = parts[0], parts[1], parts[2:]
    if head in ("conv_in", "conv_out"):
        return f"{side}.{head}." + ".".join(rest)
    if head == "conv_norm_out":
        return f"{side}.norm_out." + ".".join(rest)
    if head == "mid_block":
        kind, index, leaf = rest[0], int(rest[1]), ".".join(rest[2:])
        if kind == "resnets" and index in (0, 1):
            return f"{side}.mid.block_{index + 1}." + leaf.replace("conv_shortcut", "nin_shortcut")
        if kind == "attentions" and index == 0:
            for old, new in _VAE_ATTENTION.items():
                if leaf.startswith(old + "."):
                    return f"{side}.mid.attn_1.{new}" + leaf[len(old) :]
        return None
    if head not in ("down_blocks", "up_blocks"):
        return None
    block, kind, index = int(rest[0]), rest[1], int(rest[2])
    leaf = ".".join(rest[3:])
    level = block if head == "down_blocks" else levels - 1 - block
    group = "down" if head == "down_blocks" else "up"
    if kind == "resnets":
        leaf = leaf.replace("conv_shortcut", "nin_shortcut")
        return f"{side}.{group}.{level}.block.{index}.{leaf}"
    if kind in ("downsamplers", "upsamplers") and index == 0 and leaf.startswith("conv."):
        sampler = "downsample" if kind == "downsamplers" else "upsample"
        return f"{side}.{group}.{level}.{sampler}.{leaf}"
    return None


def vae_tensor_to_ldm(diffusers_key: str, tensor: torch.Tensor) -> torch.Tensor:
    """Reshapes a VAE attention projection from diffusers' linear [C, C] to conv [C, C, 1, 1]."""
    if (".mid_block.attentions." in diffusers_key and diffusers_key.endswith(".weight")
            and tensor.ndim == 2):
        return tensor[:, :, None, None]
    return tensor


def vae_tensor_to_diffusers(diffusers_key: str, tensor: torch.Tensor) -> torch.Tensor:
    """Reshapes a VAE attention projection from LDM's conv [C, C, 1, 1] to linear [C, C]."""
    if ".mid_block.attentions." in diffusers_key and diffusers_key.endswith(".weight"):
        if tensor.ndim == 4:
            return tensor[:, :, 0, 0]
        if tensor.ndim == 3:
            return tensor[:, :, 0]
    return tensor


# -- OpenCLIP (SD2) text encoder ---------------------------------------------------------------

_OPENCLIP_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
# Keys of an OpenCLIP text tower that the transformers text model does not need.
_OPENCLIP_IGNORED = ("logit_scale", "attn_mask")


def clip_openclip_to_hf(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Converts an OpenCLIP text tower (prefix removed) to CLIPTextModel weights.

    The fused ``attn.in_proj_weight``/``in_proj_bias`` are split into q, k, v (in that order).

    Args:
        state: Keys such as ``transformer.resblocks.0.attn.in_proj_weight``.

    Returns:
        ``(weights, text_projection)``: CLIPTextModel keys (``text_model.*``) and the OpenCLIP
        ``text_projection`` matrix ``[hidden, projection]`` if present (transformers' linear
        ``text_projection.weight`` is its transpose).

    Raises:
        ModelFormatError: A key the conversion does not know.
    """
    out: dict[str, torch.Tensor] = {}
    projection = None
    for key, tensor in state.items():
        if key == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = tensor
        elif key == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = tensor
        elif key.startswith("ln_final."):
            out["text_model.final_layer_norm." + key[len("ln_final.") :]] = tensor
        elif key == "text_projection":
            projection = tensor
        elif key in _OPENCLIP_IGNORED or key.startswith("visual."):
            continue  # NOTE: the image tower is unused by SD2; some exports keep it
        elif m := re.match(r"transformer\.resblocks\.(\d+)\.(.+)$", key):
            prefix = f"text_model.encoder.layers.{m.group(1)}."
            leaf = m.group(2)
            if leaf in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = leaf.rsplit("_", 1)[1]
                q, k, v = tensor.chunk(3, dim=0)
                for name, part in (("q", q), ("k", k), ("v", v)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part
                continue
            for old, new in _OPENCLIP_LAYER.items():
                if leaf.startswith(old + "."):
                    out[prefix + new + leaf[len(old) :]] = tensor
                    break
            else:
                raise _unknown("OpenCLIP text encoder", key)
        else:
            raise _unknown("OpenCLIP text encoder", key)
    return out, projection


def clip_hf_to_openclip(
    state: Mapping[str, torch.Tensor], text_projection: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Converts CLIPTextModel weights (``text_model.*``) to the OpenCLIP text tower layout.

    Args:
        state: transformers CLIPTextModel state dict.
        text_projection: Optional OpenCLIP projection ``[hidden, projection]`` to include.

    Returns:
        OpenCLIP keys without the ``cond_stage_model.model.`` prefix.
    """
    import torch

    inverse = {new: old for old, new in _OPENCLIP_LAYER.items()}
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = tensor
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = tensor
        elif key == "text_model.embeddings.position_ids":
            continue
        elif key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key[len("text_model.final_layer_norm.") :]] = tensor
        elif m := re.match(r"text_model\.encoder\.layers\.(\d+)\.(.+)$", key):
            prefix = f"transformer.resblocks.{m.group(1)}."
            leaf = m.group(2)
            if qkv := re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", leaf):
                slot = prefix + f"attn.in_proj_{qkv.group(2)}"
                fused.setdefault(slot, {})[qkv.group(1)] = tensor
                continue
            for new, old in inverse.items():
                if leaf.startswith(new + "."):
                    out[prefix + old + leaf[len(new) :]] = tensor
                    break
            else:
                raise _unknown("CLIP text encoder", key)
        else:
            raise _unknown("CLIP text encoder", key)
    for slot, parts in fused.items():
        out[slot] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if text_projection is not None:
        out["text_projection"] = text_projection
    return out
