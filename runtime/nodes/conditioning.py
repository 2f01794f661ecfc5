"""Conditioning nodes: text encoding, CLIP skip, and the ops that combine conditionings.

A CONDITIONING is a list of entries ``{"cond": [1, T, D], "pooled_output": [1, P], …}`` as
ComfyUI's; the pure ops on it are in :mod:`comfyc.runtime.ops.conditioning`. Every op here with
``fold=True`` is evaluated at compile time when its inputs are constants, so a workflow whose
prompts are fixed ships stored tensors instead of a text encoder.
"""

from __future__ import annotations

import logging
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
    outputs,
    schema,
)
from .schema import string_input as string

if TYPE_CHECKING:
    import numpy as np

    from ..embeddings import Embeddings

__all__ = ["NODES", "encode_text"]

_COND = "CONDITIONING"
_log = logging.getLogger(__name__)

# By (pad token, vocabulary file): the vocabulary is read once per process.
_TOKENIZERS: dict[tuple[int, str | None], Any] = {}


def _tokenizer(pad_token: int, vocab_path: str | None) -> Any:
    from ..tokenizer import ClipTokenizer

    key = (pad_token, vocab_path)
    tokenizer = _TOKENIZERS.get(key)
    if tokenizer is None:
        tokenizer = _TOKENIZERS[key] = ClipTokenizer(vocab_path, pad_token=pad_token)
    return tokenizer


def _tokens(encoder: TextEncoderRef, text: str, vocab_path: str | None,
            embeddings: Embeddings | None = None) -> list[Any]:
    """ComfyUI's ``tokenize_with_weights`` for one encoder: CLIP's 77-token chunks of
    ``(token, weight)``, or T5's single sequence (``</s>`` then pads to ``min_length``);
    ``embedding:NAME`` becomes one `EmbeddingRef` per vector of the file in ``embeddings``
    (without them it is plain text, as in ComfyUI without an embeddings folder)."""
    lookup = (embeddings.lookup(encoder.name, encoder.width or None)
              if embeddings is not None else None)
    if encoder.tokenizer == "t5":
        return _t5_tokenizer(encoder.min_length).tokenize_weighted(text, embedding_lookup=lookup)
    return _tokenizer(encoder.pad_token, vocab_path).tokenize_weighted(
        text, embedding_lookup=lookup)


_T5_TOKENIZERS: dict[int, Any] = {}


def _t5_tokenizer(min_length: int) -> Any:
    from ..t5_tokenizer import T5Tokenizer

    tokenizer = _T5_TOKENIZERS.get(min_length)
    if tokenizer is None:
        tokenizer = _T5_TOKENIZERS[min_length] = T5Tokenizer(min_length=min_length)
    return tokenizer


def _empty_tokens(encoder: TextEncoderRef, length: int) -> list[int]:
    """ComfyUI's ``gen_empty_tokens``: (start,) end, then pads up to ``length``."""
    out = [1] if encoder.tokenizer == "t5" else [49406, 49407]
    return out + [encoder.pad_token] * (length - len(out))


