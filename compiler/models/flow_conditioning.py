"""Prompt encodings of SD3/SD3.5 and Flux, as ComfyUI computes them (reference torch code).

ComfyUI's CONDITIONING for these models is ``(context, {"pooled_output": pooled, ...})``;
`sd3_text_conditioning` and `flux_text_conditioning` return ``(context, pooled)`` for one prompt
from its token chunks, following ``comfy/text_encoders/sd3_clip.py`` (``SD3ClipModel``),
``comfy/text_encoders/flux.py`` (``FluxClipModel``) and ``comfy/sd1_clip.py``
(``SDClipModel``, ``ClipTokenWeightEncoder``).

Per encoder (``ENCODER_RULES``):

===========  ===============================  =====================  =============  ===========
encoder      hidden state used                pooled output          tokens         padding
===========  ===============================  =====================  =============  ===========
SD3 clip_l   penultimate layer (-2), *no*     final-norm last layer  chunks of 77:  end token
             final layer norm                 at the first end       BOS + 75 +     49407
                                              token, *unprojected*   EOS
SD3 clip_g   penultimate (-2), no final norm  same, times            chunks of 77   0 (``!``)
                                              ``text_projection``
SD3 t5xxl    last layer after                 none                   one sequence:  0, to at
             ``final_layer_norm``                                    ids + ``</s>``  least 77
Flux clip_l  last layer, final norm (unused)  as SD3 clip_l          chunks of 77   49407
Flux t5xxl   as SD3                           none                   as SD3         0, to 256
===========  ===============================  =====================  =============  ===========

No encoder gets an attention mask: CLIP runs with its causal mask only, T5 attends to its
padding (ComfyUI's SD3 ``t5_attention_mask`` is False and Flux has none), which is why the padded
length changes T5's output and must be ComfyUI's: at least 77 tokens for SD3, 256 for Flux (dev
*and* schnell; diffusers' FluxPipeline defaults to 512), longer prompts are not truncated.
ComfyUI's ``T5TokenizerOptions`` node changes the minimum (``min_length``) and adds padding
(``min_padding``).

SD3 combination (``SD3ClipModel.encode_token_weights``): CLIP-L ``[1, 77k, 768]`` and CLIP-G
``[1, 77k', 1280]`` are cut to the shorter token count and concatenated on the feature axis
(2048), zero-padded on the right to T5's width 4096, and T5's ``[1, n, 4096]`` is appended on the
token axis: ``context = [CLIP-L | CLIP-G | 0] ++ T5``, ``[1, 77k + n, 4096]``. The pooled vector is
``[CLIP-L pooled (768) | CLIP-G pooled (1280)]`` = 2048. A missing CLIP-L gives 768 zero columns
on the left and a zero pooled half; a missing CLIP-G leaves CLIP-L alone (padded to 4096) and
1280 zeros in the pooled; no CLIP at all: context = T5 alone, pooled = 2048 zeros; no T5: the
CLIP part alone; nothing: zeros ``[1, 77, 4096]``.

Flux (``FluxClipModel``): ``context`` = T5's ``[1, n, 4096]`` (n >= 256), ``pooled`` = CLIP-L's
unprojected pooled ``[1, 768]``; ``CLIPTextEncodeFlux`` adds ``guidance`` (default 3.5) to the
conditioning, which reaches the model's guidance input (dev only; schnell ignores it).

Token weights (``ClipTokenWeightEncoder``, for every encoder including T5): when any weight of a
prompt differs from 1, an "empty" sequence of the same length is encoded with it (CLIP: BOS, EOS,
pads; T5: ``</s>``, pads) and each weighted token's vector becomes
``(z - z_empty) * weight + z_empty``; the pooled output is not weighted. A prompt longer than one
CLIP chunk is encoded chunk by chunk and concatenated on the token axis; the pooled output comes
from the first chunk. ``CLIPSetLastLayer(-n)`` sets layer -n on every encoder, T5 included (then
T5's block -n output goes through its final norm; the CLIPs' keep their own final-norm rule).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from comfyc.compiler.models.errors import ModelFormatError

__all__ = [
    "ENCODER_RULES",
    "EncoderRule",
    "TokenChunks",
    "encode_token_weights",
    "flux_text_conditioning",
    "sd3_text_conditioning",
    "text_encoder_output",
]

#: One prompt's tokens for one encoder: ComfyUI's list of chunks of ``(id, weight)`` pairs, or
#: an id array ``[k, L]`` (all weights 1).
TokenChunks = Sequence[Sequence[tuple[int, float]]] | torch.Tensor | np.ndarray


@dataclass(frozen=True, slots=True)
class EncoderRule:
    """How ComfyUI runs one text encoder for a model family.

    Attributes:
        layer: ComfyUI's ``layer_idx`` (-2 penultimate) or None for ``"last"`` (the final
            layer after the final norm).
        layer_norm_hidden_state: Whether a chosen hidden layer goes through the final norm.
        pooled: ``"unprojected"`` (final-norm last layer at the first end token),
            ``"projected"`` (that times ``text_projection``) or None (T5).
        start: Start token (None for T5).
        end: End token (49407 CLIP, 1 T5).
        pad: Pad token (49407 CLIP-L, 0 CLIP-G and T5).
    """

    layer: int | None
    layer_norm_hidden_state: bool
    pooled: str | None
    start: int | None
    end: int
    pad: int


_SD3_CLIP_L = EncoderRule(-2, False, "unprojected", 49406, 49407, 49407)
_SD3_CLIP_G = EncoderRule(-2, False, "projected", 49406, 49407, 0)
_T5 = EncoderRule(None, True, None, None, 1, 0)
#: (clip type, encoder) -> rule (see the module docstring's table).
ENCODER_RULES: dict[tuple[str, str], EncoderRule] = {
    ("sd3", "clip_l"): _SD3_CLIP_L,
    ("sd3", "clip_g"): _SD3_CLIP_G,
    ("sd3", "t5xxl"): _T5,
    ("flux", "clip_l"): EncoderRule(None, True, "unprojected", 49406, 49407, 49407),
    ("flux", "t5xxl"): _T5,
}
# ComfyUI's hard-coded widths for absent encoders (sd3_clip.py).
_CLIP_L_WIDTH = 768
_CLIP_G_WIDTH = 1280
_T5_WIDTH = 4096


def _as_chunks(tokens: TokenChunks) -> list[list[tuple[int, float]]]:
    """ComfyUI's chunk list from either form of `TokenChunks`.

    Raises:
        ModelFormatError: A textual-inversion reference (not an id) among the tokens.
    """
    if isinstance(tokens, (torch.Tensor, np.ndarray)):
        array = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens)
        if array.ndim == 1:
            array = array[None]
        return [[(int(t), 1.0) for t in row] for row in array]
    chunks = []
    for chunk in tokens:
        if any(not isinstance(t, (int, np.integer)) for t, _ in chunk):
            # TODO(models): textual-inversion vectors for SD3/Flux encoders (rare; ComfyUI
            # splices them into the token embeddings).
            raise ModelFormatError("the prompt holds textual-inversion embeddings; SD3/Flux "
                                   "reference encodings take token ids only")
        chunks.append([(int(t), float(w)) for t, w in chunk])
    return chunks


def _empty_tokens(rule: EncoderRule, length: int) -> list[int]:
    """ComfyUI's ``gen_empty_tokens``: start, end, then pads up to `length`."""
    out = ([rule.start] if rule.start is not None else []) + [rule.end]
    return out + [rule.pad] * (length - len(out))


