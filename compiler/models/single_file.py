"""Single-file SD1.x/SD2.x/SDXL checkpoints to diffusers modules and back.

Reading: `load_checkpoint(path)` accepts a ``.safetensors`` file, a pickled ``.ckpt``/``.pt``
loaded only through ``torch.load(weights_only=True)`` (tensors and plain containers; anything
that needs arbitrary Python objects is refused), or a diffusers folder. The architecture is
inferred from tensor shapes (`comfyc.compiler.models.configs`), the family from the UNet and the
text-encoder layout as ComfyUI's ``model_detection``/``supported_models`` do:

* ``sdxl``: the UNet has ``label_emb`` (ADM input) and the file has ``conditioner.embedders``;
  ComfyUI's ``SDXL`` class matches context 2048 + ADM 2816 (also SSD-1B, Vega, KOALA: fewer
  transformer blocks, same family). SDXL-Turbo is the same architecture and ComfyUI loads it as
  plain ``SDXL`` (eps); only metadata can tell it apart (`LoadedCheckpoint.variant`).
* ``sdxl_refiner``: context 1280 (bigG only) + ADM 2560 (ComfyUI's ``SDXLRefiner``).
* ``sd2``: linear ``proj_in`` or an OpenCLIP ``cond_stage_model.model``; else ``sd1``.

For files whose widths are not the published ones (comfyc's tiny models), the ADM width decides:
``adm = pooled + n * 256`` with 6 ids (base) or 5 (refiner), ``pooled`` being bigG's projection.

The prediction type uses ComfyUI's heuristics: an SD2 UNet with 4 input channels is
v-prediction when the population std of ``output_blocks.11.1.transformer_blocks.0.norm1.bias``
exceeds 0.09 (768-v models), an SDXL file with a top-level ``v_pred`` key is v-prediction, else
eps.

Writing: `diffusers_to_single_file` / `save_single_file` produce the original layout that
ComfyUI, A1111 and diffusers' ``from_single_file`` read: ``model.diffusion_model.*``,
``first_stage_model.*`` and ``cond_stage_model.transformer.*`` (SD1, OpenAI CLIP),
``cond_stage_model.model.*`` (SD2, OpenCLIP) or ``conditioner.embedders.*`` (SDXL). comfyc adds a
``comfyc.config`` metadata entry with the exact module configs so that a model whose heads or
norm groups differ from the SD conventions (the tiny demo model) loads back identically.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from comfyc.compiler.models.configs import (
    ADM_TIME_EMBED_DIM,
    LATENT_SCALE,
    SDXL_LATENT_SCALE,
    infer_clip_config,
    infer_unet_config,
    infer_vae_config,
    require_complete,
)
from comfyc.compiler.models.errors import ModelFormatError
from comfyc.compiler.models.keymap import (
    CLIP_OPENAI_PREFIX,
    CLIP_OPENCLIP_PREFIX,
    SDXL_CLIP_G_PREFIX,
    SDXL_CLIP_L_PREFIX,
    SDXL_REFINER_CLIP_G_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    clip_hf_to_openclip,
    clip_openclip_to_hf,
    unet_diffusers_to_ldm_map,
    vae_diffusers_to_ldm_map,
    vae_tensor_to_diffusers,
    vae_tensor_to_ldm,
)
from comfyc.runtime.files import make_readable

__all__ = [
    "CONFIG_METADATA_KEY",
    "FAMILIES",
    "PICKLE_SUFFIXES",
    "SAFETENSORS_SUFFIXES",
    "LoadedCheckpoint",
    "TextEncoderSpec",
    "build_clip_text_model",
    "canonical_text_encoder_state",
    "canonical_text_key",
    "checkpoint_from_state_dict",
    "detect_prediction_type",
    "diffusers_to_single_file",
    "load_checkpoint",
    "load_pickle_weights",
    "load_vae",
    "read_state_dict",
    "save_single_file",
    "sdxl_text_encoders_to_ldm",
    "single_file_metadata",
    "vae_family_config",
    "vae_from_state_dict",
]

_log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
#: safetensors metadata entry holding the exact module configs (JSON).
CONFIG_METADATA_KEY = "comfyc.config"
_FAMILY_KEY = "comfyc.family"
# Flux all-in-one checkpoints keep the VAE under "vae." (ComfyUI's Flux.vae_key_prefix).
_FLUX_VAE_PREFIX = "vae."
_PREDICTION_KEY = "comfyc.prediction_type"
_VARIANT_KEY = "comfyc.variant"
#: Families `load_checkpoint` knows, in the vocabulary of `LoadedCheckpoint.family`.
FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner")
_SDXL_FAMILIES = ("sdxl", "sdxl_refiner")
# Number of 256-wide ids after the pooled vector in ComfyUI's SDXL / SDXLRefiner encode_adm.
_ADM_IDS = {"sdxl": 6, "sdxl_refiner": 5}
# The published SDXL (context, ADM) widths that ComfyUI's supported_models match on.
_PUBLISHED_SDXL = {(2048, 2816): "sdxl", (1280, 2560): "sdxl_refiner"}
_V_PREDICTION_PROBE = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
_V_PREDICTION_STD = 0.09
_PREDICTION_TYPES = ("epsilon", "v_prediction")
# CLIPTextConfig fields worth keeping in metadata (the rest are transformers bookkeeping).
_CLIP_CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
    "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps",
    "attention_dropout", "initializer_range", "initializer_factor", "pad_token_id",
    "bos_token_id", "eos_token_id",
)


@dataclass(frozen=True, slots=True)
class TextEncoderSpec:
    """How ComfyUI uses one text encoder of a checkpoint (what a prompt encoding needs).

    Attributes:
        attribute: The `LoadedCheckpoint` field holding the module (``"text_encoder"`` or
            ``"text_encoder_2"``).
        name: ComfyUI's name for it: ``"clip_l"``, ``"clip_h"`` (SD2) or ``"clip_g"``; also the
            key of per-encoder textual-inversion files.
        width: Hidden width (768, 1024, 1280): the width of its embeddings and of its share
            of the UNet context.
        pad_token: Tokenizer pad id (49407 = end token for CLIP-L; 0 = ``!`` for OpenCLIP).
        default_layer: ComfyUI's default output layer (-1 last, -2 penultimate).
        layer_norm_hidden_state: Whether ComfyUI applies the final layer norm to a hidden
            (non-last) layer's output: True for SD1/SD2, False for SDXL's encoders.
        pooled: Whether the UNet consumes this encoder's pooled, projected output (SDXL's bigG:
            ``text_projection(final_layer_norm(last_layer)[first end token])``).
    """

    attribute: str
    name: str
    width: int
    pad_token: int
    default_layer: int
    layer_norm_hidden_state: bool
    pooled: bool = False


@dataclass(slots=True)
class LoadedCheckpoint:
    """A checkpoint loaded into diffusers/transformers modules, with the facts a compiler needs.

    Attributes:
        unet: `diffusers.UNet2DConditionModel` (eval mode, no grad). SDXL UNets have
            ``addition_embed_type="text_time"``; run them on ComfyUI's ADM vector ``y`` with
            `comfyc.compiler.models.sdxl.sdxl_unet_forward`.
        vae: `diffusers.AutoencoderKL`, or None when the file holds no VAE.
        text_encoder: `transformers.CLIPTextModel`, or None when the file holds no text encoder
            (always None for the SDXL refiner, which has bigG only, as diffusers has it).
            For SD2 single files it keeps all OpenCLIP layers (24); see `default_clip_layer`.
            For SDXL it is CLIP ViT-L (12 layers, quick GELU).
        family: ``"sd1"``, ``"sd2"``, ``"sdxl"`` or ``"sdxl_refiner"`` (see `FAMILIES`).
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        clip_pad_token: Tokenizer pad id of the first encoder: 49407 (SD1, SDXL's CLIP-L) or
            0 (SD2; the SDXL refiner's bigG).
        default_clip_layer: ComfyUI's default CLIP output layer of the first encoder: -1 (last)
            for SD1, -2 (penultimate, final layer norm applied) for SD2 single files, -2
            (penultimate, *no* final norm) for SDXL. A diffusers folder's SD2 text encoder is
            already cut to 23 layers, so it says -1 there.
        in_channels: UNet input channels (4, or 9 for inpainting models).
        latent_scale: 0.18215 for SD1.x and SD2.x, 0.13025 for SDXL (base, refiner, Turbo).
        text_projection: SD2's OpenCLIP text projection ``[hidden, dim]`` (pooled output only;
            unused by SD1/SD2 UNets), if the file has one. SDXL's bigG keeps its projection
            inside `text_encoder_2` (``text_projection.weight``, ``[dim, hidden]``).
        source: Where it was loaded from.
        metadata: The file's safetensors metadata.
        text_encoder_2: SDXL's OpenCLIP ViT-bigG as `transformers.CLIPTextModelWithProjection`
            (32 layers, width 1280, GELU), or None.
        adm_in_channels: Width of the UNet's ADM input ``y`` (2816 SDXL, 2560 refiner), or None.
        variant: ``"turbo"`` when metadata says SDXL-Turbo (same architecture as SDXL; ComfyUI
            does not tell them apart), else None.
        clip_pad_token_2: Pad id of `text_encoder_2` (0), or None.
        default_clip_layer_2: Default layer of `text_encoder_2` (-2), or None.
        clip_layer_norm: ComfyUI's ``layer_norm_hidden_state`` for the prompt encoders: True
            for SD1/SD2 (a hidden layer's output goes through the final layer norm), False for
            SDXL (penultimate hidden state used raw).
    """

    unet: Any
    vae: Any | None
    text_encoder: Any | None
    family: str
    prediction_type: str
    clip_pad_token: int
    default_clip_layer: int
    in_channels: int
    latent_scale: float = LATENT_SCALE
    text_projection: torch.Tensor | None = None
    source: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    text_encoder_2: Any | None = None
    adm_in_channels: int | None = None
    variant: str | None = None
    clip_pad_token_2: int | None = None
    default_clip_layer_2: int | None = None
    clip_layer_norm: bool = True

    @property
    def is_inpainting(self) -> bool:
        """True for 9-input-channel inpainting UNets."""
        return self.in_channels == 9

    @property
    def is_sdxl(self) -> bool:
        """True for SDXL base/Turbo and the SDXL refiner (ADM-conditioned UNets)."""
        return self.family in _SDXL_FAMILIES

    @property
    def adm_ids(self) -> tuple[str, ...]:
        """The ids after the pooled vector in ``y``, in ComfyUI's ``encode_adm`` order.

        ``("height", "width", "crop_h", "crop_w", "target_height", "target_width")`` for SDXL,
        ``("height", "width", "crop_h", "crop_w", "aesthetic_score")`` for the refiner, ``()``
        for SD1/SD2.
        """
        from comfyc.compiler.models.sdxl import adm_id_names

        return adm_id_names(self.family) if self.is_sdxl else ()

    @property
    def text_encoders(self) -> tuple[TextEncoderSpec, ...]:
        """The prompt encoders in the order their outputs are concatenated into the context.

        SDXL: ``clip_l`` (768) then ``clip_g`` (1280) = 2048; refiner: ``clip_g``; SD1
        ``clip_l``; SD2 ``clip_h``. Encoders absent from the file are left out.
        """
        specs: list[TextEncoderSpec] = []
        if self.text_encoder is not None:
            width = int(self.text_encoder.config.hidden_size)
            name = "clip_h" if self.family == "sd2" else "clip_l"
            specs.append(TextEncoderSpec(
                "text_encoder", name, width, self.clip_pad_token, self.default_clip_layer,
                self.clip_layer_norm, pooled=False,
            ))
        if self.text_encoder_2 is not None:
            specs.append(TextEncoderSpec(
                "text_encoder_2", "clip_g", int(self.text_encoder_2.config.hidden_size),
                0 if self.clip_pad_token_2 is None else self.clip_pad_token_2,
                -2 if self.default_clip_layer_2 is None else self.default_clip_layer_2,
                self.clip_layer_norm, pooled=True,
            ))
        return tuple(specs)


# -- reading files -------------------------------------------------------------------------------


# numpy dtype classes of plain numeric scalars (e.g. a pickled `global_step`); all inert.
_NUMPY_SCALAR_DTYPES = (
    "BoolDType", "Int8DType", "UInt8DType", "Int16DType", "UInt16DType", "Int32DType",
    "UInt32DType", "Int64DType", "UInt64DType", "LongDType", "ULongDType", "LongLongDType",
    "ULongLongDType", "Float16DType", "Float32DType", "Float64DType", "LongDoubleDType",
)


def _safe_pickle_globals() -> list[Any]:
    """Globals that Lightning checkpoints (the original SD .ckpt files) need; all inert.

    NOTE: ComfyUI allows the same set: a stand-in for Lightning's ModelCheckpoint callback
    (never called; its state is plain data), numpy scalars and dtypes, and `_codecs.encode`
    (how protocol-2 pickles store bytes).
    """
    import _codecs

    import numpy as np

    class ModelCheckpoint:  # stand-in for pytorch_lightning's callback class
        def __setstate__(self, state: Any) -> None:
            self.state = state

    ModelCheckpoint.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    allowed: list[Any] = [ModelCheckpoint, np.dtype, _codecs.encode]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        def scalar(*args: Any, **kwargs: Any) -> Any:
            try:
                from numpy._core.multiarray import scalar as numpy_scalar  # type: ignore
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core.multiarray import scalar as numpy_scalar  # type: ignore

            return numpy_scalar(*args, **kwargs)

        scalar.__module__ = module
        scalar.__qualname__ = "scalar"
        allowed.append((scalar, f"{module}.scalar"))
    try:
        from numpy import dtypes
    except ImportError:  # pragma: no cover - numpy < 1.25
        return allowed
    for kind in _NUMPY_SCALAR_DTYPES:
        if hasattr(dtypes, kind):
            allowed.append(getattr(dtypes, kind))
    return allowed


def _refusal_reason(lines: list[str]) -> str | None:
    """The line of torch's long weights_only message that names what was refused."""
    for i, line in enumerate(lines):
        if "GLOBAL" in line:
            return line.split("WeightsUnpickler error:")[-1].strip()
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:")[-1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else None)
    return None


def load_pickle_weights(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with an inert allow-list; refuses anything else.

    Raises:
        ModelFormatError: The pickle needs other Python objects (it is never executed), or it is
            not a PyTorch file.
    """
    try:
        with torch.serialization.safe_globals(_safe_pickle_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
        text = str(exc)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        first_line = lines[0] if lines else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
            reason = _refusal_reason(lines) or first_line
            raise ModelFormatError(
                f"refusing to load {str(path)!r}: it is a pickle that needs arbitrary Python "
                f"objects ({reason}). comfyc only reads tensors from pickles "
                "(torch.load(weights_only=True)), because unpickling can run code. Get a "
                ".safetensors version of the model, or convert it with a tool you trust"
            ) from exc
        raise ModelFormatError(
            f"cannot read {str(path)!r} as a PyTorch checkpoint: {first_line}"
        ) from exc


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Reads a weights file into a flat state dict.

    Args:
        path: A ``.safetensors``/``.sft`` file, or a ``.ckpt``/``.pt``/``.pth``/``.bin`` pickle
            (loaded with ``weights_only=True``; a Lightning ``{"state_dict": ...}`` wrapper is
            unwrapped and non-tensor entries are dropped).

    Returns:
        ``(tensors, metadata)``; metadata is the safetensors header metadata (empty for pickles).

    Raises:
        ModelFormatError: Missing file, unsupported extension, unsafe or corrupt pickle.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if file.is_dir():
        raise ModelFormatError(
            f"{str(file)!r} is a folder; expected a weights file (.safetensors, .ckpt). Load "
            "diffusers folders with load_checkpoint()"
        )
    if not file.is_file():
        raise ModelFormatError(f"model file {str(file)!r} does not exist")
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(file), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
            return load_file(str(file)), metadata
        except (SafetensorError, OSError) as exc:
            raise ModelFormatError(
                f"cannot read {str(file)!r} as safetensors: {exc}; the file may be truncated "
                "(re-download it)"
            ) from exc
    if suffix in PICKLE_SUFFIXES:
        loaded = load_pickle_weights(file)
        if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, Mapping):
            raise ModelFormatError(
                f"{str(file)!r} holds a {type(loaded).__name__}, expected a dict of tensors"
            )
        tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        return tensors, {}
    raise ModelFormatError(
        f"unsupported model file type {suffix or '(no extension)'!r} for {str(file)!r}; "
        f"expected {', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)} (other pickle formats "
        "are refused because unpickling can run code)"
    )


# -- building modules ----------------------------------------------------------------------------


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        return tensor.to(dtype)
    return tensor


def _own(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A fresh, contiguous copy in `dtype` (floating tensors only).

    NOTE: tensors from `safetensors.torch.load_file` may start at unaligned addresses, which
    makes CPU kernels take other code paths (results differ in the last bits, and run slower);
    a fresh allocation is 64-byte aligned, so loaded modules compute exactly like the originals.
    """
    source = tensor
    if tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) and not tensor.is_meta:
        tensor = tensor.float()  # NOTE: fp8 files are read exactly, then cast
    target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
    if tensor.is_meta:
        return tensor.to(target)
    owned = torch.empty(tensor.shape, dtype=target).copy_(tensor)
    _release_mapped(source)
    return owned


# NOTE (issue #22, memory at scale): load_checkpoint reads safetensors files through a private
# memory map; each tensor is a view of it until `_own` copies it, and then its pages are given
# back (madvise DONTNEED). The file's weights are then never all resident at once next to their
# float32 copies: for SDXL that is 7 GB less at the peak (21 GB, over this project's 24 GB box,
# down to about the float32 modules). Unread or re-read pages come back from the page cache.
_MAPPED: dict[int, tuple[Any, int, int]] = {}

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def _read_mapped(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """A safetensors file's tensors as views of a private memory map, or None when the file
    is not one this reader handles (then `read_state_dict` reads it and names any problem)."""
    import mmap
    import struct

    try:
        with open(file, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        metadata = dict(header.pop("__metadata__", None) or {})
        base = 8 + size
        tensors: dict[str, torch.Tensor] = {}
        for key, spec in header.items():
            dtype = _SAFETENSORS_DTYPES[spec["dtype"]]
            start, end = (int(v) for v in spec["data_offsets"])
            itemsize = torch.empty((), dtype=dtype).element_size()
            if end <= start:
                tensors[key] = torch.empty(spec["shape"], dtype=dtype)
                continue
            tensor = torch.frombuffer(mapped, dtype=dtype, count=(end - start) // itemsize,
                                      offset=base + start).reshape(spec["shape"])
            _MAPPED[tensor.data_ptr()] = (mapped, base + start, end - start)
            tensors[key] = tensor
        return tensors, {str(k): str(v) for k, v in metadata.items()}
    except (OSError, ValueError, KeyError, TypeError, struct.error, RuntimeError):
        return None


def _release_mapped(tensor: torch.Tensor) -> None:
    """Give back the pages of a memory-mapped tensor that lie wholly inside it."""
    import mmap

    entry = _MAPPED.pop(tensor.data_ptr(), None) if not tensor.is_meta else None
    if entry is None:
        return
    mapped, start, length = entry
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, (start + length) // page * page
    if last > first and hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_DONTNEED, first, last - first)


def _forget_mapped(state: Mapping[str, torch.Tensor]) -> None:
    """Drop the map records of ``state``'s tensors (the map closes with its last view)."""
    for tensor in state.values():
        if not tensor.is_meta:
            _MAPPED.pop(tensor.data_ptr(), None)


def _populate(module: Any, weights: dict[str, torch.Tensor], what: str) -> Any:
    """Loads `weights` into a module built on the meta device (tensors are adopted, not copied)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    # NOTE: persistent position_ids buffers are derived data; files often omit them.
    for key in [k for k in missing if k.endswith("position_ids")]:
        weights[key] = torch.arange(expected[key].shape[-1]).expand(expected[key].shape).clone()
        missing.remove(key)
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise ModelFormatError(
            f"the {what} weights do not fit the inferred architecture: missing "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected "
            f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}; the file may be damaged "
            "or use an architecture comfyc does not support"
        )
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelFormatError(
                f"{what} weight {key!r} has shape {tuple(tensor.shape)}, the inferred "
                f"architecture expects {tuple(expected[key].shape)}"
            )
    module.load_state_dict(weights, strict=True, assign=True)
    # NOTE: shape-only loads (meta weights) keep meta buffers too.
    shapes_only = bool(weights) and all(t.is_meta for t in weights.values())
    for name, buffer in list(module.named_buffers()):
        if buffer.is_meta:
            if shapes_only and name in weights:
                continue
            if not name.endswith("position_ids"):
                raise ModelFormatError(f"{what} buffer {name!r} was not initialised")
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            owner.register_buffer(
                "position_ids",
                torch.arange(buffer.shape[-1]).expand(buffer.shape).clone(),
                persistent=False,
            )
    module.requires_grad_(False)
    return module.eval()


def _build_unet(config: dict[str, Any]) -> Any:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def _build_vae(config: dict[str, Any]) -> Any:
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        return AutoencoderKL.from_config(config)


def build_clip_text_model(
    config: dict[str, Any], *, device: str = "meta", with_projection: bool = False
) -> Any:
    """Builds a transformers `CLIPTextModel` (on the meta device unless told otherwise).

    Args:
        config: `CLIPTextConfig` keyword arguments.
        device: Where to allocate (``"meta"``: shapes only).
        with_projection: Build `CLIPTextModelWithProjection` (SDXL's bigG) instead.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with torch.device(device):
        return cls(CLIPTextConfig(**config))


def _text_module_prefix(module: Any) -> str:
    """``"text_model."`` when the module's own keys carry it (transformers 4), else ``""``."""
    return "text_model." if any(k.startswith("text_model.") for k in module.state_dict()) else ""


def canonical_text_encoder_state(module_or_state: Any) -> dict[str, torch.Tensor]:
    """CLIPTextModel weights named ``text_model.*`` (the on-disk names), for any transformers.

    transformers 5 dropped the ``text_model.`` level from the module; files, LoRAs and
    transformers 4 keep it. comfyc uses the ``text_model.*`` names everywhere.
    """
    state = module_or_state.state_dict() if hasattr(module_or_state, "state_dict") else dict(
        module_or_state
    )
    return {canonical_text_key(k): v for k, v in state.items()}


def canonical_text_key(key: str) -> str:
    """``text_model.``-prefixed name of a text-encoder weight; ``text_projection.*`` (the
    projection of `CLIPTextModelWithProjection`, outside ``text_model``) stays as it is."""
    if key.startswith(("text_model.", "text_projection.")):
        return key
    return "text_model." + key


def _unet_from_ldm(
    state: dict[str, torch.Tensor], config: dict[str, Any], dtype: torch.dtype | None
) -> Any:
    unet = _build_unet(config)
    mapping = unet_diffusers_to_ldm_map(unet.state_dict().keys())
    reverse = {ldm: diffusers for diffusers, ldm in mapping.items()}
    weights = {}
    for key, tensor in state.items():
        weights[reverse.get(key, "<unmapped> " + key)] = _own(tensor, dtype)
    return _populate(unet, weights, "UNet")


# Attention names of diffusers-format VAE files saved before diffusers 0.14.
_OLD_VAE_ATTENTION = {
    "query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0.",
}


def vae_family_config(family: str | None) -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` config entries that depend on the model family.

    Args:
        family: ``sd1``, ``sd2``, ``sdxl``, ``sdxl_refiner``, ``sd3``, ``flux``,
            ``flux_schnell``, ``flux_inpaint`` or None (nothing).

    Returns:
        ``scaling_factor`` (and ``shift_factor``, ``sample_size``, ``force_upcast``) as the
        published diffusers VAE configs of the family have them.
    """
    if family is None or family in ("sd1", "sd2"):
        return {}
    if family in _SDXL_FAMILIES:
        return {"scaling_factor": SDXL_LATENT_SCALE, "sample_size": 1024, "force_upcast": True}
    if family == "sd3" or family.startswith("flux"):
        from comfyc.compiler.models.flow import latent_format_for

        latent = latent_format_for(family)
        return {"scaling_factor": latent.scale, "shift_factor": latent.shift,
                "sample_size": 1024, "force_upcast": True}
    raise ValueError(f"unknown family {family!r}")


def vae_from_state_dict(
    state: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = torch.float32,
    overrides: dict[str, Any] | None = None,
    family: str | None = None,
) -> Any:
    """Builds an `AutoencoderKL` from VAE weights in LDM or diffusers naming.

    Accepts keys with or without the ``first_stage_model.`` (or Flux checkpoints' ``vae.``)
    prefix, LDM names (``encoder.down.0.block.0...``), diffusers names
    (``encoder.down_blocks.0.resnets.0...``) including the old ``query/key/value/proj_attn``
    attention names; ``loss.*`` and ``model_ema.*`` entries are ignored. SD3's and Flux's
    16-channel VAEs (no quant convolutions) load the same way.

    Args:
        state: The weights.
        dtype: Floating dtype of the module (None keeps the file's).
        overrides: Config entries that replace inferred ones.
        family: The model family the VAE belongs to (``sdxl``, ``sd3``, ``flux``, ...): sets
            diffusers' ``scaling_factor`` / ``shift_factor`` to the family's latent format
            (SD1/SD2 0.18215; SDXL 0.13025; SD3 1.5305 and 0.0609; Flux 0.3611 and 0.1159).
            ComfyUI's VAE itself applies neither: the model's latent format does.

    Returns:
        The VAE in eval mode.
    """
    plain: dict[str, torch.Tensor] = {}
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in state) else (
        _FLUX_VAE_PREFIX if all(k.startswith(_FLUX_VAE_PREFIX) for k in state) else "")
    for key, tensor in state.items():
        key = key[len(prefix) :] if key.startswith(prefix) else key
        if key.startswith(("loss.", "model_ema.")):
            continue
        plain[key] = tensor
    if any(".down_blocks." in k or ".up_blocks." in k for k in plain):
        fixed = {}
        for key, tensor in plain.items():
            if ".mid_block.attentions." in key:
                head, _, leaf = key.rpartition("attentions.0.")
                for old, new in _OLD_VAE_ATTENTION.items():
                    if leaf.startswith(old):
                        leaf = new + leaf[len(old) :]
                key = head + "attentions.0." + leaf
            fixed[key] = tensor
        mapping = vae_diffusers_to_ldm_map(fixed)
        plain = {mapping[k]: vae_tensor_to_ldm(k, t) for k, t in fixed.items()}
    config = infer_vae_config(plain)
    config.update(vae_family_config(family))
    config.update(overrides or {})
    vae = _build_vae(config)
    mapping = vae_diffusers_to_ldm_map(vae.state_dict().keys())
    reverse = {ldm: diffusers for diffusers, ldm in mapping.items()}
    weights = {}
    for key, tensor in plain.items():
        target = reverse.get(key, "<unmapped> " + key)
        weights[target] = _own(vae_tensor_to_diffusers(target, tensor), dtype)
    return _populate(vae, weights, "VAE")


def _text_encoder_from_hf(
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    dtype: torch.dtype | None,
    *,
    projection: torch.Tensor | None = None,
    what: str = "text encoder",
) -> Any:
    """A CLIP text model from ``text_model.*`` weights; with `projection` (OpenCLIP layout,
    ``[hidden, dim]``) a `CLIPTextModelWithProjection` whose linear projection is its transpose."""
    model = build_clip_text_model(config, with_projection=projection is not None)
    prefix = _text_module_prefix(model)
    weights = {}
    for key, tensor in state.items():
        if key.endswith("embeddings.position_ids"):
            continue  # NOTE: rebuilt by _populate; old files store it as float or int
        local = key if prefix else key[len("text_model.") :]
        weights[local] = _own(tensor, dtype)
    if projection is not None:
        weights["text_projection.weight"] = _own(projection.t(), dtype)
    return _populate(model, weights, what)


def detect_prediction_type(
    unet_state: Mapping[str, torch.Tensor], family: str, in_channels: int
) -> str:
    """ComfyUI's heuristic: SD2 with 4 input channels and a wide norm1 bias is v-prediction.

    Args:
        unet_state: LDM UNet weights (prefix removed).
        family: ``"sd1"`` or ``"sd2"``.
        in_channels: UNet input channels.

    Returns:
        ``"v_prediction"`` or ``"epsilon"`` (also when the probe weight is absent or on meta).
    """
    if family != "sd2" or in_channels != 4:
        return "epsilon"
    probe = unet_state.get(_V_PREDICTION_PROBE)
    if probe is None or probe.is_meta:
        return "epsilon"
    std = float(torch.std(probe.float(), unbiased=False))
    return "v_prediction" if std > _V_PREDICTION_STD else "epsilon"


@dataclass(slots=True)
class _Components:
    """A single file's weights per component, component prefixes removed."""

    unet: dict[str, torch.Tensor] = field(default_factory=dict)
    vae: dict[str, torch.Tensor] = field(default_factory=dict)
    clip: dict[str, torch.Tensor] = field(default_factory=dict)  # CLIP-L (HF) or SD2 OpenCLIP
    clip_g: dict[str, torch.Tensor] = field(default_factory=dict)  # SDXL bigG (OpenCLIP names)
    openclip: bool = False  # `clip` holds SD2 OpenCLIP names
    conditioner: bool = False  # SDXL's conditioner.embedders layout


def _split_components(state: Mapping[str, torch.Tensor]) -> _Components:
    parts = _Components()
    parts.openclip = any(k.startswith(CLIP_OPENCLIP_PREFIX) for k in state)
    for key, tensor in state.items():
        if key.startswith(UNET_PREFIX):
            parts.unet[key[len(UNET_PREFIX) :]] = tensor
        elif key.startswith(VAE_PREFIX):
            parts.vae[key[len(VAE_PREFIX) :]] = tensor
        elif key.startswith(CLIP_OPENAI_PREFIX) and not parts.openclip:
            rest = key[len(CLIP_OPENAI_PREFIX) :]
            # NOTE: checkpoints made with transformers < 4.19 lack the text_model level.
            parts.clip[rest if rest.startswith("text_model.") else "text_model." + rest] = tensor
        elif key.startswith(CLIP_OPENCLIP_PREFIX):
            parts.clip[key[len(CLIP_OPENCLIP_PREFIX) :]] = tensor
        elif key.startswith(SDXL_CLIP_L_PREFIX):
            parts.conditioner = True
            rest = key[len(SDXL_CLIP_L_PREFIX) :]
            if rest in ("text_projection.weight", "logit_scale"):
                continue  # NOTE: CLIP-L's projection is unused by SDXL (ComfyUI drops it too)
            parts.clip[rest if rest.startswith("text_model.") else "text_model." + rest] = tensor
        elif key.startswith((SDXL_CLIP_G_PREFIX, SDXL_REFINER_CLIP_G_PREFIX)):
            parts.conditioner = True
            prefix = SDXL_CLIP_G_PREFIX if key.startswith(SDXL_CLIP_G_PREFIX) else (
                SDXL_REFINER_CLIP_G_PREFIX)
            parts.clip_g[key[len(prefix) :]] = tensor
        elif key.startswith("conditioner."):
            parts.conditioner = True  # NOTE: other embedders (e.g. size) carry no weights we use
    return parts


# Marker weights of diffusion models that are not UNets (ComfyUI's model_detection checks).
_OTHER_ARCHITECTURES = (
    ("joint_blocks.0.context_block.attn.qkv.weight", "Stable Diffusion 3 (MMDiT)"),
    ("double_blocks.0.img_attn.norm.key_norm.scale", "Flux"),
    ("double_layers.0.attn.w1q.weight", "AuraFlow"),
    ("clf.1.weight", "Stable Cascade"),
    ("mlp_t5.0.weight", "Hunyuan-DiT"),
    ("t_block.1.weight", "PixArt"),
)


def _other_architecture(unet_state: Mapping[str, torch.Tensor]) -> str | None:
    """The name of a known non-UNet diffusion model, or None."""
    if "input_blocks.0.0.weight" in unet_state:
        return None
    for marker, name in _OTHER_ARCHITECTURES:
        if marker in unet_state:
            return name
    return None


def _sdxl_family(
    unet_config: Mapping[str, Any], pooled_dim: int | None, where: str
) -> str:
    """``"sdxl"`` or ``"sdxl_refiner"`` for an ADM UNet, as ComfyUI's supported_models match.

    The published widths decide first (context 2048 + ADM 2816 = SDXL, 1280 + 2560 = refiner);
    otherwise the number of 256-wide ids after the pooled vector (6 base, 5 refiner).
    """
    adm = int(unet_config["projection_class_embeddings_input_dim"])
    context = int(unet_config["cross_attention_dim"])
    published = _PUBLISHED_SDXL.get((context, adm))
    if published is not None:
        return published
    if pooled_dim is not None:
        ids, rest = divmod(adm - pooled_dim, ADM_TIME_EMBED_DIM)
        for family, count in _ADM_IDS.items():
            if rest == 0 and ids == count:
                return family
    raise ModelFormatError(
        f"the UNet takes an ADM vector of width {adm} with context width {context}{where}; "
        "expected SDXL (ADM 2816 = pooled 1280 + 6 x 256, context 2048) or the SDXL refiner "
        "(ADM 2560 = 1280 + 5 x 256, context 1280). Other class-conditioned UNets (SD2 "
        "unCLIP, SVD, ...) are not supported; save comfyc-made models with save_single_file, "
        "which records the family in the file's metadata"
    )


def _sdxl_prediction_type(state: Mapping[str, torch.Tensor], where: str) -> str:
    """ComfyUI's SDXL.model_type: ``v_pred`` key = v-prediction; EDM keys are refused."""
    if "edm_mean" in state or "edm_vpred.sigma_max" in state:
        raise ModelFormatError(
            f"this SDXL checkpoint{where} is an EDM model (Playground v2.5 / EDM v-prediction "
            "keys edm_mean, edm_vpred.*); comfyc supports eps and v-prediction SDXL models"
        )
    return "v_prediction" if "v_pred" in state else "epsilon"


def _variant(metadata: Mapping[str, str]) -> str | None:
    """``"turbo"`` when comfyc's or the model-spec metadata names SDXL-Turbo."""
    if metadata.get(_VARIANT_KEY):
        return metadata[_VARIANT_KEY]
    spec = " ".join(metadata.get(k, "") for k in (
        "modelspec.title", "modelspec.architecture", "modelspec.description"))
    return "turbo" if "turbo" in spec.lower() else None


def _load_clip_g(
    clip_g_state: dict[str, torch.Tensor],
    overrides: Mapping[str, Any],
    dtype: torch.dtype | None,
) -> Any:
    """SDXL's OpenCLIP bigG tower -> `CLIPTextModelWithProjection`."""
    hf_state, projection = clip_openclip_to_hf(clip_g_state)
    if projection is None:
        raise ModelFormatError(
            "the SDXL OpenCLIP text encoder has no text_projection; expected the ViT-bigG "
            "tower with its projection (its pooled output conditions the UNet)"
        )
    config = infer_clip_config(
        hf_state, openclip=True, text_projection_dim=int(projection.shape[1])
    )
    require_complete(config, overrides, "text encoder")
    config.update(overrides)
    return _text_encoder_from_hf(
        hf_state, config, dtype, projection=projection, what="OpenCLIP bigG text encoder"
    )


def checkpoint_from_state_dict(
    state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    dtype: torch.dtype | None = torch.float32,
    prediction_type: str | None = None,
    source: Path | None = None,
) -> LoadedCheckpoint:
    """Builds diffusers/transformers modules from a single-file state dict.

    Works with meta tensors too (then the modules stay on meta and the prediction type falls
    back to eps unless given), which lets tests check inference without real weights.

    Args:
        state: All weights of the file, original names.
        metadata: safetensors metadata; ``comfyc.config`` overrides the inferred configs.
        dtype: Floating dtype of the modules (None keeps the file's).
        prediction_type: Force ``"epsilon"`` or ``"v_prediction"``; None detects it.
        source: The file, for error messages and `LoadedCheckpoint.source`.

    Returns:
        The loaded checkpoint.

    Raises:
        ModelFormatError: Not an SD1.x/SD2.x/SDXL single-file checkpoint, or damaged.
    """
    metadata = dict(metadata or {})
    where = f" in {str(source)!r}" if source else ""
    try:
        overrides = json.loads(metadata.get(CONFIG_METADATA_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise ModelFormatError(
            f"the {CONFIG_METADATA_KEY} metadata{where} is not JSON: {exc}"
        ) from exc
    parts = _split_components(state)
    if not parts.unet:
        prefixes = sorted({k.split(".", 1)[0] for k in state})[:8]
        raise ModelFormatError(
            f"no UNet weights (model.diffusion_model.*){where}; found top-level names "
            f"{prefixes}. Expected an SD1.x/SD2.x/SDXL single-file checkpoint; a separate VAE "
            "loads with load_vae(), a LoRA with load_lora()"
        )
    other = _other_architecture(parts.unet)
    if other is not None:
        flow = other in ("Stable Diffusion 3 (MMDiT)", "Flux")
        raise ModelFormatError(
            f"this is a {other} checkpoint{where} (its diffusion model has no UNet "
            "input_blocks); load_checkpoint reads SD1.x, SD2.x and SDXL (base, refiner, Turbo)."
            + (" Load SD3/SD3.5 and Flux files with comfyc.compiler.models.flow."
               "load_flow_checkpoint (or load_any_checkpoint)" if flow else
               " Run this model in ComfyUI, or pick a supported checkpoint")
        )
    unet_config = infer_unet_config(parts.unet)
    require_complete(unet_config, overrides.get("unet", {}), "UNet")
    unet_config.update(overrides.get("unet", {}))
    adm = unet_config.get("projection_class_embeddings_input_dim")
    sdxl = unet_config.get("addition_embed_type") == "text_time"
    stored_family = metadata.get(_FAMILY_KEY)
    if stored_family is not None and stored_family not in FAMILIES:
        raise ModelFormatError(
            f"{_FAMILY_KEY} metadata{where} is {stored_family!r}; expected one of {FAMILIES}"
        )
    if sdxl != (stored_family in _SDXL_FAMILIES) and stored_family is not None:
        raise ModelFormatError(
            f"{_FAMILY_KEY} metadata{where} says {stored_family!r} but the UNet "
            f"{'has' if sdxl else 'has no'} an ADM input (label_emb); the file is inconsistent"
        )
    if not sdxl and parts.conditioner:
        raise ModelFormatError(
            f"the file has SDXL-style conditioner.embedders text encoders{where} but its UNet "
            "has no ADM input (label_emb.0.0); expected an SDXL UNet with them. The file may "
            "be a merge of different models"
        )
    if sdxl and not parts.conditioner and parts.clip:
        raise ModelFormatError(
            f"the UNet is SDXL-style (label_emb){where} but the text encoders are stored as "
            "cond_stage_model.*; expected SDXL's conditioner.embedders.* layout"
        )
    text_encoder_2 = None
    if sdxl and parts.clip_g:
        text_encoder_2 = _load_clip_g(parts.clip_g, overrides.get("text_encoder_2", {}), dtype)
    if sdxl:
        pooled = None if text_encoder_2 is None else int(
            text_encoder_2.config.projection_dim)
        family = stored_family or _sdxl_family(unet_config, pooled, where)
    else:
        linear = bool(unet_config["use_linear_projection"])
        family = stored_family or ("sd2" if parts.openclip or linear else "sd1")
    in_channels = int(unet_config["in_channels"])
    if family in _SDXL_FAMILIES:
        detected = _sdxl_prediction_type(state, where)
    else:
        detected = detect_prediction_type(parts.unet, family, in_channels)
    prediction = prediction_type or metadata.get(_PREDICTION_KEY) or detected
    if prediction not in _PREDICTION_TYPES:
        raise ModelFormatError(
            f"prediction type {prediction!r}{where}; expected one of {_PREDICTION_TYPES}"
        )
    variant = _variant(metadata) if family == "sdxl" else None
    if "unet" not in overrides:
        if family == "sd2":
            # NOTE: ComfyUI runs SD2 attention in float32 (attn_precision); 768-v models default
            # to 768 px (diffusers' sample_size is in latent pixels).
            unet_config["upcast_attention"] = True
            unet_config["sample_size"] = 96 if prediction == "v_prediction" else 64
        elif family in _SDXL_FAMILIES:
            # NOTE: the published configs: 1024 px (128 latent), Turbo 512 px (64 latent).
            unet_config["sample_size"] = 64 if variant == "turbo" else 128
    unet = _unet_from_ldm(parts.unet, unet_config, dtype)
    latent_scale = SDXL_LATENT_SCALE if family in _SDXL_FAMILIES else LATENT_SCALE
    vae = None
    if parts.vae:
        vae_overrides = dict(overrides.get("vae", {}))
        if family in _SDXL_FAMILIES and "vae" not in overrides:
            vae_overrides.update(scaling_factor=SDXL_LATENT_SCALE, sample_size=1024,
                                 force_upcast=True)
        vae = vae_from_state_dict(parts.vae, dtype=dtype, overrides=vae_overrides)
    else:
        _log.warning("no VAE weights (first_stage_model.*)%s; pass a separate VAE", where)
    text_encoder = None
    projection = None
    if parts.clip:
        if parts.openclip:
            hf_state, projection = clip_openclip_to_hf(parts.clip)
        else:
            hf_state = parts.clip
            projection = None
        config = infer_clip_config(
            hf_state,
            openclip=parts.openclip,
            text_projection_dim=int(projection.shape[1]) if projection is not None else None,
        )
        require_complete(config, overrides.get("text_encoder", {}), "text encoder")
        config.update(overrides.get("text_encoder", {}))
        text_encoder = _text_encoder_from_hf(hf_state, config, dtype)
        if projection is not None:
            projection = _own(projection, dtype)
    elif text_encoder_2 is None:
        _log.warning("no text-encoder weights (cond_stage_model.* / conditioner.*)%s", where)
    if family in _SDXL_FAMILIES:
        # NOTE: ComfyUI's SDXLClipModel: both encoders take the penultimate hidden state without
        # the final norm; bigG pads with 0, CLIP-L with the end token. The refiner has bigG only.
        first_pad = 49407 if text_encoder is not None else 0
        return LoadedCheckpoint(
            unet=unet, vae=vae, text_encoder=text_encoder, family=family,
            prediction_type=prediction, clip_pad_token=first_pad, default_clip_layer=-2,
            in_channels=in_channels, latent_scale=latent_scale, source=source,
            metadata=metadata, text_encoder_2=text_encoder_2,
            adm_in_channels=int(adm) if adm is not None else None, variant=variant,
            clip_pad_token_2=0 if text_encoder_2 is not None else None,
            default_clip_layer_2=-2 if text_encoder_2 is not None else None,
            clip_layer_norm=False,
        )
    return LoadedCheckpoint(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        family=family,
        prediction_type=prediction,
        clip_pad_token=0 if family == "sd2" else 49407,
        default_clip_layer=-2 if family == "sd2" else -1,
        in_channels=in_channels,
        latent_scale=latent_scale,
        text_projection=projection,
        source=source,
        metadata=metadata,
    )


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = torch.float32,
    prediction_type: str | None = None,
) -> LoadedCheckpoint:
    """Loads an SD1.x/SD2.x checkpoint: a single file or a diffusers folder.

    Args:
        path: ``.safetensors``, ``.ckpt`` (weights only), or a folder with ``model_index.json``.
        dtype: Floating dtype of the modules (None keeps the file's).
        prediction_type: Force ``"epsilon"`` or ``"v_prediction"``; None detects it.

    Returns:
        The modules and facts (family, prediction type, pad token, default CLIP layer, ...).

    Raises:
        ModelFormatError: Unsupported, unsafe or damaged input, with what to do about it.
    """
    file = Path(path)
    if file.is_dir():
        from comfyc.compiler.models.diffusers_folder import load_diffusers_folder

        return load_diffusers_folder(file, dtype=dtype, prediction_type=prediction_type)
    mapped = _read_mapped(file) if file.suffix.lower() in SAFETENSORS_SUFFIXES else None
    state, metadata = mapped if mapped is not None else read_state_dict(file)
    try:
        return checkpoint_from_state_dict(
            state, metadata, dtype=dtype, prediction_type=prediction_type, source=file
        )
    finally:
        _forget_mapped(state)


def load_vae(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = torch.float32,
    family: str | None = None,
) -> Any:
    """Loads a separate VAE (VAELoader): a single file (LDM or diffusers names) or a folder.

    SD3's and Flux's 16-channel VAEs (``ae.safetensors``, ``diffusion_pytorch_model.
    safetensors``) load too, as do the VAEs inside SD3.5 (``first_stage_model.*``) and Flux
    (``vae.*``) all-in-one checkpoints.

    Args:
        path: ``vae.safetensors`` / ``.ckpt`` / ``.pt``, a full checkpoint (its VAE is taken), or
            a folder with ``config.json`` (or a ``vae/`` subfolder).
        dtype: Floating dtype (None keeps the file's).
        family: The family whose latent format goes into ``scaling_factor``/``shift_factor``
            (see `vae_from_state_dict`); None uses the file's ``comfyc.family`` metadata if any
            (a VAE file alone does not say which model it belongs to: SD3's and Flux's VAEs
            have the same shapes).

    Returns:
        `diffusers.AutoencoderKL` in eval mode.
    """
    file = Path(path)
    if file.is_dir():
        from diffusers import AutoencoderKL

        folder = file / "vae" if (file / "vae" / "config.json").is_file() else file
        if not (folder / "config.json").is_file():
            raise ModelFormatError(
                f"{str(file)!r} is a folder without config.json or vae/config.json; expected "
                "a diffusers AutoencoderKL folder"
            )
        return AutoencoderKL.from_pretrained(str(folder), torch_dtype=dtype).eval()
    state, metadata = read_state_dict(file)
    overrides = json.loads(metadata.get(CONFIG_METADATA_KEY, "{}")).get("vae", {})
    if any(k.startswith(UNET_PREFIX) for k in state):
        prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in state) else (
            _FLUX_VAE_PREFIX)
        state = {k: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ModelFormatError(f"the checkpoint {str(file)!r} holds no VAE "
                                   "(first_stage_model.* or vae.*)")
    stored = metadata.get(_FAMILY_KEY)
    if family is None and stored is not None:
        from comfyc.compiler.models.flow import FLOW_FAMILIES

        family = stored if stored in FAMILIES or stored in FLOW_FAMILIES else None
    return vae_from_state_dict(state, dtype=dtype, overrides=overrides, family=family)


# -- writing single files ------------------------------------------------------------------------


def _json_ready(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    return value


def _diffusers_config(module: Any) -> dict[str, Any]:
    return {k: _json_ready(v) for k, v in dict(module.config).items() if not k.startswith("_")}


def _clip_config(module: Any) -> dict[str, Any]:
    config = module.config
    return {name: _json_ready(getattr(config, name)) for name in _CLIP_CONFIG_FIELDS
            if hasattr(config, name)}


def _text_layout(text_encoder: Any, layout: str) -> str:
    if layout == "auto":
        return "openclip" if getattr(text_encoder.config, "hidden_act", "") == "gelu" else "openai"
    if layout not in ("openai", "openclip"):
        raise ValueError(f"text_encoder_layout is {layout!r}; expected auto, openai or openclip")
    return layout


def _is_sdxl_unet(unet: Any) -> bool:
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def diffusers_to_single_file(
    unet: Any,
    vae: Any | None,
    text_encoder: Any | None,
    dtype: torch.dtype | None = None,
    *,
    text_encoder_layout: str = "auto",
    text_projection: torch.Tensor | None = None,
    text_encoder_2: Any | None = None,
) -> dict[str, torch.Tensor]:
    """Maps diffusers/transformers modules to the original single-file state dict.

    An SDXL UNet (``addition_embed_type="text_time"``) gets SDXL's layout: `text_encoder`
    (CLIP-L) as ``conditioner.embedders.0.transformer.*`` and `text_encoder_2` (bigG, OpenCLIP
    names, ``text_projection`` = the transpose of its linear projection) as
    ``conditioner.embedders.1.model.*``, or ``conditioner.embedders.0.model.*`` when there is no
    CLIP-L (the refiner).

    Args:
        unet: `UNet2DConditionModel`.
        vae: `AutoencoderKL`, or None to leave it out.
        text_encoder: `CLIPTextModel`, or None to leave it out.
        dtype: Cast floating tensors to this dtype (None keeps them). ``position_ids`` stays int64.
        text_encoder_layout: SD1/SD2 only: ``"openai"`` (SD1, ``cond_stage_model.transformer.*``),
            ``"openclip"`` (SD2, ``cond_stage_model.model.*``) or ``"auto"`` (OpenCLIP when the
            encoder uses exact GELU, as SD2's does).
        text_projection: OpenCLIP text projection to include (SD2 only).
        text_encoder_2: SDXL's bigG `CLIPTextModelWithProjection`, or None.

    Returns:
        ``{"model.diffusion_model.input_blocks.0.0.weight": tensor, ...}`` on the CPU.
    """
    out: dict[str, torch.Tensor] = {}

    def put(key: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach()
        if not tensor.is_meta:  # NOTE: meta tensors (shape-only tests) stay on meta
            tensor = tensor.to("cpu")
        out[key] = _cast(tensor, dtype).contiguous()

    sdxl = _is_sdxl_unet(unet)
    if text_encoder_2 is not None and not sdxl:
        raise ValueError("text_encoder_2 is SDXL's; the UNet has no text_time ADM input")
    unet_state = unet.state_dict()
    for key, ldm in unet_diffusers_to_ldm_map(unet_state).items():
        put(UNET_PREFIX + ldm, unet_state[key])
    if vae is not None:
        vae_state = vae.state_dict()
        for key, ldm in vae_diffusers_to_ldm_map(vae_state).items():
            put(VAE_PREFIX + ldm, vae_tensor_to_ldm(key, vae_state[key]))
    if sdxl:
        for key, tensor in sdxl_text_encoders_to_ldm(text_encoder, text_encoder_2).items():
            put(key, tensor)
        return out
    if text_encoder is not None:
        text_state = canonical_text_encoder_state(text_encoder)
        if _text_layout(text_encoder, text_encoder_layout) == "openclip":
            for key, tensor in clip_hf_to_openclip(text_state, text_projection).items():
                put(CLIP_OPENCLIP_PREFIX + key, tensor)
        else:
            for key, tensor in text_state.items():
                put(CLIP_OPENAI_PREFIX + key, tensor)
            positions = text_encoder.config.max_position_embeddings
            out[CLIP_OPENAI_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(
                positions, dtype=torch.int64
            )[None]
    return out


def sdxl_text_encoders_to_ldm(
    text_encoder: Any | None, text_encoder_2: Any | None
) -> dict[str, torch.Tensor]:
    """SDXL's text encoders in the single-file layout (full key names, tensors not copied).

    Args:
        text_encoder: CLIP-L `CLIPTextModel` (or its state dict), or None (refiner).
        text_encoder_2: bigG `CLIPTextModelWithProjection` (or its state dict), or None.

    Returns:
        ``conditioner.embedders.0.transformer.text_model.*`` (+ ``position_ids``) and
        ``conditioner.embedders.{1,0}.model.*`` (OpenCLIP names).
    """
    out: dict[str, torch.Tensor] = {}
    if text_encoder is not None:
        text_state = canonical_text_encoder_state(text_encoder)
        text_state.pop("text_projection.weight", None)
        positions = None
        for key, tensor in text_state.items():
            if key.endswith("embeddings.position_ids"):
                continue
            out[SDXL_CLIP_L_PREFIX + key] = tensor
            if key.endswith("position_embedding.weight"):
                positions = int(tensor.shape[0])
        if positions is not None:
            out[SDXL_CLIP_L_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(
                positions, dtype=torch.int64)[None]
    if text_encoder_2 is not None:
        g_state = canonical_text_encoder_state(text_encoder_2)
        linear = g_state.pop("text_projection.weight", None)
        if linear is None:
            raise ModelFormatError(
                "text_encoder_2 has no text_projection.weight; expected SDXL's bigG as a "
                "CLIPTextModelWithProjection"
            )
        g_state = {k: v for k, v in g_state.items() if not k.endswith("position_ids")}
        prefix = SDXL_CLIP_G_PREFIX if text_encoder is not None else SDXL_REFINER_CLIP_G_PREFIX
        for key, tensor in clip_hf_to_openclip(g_state, linear.t()).items():
            out[prefix + key] = tensor
    return out


def _sdxl_family_of(unet: Any, text_encoder: Any | None, text_encoder_2: Any | None) -> str:
    """The family comfyc records for SDXL modules (see `_sdxl_family`)."""
    pooled = None if text_encoder_2 is None else int(text_encoder_2.config.projection_dim)
    try:
        return _sdxl_family(_diffusers_config(unet), pooled, "")
    except ModelFormatError:
        # NOTE: widths outside both rules: a base model unless CLIP-L is missing.
        return "sdxl" if text_encoder is not None else "sdxl_refiner"


def single_file_metadata(
    unet: Any,
    vae: Any | None,
    text_encoder: Any | None,
    *,
    text_encoder_2: Any | None = None,
    prediction_type: str = "epsilon",
    text_encoder_layout: str = "auto",
    variant: str | None = None,
    family: str | None = None,
) -> dict[str, str]:
    """The safetensors metadata comfyc writes with a checkpoint (modules may be on meta).

    Args:
        unet: `UNet2DConditionModel`.
        vae: `AutoencoderKL` (or None).
        text_encoder: `CLIPTextModel` (or None).
        text_encoder_2: SDXL's bigG `CLIPTextModelWithProjection` (or None).
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        text_encoder_layout: See `diffusers_to_single_file`.
        variant: ``"turbo"`` for SDXL-Turbo, or None.
        family: Force the recorded family; None derives it from the modules.

    Returns:
        ``{"format": "pt", "comfyc.config": ..., "comfyc.family": ..., ...}``.
    """
    if prediction_type not in _PREDICTION_TYPES:
        raise ValueError(f"prediction_type is {prediction_type!r}; expected {_PREDICTION_TYPES}")
    configs: dict[str, Any] = {"unet": _diffusers_config(unet)}
    if vae is not None:
        configs["vae"] = _diffusers_config(vae)
    if _is_sdxl_unet(unet):
        derived = _sdxl_family_of(unet, text_encoder, text_encoder_2)
        if text_encoder is not None:
            configs["text_encoder"] = _clip_config(text_encoder)
        if text_encoder_2 is not None:
            configs["text_encoder_2"] = _clip_config(text_encoder_2)
    else:
        derived = "sd2" if bool(unet.config.use_linear_projection) else "sd1"
        if text_encoder is not None:
            configs["text_encoder"] = _clip_config(text_encoder)
            openclip = _text_layout(text_encoder, text_encoder_layout) == "openclip"
            derived = "sd2" if openclip else derived
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family is {family!r}; expected one of {FAMILIES}")
    header = {
        "format": "pt",
        CONFIG_METADATA_KEY: json.dumps(configs, sort_keys=True),
        _FAMILY_KEY: family or derived,
        _PREDICTION_KEY: prediction_type,
    }
    if variant is not None:
        header[_VARIANT_KEY] = variant
    return header


def save_single_file(
    path: str | os.PathLike[str],
    unet: Any,
    vae: Any | None,
    text_encoder: Any | None,
    dtype: torch.dtype | None = None,
    *,
    prediction_type: str = "epsilon",
    text_encoder_layout: str = "auto",
    text_projection: torch.Tensor | None = None,
    metadata: Mapping[str, str] | None = None,
    text_encoder_2: Any | None = None,
    variant: str | None = None,
) -> Path:
    """Writes modules as one ``.safetensors`` file in the original SD layout (atomically).

    The file carries ``comfyc.config`` (exact module configs), ``comfyc.family`` and
    ``comfyc.prediction_type`` metadata so that `load_checkpoint` rebuilds the same modules
    even where the SD shape conventions do not pin the architecture down.

    Args:
        path: Destination ``.safetensors`` file; its folder is created.
        unet: `UNet2DConditionModel`.
        vae: `AutoencoderKL` (or None).
        text_encoder: `CLIPTextModel` (or None; None for the SDXL refiner).
        dtype: Cast floating tensors (e.g. ``torch.float16``); None keeps them.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        text_encoder_layout: See `diffusers_to_single_file`.
        text_projection: See `diffusers_to_single_file`.
        metadata: Extra string metadata to store.
        text_encoder_2: SDXL's bigG `CLIPTextModelWithProjection` (or None).
        variant: ``"turbo"`` to mark an SDXL-Turbo model (``comfyc.variant``).

    Returns:
        The written path.
    """
    from safetensors.torch import save_file

    header = single_file_metadata(
        unet, vae, text_encoder, text_encoder_2=text_encoder_2, prediction_type=prediction_type,
        text_encoder_layout=text_encoder_layout, variant=variant,
    )
    header.update(metadata or {})
    target = Path(path)
    state = diffusers_to_single_file(
        unet, vae, text_encoder, dtype,
        text_encoder_layout=text_encoder_layout, text_projection=text_projection,
        text_encoder_2=text_encoder_2,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        save_file(state, temporary, metadata=header)
        make_readable(temporary)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
