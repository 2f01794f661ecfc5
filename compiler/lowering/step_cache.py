"""Step caching (DeepCache): a UNet split into a full stage and a shallow stage, exported.

Adjacent sampling steps change the UNet's deep, low-resolution features little (Ma et al.,
"DeepCache: Accelerating Diffusion Models for Free", CVPR 2024). So every ``interval``
steps the whole UNet runs and also returns the hidden state that enters its last
(highest-resolution) up layers — the *deep features*; the steps in between run only the
shallow part: ``conv_in``, the first ``skip - 1`` layers of the first down block, and the
last ``skip`` layers of the last up block, which take the cached deep features in place of
everything below them. The skip connections of the shallow layers are computed fresh.

Counting the top-level skip connections (``conv_in``'s output is the first)::

    skip=1   conv_in ........................................ up[-1] last layer -> out
    skip=2   conv_in, down[0] layer 0 ............... up[-1] last two layers -> out
    skip=L   conv_in, down[0] layers 0..L-2 ...... all L layers of up[-1] -> out

For SD1.5 at 512 px, the shallow part of ``skip=1`` is about a tenth of the UNet's work.
The split forward below follows diffusers' ``UNet2DConditionModel.forward`` op for op (same
modules, same order), so the full stage computes exactly what the plain UNet computes; a
test checks that. It covers the SD1.x/SD2.x/SDXL UNets (no ControlNet residuals, FreeU,
GLIGEN or class embeddings).

The two ONNX files share one weight file: the shallow graph's initializers point into the
full graph's ``NAME.onnx.data`` (see ``shared`` in :func:`~.onnx_export._export`), so an
artifact still holds each weight once. Results are an approximation: the manifest says so
(``options.step_cache``, ``approximate``), it is never on by default, and ``comfyc bench
--step-cache`` measures its cost against the exact artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ExportError
from . import onnx_export

__all__ = ["DEEP_FEATURES", "check_split", "export_unet_step_cache", "split_forward"]

#: The name of the full stage's extra output and the shallow stage's extra input.
DEEP_FEATURES = "deep_features"


def _layers(block: Any) -> list[tuple[Any, Any]]:
    """A block's ``(resnet, attention or None)`` layers in order."""
    attentions = list(getattr(block, "attentions", None) or [])
    resnets = list(block.resnets)
    return list(zip(resnets, attentions + [None] * (len(resnets) - len(attentions)),
                    strict=True))


def _layer(torch: Any, resnet: Any, attention: Any, hidden: Any, emb: Any,
           context: Any) -> Any:
    hidden = resnet(hidden, emb)
    if attention is not None:
        hidden = attention(hidden, encoder_hidden_states=context, return_dict=False)[0]
    return hidden


def check_split(unet: Any, skip: int) -> None:
    """Raise ExportError unless ``unet`` can be split at ``skip`` (see the module docs)."""
    if not hasattr(unet, "down_blocks") or not hasattr(unet, "up_blocks"):
        raise ExportError(f"step caching splits a diffusers UNet2DConditionModel; got a "
                          f"{type(unet).__name__}")
    last = unet.up_blocks[-1]
    deepest = len(last.resnets)
    if not 1 <= skip <= deepest or skip - 1 > len(unet.down_blocks[0].resnets):
        raise ExportError(f"step-cache skip {skip} does not fit this UNet; expected 1 to "
                          f"{deepest} (the layers of its last up block)")
    if getattr(last, "upsamplers", None):
        raise ExportError("step caching needs a UNet whose last up block does not upsample")