def _choose_layer(default: int | None, clip_layer: int | None, depth: int) -> int | None:
    """ComfyUI's ``set_clip_options``: a layer beyond the depth (or None) means ``"last"``."""
    layer = default if clip_layer is None else clip_layer
    if layer is None or abs(layer) > depth:
        return None
    return layer


def text_encoder_output(
    module: Any, ids: torch.Tensor, rule: EncoderRule, clip_layer: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One encoder's ``(hidden, pooled)`` for a batch of ids, by ComfyUI's rule.

    Args:
        module: ``CLIPTextModel``, ``CLIPTextModelWithProjection`` or ``T5EncoderModel``.
        ids: ``[k, L]`` token ids.
        rule: From `ENCODER_RULES`.
        clip_layer: ``CLIPSetLastLayer``'s layer, or None for the rule's default.

    Returns:
        ``hidden [k, L, width]`` float32 and ``pooled [k, P]`` (None for T5).
    """
    from comfyc.compiler.models.t5 import t5_hidden_state

    if rule.pooled is None:
        depth = int(module.config.num_layers)
        layer = _choose_layer(rule.layer, clip_layer, depth)
        return t5_hidden_state(module, ids, layer,
                               layer_norm_hidden_state=rule.layer_norm_hidden_state), None
    out = module(input_ids=ids, output_hidden_states=True)
    depth = len(out.hidden_states) - 1
    layer = _choose_layer(rule.layer, clip_layer, depth)
    if layer is None:
        hidden = out.last_hidden_state
    else:
        # NOTE: hidden_states[0] is the embedding output; layer i's output is hidden_states[i+1];
        # transformers applies the final norm only to last_hidden_state.
        hidden = out.hidden_states[layer if layer < 0 else layer + 1]
        if rule.layer_norm_hidden_state:
            hidden = getattr(module, "text_model", module).final_layer_norm(hidden)
    # NOTE: ComfyUI pools at num_tokens - 1, the first end token (its attention mask ends there).
    first_end = (ids == rule.end).int().argmax(dim=-1)
    pooled = out.last_hidden_state[torch.arange(ids.shape[0]), first_end]
    if rule.pooled == "projected":
        projection = getattr(module, "text_projection", None)
        if projection is None:
            raise ModelFormatError("CLIP-G needs its text_projection for the pooled output; the "
                                   "encoder has none")
        pooled = projection(pooled)
    return hidden.float(), pooled.float()


def encode_token_weights(
    run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]],
    tokens: TokenChunks,
    rule: EncoderRule,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ComfyUI's ``ClipTokenWeightEncoder.encode_token_weights`` for one prompt.

    Args:
        run: Encodes ``[k, L]`` ids to ``(hidden [k, L, W], pooled [k, P] | None)``.
        tokens: The prompt's chunks (possibly none: then the empty sequence alone is encoded,
            2 tokens for CLIP and 1 for T5, as ComfyUI does).
        rule: The encoder's rule (special tokens).

    Returns:
        ``(hidden [1, sum of chunk lengths, W], pooled [1, P] | None)``.
    """
    chunks = _as_chunks(tokens)
    longest = max((len(c) for c in chunks), default=0)
    weighted = any(w != 1.0 for chunk in chunks for _, w in chunk)
    batch = [[t for t, _ in chunk] for chunk in chunks]
    if weighted or not chunks:
        batch.append(_empty_tokens(rule, longest))
    with torch.no_grad():
        hidden, pooled = run(torch.tensor(batch, dtype=torch.long))
    first_pooled = None if pooled is None else pooled[0:1]
    if not chunks:
        return hidden[-1:], first_pooled
    outputs = []
    for k, chunk in enumerate(chunks):
        z = hidden[k : k + 1].clone()
        if weighted:
            empty = hidden[-1]
            for j, (_, weight) in enumerate(chunk):
                if weight != 1.0:
                    z[0, j] = (z[0, j] - empty[j]) * weight + empty[j]
        outputs.append(z)
    return torch.cat(outputs, dim=-2), first_pooled


def _encode(encoder: Any, clip_type: str, name: str, tokens: TokenChunks,
            clip_layer: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    rule = ENCODER_RULES[(clip_type, name)]
    module = encoder.module
    return encode_token_weights(
        lambda ids: text_encoder_output(module, ids, rule, clip_layer), tokens, rule)


def sd3_text_conditioning(
    encoders: Any,
    tokens: Mapping[str, TokenChunks],
    *,
    clip_layer: int | None = None,
    context_dim: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3/SD3.5 prompt encoding as ComfyUI's ``SD3ClipModel`` (see the module docstring).

    Args:
        encoders: A `comfyc.compiler.models.text_encoders.TextEncoders` (any of clip_l,
            clip_g, t5xxl present).
        tokens: ComfyUI's token dict for one prompt: ``{"l": chunks, "g": chunks, "t5xxl":
            chunks}`` (missing keys count as no tokens).
        clip_layer: ``CLIPSetLastLayer``'s ``stop_at_clip_layer`` (all encoders), or None.
        context_dim: Width to pad the CLIP part to; None uses T5's width (4096 for the real
            models; ComfyUI hard-codes 4096) or 4096 without T5.

    Returns:
        ``context [1, T, context_dim]`` and ``pooled [1, width_l + width_g]`` (2048), float32.
    """
    clip_l, clip_g, t5 = encoders.clip_l, encoders.clip_g, encoders.t5xxl
    width_l = clip_l.width if clip_l is not None else _CLIP_L_WIDTH
    width_g = clip_g.width if clip_g is not None else _CLIP_G_WIDTH
    if context_dim is None:
        context_dim = t5.width if t5 is not None else _T5_WIDTH
    tokens_l = _as_chunks(tokens.get("l", []))
    tokens_g = _as_chunks(tokens.get("g", []))
    clip_part = None
    pooled = None
    if tokens_l or tokens_g:
        if clip_l is not None:
            clip_part, l_pooled = _encode(clip_l, "sd3", "clip_l", tokens_l, clip_layer)
        else:
            l_pooled = torch.zeros(1, width_l)
        if clip_g is not None:
            g_out, g_pooled = _encode(clip_g, "sd3", "clip_g", tokens_g, clip_layer)
            if clip_part is not None:
                cut = min(clip_part.shape[1], g_out.shape[1])
                clip_part = torch.cat([clip_part[:, :cut], g_out[:, :cut]], dim=-1)
            else:
                clip_part = torch.nn.functional.pad(g_out, (width_l, 0))
        else:
            g_pooled = torch.zeros(1, width_g)
        if clip_part is not None:
            if clip_part.shape[-1] > context_dim:
                raise ModelFormatError(f"the CLIP part is {clip_part.shape[-1]} wide, more than "
                                       f"the context width {context_dim}")
            clip_part = torch.nn.functional.pad(clip_part, (0, context_dim - clip_part.shape[-1]))
        assert l_pooled is not None and g_pooled is not None  # pooled outputs always exist
        pooled = torch.cat([l_pooled, g_pooled], dim=-1)
    context = clip_part
    if t5 is not None:
        t5_out, _ = _encode(t5, "sd3", "t5xxl", tokens.get("t5xxl", []), clip_layer)
        context = t5_out if clip_part is None else torch.cat([clip_part, t5_out], dim=-2)
    if context is None:
        context = torch.zeros(1, 77, context_dim)
    if pooled is None:
        pooled = torch.zeros(1, width_l + width_g)
    return context.float(), pooled.float()


def flux_text_conditioning(
    encoders: Any,
    tokens: Mapping[str, TokenChunks],
    *,
    clip_layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux prompt encoding as ComfyUI's ``FluxClipModel`` (see the module docstring).

    Args:
        encoders: A `TextEncoders` with clip_l and t5xxl.
        tokens: ``{"l": CLIP-L chunks, "t5xxl": T5 chunks}`` for one prompt
            (``CLIPTextEncodeFlux`` tokenizes its two texts separately).
        clip_layer: ``CLIPSetLastLayer``'s layer, or None.

    Returns:
        ``context [1, n, 4096]`` (T5) and ``pooled [1, 768]`` (CLIP-L), float32.
    """
    if encoders.clip_l is None or encoders.t5xxl is None:
        raise ModelFormatError("Flux encodes prompts with clip_l and t5xxl; load both "
                               "(DualCLIPLoader type flux)")
    t5_out, _ = _encode(encoders.t5xxl, "flux", "t5xxl", tokens.get("t5xxl", []), clip_layer)
    _, pooled = _encode(encoders.clip_l, "flux", "clip_l", tokens.get("l", []), clip_layer)
    assert pooled is not None  # CLIP always pools
    return t5_out.float(), pooled.float()
