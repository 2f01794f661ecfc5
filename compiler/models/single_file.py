"""Single-file SD1.x/SD2.x checkpoints to diffusers modules and back.

Reading: `load_checkpoint(path)` accepts a ``.safetensors`` file, a pickled ``.ckpt``/``.pt``
loaded only through ``torch.load(weights_only=True)`` (tensors and plain containers; anything
that needs arbitrary Python objects is refused), or a diffusers folder. The architecture is
inferred from tensor shapes (`comfyc.compiler.models.configs`), the family (SD1/SD2) from the
text-encoder layout and the UNet, and the prediction type with ComfyUI's heuristic: an SD2 UNet
with 4 input channels is v-prediction when the population std of
``output_blocks.11.1.transformer_blocks.0.norm1.bias`` exceeds 0.09 (768-v models), else eps.

Writing: `diffusers_to_single_file` / `save_single_file` produce the original layout that
ComfyUI, A1111 and diffusers' ``from_single_file`` read: ``model.diffusion_model.*``,
``first_stage_model.*`` and ``cond_stage_model.transformer.*`` (SD1, OpenAI CLIP) or
``cond_stage_model.model.*`` (SD2, OpenCLIP). comfyc adds a ``comfyc.config`` metadata entry
with the exact module configs so that a model whose heads or norm groups differ from the SD
conventions (the tiny demo model) loads back identically.
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
    LATENT_SCALE,
    infer_clip_config,
    infer_unet_config,
    infer_vae_config,
    require_complete,
)
from comfyc.compiler.models.errors import ModelFormatError
from comfyc.compiler.models.keymap import (
    CLIP_OPENAI_PREFIX,
    CLIP_OPENCLIP_PREFIX,
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
    "PICKLE_SUFFIXES",
    "SAFETENSORS_SUFFIXES",
    "LoadedCheckpoint",
    "build_clip_text_model",
    "canonical_text_encoder_state",
    "checkpoint_from_state_dict",
    "detect_prediction_type",
    "diffusers_to_single_file",
    "load_checkpoint",
    "load_pickle_weights",
    "load_vae",
    "read_state_dict",
    "save_single_file",
    "vae_from_state_dict",
]

_log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
#: safetensors metadata entry holding the exact module configs (JSON).
CONFIG_METADATA_KEY = "comfyc.config"
_FAMILY_KEY = "comfyc.family"
_PREDICTION_KEY = "comfyc.prediction_type"
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


@dataclass(slots=True)
class LoadedCheckpoint:
    """A checkpoint loaded into diffusers/transformers modules, with the facts a compiler needs.

    Attributes:
        unet: `diffusers.UNet2DConditionModel` (eval mode, no grad).
        vae: `diffusers.AutoencoderKL`, or None when the file holds no VAE.
        text_encoder: `transformers.CLIPTextModel`, or None when the file holds no text encoder.
            For SD2 single files it keeps all OpenCLIP layers (24); see `default_clip_layer`.
        family: ``"sd1"`` or ``"sd2"``.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        clip_pad_token: Tokenizer pad id: 49407 (SD1) or 0 (SD2).
        default_clip_layer: ComfyUI's default CLIP output layer: -1 (last) for SD1, -2
            (penultimate, final layer norm applied) for SD2 single files. A diffusers folder's
            SD2 text encoder is already cut to 23 layers, so it says -1 there.
        in_channels: UNet input channels (4, or 9 for inpainting models).
        latent_scale: 0.18215 for SD1.x and SD2.x.
        text_projection: SD2's OpenCLIP text projection ``[hidden, dim]`` (pooled output only;
            unused by SD1/SD2 UNets), if the file has one.
        source: Where it was loaded from.
        metadata: The file's safetensors metadata.
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

    @property
    def is_inpainting(self) -> bool:
        """True for 9-input-channel inpainting UNets."""
        return self.in_channels == 9


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
    target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
    if tensor.is_meta:
        return tensor.to(target)
    return torch.empty(tensor.shape, dtype=target).copy_(tensor)


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
    for name, buffer in list(module.named_buffers()):
        if buffer.is_meta:
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


