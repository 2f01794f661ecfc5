"""Export model stages (diffusers/transformers torch modules) to ONNX files.

One function per stage kind; each writes one ``.onnx`` file (plus ``NAME.onnx.data`` beside it
when the weights are large), checks it with ``onnx.checker`` and returns a small dict of facts
for the manifest. The ONNX graphs compute exactly what the PyTorch stages of
:mod:`comfyc.runtime.backends.torch` compute, with these stable input/output names
(:data:`STAGE_IO`)::

    unet          sample[B,C,h,w] f32, timestep[B] f32, encoder_hidden_states[B,T,D] f32
                  -> out_sample[B,C,h,w] f32
    text_encoder  input_ids[B,77] int64 -> last_hidden_state[B,77,D], pooled_output[B,D] f32
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

import copy
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
    "optimize_offline",
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
    "text_encoder": (("input_ids",), ("last_hidden_state", "pooled_output")),
    "vae_decoder": (("latent",), ("image",)),
    "vae_encoder": (("image",), ("latent",)),
}

#: The prefix the export wrapper puts before the module's own parameter names.
_PREFIX = "m."

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
        dynamic: Make batch, height, width and context length free dimensions. The example
            traced is then odd-sized (``h + 1`` for even ``h``) and has batch >= 2, so the graph
            works at every latent size; the runtime should still pass context lengths that are
            multiples of 77, as ComfyUI does. Otherwise the graph accepts exactly the shapes
            given here.
        external_data: Store weights in ``NAME.onnx.data``; None decides by size
            (:data:`EXTERNAL_DATA_THRESHOLD`). Pass True for stages whose weights will be
            overridden at session creation (LoRA).
        progress: Called with one line per step.

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
    if dynamic:
        batch, height, width = max(batch, 2), _odd(height), _odd(width)
    dtype = torch.float16 if fp16 else torch.float32
    generator = torch.Generator().manual_seed(0)
    example: tuple[Any, ...] = (
        torch.randn(batch, channels, height, width, generator=generator),
        torch.full((batch,), 500.0),
        torch.randn(batch, context_len, context_dim, generator=generator),
    )
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
        axes["y"] = {0: "batch"}
        input_names = (*input_names, "y")
    else:
        def call(m: Any, sample: Any, timestep: Any, context: Any) -> Any:  # type: ignore[misc]
            out = m(sample.to(dtype), timestep, encoder_hidden_states=context.to(dtype),
                    return_dict=False)[0]
            return out.float()

    return _export(source, call, example, path, kind="unet", fp16=fp16,
                   axes=axes if dynamic else None, external_data=external_data,
                   progress=progress, metadata={}, input_names=input_names)


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
    if dynamic:
        batch = max(batch, 2)
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
    ids = torch.full((batch, seq), int(config.eos_token_id), dtype=torch.int64)
    ids[:, 0] = int(config.bos_token_id)
    ids[:, 1:4] = torch.tensor([320, 1125, 539])
    axes = {"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"},
            "pooled_output": {0: "batch"}}
    facts = _export(module, call, (ids,), path, kind="text_encoder", fp16=fp16,
                    axes=axes if dynamic else None, external_data=external_data,
                    progress=progress, metadata={"clip_layer": str(index)},
                    prepare_fp16=_eager_attention)
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

    Returns:
        The export facts.

    Raises:
        ExportError: The module is not an AutoencoderKL, or export/checking failed.
    """
    torch = _require_torch()
    config = _vae_config(module, "export_vae_decoder")
    _check_positive(batch=batch, height=height, width=width)
    if dynamic:
        batch, height, width = max(batch, 2), _odd(height), _odd(width)
    dtype = torch.float16 if fp16 else torch.float32

    def call(m: Any, latent: Any) -> Any:
        return m.decode(latent.to(dtype), return_dict=False)[0].float()

    generator = torch.Generator().manual_seed(0)
    example = (torch.randn(batch, int(config.latent_channels), height, width,
                           generator=generator),)
    axes = {"latent": {0: "batch", 2: "height", 3: "width"},
            "image": {0: "batch", 2: "image_height", 3: "image_width"}}
    return _export(module, call, example, path, kind="vae_decoder", fp16=fp16,
                   axes=axes if dynamic else None, external_data=external_data,
                   progress=progress, metadata={})


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
    if dynamic:
        batch = max(batch, 2)
        height, width = _odd(height // factor) * factor, _odd(width // factor) * factor
    dtype = torch.float16 if fp16 else torch.float32

    def call(m: Any, image: Any) -> Any:
        return m.encode(image.to(dtype), return_dict=False)[0].mean.float()

    generator = torch.Generator().manual_seed(0)
    example = (torch.rand(batch, int(config.in_channels), height, width,
                          generator=generator) * 2 - 1,)
    axes = {"image": {0: "batch", 2: "image_height", 3: "image_width"},
            "latent": {0: "batch", 2: "height", 3: "width"}}
    return _export(module, call, example, path, kind="vae_encoder", fp16=fp16,
                   axes=axes if dynamic else None, external_data=external_data,
                   progress=progress, metadata={})


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
    the machine (onnxruntime warns so when it saves them). The optimized file is loaded later
    with graph optimization disabled; it runs as fast as ``src`` optimized online and creates
    its session 2.7-3.8x faster (spikes §4). Fusions depend on the execution provider, so
    optimize for the provider that will run the file. Folding renames weights: initializer
    overrides (LoRA) work only on the unoptimized file.

    Args:
        src: The exported model.
        dst: Where to write the optimized model (``dst.data`` beside it when ``src`` has
            external data).
        level: ``basic``, ``extended`` or ``all``.
        providers: The execution providers to optimize for.
        progress: Called with one line per step.

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
        "src_bytes": _model_bytes(src),
        "dst_bytes": _model_bytes(dst),
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
    prepare_fp16: Callable[[Any], None] | None = None,
    input_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Trace ``call(module, *example)``, export it, tidy the names, save, check.

    With ``fp16`` the module is deep-copied (the caller's stays float32; this needs memory for
    a second copy) and ``prepare_fp16`` may adjust the copy before it is converted.

    Returns:
        The facts: ``kind``, ``path``, ``data_path`` (None for one file), ``inputs`` and
        ``outputs`` (lists of ``{name, shape, dtype}``; free dimensions are strings),
        ``input_names``, ``output_names``, ``weights_dtype``, ``dynamic``, ``opset``,
        ``weights_bytes``, ``file_bytes`` (model + data), ``parameters`` (initializers named
        after the module's parameters and buffers), ``missing_parameters`` (torch parameters
        the graph does not use), ``export_s`` (the torch export call) and ``seconds`` (everything).
    """
    torch = _require_torch()
    onnx = _require_onnx()
    say = progress or _quiet
    start = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    default_inputs, output_names = STAGE_IO[kind]
    input_names = tuple(input_names or default_inputs)
    shapes = ", ".join("x".join(map(str, t.shape)) for t in example)
    say(f"exporting {kind} ({'dynamic' if axes else 'static'}, {'fp16' if fp16 else 'fp32'}, "
        f"example {shapes}) to {path}")

    source = module
    if fp16:
        source = copy.deepcopy(module)
        if prepare_fp16 is not None:
            prepare_fp16(source)
        source = source.half()
    wrapper = _wrap(torch, source, call)
    try:
        with torch.no_grad():
            result = wrapper(*example)
    except Exception as error:
        raise ExportError(
            f"the {kind} module ({type(module).__name__}) fails in torch on the export example "
            f"{shapes}: {type(error).__name__}: {error}",
            help="check the sizes passed to the export function") from error
    results = result if isinstance(result, tuple) else (result,)
    with tempfile.TemporaryDirectory(prefix="comfyc-onnx-", dir=path.parent) as tmp:
        raw = Path(tmp) / "model.onnx"
        export_start = time.perf_counter()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                # NOTE: tracing warns about every shape-dependent Python branch in diffusers;
                # the odd example size is how those are handled, so the warnings are noise.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapper, example, str(raw), dynamo=False, opset_version=OPSET,
                    input_names=list(input_names), output_names=list(output_names),
                    dynamic_axes={k: dict(v) for k, v in axes.items()} if axes else None,
                    export_params=True, do_constant_folding=False,
                    keep_initializers_as_inputs=True)
        except Exception as error:
            raise ExportError(
                f"exporting the {kind} stage ({type(module).__name__}) to ONNX failed: "
                f"{type(error).__name__}: {error}",
                help="check that the module runs in torch at this shape; report the traceback "
                     "if it does") from error
        export_s = time.perf_counter() - export_start
        say(f"traced and exported in {export_s:.2f} s")
        model = onnx.load(str(raw))  # also reads per-tensor external files of >2 GB exports
    _fix_output_shapes(model.graph, [tuple(r.shape) for r in results], axes or {})
    renamed = _tidy_graph(model.graph, _PREFIX)
    used = set(renamed.values())
    missing = [name for name, _ in module.named_parameters() if name not in used]
    weights_dtype = "float16" if fp16 else "float32"
    _set_metadata(model, {"comfyc.stage": kind, "comfyc.weights_dtype": weights_dtype,
                          "comfyc.dynamic": str(bool(axes)).lower(),
                          **{f"comfyc.{k}": v for k, v in metadata.items()}})
    weights = sum(_tensor_bytes(onnx, t) for t in model.graph.initializer)
    external = weights > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    if weights > _PROTOBUF_LIMIT and not external:
        say(f"weights are {weights / 2**30:.2f} GiB, over protobuf's 2 GiB: using external data")
        external = True
    _save(onnx, model, path, external)
    say(f"saved {path.name}" + (f" + {data_path(path).name}" if external else "")
        + f" ({_model_bytes(path) / 2**20:.1f} MiB); checking")
    try:
        onnx.checker.check_model(str(path))
    except Exception as error:
        raise ExportError(f"the exported {kind} model {path} fails onnx.checker: {error}",
                          help="report this with the torch/diffusers versions") from error
    facts: dict[str, Any] = {
        "kind": kind,
        "path": str(path),
        "data_path": str(data_path(path)) if external else None,
        "inputs": [_value_info(onnx, v) for v in model.graph.input],
        "outputs": [_value_info(onnx, v) for v in model.graph.output],
        "input_names": list(input_names),
        "output_names": list(output_names),
        "weights_dtype": weights_dtype,
        "dynamic": bool(axes),
        "opset": OPSET,
        "weights_bytes": weights,
        "file_bytes": _model_bytes(path),
        "parameters": len(used),
        "missing_parameters": missing,
        "export_s": export_s,
        "seconds": time.perf_counter() - start,
    }
    say(f"{kind} done in {facts['seconds']:.2f} s")
    return facts


def _wrap(torch: Any, module: Any, call: Callable[..., Any]) -> Any:
    """An ``nn.Module`` whose forward is ``call(module, *inputs)``; the module is ``.m``."""

    class StageGraph(torch.nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.m = module.eval()

        def forward(self, *inputs: Any) -> Any:
            return call(self.m, *inputs)

    return StageGraph()


def _tidy_graph(graph: Any, prefix: str) -> dict[str, str]:
    """Drop weights from the graph inputs and strip the wrapper prefix from their names.

    Returns:
        Old name → new name for every initializer that had the prefix.
    """
    weights = {tensor.name for tensor in graph.initializer}
    kept = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)
    renamed = {name: name[len(prefix):] for name in weights if name.startswith(prefix)}
    taken = weights | {out for node in graph.node for out in node.output}
    clashes = sorted(new for new in renamed.values() if new in taken and new not in renamed)
    assert not clashes, f"renaming weights would clash with graph values: {clashes[:5]}"
    for tensor in graph.initializer:
        tensor.name = renamed.get(tensor.name, tensor.name)
    for value in graph.value_info:
        value.name = renamed.get(value.name, value.name)
    _rename_uses(graph, renamed)
    return renamed


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


def _save(onnx: Any, model: Any, path: Path, external: bool) -> None:
    """Write ``model`` to ``path`` (all weights in ``path.data`` when ``external``)."""
    _remove_model(path)
    if external:
        # NOTE: size_threshold=0 puts every weight, even a 32-float bias, in the data file:
        # onnxruntime can only override initializers stored there.
        onnx.save_model(model, str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_path(path).name,
                        size_threshold=0)
    else:
        onnx.save_model(model, str(path))


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


def _model_bytes(path: Path) -> int:
    """Bytes of an ONNX file plus its external data file, if any."""
    extra = data_path(path)
    return path.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)


def _remove_model(path: Path) -> None:
    """Delete an ONNX file and its data file, so no stale weights survive a re-export."""
    for stale in (path, data_path(path)):
        stale.unlink(missing_ok=True)


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


def _eager_attention(module: Any) -> None:
    """Switch a transformers model to its plain (eager) attention implementation."""
    if hasattr(module, "set_attn_implementation"):
        module.set_attn_implementation("eager")
    else:  # NOTE: transformers < 4.48 has no setter
        module.config._attn_implementation = "eager"


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
