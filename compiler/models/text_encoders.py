"""Standalone text-encoder files and ComfyUI's CLIP objects for SD3 and Flux.

``CLIPLoader``, ``DualCLIPLoader`` and ``TripleCLIPLoader`` load text encoders from separate files
(``models/text_encoders/``); all-in-one SD3.5 and Flux checkpoints hold the same weights under
``text_encoders.<name>.transformer.``. The layouts (ComfyUI's, which transformers reads too):

* ``clip_l``: CLIP ViT-L/14 text tower, transformers names (``text_model.*``), optionally
  ``text_projection.weight`` (768 x 768) and ``logit_scale`` (ignored). Quick GELU, pad token
  49407 (the end token).
* ``clip_g``: OpenCLIP ViT-bigG/14 text tower (1280 wide, 32 layers, exact GELU), in
  transformers names with ``text_projection.weight`` (SD3's ``clip_g.safetensors``) or in
  OpenCLIP names (``transformer.resblocks.*``, ``text_projection``), which are converted. Pad 0.
* ``clip_h``: OpenCLIP ViT-H/14 (SD2's, 1024 wide, 24 layers).
* ``t5xxl``: T5 v1.1 XXL encoder (`comfyc.compiler.models.t5`); fp16, bf16 or fp8 files
  (``t5xxl_fp8_e4m3fn.safetensors``; ComfyUI's "scaled" fp8 files are dequantized).

Which encoder a file is, as ``comfy/sd.py`` ``detect_te_model`` decides it, but by shapes: a T5
layout (``encoder.block.*``) is T5 (``t5xxl`` when gated, ``t5_old`` otherwise); a CLIP tower 1280
wide (or with a 31st layer) is ``clip_g``, 1024 wide (or a 23rd layer) ``clip_h``, else ``clip_l``.
comfyc's own reduced-width files carry ``comfyc.text_encoder`` metadata naming the encoder.

`load_clip(paths, clip_type)` then assembles what ComfyUI's ``load_text_encoder_state_dicts``
builds for the loader's ``type``: ``"sd3"`` (any of clip_l, clip_g, t5xxl; missing ones are
zero-filled at encoding, see `comfyc.compiler.models.flow_conditioning`), ``"flux"`` (clip_l +
t5xxl), and the Stable Diffusion types ``"stable_diffusion"`` (one CLIP) and ``"sdxl"``
(clip_l + clip_g). Three files always mean SD3 (TripleCLIPLoader has no type).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from comfyc.compiler.models.errors import ModelFormatError
from comfyc.compiler.models.weights import WeightSource, is_fp8

__all__ = [
    "CLIP_TYPES",
    "TEXT_ENCODER_KEY",
    "TEXT_ENCODER_KINDS",
    "TEXT_ENCODERS_PREFIX",
    "LoadedTextEncoder",
    "TextEncoders",
    "clip_state_dict",
    "detect_text_encoder",
    "load_clip",
    "load_text_encoder",
    "text_encoder_from_state_dict",
    "text_encoders_from_checkpoint",
    "text_encoder_state_dict",
]

#: Encoder names, as ComfyUI's token dictionaries and checkpoint prefixes call them.
TEXT_ENCODER_KINDS = ("clip_l", "clip_g", "clip_h", "t5xxl", "t5xl", "t5_old")
#: Loader ``type`` values `load_clip` supports (ComfyUI's CLIPType names, lower case).
CLIP_TYPES = ("stable_diffusion", "sdxl", "sd3", "flux")
#: Prefix of text encoders in SD3.5 / Flux all-in-one checkpoints.
TEXT_ENCODERS_PREFIX = "text_encoders."
#: safetensors metadata naming the encoder of a comfyc-written text-encoder file.
TEXT_ENCODER_KEY = "comfyc.text_encoder"
_CONFIG_KEY = "comfyc.config"
_CLIP_WIDTHS = {768: "clip_l", 1280: "clip_g", 1024: "clip_h"}
_OPENCLIP_KINDS = ("clip_g", "clip_h")


@dataclass(slots=True)
class LoadedTextEncoder:
    """One text encoder loaded from a file or a checkpoint.

    Attributes:
        kind: One of `TEXT_ENCODER_KINDS`.
        module: ``transformers.CLIPTextModel`` / ``CLIPTextModelWithProjection`` (CLIP) or
            ``T5EncoderModel`` (T5), eval mode, no grad.
        config: The module's constructor config (as stored in comfyc metadata).
        source: The file, if any.
        file_dtypes: The floating dtypes found in the file (e.g. ``{"float8_e4m3fn"}``).
    """

    kind: str
    module: Any
    config: dict[str, Any]
    source: Path | None = None
    file_dtypes: frozenset[str] = frozenset()

    @property
    def width(self) -> int:
        """Hidden width (768 CLIP-L, 1280 CLIP-G, 4096 T5-XXL)."""
        config = self.module.config
        return int(getattr(config, "d_model", None) or config.hidden_size)

    @property
    def is_t5(self) -> bool:
        """True for T5 encoders."""
        return self.kind.startswith("t5")


@dataclass(slots=True)
class TextEncoders:
    """ComfyUI's CLIP object: the text encoders one loader gives, and how they are combined.

    Attributes:
        clip_type: ``"sd3"``, ``"flux"``, ``"stable_diffusion"`` or ``"sdxl"`` (how prompts are
            encoded; see `comfyc.compiler.models.flow_conditioning` for SD3 and Flux).
        clip_l: CLIP-L encoder or None.
        clip_g: OpenCLIP bigG encoder or None.
        t5xxl: T5 encoder or None.
        clip_h: OpenCLIP ViT-H (SD2) or None.
        sources: The files the encoders came from.
    """

    clip_type: str
    clip_l: LoadedTextEncoder | None = None
    clip_g: LoadedTextEncoder | None = None
    t5xxl: LoadedTextEncoder | None = None
    clip_h: LoadedTextEncoder | None = None
    sources: list[Path] = field(default_factory=list)

    @property
    def present(self) -> tuple[str, ...]:
        """The names of the encoders present, in ComfyUI's order (clip_l, clip_g, t5xxl)."""
        return tuple(n for n in ("clip_l", "clip_g", "clip_h", "t5xxl")
                     if getattr(self, n) is not None)

    @property
    def t5_min_length(self) -> int | None:
        """The T5 tokenizer's minimum length for this type: 77 (SD3), 256 (Flux), else None."""
        return {"sd3": 77, "flux": 256}.get(self.clip_type)

    def tokenize(
        self, text: str, *, t5_text: str | None = None, t5_min_length: int | None = None,
        t5_min_padding: int | None = None,
    ) -> dict[str, list[list[tuple[int, float]]]]:
        """ComfyUI's token dict for a prompt (``CLIP.tokenize``), with the lean runtime's
        tokenizers: ``{"l": ..., "g": ..., "t5xxl": ...}`` for SD3, ``{"l", "t5xxl"}`` for Flux.

        Args:
            text: The prompt (ComfyUI's weighting syntax). Every tokenizer gets it, as
                ``CLIPTextEncode`` does.
            t5_text: A separate T5 prompt (``CLIPTextEncodeFlux`` / ``CLIPTextEncodeSD3``).
            t5_min_length: ``T5TokenizerOptions.min_length`` (None: the type's 77 / 256).
            t5_min_padding: ``T5TokenizerOptions.min_padding``.

        Returns:
            Token chunks per tokenizer (ids and weights), for `encode`.

        Raises:
            ModelFormatError: For types other than ``"sd3"`` and ``"flux"``.
        """
        from comfyc.runtime.t5_tokenizer import T5Tokenizer
        from comfyc.runtime.tokenizer import ClipTokenizer

        if self.clip_type not in ("sd3", "flux"):
            raise ModelFormatError(f"tokenize() covers SD3 and Flux; type {self.clip_type!r} "
                                   "uses comfyc.runtime.tokenizer.ClipTokenizer directly")
        tokens: dict[str, Any] = {"l": ClipTokenizer().tokenize_weighted(text)}
        if self.clip_type == "sd3":
            tokens["g"] = ClipTokenizer(pad_token=0).tokenize_weighted(text)
        minimum = self.t5_min_length if t5_min_length is None else t5_min_length
        t5 = T5Tokenizer(min_length=minimum, min_padding=t5_min_padding)
        tokens["t5xxl"] = t5.tokenize_weighted(text if t5_text is None else t5_text)
        return tokens

    def encode(self, tokens: Mapping[str, Any], *, clip_layer: int | None = None) -> tuple[
            torch.Tensor, torch.Tensor]:
        """ComfyUI's ``encode_token_weights`` for SD3 / Flux: ``(context, pooled)``.

        See `comfyc.compiler.models.flow_conditioning.sd3_text_conditioning` and
        `flux_text_conditioning` (the token dict is `tokenize`'s, or ComfyUI's own).
        """
        from comfyc.compiler.models.flow_conditioning import (
            flux_text_conditioning,
            sd3_text_conditioning,
        )

        if self.clip_type == "sd3":
            return sd3_text_conditioning(self, tokens, clip_layer=clip_layer)
        if self.clip_type == "flux":
            return flux_text_conditioning(self, tokens, clip_layer=clip_layer)
        raise ModelFormatError(f"encode() covers SD3 and Flux; type {self.clip_type!r} is "
                               "encoded by comfyc.compiler.models.sdxl.text_conditioning")