def split_forward(unet: Any, sample: Any, timestep: Any, context: Any,
                  added_cond_kwargs: dict[str, Any] | None = None, *, skip: int,
                  deep: Any = None) -> tuple[Any, Any]:
    """The UNet with its deep features: ``(out_sample, deep_features)``.

    Args:
        unet: A diffusers ``UNet2DConditionModel``.
        sample: The latent input ``[B, C, h, w]``.
        timestep: ``[B]`` timesteps.
        context: ``[B, T, D]`` cross-attention context.
        added_cond_kwargs: SDXL's ``text_embeds`` and ``time_ids``.
        skip: Top-level skip connections computed in the shallow part.
        deep: Cached deep features: run only the shallow part with them (the second
            result is then ``deep`` itself).
    """
    import torch

    factor = 2 ** unet.num_upsamplers
    forward_size = any(int(d) % factor for d in sample.shape[-2:])
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=context,
                             added_cond_kwargs=added_cond_kwargs or {})
    emb = emb + aug if aug is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    context = unet.process_encoder_hidden_states(encoder_hidden_states=context,
                                                 added_cond_kwargs=added_cond_kwargs or {})
    hidden = unet.conv_in(sample)
    res = [hidden]
    first = _layers(unet.down_blocks[0])
    for resnet, attention in first[:skip - 1]:
        hidden = _layer(torch, resnet, attention, hidden, emb, context)
        res.append(hidden)
    ups = _layers(unet.up_blocks[-1])
    if deep is None:
        for resnet, attention in first[skip - 1:]:
            hidden = _layer(torch, resnet, attention, hidden, emb, context)
            res.append(hidden)
        for downsampler in unet.down_blocks[0].downsamplers or []:
            hidden = downsampler(hidden)
            res.append(hidden)
        for block in unet.down_blocks[1:]:
            if getattr(block, "has_cross_attention", False):
                hidden, more = block(hidden_states=hidden, temb=emb,
                                     encoder_hidden_states=context)
            else:
                hidden, more = block(hidden_states=hidden, temb=emb)
            res.extend(more)
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                hidden = unet.mid_block(hidden, emb, encoder_hidden_states=context)
            else:
                hidden = unet.mid_block(hidden, emb)
        for block in unet.up_blocks[:-1]:
            count = len(block.resnets)
            taken, res = tuple(res[-count:]), res[:-count]
            size = res[-1].shape[2:] if forward_size else None
            if getattr(block, "has_cross_attention", False):
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=taken,
                               encoder_hidden_states=context, upsample_size=size)
            else:
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=taken,
                               upsample_size=size)
        for resnet, attention in ups[:len(ups) - skip]:
            hidden = torch.cat([hidden, res.pop()], dim=1)
            hidden = _layer(torch, resnet, attention, hidden, emb, context)
        deep = hidden
    else:
        hidden = deep
    for resnet, attention in ups[len(ups) - skip:]:
        hidden = torch.cat([hidden, res.pop()], dim=1)
        hidden = _layer(torch, resnet, attention, hidden, emb, context)
    if unet.conv_norm_out is not None:
        hidden = unet.conv_act(unet.conv_norm_out(hidden))
    return unet.conv_out(hidden), deep


