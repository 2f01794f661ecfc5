"""ControlNets and T2I-Adapters for SD1.x/SD2.x/SDXL: loading as ComfyUI loads them, and their call.

Entry points (the ComfyUI node each one serves):

* `load_controlnet(path)` - ``ControlNetLoader`` (``comfy/controlnet.py load_controlnet``): one
  loader for ControlNets and T2I-Adapters, as in ComfyUI; returns a `LoadedControlNet` or a
  `LoadedT2IAdapter`. ``load_controlnet(path, unet=model_unet)`` - ``DiffControlNetLoader``: a
  *diff* ControlNet (a ``difference`` key; its ``control_model.*`` weights are deltas) gets the
  MODEL's UNet weights added to every weight of the same name, and a Control-LoRA
  (``lora_controlnet`` key) is built on the MODEL's UNet (below). Both need the UNet: pass the
  diffusers UNet of the MODEL the node's ``model`` input carries, *after* LoRAs are merged
  (ComfyUI reads ``model.model_state_dict()`` after loading the patched model).
* `detect_control_model(state, name=..., metadata=...)` - the architecture from tensor shapes
  only (meta tensors work): `DetectedControl`.
* `LoadedControlNet.stage()` -> `ControlNetStage`: ``control(x, hint, timestep, context[, y])
  -> (down_0, ..., down_{n-1}, mid)``; `LoadedT2IAdapter.stage()` -> `T2IAdapterStage`:
  ``adapter(hint) -> (feature_0, ..., feature_3)``. These are what the compiler exports.

Files (what ``comfy.controlnet.load_controlnet_state_dict`` accepts, SD1/SD2/SDXL only):

=======================  ======================================================================
ComfyUI/original         ``control_model.*`` or bare: ``input_blocks.*``, ``middle_block.*``,
                         ``time_embed.*``, ``label_emb.*`` (SDXL), ``zero_convs.N.0``,
                         ``input_hint_block.{0,2,..,14}``, ``middle_block_out.0``
diffusers single file    ``conv_in``, ``time_embedding``, ``add_embedding`` (SDXL),
                         ``controlnet_cond_embedding.{conv_in,blocks.N,conv_out}``,
                         ``down_blocks.*``, ``mid_block.*``, ``controlnet_down_blocks.N``,
                         ``controlnet_mid_block``
diffusers folder         ``config.json`` + ``diffusion_pytorch_model[.fp16].safetensors`` (ComfyUI
                         lists files only; comfyc also opens folders, the config is authoritative)
T2I-Adapter full         ``conv_in``, ``body.{2 i + j}.{block1,block2}``, ``body.{2 i}.in_conv``
                         (TencentARC; diffusers: ``adapter.conv_in``, ``adapter.body.i.resnets.j``,
                         ``adapter.body.i.in_conv``); a ``{"adapter": {...}}`` pickle is unwrapped
T2I-Adapter light        ``body.i.{in_conv,out_conv}``, ``body.i.body.j.{block1,block2}``
=======================  ======================================================================

Weights are mapped by comfyc's own key maps (`controlnet_diffusers_to_ldm_map`,
`t2i_diffusers_to_ldm_map`); the UNet part shares `unet_diffusers_to_ldm_map`.

Architecture (``comfy/model_detection.py detect_unet_config`` on the ControlNet's weights):
model channels and input channels from ``input_blocks.0.0``, per level the resnet count and
width, transformer depth = number of ``transformer_blocks`` (a block with ``proj_in`` but no
transformer blocks counts as depth 0: ComfyUI builds no attention there and ignores those
weights, e.g. diffusers' controlnet-*-sdxl-1.0-small), context width from ``attn2.to_k``, linear
vs 1x1-conv ``proj_in``, the middle block's depth (>= 0 with attention, -1 a lone resnet), the
hint channels from ``input_hint_block.0``, the ADM width from ``label_emb.0.0`` (SDXL:
``addition_embed_type="text_time"``). Heads cannot be read from shapes; ComfyUI takes them from
the ``supported_models`` class the config matches: ``SD15`` (context 768, 320 channels, conv
``proj_in``, no ADM) has 8 heads, every other class and the ``BASE`` fallback 64 channels per
head (``num_head_channels=64``). comfyc's synthetic files carry their exact config in a
``comfyc.config`` metadata entry. ``global_average_pooling`` is on when the file name (without
extension) ends with ``_shuffle`` or ``_shuffle_fp16`` (ComfyUI's rule; the shuffle ControlNet),
or a diffusers config says ``global_pool_conditions``.

T2I-Adapters (``load_t2i_adapter``): full adapters have 4 levels [c, 2c, 4c, 4c] of 2 resnets
(1x1 ``block2`` and ``in_conv``; ``ksize`` > 1, conv downsampling and ``skep`` layers are refused,
diffusers has no such blocks); an input width (``conv_in``) of 256 or 768 makes it an SDXL
adapter (pixel-unshuffle 16, levels 1 and 3 without downsampling), else SD1 (unshuffle 8; its
input channels are ``cin / 64``: 3 for RGB hints, 1 for canny/sketch). Light adapters (SD1) have
4 levels [320, 640, 1280, 1280] of 4 resnets. The style adapter (``style_embedding``) is a
``StyleModelLoader`` model in ComfyUI and Stable Cascade ControlNets (``backbone.*``) are not
SD1/SDXL models: both are refused, as are SD3/Flux/HunyuanDiT/Qwen ControlNets and union
ControlNets (ControlNet++, ``task_embedding``; they need ``SetUnionControlNetType``).

Control-LoRA (``lora_controlnet``, ``comfy/controlnet.py ControlLora``): the ControlNet has the
MODEL's UNet architecture; every weight starts as the MODEL's UNet weight of the same name, the
file's ``.weight``/``.bias`` tensors replace them, and each ``<layer>.up``/``<layer>.down`` pair
adds ``up.flatten(1) @ down.flatten(1)`` (reshaped) to that layer's weight. comfyc merges this once
at load (ComfyUI adds the product at every forward; the same sum).

What the runtime must do around the stages (ComfyUI's behaviour; ``comfy/controlnet.py``
``ControlNet.get_control``, ``T2IAdapter.get_control``, ``ControlBase.control_merge``;
``comfy/samplers.py``; ``nodes.py ControlNetApply``/``ControlNetApplyAdvanced``):

1. **Hint (ControlNet).** The ``IMAGE`` input ``[B, H, W, C]`` in [0, 1] is moved to
   ``[B, C, H, W]`` and resized to the *latent size x 8* (``compression_ratio`` 8) with
   ``common_upscale(hint, w_lat * 8, h_lat * 8, "nearest-exact", "center")`` (center-crop to the
   target aspect ratio, then nearest-exact; `comfyc.runtime.ops.resample.common_upscale` is the
   same op). Nothing else: no normalisation, no scaling (``preprocess_image`` is the identity
   and ``latent_format`` is None for SD1/SDXL ControlNets, so no VAE encode and no ``vae``
   input is used). It is recomputed only when the latent size changes. With entries that have an
   ``area``, the ControlNet runs on the area's crop of the latent and the *whole* hint is resized
   to the area's size x 8. Batch: a hint of batch 1 broadcasts over the UNet batch; otherwise
   ``broadcast_image_to``: per conditioning chunk the first ``B / chunks`` hint images (repeated
   cyclically if fewer), the same for each chunk (cond and uncond).
2. **Call (every step, every UNet call).** ``control(x_in, hint, t, context, y)`` with exactly the
   UNet's ``x_in = model_sampling.calculate_input(sigma, x)`` (= ``x / sqrt(sigma^2 + 1)``, the
   latent channels only: an inpainting UNet's ``c_concat`` channels are *not* given to the
   ControlNet), the UNet's timestep ``t = model_sampling.timestep(sigma)``, the UNet's context of
   those rows (``crossattn_controlnet`` instead if ``CLIPTextEncodeControlnet`` set one) and, for
   SDXL ControlNets, the rows' ADM vector ``y`` (`comfyc.compiler.models.sdxl.adm_vector`).
3. **Strength.** Every residual is multiplied by ``strength`` (``StrengthType.CONSTANT``; SD1/SDXL
   ControlNets and T2I-Adapters never use ``LINEAR_UP``). ``global_average_pooling``
   (`ControlNetStage` does it) replaces each residual by its spatial mean, before the strength.
   ``ControlNetApply``/``ControlNetApplyAdvanced`` with strength 0 return the conditioning
   unchanged (no control at all).
4. **Timestep range.** ``start_percent``/``end_percent`` become ``s_start =
   percent_to_sigma(start)`` (999999999.9 at 0) and ``s_end = percent_to_sigma(end)`` (0.0 at 1);
   a control contributes at a step only when ``s_end <= sigma <= s_start`` (``sigma`` = the
   step's sigma, ``t[0]``); outside, it contributes nothing (but earlier ones in its chain still
   do).
5. **Chaining.** Applying a ControlNet to a conditioning that already has one makes the old one
   its ``previous_controlnet``; the residuals of all active links are summed slot by slot
   (``control_merge``): ``down_k = sum_i strength_i * down_k_i``, ``mid = sum_i strength_i *
   mid_i``, T2I features likewise. A ControlNet and a T2I-Adapter chain too (their residuals go to
   different places: ``down_block_additional_residuals`` vs ``down_intrablock_additional_
   residuals``; the SDXL adapter's 4th feature and a ControlNet's mid residual both add to the mid
   block output).
6. **Cond / uncond.** ``ControlNetApplyAdvanced`` puts one control object on *both* the positive
   and the negative entries (shared per previous control), so cond and uncond rows get the same
   control and may run in one batch. The deprecated ``ControlNetApply`` sets it on the positive
   only with ``control_apply_to_uncond=True``: ``calc_cond_batch``'s preparation copies it onto the
   negative entries without an area (so again both). Entries with different controls (or one
   without) never share a UNet call. With ``cfg == 1`` the negative is not evaluated at all.
7. **UNet.** The residuals go into the diffusers UNet as ``down_block_additional_residuals=
   (down_0, .., down_{n-1})`` and ``mid_block_additional_residual=mid``: ComfyUI adds the
   ControlNet's ``output`` list to the skip connections (``hs``) and ``middle`` to the mid-block
   output (``openaimodel.py apply_control``), which is what diffusers does with them (tested
   against ComfyUI's UNetModel). ``down_k`` has the shape of the UNet's k-th skip tensor:
   `LoadedControlNet.residual_shapes`.
8. **T2I-Adapter.** Hint: resized with ``common_upscale(hint, w, h, "nearest-exact", "center")``
   to ``(w, h) = `LoadedT2IAdapter.hint_size` (w_lat, h_lat)``, i.e. latent x 8 rounded *up* to a
   multiple of the pixel-unshuffle (8 SD1, 16 SDXL); for 1-channel adapters the channel mean is
   taken (`T2IAdapterStage` does it). The features are computed **once per sampling run** (at the
   first step, cached for the latent size; ComfyUI computes them in the UNet's dtype), then at
   every step multiplied by ``strength``, gated by the timestep range and chained as above. They
   go into the UNet as ``down_intrablock_additional_residuals=[f_0, .., f_3]`` (a *list*, which
   diffusers pops from: pass a fresh list per call). ComfyUI adds them to fixed input blocks
   (SD1: after the last resnet of each of the 4 levels; SDXL: after level 0's downsampler, after
   the last resnets of levels 1 and 2, and to the mid-block output), which is where diffusers adds
   them *only* for UNets with 2 resnets per level (all published SD1/SD2/SDXL UNets);
   `check_adapter_fits` refuses other UNets. A hint of batch 1 gives features of batch 1, which
   ComfyUI broadcasts over the UNet batch; **expand them to the UNet's batch** before diffusers'
   UNet: it adds the SDXL adapter's mid feature only when its shape, batch included, equals the
   mid-block output's (otherwise it silently skips it).
9. **Dtypes.** ComfyUI runs the ControlNet in its own dtype (fp16 on GPUs) and adds the
   residuals to the UNet's activations; on the CPU everything is float32.

T2I-Adapters are ``ControlBase`` objects too: the apply nodes, strength, timestep range, chaining
and cond/uncond rules above hold for them unchanged. Points 1-5, 7 and 8 are checked against
ComfyUI's ``get_control`` and ``UNetModel`` by
``tests/compiler/models/test_controlnet_comfyui_reference.py`` (with the lean runtime's
``common_upscale`` and ``model_sampling``).

Not covered here: ``extra_concat``/``concat_mask`` (only SD3/Flux inpainting ControlNets use them,
through ``ControlNetInpaintingAliMamaApply``; SD1/SDXL ControlNets have no extra channels),
VAE-encoded hints (``latent_format``: SD3/Flux/Cascade ControlNets), union ControlNets.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from comfyc.compiler.models.configs import ADM_TIME_EMBED_DIM
from comfyc.compiler.models.errors import ModelFormatError
from comfyc.compiler.models.keymap import UNET_PREFIX, unet_diffusers_to_ldm_map
from comfyc.runtime.backends.torch_control import ControlNetStage, T2IAdapterStage

__all__ = [
    "COMPRESSION_RATIO",
    "CONFIG_METADATA_KEY",
    "CONTROL_PREFIX",
    "HINT_BLOCK_CHANNELS",
    "UPSCALE_METHOD",
    "ControlNetStage",
    "DetectedControl",
    "LoadedControlNet",
    "LoadedT2IAdapter",
    "T2IAdapterStage",
    "check_adapter_fits",
    "controlnet_config_from_unet",
    "controlnet_diffusers_to_ldm_map",
    "controlnet_from_state_dict",
    "detect_control_model",
    "infer_controlnet_config",
    "infer_t2i_config",
    "load_controlnet",
    "read_control_weights",
    "t2i_diffusers_to_ldm_map",
    "uses_global_average_pooling",
]

_log = logging.getLogger(__name__)

#: Pixels per latent pixel of SD1/SDXL ControlNets and T2I-Adapters (``compression_ratio``).
COMPRESSION_RATIO = 8
#: ComfyUI's hint resize method (``upscale_algorithm``) for SD1/SDXL controls.
UPSCALE_METHOD = "nearest-exact"
#: ComfyUI's (and diffusers' default) hint-encoder widths (``input_hint_block``).
HINT_BLOCK_CHANNELS = (16, 32, 96, 256)
#: Key prefix of ControlNets saved with their training wrapper (lllyasviel's ``.pth``).
CONTROL_PREFIX = "control_model."
#: safetensors metadata entry with the exact diffusers config (comfyc-written files).
CONFIG_METADATA_KEY = "comfyc.config"
_SD15_HEADS = 8
_HEAD_CHANNELS = 64
_NORM_GROUPS = 32
_UNET_HEADS = ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block")
_SHUFFLE_SUFFIXES = ("_shuffle", "_shuffle_fp16")
_XL_ADAPTER_INPUTS = (256, 768)
_FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors",
                   "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin")
# Key patterns of control models that ComfyUI's loader knows but comfyc does not (first match).
_OTHER_CONTROL_MODELS = (
    ("after_proj_list.18.bias", "a HunyuanDiT ControlNet"),
    ("double_blocks.0.img_attn.norm.key_norm.scale", "a Flux ControlNet (XLabs)"),
    ("controlnet_x_embedder.weight", "a Flux ControlNet (InstantX / diffusers)"),
    ("controlnet_single_blocks.0.weight", "a Flux ControlNet"),
    ("controlnet_blocks.0.linear.weight", "a Flux ControlNet (MistoLine)"),
    ("pos_embed_input.proj.weight", "an SD3/SD3.5 ControlNet"),
    ("transformer_blocks.0.img_mlp.net.0.proj.weight", "a Qwen-Image ControlNet"),
    ("control_img_in.weight", "a Qwen-Image Fun ControlNet"),
    ("backbone.0.0.weight", "a Stable Cascade ControlNet"),
    ("backbone.0.weight", "a Stable Cascade ControlNet"),
)


# -- file reading --------------------------------------------------------------------------------


def read_control_weights(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Reads a ControlNet/T2I-Adapter file as ``comfy.utils.load_torch_file`` does.

    Pickles are read with ``torch.load(weights_only=True)`` only; like ComfyUI, a ``state_dict``
    entry or a dict with a single entry (``{"adapter": {...}}``) is unwrapped.

    Args:
        path: A ``.safetensors``/``.sft`` file or a ``.pth``/``.ckpt``/``.pt``/``.bin`` pickle.

    Returns:
        ``(tensors, metadata)``.

    Raises:
        ModelFormatError: Missing, unreadable, unsafe or non-tensor file.
    """
    from comfyc.compiler.models.single_file import (
        PICKLE_SUFFIXES,
        load_pickle_weights,
        read_state_dict,
    )

    file = Path(path)
    if file.suffix.lower() not in PICKLE_SUFFIXES or not file.is_file():
        return read_state_dict(file)
    loaded = load_pickle_weights(file)
    if isinstance(loaded, Mapping):
        if isinstance(loaded.get("state_dict"), Mapping):
            loaded = loaded["state_dict"]
        elif len(loaded) == 1 and isinstance(next(iter(loaded.values())), Mapping):
            loaded = next(iter(loaded.values()))
    if not isinstance(loaded, Mapping):
        raise ModelFormatError(f"{str(file)!r} holds a {type(loaded).__name__}, expected a dict "
                               "of tensors")
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}, {}


