"""Seeded random-weight ControlNets and T2I-Adapters (nothing is downloaded).

* `write_controlnet(path, family, size, seed=..., layout=...)`: a ControlNet with the architecture
  of the synthetic UNet of ``family`` (``sd1`` = `synthetic`'s ``sd15``, ``sdxl``) at ``size``:
  ``full`` is the published SD1.5 ControlNet (361 M parameters) or SDXL ControlNet (1.25 B; as
  diffusers/controlnet-canny-sdxl-1.0), ``tiny`` has exactly the tiny UNet's widths, levels,
  transformer depths, heads, context width and ADM width, so that it combines with
  ``tiny_checkpoint("sd15")`` / ``tiny_checkpoint("sdxl")`` (1.1 M / 4.5 M parameters). The hint
  encoder keeps ComfyUI's fixed widths (16, 32, 96, 256).
* `write_t2i_adapter(path, family, size, seed=..., layout=..., kind=...)`: full adapters
  (``sd1``: [c, 2c, 4c, 4c], unshuffle 8; ``sdxl``: unshuffle 16) and the light adapter (``sd1``
  only). Published widths at ``full`` (c = 320); ``tiny``: c = 32 (sd1) / 64 (sdxl). ComfyUI's
  T2I placement needs a UNet with 2 resnets per level (`check_adapter_fits`), which the tiny
  synthetic UNets (1 per level) are not: `adapter_host_unet_config` /
  `write_adapter_host_checkpoint` give tiny checkpoints whose UNets fit the tiny adapters.
  ComfyUI hard-codes the light adapter's widths (320...), so it loads only the ``full`` light one.

Layouts: ``comfy`` (ComfyUI/original names; ControlNets under ``control_model.``, adapters as
TencentARC's ``conv_in``/``body.N``), ``diffusers`` (one file with diffusers names) and ``folder``
(``config.json`` + ``diffusion_pytorch_model.safetensors``). Every layout holds the same values
for one seed: each weight is generated from ``(seed, component, diffusers name)`` as in
`comfyc.compiler.models.synthetic` (``normal(0, 1/sqrt(fan_in))`` weights, norms 1, biases 0;
``jitter`` perturbs norms and biases). Single files carry the exact diffusers config in
``comfyc.config`` metadata (the tiny SD1 ControlNet's 8 heads at 32 channels cannot be read from
shapes; ComfyUI gives such widths 64 channels per head and cannot load it, see
`comfyc.compiler.models.controlnet`).

Variants for ``DiffControlNetLoader`` tests (``comfy`` layout only, need the checkpoint the
ControlNet goes with, ``base``): ``diff`` writes ``control_model.*`` = ControlNet - UNet for every
name the UNet shares (input blocks, middle block, time and ADM embeddings) plus a ``difference``
marker, so that loading it with that UNet gives back the plain ControlNet of the same seed (up to
the file dtype's rounding); ``control_lora`` writes a Control-LoRA (``lora_controlnet``): the hint
encoder, zero convolutions, norms and biases in full, and a rank-``rank`` ``up``/``down`` pair for
every other weight of the UNet-shared part (the delta to the UNet's weight).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from comfyc.compiler.models.controlnet import (
    CONFIG_METADATA_KEY,
    CONTROL_PREFIX,
    _module_config,
    controlnet_config_from_unet,
    controlnet_diffusers_to_ldm_map,
    t2i_diffusers_to_ldm_map,
)
from comfyc.compiler.models.keymap import UNET_PREFIX
from comfyc.compiler.models.synthetic import (
    _SD15_UNET,
    _SDXL_UNET,
    _TINY_SD15_UNET,
    _TINY_SDXL_UNET,
    GENERATOR_VERSION,
    InitRule,
    ModelSpec,
    TensorGroup,
    _one_to_one,
    _Source,
    build_modules,
    model_spec,
    single_file_layout,
    synthetic_tensor,
    write_diffusers_layout,
    write_safetensors_stream,
)

__all__ = [
    "ADAPTER_KINDS",
    "CONTROL_FAMILIES",
    "CONTROL_LAYOUTS",
    "adapter_host_unet_config",
    "controlnet_config",
    "t2i_adapter_config",
    "write_adapter_host_checkpoint",
    "write_controlnet",
    "write_t2i_adapter",
]

#: Families: the synthetic checkpoint families they combine with (``sd15``, ``sdxl``).
CONTROL_FAMILIES = {"sd1": "sd15", "sdxl": "sdxl"}
#: File layouts `write_controlnet` / `write_t2i_adapter` write.
CONTROL_LAYOUTS = ("comfy", "diffusers", "folder")
#: T2I-Adapter kinds.
ADAPTER_KINDS = ("full", "light")
_SIZES = ("full", "tiny")
_CONTROLNET = "controlnet"
_ADAPTER = "t2i_adapter"
_LORA_STD = 0.02
_UNET_CONFIGS = {("sd1", "full"): _SD15_UNET, ("sd1", "tiny"): _TINY_SD15_UNET,
                 ("sdxl", "full"): _SDXL_UNET, ("sdxl", "tiny"): _TINY_SDXL_UNET}
_ADAPTER_WIDTH = {("sd1", "full"): 320, ("sd1", "tiny"): 32, ("sdxl", "full"): 320,
                  ("sdxl", "tiny"): 64}


def _check(family: str, size: str, layout: str | None = None) -> None:
    if family not in CONTROL_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {list(CONTROL_FAMILIES)}")
    if size not in _SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {list(_SIZES)}")
    if layout is not None and layout not in CONTROL_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {list(CONTROL_LAYOUTS)}")


def controlnet_config(family: str, size: str = "tiny") -> dict[str, Any]:
    """The diffusers ``ControlNetModel`` config of a synthetic ControlNet (the UNet's, 3-channel
    hint)."""
    _check(family, size)
    return controlnet_config_from_unet(_UNET_CONFIGS[(family, size)])


def t2i_adapter_config(family: str, size: str = "tiny", kind: str = "full",
                       in_channels: int = 3) -> dict[str, Any]:
    """The diffusers ``T2IAdapter`` config of a synthetic adapter (see the module docstring)."""
    _check(family, size)
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; expected one of {list(ADAPTER_KINDS)}")
    if kind == "light" and family != "sd1":
        raise ValueError("light T2I-Adapters exist for SD1 only")
    c = _ADAPTER_WIDTH[(family, size)]
    if kind == "light":
        return {"in_channels": in_channels, "channels": [c, 2 * c, 4 * c], "num_res_blocks": 4,
                "downscale_factor": 8, "adapter_type": "light_adapter"}
    return {"in_channels": in_channels, "channels": [c, 2 * c, 4 * c, 4 * c],
            "num_res_blocks": 2, "downscale_factor": 16 if family == "sdxl" else 8,
            "adapter_type": "full_adapter_xl" if family == "sdxl" else "full_adapter"}


def adapter_host_unet_config(family: str, size: str = "tiny") -> dict[str, Any]:
    """A UNet config where ComfyUI's T2I placement equals diffusers' (2 resnets per level) with
    the synthetic adapter's widths: the published UNet at ``full``; at ``tiny`` the tiny UNet
    with 2 resnets per level and widths [32, 64, 128, 128] (sd1) / [64, 128, 256] (sdxl)."""
    _check(family, size)
    base = dict(_UNET_CONFIGS[(family, size)])
    if size == "full":
        return base
    c = _ADAPTER_WIDTH[(family, size)]
    if family == "sd1":
        return {**base, "layers_per_block": 2, "block_out_channels": [c, 2 * c, 4 * c, 4 * c],
                "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
    widths = [c, 2 * c, 4 * c]
    return {**base, "layers_per_block": 2, "block_out_channels": widths,
            "attention_head_dim": [w // 64 for w in widths]}


def _synthetic_metadata(kind: str, family: str, size: str, seed: int, jitter: float) -> str:
    return json.dumps({"kind": kind, "family": family, "size": size, "seed": seed,
                       "jitter": jitter, "generator": GENERATOR_VERSION}, sort_keys=True)


def _build(kind: str, config: Mapping[str, Any]) -> Any:
    from diffusers import ControlNetModel, T2IAdapter

    with torch.device("meta"):
        cls = ControlNetModel if kind == _CONTROLNET else T2IAdapter
        return cls.from_config(dict(config))


def _write(path: str | os.PathLike[str], module: Any, kind: str, groups: list[TensorGroup],
           layout: str, dtype: torch.dtype, synthetic: str) -> Path:
    if layout == "folder":
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors_stream(folder / "diffusion_pytorch_model.safetensors", groups,
                                 dtype=dtype, metadata={"format": "pt"})
        module.save_config(str(folder))
        return folder
    metadata = {CONFIG_METADATA_KEY: json.dumps(_module_config(module), sort_keys=True),
                "comfyc.synthetic": synthetic}
    return write_safetensors_stream(path, groups, dtype=dtype, metadata=metadata)


def _unet_weights(base: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    from comfyc.compiler.models.single_file import read_state_dict

    state, _ = read_state_dict(base)
    return {k[len(UNET_PREFIX):]: v.float() for k, v in state.items() if k.startswith(UNET_PREFIX)}


def write_controlnet(
    path: str | os.PathLike[str],
    family: str = "sd1",
    size: str = "tiny",
    *,
    seed: int = 0,
    layout: str = "comfy",
    dtype: torch.dtype = torch.float16,
    jitter: float = 0.0,
    variant: str | None = None,
    base: str | os.PathLike[str] | None = None,
    rank: int = 4,
) -> Path:
    """Writes a seeded random-weight ControlNet (see the module docstring).

    Args:
        path: Destination ``.safetensors`` file (a folder for ``layout="folder"``).
        family: ``"sd1"`` or ``"sdxl"``.
        size: ``"tiny"`` or ``"full"``.
        seed: Weights are a pure function of the seed.
        layout: ``"comfy"`` (``control_model.*``), ``"diffusers"`` or ``"folder"``.
        dtype: Floating dtype of the file.
        jitter: Std of noise on norm weights and biases.
        variant: None, ``"diff"`` or ``"control_lora"`` (``comfy`` layout; need `base`).
        base: The checkpoint the ControlNet goes with (its ``model.diffusion_model.*`` weights).
        rank: Control-LoRA rank.

    Returns:
        The written file or folder.
    """
    _check(family, size, layout)
    module = _build(_CONTROLNET, controlnet_config(family, size))
    source = _Source(_CONTROLNET, module, seed, jitter)
    mapping = controlnet_diffusers_to_ldm_map(source.shapes)
    synthetic = _synthetic_metadata(_CONTROLNET, family, size, seed, jitter)
    if variant is not None:
        if layout != "comfy" or base is None or variant not in ("diff", "control_lora"):
            raise ValueError("variant 'diff' or 'control_lora' needs layout='comfy' and base=<the "
                             "checkpoint the ControlNet goes with>")
        groups = _variant_groups(variant, source, mapping, _unet_weights(base), seed, rank)
        metadata = {"comfyc.synthetic": synthetic}
        if variant == "diff":
            metadata[CONFIG_METADATA_KEY] = json.dumps(_module_config(module), sort_keys=True)
        return write_safetensors_stream(path, groups, dtype=dtype, metadata=metadata)
    names = {k: CONTROL_PREFIX + v for k, v in mapping.items()} if layout == "comfy" else {
        k: k for k in source.shapes}
    return _write(path, module, _CONTROLNET, list(_one_to_one(source, names)), layout, dtype,
                  synthetic)


def _variant_groups(variant: str, source: _Source, mapping: Mapping[str, str],
                    unet: Mapping[str, torch.Tensor], seed: int, rank: int) -> list[TensorGroup]:
    groups: list[TensorGroup] = []
    for key, name in mapping.items():
        shape = source.shapes[key]
        shared = name in unet
        if variant == "diff":
            out = CONTROL_PREFIX + name
            def delta(key: str = key, name: str = name, out: str = out,
                      shared: bool = shared) -> dict[str, torch.Tensor]:
                return {out: source(key) - unet[name] if shared else source(key)}

            groups.append(TensorGroup({out: shape}, delta))
        elif shared and len(shape) >= 2:
            # NOTE: a rank-r delta to the MODEL's weight, as Control-LoRA files hold.
            up_shape = (shape[0], rank, *([1] * (len(shape) - 2)))
            down_shape = (rank, *shape[1:])
            rule = InitRule("normal", _LORA_STD)
            groups.append(TensorGroup(
                {name[: -len(".weight")] + ".up": up_shape,
                 name[: -len(".weight")] + ".down": down_shape},
                lambda name=name, up=up_shape, down=down_shape, rule=rule: {
                    name[: -len(".weight")] + ".up": synthetic_tensor(
                        seed, "control_lora", name + ".up", up, rule),
                    name[: -len(".weight")] + ".down": synthetic_tensor(
                        seed, "control_lora", name + ".down", down, rule)}))
        else:
            groups.append(TensorGroup({name: shape}, lambda key=key, name=name:
                                      {name: source(key)}))
    marker = "difference" if variant == "diff" else "lora_controlnet"
    groups.append(TensorGroup({marker: (1,)}, lambda: {marker: torch.zeros(1)},
                              {marker: torch.float32}))
    return groups


def write_t2i_adapter(
    path: str | os.PathLike[str],
    family: str = "sd1",
    size: str = "tiny",
    *,
    seed: int = 0,
    layout: str = "comfy",
    kind: str = "full",
    in_channels: int = 3,
    dtype: torch.dtype = torch.float16,
    jitter: float = 0.0,
) -> Path:
    """Writes a seeded random-weight T2I-Adapter (see the module docstring).

    Args:
        path: Destination ``.safetensors`` file (a folder for ``layout="folder"``).
        family: ``"sd1"`` or ``"sdxl"``.
        size: ``"tiny"`` or ``"full"``.
        seed: Weights are a pure function of the seed.
        layout: ``"comfy"`` (TencentARC names), ``"diffusers"`` or ``"folder"``.
        kind: ``"full"`` or ``"light"`` (sd1).
        in_channels: Hint channels (3; 1 for canny/sketch adapters).
        dtype: Floating dtype of the file.
        jitter: Std of noise on biases.

    Returns:
        The written file or folder.
    """
    _check(family, size, layout)
    config = t2i_adapter_config(family, size, kind, in_channels)
    module = _build(_ADAPTER, config)
    source = _Source(_ADAPTER, module, seed, jitter)
    if layout == "comfy":
        names = t2i_diffusers_to_ldm_map(source.shapes, config["adapter_type"])
    else:
        names = {k: k for k in source.shapes}
    synthetic = _synthetic_metadata(_ADAPTER, family, size, seed, jitter)
    return _write(path, module, _ADAPTER, list(_one_to_one(source, names)), layout, dtype,
                  synthetic)


def write_adapter_host_checkpoint(
    path: str | os.PathLike[str],
    family: str = "sd1",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    jitter: float = 0.0,
    diffusers_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Writes a tiny single-file checkpoint whose UNet fits the tiny T2I-Adapters
    (`adapter_host_unet_config`); VAE and text encoders are the tiny family's.

    Args:
        path: Destination ``.safetensors`` file.
        family: ``"sd1"`` or ``"sdxl"``.
        seed: Weight seed.
        dtype: Floating dtype.
        jitter: Std of noise on norm weights and biases.
        diffusers_dir: Also write a diffusers pipeline folder here (same weights), if given.

    Returns:
        The written file.
    """
    from comfyc.compiler.models.single_file import single_file_metadata

    _check(family, "tiny")
    spec = model_spec(CONTROL_FAMILIES[family], "tiny")
    components = {**spec.components, "unet": adapter_host_unet_config(family, "tiny")}
    host = ModelSpec(spec.family, components, spec.prediction_type, spec.variant)
    modules = build_modules(host)
    metadata = single_file_metadata(
        modules["unet"], modules.get("vae"), modules.get("text_encoder"),
        text_encoder_2=modules.get("text_encoder_2"), prediction_type=host.prediction_type,
        variant=host.variant, family=host.family)
    metadata["comfyc.synthetic"] = _synthetic_metadata("adapter_host", family, "tiny", seed,
                                                       jitter)
    written = write_safetensors_stream(path, single_file_layout(modules, host, seed, jitter),
                                       dtype=dtype, metadata=metadata)
    if diffusers_dir is not None:
        write_diffusers_layout(modules, host, seed, jitter, dtype, Path(diffusers_dir))
    return written