def export_unet_step_cache(
    module: Any,
    path: str | Path,
    shallow_path: str | Path,
    *,
    skip: int,
    batch: int,
    height: int,
    width: int,
    context_len: int = 77,
    fp16: bool = False,
    dynamic: bool = False,
    compact: bool = False,
    progress: onnx_export.Progress | None = None,
) -> dict[str, Any]:
    """Export the full and shallow UNet stages of step caching (two files, one weight file).

    ``path`` is the full stage: the ``unet`` stage's inputs and outputs plus the output
    ``deep_features``. ``shallow_path`` takes the ``unet`` inputs plus ``deep_features`` and
    returns ``out_sample``; its weights are read from ``path``'s data file. Arguments are as
    for :func:`~.onnx_export.export_unet`.

    Returns:
        The full stage's facts, with ``shallow`` (the shallow stage's facts) and
        ``step_cache_skip``.

    Raises:
        ExportError: The UNet cannot be split at ``skip``, or export failed.
    """
    torch = onnx_export._require_torch()
    unet = getattr(module, "unet", module) if hasattr(module, "adm_in_channels") else module
    config = getattr(unet, "config", None)
    if config is None or not hasattr(config, "cross_attention_dim"):
        raise ExportError(f"export_unet_step_cache got a {type(module).__name__}, expected a "
                          "diffusers UNet2DConditionModel")
    check_split(unet, skip)
    onnx_export._check_positive(batch=batch, height=height, width=width,
                                context_len=context_len)
    dim = config.cross_attention_dim
    context_dim = int(dim if isinstance(dim, int) else dim[0])
    channels = int(config.in_channels)
    dtype = torch.float16 if fp16 else torch.float32
    sdxl = getattr(config, "addition_embed_type", None) == "text_time"
    generator = torch.Generator().manual_seed(0)
    odd = onnx_export._TRACE_LATENT

    def inputs(rows: int, h: int, w: int) -> tuple[Any, ...]:
        out = (torch.randn(rows, channels, h, w, generator=generator),
               torch.full((rows,), 500.0),
               torch.randn(rows, context_len, context_dim, generator=generator))
        if sdxl:
            width_y = int(config.projection_class_embeddings_input_dim)
            out = (*out, torch.randn(rows, width_y, generator=generator))
        return out

    def added(y: Any) -> dict[str, Any] | None:
        if y is None:
            return None
        from comfyc.runtime.backends.torch import ADM_TIME_EMBED_DIM

        split = y.shape[1] - ADM_TIME_EMBED_DIM
        return {"text_embeds": y[:, :split].to(dtype), "time_ids": y[:, split:].to(dtype)}

    def full(m: Any, sample: Any, timestep: Any, context: Any, y: Any = None) -> Any:
        out, deep = split_forward(m, sample.to(dtype), timestep, context.to(dtype), added(y),
                                  skip=skip)
        return out.float(), deep.float()

    def shallow(m: Any, sample: Any, timestep: Any, context: Any, *rest: Any) -> Any:
        y, deep = (rest[0], rest[1]) if sdxl else (None, rest[0])
        out, _ = split_forward(m, sample.to(dtype), timestep, context.to(dtype), added(y),
                               skip=skip, deep=deep.to(dtype))
        return out.float()

    names = ("sample", "timestep", "encoder_hidden_states") + (("y",) if sdxl else ())
    axes: dict[str, dict[int, str]] = {
        "sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch", 1: "context_len"},
        "out_sample": {0: "batch", 2: "height", 3: "width"},
        DEEP_FEATURES: {0: "batch", 2: "height", 3: "width"}}
    if sdxl:
        axes["y"] = {0: "batch"}
    example, trace = inputs(batch, height, width), inputs(max(batch, 2), odd, odd)
    facts = onnx_export._export(
        unet, full, example, path, kind="unet", fp16=fp16, axes=axes if dynamic else None,
        external_data=True, progress=progress, metadata={"step_cache_skip": str(skip)},
        input_names=names, output_names=("out_sample", DEEP_FEATURES), trace_example=trace,
        trace_axes=axes, compact=compact)
    deep_shape = next(o["shape"] for o in facts["outputs"] if o["name"] == DEEP_FEATURES)
    deep_channels = int(deep_shape[1])
    example = (*example, torch.randn(batch, deep_channels, height, width, generator=generator))
    trace = (*trace, torch.randn(max(batch, 2), deep_channels, odd, odd, generator=generator))
    facts["shallow"] = onnx_export._export(
        unet, shallow, example, shallow_path, kind="unet", fp16=fp16,
        axes=axes if dynamic else None, external_data=True, progress=progress,
        metadata={"step_cache_skip": str(skip), "step_cache_part": "shallow"},
        input_names=(*names, DEEP_FEATURES), output_names=("out_sample",),
        trace_example=trace, trace_axes=axes, compact=compact, shared=Path(path))
    facts["step_cache_skip"] = skip
    return facts