def _splice(encoder: TextEncoderRef, chunks: list[Any], embeddings: Embeddings | None
            ) -> tuple[list[list[int]], np.ndarray, np.ndarray | None]:
    """Token rows, weights and the textual-inversion vectors for one encoder's chunks.

    An `EmbeddingRef` becomes id -1 with its vector at the same place of the returned
    ``[rows, tokens, width]`` array (None when the prompt has none). A vector whose width is
    not the encoder's is dropped and the row padded at its end, as ComfyUI's encoder does
    (with a warning).
    """
    import numpy as np

    from ..tokenizer import EmbeddingRef

    if not any(isinstance(t, EmbeddingRef) for chunk in chunks for t, _ in chunk):
        return ([[t for t, _ in chunk] for chunk in chunks],
                np.array([[w for _, w in chunk] for chunk in chunks], dtype=np.float32), None)
    if embeddings is None:  # NOTE: the tokenizer only makes refs from a lookup.
        raise ProgramError("the prompt's tokens hold textual-inversion vectors but no "
                           "embeddings folder was given")
    rows: list[list[int]] = []
    weights: list[list[float]] = []
    placed: list[list[tuple[int, np.ndarray]]] = []
    width = encoder.width or None
    dropped: set[str] = set()
    tables: dict[str, np.ndarray | None] = {}
    for chunk in chunks:
        row: list[int] = []
        row_weights: list[float] = []
        vectors: list[tuple[int, np.ndarray]] = []
        for token, weight in chunk:
            if isinstance(token, EmbeddingRef):
                if token.name not in tables:
                    tables[token.name] = embeddings.vectors(token.name, encoder.name,
                                                            encoder.width or None)
                table = tables[token.name]
                if table is None or (width is not None and table.shape[-1] != width):
                    dropped.add(token.name if table is None else
                                f"{token.name} (width {table.shape[-1]})")
                    continue
                width = width or int(table.shape[-1])
                vectors.append((len(row), table[token.index]))
                row.append(-1)
            else:
                row.append(int(token))
            row_weights.append(float(weight))
        missing = len(chunk) - len(row)
        row += [encoder.pad_token] * missing
        row_weights += [1.0] * missing
        rows.append(row)
        weights.append(row_weights)
        placed.append(vectors)
    for name in sorted(dropped):
        _log.warning("embedding:%s does not fit the %s text encoder (width %s); ignoring it "
                     "there, as ComfyUI does", name, encoder.name, encoder.width or "?")
    if width is None or not any(placed):
        return rows, np.array(weights, dtype=np.float32), None
    if encoder.tokenizer == "t5":
        raise ProgramError(f"textual-inversion embeddings for the {encoder.name} (T5) encoder "
                           f"are not supported; remove the embedding from that prompt")
    embeds = np.zeros((len(rows), len(rows[0]), width), dtype=np.float32)
    for r, vectors in enumerate(placed):
        for position, vector in vectors:
            embeds[r, position] = vector
    return rows, np.array(weights, dtype=np.float32), embeds


