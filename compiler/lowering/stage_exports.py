"""ONNX export of the newer stage kinds: SD3's MMDiT and Flux as the diffusion stage, their
text encoders (CLIP with ComfyUI's unprojected pooled output, T5), and upscale networks.

Both go through :func:`comfyc.compiler.lowering.onnx_export._export` (weights streamed one
tensor at a time, external data above 100 MB, float16 storage options), with the inputs the
runtime passes:

=============  ===================================================================
stage          inputs → outputs
=============  ===================================================================
SD3 (MMDiT)    ``sample [B,16,h,w], timestep [B] (σ·1000), encoder_hidden_states
               [B,T,4096], y [B,2048]`` → ``out_sample`` (flow prediction)
Flux           the same with ``timestep`` = σ, ``y [B,768]`` and, for dev,
               ``guidance [B]``
CLIP (flow)    ``input_ids [B,77]`` → ``last_hidden_state, pooled_output``
T5             ``input_ids [B,L]`` (L free: 77/256 or longer) → ``last_hidden_state,
               pooled_output`` (zeros ``[B,1]``: T5 has none)
=============  ===================================================================

Upscale models (ESRGAN, Compact, SwinIR) are exported here too, by their loader's function.

A transformer is exported at one latent size: Flux's rotary position table and both models'
patch padding are computed from the shape while tracing, so the graph holds them for that
size. A workflow sampling at several sizes keeps this stage on PyTorch (the artifact says why).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .onnx_export import (
    ExportError,
    Progress,
    _export,
    _require_torch,
    no_embeddings,
    splice_embeddings,
)

__all__ = ["export_dit", "export_flow_text_encoder", "export_upscale"]


def export_dit(
    module: Any,
    path: str | Path,
    *,
    shape: Sequence[Sequence[int]],
    extra_inputs: Sequence[str],
    fp16: bool = False,
    dynamic: bool = False,
    external_data: bool | None = None,
    progress: Progress | None = None,
    compact: bool = False,
) -> dict[str, Any]:
    """Export a flow transformer (``Sd3Model`` / ``FluxModel``: ComfyUI's call signature).

    Args:
        module: The wrapped transformer (not modified).
        path: The ``.onnx`` file to write.
        shape: The recorded call shapes: sample, timestep, context, then one per extra input.
        extra_inputs: The extra inputs' names in call order (``y``, ``guidance``).
        fp16: Compute and store float16.
        dynamic: Must be False (see the module docstring).
        external_data: As :func:`~comfyc.compiler.lowering.onnx_export.export_unet`.
        progress: One line per step.
        compact: Store float16-exact weights as float16.

    Returns:
        The export facts.

    Raises:
        ExportError: Several latent sizes, or the export failed.
    """
    torch = _require_torch()
    if dynamic:
        raise ExportError("a flow transformer exports at one latent size (its rotary position "
                          "table is computed from the size); compile for one size, or keep "
                          "this stage on torch")
    # NOTE: the runtime passes every extra the family makes (Flux's guidance even to
    # schnell); the stage takes the ones its model has.
    sizes = [tuple(int(v) for v in s) for s in shape][:3 + len(extra_inputs)]
    if len(sizes) != 3 + len(extra_inputs):
        raise ExportError(f"the diffusion stage was called with {len(sizes)} inputs; expected "
                          f"sample, timestep, context and {', '.join(extra_inputs)}")
    dtype = torch.float16 if fp16 else torch.float32
    generator = torch.Generator().manual_seed(0)
    example = []
    for index, size in enumerate(sizes):
        if index == 1:
            example.append(torch.full(size, 0.5))
        else:
            example.append(torch.randn(*size, generator=generator))
    names = ("sample", "timestep", "encoder_hidden_states", *extra_inputs)

    def call(m: Any, sample: Any, timestep: Any, context: Any, *extras: Any) -> Any:
        more = [e.to(dtype) for e in extras]
        out = m(sample.to(dtype), timestep.to(dtype), context.to(dtype), *more)
        return out.float()

    with _decomposed_rms_norm(torch):
        return _export(module, call, tuple(example), path, kind="unet", fp16=fp16, axes=None,
                       external_data=external_data, progress=progress,
                       metadata={"arch": "dit"}, input_names=names,
                       output_names=("out_sample",), compact=compact)


class _decomposed_rms_norm:  # noqa: N801 - a context manager used like a function
    """``torch.nn.RMSNorm`` written out while tracing (Flux's q/k norms): the legacy exporter
    has no symbolic for ``aten::rms_norm`` before opset 23. Same formula as torch's:
    ``x · rsqrt(mean(x²) + eps) · weight`` (eps defaults to the dtype's machine epsilon)."""

    def __init__(self, torch: Any) -> None:
        self.cls = torch.nn.RMSNorm
        self.original = self.cls.forward
        self.torch = torch

    def __enter__(self) -> None:
        torch = self.torch

        def forward(norm: Any, x: Any) -> Any:
            eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
            dims = tuple(range(-len(norm.normalized_shape), 0))
            out = x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps)
            return out * norm.weight if norm.weight is not None else out

        self.cls.forward = forward

    def __exit__(self, *exc: Any) -> None:
        self.cls.forward = self.original


def export_flow_text_encoder(
    module: Any,
    path: str | Path,
    *,
    layer: int = -1,
    layer_norm: bool = True,
    projected: bool = True,
    t5: bool = False,
    fp16: bool = False,
    external_data: bool | None = None,
    progress: Progress | None = None,
    compact: bool = False,
    example_length: int = 77,
) -> dict[str, Any]:
    """Export an SD3/Flux text encoder as the runtime's ``text_encoder`` stage.

    CLIP: hidden layer ``layer`` (the final norm applied when ``layer_norm``), pooled output
    at the first end token, projected only when ``projected`` (SD3's CLIP-G); the same rules as
    :class:`~comfyc.runtime.backends.torch.TorchTextEncoder`. T5 (``t5``): the last layer after
    its final norm, or block ``layer`` through the final norm; token count free.

    Raises:
        ExportError: The module is not a CLIP / T5 encoder, or the export failed.
    """
    torch = _require_torch()
    config = getattr(module, "config", None)
    if config is None:
        raise ExportError(f"export_flow_text_encoder got a {type(module).__name__}")
    if t5:
        blocks = module.encoder.block
        depth = len(blocks)
        index = None if layer == -1 or abs(layer) > depth else depth + layer

        def call(m: Any, input_ids: Any) -> tuple[Any, Any]:
            if index is None:
                hidden = m(input_ids=input_ids).last_hidden_state
            else:
                out = m(input_ids=input_ids, output_hidden_states=True)
                # NOTE: hidden_states[i] is block i's input; block i's output is entry i+1
                # (the last entry is already normed: index < depth here).
                hidden = m.encoder.final_layer_norm(out.hidden_states[index + 1])
            pooled = torch.zeros(input_ids.shape[0], 1, dtype=hidden.dtype)
            return hidden.float(), pooled.float()

        ids = torch.zeros(2, example_length, dtype=torch.int64)
        ids[:, :3] = torch.tensor([71, 1712, 1])
        axes = {"input_ids": {0: "batch", 1: "tokens"},
                "last_hidden_state": {0: "batch", 1: "tokens"}, "pooled_output": {0: "batch"}}
        return _export(module, call, (ids,), path, kind="text_encoder", fp16=fp16, axes=axes,
                       external_data=external_data, progress=progress,
                       metadata={"clip_layer": str(layer), "encoder": "t5"},
                       input_names=("input_ids",), compact=compact)

    layers = int(config.num_hidden_layers)
    index = layer if -layers <= layer < 0 else -1

    def call(m: Any, input_ids: Any) -> tuple[Any, Any]:  # type: ignore[misc]
        out = m(input_ids=input_ids, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[index]
        if layer_norm:
            hidden = getattr(m, "text_model", m).final_layer_norm(hidden)
        pooled = getattr(out, "text_embeds", None) if projected else None
        if pooled is None:
            first_end = (input_ids == 49407).int().argmax(dim=-1)
            pooled = out.last_hidden_state[torch.arange(input_ids.shape[0]), first_end]
        return hidden.float(), pooled.float()

    seq = int(config.max_position_embeddings)
    ids = torch.full((2, seq), 49407, dtype=torch.int64)
    ids[:, 0] = 49406
    ids[:, 1:4] = torch.tensor([320, 1125, 539])
    axes = {"input_ids": {0: "batch"}, "embeds": {0: "batch"},
            "last_hidden_state": {0: "batch"}, "pooled_output": {0: "batch"}}
    return _export(module, splice_embeddings(call), (ids, no_embeddings(ids, config.hidden_size)),
                   path, kind="text_encoder", fp16=fp16, axes=axes,
                   external_data=external_data, progress=progress,
                   metadata={"clip_layer": str(index)}, compact=compact)


def info_wants_flow_export(kind: str, info: Mapping[str, Any]) -> bool:
    """True for stages this module exports (flow transformers and flow text encoders)."""
    if kind == "unet":
        return info.get("arch") == "dit"
    if kind == "text_encoder":
        return "projected" in info or info.get("tokenizer") == "t5"
    return False


def export_upscale(network: Any, path: str | Path, info: Mapping[str, Any]) -> dict[str, Any]:
    """An upscale model's bare network as the ``upscale`` stage (dynamic height and width;
    :func:`comfyc.compiler.models.upscale.export_upscale_onnx`), from the stage's facts."""
    from comfyc.compiler.models.upscale import UpscaleModel, UpscaleSpec, export_upscale_onnx

    spec = UpscaleSpec(str(info.get("architecture", "")), int(info.get("scale", 1)),
                       int(info.get("in_channels", 3)), int(info.get("out_channels", 3)),
                       int(info.get("size_minimum", 0)), int(info.get("size_multiple", 1)),
                       int(info.get("network_multiple", 1)))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return export_upscale_onnx(UpscaleModel(network, spec), path)


def _call_with_most_inputs(rec: Any) -> tuple[tuple[tuple[int, ...], ...], tuple[str, ...]]:
    """The recorded call with the most inputs (a UNet call with control residuals) and its
    keyword names."""
    index = max(range(len(rec.shapes)), key=lambda i: len(rec.shapes[i]))
    names = rec.names[index] if getattr(rec, "names", None) else ()
    return rec.shapes[index], tuple(names)


def _halvings(size: int, target: int) -> int:
    count = 0
    while size > target:
        size = -(-size // 2)
        count += 1
    return count


def export_control_stage(kind: str, module: Any, path: str | Path, rec: Any, *,
                         fp16: bool = False, dynamic: bool = False,
                         external_data: bool | None = None, progress: Progress | None = None,
                         compact: bool = False) -> dict[str, Any]:
    """A ControlNet (``controlnet``), a T2I-Adapter (``t2i_adapter``) or a UNet that takes
    their residuals (``unet`` with ``control_*`` inputs) as an ONNX stage.

    The UNet's extra inputs are the recorded call's keywords (SDXL's ``y``, then
    ``control_down_0 … control_mid``, ``control_intra_0 …``); the facts' ``control_inputs``
    (channels, size halvings) let the runtime feed zeros on rows without an active control.

    Raises:
        ExportError: The module or the recorded call does not fit.
    """
    torch = _require_torch()
    dtype = torch.float16 if fp16 else torch.float32
    shapes, names = _call_with_most_inputs(rec)
    generator = torch.Generator().manual_seed(0)

    def tensor(shape: Sequence[int], index: int) -> Any:
        if index == 2 and kind == "controlnet" or index == 1 and kind == "unet":
            return torch.full(tuple(shape), 500.0)
        return torch.rand(*shape, generator=generator)

    example = tuple(tensor(shape, i) for i, shape in enumerate(shapes))
    batch_axes: dict[str, dict[int, str]] = {}
    facts_extra: dict[str, Any] = {}
    if kind == "t2i_adapter":
        input_names: tuple[str, ...] = ("hint",)
        output_names = tuple(module.output_names())

        def call(m: Any, hint: Any) -> Any:
            return tuple(o.float() for o in m(hint.to(dtype)))

        batch_axes = {"hint": {0: "batch", 2: "height", 3: "width"},
                      **{n: {0: "batch", 2: f"{n}_h", 3: f"{n}_w"} for n in output_names}}
    elif kind == "controlnet":
        input_names = ("sample", "hint", "timestep", "encoder_hidden_states")
        if len(shapes) == 5:
            input_names = (*input_names, "y")
        output_names = tuple(module.output_names())

        def call(m: Any, *inputs: Any) -> Any:  # type: ignore[misc]
            cast = [x.to(dtype) if i != 2 else x for i, x in enumerate(inputs)]
            return tuple(o.float() for o in m(*cast))

        batch_axes = {"sample": {0: "batch", 2: "height", 3: "width"},
                      "hint": {0: "batch", 2: "hint_height", 3: "hint_width"},
                      "timestep": {0: "batch"}, "encoder_hidden_states": {0: "batch"},
                      **({"y": {0: "batch"}} if "y" in input_names else {}),
                      **{n: {0: "batch", 2: f"{n}_h", 3: f"{n}_w"} for n in output_names}}
    else:
        config = getattr(getattr(module, "unet", module), "config", None)
        if config is None or not hasattr(config, "cross_attention_dim"):
            raise ExportError(f"a UNet with ControlNet inputs must be a diffusers UNet; got "
                              f"{type(module).__name__}")
        extras = names
        if len(shapes) != 3 + len(extras):
            raise ExportError("the recorded UNet call does not match its keyword inputs")
        input_names = ("sample", "timestep", "encoder_hidden_states", *extras)
        output_names = ("out_sample",)
        sdxl = getattr(config, "addition_embed_type", None) == "text_time"
        source = module
        split = 0
        if sdxl:
            from comfyc.runtime.backends.torch import ADM_TIME_EMBED_DIM, adm_unet

            source = adm_unet(getattr(module, "unet", module)).unet
            split = int(config.projection_class_embeddings_input_dim) - ADM_TIME_EMBED_DIM
        module = source
        downs = sorted((n for n in extras if n.startswith("control_down_")),
                       key=lambda n: int(n.rsplit("_", 1)[1]))
        intras = sorted((n for n in extras if n.startswith("control_intra_")),
                        key=lambda n: int(n.rsplit("_", 1)[1]))

        def call(m: Any, sample: Any, timestep: Any, context: Any,  # type: ignore[misc]
                 *more: Any) -> Any:
            named = dict(zip(extras, more, strict=True))
            kwargs: dict[str, Any] = {}
            if downs:
                kwargs["down_block_additional_residuals"] = tuple(named[n].to(dtype)
                                                                  for n in downs)
            if "control_mid" in named:
                kwargs["mid_block_additional_residual"] = named["control_mid"].to(dtype)
            if intras:
                kwargs["down_intrablock_additional_residuals"] = [named[n].to(dtype)
                                                                  for n in intras]
            if sdxl:
                y = named["y"].to(dtype)
                kwargs["added_cond_kwargs"] = {"text_embeds": y[:, :split],
                                               "time_ids": y[:, split:]}
            out = m(sample.to(dtype), timestep, encoder_hidden_states=context.to(dtype),
                    return_dict=False, **kwargs)[0]
            return out.float()

        sample_h = shapes[0][2]
        facts_extra["control_inputs"] = {
            n: [int(shapes[3 + i][1]), _halvings(int(sample_h), int(shapes[3 + i][2]))]
            for i, n in enumerate(extras) if n.startswith("control_")}
        batch_axes = {"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
                      "encoder_hidden_states": {0: "batch", 1: "context_len"},
                      "out_sample": {0: "batch", 2: "height", 3: "width"},
                      **{n: {0: "batch"} for n in extras if not n.startswith("control_")},
                      **{n: {0: "batch", 2: f"{n}_h", 3: f"{n}_w"} for n in extras
                         if n.startswith("control_")}}
    facts = _export(module, call, example, path, kind=kind, fp16=fp16,
                    axes=batch_axes if dynamic else None, external_data=external_data,
                    progress=progress, metadata={}, input_names=input_names,
                    output_names=output_names, trace_axes=batch_axes if dynamic else None,
                    compact=compact)
    facts.update(facts_extra)
    return facts