def uses_global_average_pooling(path: str | os.PathLike[str]) -> bool:
    """ComfyUI's rule: the file name without extension ends with ``_shuffle``/``_shuffle_fp16``."""
    stem = os.path.splitext(str(path).rstrip("/\\"))[0]
    return stem.endswith(_SHUFFLE_SUFFIXES)


# -- key maps ------------------------------------------------------------------------------------


def controlnet_diffusers_to_ldm_map(diffusers_keys: Sequence[str] | Any) -> dict[str, str]:
    """Maps each diffusers ``ControlNetModel`` weight name to its ComfyUI/original name.

    The UNet-shaped part (``conv_in``, ``time_embedding``, ``add_embedding``, ``down_blocks``,
    ``mid_block``) uses `unet_diffusers_to_ldm_map`; the rest:

    * ``controlnet_cond_embedding.conv_in`` -> ``input_hint_block.0``, ``.blocks.i`` ->
      ``input_hint_block.{2 i + 2}``, ``.conv_out`` -> ``input_hint_block.{2 n + 2}`` (n blocks;
      the odd indices are the SiLUs);
    * ``controlnet_down_blocks.i`` -> ``zero_convs.i.0``, ``controlnet_mid_block`` ->
      ``middle_block_out.0``.

    Args:
        diffusers_keys: The keys of a ``ControlNetModel`` state dict (the map is computed from
            the key set alone).

    Returns:
        ``{"controlnet_down_blocks.0.weight": "zero_convs.0.0.weight", ...}`` (no prefix).

    Raises:
        ModelFormatError: A key that the SD1/SDXL ControlNet layout cannot hold.
    """
    keys = list(diffusers_keys)
    mapping = unet_diffusers_to_ldm_map([k for k in keys if k.split(".")[0] in _UNET_HEADS])
    blocks = {int(m.group(1)) for k in keys
              if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.", k))}
    last = 2 * (max(blocks) + 1) + 2 if blocks else 2
    for key in keys:
        parts = key.split(".")
        head, leaf = parts[0], ".".join(parts[-1:])
        if head in _UNET_HEADS:
            continue
        if head == "controlnet_cond_embedding" and parts[1] == "conv_in":
            new = f"input_hint_block.0.{leaf}"
        elif head == "controlnet_cond_embedding" and parts[1] == "blocks":
            new = f"input_hint_block.{2 * int(parts[2]) + 2}.{leaf}"
        elif head == "controlnet_cond_embedding" and parts[1] == "conv_out":
            new = f"input_hint_block.{last}.{leaf}"
        elif head == "controlnet_down_blocks":
            new = f"zero_convs.{int(parts[1])}.0.{leaf}"
        elif head == "controlnet_mid_block":
            new = f"middle_block_out.0.{leaf}"
        else:
            raise ModelFormatError(
                f"ControlNet weight {key!r} has no counterpart in the SD1/SDXL ControlNet layout; "
                "comfyc supports plain SD1.x/SD2.x/SDXL ControlNets (no union or other "
                "extensions)"
            )
        mapping[key] = new
    return mapping


def t2i_diffusers_to_ldm_map(
    diffusers_keys: Sequence[str] | Any, adapter_type: str
) -> dict[str, str]:
    """Maps each diffusers ``T2IAdapter`` weight name to its TencentARC/ComfyUI name.

    Full adapters (``full_adapter``, ``full_adapter_xl``): ``adapter.conv_in`` -> ``conv_in``,
    ``adapter.body.i.resnets.j.*`` -> ``body.{n i + j}.*`` (n resnets per level),
    ``adapter.body.i.in_conv`` -> ``body.{n i}.in_conv`` (ComfyUI's ``ResnetBlock`` holds the
    level's channel change). Light adapters: ``adapter.body.i.resnets.j`` -> ``body.i.body.j``,
    ``adapter.body.i.{in_conv,out_conv}`` -> ``body.i.{in_conv,out_conv}``.

    Args:
        diffusers_keys: The keys of a ``T2IAdapter`` state dict.
        adapter_type: ``"full_adapter"``, ``"full_adapter_xl"`` or ``"light_adapter"``.

    Returns:
        diffusers name -> ComfyUI name.

    Raises:
        ModelFormatError: A key outside these layouts.
    """
    keys = list(diffusers_keys)
    per_level = 1 + max((int(m.group(1)) for k in keys
                         if (m := re.match(r"adapter\.body\.0\.resnets\.(\d+)\.", k))), default=-1)
    mapping: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        new: str | None = None
        if parts[:2] == ["adapter", "conv_in"] and adapter_type != "light_adapter":
            new = ".".join(parts[1:])
        elif parts[:2] == ["adapter", "body"]:
            level, rest = int(parts[2]), parts[3:]
            if adapter_type == "light_adapter":
                if rest[0] == "resnets":
                    new = f"body.{level}.body.{'.'.join(rest[1:])}"
                elif rest[0] in ("in_conv", "out_conv"):
                    new = f"body.{level}.{'.'.join(rest)}"
            elif rest[0] == "resnets":
                new = f"body.{per_level * level + int(rest[1])}.{'.'.join(rest[2:])}"
            elif rest[0] == "in_conv":
                new = f"body.{per_level * level}.{'.'.join(rest)}"
        if new is None:
            raise ModelFormatError(f"T2I-Adapter weight {key!r} has no counterpart in the "
                                   f"{adapter_type} layout")
        mapping[key] = new
    return mapping


# -- detection -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DetectedControl:
    """What a control-model file is, from its key names and tensor shapes.

    Attributes:
        kind: ``"controlnet"`` or ``"t2i_adapter"``.
        layout: ``"comfy"`` (original names; with or without ``control_model.``),
            ``"diffusers"`` (diffusers names in one file), ``"folder"``.
        variant: None, ``"diff"`` (weights are deltas to the MODEL's UNet) or
            ``"control_lora"`` (built on the MODEL's UNet).
        config: Constructor arguments of the diffusers module (``ControlNetModel`` or
            ``T2IAdapter``); for a Control-LoRA None until loaded on a UNet (the UNet's).
        family: ``"sd1"``, ``"sd2"``, ``"sdxl"`` or ``"sdxl_refiner"``: the models it combines
            with (from context width, ``proj_in`` kind and ADM width, or the adapter type; a
            Control-LoRA's is a guess until it is loaded on the MODEL's UNet).
        facts: Detection facts in ComfyUI's vocabulary (``context_dim``, ``model_channels``,
            ``transformer_depth``, ``transformer_depth_middle``, ``adm_in_channels``,
            ``hint_channels``, ``num_heads``/``num_head_channels``, ...; for adapters
            ``cin``, ``channels``, ``nums_rb``, ``ksize``, ``xl``, ``unshuffle_amount``).
    """

    kind: str
    layout: str
    variant: str | None
    config: dict[str, Any] | None
    family: str
    facts: dict[str, Any] = field(default_factory=dict)


def _shape(state: Mapping[str, Any], key: str, what: str = "ControlNet") -> tuple[int, ...]:
    tensor = state.get(key)
    if tensor is None:
        raise ModelFormatError(f"the {what} has no weight {key!r}; the file is damaged or not "
                               f"an SD1.x/SD2.x/SDXL {what}")
    return tuple(int(d) for d in tensor.shape)


def _count(state: Mapping[str, Any], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in state if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def _family(context_dim: int | None, linear: bool, adm: int | None) -> str:
    if adm is not None:
        return "sdxl_refiner" if context_dim == 1280 or adm == 2560 else "sdxl"
    return "sd2" if linear else "sd1"


def infer_controlnet_config(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Infers a diffusers ``ControlNetModel`` config from ComfyUI/original-layout weights.

    Follows ``comfy/model_detection.py detect_unet_config`` and ComfyUI's head conventions (see
    the module docstring). Shapes only: meta tensors work.

    Args:
        state: Weights named ``input_blocks.*``, ``zero_convs.*``, ... (prefix removed).

    Returns:
        ``(config, facts)``: keyword arguments for ``ControlNetModel(**config)`` and ComfyUI's
        detection facts.

    Raises:
        ModelFormatError: A layout diffusers' ControlNetModel cannot express (levels with
            different resnet counts or depths, a class-label embedding, no middle block). Widths
            that do not fit ComfyUI's head convention give ``attention_head_dim`` None.
    """
    conv_in = _shape(state, "input_blocks.0.0.weight")
    model_channels, in_channels = conv_in[0], conv_in[1]
    hint = _shape(state, "input_hint_block.0.weight")
    # NOTE: diffusers' hint encoder is conv_in (w_0), then per widening a same-width conv and a
    # stride-2 conv to w_{i+1}, then conv_out to the model width; ComfyUI numbers the convs
    # 0, 2, 4, ... (the odd entries are SiLUs): (16, 32, 96, 256) -> 8 convs, the last at 14.
    convs = _count(state, r"input_hint_block\.(\d+)\.weight") // 2 + 1
    outs = [_shape(state, f"input_hint_block.{2 * i}.weight")[0] for i in range(convs)]
    hint_widths = [outs[0], *outs[2:-1:2]]
    if convs < 2 or convs % 2 or outs[-1] != model_channels or outs[1:-1:2] != hint_widths[:-1]:
        raise ModelFormatError(
            f"the ControlNet's hint encoder (input_hint_block) has convolutions of widths {outs}; "
            f"expected ComfyUI's {list(HINT_BLOCK_CHANNELS)} pattern (each width twice, the "
            f"last conv to the model width {model_channels})"
        )
    time_dim = _shape(state, "time_embed.0.weight")[0]
    if time_dim != 4 * model_channels:
        raise ModelFormatError(f"the ControlNet's time embedding is {time_dim} wide; expected 4 x "
                               f"{model_channels} (diffusers' ControlNetModel fixes it)")
    if "label_emb.0.weight" in state:
        raise ModelFormatError("the ControlNet has a class-label embedding (label_emb.0.weight); "
                               "comfyc supports SD1.x/SD2.x and SDXL's ADM vector only")
    adm = _shape(state, "label_emb.0.0.weight")[1] if "label_emb.0.0.weight" in state else None

    levels: list[list[tuple[int, int]]] = [[]]  # per level: (channels, transformer depth)
    context_dim: int | None = None
    linear: bool | None = None
    for i in range(1, _count(state, r"input_blocks\.(\d+)\.")):
        if f"input_blocks.{i}.0.op.weight" in state:
            levels.append([])
            continue
        channels = _shape(state, f"input_blocks.{i}.0.out_layers.3.weight")[0]
        depth = _count(state, rf"input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.")
        if depth and context_dim is None:
            context_dim = _shape(
                state, f"input_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight")[1]
            linear = len(_shape(state, f"input_blocks.{i}.1.proj_in.weight")) == 2
        levels[-1].append((channels, depth))
    if any(len(level) != len(levels[0]) or not level for level in levels):
        raise ModelFormatError(
            f"the ControlNet's levels hold {[len(level) for level in levels]} resnets; "
            "diffusers' ControlNetModel needs the same number in every level"
        )
    block_out: list[int] = []
    depths: list[int] = []
    for number, level in enumerate(levels):
        if len({c for c, _ in level}) != 1 or len({d for _, d in level}) != 1:
            raise ModelFormatError(f"ControlNet level {number} mixes widths or transformer "
                                   f"depths {level}; expected uniform levels")
        block_out.append(level[0][0])
        depths.append(level[0][1])
    if block_out[0] != model_channels:
        raise ModelFormatError(f"the ControlNet's conv_in has {model_channels} channels but its "
                               f"first level {block_out[0]}")
    if "middle_block.1.proj_in.weight" in state:
        mid_depth = _count(state, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
        if linear is None:
            linear = len(_shape(state, "middle_block.1.proj_in.weight")) == 2
        if mid_depth and context_dim is None:
            context_dim = _shape(state, "middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
    elif "middle_block.0.in_layers.0.weight" in state:
        mid_depth = -1
    else:
        raise ModelFormatError("the ControlNet has no middle block (middle_block.0); ComfyUI's "
                               "ControlNet always has one")
    linear = bool(linear)
    if mid_depth >= 0 and depths[-1] and mid_depth != depths[-1]:
        raise ModelFormatError(
            f"the ControlNet's last level has transformer depth {depths[-1]} but its middle block "
            f"{mid_depth}; diffusers' ControlNetModel uses one value for both"
        )
    sd15 = context_dim == 768 and model_channels == 320 and not linear and adm is None
    heads: int | list[int] | None
    if sd15:
        heads = _SD15_HEADS
    else:
        # NOTE: None = ComfyUI's 64 channels per head does not fit (it cannot load the file);
        # `detect_control_model` accepts it only with a comfyc.config metadata entry.
        fits = all(not depth or (channels % _HEAD_CHANNELS == 0 and channels >= _HEAD_CHANNELS)
                   for channels, depth in [*zip(block_out, depths),
                                           (block_out[-1], max(mid_depth, 0))])
        heads = [max(c // _HEAD_CHANNELS, 1) for c in block_out] if fits else None
    layers = [d if d else 1 for d in depths]
    layers[-1] = max(mid_depth, 0) if not depths[-1] else depths[-1]
    config: dict[str, Any] = {
        "in_channels": in_channels,
        "conditioning_channels": hint[1],
        "block_out_channels": block_out,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "layers_per_block": len(levels[0]),
        "cross_attention_dim": context_dim if context_dim is not None else block_out[-1],
        "transformer_layers_per_block": layers,
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_depth >= 0 else "UNetMidBlock2D",
        "conditioning_embedding_out_channels": hint_widths,
        "norm_num_groups": _NORM_GROUPS,
        "global_pool_conditions": False,
    }
    if adm is not None:
        config.update(addition_embed_type="text_time",
                      addition_time_embed_dim=ADM_TIME_EMBED_DIM,
                      projection_class_embeddings_input_dim=adm)
    flat_depths = [d for d in depths for _ in range(len(levels[0]))]
    facts: dict[str, Any] = {
        "model_channels": model_channels, "in_channels": in_channels, "hint_channels": hint[1],
        "channel_mult": [c // model_channels for c in block_out],
        "num_res_blocks": [len(level) for level in levels], "transformer_depth": flat_depths,
        "transformer_depth_middle": mid_depth, "context_dim": context_dim,
        "use_linear_in_transformer": linear, "adm_in_channels": adm,
    }
    facts.update({"num_heads": _SD15_HEADS, "num_head_channels": -1} if sd15 else
                 {"num_heads": -1, "num_head_channels": _HEAD_CHANNELS})
    return config, facts


def infer_t2i_config(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Infers a diffusers ``T2IAdapter`` config from TencentARC/ComfyUI-layout weights.

    Follows ``comfy/controlnet.py load_t2i_adapter`` (see the module docstring).

    Args:
        state: Weights named ``conv_in.*``/``body.*`` (full) or ``body.N.in_conv.*`` (light).

    Returns:
        ``(config, facts)``.

    Raises:
        ModelFormatError: An adapter variant diffusers cannot express.
    """
    if "body.0.in_conv.weight" in state and "conv_in.weight" not in state:
        cin = _shape(state, "body.0.in_conv.weight", "T2I-Adapter")[1]
        levels = _count(state, r"body\.(\d+)\.")
        channels = [_shape(state, f"body.{i}.out_conv.weight", "T2I-Adapter")[0]
                    for i in range(levels)]
        nums_rb = _count(state, r"body\.0\.body\.(\d+)\.")
        if levels < 2 or channels[-1] != channels[-2]:
            raise ModelFormatError(f"the light T2I-Adapter has levels {channels}; expected the "
                                   "last two equal ([320, 640, 1280, 1280])")
        config = {"in_channels": cin // 64, "channels": channels[:-1],
                  "num_res_blocks": nums_rb, "downscale_factor": 8,
                  "adapter_type": "light_adapter"}
        facts = {"cin": cin, "channels": channels, "nums_rb": nums_rb, "xl": False,
                 "unshuffle_amount": 8}
        return config, facts
    cin = _shape(state, "conv_in.weight", "T2I-Adapter")[1]
    width = _shape(state, "conv_in.weight", "T2I-Adapter")[0]
    ksize = _shape(state, "body.0.block2.weight", "T2I-Adapter")[2]
    if any(k.endswith("down_opt.op.weight") for k in state):
        raise ModelFormatError("the T2I-Adapter downsamples with convolutions (down_opt.op); "
                               "diffusers' T2IAdapter has average pooling only")
    if any(".skep." in k for k in state):
        raise ModelFormatError("the T2I-Adapter has skip convolutions (skep, sk=False); ComfyUI "
                               "builds adapters with sk=True and cannot load it either")
    if ksize != 1:
        raise ModelFormatError(f"the T2I-Adapter's resnets use {ksize}x{ksize} second "
                               "convolutions; diffusers' T2IAdapter has 1x1 ones (ksize=1)")
    blocks = _count(state, r"body\.(\d+)\.")
    nums_rb = 2
    if blocks != 4 * nums_rb:
        raise ModelFormatError(f"the T2I-Adapter has {blocks} resnets; ComfyUI's full adapter has "
                               "4 levels of 2")
    channels = [_shape(state, f"body.{nums_rb * i}.block1.weight", "T2I-Adapter")[0]
                for i in range(4)]
    xl = cin in _XL_ADAPTER_INPUTS
    unshuffle = 16 if xl else 8
    if channels[0] != width:
        raise ModelFormatError(f"the T2I-Adapter's conv_in gives {width} channels but its first "
                               f"level has {channels[0]}")
    config = {"in_channels": cin // (unshuffle * unshuffle), "channels": channels,
              "num_res_blocks": nums_rb, "downscale_factor": unshuffle,
              "adapter_type": "full_adapter_xl" if xl else "full_adapter"}
    facts = {"cin": cin, "channels": channels, "nums_rb": nums_rb, "ksize": ksize, "xl": xl,
             "unshuffle_amount": unshuffle}
    return config, facts


def _refuse_other(state: Mapping[str, Any]) -> None:
    for key, what in _OTHER_CONTROL_MODELS:
        if key in state:
            raise ModelFormatError(f"this file is {what} (it has {key!r}); comfyc supports "
                                   "SD1.x/SD2.x/SDXL ControlNets and T2I-Adapters only")
    if "task_embedding" in state or "control_add_embedding.linear_1.bias" in state:
        raise ModelFormatError(
            "this is a union ControlNet (ControlNet++ / ProMax: task_embedding, "
            "control_add_embedding); ComfyUI runs it with SetUnionControlNetType, which comfyc "
            "does not support yet; use a single-condition ControlNet"
        )


def _strip(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _controlnet_to_ldm(state: Mapping[str, Any]) -> dict[str, Any]:
    """Renames diffusers-layout ControlNet weights to ComfyUI's names."""
    mapping = controlnet_diffusers_to_ldm_map(state.keys())
    return {mapping[k]: v for k, v in state.items()}


def _metadata_config(metadata: Mapping[str, str] | None) -> dict[str, Any] | None:
    text = (metadata or {}).get(CONFIG_METADATA_KEY)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ModelFormatError(f"the file's {CONFIG_METADATA_KEY} metadata is not JSON: "
                               f"{exc}") from exc
    return dict(value) if isinstance(value, Mapping) else None


def _require_heads(config: dict[str, Any], exact: dict[str, Any] | None, where: str
                   ) -> dict[str, Any]:
    if exact is not None:
        return exact
    if config["attention_head_dim"] is None:
        raise ModelFormatError(
            f"the ControlNet{where} has attention at widths {config['block_out_channels']}, which "
            f"do not fit ComfyUI's {_HEAD_CHANNELS} channels per head (SD1.5's 8 heads need 320 "
            "channels and a 768-wide context); ComfyUI cannot load it either. Files written by "
            f"comfyc carry their exact config in '{CONFIG_METADATA_KEY}' metadata"
        )
    return config


def _t2i_to_ldm(state: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """Renames diffusers-layout adapter weights to ComfyUI's names (layout, detected type)."""
    light = "adapter.body.0.out_conv.weight" in state
    adapter_type = "light_adapter" if light else "full_adapter"
    mapping = t2i_diffusers_to_ldm_map(state.keys(), adapter_type)
    return {mapping[k]: v for k, v in state.items()}, adapter_type


def detect_control_model(
    state: Mapping[str, Any],
    *,
    name: str | os.PathLike[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> DetectedControl:
    """Says what a ControlNet/T2I-Adapter state dict is (``load_controlnet_state_dict``'s order).

    Args:
        state: The file's tensors (meta tensors work).
        name: The file path (only for messages).
        metadata: safetensors metadata (a ``comfyc.config`` entry gives the exact config).

    Returns:
        The `DetectedControl`.

    Raises:
        ModelFormatError: A control model comfyc does not support (SD3/Flux/HunyuanDiT/Qwen/
            Cascade ControlNets, union ControlNets, the style adapter) or an unknown file; the
            message names what was found.
    """
    where = f" ({os.fspath(name)})" if name is not None else ""
    _refuse_other(state)
    exact = _metadata_config(metadata)
    if "lora_controlnet" in state:
        hint = _shape(state, "input_hint_block.0.weight", "Control-LoRA")
        adm = "label_emb.0.0.up" in state or "label_emb.0.0.weight" in state
        return DetectedControl("controlnet", "comfy", "control_lora", None,
                               "sdxl" if adm else "sd1", {"hint_channels": hint[1]})
    if "controlnet_cond_embedding.conv_in.weight" in state:
        ldm = _controlnet_to_ldm(state)
        config, facts = infer_controlnet_config(ldm)
        family = _family(facts["context_dim"], facts["use_linear_in_transformer"],
                         facts["adm_in_channels"])
        return DetectedControl("controlnet", "diffusers", None,
                               _require_heads(config, exact, where), family, facts)
    prefix = None
    if CONTROL_PREFIX + "zero_convs.0.0.weight" in state:
        prefix = CONTROL_PREFIX
    elif "zero_convs.0.0.weight" in state:
        prefix = ""
    if prefix is not None:
        config, facts = infer_controlnet_config(_strip(state, prefix))
        family = _family(facts["context_dim"], facts["use_linear_in_transformer"],
                         facts["adm_in_channels"])
        variant = "diff" if prefix and "difference" in state else None
        return DetectedControl("controlnet", "comfy", variant,
                               _require_heads(config, exact, where), family, facts)
    if "style_embedding" in state:
        raise ModelFormatError(
            f"this is a T2I style adapter{where} (style_embedding); ComfyUI loads it with "
            "StyleModelLoader and applies it with StyleModelApply (a STYLE_MODEL, not a "
            "CONTROL_NET), which comfyc does not support yet"
        )
    layout = "comfy"
    adapter = dict(state)
    if "adapter.body.0.resnets.0.block1.weight" in adapter:
        adapter, _ = _t2i_to_ldm(adapter)
        layout = "diffusers"
    if "conv_in.weight" in adapter or "body.0.in_conv.weight" in adapter:
        config, facts = infer_t2i_config(adapter)
        family = "sdxl" if facts["xl"] else "sd1"
        return DetectedControl("t2i_adapter", layout, None, exact or config, family, facts)
    sample = ", ".join(sorted(state)[:4]) or "no tensors"
    raise ModelFormatError(
        f"cannot tell what control model this is{where} (keys: {sample}, ...); expected an "
        "SD1.x/SD2.x/SDXL ControlNet (zero_convs.*, input_hint_block.*, or diffusers' "
        "controlnet_cond_embedding.*) or a T2I-Adapter (conv_in + body.*, or body.0.in_conv)"
    )


# -- building modules ----------------------------------------------------------------------------


def _build_controlnet(config: Mapping[str, Any]) -> Any:
    from diffusers import ControlNetModel

    with torch.device("meta"):
        return ControlNetModel.from_config(dict(config))


def _build_adapter(config: Mapping[str, Any]) -> Any:
    from diffusers import T2IAdapter

    with torch.device("meta"):
        return T2IAdapter.from_config(dict(config))


def controlnet_config_from_unet(
    unet_config: Mapping[str, Any], hint_channels: int = 3
) -> dict[str, Any]:
    """The config of a ControlNet with a UNet's architecture (ComfyUI's Control-LoRA rule:
    ``model.model_config.unet_config`` minus ``out_channels``, plus the hint channels).

    Args:
        unet_config: A diffusers ``UNet2DConditionModel`` config.
        hint_channels: Channels of the hint image.

    Returns:
        Keyword arguments for ``ControlNetModel``.
    """
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(unet_config))
        controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False,
                                               conditioning_channels=hint_channels)
    keep = set(ControlNetModel.extract_init_dict(dict(controlnet.config))[0])
    return {k: v for k, v in dict(controlnet.config).items() if k in keep}


def _module_config(module: Any) -> dict[str, Any]:
    config = dict(module.config)
    keep = set(type(module).extract_init_dict(config)[0])
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if k in keep}


def _unet_ldm_state(unet: Any) -> dict[str, torch.Tensor]:
    """The MODEL's UNet weights under original names (what ComfyUI's ``model_state_dict`` has)."""
    if isinstance(unet, Mapping):
        state = dict(unet)
        if any(k.startswith(UNET_PREFIX) for k in state):
            state = _strip(state, UNET_PREFIX)
        return state
    weights = unet.state_dict()
    mapping = unet_diffusers_to_ldm_map(weights.keys())
    return {mapping[k]: v for k, v in weights.items()}


def _fill_from_ldm(module: Any, ldm: Mapping[str, torch.Tensor], mapping: Mapping[str, str],
                   dtype: torch.dtype | None, what: str) -> Any:
    from comfyc.compiler.models.single_file import _own, _populate

    weights = {}
    for key, name in mapping.items():
        tensor = ldm.get(name)
        if tensor is None:
            raise ModelFormatError(f"the {what} has no weight {name!r} (diffusers "
                                   f"{key!r}); the file is damaged or of another architecture")
        weights[key] = _own(tensor, dtype)
    unused = sorted(set(ldm) - set(mapping.values()))
    if unused:
        # NOTE: ComfyUI loads with strict=False and ignores them too (e.g. zero-depth attention
        # of the "small" SDXL ControlNets, lvlb_weights); they cannot change the result.
        _log.info("%s: ignoring %d weights ComfyUI ignores too: %s", what, len(unused),
                  ", ".join(unused[:5]))
    return _populate(module, weights, what)


@dataclass
class LoadedControlNet:
    """A loaded SD1/SD2/SDXL ControlNet (ComfyUI's ``comfy.controlnet.ControlNet``).

    Attributes:
        module: The diffusers ``ControlNetModel`` (eval mode, no gradients).
        detected: How the file was read (`DetectedControl`).
        global_average_pooling: Each residual is replaced by its spatial mean (shuffle).
        compression_ratio: Hint pixels per latent pixel (8).
        upscale_method: ComfyUI's hint resize method (``"nearest-exact"``).
    """

    module: Any
    detected: DetectedControl
    global_average_pooling: bool = False
    compression_ratio: int = COMPRESSION_RATIO
    upscale_method: str = UPSCALE_METHOD

    @property
    def family(self) -> str:
        """``sd1``, ``sd2``, ``sdxl`` or ``sdxl_refiner`` (the UNets it combines with)."""
        return self.detected.family

    @property
    def hint_channels(self) -> int:
        """Channels of the hint image (3)."""
        return int(self.module.config.conditioning_channels)

    @property
    def context_dim(self) -> int:
        """Width of the prompt encoding it reads."""
        return int(self.module.config.cross_attention_dim)

    @property
    def adm_in_channels(self) -> int | None:
        """Width of the ADM vector ``y`` (SDXL), else None."""
        if self.module.config.addition_embed_type != "text_time":
            return None
        return int(self.module.config.projection_class_embeddings_input_dim)

    @property
    def residual_count(self) -> int:
        """Number of down residuals (one per UNet skip connection; the mid residual is extra)."""
        return len(self.module.controlnet_down_blocks)

    def residual_shapes(self, batch: int, height: int, width: int) -> list[tuple[int, ...]]:
        """Shapes of `ControlNetStage`'s outputs for a latent ``[batch, C, height, width]``.

        The UNet halves sizes with stride-2 convolutions (``ceil(n / 2)``); the shapes are those
        of the diffusers UNet's skip tensors (``down_block_res_samples``) and mid output.
        """
        config = self.module.config
        layers = int(config.layers_per_block)
        shapes = [(batch, int(config.block_out_channels[0]), height, width)]
        for level, channels in enumerate(config.block_out_channels):
            shapes += [(batch, int(channels), height, width)] * layers
            if level < len(config.block_out_channels) - 1:
                height, width = -(-height // 2), -(-width // 2)
                shapes.append((batch, int(channels), height, width))
        return [*shapes, (batch, int(config.block_out_channels[-1]), height, width)]

    def stage(self) -> ControlNetStage:
        """The torch module the compiler exports (`ControlNetStage`)."""
        return ControlNetStage(self.module, global_average_pooling=self.global_average_pooling)


@dataclass
class LoadedT2IAdapter:
    """A loaded T2I-Adapter (ComfyUI's ``comfy.controlnet.T2IAdapter``).

    Attributes:
        module: The diffusers ``T2IAdapter`` (eval mode, no gradients).
        detected: How the file was read (`DetectedControl`).
        compression_ratio: Hint pixels per latent pixel (8).
        upscale_method: ComfyUI's hint resize method (``"nearest-exact"``).
    """

    module: Any
    detected: DetectedControl
    compression_ratio: int = COMPRESSION_RATIO
    upscale_method: str = UPSCALE_METHOD

    @property
    def family(self) -> str:
        """``sd1`` (SD1.x/SD2.x UNets with 4 levels) or ``sdxl``."""
        return self.detected.family

    @property
    def adapter_type(self) -> str:
        """``full_adapter``, ``full_adapter_xl`` or ``light_adapter``."""
        return str(self.module.config.adapter_type)

    @property
    def input_channels(self) -> int:
        """Hint channels the adapter reads (3, or 1 for canny/sketch adapters)."""
        return int(self.module.config.in_channels)

    @property
    def unshuffle_amount(self) -> int:
        """The pixel-unshuffle factor (8 SD1, 16 SDXL)."""
        return int(self.module.config.downscale_factor)

    @property
    def feature_channels(self) -> list[int]:
        """Channels of the 4 features, in output order."""
        channels = list(self.module.config.channels)
        return [*channels, channels[-1]] if self.adapter_type == "light_adapter" else channels

    def hint_size(self, latent_width: int, latent_height: int) -> tuple[int, int]:
        """``(width, height)`` the hint is resized to (``T2IAdapter.scale_image_to``): the latent
        size x 8 rounded up to a multiple of the unshuffle factor."""
        step = self.unshuffle_amount
        return (math.ceil(latent_width * self.compression_ratio / step) * step,
                math.ceil(latent_height * self.compression_ratio / step) * step)

    def stage(self) -> T2IAdapterStage:
        """The torch module the compiler exports (`T2IAdapterStage`)."""
        return T2IAdapterStage(self.module)


def _controlnet_module(detected: DetectedControl, ldm: Mapping[str, torch.Tensor],
                       dtype: torch.dtype | None) -> Any:
    assert detected.config is not None
    module = _build_controlnet(detected.config)
    mapping = controlnet_diffusers_to_ldm_map(module.state_dict().keys())
    return _fill_from_ldm(module, ldm, mapping, dtype, "ControlNet")


def _add_unet(ldm: dict[str, torch.Tensor], unet_state: Mapping[str, torch.Tensor]) -> None:
    """ComfyUI's diff ControlNet: ``cd += model_sd[...]`` in the file's dtype, per shared name."""
    for key, tensor in ldm.items():
        base = unet_state.get(key)
        if base is not None:
            if tuple(base.shape) != tuple(tensor.shape):
                raise ModelFormatError(f"diff ControlNet weight {key!r} is {tuple(tensor.shape)} "
                                       f"but the MODEL's is {tuple(base.shape)}; the ControlNet "
                                       "was made for another model")
            ldm[key] = tensor + base.to(tensor.dtype)


def _control_lora(state: Mapping[str, torch.Tensor], unet: Any, dtype: torch.dtype | None,
                  detected: DetectedControl) -> Any:
    """Builds a Control-LoRA on the MODEL's UNet (see the module docstring)."""
    from comfyc.compiler.models.single_file import _own

    config = controlnet_config_from_unet(unet.config, detected.facts["hint_channels"])
    module = _build_controlnet(config)
    mapping = controlnet_diffusers_to_ldm_map(module.state_dict().keys())
    base = _unet_ldm_state(unet)
    ldm: dict[str, torch.Tensor] = {}
    for name in mapping.values():
        tensor = state.get(name)
        if tensor is None:
            tensor = base.get(name)
        if tensor is None:
            raise ModelFormatError(f"the Control-LoRA has no {name!r} and the MODEL's UNet has no "
                                   "weight of that name; it was made for another model")
        ldm[name] = _own(tensor, torch.float32)
    for key in state:
        if key.endswith(".up") and "__" not in key:
            layer = key[: -len(".up")]
            target = ldm.get(layer + ".weight")
            down = state.get(layer + ".down")
            if target is None or down is None:
                raise ModelFormatError(f"Control-LoRA factor {key!r} has no matching weight or "
                                       "'.down' factor")
            up = state[key].float().flatten(start_dim=1)
            delta = torch.mm(up, down.float().flatten(start_dim=1)).reshape(target.shape)
            ldm[layer + ".weight"] = target + delta
    return _fill_from_ldm(module, ldm, mapping, dtype, "Control-LoRA")


def controlnet_from_state_dict(
    state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    name: str | os.PathLike[str] | None = None,
    unet: Any = None,
    global_average_pooling: bool | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> LoadedControlNet | LoadedT2IAdapter:
    """Builds a ControlNet or T2I-Adapter from a file's tensors (see `load_controlnet`).

    Args:
        state: The file's tensors.
        metadata: Its safetensors metadata.
        name: The file path: ComfyUI's ``_shuffle`` rule and messages.
        unet: The MODEL's diffusers UNet (or its original-layout state dict), for diff
            ControlNets and Control-LoRAs (``DiffControlNetLoader``).
        global_average_pooling: Overrides the file-name rule.
        dtype: Floating dtype of the module (None keeps the file's).

    Returns:
        `LoadedControlNet` or `LoadedT2IAdapter`.

    Raises:
        ModelFormatError: Unsupported or damaged files, a diff ControlNet or Control-LoRA
            without `unet`.
    """
    detected = detect_control_model(state, name=name, metadata=metadata)
    if detected.kind == "t2i_adapter":
        adapter_state = dict(state)
        if detected.layout == "diffusers":
            adapter_state, _ = _t2i_to_ldm(adapter_state)
        assert detected.config is not None
        module = _build_adapter(detected.config)
        mapping = t2i_diffusers_to_ldm_map(module.state_dict().keys(),
                                           detected.config["adapter_type"])
        module = _fill_from_ldm(module, adapter_state, mapping, dtype, "T2I-Adapter")
        return LoadedT2IAdapter(module, detected)
    pooling = (uses_global_average_pooling(name) if name is not None else False) \
        if global_average_pooling is None else global_average_pooling
    if detected.variant == "control_lora":
        if unet is None or isinstance(unet, Mapping):
            raise ModelFormatError(
                "this is a Control-LoRA (lora_controlnet): it is built on the MODEL's UNet; load "
                "it with DiffControlNetLoader (load_controlnet(path, unet=<the MODEL's diffusers "
                "UNet>))"
            )
        module = _control_lora(state, unet, dtype, detected)
        adm = getattr(unet.config, "projection_class_embeddings_input_dim", None)
        # NOTE: the architecture and family are the MODEL's.
        detected = dataclasses.replace(detected, config=_module_config(module), family=_family(
            int(unet.config.cross_attention_dim), bool(unet.config.use_linear_projection),
            adm if unet.config.addition_embed_type == "text_time" else None))
        return LoadedControlNet(module, detected, pooling)
    if detected.layout == "diffusers":
        ldm = _controlnet_to_ldm(state)
    else:
        ldm = _strip(state, CONTROL_PREFIX if CONTROL_PREFIX + "zero_convs.0.0.weight" in state
                     else "")
    if detected.variant == "diff":
        if unet is None:
            raise ModelFormatError(
                "this is a diff ControlNet (its 'difference' key: the weights are differences to "
                "the MODEL's UNet); load it with DiffControlNetLoader (load_controlnet(path, "
                "unet=<the MODEL's UNet>)); ComfyUI's ControlNetLoader would run it without the "
                "MODEL and give unusable results"
            )
        _add_unet(ldm, _unet_ldm_state(unet))
    module = _controlnet_module(detected, ldm, dtype)
    return LoadedControlNet(module, detected, pooling)


def _load_folder(folder: Path, dtype: torch.dtype | None,
                 global_average_pooling: bool | None) -> LoadedControlNet | LoadedT2IAdapter:
    from comfyc.compiler.models.single_file import _own, _populate

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{str(folder)!r} is a folder without a readable config.json; "
                               "expected a diffusers ControlNetModel/T2IAdapter folder") from exc
    kind = config.get("_class_name")
    if kind not in ("ControlNetModel", "T2IAdapter"):
        raise ModelFormatError(f"{str(folder)!r} holds a diffusers {kind!r}; comfyc loads "
                               "ControlNetModel and T2IAdapter folders (SD1/SD2/SDXL)")
    weights = next((folder / f for f in _FOLDER_WEIGHTS if (folder / f).is_file()), None)
    if weights is None:
        raise ModelFormatError(f"{str(folder)!r} has no {' or '.join(_FOLDER_WEIGHTS)}")
    state, _ = read_control_weights(weights)
    _refuse_other(state)
    if kind == "T2IAdapter":
        module = _build_adapter(config)
        _, facts = infer_t2i_config(_t2i_to_ldm(state)[0])
        family = "sdxl" if config.get("adapter_type") == "full_adapter_xl" else "sd1"
        module = _populate(module, {k: _own(v, dtype) for k, v in state.items()}, "T2I-Adapter")
        detected = DetectedControl("t2i_adapter", "folder", None, _module_config(module),
                                   family, facts)
        return LoadedT2IAdapter(module, detected)
    pooling = bool(config.get("global_pool_conditions")) or uses_global_average_pooling(folder)
    if global_average_pooling is not None:
        pooling = global_average_pooling
    # NOTE: the stage pools (and expands back to full size, as ComfyUI); the module must not.
    module = _build_controlnet({**config, "global_pool_conditions": False})
    module = _populate(module, {k: _own(v, dtype) for k, v in state.items()}, "ControlNet")
    ldm = _controlnet_to_ldm(state)
    _, facts = infer_controlnet_config(ldm)
    family = _family(facts["context_dim"], facts["use_linear_in_transformer"],
                     facts["adm_in_channels"])
    detected = DetectedControl("controlnet", "folder", None, _module_config(module), family, facts)
    return LoadedControlNet(module, detected, pooling)


def load_controlnet(
    path: str | os.PathLike[str],
    *,
    unet: Any = None,
    global_average_pooling: bool | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> LoadedControlNet | LoadedT2IAdapter:
    """Loads a ControlNet or T2I-Adapter as ComfyUI's ``comfy.controlnet.load_controlnet``.

    Args:
        path: A ``.safetensors``/``.pth`` file (ComfyUI/original or diffusers names) or a
            diffusers folder (``config.json`` + weights).
        unet: ``DiffControlNetLoader``'s MODEL: its diffusers UNet (after LoRA merges), needed
            by diff ControlNets and Control-LoRAs; ignored by other files (as ComfyUI does).
        global_average_pooling: Overrides ComfyUI's file-name rule (``*_shuffle``).
        dtype: Floating dtype of the module (None keeps the file's).

    Returns:
        `LoadedControlNet` or `LoadedT2IAdapter`.

    Raises:
        ModelFormatError: Missing, unsupported or damaged files, with what to do about them.
    """
    from comfyc.compiler.models.single_file import (
        SAFETENSORS_SUFFIXES,
        _forget_mapped,
        _read_mapped,
    )

    file = Path(path)
    if file.is_dir():
        return _load_folder(file, dtype, global_average_pooling)
    # NOTE: as load_checkpoint: a private memory map whose pages are given back as each tensor
    # is copied (an SDXL ControlNet's fp16 file is not held next to its float32 module).
    mapped = _read_mapped(file) if file.suffix.lower() in SAFETENSORS_SUFFIXES else None
    state, metadata = mapped if mapped is not None else read_control_weights(file)
    try:
        return controlnet_from_state_dict(state, metadata, name=file, unet=unet,
                                          global_average_pooling=global_average_pooling,
                                          dtype=dtype)
    finally:
        _forget_mapped(state)


# -- the stages ----------------------------------------------------------------------------------


def check_adapter_fits(adapter: LoadedT2IAdapter, unet: Any) -> None:
    """Raises unless diffusers places the adapter's features where ComfyUI does for this UNet.

    ComfyUI adds the features to fixed input blocks (module docstring, point 8); diffusers adds
    feature k after down block k (and the SDXL adapter's last one after the mid block). They
    agree for UNets with 2 resnets per level and the adapter's widths: SD1/SD2 adapters on 4-level
    UNets ([c, 2c, 4c, 4c]), SDXL adapters on 3-level UNets ([c, 2c, 4c]).

    Args:
        adapter: The loaded adapter.
        unet: A diffusers ``UNet2DConditionModel`` (or its config).

    Raises:
        ModelFormatError: The UNet's levels, resnets per level or widths do not fit.
    """
    config = getattr(unet, "config", unet)
    widths = [int(c) for c in config.block_out_channels]
    levels = 3 if adapter.adapter_type == "full_adapter_xl" else 4
    layers = int(config.layers_per_block) if isinstance(config.layers_per_block, int) else None
    features = adapter.feature_channels
    expected = features[:3] if levels == 3 else features
    if layers != 2 or len(widths) != levels or widths != expected:
        raise ModelFormatError(
            f"a {adapter.adapter_type} T2I-Adapter with feature widths {features} fits UNets of "
            f"{levels} levels of 2 resnets with widths {expected}; this UNet has "
            f"{len(widths)} levels of {config.layers_per_block} with widths {widths}, where "
            "ComfyUI adds the features to other blocks (or skips them with a warning)"
        )