# -- detection -----------------------------------------------------------------------------------


def _is_clip_hf(state: Mapping[str, Any]) -> bool:
    return "text_model.encoder.layers.0.mlp.fc1.weight" in state


def _is_openclip(state: Mapping[str, Any]) -> bool:
    return "transformer.resblocks.0.ln_1.weight" in state


def detect_text_encoder(state: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> (
        str):
    """Which text encoder a state dict holds (see the module docstring).

    Args:
        state: The weights (prefix removed); only names and shapes are read.
        metadata: safetensors metadata (``comfyc.text_encoder`` wins).

    Returns:
        One of `TEXT_ENCODER_KINDS`.

    Raises:
        ModelFormatError: Neither a CLIP text tower nor a T5 encoder.
    """
    from comfyc.compiler.models.t5 import infer_t5_config, is_t5_state, t5_kind

    stored = (metadata or {}).get(TEXT_ENCODER_KEY)
    if stored is not None:
        if stored not in TEXT_ENCODER_KINDS:
            raise ModelFormatError(f"{TEXT_ENCODER_KEY} metadata is {stored!r}; expected one "
                                   f"of {TEXT_ENCODER_KINDS}")
        return stored
    if is_t5_state(state):
        return t5_kind(infer_t5_config(state))
    if _is_clip_hf(state):
        width = int(state["text_model.encoder.layers.0.mlp.fc1.weight"].shape[1])
        layer = "text_model.encoder.layers.{}.mlp.fc1.weight"
    elif _is_openclip(state):
        width = int(state["transformer.resblocks.0.ln_1.weight"].shape[0])
        layer = "transformer.resblocks.{}.ln_1.weight"
    else:
        names = sorted({k.split(".", 1)[0] for k in state})[:8]
        raise ModelFormatError(
            f"not a CLIP or T5 text encoder (top-level names {names}); expected clip_l, clip_g "
            "or t5xxl weights as ComfyUI's text_encoders/ files hold them"
        )
    if width in _CLIP_WIDTHS:
        return _CLIP_WIDTHS[width]
    # NOTE: ComfyUI's own rule, by depth (layer 30 = bigG's 32 layers, 22 = ViT-H's 24).
    if layer.format(30) in state:
        return "clip_g"
    if layer.format(22) in state:
        return "clip_h"
    return "clip_l"


# -- building ------------------------------------------------------------------------------------


def _clip_from_state(
    state: Mapping[str, torch.Tensor], kind: str, dtype: torch.dtype | None,
    overrides: Mapping[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """A CLIP text model (with projection when the weights have one) and its config."""
    from comfyc.compiler.models.configs import infer_clip_config
    from comfyc.compiler.models.keymap import clip_openclip_to_hf
    from comfyc.compiler.models.single_file import _text_encoder_from_hf

    projection = None
    if _is_openclip(state):
        hf_state, projection = clip_openclip_to_hf(dict(state))
    else:
        hf_state = {}
        for key, tensor in state.items():
            if key in ("logit_scale",) or key.endswith("position_ids"):
                continue
            if key == "text_projection.weight":
                projection = tensor.t()  # NOTE: _text_encoder_from_hf takes OpenCLIP's [in, out]
            elif key == "text_projection":
                projection = tensor  # NOTE: old CLIPSave files store OpenCLIP's matrix
            else:
                hf_state[key if key.startswith("text_model.") else "text_model." + key] = tensor
    hf_state = {k: v.float() if is_fp8(v) else v for k, v in hf_state.items()}
    openclip = kind in _OPENCLIP_KINDS
    config = infer_clip_config(hf_state, openclip=openclip, text_projection_dim=None
                               if projection is None else int(projection.shape[1]))
    config.update(overrides)
    if projection is not None and is_fp8(projection):
        projection = projection.float()
    module = _text_encoder_from_hf(hf_state, dict(config), dtype, projection=projection,
                                   what=f"{kind} text encoder")
    return module, config


def text_encoder_from_state_dict(
    state: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    dtype: torch.dtype | None = torch.float32,
    kind: str | None = None,
    source: Path | None = None,
) -> LoadedTextEncoder:
    """Builds one text encoder from its weights (see the module docstring for layouts).

    Args:
        state: The weights, prefix removed; fp8 tensors are upcast (scaled fp8 dequantized).
        metadata: safetensors metadata (``comfyc.text_encoder``, ``comfyc.config``).
        dtype: Floating dtype of the module (None keeps the file's; fp8 becomes float32).
        kind: Force the encoder kind; None detects it.
        source: The file, for messages.

    Returns:
        The loaded encoder.
    """
    from comfyc.compiler.models.t5 import infer_t5_config, t5_from_state_dict

    metadata = dict(metadata or {})
    weights = state if isinstance(state, WeightSource) else WeightSource.from_dict(
        state, metadata, source)
    file_dtypes = weights.floating_dtypes()
    weights = weights.dequantize()
    shapes = weights.shape_table()
    found = kind or detect_text_encoder(shapes, metadata)
    overrides = json.loads(metadata.get(_CONFIG_KEY, "{}")).get("text_encoder", {})
    if found.startswith("t5"):
        module = t5_from_state_dict(weights, dtype=dtype, overrides=overrides)
        config = {**infer_t5_config(shapes), **overrides}
    else:
        module, config = _clip_from_state(weights, found, dtype, overrides)
    return LoadedTextEncoder(found, module, dict(config), source, file_dtypes)


def load_text_encoder(
    path: str | os.PathLike[str], *, dtype: torch.dtype | None = torch.float32,
    kind: str | None = None,
) -> LoadedTextEncoder:
    """Loads one text-encoder file (``clip_l.safetensors``, ``t5xxl_fp16.safetensors``, ...).

    Args:
        path: The file (``.safetensors``; pickles through ``torch.load(weights_only=True)``).
        dtype: Floating dtype of the module.
        kind: Force the encoder kind (one of `TEXT_ENCODER_KINDS`); None detects it.

    Returns:
        The loaded encoder.
    """
    file = Path(path)
    weights = WeightSource.open(file)
    return text_encoder_from_state_dict(weights, weights.metadata, dtype=dtype, kind=kind,
                                        source=file)


def _assemble(encoders: Sequence[LoadedTextEncoder], clip_type: str) -> TextEncoders:
    kinds = [e.kind for e in encoders]
    if len(set(kinds)) != len(kinds):
        raise ModelFormatError(f"the text encoders {kinds} repeat a kind; expected different "
                               "encoders (e.g. clip_l and t5xxl for Flux)")
    result = TextEncoders(clip_type)
    for encoder in encoders:
        slot = "t5xxl" if encoder.is_t5 else encoder.kind
        setattr(result, slot, encoder)
        if encoder.source is not None:
            result.sources.append(encoder.source)
    allowed = {
        "sd3": {"clip_l", "clip_g", "t5xxl"},
        "flux": {"clip_l", "t5xxl"},
        "stable_diffusion": {"clip_l", "clip_g", "clip_h"},
        "sdxl": {"clip_l", "clip_g"},
    }[clip_type]
    slots = {"t5xxl" if k.startswith("t5") else k for k in kinds}
    if not slots <= allowed or (clip_type == "flux" and slots != allowed):
        raise ModelFormatError(
            f"type {clip_type!r} takes {sorted(allowed)}{' (both)' if clip_type == 'flux' else ''}"
            f", got {kinds}; pick the encoders the model needs (Flux: clip_l + t5xxl; SD3: any "
            "of clip_l, clip_g, t5xxl)"
        )
    if clip_type == "stable_diffusion" and len(encoders) != 1:
        raise ModelFormatError("type 'stable_diffusion' takes one encoder (CLIPLoader)")
    return result


def load_clip(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    clip_type: str = "stable_diffusion",
    *,
    dtype: torch.dtype | None = torch.float32,
) -> TextEncoders:
    """ComfyUI's CLIPLoader (one path), DualCLIPLoader (two) and TripleCLIPLoader (three).

    Args:
        paths: One to three text-encoder files; their order does not matter (each file's
            encoder is detected).
        clip_type: The loader's ``type`` (`CLIP_TYPES`); ignored for three files (always SD3).
        dtype: Floating dtype of the modules.

    Returns:
        The encoders, with `TextEncoders.clip_type` saying how prompts are encoded.

    Raises:
        ModelFormatError: An unsupported type, or encoders that do not fit it.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not 1 <= len(items) <= 3:
        raise ModelFormatError(f"{len(items)} text-encoder files; CLIP loaders take 1 to 3")
    if len(items) == 3:
        clip_type = "sd3"
    if clip_type not in CLIP_TYPES:
        raise ModelFormatError(
            f"CLIP type {clip_type!r} is not supported; comfyc supports {CLIP_TYPES} (other "
            "model families' text encoders are not implemented)"
        )
    return _assemble([load_text_encoder(p, dtype=dtype) for p in items], clip_type)


def text_encoders_from_checkpoint(
    state: Mapping[str, torch.Tensor],
    clip_type: str,
    *,
    dtype: torch.dtype | None = torch.float32,
    metadata: Mapping[str, str] | None = None,
    source: Path | None = None,
) -> TextEncoders:
    """The text encoders of an SD3.5 / Flux all-in-one checkpoint (``text_encoders.*``).

    Args:
        state: All weights of the file.
        clip_type: ``"sd3"`` or ``"flux"``.
        dtype: Floating dtype of the modules.
        metadata: The file's metadata (``comfyc.config`` holds per-encoder configs under
            ``text_encoders.<name>``).
        source: The file, for messages.

    Returns:
        The encoders present (possibly none).
    """
    configs = json.loads((metadata or {}).get(_CONFIG_KEY, "{}"))
    weights = state if isinstance(state, WeightSource) else WeightSource.from_dict(
        state, metadata, source)
    encoders = []
    for name in ("clip_l", "clip_g", "t5xxl"):
        part = weights.view(f"{TEXT_ENCODERS_PREFIX}{name}.transformer.")
        if not len(part):
            continue
        inner = {_CONFIG_KEY: json.dumps({"text_encoder": configs.get(
            f"text_encoders.{name}", {})})}
        kind = name if name != "t5xxl" else None
        encoders.append(text_encoder_from_state_dict(part, inner, dtype=dtype, kind=kind,
                                                     source=source))
    result = TextEncoders(clip_type)
    for encoder in encoders:
        setattr(result, "t5xxl" if encoder.is_t5 else encoder.kind, encoder)
    if source is not None:
        result.sources.append(source)
    return result


# -- writing -------------------------------------------------------------------------------------


def clip_state_dict(module: Any) -> dict[str, torch.Tensor]:
    """A CLIP text model's weights as ComfyUI's files hold them: ``text_model.*`` (and
    ``text_projection.weight`` when it has one), without ``position_ids``."""
    from comfyc.compiler.models.single_file import canonical_text_encoder_state

    return {k: v for k, v in canonical_text_encoder_state(module).items()
            if not k.endswith("position_ids")}


def text_encoder_state_dict(kind: str, module: Any) -> dict[str, torch.Tensor]:
    """Weights of an encoder in its standalone-file layout (`clip_state_dict` / T5 names)."""
    from comfyc.compiler.models.t5 import t5_state_dict

    return t5_state_dict(module) if kind.startswith("t5") else clip_state_dict(module)

