"""T5 text encoders (T5-XXL v1.1 for SD3 and Flux, and relatives) as transformers modules.

ComfyUI stores T5 encoders with transformers' own names (``t5xxl_fp16.safetensors``,
``t5xxl_fp8_e4m3fn.safetensors``; ``text_encoders.t5xxl.transformer.*`` in all-in-one
checkpoints): ``shared.weight`` (the token embedding), ``encoder.block.N.layer.0.SelfAttention.
{q,k,v,o}.weight`` (no biases), ``encoder.block.0.layer.0.SelfAttention.relative_attention_bias.
weight`` (only in block 0), ``encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight`` and
``encoder.final_layer_norm.weight``. The architecture follows from the shapes:

* ``shared.weight`` ``[vocab, d_model]``: 32128 x 4096 for T5-XXL;
* ``relative_attention_bias.weight`` ``[buckets, heads]``: 32 buckets, 64 heads;
  ``d_kv = q.weight.shape[0] / heads`` (64);
* ``wi_0``/``wi_1`` present: the gated feed-forward of T5 v1.1 (``d_ff`` 10240 for XXL, tanh
  GELU); a single ``wi``: the original T5's ReLU feed-forward (ComfyUI's "T5_XXL_OLD").

ComfyUI computes the gated activation with ``torch.nn.functional.gelu(approximate="tanh")``;
the modules built here use transformers' ``gelu_pytorch_tanh`` (the same function) rather than
``gelu_new`` (the same formula written out, which differs in the last float32 bits). The
published T5 v1.1 config says ``gelu_new``.

How ComfyUI uses T5 for SD3 and Flux (``comfy/text_encoders/sd3_clip.py`` ``T5XXLModel``): the
last hidden state after ``final_layer_norm`` (``layer="last"``), no attention mask (padding
tokens are attended to), no pooled output; ``CLIPSetLastLayer`` applies to T5 too and then takes
an earlier block's output through the final norm (`t5_hidden_state`).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from comfyc.compiler.models.errors import ModelFormatError
from comfyc.compiler.models.weights import is_fp8

__all__ = [
    "T5XXL_CONFIG",
    "build_t5_encoder",
    "infer_t5_config",
    "is_t5_state",
    "t5_from_state_dict",
    "t5_hidden_state",
    "t5_kind",
    "t5_state_dict",
]

#: The published ``google/t5-v1_1-xxl`` encoder (what SD3 and Flux use), transformers names.
T5XXL_CONFIG: dict[str, Any] = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
    "num_heads": 64, "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu_pytorch_tanh",
    "layer_norm_epsilon": 1e-6, "dropout_rate": 0.1, "is_encoder_decoder": False,
    "use_cache": False, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0,
    "tie_word_embeddings": False,
}
_PUBLISHED_KINDS = {(4096, 10240, True): "t5xxl", (2048, 5120, True): "t5xl"}
_BLOCK = "encoder.block."


def is_t5_state(state: Mapping[str, Any]) -> bool:
    """True for T5 encoder weights in transformers' names (prefix removed)."""
    return "encoder.block.0.layer.0.SelfAttention.q.weight" in state


def _shape(state: Mapping[str, Any], key: str) -> tuple[int, ...]:
    tensor = state.get(key)
    if tensor is None:
        raise ModelFormatError(f"the T5 encoder has no weight {key!r}; the file is incomplete "
                               "or not a T5 encoder")
    return tuple(int(d) for d in tensor.shape)