def _encode_chunks(clip: ClipRef, encoder: TextEncoderRef, chunks: list[Any],
                   embeddings: Embeddings | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One encoder's ``encode_token_weights`` (``comfy/sd1_clip.py``): ``(cond, pooled)``.

    All chunks are encoded in one batch; when any weight differs from 1 (or there is no
    chunk) an "empty" sequence of the longest chunk's length is encoded too and each weighted
    token becomes ``z_empty + w · (z − z_empty)``; chunks are concatenated along the token
    axis; the pooled output comes from the first sequence. Textual-inversion vectors go to
    the stage as ``embeds`` beside ids of -1 (:func:`_splice`).
    """
    import numpy as np

    layer = clip.layer_of(encoder)
    stage = encoder.stages.get(layer)
    if stage is None:
        raise ProgramError(f"no {encoder.name} text encoder for CLIP layer {layer}; this "
                           f"program has layers {sorted(encoder.stages)}")
    longest = max((len(chunk) for chunk in chunks), default=0)
    rows, weights, embeds = _splice(encoder, chunks, embeddings)
    has_weights = bool(weights.size and np.any(weights != 1.0))
    if has_weights or not chunks:
        rows.append(_empty_tokens(encoder, longest))
        if embeds is not None:
            embeds = np.concatenate([embeds, np.zeros_like(embeds[:1])])
    ids = np.array(rows, dtype=np.int64)
    hidden, pooled = stage(ids) if embeds is None else stage(ids, embeds)
    hidden = np.asarray(hidden, dtype=np.float32)
    pooled = np.asarray(pooled[:1], dtype=np.float32)
    if not chunks:
        return hidden[-1:], pooled
    if has_weights:
        z_empty = hidden[-1]
        hidden = hidden[:-1]
        w = weights[:, :, None]
        weighted = (hidden - z_empty[None]) * w + z_empty[None]
        hidden = np.where(w != 1.0, weighted, hidden)
    cond = hidden.reshape(1, -1, hidden.shape[-1]).astype(np.float32)
    return cond, pooled


def _encoder(clip: ClipRef, name: str) -> TextEncoderRef | None:
    return next((e for e in clip.encoders if e.name == name), None)


def _encode_sd3(clip: ClipRef, chunks: Mapping[str, list[Any]],
                embeddings: Embeddings | None = None) -> list[dict[str, Any]]:
    """``SD3ClipModel.encode_token_weights`` (``comfy/text_encoders/sd3_clip.py``):
    ``[CLIP-L | CLIP-G | 0 … 4096] ++ T5`` on the token axis, pooled ``[L 768 | G 1280]``;
    a missing encoder contributes ComfyUI's zeros."""
    import numpy as np

    clip_l, clip_g, t5 = (_encoder(clip, n) for n in ("clip_l", "clip_g", "t5xxl"))
    width_l = clip_l.width if clip_l is not None and clip_l.width else 768
    width_g = clip_g.width if clip_g is not None and clip_g.width else 1280
    context_dim = t5.width if t5 is not None and t5.width else 4096
    tokens_l, tokens_g = chunks.get("clip_l", []), chunks.get("clip_g", [])
    part = pooled = None
    if tokens_l or tokens_g:
        l_pooled = np.zeros((1, width_l), np.float32)
        g_pooled = np.zeros((1, width_g), np.float32)
        if clip_l is not None:
            part, l_pooled = _encode_chunks(clip, clip_l, tokens_l, embeddings)
        if clip_g is not None:
            g_out, g_pooled = _encode_chunks(clip, clip_g, tokens_g, embeddings)
            if part is not None:
                cut = min(part.shape[1], g_out.shape[1])
                part = np.concatenate([part[:, :cut], g_out[:, :cut]], axis=-1)
            else:
                part = np.pad(g_out, ((0, 0), (0, 0), (width_l, 0)))
        if part is not None:
            if part.shape[-1] > context_dim:
                raise ProgramError(f"the CLIP part of the SD3 context is {part.shape[-1]} wide, "
                                   f"more than T5's {context_dim}")
            part = np.pad(part, ((0, 0), (0, 0), (0, context_dim - part.shape[-1])))
        pooled = np.concatenate([l_pooled, g_pooled], axis=-1)
    context = part
    if t5 is not None:
        t5_out, _ = _encode_chunks(clip, t5, chunks.get("t5xxl", []), embeddings)
        context = t5_out if part is None else np.concatenate([part, t5_out], axis=1)
    if context is None:
        context = np.zeros((1, 77, context_dim), np.float32)
    if pooled is None:
        pooled = np.zeros((1, width_l + width_g), np.float32)
    return [{"cond": np.ascontiguousarray(context, dtype=np.float32),
             "pooled_output": np.asarray(pooled, dtype=np.float32)}]


def _encode_flux(clip: ClipRef, chunks: Mapping[str, list[Any]],
                 embeddings: Embeddings | None = None) -> list[dict[str, Any]]:
    """``FluxClipModel``: T5's output is the context, CLIP-L's unprojected pooled output the
    pooled vector."""
    import numpy as np

    clip_l, t5 = _encoder(clip, "clip_l"), _encoder(clip, "t5xxl")
    if clip_l is None or t5 is None:
        raise ProgramError("Flux encodes prompts with clip_l and t5xxl; load both "
                           "(DualCLIPLoader with type flux)")
    context, _ = _encode_chunks(clip, t5, chunks.get("t5xxl", []), embeddings)
    _, pooled = _encode_chunks(clip, clip_l, chunks.get("clip_l", []), embeddings)
    return [{"cond": np.ascontiguousarray(context, dtype=np.float32), "pooled_output": pooled}]


def encode_text(clip: ClipRef, text: str, vocab_path: str | None = None, *,
                texts: Mapping[str, str] | None = None,
                chunks: Mapping[str, list[Any]] | None = None,
                embeddings: Embeddings | None = None) -> list[dict[str, Any]]:
    """ComfyUI's CLIPTextEncode: weighted, chunked, batched encoding by every encoder.

    SD1/SD2/SDXL: each encoder encodes the prompt with its own tokenizer rules (pad token) at
    the CLIP layer; their outputs are concatenated along the feature axis (SDXL: clip_l's 768
    then clip_g's 1280, cut to the shorter token count, as ``SDXLClipModel``); the pooled
    output is the pooled encoder's (SDXL: clip_g's projected pooled output). SD3 and Flux
    combine CLIP-L, CLIP-G and T5 as :func:`_encode_sd3` and :func:`_encode_flux` say.

    Args:
        clip: The CLIP.
        text: The prompt.
        vocab_path: The CLIP vocabulary (None: the packaged one).
        texts: Per-encoder prompts by encoder name (``CLIPTextEncodeSDXL``'s ``text_g`` and
            ``text_l``, ``CLIPTextEncodeFlux``'s ``clip_l`` and ``t5xxl``); for SD1/SD2/SDXL an
            encoder whose chunks are fewer gets empty chunks appended, as ComfyUI pads them.
        chunks: Token chunks by encoder name, given instead of text (``CLIPTextEncodeSD3``).
        embeddings: Where ``embedding:NAME`` is looked up (None: it is plain text).

    Raises:
        ProgramError: The CLIP has no encoder for its layer, or a T5 prompt holds an
            embedding of T5's width.
        EmbeddingError: An embedding file cannot be read.
    """
    import numpy as np

    if not clip.encoders:
        raise ProgramError("this CLIP has no text encoder stage (it was not compiled in); "
                           "compile the workflow again")
    tokens = dict(chunks) if chunks is not None else {}
    for e in clip.encoders:
        if e.name not in tokens:
            tokens[e.name] = _tokens(e, (texts or {}).get(e.name, text), vocab_path,
                                    embeddings)
    if clip.family == "sd3":
        return _encode_sd3(clip, tokens, embeddings)
    if clip.family == "flux":
        return _encode_flux(clip, tokens, embeddings)
    longest = max(len(c) for c in tokens.values())
    for encoder in clip.encoders:
        missing = longest - len(tokens[encoder.name])
        if missing:
            tokens[encoder.name] = tokens[encoder.name] + _tokens(encoder, "", vocab_path) * missing
    outputs = [_encode_chunks(clip, e, tokens[e.name], embeddings) for e in clip.encoders]
    count = min(cond.shape[1] for cond, _ in outputs)
    cond = np.concatenate([c[:, :count] for c, _ in outputs], axis=-1)
    pooled = next((p for (_, p), e in zip(reversed(outputs), reversed(clip.encoders))
                   if e.pooled), outputs[-1][1])
    return [{"cond": np.ascontiguousarray(cond, dtype=np.float32), "pooled_output": pooled}]


def _vocab(ctx: Any) -> str | None:
    return ctx.vocab_path if ctx is not None else None


def _embeddings(ctx: Any) -> Embeddings | None:
    """The run's textual-inversion embeddings (its models folder's), if it has any."""
    return getattr(ctx, "embeddings", None)


def _clip_text_encode(ctx: Any, *, text: str, clip: ClipRef) -> tuple[Any, ...]:
    return (encode_text(clip, text, _vocab(ctx), embeddings=_embeddings(ctx)),)


def _clip_text_encode_sdxl(ctx: Any, *, clip: ClipRef, width: int = 1024, height: int = 1024,
                           crop_w: int = 0, crop_h: int = 0, target_width: int = 1024,
                           target_height: int = 1024, text_g: str = "", text_l: str = ""
                           ) -> tuple[Any, ...]:
    """``CLIPTextEncodeSDXL``: text_g to clip_g, text_l to clip_l, and the size conditioning
    (``comfy_extras/nodes_clip_sdxl.py``)."""
    entries = encode_text(clip, text_g, _vocab(ctx), texts={"clip_g": text_g, "clip_l": text_l},
                          embeddings=_embeddings(ctx))
    sizes = {"width": int(width), "height": int(height), "crop_w": int(crop_w),
             "crop_h": int(crop_h), "target_width": int(target_width),
             "target_height": int(target_height)}
    return ([{**e, **sizes} for e in entries],)


def _clip_text_encode_refiner(ctx: Any, *, clip: ClipRef, ascore: float = 6.0,
                              width: int = 1024, height: int = 1024, text: str = ""
                              ) -> tuple[Any, ...]:
    """``CLIPTextEncodeSDXLRefiner``: the prompt and the aesthetic score and size."""
    entries = encode_text(clip, text, _vocab(ctx), embeddings=_embeddings(ctx))
    extra = {"aesthetic_score": float(ascore), "width": int(width), "height": int(height)}
    return ([{**e, **extra} for e in entries],)


def _clip_text_encode_flux(ctx: Any, *, clip: ClipRef, clip_l: str = "", t5xxl: str = "",
                           guidance: float = 3.5) -> tuple[Any, ...]:
    """``CLIPTextEncodeFlux``: clip_l's text to CLIP-L, t5xxl's to T5, and the guidance."""
    entries = encode_text(clip, clip_l, _vocab(ctx), texts={"clip_l": clip_l, "t5xxl": t5xxl},
                          embeddings=_embeddings(ctx))
    return ([{**e, "guidance": float(guidance)} for e in entries],)


def _clip_text_encode_sd3(ctx: Any, *, clip: ClipRef, clip_l: str = "", clip_g: str = "",
                          t5xxl: str = "", empty_padding: str = "none") -> tuple[Any, ...]:
    """``CLIPTextEncodeSD3``: a prompt per encoder; with ``empty_padding`` "none" an empty
    prompt gives its encoder no tokens (ComfyUI's zeros), and CLIP-L and CLIP-G are padded
    with empty chunks to the same count."""
    vocab, embeddings = _vocab(ctx), _embeddings(ctx)
    no_padding = empty_padding == "none"
    chunks: dict[str, list[Any]] = {}
    for name, text in (("clip_l", clip_l), ("clip_g", clip_g), ("t5xxl", t5xxl)):
        encoder = _encoder(clip, name)
        if encoder is None:
            continue
        chunks[name] = [] if (no_padding and len(text) == 0) else _tokens(encoder, text, vocab,
                                                                          embeddings)
    l_enc, g_enc = _encoder(clip, "clip_l"), _encoder(clip, "clip_g")
    if l_enc is not None and g_enc is not None:
        tl, tg = chunks["clip_l"], chunks["clip_g"]
        while len(tl) < len(tg):
            tl = tl + _tokens(l_enc, "", vocab)
        while len(tg) < len(tl):
            tg = tg + _tokens(g_enc, "", vocab)
        chunks["clip_l"], chunks["clip_g"] = tl, tg
    return (encode_text(clip, "", vocab, chunks=chunks, embeddings=embeddings),)


def _clip_set_last_layer(ctx: Any, *, clip: ClipRef, stop_at_clip_layer: int
                         ) -> tuple[Any, ...]:
    return (replace(clip, layer=int(stop_at_clip_layer)),)


def _cond_op(class_type: str, inputs: list[Any], function: str, display: str,
             category: str = "conditioning", shape_inputs: tuple[str, ...] = (),
             **schema_kw: Any) -> NodeDef:
    """A pure conditioning op, folded at compile time when its inputs are constants."""
    return NodeDef(schema(class_type, inputs, outputs(_COND), display, category, **schema_kw),
                   run=lazy_op("conditioning", function), fold=True, shape_inputs=shape_inputs)


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
    NodeDef(schema("CLIPTextEncodeFlux", [
        link("clip", "CLIP"), string("clip_l", multiline=True, dynamic_prompts=True),
        string("t5xxl", multiline=True, dynamic_prompts=True),
        float_input("guidance", 3.5, 0.0, 100.0, 0.1),
    ], outputs(_COND), "CLIPTextEncodeFlux", "model/conditioning/flux",
        python_module="comfy_extras.nodes_flux"),
        run=_clip_text_encode_flux, calls=(StageCall("text_encoder", "clip"),)),
    NodeDef(schema("CLIPTextEncodeSD3", [
        link("clip", "CLIP"), string("clip_l", multiline=True, dynamic_prompts=True),
        string("clip_g", multiline=True, dynamic_prompts=True),
        string("t5xxl", multiline=True, dynamic_prompts=True),
        combo("empty_padding", ["none", "empty_prompt"]),
    ], outputs(_COND), "CLIP Text Encode (SD3)", "model/conditioning/stable diffusion",
        python_module="comfy_extras.nodes_sd3"),
        run=_clip_text_encode_sd3, calls=(StageCall("text_encoder", "clip"),)),
    _cond_op("FluxGuidance", [link("conditioning", _COND),
                              float_input("guidance", 3.5, 0.0, 100.0, 0.1)],
             "flux_guidance", "FluxGuidance", "model/conditioning/flux",
             python_module="comfy_extras.nodes_flux"),
    _cond_op("FluxDisableGuidance", [link("conditioning", _COND)], "flux_disable_guidance",
             "FluxDisableGuidance", "model/conditioning/flux",
             python_module="comfy_extras.nodes_flux"),
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
        # NOTE: the UNet runs on each area's crop of the latent (cut short at its edges, so x
        # and y count too): a param here changes the shapes the UNet stage is called with.
    ], "set_area", "Conditioning (Set Area)", shape_inputs=("width", "height", "x", "y")),
    _cond_op("ConditioningSetAreaPercentage", [
        link("conditioning", _COND),
        float_input("width", 1.0, 0.0, 1.0), float_input("height", 1.0, 0.0, 1.0),
        float_input("x", 0.0, 0.0, 1.0), float_input("y", 0.0, 0.0, 1.0),
        float_input("strength", 1.0, 0.0, 10.0),
    ], "set_area_percentage", "Conditioning (Set Area with Percentage)",
        shape_inputs=("width", "height", "x", "y")),
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
]
