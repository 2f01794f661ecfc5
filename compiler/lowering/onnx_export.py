"""Export model stages (diffusers/transformers torch modules) to ONNX files.

One function per stage kind; each writes one ``.onnx`` file (plus ``NAME.onnx.data`` beside it
when the weights are large), checks it with ``onnx.checker`` and returns a small dict of facts
for the manifest. The ONNX graphs compute exactly what the PyTorch stages of
:mod:`comfyc.runtime.backends.torch` compute, with these stable input/output names
(:data:`STAGE_IO`)::

    unet          sample[B,C,h,w] f32, timestep[B] f32, encoder_hidden_states[B,T,D] f32
                  -> out_sample[B,C,h,w] f32
    text_encoder  input_ids[B,77] int64, embeds[B,77,D] f32
                  -> last_hidden_state[B,77,D], pooled_output[B,D] f32
                  (embeds: textual-inversion vectors, used where input_ids is -1)
    vae_decoder   latent[B,4,h,w] f32 (raw) -> image[B,3,H,W] f32 in [-1, 1]
    vae_encoder   image[B,3,H,W] f32 in [-1, 1] -> latent[B,4,h,w] f32 (posterior mean, raw)

Choices, with the measurements behind them in ``reference/spikes.md`` §4:

* The legacy TorchScript exporter (``dynamo=False``, opset 18): 15-20x faster to export than
  dynamo, same ORT latency and accuracy.
* The SD UNet picks its upsampling branch with a Python ``if`` on the latent shape, which
  tracing bakes in. Static exports trace at exactly the requested shape; dynamic exports trace
  at an odd latent size, which bakes the general branch and works for every size.
* Weights keep their torch parameter names as ONNX initializer names (``conv_in.weight``,
  ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight`` …) so that the runtime
  can swap merged LoRA weights in at session creation without re-exporting. To get that,
  export with ``do_constant_folding=False`` (the exporter's folding replaces Linear weights by
  transposed, renamed copies) and ``keep_initializers_as_inputs=True`` (otherwise initializers
  with equal values are deduplicated under one name); afterwards the weights are removed from
  the graph inputs again, so onnxruntime still constant-folds them (the transposes cost nothing
  at run time). Overrides need the weights in external data: onnxruntime only replaces external
  initializers before it optimizes (``SessionOptions.add_external_initializers``); see
  :func:`comfyc.runtime.backends.ort.OrtSession`.
* fp16: the module is copied and converted to half before export (torch runs half on the CPU),
  and the graph casts its float32 inputs to half and its outputs back to float32, so an fp16
  stage has the same float32 interface as an fp32 one. Tracing in half keeps the parts torch
  computes in float32 on purpose (the UNet's sinusoidal timestep embedding: ``sin(999 * f)``
  is wrong in float16) in float32; converting a float32 ONNX graph afterwards (onnxruntime's
  ``float16`` tool) would not. The transformers CLIP model is exported with its eager
  attention in fp16: the exporter's SDPA symbolic mixes float32 into a float16 graph there
  (onnxruntime then rejects a LayerNormalization with mixed input types).

torch and onnx are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ExportError

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "OPSET",
    "STAGE_IO",
    "OptimizeFacts",
    "Progress",
    "data_path",
    "export_text_encoder",
    "export_unet",
    "export_vae_decoder",
    "export_vae_encoder",
    "initializer_names",
    "model_bytes",
    "optimize_offline",
    "remove_model",
    "replace_model",
]

#: The ONNX opset every stage is exported at.
OPSET = 18

#: Weights larger than this (bytes) go to an external ``NAME.onnx.data`` file by default.
EXTERNAL_DATA_THRESHOLD = 100 * 1024 * 1024

#: Models whose weights exceed this cannot be one protobuf file; they always use external data.
_PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2

#: Input and output names of each stage kind, in call order.
STAGE_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "unet": (("sample", "timestep", "encoder_hidden_states"), ("out_sample",)),
    "text_encoder": (("input_ids", "embeds"), ("last_hidden_state", "pooled_output")),
    "vae_decoder": (("latent",), ("image",)),
    "vae_encoder": (("image",), ("latent",)),
}


def splice_embeddings(call: Callable[[Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
    """A CLIP text encoder's ``call(m, input_ids)`` as ``call(m, input_ids, embeds)``:
    where an id is -1 the token embedding is replaced by that position of ``embeds``
    (textual-inversion vectors, ComfyUI's ``embedding:NAME``; position embeddings are added
    as for any token), the same rule as :class:`~comfyc.runtime.backends.torch.
    TorchTextEncoder`; the pooled output stays at the first end token."""
    from comfyc.runtime.backends.torch import spliced_token_embeddings

    def spliced(m: Any, input_ids: Any, embeds: Any) -> Any:
        with spliced_token_embeddings(m, input_ids, embeds) as ids:
            return call(m, ids)

    return spliced


def no_embeddings(ids: Any, width: int) -> Any:
    """The ``embeds`` example beside token ids: zeros ``[*ids.shape, width]``."""
    torch = _require_torch()
    return torch.zeros(*ids.shape, int(width), dtype=torch.float32)


#: The prefix the export wrapper puts before the module's own parameter names.
_PREFIX = "m."

#: The latent size graphs are traced at: small (tracing runs the model once) and odd, so
#: that diffusers' upsamplers take their general branch (spikes §4).
_TRACE_LATENT = 9

#: A progress callback: receives one human-readable line per step.
Progress = Callable[[str], None]

_LEVELS = ("disable", "basic", "extended", "all")


class OptimizeFacts(dict[str, Any]):
    """The facts :func:`optimize_offline` returns; truthy exactly when the file helped.

    ``if optimize_offline(src, dst):`` reads as "keep the optimized file", while the facts
    (times, sizes) still go to the manifest as a plain dict.
    """

    def __bool__(self) -> bool:
        return bool(self.get("helped"))


# --------------------------------------------------------------------------- public exports
def export_unet(
    module: Any,
    path: str | Path,
    *,
    batch: int,
    height: int,
    width: int,
    context_len: int = 77,
    fp16: bool = False,
    dynamic: bool = False,
    external_data: bool | None = None,
    progress: Progress | None = None,
    compact: bool = False,
    free_prompt_axes: bool = False,
) -> dict[str, Any]:
    """Export a diffusers ``UNet2DConditionModel`` (SD1.x/SD2.x) as the ``unet`` stage.

    Args:
        module: The UNet (float32 weights; it is not modified).
        path: The ``.onnx`` file to write (its folder is created).
        batch: Batch size (cond and uncond together when CFG batches them).
        height: Latent height (image height / 8).
        width: Latent width.
        context_len: Tokens in ``encoder_hidden_states`` (77 per prompt chunk).
        fp16: Store float16 weights and compute in float16; inputs/outputs stay float32.
        dynamic: Make batch, height, width and context length free dimensions; the graph
            works at every latent size (the runtime should still pass context lengths that
            are multiples of 77, as ComfyUI does). Otherwise the graph accepts exactly the
            shapes given here. Either way it is traced at a small odd latent size with batch
            >= 2 (cheap, and general: see :data:`_TRACE_LATENT`).
        external_data: Store weights in ``NAME.onnx.data``; None decides by size
            (:data:`EXTERNAL_DATA_THRESHOLD`). Pass True for stages whose weights will be
            overridden at session creation (LoRA).
        progress: Called with one line per step.
        compact: Store every float32 weight that float16 holds exactly as float16, cast
            back to float32 in the graph (same results, about half the bytes for a
            checkpoint shipped in float16); ignored with ``fp16``.
        free_prompt_axes: Without ``dynamic``, still leave free the axes a prompt's length
            changes: the context length (77 tokens per chunk) and the batch (CFG runs cond
            and uncond apart when one context is more than 4 times the other, as ComfyUI
            does); the latent size stays fixed.

    Returns:
        The export facts (see :func:`_facts`).

    Raises:
        ExportError: The module is not a supported UNet, or tracing/export/checking failed.
    """
    torch = _require_torch()
    module = getattr(module, "unet", module) if hasattr(module, "adm_in_channels") else module
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "cross_attention_dim"):
        raise ExportError(
            f"export_unet got a {type(module).__name__}, expected a diffusers "
            "UNet2DConditionModel", help="pass the pipeline's .unet module")
    addition = getattr(config, "addition_embed_type", None)
    if addition not in (None, "text_time"):
        raise ExportError(
            f"this UNet uses addition_embed_type={addition!r}, which the unet stage does not "
            "have inputs for; SD1.x/SD2.x and SDXL (text_time) UNets are exported")
    dim = config.cross_attention_dim
    context_dim = int(dim if isinstance(dim, int) else dim[0])
    channels = int(config.in_channels)
    _check_positive(batch=batch, height=height, width=width, context_len=context_len)
    dtype = torch.float16 if fp16 else torch.float32
    generator = torch.Generator().manual_seed(0)

    def inputs(rows: int, h: int, w: int) -> tuple[Any, ...]:
        return (torch.randn(rows, channels, h, w, generator=generator),
                torch.full((rows,), 500.0),
                torch.randn(rows, context_len, context_dim, generator=generator))

    example, trace = inputs(batch, height, width), inputs(max(batch, 2), _TRACE_LATENT,
                                                          _TRACE_LATENT)
    axes = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch", 1: "context_len"},
        "out_sample": {0: "batch", 2: "height", 3: "width"},
    }
    input_names = STAGE_IO["unet"][0]
    source = module
    if addition == "text_time":
        # NOTE: SDXL: the stage takes ComfyUI's ADM vector y (the view computes
        # add_embedding(y), ldm's label_emb); weight names stay diffusers' own.
        from comfyc.runtime.backends.torch import ADM_TIME_EMBED_DIM, adm_unet

        source = adm_unet(module).unet
        width_y = int(config.projection_class_embeddings_input_dim)
        split = width_y - ADM_TIME_EMBED_DIM

        def call(m: Any, sample: Any, timestep: Any, context: Any, y: Any) -> Any:
            added = {"text_embeds": y[:, :split].to(dtype), "time_ids": y[:, split:].to(dtype)}
            out = m(sample.to(dtype), timestep, encoder_hidden_states=context.to(dtype),
                    added_cond_kwargs=added, return_dict=False)[0]
            return out.float()

        example = (*example, torch.randn(batch, width_y, generator=generator))
        trace = (*trace, torch.randn(trace[0].shape[0], width_y, generator=generator))
        axes["y"] = {0: "batch"}
        input_names = (*input_names, "y")
    else:
        def call(m: Any, sample: Any, timestep: Any, context: Any) -> Any:  # type: ignore[misc]
            out = m(sample.to(dtype), timestep, encoder_hidden_states=context.to(dtype),
                    return_dict=False)[0]
            return out.float()

    prompt_axes = ({name: ({0: "batch", 1: "context_len"} if name == "encoder_hidden_states"
                           else {0: "batch"}) for name in axes} if free_prompt_axes else None)
    return _export(source, call, example, path, kind="unet", fp16=fp16,
                   axes=axes if dynamic else prompt_axes, external_data=external_data,
                   progress=progress, metadata={}, input_names=input_names,
                   trace_example=trace, trace_axes=axes, compact=compact)


def export_text_encoder(
    module: Any,
    path: str | Path,
    *,
    layer: int = -1,
    fp16: bool = False,
    batch: int = 1,
    dynamic: bool = True,
    external_data: bool | None = None,
    progress: Progress | None = None,
    layer_norm: bool = True,
    compact: bool = False,
) -> dict[str, Any]:
    """Export a transformers ``CLIPTextModel`` as the ``text_encoder`` stage at a fixed layer.

    The hidden output is CLIP hidden layer ``layer`` (−1 last, −2 penultimate …), with the final
    layer norm applied when ``layer_norm`` (SD1/SD2; SDXL's encoders take the raw hidden
    state) — ComfyUI's CLIPSetLastLayer semantics, the same rule as
    :class:`~comfyc.runtime.backends.torch.TorchTextEncoder` (a layer outside
    ``[-num_layers, -1]`` means the last one). ``pooled_output`` is CLIP's pooled output,
    projected when the model has a text projection (``CLIPTextModelWithProjection``).

    Args:
        module: The CLIPTextModel (not modified).
        path: The ``.onnx`` file to write.
        layer: The CLIP layer, negative.
        fp16: Store float16 weights; outputs stay float32.
        batch: Batch size (the example's when ``dynamic``).
        dynamic: Make the batch dimension free (the 77 tokens are always fixed).
        external_data: As for :func:`export_unet`.
        progress: Called with one line per step.
        compact: Store every float32 weight that float16 holds exactly as float16, cast
            back to float32 in the graph (same results, about half the bytes for a
            checkpoint shipped in float16); ignored with ``fp16``.

    Returns:
        The export facts; ``facts["layer"]`` is the hidden-state index actually used.

    Raises:
        ExportError: The module is not a CLIP text model, or export/checking failed.
    """
    torch = _require_torch()
    config = getattr(module, "config", None)
    # NOTE: transformers 4.x nests the layers in ``.text_model``; 5.x puts them on the model.
    final_norm = getattr(getattr(module, "text_model", module), "final_layer_norm", None)
    if config is None or final_norm is None:
        raise ExportError(
            f"export_text_encoder got a {type(module).__name__}, expected a transformers "
            "CLIPTextModel", help="pass the pipeline's .text_encoder module")
    _check_positive(batch=batch)
    layers = int(config.num_hidden_layers)
    index = layer if -layers <= layer < 0 else -1
    seq = int(config.max_position_embeddings)

    def call(m: Any, input_ids: Any) -> tuple[Any, Any]:
        out = m(input_ids=input_ids, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states[index]
        if layer_norm:
            hidden = getattr(m, "text_model", m).final_layer_norm(hidden)
        pooled = getattr(out, "text_embeds", None)
        return hidden.float(), (out.pooler_output if pooled is None else pooled).float()

    # NOTE: a realistic prompt (BOS, a few tokens, EOS padding) — the pooled output looks up
    # the EOS position, and the traced ops must not depend on the example's values anyway.
    def prompt(rows: int) -> Any:
        ids = torch.full((rows, seq), int(config.eos_token_id), dtype=torch.int64)
        ids[:, 0] = int(config.bos_token_id)
        ids[:, 1:4] = torch.tensor([320, 1125, 539])
        return ids

    width = int(config.hidden_size)
    axes = {"input_ids": {0: "batch"}, "embeds": {0: "batch"},
            "last_hidden_state": {0: "batch"}, "pooled_output": {0: "batch"}}
    example, traced = prompt(batch), prompt(max(batch, 2))
    facts = _export(module, splice_embeddings(call), (example, no_embeddings(example, width)),
                    path, kind="text_encoder", fp16=fp16, axes=axes if dynamic else None,
                    external_data=external_data, progress=progress,
                    metadata={"clip_layer": str(index)}, prepare_fp16=_eager_attention,
                    trace_example=(traced, no_embeddings(traced, width)), trace_axes=axes,
                    compact=compact)
    facts["layer"] = index
    return facts


def export_vae_decoder(
    module: Any,
    path: str | Path,
    *,
    batch: int = 1,
    height: int,
    width: int,
    fp16: bool = False,
    dynamic: bool = False,
    external_data: bool | None = None,
    progress: Progress | None = None,
    compact: bool = False,
) -> dict[str, Any]:
    """Export a diffusers ``AutoencoderKL`` decoder (with ``post_quant_conv``) as ``vae_decoder``.

    Args:
        module: The AutoencoderKL (not modified).
        path: The ``.onnx`` file to write.
        batch: Batch size.
        height: Latent height.
        width: Latent width.
        fp16: Store float16 weights; input/output stay float32. (The SD1.x VAE overflows in
            float16 at large sizes; ComfyUI runs it in float32 or bfloat16.)
        dynamic: Make batch, height and width free (traced at an odd latent size).
        external_data: As for :func:`export_unet`.
        progress: Called with one line per step.
        compact: Store every float32 weight that float16 holds exactly as float16, cast
            back to float32 in the graph (same results, about half the bytes for a
            checkpoint shipped in float16); ignored with ``fp16``.

    Returns:
        The export facts.

    Raises:
        ExportError: The module is not an AutoencoderKL, or export/checking failed.
    """
    torch = _require_torch()
    config = _vae_config(module, "export_vae_decoder")
    _check_positive(batch=batch, height=height, width=width)
    dtype = torch.float16 if fp16 else torch.float32

    def call(m: Any, latent: Any) -> Any:
        return m.decode(latent.to(dtype), return_dict=False)[0].float()

    generator = torch.Generator().manual_seed(0)
    channels = int(config.latent_channels)
    example = (torch.randn(batch, channels, height, width, generator=generator),)
    trace = (torch.randn(max(batch, 2), channels, _TRACE_LATENT, _TRACE_LATENT,
                         generator=generator),)
    axes = {"latent": {0: "batch", 2: "height", 3: "width"},
            "image": {0: "batch", 2: "image_height", 3: "image_width"}}
    return _export(module, call, example, path, kind="vae_decoder", fp16=fp16,
                   axes=axes if dynamic else None, external_data=external_data,
                   progress=progress, metadata={}, trace_example=trace, trace_axes=axes,
                   compact=compact)


def export_vae_encoder(
    module: Any,
    path: str | Path,
    *,
    batch: int = 1,
    height: int,
    width: int,
    fp16: bool = False,
    dynamic: bool = False,
    external_data: bool | None = None,
    progress: Progress | None = None,
    compact: bool = False,
) -> dict[str, Any]:
    """Export a diffusers ``AutoencoderKL`` encoder (with ``quant_conv``) as ``vae_encoder``.

    The output is the posterior mean (ComfyUI's VAEEncode takes the mode, not a sample).

    Args:
        module: The AutoencoderKL (not modified).
        path: The ``.onnx`` file to write.
        batch: Batch size.
        height: Image height in pixels (a multiple of the VAE's scale factor, 8 for SD).
        width: Image width in pixels.
        fp16: Store float16 weights; input/output stay float32.
        dynamic: Make batch, height and width free (traced at an odd latent size).
        external_data: As for :func:`export_unet`.
        progress: Called with one line per step.
        compact: Store every float32 weight that float16 holds exactly as float16, cast
            back to float32 in the graph (same results, about half the bytes for a
            checkpoint shipped in float16); ignored with ``fp16``.

    Returns:
        The export facts.

    Raises:
        ExportError: The module is not an AutoencoderKL, or export/checking failed.
    """
    torch = _require_torch()
    config = _vae_config(module, "export_vae_encoder")
    _check_positive(batch=batch, height=height, width=width)
    factor = 2 ** (len(config.block_out_channels) - 1)
    if height % factor or width % factor:
        raise ExportError(
            f"export_vae_encoder got an image of {height}x{width} px, expected multiples of the "
            f"VAE's scale factor {factor}", help="round the size down as ComfyUI's VAEEncode does")
    dtype = torch.float16 if fp16 else torch.float32

    def call(m: Any, image: Any) -> Any:
        return m.encode(image.to(dtype), return_dict=False)[0].mean.float()

    generator = torch.Generator().manual_seed(0)
    channels = int(config.in_channels)
    example = (torch.rand(batch, channels, height, width, generator=generator) * 2 - 1,)
    size = _TRACE_LATENT * factor
    trace = (torch.rand(max(batch, 2), channels, size, size, generator=generator) * 2 - 1,)
    axes = {"image": {0: "batch", 2: "image_height", 3: "image_width"},
            "latent": {0: "batch", 2: "height", 3: "width"}}
    return _export(module, call, example, path, kind="vae_encoder", fp16=fp16,
                   axes=axes if dynamic else None, external_data=external_data,
                   progress=progress, metadata={}, trace_example=trace, trace_axes=axes,
                   compact=compact)


# --------------------------------------------------------------------------- after export
def initializer_names(path: str | Path) -> set[str]:
    """The names of an ONNX file's initializers (weights), without loading external data.

    For files written by this module these are the torch module's own parameter names
    (``state_dict`` keys), which is what the runtime's initializer overrides are keyed by.
    """
    onnx = _require_onnx()
    model = onnx.load(str(path), load_external_data=False)
    return {tensor.name for tensor in model.graph.initializer}


def data_path(path: str | Path) -> Path:
    """Where the external weights of the ONNX file ``path`` live (``NAME.onnx.data``)."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def optimize_offline(
    src: str | Path,
    dst: str | Path,
    level: str = "extended",
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    progress: Progress | None = None,
) -> OptimizeFacts:
    """Let onnxruntime optimize ``src`` once and save the result as ``dst``.

    ``extended`` is the highest portable level: ``all`` adds layout transformations tied to
    the machine (onnxruntime warns so when it saves them). The runtime loads the optimized
    file at ``all`` on the CPU (so the session adds those layout transformations on the
    machine that runs it) and at ``extended`` on other providers; with graph optimization
    disabled it would create its session 2.7-3.8x faster but run 7-21 % slower (spikes §4).
    Fusions depend on the execution provider, so optimize for the provider that will run the
    file. Folding renames weights: initializer overrides (LoRA) work only on the unoptimized
    file.

    Args:
        src: The exported model.
        dst: Where to write the optimized model (``dst.data`` beside it when ``src`` has
            external data).
        level: ``basic``, ``extended`` or ``all``.
        providers: The execution providers to optimize for.
        progress: Called with one line per step.
        compact: Store every float32 weight that float16 holds exactly as float16, cast
            back to float32 in the graph (same results, about half the bytes for a
            checkpoint shipped in float16); ignored with ``fp16``.

    Returns:
        Facts, truthy when ``helped`` (the optimized file's session is created faster than
        ``src``'s at ``level``): both creation times in seconds, ``speedup``, ``level``, file
        sizes. The optimized file names its data file ``dst.data``: move both together, or
        keep ``dst`` where it was written.

    Raises:
        ExportError: Unknown level, or onnxruntime failed to load or save the model.
    """
    ort = _require_onnxruntime()
    say = progress or _quiet
    src, dst = Path(src), Path(dst)
    if level not in _LEVELS[1:]:
        raise ExportError(f"optimize_offline got level {level!r}, expected one of "
                          f"{', '.join(_LEVELS[1:])}")
    if src.resolve() == dst.resolve():
        raise ExportError(f"optimize_offline would overwrite its source {src}",
                          help="write the optimized model to another file")
    if not src.is_file():
        raise ExportError(f"optimize_offline: {src} does not exist")
    dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_model(dst)
    external = data_path(src).is_file()
    start = time.perf_counter()
    say(f"optimizing {src.name} at ORT level {level} for {', '.join(providers)}")
    options = _session_options(ort, level)
    options.optimized_model_filepath = str(dst)
    if external:
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", data_path(dst).name)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(src), options, providers=list(providers))
    except Exception as error:
        raise ExportError(f"onnxruntime could not optimize {src}: {error}") from error
    # NOTE: measured after the saving run, so both files are equally warm in the page cache.
    online = _time_session(ort, src, _session_options(ort, level), providers)
    offline = _time_session(ort, dst, _session_options(ort, "disable"), providers)
    facts = OptimizeFacts({
        "src": str(src),
        "dst": str(dst),
        "level": level,
        "providers": list(providers),
        "online_create_s": online,
        "offline_create_s": offline,
        "speedup": online / offline if offline > 0 else float("inf"),
        "helped": offline < online,
        "src_bytes": model_bytes(src),
        "dst_bytes": model_bytes(dst),
        "seconds": time.perf_counter() - start,
    })
    say(f"session creation {online * 1e3:.1f} ms online at {level} -> "
        f"{offline * 1e3:.1f} ms from the optimized file ({facts['speedup']:.2f}x)")
    return facts


# --------------------------------------------------------------------------- the exporter
def _export(
    module: Any,
    call: Callable[..., Any],
    example: tuple[Any, ...],
    path: str | Path,
    *,
    kind: str,
    fp16: bool,
    axes: Mapping[str, Mapping[int, str]] | None,
    external_data: bool | None,
    progress: Progress | None,
    metadata: Mapping[str, str],
    prepare_fp16: Callable[[Any], Callable[[], None] | None] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    trace_example: tuple[Any, ...] | None = None,
    trace_axes: Mapping[str, Mapping[int, str]] | None = None,
    compact: bool = False,
    shared: Path | None = None,
) -> dict[str, Any]:
    """Trace ``call(module, *inputs)``, export the graph, write the weights, check the file.

    The contract, for every module kind (other exporters call this too):

    * ``call(m, *inputs)`` computes the stage from the module ``m`` (``module`` itself) and
      returns one tensor or a tuple, in the order of ``output_names``. It must be traceable
      by the legacy exporter (no data-dependent Python control flow on tensor values).
    * ``module`` is never copied and never left changed. While tracing, its floating
      parameters are temporarily replaced by stride-0 zero tensors of the compute dtype
      (float16 with ``fp16``), so the trace allocates no weights and the weights' values
      cannot leak into the graph; the graph is exported
      without parameters (``export_params=False``) and every weight is then streamed, one
      tensor at a time, from the module into ``NAME.onnx.data`` (or into the file when
      small). Peak memory is
      the module plus one tensor, for any model size.
    * Weights are ONNX initializers named after ``module.state_dict()`` keys.
    * ``example`` is the shape the stage will be called with. It is only run on the meta
      device (to learn the output shapes), never computed. The graph is traced at
      ``trace_example`` with ``trace_axes`` free (small, odd-sized examples keep tracing
      cheap and general); dimensions free while tracing but not free in ``axes`` are then
      pinned to ``example``'s sizes. Without ``trace_example`` it traces at ``example`` with
      ``axes`` free.
    * ``fp16``: compute and store in float16 (``prepare_fp16(module)`` may adjust the module
      first and return a function that undoes it). ``compact``: float32 compute, but every
      float32 weight that float16 holds exactly is stored as float16 and cast back to
      float32 in the graph (a checkpoint shipped in float16 then costs half the bytes, with
      bit-identical results); onnxruntime folds the casts when it creates the session.
    * ``shared``: an ONNX file (in the same folder) exported from the same module: weights
      it stores are not written again but referenced in its data file, so two graphs over
      one module (step caching's full and shallow UNet) hold each weight once.

    Returns:
        The facts: ``kind``, ``path``, ``data_path`` (None for one file), ``inputs`` and
        ``outputs`` (lists of ``{name, shape, dtype}``; free dimensions are strings),
        ``input_names``, ``output_names``, ``weights_dtype`` (the compute dtype),
        ``stored_float16`` (weights stored as float16), ``dynamic``, ``opset``,
        ``weights_bytes``, ``file_bytes`` (model + data), ``parameters`` (initializers named
        after the module's parameters and buffers), ``missing_parameters`` (torch parameters
        the graph does not use), ``trace_s`` (tracing and exporting the graph), ``write_s``
        (writing the weights), ``check_s``, ``export_s`` (= ``trace_s``) and ``seconds``.

    Raises:
        ExportError: The module fails at the example's shape, tracing or export failed, or
            the written model fails ``onnx.checker``.
    """
    torch = _require_torch()
    onnx = _require_onnx()
    say = progress or _quiet
    start = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    default_inputs, default_outputs = STAGE_IO.get(kind, ((), ()))
    input_names = tuple(input_names or default_inputs)
    output_names = tuple(output_names or default_outputs)
    if not input_names or not output_names:
        raise ExportError(f"_export of a {kind!r} stage needs input_names and output_names")
    trace_example = example if trace_example is None else trace_example
    trace_axes = axes if trace_example is example else trace_axes
    shapes = ", ".join("x".join(map(str, t.shape)) for t in example)
    say(f"exporting {kind} ({'dynamic' if axes else 'static'}, {'fp16' if fp16 else 'fp32'}"
        f"{', compact weights' if compact and not fp16 else ''}, example {shapes}) to {path}")
    # NOTE: the compute dtype of every floating weight: a module stored in float16 (compile's
    # lean load of a float16 checkpoint) still computes in float32 unless ``fp16``.
    dtype = torch.float16 if fp16 else torch.float32
    wrapper = _wrap(torch, module, call)
    # NOTE: the real tensors by the names the exporter gives graph inputs ("m.<state key>").
    weights = dict(wrapper.state_dict(keep_vars=True))
    undo = prepare_fp16(module) if fp16 and prepare_fp16 is not None else None
    try:
        with _swapped_weights(torch, wrapper, "meta", dtype):
            results = _meta_outputs(torch, wrapper, example, kind, module)
        with tempfile.TemporaryDirectory(prefix="comfyc-onnx-", dir=path.parent) as tmp:
            raw = Path(tmp) / "model.onnx"
            trace_start = time.perf_counter()
            try:
                with _swapped_weights(torch, wrapper, "zeros", dtype), \
                        warnings.catch_warnings(), torch.no_grad():
                    # NOTE: tracing warns about every shape-dependent Python branch in
                    # diffusers; the odd example size is how those are handled.
                    warnings.simplefilter("ignore")
                    torch.onnx.export(
                        wrapper, trace_example, str(raw), dynamo=False, opset_version=OPSET,
                        input_names=list(input_names), output_names=list(output_names),
                        dynamic_axes=({k: dict(v) for k, v in trace_axes.items()}
                                      if trace_axes else None),
                        export_params=False, do_constant_folding=False,
                        keep_initializers_as_inputs=True)
            except Exception as error:
                raise ExportError(
                    f"exporting the {kind} stage ({type(module).__name__}) to ONNX failed: "
                    f"{type(error).__name__}: {error}",
                    help="check that the module runs in torch at this shape; report the "
                         "traceback if it does") from error
            model = onnx.load(str(raw))
    finally:
        if undo is not None:
            undo()
    trace_s = time.perf_counter() - trace_start
    say(f"traced and exported the graph in {trace_s:.2f} s")
    _pin_inputs(model.graph, input_names, example, axes or {})
    _fix_output_shapes(model.graph, [tuple(r.shape) for r in results], axes or {})
    weights_dtype = "float16" if fp16 else "float32"
    _set_metadata(model, {"comfyc.stage": kind, "comfyc.weights_dtype": weights_dtype,
                          "comfyc.dynamic": str(bool(axes)).lower(),
                          **{f"comfyc.{k}": v for k, v in metadata.items()}})
    write_start = time.perf_counter()
    stored = _attach_weights(onnx, torch, model, weights, path, dtype=dtype,
                             compact=compact and not fp16, external_data=external_data,
                             say=say, shared=shared)
    write_s = time.perf_counter() - write_start
    used = set(stored["names"])
    missing = [name for name, _ in module.named_parameters() if name not in used]
    say(f"saved {path.name}" + (f" + {data_path(path).name}" if stored["external"] else "")
        + f" ({model_bytes(path) / 2**20:.1f} MiB, {stored['float16']} weights as float16) "
        f"in {write_s:.2f} s; checking")
    check_start = time.perf_counter()
    try:
        onnx.checker.check_model(str(path))
    except Exception as error:
        raise ExportError(f"the exported {kind} model {path} fails onnx.checker: {error}",
                          help="report this with the torch/diffusers versions") from error
    facts: dict[str, Any] = {
        "kind": kind,
        "path": str(path),
        "data_path": str(data_path(path)) if stored["external"] else None,
        "inputs": [_value_info(onnx, v) for v in model.graph.input],
        "outputs": [_value_info(onnx, v) for v in model.graph.output],
        "input_names": list(input_names),
        "output_names": list(output_names),
        "weights_dtype": weights_dtype,
        "stored_float16": stored["float16"],
        "dynamic": bool(axes),
        "opset": OPSET,
        "weights_bytes": stored["bytes"],
        "file_bytes": model_bytes(path),
        "parameters": len(used),
        "missing_parameters": missing,
        "trace_s": trace_s,
        "write_s": write_s,
        "check_s": time.perf_counter() - check_start,
        "export_s": trace_s,
        "seconds": time.perf_counter() - start,
    }
    say(f"{kind} done in {facts['seconds']:.2f} s")
    return facts


class _swapped_weights:  # noqa: N801 - a context manager used like a function
    """Temporarily replace a module's floating parameters (and, for a dtype change, its
    floating buffers) by tensors that hold no weights; the originals come back on exit.

    ``mode="meta"``: meta tensors (shape propagation only). ``mode="zeros"``: one zero
    element expanded to the shape (stride 0: no memory), which the tracer can run.
    """

    def __init__(self, torch: Any, module: Any, mode: str, dtype: Any) -> None:
        self.torch, self.module, self.mode, self.dtype = torch, module, mode, dtype
        self.saved: list[tuple[Any, str, str, Any]] = []

    def _stand_in(self, tensor: Any) -> Any:
        dtype = self.dtype or tensor.dtype
        if self.mode == "meta":
            return self.torch.empty(tensor.shape, dtype=dtype, device="meta")
        # NOTE: one zero expanded to the shape (stride 0): no memory at all. (Uninitialised
        # tensors were tried: an SDXL trace touched enough of their pages to add 3.9 GB.)
        # Kernels that need contiguous weights copy one weight at a time, transiently.
        return self.torch.zeros((), dtype=dtype).expand(tensor.shape)

    def __enter__(self) -> None:
        torch = self.torch
        for owner in self.module.modules():
            for name, param in list(owner._parameters.items()):
                if param is not None and param.is_floating_point():
                    self.saved.append((owner, "_parameters", name, param))
                    owner._parameters[name] = torch.nn.Parameter(self._stand_in(param),
                                                                 requires_grad=False)
            for name, buffer in list(owner._buffers.items()):
                if buffer is None or not buffer.is_floating_point():
                    continue
                if self.mode == "meta" or (self.dtype is not None
                                           and buffer.dtype != self.dtype):
                    self.saved.append((owner, "_buffers", name, buffer))
                    owner._buffers[name] = (self._stand_in(buffer) if self.mode == "meta"
                                            else buffer.to(self.dtype))

    def __exit__(self, *exc: Any) -> None:
        for owner, table, name, tensor in reversed(self.saved):
            getattr(owner, table)[name] = tensor
        self.saved.clear()


def _meta_outputs(torch: Any, wrapper: Any, example: tuple[Any, ...], kind: str,
                  module: Any) -> tuple[Any, ...]:
    """The stage's outputs at ``example``'s shapes, computed on the meta device (free).

    Falls back to a real run on the weights in place (zeros when swapped) where an op has no
    meta kernel.
    """
    shapes = ", ".join("x".join(map(str, t.shape)) for t in example)
    try:
        with torch.no_grad():
            result = wrapper(*[t.to("meta") for t in example])
    except Exception:  # noqa: BLE001 - some ops have no meta kernel: run for real
        try:
            with _swapped_weights(torch, wrapper, "zeros", None), torch.no_grad():
                result = wrapper(*example)
        except Exception as error:
            raise ExportError(
                f"the {kind} module ({type(module).__name__}) fails in torch on the export "
                f"example {shapes}: {type(error).__name__}: {error}",
                help="check the sizes passed to the export function") from error
    return result if isinstance(result, tuple) else (result,)


def _pin_inputs(graph: Any, names: Sequence[str], example: tuple[Any, ...],
                axes: Mapping[str, Mapping[int, str]]) -> None:
    """Give each stage input the example's size on every dimension not free in ``axes``."""
    by_name = {value.name: value for value in graph.input}
    for name, tensor in zip(names, example, strict=False):
        value = by_name.get(name)
        if value is None:
            continue
        free = axes.get(name, {})
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for index, size in enumerate(tensor.shape):
            dim = dims.add()
            if index in free:
                dim.dim_param = free[index]
            else:
                dim.dim_value = int(size)


#: Weights at least this large start at a page boundary in the data file, so onnxruntime can
#: map them instead of copying them.
_ALIGN_ABOVE = 64 * 1024


def _attach_weights(onnx: Any, torch: Any, model: Any, weights: Mapping[str, Any], path: Path,
                    *, dtype: Any, compact: bool, external_data: bool | None,
                    say: Progress, shared: Path | None = None) -> dict[str, Any]:
    """Turn the graph's weight inputs into initializers and save the model.

    The exporter (``export_params=False``) leaves every weight as a graph input named
    ``m.<state key>``. Each becomes an initializer named ``<state key>``; its data is written
    from the module's tensor (cast to ``dtype`` when given, or stored as float16 behind a
    ``Cast`` when ``compact`` and float16 holds it exactly), one tensor at a time.

    Returns:
        ``{"names": initializer names, "bytes": stored bytes, "float16": count stored as
        float16 by ``compact``, "external": whether ``NAME.onnx.data`` holds them}``.
    """
    import numpy as np

    graph = model.graph
    inputs = [value for value in graph.input if value.name in weights]
    names = [value.name[len(_PREFIX):] if value.name.startswith(_PREFIX) else value.name
             for value in inputs]
    taken = {out for node in graph.node for out in node.output}
    clashes = sorted(name for name in names if name in taken)
    assert not clashes, f"weight names would clash with graph values: {clashes[:5]}"
    kept = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)

    def stored_dtype(tensor: Any) -> Any:
        return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype

    total = sum(weights[v.name].numel() * torch.empty((), dtype=stored_dtype(
        weights[v.name])).element_size() for v in inputs)
    external = total > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    if total > _PROTOBUF_LIMIT and not external:
        say(f"weights are {total / 2**30:.2f} GiB, over protobuf's 2 GiB: using external data")
        external = True
    _remove_model(path)
    stock: dict[str, Any] = {}
    if shared is not None:
        if shared.parent.resolve() != path.parent.resolve():
            raise ExportError(f"shared weights must be in the same folder: {shared} for {path}")
        stock = {t.name: t for t in onnx.load(str(shared), load_external_data=False)
                 .graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
        external = True
    renamed: dict[str, str] = {}
    casts = []
    written = halves = 0
    handle = None
    try:
        for value, name in zip(inputs, names, strict=True):
            tensor = weights[value.name].detach()
            use = name
            if name in stock:
                initializer = graph.initializer.add()
                initializer.CopyFrom(stock[name])
                wanted = onnx.helper.np_dtype_to_tensor_dtype(
                    np.dtype(str(stored_dtype(tensor)).removeprefix("torch.")))
                if initializer.data_type != wanted:
                    use = f"{name}::{onnx.helper.tensor_dtype_to_np_dtype(wanted)}"
                    casts.append(onnx.helper.make_node("Cast", [name], [use], to=wanted,
                                                       name=f"{name}::cast"))
                renamed[value.name] = use
                continue
            if external and handle is None:
                handle = open(data_path(path), "wb")  # noqa: SIM115 - closed below
            source = tensor
            target = stored_dtype(source)
            tensor = source if target == source.dtype else source.to(target)
            if compact and target == torch.float32 and source.is_floating_point():
                # A float16 weight is stored as it is; a float32 one when float16 holds it.
                half = source if source.dtype == torch.float16 else source.to(torch.float16)
                if source.dtype == torch.float16 or torch.equal(half.to(torch.float32), tensor):
                    tensor = half
                    use = f"{name}::float32"
                    casts.append(onnx.helper.make_node(
                        "Cast", [name], [use], to=onnx.TensorProto.FLOAT, name=f"{name}::cast"))
                    halves += 1
                del half
            del source
            array = np.ascontiguousarray(tensor.cpu().numpy())
            initializer = onnx.TensorProto()
            initializer.name = name
            initializer.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
            initializer.dims.extend(array.shape)
            if handle is None:
                initializer.raw_data = array.tobytes()
            else:
                offset = handle.tell()
                if array.nbytes >= _ALIGN_ABOVE and offset % 4096:
                    handle.write(b"\0" * (4096 - offset % 4096))
                    offset = handle.tell()
                handle.write(memoryview(array).cast("B"))
                initializer.data_location = onnx.TensorProto.EXTERNAL
                for key, item in (("location", data_path(path).name), ("offset", str(offset)),
                                  ("length", str(array.nbytes))):
                    entry = initializer.external_data.add()
                    entry.key, entry.value = key, item
            written += array.nbytes
            graph.initializer.append(initializer)
            renamed[value.name] = use
            del array, tensor
    finally:
        if handle is not None:
            handle.close()
    _rename_uses(graph, renamed)
    if casts:
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(casts + nodes)
    onnx.save_model(model, str(path))
    return {"names": names, "bytes": written, "float16": halves,
            "external": data_path(path).is_file()}


def _wrap(torch: Any, module: Any, call: Callable[..., Any]) -> Any:
    """An ``nn.Module`` whose forward is ``call(module, *inputs)``; the module is ``.m``."""

    class StageGraph(torch.nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.m = module.eval()

        def forward(self, *inputs: Any) -> Any:
            return call(self.m, *inputs)

    return StageGraph()


def _fix_output_shapes(graph: Any, shapes: Sequence[tuple[int, ...]],
                       axes: Mapping[str, Mapping[int, str]]) -> None:
    """Declare each output's shape: the free dimension names, else the traced sizes.

    The exporter's shape inference leaves some output dims as made-up names
    (``Castlast_hidden_state_dim_1``) where the size is in fact fixed (77 tokens).
    """
    for value, shape in zip(graph.output, shapes, strict=True):
        free = axes.get(value.name, {})
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for index, size in enumerate(shape):
            dim = dims.add()
            if index in free:
                dim.dim_param = free[index]
            else:
                dim.dim_value = int(size)


def _rename_uses(graph: Any, renamed: Mapping[str, str]) -> None:
    """Rename node inputs in ``graph`` and its subgraphs (If/Loop bodies)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
        for attribute in node.attribute:
            if attribute.HasField("g"):
                _rename_uses(attribute.g, renamed)
            for subgraph in attribute.graphs:
                _rename_uses(subgraph, renamed)


def _set_metadata(model: Any, values: Mapping[str, str]) -> None:
    """Set ``metadata_props`` entries (read at run time from the session's model meta)."""
    existing = {prop.key: prop for prop in model.metadata_props}
    for key, value in values.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, value


def _value_info(onnx: Any, value: Any) -> dict[str, Any]:
    """``{name, shape, dtype}`` of a graph input/output; free dimensions are their names."""
    tensor = value.type.tensor_type
    shape: list[int | str] = []
    for dim in tensor.shape.dim:
        shape.append(dim.dim_value if dim.HasField("dim_value") else dim.dim_param or "?")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    return {"name": value.name, "shape": shape, "dtype": str(dtype)}


def _tensor_bytes(onnx: Any, tensor: Any) -> int:
    """The size of an initializer's data in bytes."""
    count = 1
    for dim in tensor.dims:
        count *= int(dim)
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def model_bytes(path: Path) -> int:
    """Bytes of an ONNX file plus its external data file, if any."""
    extra = data_path(path)
    return path.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)


def _remove_model(path: Path) -> None:
    """Delete an ONNX file and its data file, so no stale weights survive a re-export."""
    for stale in (path, data_path(path)):
        stale.unlink(missing_ok=True)


def remove_model(path: str | Path) -> None:
    """Delete an ONNX file and its ``NAME.onnx.data`` file (either may be missing)."""
    _remove_model(Path(path))


def replace_model(src: str | Path, dst: str | Path) -> None:
    """Move the ONNX model ``src`` (and its external data) to ``dst``, replacing ``dst``'s.

    The data file becomes ``dst``'s ``NAME.onnx.data`` and the model's references are
    rewritten to it (a model names its data file inside), so nothing of the old ``dst``
    stays behind: after :func:`optimize_offline`, the optimised graph's weights replace the
    exported ones instead of sitting beside them unread.

    Raises:
        ExportError: ``src`` keeps weights in more than one external file.
    """
    onnx = _require_onnx()
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer
                 if tensor.data_location == onnx.TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    if len(locations) > 1:
        raise ExportError(f"{src} keeps its weights in {len(locations)} files; expected one")
    _remove_model(dst)
    if locations:
        target = data_path(dst)
        os.replace(src.parent / locations.pop(), target)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = target.name
        onnx.save_model(model, str(dst))
        src.unlink()
    else:
        os.replace(src, dst)


# --------------------------------------------------------------------------- small helpers
def _session_options(ort: Any, level: str) -> Any:
    """SessionOptions at an optimization level name (see :data:`_LEVELS`)."""
    enum = ort.GraphOptimizationLevel
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: fp16 graphs warn about unfoldable CPU ops
    options.graph_optimization_level = {
        "disable": enum.ORT_DISABLE_ALL, "basic": enum.ORT_ENABLE_BASIC,
        "extended": enum.ORT_ENABLE_EXTENDED, "all": enum.ORT_ENABLE_ALL}[level]
    return options


def _time_session(ort: Any, path: Path, options: Any, providers: Iterable[str]) -> float:
    """Seconds to create a session for ``path``."""
    start = time.perf_counter()
    ort.InferenceSession(str(path), options, providers=list(providers))
    return time.perf_counter() - start


def _eager_attention(module: Any) -> Callable[[], None]:
    """Switch a transformers model to its plain (eager) attention implementation; returns
    the function that switches it back."""
    before = getattr(module.config, "_attn_implementation", None)

    def switch(name: str | None) -> None:
        if hasattr(module, "set_attn_implementation") and name is not None:
            module.set_attn_implementation(name)
        else:  # NOTE: transformers < 4.48 has no setter
            module.config._attn_implementation = name

    switch("eager")
    return lambda: switch(before)


def _vae_config(module: Any, caller: str) -> Any:
    """The config of a diffusers AutoencoderKL, or an ExportError."""
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "latent_channels") or not hasattr(module, "decode"):
        raise ExportError(
            f"{caller} got a {type(module).__name__}, expected a diffusers AutoencoderKL",
            help="pass the pipeline's .vae module")
    return config


def _check_positive(**sizes: int) -> None:
    """Raise ExportError unless every size is a positive int."""
    for name, size in sizes.items():
        if not isinstance(size, int) or size < 1:
            raise ExportError(f"export got {name}={size!r}, expected a positive integer")


def _odd(size: int) -> int:
    """``size`` if odd, else ``size + 1`` (a size no upsampler divides evenly)."""
    return size if size % 2 else size + 1


def _quiet(message: str) -> None:
    """The default progress callback: say nothing."""


def _require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ExportError("exporting stages needs torch, which is not installed",
                          help="pip install 'comfyc[compiler,cpu]'") from None
    return torch


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ExportError("exporting stages needs the onnx package, which is not installed",
                          help="pip install 'comfyc[compiler]'") from None
    return onnx


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("optimizing stages needs onnxruntime, which is not installed",
                          help="pip install 'comfyc[cpu]'") from None
    return onnxruntime
