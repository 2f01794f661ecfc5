"""Conditioning nodes: text encoding, CLIP skip, and the ops that combine conditionings.

A CONDITIONING is a list of entries ``{"cond": [1, T, D], "pooled_output": [1, P], …}`` as
ComfyUI's; the pure ops on it are in :mod:`comfyc.runtime.ops.conditioning`. Every op here with
``fold=True`` is evaluated at compile time when its inputs are constants, so a workflow whose
prompts are fixed ships stored tensors instead of a text encoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import ProgramError
from ..values import ClipRef, TextEncoderRef
from .registry import NodeDef, StageCall, lazy_op
from .schema import (
    MAX_RESOLUTION,
    combo,
    float_input,
    int_input,
    link,
    optional_link,
    outputs,
    schema,
)
from .schema import string_input as string

if TYPE_CHECKING:
    import numpy as np

__all__ = ["NODES", "encode_text"]

_COND = "CONDITIONING"
_NOT_YET_CONTROL = ("ControlNet and T2I-Adapter models are not supported by comfyc yet; run "
                    "this workflow in ComfyUI or remove the ControlNet nodes")

# By (pad token, vocabulary file): the vocabulary is read once per process.
_TOKENIZERS: dict[tuple[int, str | None], Any] = {}


def _tokenizer(pad_token: int, vocab_path: str | None) -> Any:
    from ..tokenizer import ClipTokenizer

    key = (pad_token, vocab_path)
    tokenizer = _TOKENIZERS.get(key)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[key] = ClipTokenizer(vocab_path, pad_token=pad_token)
    return tokenizer


def _tokens(encoder: TextEncoderRef, text: str, vocab_path: str | None) -> list[Any]:
    """``SDTokenizer.tokenize_with_weights``: 77-token chunks of ``(token, weight)``."""
    from ..tokenizer import EmbeddingRef

    chunks = _tokenizer(encoder.pad_token, vocab_path).tokenize_weighted(text)
    if any(isinstance(t, EmbeddingRef) for chunk in chunks for t, _ in chunk):
        raise ProgramError("textual-inversion embeddings (embedding:NAME) are not supported by "
                           "this runtime path yet; remove them from the prompt")
    return chunks


def _encode_chunks(clip: ClipRef, encoder: TextEncoderRef, chunks: list[Any]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One encoder's ``encode_token_weights`` (``comfy/sd1_clip.py``): ``(cond, pooled)``.

    All 77-token chunks are encoded in one batch; when any weight differs from 1 an
    all-padding "empty" sequence is encoded too and each token becomes
    ``z_empty + w · (z − z_empty)``; chunks are concatenated along the token axis; the pooled
    output comes from the first chunk.
    """
    import numpy as np

    layer = clip.layer_of(encoder)
    stage = encoder.stages.get(layer)
    if stage is None:
        raise ProgramError(f"no {encoder.name} text encoder for CLIP layer {layer}; this "
                           f"program has layers {sorted(encoder.stages)}")
    ids = np.array([[t for t, _ in chunk] for chunk in chunks], dtype=np.int64)
    weights = np.array([[w for _, w in chunk] for chunk in chunks], dtype=np.float32)
    has_weights = bool(np.any(weights != 1.0))
    if has_weights:
        empty = np.full((1, ids.shape[1]), encoder.pad_token, dtype=np.int64)
        empty[0, 0], empty[0, 1] = 49406, 49407
        ids = np.concatenate([ids, empty])
    hidden, pooled = stage(ids)
    hidden = np.asarray(hidden, dtype=np.float32)
    if has_weights:
        z_empty = hidden[-1]
        hidden = hidden[:-1]
        hidden = z_empty[None] + weights[:, :, None] * (hidden - z_empty[None])
    cond = hidden.reshape(1, -1, hidden.shape[-1]).astype(np.float32)
    return cond, np.asarray(pooled[:1], dtype=np.float32)