def infer_t5_config(state: Mapping[str, Any]) -> dict[str, Any]:
    """A transformers ``T5Config`` (encoder only) from T5 weights.

    Args:
        state: T5 weights with transformers' names (``shared.weight``, ``encoder.block.*``);
            only ``.shape`` is used.

    Returns:
        ``T5Config`` keyword arguments.

    Raises:
        ModelFormatError: Not a T5 encoder, or a UMT5 (relative bias in every block).
    """
    embed_key = "shared.weight" if "shared.weight" in state else "encoder.embed_tokens.weight"
    vocab, width = _shape(state, embed_key)
    bias = _shape(state, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in state:
        raise ModelFormatError("the T5 encoder has a relative attention bias in every block "
                               "(UMT5, e.g. Wan's text encoder); comfyc supports T5 / T5 v1.1")
    buckets, heads = bias
    inner = _shape(state, "encoder.block.0.layer.0.SelfAttention.q.weight")[0]
    layers = len({int(m.group(1)) for k in state if (m := re.match(r"encoder\.block\.(\d+)\.", k))})
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state
    ff_key = "wi_0" if gated else "wi"
    d_ff = _shape(state, f"encoder.block.0.layer.1.DenseReluDense.{ff_key}.weight")[0]
    return {
        **T5XXL_CONFIG, "vocab_size": vocab, "d_model": width, "d_kv": inner // heads,
        "d_ff": d_ff, "num_layers": layers, "num_heads": heads,
        "relative_attention_num_buckets": buckets,
        "feed_forward_proj": "gated-gelu_pytorch_tanh" if gated else "relu",
    }


def t5_kind(config: Mapping[str, Any]) -> str:
    """ComfyUI's name for a T5 encoder: ``"t5xxl"`` (gated, T5 v1.1 structure; also comfyc's
    reduced ones), ``"t5xl"`` (v1.1 XL widths) or ``"t5_old"`` (original ReLU T5)."""
    gated = str(config["feed_forward_proj"]).startswith("gated")
    published = _PUBLISHED_KINDS.get((int(config["d_model"]), int(config["d_ff"]), gated))
    if published is not None:
        return published
    return "t5xxl" if gated else "t5_old"


def build_t5_encoder(config: Mapping[str, Any], *, device: str = "meta") -> Any:
    """A transformers ``T5EncoderModel`` for a config (on the meta device unless told)."""
    from transformers import T5Config, T5EncoderModel

    with torch.device(device):
        model = T5EncoderModel(T5Config(**dict(config)))
    # NOTE: the encoder looks tokens up in encoder.embed_tokens, which is the shared embedding
    # (one tensor; files store it once as shared.weight).
    model.encoder.embed_tokens = model.shared
    return model


def t5_state_dict(module: Any) -> dict[str, torch.Tensor]:
    """A T5 encoder's weights as ComfyUI files hold them: ``shared.weight`` and ``encoder.*``,
    without the duplicate ``encoder.embed_tokens.weight`` (the same tensor as ``shared``)."""
    return {k: v for k, v in module.state_dict().items() if k != "encoder.embed_tokens.weight"}


def t5_from_state_dict(
    state: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype | None = torch.float32,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """Builds a ``T5EncoderModel`` from T5 weights (transformers names, prefix removed).

    Decoder weights of full encoder-decoder checkpoints (``decoder.*``, ``lm_head.*``) are
    ignored.

    Args:
        state: The weights (floating dtypes, fp8 included, are converted to `dtype`).
        dtype: Floating dtype of the module (None keeps the file's).
        overrides: Config entries replacing the inferred ones (comfyc metadata).

    Returns:
        The encoder in eval mode.

    Raises:
        ModelFormatError: Weights that do not fit the inferred architecture.
    """
    from comfyc.compiler.models.single_file import _own, _populate
    from comfyc.compiler.models.weights import WeightSource

    shapes = state.shape_table() if isinstance(state, WeightSource) else state
    config = infer_t5_config(shapes)
    config.update(overrides or {})
    model = build_t5_encoder(config)
    weights: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(("decoder.", "lm_head.")) or key == "encoder.embed_tokens.weight":
            continue
        weights[key] = _own(tensor.float() if is_fp8(tensor) else tensor, dtype)
    if "shared.weight" not in weights and "encoder.embed_tokens.weight" in state:
        tensor = state["encoder.embed_tokens.weight"]
        weights["shared.weight"] = _own(tensor.float() if is_fp8(tensor) else tensor, dtype)
    # NOTE: the encoder's embed_tokens is the shared embedding (tied); load it once.
    weights["encoder.embed_tokens.weight"] = weights["shared.weight"]
    model = _populate(model, weights, "T5 text encoder")
    model.encoder.embed_tokens = model.shared
    return model


def t5_hidden_state(
    model: Any,
    ids: torch.Tensor,
    layer: int | None = None,
    *,
    layer_norm_hidden_state: bool = True,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """A T5 encoder's output as ComfyUI's ``T5XXLModel`` computes it.

    Args:
        model: ``T5EncoderModel``.
        ids: ``[B, T]`` token ids.
        layer: None (default, the last layer after ``final_layer_norm``) or ComfyUI's
            ``layer_idx``: -1 the last block, -2 the one before, ...; 0, 1, ... count from the
            first block. Beyond the depth means the last layer (ComfyUI's ``"last"``).
        layer_norm_hidden_state: Apply ``final_layer_norm`` to a chosen block's output
            (ComfyUI's default for T5: True).
        attention_mask: ``[B, T]`` 1/0 mask; ComfyUI's SD3 and Flux encoders use none.

    Returns:
        ``[B, T, d_model]`` float32.
    """
    depth = int(model.config.num_layers)
    if layer is None or abs(layer) > depth:
        out = model(input_ids=ids, attention_mask=attention_mask)
        return out.last_hidden_state.float()
    index = layer if layer >= 0 else depth + layer
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: Any, _args: Any, output: Any) -> None:
        captured["hidden"] = output[0] if isinstance(output, tuple) else output

    # NOTE: transformers' hidden_states tuple holds the last block's output only after the final
    # norm; a hook on the block reads the raw output, which ComfyUI may use without the norm.
    handle = model.encoder.block[index].register_forward_hook(keep)
    try:
        model(input_ids=ids, attention_mask=attention_mask)
    finally:
        handle.remove()
    hidden = captured["hidden"]
    if layer_norm_hidden_state:
        hidden = model.encoder.final_layer_norm(hidden)
    return hidden.float()
