"""Conditioning nodes: text encoding, CLIP skip, and the ops that combine conditionings.

A CONDITIONING is a list of entries ``{"cond": [1, T, D], "pooled_output": [1, P], …}`` as
ComfyUI's; the pure ops on it are in :mod:`comfyc.runtime.ops.conditioning`. Every op here with
``fold=True`` is evaluated at compile time when its inputs are constants, so a workflow whose
prompts are fixed ships stored tensors instead of a text encoder.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import ProgramError
from ..values import ClipRef
from .registry import NodeDef, StageCall, lazy_op
from .schema import combo, float_input, int_input, link, optional_link, outputs, schema
from .schema import string_input as string

__all__ = ["NODES", "encode_text"]

_COND = "CONDITIONING"
_NOT_YET_CONTROL = ("ControlNet and T2I-Adapter models are not supported by comfyc yet; run "
                    "this workflow in ComfyUI or remove the ControlNet nodes")

# By (pad token, vocabulary file): the vocabulary is read once per process.
_TOKENIZERS: dict[tuple[int, str | None], Any] = {}


def encode_text(clip: ClipRef, text: str, vocab_path: str | None = None
                ) -> list[dict[str, Any]]:
    """ComfyUI's CLIPTextEncode: weighted, chunked, batched encoding.

    Follows ``comfy/sd1_clip.py`` ``encode_token_weights``: all 77-token chunks are encoded in
    one batch; when any weight differs from 1 an all-padding "empty" sequence is encoded too
    and each token becomes ``z_empty + w · (z − z_empty)``; chunks are concatenated along the
    token axis; the pooled output comes from the first chunk.

    Raises:
        ProgramError: The CLIP has no encoder for its layer, or the prompt uses a
            textual-inversion embedding this path cannot apply.
    """
    import numpy as np

    from ..tokenizer import ClipTokenizer, EmbeddingRef

    key = (clip.pad_token, vocab_path)
    tokenizer = _TOKENIZERS.get(key)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[key] = ClipTokenizer(vocab_path, pad_token=clip.pad_token)
    chunks = tokenizer.tokenize_weighted(text)
    layer = clip.effective_layer
    encoder = clip.encoders.get(layer)
    if encoder is None:
        raise ProgramError(f"no text encoder for CLIP layer {layer}; this program has layers "
                           f"{sorted(clip.encoders)}")
    ids = np.array([[t if isinstance(t, int) else 0 for t, _ in chunk] for chunk in chunks],
                   dtype=np.int64)
    if any(isinstance(t, EmbeddingRef) for chunk in chunks for t, _ in chunk):
        raise ProgramError("textual-inversion embeddings (embedding:NAME) are not supported by "
                           "this runtime path yet; remove them from the prompt")
    weights = np.array([[w for _, w in chunk] for chunk in chunks], dtype=np.float32)
    has_weights = bool(np.any(weights != 1.0))
    if has_weights:
        empty = np.full((1, ids.shape[1]), clip.pad_token, dtype=np.int64)
        empty[0, 0], empty[0, 1] = 49406, 49407
        ids = np.concatenate([ids, empty])
    hidden, pooled = encoder(ids)
    hidden = np.asarray(hidden, dtype=np.float32)
    if has_weights:
        z_empty = hidden[-1]
        hidden = hidden[:-1]
        hidden = z_empty[None] + weights[:, :, None] * (hidden - z_empty[None])
    cond = hidden.reshape(1, -1, hidden.shape[-1]).astype(np.float32)
    return [{"cond": cond, "pooled_output": np.asarray(pooled[:1], dtype=np.float32)}]


def _clip_text_encode(ctx: Any, *, text: str, clip: ClipRef) -> tuple[Any, ...]:
    return (encode_text(clip, text, ctx.vocab_path if ctx is not None else None),)


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