def build_clip_text_model(config: dict[str, Any], *, device: str = "meta") -> Any:
    """Builds a transformers `CLIPTextModel` (on the meta device unless told otherwise)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device(device):
        return CLIPTextModel(CLIPTextConfig(**config))


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
    return {
        (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()
    }


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


def vae_from_state_dict(
    state: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = torch.float32,
    overrides: dict[str, Any] | None = None,
) -> Any:
    """Builds an `AutoencoderKL` from VAE weights in LDM or diffusers naming.

    Accepts keys with or without the ``first_stage_model.`` prefix, LDM names
    (``encoder.down.0.block.0...``), diffusers names (``encoder.down_blocks.0.resnets.0...``)
    including the old ``query/key/value/proj_attn`` attention names; ``loss.*`` and
    ``model_ema.*`` entries are ignored.

    Args:
        state: The weights.
        dtype: Floating dtype of the module (None keeps the file's).
        overrides: Config entries that replace inferred ones.

    Returns:
        The VAE in eval mode.
    """
    plain: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        key = key[len(VAE_PREFIX) :] if key.startswith(VAE_PREFIX) else key
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
    state: dict[str, torch.Tensor], config: dict[str, Any], dtype: torch.dtype | None
) -> Any:
    model = build_clip_text_model(config)
    prefix = _text_module_prefix(model)
    weights = {}
    for key, tensor in state.items():
        if key.endswith("embeddings.position_ids"):
            continue  # NOTE: rebuilt by _populate; old files store it as float or int
        local = key if prefix else key[len("text_model.") :]
        weights[local] = _own(tensor, dtype)
    return _populate(model, weights, "text encoder")


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


def _split_components(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], bool]:
    unet: dict[str, torch.Tensor] = {}
    vae: dict[str, torch.Tensor] = {}
    clip: dict[str, torch.Tensor] = {}
    openclip = any(k.startswith(CLIP_OPENCLIP_PREFIX) for k in state)
    for key, tensor in state.items():
        if key.startswith(UNET_PREFIX):
            unet[key[len(UNET_PREFIX) :]] = tensor
        elif key.startswith(VAE_PREFIX):
            vae[key[len(VAE_PREFIX) :]] = tensor
        elif key.startswith(CLIP_OPENAI_PREFIX) and not openclip:
            rest = key[len(CLIP_OPENAI_PREFIX) :]
            # NOTE: checkpoints made with transformers < 4.19 lack the text_model level.
            clip[rest if rest.startswith("text_model.") else "text_model." + rest] = tensor
        elif key.startswith(CLIP_OPENCLIP_PREFIX):
            clip[key[len(CLIP_OPENCLIP_PREFIX) :]] = tensor
    return unet, vae, clip, openclip


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
        ModelFormatError: Not an SD1.x/SD2.x single-file checkpoint, or damaged.
    """
    metadata = dict(metadata or {})
    where = f" in {str(source)!r}" if source else ""
    try:
        overrides = json.loads(metadata.get(CONFIG_METADATA_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise ModelFormatError(
            f"the {CONFIG_METADATA_KEY} metadata{where} is not JSON: {exc}"
        ) from exc
    unet_state, vae_state, clip_state, openclip = _split_components(state)
    if not unet_state:
        prefixes = sorted({k.split(".", 1)[0] for k in state})[:8]
        raise ModelFormatError(
            f"no UNet weights (model.diffusion_model.*){where}; found top-level names "
            f"{prefixes}. Expected an SD1.x/SD2.x single-file checkpoint; a separate VAE "
            "loads with load_vae(), a LoRA with load_lora()"
        )
    if "label_emb.0.0.weight" in unet_state or any(k.startswith("conditioner.") for k in state):
        raise ModelFormatError(
            f"this looks like an SDXL (or other class-conditioned) checkpoint{where}: it has "
            "label_emb/conditioner weights. comfyc supports SD1.x and SD2.x checkpoints"
        )
    unet_config = infer_unet_config(unet_state)
    require_complete(unet_config, overrides.get("unet", {}), "UNet")
    unet_config.update(overrides.get("unet", {}))
    linear = bool(unet_config["use_linear_projection"])
    family = metadata.get(_FAMILY_KEY) or ("sd2" if openclip or linear else "sd1")
    if family not in ("sd1", "sd2"):
        raise ModelFormatError(f"{_FAMILY_KEY} metadata{where} is {family!r}; expected sd1/sd2")
    in_channels = int(unet_config["in_channels"])
    prediction = prediction_type or metadata.get(_PREDICTION_KEY) or detect_prediction_type(
        unet_state, family, in_channels
    )
    if prediction not in _PREDICTION_TYPES:
        raise ModelFormatError(
            f"prediction type {prediction!r}{where}; expected one of {_PREDICTION_TYPES}"
        )
    if "unet" not in overrides and family == "sd2":
        # NOTE: ComfyUI runs SD2 attention in float32 (attn_precision); 768-v models default
        # to 768 px (diffusers' sample_size is in latent pixels).
        unet_config["upcast_attention"] = True
        unet_config["sample_size"] = 96 if prediction == "v_prediction" else 64
    unet = _unet_from_ldm(unet_state, unet_config, dtype)
    vae = None
    if vae_state:
        vae = vae_from_state_dict(vae_state, dtype=dtype, overrides=overrides.get("vae", {}))
    else:
        _log.warning("no VAE weights (first_stage_model.*)%s; pass a separate VAE", where)
    text_encoder = None
    projection = None
    if clip_state:
        if openclip:
            hf_state, projection = clip_openclip_to_hf(clip_state)
        else:
            hf_state = clip_state
            projection = None
        config = infer_clip_config(
            hf_state,
            openclip=openclip,
            text_projection_dim=int(projection.shape[1]) if projection is not None else None,
        )
        require_complete(config, overrides.get("text_encoder", {}), "text encoder")
        config.update(overrides.get("text_encoder", {}))
        text_encoder = _text_encoder_from_hf(hf_state, config, dtype)
        if projection is not None:
            projection = _own(projection, dtype)
    else:
        _log.warning("no text-encoder weights (cond_stage_model.*)%s", where)
    return LoadedCheckpoint(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        family=family,
        prediction_type=prediction,
        clip_pad_token=0 if family == "sd2" else 49407,
        default_clip_layer=-2 if family == "sd2" else -1,
        in_channels=in_channels,
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
    state, metadata = read_state_dict(file)
    return checkpoint_from_state_dict(
        state, metadata, dtype=dtype, prediction_type=prediction_type, source=file
    )


def load_vae(path: str | os.PathLike[str], *, dtype: torch.dtype | None = torch.float32) -> Any:
    """Loads a separate VAE: a single file (LDM or diffusers names) or a diffusers folder.

    Args:
        path: ``vae.safetensors`` / ``.ckpt`` / ``.pt``, a full checkpoint (its VAE is taken), or
            a folder with ``config.json`` (or a ``vae/`` subfolder).
        dtype: Floating dtype (None keeps the file's).

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
        state = {k: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
    return vae_from_state_dict(state, dtype=dtype, overrides=overrides)


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


def diffusers_to_single_file(
    unet: Any,
    vae: Any | None,
    text_encoder: Any | None,
    dtype: torch.dtype | None = None,
    *,
    text_encoder_layout: str = "auto",
    text_projection: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Maps diffusers/transformers modules to the original single-file state dict.

    Args:
        unet: `UNet2DConditionModel`.
        vae: `AutoencoderKL`, or None to leave it out.
        text_encoder: `CLIPTextModel`, or None to leave it out.
        dtype: Cast floating tensors to this dtype (None keeps them). ``position_ids`` stays int64.
        text_encoder_layout: ``"openai"`` (SD1, ``cond_stage_model.transformer.*``),
            ``"openclip"`` (SD2, ``cond_stage_model.model.*``) or ``"auto"`` (OpenCLIP when the
            encoder uses exact GELU, as SD2's does).
        text_projection: OpenCLIP text projection to include (SD2 only).

    Returns:
        ``{"model.diffusion_model.input_blocks.0.0.weight": tensor, ...}`` on the CPU.
    """
    out: dict[str, torch.Tensor] = {}

    def put(key: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach()
        if not tensor.is_meta:  # NOTE: meta tensors (shape-only tests) stay on meta
            tensor = tensor.to("cpu")
        out[key] = _cast(tensor, dtype).contiguous()

    unet_state = unet.state_dict()
    for key, ldm in unet_diffusers_to_ldm_map(unet_state).items():
        put(UNET_PREFIX + ldm, unet_state[key])
    if vae is not None:
        vae_state = vae.state_dict()
        for key, ldm in vae_diffusers_to_ldm_map(vae_state).items():
            put(VAE_PREFIX + ldm, vae_tensor_to_ldm(key, vae_state[key]))
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
) -> Path:
    """Writes modules as one ``.safetensors`` file in the original SD layout (atomically).

    The file carries ``comfyc.config`` (exact module configs), ``comfyc.family`` and
    ``comfyc.prediction_type`` metadata so that `load_checkpoint` rebuilds the same modules
    even where the SD shape conventions do not pin the architecture down.

    Args:
        path: Destination ``.safetensors`` file; its folder is created.
        unet: `UNet2DConditionModel`.
        vae: `AutoencoderKL` (or None).
        text_encoder: `CLIPTextModel` (or None).
        dtype: Cast floating tensors (e.g. ``torch.float16``); None keeps them.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
        text_encoder_layout: See `diffusers_to_single_file`.
        text_projection: See `diffusers_to_single_file`.
        metadata: Extra string metadata to store.

    Returns:
        The written path.
    """
    from safetensors.torch import save_file

    if prediction_type not in _PREDICTION_TYPES:
        raise ValueError(f"prediction_type is {prediction_type!r}; expected {_PREDICTION_TYPES}")
    target = Path(path)
    state = diffusers_to_single_file(
        unet, vae, text_encoder, dtype,
        text_encoder_layout=text_encoder_layout, text_projection=text_projection,
    )
    configs: dict[str, Any] = {"unet": _diffusers_config(unet)}
    if vae is not None:
        configs["vae"] = _diffusers_config(vae)
    family = "sd2" if bool(unet.config.use_linear_projection) else "sd1"
    if text_encoder is not None:
        configs["text_encoder"] = _clip_config(text_encoder)
        openclip = _text_layout(text_encoder, text_encoder_layout) == "openclip"
        family = "sd2" if openclip else family
    header = {
        "format": "pt",
        CONFIG_METADATA_KEY: json.dumps(configs, sort_keys=True),
        _FAMILY_KEY: family,
        _PREDICTION_KEY: prediction_type,
    }
    header.update(metadata or {})
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