def encode_text(clip: ClipRef, text: str, vocab_path: str | None = None, *,
                texts: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """ComfyUI's CLIPTextEncode: weighted, chunked, batched encoding by every encoder.

    Each encoder encodes the prompt with its own tokenizer rules (pad token) at the CLIP
    layer; their outputs are concatenated along the feature axis (SDXL: clip_l's 768 then
    clip_g's 1280, cut to the shorter token count, as ``SDXLClipModel``); the pooled output is
    the pooled encoder's (SDXL: clip_g's projected pooled output).

    Args:
        clip: The CLIP.
        text: The prompt.
        vocab_path: The CLIP vocabulary (None: the packaged one).
        texts: Per-encoder prompts by encoder name (``CLIPTextEncodeSDXL``'s ``text_g`` and
            ``text_l``); an encoder whose chunks are fewer gets empty chunks appended, as
            ComfyUI pads them.

    Raises:
        ProgramError: The CLIP has no encoder for its layer, or the prompt uses a
            textual-inversion embedding this path cannot apply.
    """
    import numpy as np

    if not clip.encoders:
        raise ProgramError("this CLIP has no text encoder stage (it was not compiled in); "
                           "compile the workflow again")
    chunks = {e.name: _tokens(e, (texts or {}).get(e.name, text), vocab_path)
              for e in clip.encoders}
    longest = max(len(c) for c in chunks.values())
    for encoder in clip.encoders:
        missing = longest - len(chunks[encoder.name])
        if missing:
            chunks[encoder.name] = chunks[encoder.name] + _tokens(encoder, "", vocab_path) * missing
    outputs = [_encode_chunks(clip, e, chunks[e.name]) for e in clip.encoders]
    tokens = min(cond.shape[1] for cond, _ in outputs)
    cond = np.concatenate([c[:, :tokens] for c, _ in outputs], axis=-1)
    pooled = next((p for (_, p), e in zip(reversed(outputs), reversed(clip.encoders))
                   if e.pooled), outputs[-1][1])
    return [{"cond": np.ascontiguousarray(cond, dtype=np.float32), "pooled_output": pooled}]


def _vocab(ctx: Any) -> str | None:
    return ctx.vocab_path if ctx is not None else None


def _clip_text_encode(ctx: Any, *, text: str, clip: ClipRef) -> tuple[Any, ...]:
    return (encode_text(clip, text, _vocab(ctx)),)


def _clip_text_encode_sdxl(ctx: Any, *, clip: ClipRef, width: int = 1024, height: int = 1024,
                           crop_w: int = 0, crop_h: int = 0, target_width: int = 1024,
                           target_height: int = 1024, text_g: str = "", text_l: str = ""
                           ) -> tuple[Any, ...]:
    """``CLIPTextEncodeSDXL``: text_g to clip_g, text_l to clip_l, and the size conditioning
    (``comfy_extras/nodes_clip_sdxl.py``)."""
    entries = encode_text(clip, text_g, _vocab(ctx), texts={"clip_g": text_g, "clip_l": text_l})
    sizes = {"width": int(width), "height": int(height), "crop_w": int(crop_w),
             "crop_h": int(crop_h), "target_width": int(target_width),
             "target_height": int(target_height)}
    return ([{**e, **sizes} for e in entries],)


def _clip_text_encode_refiner(ctx: Any, *, clip: ClipRef, ascore: float = 6.0,
                              width: int = 1024, height: int = 1024, text: str = ""
                              ) -> tuple[Any, ...]:
    """``CLIPTextEncodeSDXLRefiner``: the prompt and the aesthetic score and size."""
    entries = encode_text(clip, text, _vocab(ctx))
    extra = {"aesthetic_score": float(ascore), "width": int(width), "height": int(height)}
    return ([{**e, **extra} for e in entries],)


def _clip_set_last_layer(ctx: Any, *, clip: ClipRef, stop_at_clip_layer: int
                         ) -> tuple[Any, ...]:
    return (replace(clip, layer=int(stop_at_clip_layer)),)


def _cond_op(class_type: str, inputs: list[Any], function: str, display: str,
             category: str = "conditioning") -> NodeDef:
    """A pure conditioning op, folded at compile time when its inputs are constants."""
    return NodeDef(schema(class_type, inputs, outputs(_COND), display, category),
                   run=lazy_op("conditioning", function), fold=True)


NODES: list[NodeDef] = [
    NodeDef(schema("CLIPSetLastLayer", [
        link("clip", "CLIP"), int_input("stop_at_clip_layer", -1, -24, -1),
    ], outputs("CLIP"), "CLIP Set Last Layer", "conditioning"),
        run=_clip_set_last_layer, weights_from=(("CLIP", "clip"),)),
    NodeDef(schema("CLIPTextEncode", [
        string("text", multiline=True, dynamic_prompts=True), link("clip", "CLIP"),
    ], outputs(_COND), "CLIP Text Encode (Prompt)", "conditioning"),
        run=_clip_text_encode, calls=(StageCall("text_encoder", "clip"),)),
    NodeDef(schema("CLIPTextEncodeSDXL", [
        link("clip", "CLIP"),
        int_input("width", 1024, 0, MAX_RESOLUTION), int_input("height", 1024, 0, MAX_RESOLUTION),
        int_input("crop_w", 0, 0, MAX_RESOLUTION), int_input("crop_h", 0, 0, MAX_RESOLUTION),
        int_input("target_width", 1024, 0, MAX_RESOLUTION),
        int_input("target_height", 1024, 0, MAX_RESOLUTION),
        string("text_g", multiline=True, dynamic_prompts=True),
        string("text_l", multiline=True, dynamic_prompts=True),
    ], outputs(_COND), "CLIP Text Encode (SDXL)", "advanced/conditioning",
        python_module="comfy_extras.nodes_clip_sdxl"),
        run=_clip_text_encode_sdxl, calls=(StageCall("text_encoder", "clip"),)),
    NodeDef(schema("CLIPTextEncodeSDXLRefiner", [
        float_input("ascore", 6.0, 0.0, 1000.0, 0.01),
        int_input("width", 1024, 0, MAX_RESOLUTION), int_input("height", 1024, 0, MAX_RESOLUTION),
        string("text", multiline=True, dynamic_prompts=True), link("clip", "CLIP"),
    ], outputs(_COND), "CLIP Text Encode (SDXL Refiner)", "advanced/conditioning",
        python_module="comfy_extras.nodes_clip_sdxl"),
        run=_clip_text_encode_refiner, calls=(StageCall("text_encoder", "clip"),)),
    _cond_op("ConditioningCombine", [link("conditioning_1", _COND),
                                     link("conditioning_2", _COND)],
             "conditioning_combine", "Conditioning (Combine)"),
    _cond_op("ConditioningConcat", [link("conditioning_to", _COND),
                                    link("conditioning_from", _COND)],
             "conditioning_concat", "Conditioning (Concat)"),
    _cond_op("ConditioningAverage", [
        link("conditioning_to", _COND), link("conditioning_from", _COND),
        float_input("conditioning_to_strength", 1.0, 0.0, 1.0),
    ], "conditioning_average", "Conditioning (Average)"),
    _cond_op("ConditioningSetArea", [
        link("conditioning", _COND),
        int_input("width", 64, 64, 16384, 8), int_input("height", 64, 64, 16384, 8),
        int_input("x", 0, 0, 16384, 8), int_input("y", 0, 0, 16384, 8),
        float_input("strength", 1.0, 0.0, 10.0),
    ], "set_area", "Conditioning (Set Area)"),
    _cond_op("ConditioningSetAreaPercentage", [
        link("conditioning", _COND),
        float_input("width", 1.0, 0.0, 1.0), float_input("height", 1.0, 0.0, 1.0),
        float_input("x", 0.0, 0.0, 1.0), float_input("y", 0.0, 0.0, 1.0),
        float_input("strength", 1.0, 0.0, 10.0),
    ], "set_area_percentage", "Conditioning (Set Area with Percentage)"),
    _cond_op("ConditioningSetAreaStrength", [
        link("conditioning", _COND), float_input("strength", 1.0, 0.0, 10.0),
    ], "set_area_strength", "ConditioningSetAreaStrength"),
    _cond_op("ConditioningSetMask", [
        link("conditioning", _COND), link("mask", "MASK"),
        float_input("strength", 1.0, 0.0, 10.0),
        combo("set_cond_area", ["default", "mask bounds"]),
    ], "set_mask", "Conditioning (Set Mask)"),
    _cond_op("ConditioningSetTimestepRange", [
        link("conditioning", _COND),
        float_input("start", 0.0, 0.0, 1.0, 0.001), float_input("end", 1.0, 0.0, 1.0, 0.001),
    ], "set_timestep_range", "ConditioningSetTimestepRange", "advanced/conditioning"),
    _cond_op("ConditioningZeroOut", [link("conditioning", _COND)], "zero_out",
             "ConditioningZeroOut", "advanced/conditioning"),
    NodeDef(schema("ControlNetApply", [
        link("conditioning", _COND), link("control_net", "CONTROL_NET"),
        link("image", "IMAGE"), float_input("strength", 1.0, 0.0, 10.0),
    ], outputs(_COND), "Apply ControlNet (OLD)", "conditioning/controlnet", deprecated=True),
        check_only=_NOT_YET_CONTROL),
    NodeDef(schema("ControlNetApplyAdvanced", [
        link("positive", _COND), link("negative", _COND),
        link("control_net", "CONTROL_NET"), link("image", "IMAGE"),
        float_input("strength", 1.0, 0.0, 10.0),
        float_input("start_percent", 0.0, 0.0, 1.0, 0.001),
        float_input("end_percent", 1.0, 0.0, 1.0, 0.001),
        optional_link("vae", "VAE"),
    ], outputs("positive:CONDITIONING", "negative:CONDITIONING"), "Apply ControlNet",
        "conditioning/controlnet"),
        check_only=_NOT_YET_CONTROL, binding="control"),
]
