"""Writing artifacts: the optimised graph → ``NAME.comfyc/`` (see runtime/artifact.py).

Steps: run the pass pipeline; lower to a program on PyTorch stages; *probe* it once — run the
program with a UNet that records its input shapes and returns zeros (so probing costs no
UNet compute), while the text encoder and VAE stages run for real — to learn which stages the
workflow calls and with which shapes; export each called stage (ONNX, or PyTorch weights for
stages planned on ``torch``); write constants, the tokenizer when a prompt is a param, and
the manifest with content hashes. Everything is written into a temporary directory beside
the target and renamed into place at the end, so an interrupted compile leaves nothing at the
target path.

Runtime-mode LoRAs (a strength that is a param, or ``--lora-runtime``): the stage with LoRA
slots is exported with its *base* weights (checkpoint plus folded LoRAs) as external data and
without offline optimisation (which renames weights), and the slots' factors go to
``lora/<stage>.safetensors``, indexed in the stage entry's ``lora`` object together with the
offset of each targeted weight in the external-data file (see :mod:`comfyc.runtime.lora`).
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from comfyc.runtime.manifest import (
    ConstantsIndex,
    Manifest,
    RunMeta,
    SourceRecord,
    StageEntry,
)

from ..catalog import Catalog, default_catalog
from ..errors import ExportError
from ..ir.core import Graph
from ..nodes import compile_rule

__all__ = ["CompileOptions", "CompileReport", "compile_graph", "parse_backend_map",
           "shape_params", "STAGE_BACKENDS"]

STAGE_BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "ov-cpu", "torch", "torch-compile",
                  "torch-cuda", "torch-compile-cuda", "trt")

#: Stages ``--quantize int8`` quantises unless told otherwise: where it pays on the CPU
#: (MatMul-heavy); the VAE is convolutions, which int8 makes slower (precision.py).
INT8_DEFAULT_STAGES = ("unet", "text_encoder")


@dataclass
class CompileOptions:
    """Options of ``comfyc compile``.

    Attributes:
        backend: One backend name, a per-stage map, or ``auto``.
        fp16: Export float16 stages.
        dynamic: Export ONNX with dynamic batch/height/width instead of the workflow's shapes.
        lora_runtime: Keep every LoRA's factors for merging at session creation.
        param_bindings: ``NODE.INPUT=NAME`` inputs to make runtime params.
        models_dir: The models folder.
        input_dir: Where LoadImage finds files while probing.
        output_dir: The output folder LoadImage's ``"name [output]"`` pictures come from
            while probing (None: such names are not found).
        optimize: Save onnxruntime's offline-optimised model when it helps.
        fold: Run constant folding.
        quantize: ``int8``: dynamic int8 quantisation of ``quantize_stages`` (ONNX stages).
        quantize_stages: Stage kinds (or names) to quantise.
        gpu_fp16: Also write a float16 variant of every ONNX stage (``NAME.fp16.onnx``),
            which GPU providers run by default (runtime ``precision`` option).
        store_torch: Also store every ONNX stage's PyTorch weights, so that the artifact can
            run (and be autotuned or benchmarked) on torch as well. On for ``auto``.
        autotune: Options for :func:`comfyc.compiler.lowering.autotune.autotune` when the
            backend is ``auto`` (``backends``, ``calls``, ``warmup``).
        compact_weights: Store float32 weights that float16 holds exactly (all of them, for
            a checkpoint shipped in float16) as float16, cast to float32 inside the graph:
            bit-identical results at about half the artifact size. Not for stages with
            runtime-mode LoRAs (their overrides replace weights by name and dtype).
        optimize_large: Also optimise stages with external data (over
            ``onnx_export.EXTERNAL_DATA_THRESHOLD``) offline. Off by default: the optimised
            file holds onnxruntime-only fused ops (other ONNX runtimes such as OpenVINO cannot
            read it), stores every folded weight in float32 (undoing ``compact_weights``),
            and costs a second copy of the weights while it is written.
        step_cache: Step caching (DeepCache), approximate and never on by default: the
            UNet's deep features are computed every ``step_cache`` steps and reused by a
            shallow UNet in between (see :mod:`~.step_cache`); None (or 1): exact.
        step_cache_skip: How many top-level skip connections the shallow UNet computes
            (1 = the least work; larger = closer to exact).
        noise_mode: The artifact's noise mode (``cpu``, ``cpu-legacy``, ``cuda``: whose
            per-step sampler noise runs reproduce unless ``run`` is given another); None: the
            runtime's default.
        step_graph: Write the UNet's sampler-step graph (:mod:`~.step_graph`: the CFG mix
            and the Euler, ancestral Euler or DPM++ 2M update inside the graph, one call a
            step, the same bits): ``auto`` for onnxruntime UNets of at most
            ``step_graph.STEP_GRAPH_MAX_BYTES``, ``on`` for any size, ``off`` never.
    """

    backend: str | dict[str, str] = "ort-cpu"
    fp16: bool = False
    dynamic: bool = False
    lora_runtime: bool = False
    param_bindings: list[str] = field(default_factory=list)
    models_dir: str | None = None
    input_dir: str = "input"
    output_dir: str | None = None
    optimize: bool = True
    fold: bool = True
    quantize: str | None = None
    quantize_stages: tuple[str, ...] = INT8_DEFAULT_STAGES
    gpu_fp16: bool = False
    store_torch: bool = False
    autotune: dict[str, Any] = field(default_factory=dict)
    compact_weights: bool = True
    optimize_large: bool = False
    step_cache: int | None = None
    step_cache_skip: int = 1
    noise_mode: str | None = None
    step_graph: str = "auto"


@dataclass
class CompileReport:
    """What a compile did (printed by the CLI, recorded in the manifest)."""

    path: Path
    stats: dict[str, Any]
    stages: dict[str, StageEntry]
    seconds: float
    size_bytes: int


def parse_backend_map(text: str | Mapping[str, str]) -> dict[str, str] | str:
    """``ort-cpu`` → ``"ort-cpu"``; ``unet=ort-cuda,vae_decoder=torch`` → a map.

    Raises:
        ValueError: A malformed map.
    """
    if not isinstance(text, str):
        return dict(text)
    if "=" not in text:
        return text
    out = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(f"--backend map entries are STAGE=BACKEND, got {part!r}")
        out[key.strip()] = value.strip()
    return out


class _Recorder:
    """Wraps a stage: records input shapes, optionally replaces the output with zeros."""

    def __init__(self, stage: Any, fake: bool) -> None:
        self.stage = stage
        self.fake = fake
        self.shapes: list[tuple[tuple[int, ...], ...]] = []
        #: The keyword inputs of each call, in order (SDXL's y, control residuals …).
        self.names: list[tuple[str, ...]] = []
        self.timer = None
        self.name = stage.name
        self.kind = stage.kind
        self.info = stage.info

    def __call__(self, *args: np.ndarray, **extras: np.ndarray) -> Any:
        arrays = (*args, *extras.values())
        self.shapes.append(tuple(tuple(np.shape(a)) for a in arrays))
        self.names.append(tuple(extras))
        if self.fake:
            return _fake_output(self.kind, self.stage, self.info, args[0])
        return self.stage(*args, **extras)


#: Stage kinds the probe does not run: their outputs' shapes follow from the inputs', and
#: their values cannot change which stages run or with which shapes. (A real VAE decode of a
#: 512 px SD1.5 image took 112 s of a 411 s compile on this 2-core box.)
_FAKE_KINDS = ("unet", "vae_decoder", "vae_encoder", "upscale", "controlnet")


def _fake_output(kind: str, stage: Any, info: Mapping[str, Any], first: np.ndarray
                 ) -> np.ndarray:
    """Zeros of the shape a ``kind`` stage returns for input ``first``."""
    batch = first.shape[0]
    if kind == "controlnet":
        outs = []
        for channels, halvings in zip(info["residual_channels"], info["residual_halvings"],
                                      strict=True):
            height, width = first.shape[2], first.shape[3]
            for _ in range(int(halvings)):
                height, width = -(-height // 2), -(-width // 2)
            outs.append(np.zeros((batch, int(channels), height, width), dtype=np.float32))
        return tuple(outs)
    if kind == "upscale":
        scale = int(info.get("scale", 1))
        return np.zeros((batch, int(info.get("out_channels", first.shape[1])),
                         first.shape[2] * scale, first.shape[3] * scale), dtype=np.float32)
    if kind == "unet":
        channels = int(info.get("out_channels", 4))
        return np.zeros((batch, channels, *first.shape[2:]), dtype=np.float32)
    config = stage.module.config
    factor = 2 ** (len(config.block_out_channels) - 1)
    if kind == "vae_decoder":
        height, width = first.shape[2] * factor, first.shape[3] * factor
        return np.zeros((batch, int(config.out_channels), height, width), dtype=np.float32)
    height, width = first.shape[2] // factor, first.shape[3] // factor
    return np.zeros((batch, int(config.latent_channels), height, width), dtype=np.float32)


class _RecordingLayers(Mapping[int, Any]):
    """Wraps the torch path's on-demand CLIP layer mapping."""

    def __init__(self, layers: Any) -> None:
        self.layers = layers
        self.used: dict[int, _Recorder] = {}
        self.timer = None

    def __getitem__(self, layer: int) -> Any:
        if layer not in self.used:
            self.used[layer] = _Recorder(self.layers[layer], fake=False)
        return self.used[layer]

    def __iter__(self) -> Any:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


class _RecordingLora(_Recorder):
    """Wraps a UNet with runtime-mode LoRAs: every strength gives this (fake) recorder."""

    def __init__(self, stage: Any) -> None:
        super().__init__(stage, fake=True)

    def with_strengths(self, strengths: Any) -> _RecordingLora:
        return self


class _RecordingLoraLayers(_RecordingLayers):
    """Wraps text encoders with runtime-mode LoRAs: records the CLIP layers used (the base
    weights run; only shapes matter)."""

    def __init__(self, stage: Any) -> None:
        super().__init__(stage.with_strengths((0.0,) * len(stage.slots)))
        self.lora_stage = stage

    def with_strengths(self, strengths: Any) -> _RecordingLoraLayers:
        return self


def _probe(program: Any, input_dir: str, output_dir: str | None = None) -> dict[str, Any]:
    """Run the program once with recording stages; returns the recorders by stage name."""
    recorders: dict[str, Any] = {}
    originals = dict(program.stages)
    for name, stage in originals.items():
        if hasattr(stage, "with_strengths"):
            rec: Any = (_RecordingLora(stage) if stage.kind == "unet"
                        else _RecordingLoraLayers(stage))
        elif hasattr(stage, "made"):
            rec = _RecordingLayers(stage)
        else:
            rec = _Recorder(stage, fake=stage.kind in _FAKE_KINDS
                            and hasattr(getattr(stage, "module", None), "config")
                            or stage.kind in ("unet", "upscale", "controlnet"))
        recorders[name] = rec
        program.stages[name] = rec
    try:
        program.run({}, input_dir=input_dir, output_dir=output_dir, save=False)
    finally:
        program.stages.update(originals)
    return recorders


def _tensor_sha(value: Any) -> str:
    return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]


def _encode_constants(constants: Mapping[str, Any]) -> tuple[dict[str, np.ndarray],
                                                            dict[str, Any]]:
    tensors: dict[str, np.ndarray] = {}
    entries: dict[str, Any] = {}
    for key, value in constants.items():
        if value is None:
            entries[key] = {"type": "none"}
        elif isinstance(value, np.ndarray):
            tensors[key] = np.ascontiguousarray(value)
            entries[key] = {"type": "array", "tensor": key}
        elif isinstance(value, list):
            items = []
            for index, cond in enumerate(value):
                item: dict[str, Any] = {"tensors": {}, "options": {}}
                for name, field_value in cond.items():
                    if isinstance(field_value, np.ndarray):
                        tensor_key = f"{key}.{index}.{name}"
                        tensors[tensor_key] = np.ascontiguousarray(field_value)
                        item["tensors"][name] = tensor_key
                    elif field_value is None:
                        continue
                    else:
                        item["options"][name] = (list(field_value) if isinstance(
                            field_value, tuple) else field_value)
                items.append(item)
            entries[key] = {"type": "conditioning", "items": items}
        else:
            raise ExportError(f"constant {key!r} of type {type(value).__name__} cannot be stored")
    return tensors, entries


def shape_params(graph: Graph) -> list[str]:
    """The runtime params that reach an input setting an image's or a batch's size (the
    registry's ``shape_inputs``), in the order first met; stages must then take any shape."""
    from comfyc.runtime.nodes import registry

    from ..ir.core import Param

    found: list[str] = []
    nodes = registry()
    for node in graph.nodes:
        definition = nodes.get(node.class_type)
        for name in definition.shape_inputs if definition is not None else ():
            value = node.inputs.get(name)
            if isinstance(value, Param) and value.name not in found:
                found.append(value.name)
    return found


def _stage_backend(plan: str | dict[str, str], name: str, kind: str) -> str:
    if isinstance(plan, str):
        return "ort-cpu" if plan == "auto" else plan
    return plan.get(name) or plan.get(kind) or plan.get("*") or "ort-cpu"


def compile_graph(graph: Graph, output: str | Path, options: CompileOptions | None = None, *,
                  catalog: Catalog | None = None,
                  progress: Callable[[str], None] | None = None) -> CompileReport:
    """Compile a loaded workflow into an artifact directory.

    Args:
        graph: The workflow (not yet validated; the pipeline validates it).
        output: The artifact path (``NAME.comfyc``); replaced atomically if it exists.
        options: Compile options.
        catalog: Node schemas.
        progress: ``progress(message)`` for stage-by-stage progress.

    Raises:
        WorkflowErrors: The workflow is invalid or cannot run.
        ExportError: A stage failed to export.
    """
    from comfyc import __version__

    from ..passes.base import PassContext, PassOptions
    from ..pipeline import run_pipeline
    from .program import TorchModelCache, lower_to_program

    options = options or CompileOptions()
    if options.noise_mode is not None:
        from comfyc.runtime.noise import check_noise_mode

        try:
            check_noise_mode(options.noise_mode)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
    if options.quantize not in (None, "int8"):
        raise ExportError(f"--quantize {options.quantize!r} is not supported; expected int8")
    if options.quantize and options.fp16:
        raise ExportError("--quantize int8 starts from float32 stages; drop --fp16 (use "
                          "--gpu-fp16 for float16 variants beside them)")
    catalog = catalog or default_catalog()
    say = progress or (lambda message: None)
    started = time.perf_counter()
    output = Path(output)
    source_prompt = graph.source.prompt if not graph.params else None
    cache = (_LeanModelCache(options.models_dir) if _lean_load(graph, options)
             else TorchModelCache(options.models_dir))
    context = PassContext(catalog, PassOptions(
        param_bindings=list(options.param_bindings), lora_runtime=options.lora_runtime,
        models_dir=options.models_dir), models=cache)
    nodes_before = len(graph.nodes)

    def after_pass(step: Any, result: Any) -> None:
        say(f"pass {step.name}: {len(graph.nodes)} nodes"
            f"{' (changed)' if result.modified else ''}")

    run_pipeline(graph, context, fold=options.fold, after_each=after_pass)
    sized_by = shape_params(graph)
    if sized_by and not options.dynamic:
        # NOTE: the probe below records the shapes of the params' defaults only; a stage
        # exported at those would refuse a run with another size or batch.
        say(f"params {', '.join(sized_by)} set image, batch or area sizes: exporting the "
            "stages with dynamic shapes")
        options = replace(options, dynamic=True)
    say("lowering to a program")
    program = lower_to_program(graph, catalog, cache=cache,
                               merged_into=context.changes.merged_into())
    say("probing stage shapes")
    recorders = _probe(program, options.input_dir, options.output_dir)
    _release_unused(program, recorders, cache)

    parent = output.parent if str(output.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{output.name}.tmp-{os.getpid()}"
    _remove_stale(parent, output.name)
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "stages").mkdir(parents=True)
    try:
        stages_manifest, plan = _export_stages(program, recorders, tmp, options, say)
        tensors, entries = _encode_constants(program.constants)
        if tensors:
            from safetensors.numpy import save_file

            save_file(tensors, str(tmp / "constants.safetensors"))
        needs_tokenizer = any(e.kind == "text_encoder_layers" and e.layers
                              for e in stages_manifest.values())
        if needs_tokenizer:
            from comfyc.runtime.tokenizer import DEFAULT_VOCAB_PATH

            (tmp / "tokenizer").mkdir()
            shutil.copyfile(DEFAULT_VOCAB_PATH, tmp / "tokenizer" / DEFAULT_VOCAB_PATH.name)
        stats: dict[str, Any] = dict(context.changes.summary())
        stats["nodes_before"] = nodes_before
        stats["nodes_after"] = len(graph.nodes)
        manifest = Manifest(
            comfyc_version=__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            source=SourceRecord(
                file=str(graph.source.file or ""), kind=graph.source.kind,
                sha256=hashlib.sha256(str(graph.source.text or "").encode()).hexdigest(),
                prompt=source_prompt,
                # The workflow as written (for `comfyc viz`'s before view); not huge files.
                text=_source_text(graph)),
            params=[p.to_json() for p in program.params.values()],
            outputs=[op.id for op in program.ops
                     if (schema := catalog.get(op.op)) is not None and schema.output_node],
            ops=[op.to_json() for op in program.ops],
            stages=stages_manifest,
            plan=plan,
            constants=ConstantsIndex("constants.safetensors", entries),
            run_meta=RunMeta(program.meta.get("prompt"), program.meta.get("param_uses") or {},
                             program.meta.get("extra_pnginfo"), options.noise_mode),
            stats=stats,
            changes=context.changes.to_json(),
            # The optimised graph as DSL (`comfyc viz` draws it beside the source).
            optimized=str(graph),
            options={"fp16": options.fp16, "dynamic": options.dynamic,
                     "lora_runtime": options.lora_runtime, "quantize": options.quantize,
                     "gpu_fp16": options.gpu_fp16,
                     "store_torch": options.store_torch or options.backend == "auto",
                     "compact_weights": options.compact_weights,
                     # NOTE: results of a step-caching artifact approximate the workflow's.
                     **({"step_cache": {"interval": options.step_cache,
                                        "skip": options.step_cache_skip},
                         "approximate": True}
                        if (options.step_cache or 1) > 1 else {})},
        )
        hash_start = time.perf_counter()
        manifest.files = {p.relative_to(tmp).as_posix(): _sha(p)
                          for p in sorted(tmp.rglob("*")) if p.is_file()}
        say(f"hashed {len(manifest.files)} files in {time.perf_counter() - hash_start:.1f} s")
        if options.backend == "auto":
            from .autotune import autotune

            say("autotuning: measuring every available backend per stage")
            manifest = autotune(tmp, manifest, progress=say, **options.autotune)
        (tmp / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=1),
                                           encoding="utf-8")
        _replace_dir(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    seconds = time.perf_counter() - started
    say(f"wrote {output} ({size / 1e6:.1f} MB) in {seconds:.1f} s")
    return CompileReport(output, stats, stages_manifest, seconds, size)


def _release_unused(program: Any, recorders: Mapping[str, Any], cache: Any) -> None:
    """Drop the modules of stages the workflow never calls (text encoders whose prompts were
    folded) before exporting, so their weights are not held while the UNet is written
    (SDXL: 3.3 GB of float32 CLIP-L and OpenCLIP-bigG)."""
    import gc

    import torch

    dropped: set[int] = set()
    for name, rec in recorders.items():
        unused = not rec.used if isinstance(rec, _RecordingLayers) else not rec.shapes
        holder = getattr(rec, "layers", None) if isinstance(rec, _RecordingLayers) \
            else getattr(rec, "stage", None)
        if not unused or holder is None:
            continue
        # NOTE: the torch modules the stage holds (one CLIP, or SDXL's two).
        modules = [v for v in vars(holder).values() if isinstance(v, torch.nn.Module)]
        if modules:
            dropped.update(id(m) for m in modules)
            program.stages[name] = None
            # NOTE: the recorder held the stage too; an unused one only needs its kind.
            if isinstance(rec, _RecordingLayers):
                rec.layers = {}
            else:
                rec.stage = None
    if not dropped:
        return
    for value in list(cache.loaded.values()):
        if isinstance(value, dict):
            for part, module in list(value.items()):
                if id(module) in dropped:
                    value[part] = None
        else:
            for part in ("text_encoder", "text_encoder_2", "vae", "unet"):
                if id(getattr(value, part, None)) in dropped:
                    setattr(value, part, None)
    gc.collect()


def _lean_load(graph: Graph, options: CompileOptions) -> bool:
    """Whether the compile may keep a float16 checkpoint's UNet in float16 (see
    :class:`_LeanModelCache`): only ONNX stages are written, and no LoRA changes the UNet."""
    backends = (list(options.backend.values()) if isinstance(options.backend, dict)
                else [options.backend])
    onnx_only = all(b.startswith(("ort", "ov-")) or b == "trt" for b in backends)
    # NOTE: a UNet with LoRAs must be merged in float32, which the ordinary cache does.
    loras = any(compile_rule(node.class_type).is_lora for node in graph.nodes)
    return (onnx_only and not options.store_torch and not options.lora_runtime
            and not loras and options.compact_weights and not options.quantize)


def _make_lean_cache() -> type:
    from .program import TorchModelCache

    class LeanModelCache(TorchModelCache):  # type: ignore[misc,valid-type]
        """Loads a checkpoint whose UNet weights are float16 with the UNet kept in float16.

        Compiling never runs the UNet (the probe fakes it; the exporter traces stand-ins and
        streams the weights), and float16 weights stored as they are (``compact_weights``)
        are the bytes a float32 load would have stored, so the artifact is the same — while
        the compile holds half the UNet's bytes (SD1.5: 1.7 GB instead of 3.4; SDXL: 5.1 GB
        instead of 10.3). Text encoders (run to fold prompts) and the VAE are upcast to
        float32 as the ordinary load makes them. Other files load as usual.
        """

        def checkpoint(self, name: str) -> Any:
            from comfyc.runtime.model_paths import resolve

            from ..models.flow import FLOW_FAMILIES, checkpoint_family
            from ..models.single_file import load_checkpoint
            from ..models.store import parse_weights_key

            if parse_weights_key(name)[0] != "checkpoint":  # UNETLoader / CLIP loader files
                return super().checkpoint(name)
            path = resolve("checkpoints", name, self.models_dir)
            key = f"ckpt:{path}"
            if key not in self.loaded:
                if (not _unet_is_float16(Path(path))
                        or checkpoint_family(path) in FLOW_FAMILIES):
                    return super().checkpoint(name)
                loaded = load_checkpoint(path, dtype=None)
                for part in ("text_encoder", "text_encoder_2", "vae", "text_projection"):
                    value = getattr(loaded, part, None)
                    if value is not None:
                        setattr(loaded, part, value.float())
                self.loaded[key] = loaded
            return self.loaded[key]

    return LeanModelCache


def _LeanModelCache(models_dir: str | None) -> Any:  # noqa: N802 - a class made lazily
    return _make_lean_cache()(models_dir)


def _unet_is_float16(path: Path) -> bool:
    """Whether a single-file safetensors checkpoint stores every UNet weight as float16."""
    import struct

    if path.suffix.lower() not in (".safetensors", ".sft") or not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error):
        return False
    dtypes = {spec["dtype"] for key, spec in header.items()
              if key.startswith("model.diffusion_model.") and isinstance(spec, dict)}
    return dtypes == {"F16"}


def _sha(path: Path) -> str:
    from comfyc.runtime.artifact import file_sha256

    return file_sha256(path)


def _replace_dir(tmp: Path, output: Path) -> None:
    """Move ``tmp`` to ``output``; an existing artifact there is replaced in one step.

    On Linux the two folders are swapped by ``renameat2(RENAME_EXCHANGE)``, so a reader
    finds a whole artifact at ``output`` at every moment (the old one or the new one), and two
    compiles to one ``output`` both finish (the last one wins); the old artifact, now at
    ``tmp``, is deleted after. Elsewhere the old one is moved aside first (a moment without
    an artifact).
    """
    for _ in range(100):
        if not output.exists():
            try:
                os.rename(tmp, output)
                return
            except OSError as exc:
                # Another compile put its artifact there first: swap with it instead.
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue
        try:
            swapped = _exchange(tmp, output)
        except FileNotFoundError:
            continue  # Moved away meanwhile (another compile's fallback): rename instead.
        if swapped:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
        os.replace(tmp, output)
        shutil.rmtree(old, ignore_errors=True)
        return
    raise ExportError(f"could not put the artifact at {output}: other processes keep "
                      "replacing it")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``);
    False where the system or filesystem cannot.

    Raises:
        FileNotFoundError: One of them does not exist.
    """
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _remove_stale(parent: Path, name: str) -> None:
    """Delete the ``.NAME.tmp-PID`` / ``.NAME.old-PID`` folders that compiles to ``NAME``
    left when they were killed (their process is gone); a live compile's are kept."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:tmp|old)-(\d+)")
    for left in parent.glob(f".{glob.escape(name)}.*-*"):
        match = pattern.fullmatch(left.name)
        if match is None or int(match[1]) == os.getpid() or _alive(int(match[1])):
            continue
        shutil.rmtree(left, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process of this id exists (a reused id keeps a leftover: the safe side)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def _export_stages(program: Any, recorders: dict[str, Any], root: Path,
                   options: CompileOptions, say: Callable[[str], None]
                   ) -> tuple[dict[str, StageEntry], dict[str, str]]:
    from . import onnx_export

    plan_option = options.backend
    step_graph_used = _uses_step_graph(program.ops)
    manifest: dict[str, StageEntry] = {}
    plan: dict[str, str] = {}
    for name, rec in recorders.items():
        if isinstance(rec, _RecordingLayers):
            lora_stage = getattr(rec, "lora_stage", None)
            layers = {}
            for layer, layer_rec in rec.used.items():
                sub_name = f"{name}_L{-layer}"
                backend = _stage_backend(plan_option, sub_name, "text_encoder")
                entry = _export_one(onnx_export, layer_rec, sub_name, "text_encoder",
                                    layer_rec.stage.module, root, backend, options, say,
                                    layer=layer, lora=lora_stage is not None)
                if lora_stage is not None:
                    entry.lora = _write_lora(root, sub_name, entry, lora_stage.slots)
                entry.name = sub_name
                layers[str(layer)] = entry
                plan[sub_name] = entry.backend
            manifest[name] = StageEntry("text_encoder_layers", layers=layers)
            continue
        if not rec.shapes:
            manifest[name] = StageEntry(rec.kind, unused=True)
            continue
        backend = _stage_backend(plan_option, name, rec.kind)
        lora = isinstance(rec, _RecordingLora)
        manifest[name] = _export_one(onnx_export, rec, name, rec.kind, rec.stage.module, root,
                                     backend, options, say, lora=lora,
                                     step_graph_used=step_graph_used)
        if lora:
            manifest[name].lora = _write_lora(root, name, manifest[name], rec.stage.slots)
        plan[name] = manifest[name].backend
    return manifest, plan


def _uses_step_graph(ops: Any) -> bool:
    """Whether a sampler of the program can step through a UNet's step graph: False only
    when every op that calls a UNet has a constant ``sampler_name`` (KSampler,
    KSamplerAdvanced) whose sampler never does; custom sampling (a SAMPLER input) and a
    sampler given as a runtime param may."""
    from comfyc.runtime.nodes import registry
    from comfyc.runtime.samplers import sampler_uses_step_graph

    for op in ops:
        node = registry().get(op.op)
        if node is None or not any(call.kind == "unet" for call in node.calls):
            continue
        name = op.args.get("sampler_name")
        if not isinstance(name, str) or sampler_uses_step_graph(name) is not False:
            return True
    return False


def _write_lora(root: Path, name: str, entry: StageEntry,
                slots: list[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Store the factors of a stage's runtime-mode LoRAs; returns the manifest's index.

    Targets are keyed by the stage's weight names (ONNX initializer = torch state-dict name;
    ``text_model.*`` LoRA targets match CLIP weights with or without that prefix); targets
    the exported graph does not use are left out. For ONNX stages the index records where
    each targeted weight's base value lies in the external-data file, so the runtime reads it
    with numpy alone.

    Raises:
        ExportError: A LoRA's weight names match none of the stage's weights, or a targeted
            weight is not stored as external data.
    """
    from safetensors.numpy import save_file

    if entry.file:
        weights = _external_weights(root / entry.file)
        locations = {spec["location"] for spec in weights.values() if "location" in spec}
        if len(locations) != 1:
            raise ExportError(f"{entry.file} keeps its weights in {sorted(locations)}; "
                              f"runtime-mode LoRA needs them in one external-data file")
        source = {"onnx_data": (Path(entry.file).parent / locations.pop()).as_posix()}
    else:
        from safetensors import safe_open

        torch_file = Path(str(entry.torch)) / "model.safetensors"
        with safe_open(str(root / torch_file), framework="numpy") as handle:
            weights = {key: {"shape": list(handle.get_slice(key).get_shape())}
                       for key in handle.keys()}  # noqa: SIM118 (safe_open)
        source = {"torch": torch_file.as_posix()}
    tensors: dict[str, np.ndarray] = {}
    index_slots = []
    used: dict[str, Any] = {}
    for number, (lora_name, factors) in enumerate(slots):
        targets: dict[str, float] = {}
        for target, factor in factors.items():
            weight = next((n for n in (target, target.removeprefix("text_model."))
                           if n in weights), None)
            if weight is None:
                continue  # Not a weight this stage's graph uses: it cannot matter.
            spec = weights[weight]
            if "internal" in spec:
                raise ExportError(f"weight {weight} of stage {name} is stored inside the .onnx "
                                  f"file; runtime-mode LoRA needs every weight as external data")
            up = factor.up.detach().flatten(1)
            down = factor.down.detach().flatten(1)
            if up.shape[0] * down.shape[1] != int(np.prod(spec["shape"])):
                raise ExportError(
                    f"LoRA {lora_name!r} module {factor.source!r} gives a "
                    f"{up.shape[0]}x{down.shape[1]} update for {weight} of shape "
                    f"{spec['shape']}; the LoRA was made for another model")
            tensors[f"{number}:{weight}:up"] = _numpy_factor(up)
            tensors[f"{number}:{weight}:down"] = _numpy_factor(down)
            targets[weight] = float(factor.scale)
            used[weight] = {k: v for k, v in spec.items() if k != "location"}
        if factors and not targets:
            raise ExportError(
                f"none of the {len(factors)} weights LoRA {lora_name!r} targets is a weight of "
                f"stage {name} (e.g. {next(iter(factors))!r}); the stage's weight names are "
                f"not the torch state-dict names it was exported with")
        index_slots.append({"name": lora_name, "targets": targets})
    folder = root / "lora"
    folder.mkdir(exist_ok=True)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    return {"file": f"lora/{name}.safetensors", "slots": index_slots, "weights": used,
            "source": source}


def _numpy_factor(tensor: Any) -> np.ndarray:
    """A LoRA factor as a contiguous numpy array (bfloat16 becomes float32: numpy has none)."""
    import torch

    if tensor.dtype not in (torch.float32, torch.float16, torch.float64):
        tensor = tensor.float()
    return np.ascontiguousarray(tensor.cpu().numpy())


def _external_weights(path: Path) -> dict[str, dict[str, Any]]:
    """Per initializer of an ONNX file: shape, dtype and where its data lies.

    Returns:
        ``{name: {"shape", "dtype", "offset", "length", "location"}}`` for external data,
        ``{name: {"shape", "dtype", "internal": True}}`` for weights inside the file.
    """
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(path), load_external_data=False)
    out: dict[str, dict[str, Any]] = {}
    for tensor in model.graph.initializer:
        spec: dict[str, Any] = {"shape": [int(d) for d in tensor.dims],
                                "dtype": str(np.dtype(tensor_dtype_to_np_dtype(
                                    tensor.data_type)))}
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            fields = {item.key: item.value for item in tensor.external_data}
            dtype = np.dtype(spec["dtype"])
            spec.update(offset=int(fields.get("offset", 0)),
                        length=int(fields.get("length", int(np.prod(spec["shape"]))
                                              * dtype.itemsize)),
                        location=fields["location"])
        else:
            spec["internal"] = True
        out[tensor.name] = spec
    return out


def _source_text(graph: Any) -> str | None:
    """The source text of a workflow, when it is text and under 1 MB."""
    text = graph.source.text
    return text if isinstance(text, str) and len(text) < (1 << 20) else None


def _export_one(onnx_export: Any, rec: Any, name: str, kind: str, module: Any, root: Path,
                backend: str, options: CompileOptions, say: Callable[[str], None],
                layer: int | None = None, lora: bool = False,
                step_graph_used: bool = True) -> StageEntry:
    """Export one stage (ONNX, or PyTorch weights); ``lora``: its weights will be replaced
    when sessions are made (external data for every weight, no offline optimisation);
    ``step_graph_used``: whether a sampler can step through a UNet's step graph
    (:func:`_uses_step_graph`)."""
    shapes = sorted(set(rec.shapes))
    entry = StageEntry(kind, backend, info=dict(rec.info),
                       shapes=[list(map(list, s)) for s in shapes])
    if layer is not None:
        entry.info["layer"] = layer
    if backend in ("torch", "torch-compile"):
        from .torch_weights import save_torch_stage

        folder = Path("torch") / name
        if not save_torch_stage(module, kind, root / folder):
            raise ExportError(f"stage {name}: {kind} stages run as ONNX stages only (no stored "
                              f"torch stage); compile it for an onnxruntime backend, e.g. "
                              f"--backend {name}=ort-cpu")
        entry.torch = folder.as_posix()
        say(f"stored {name} for the torch backend")
        return entry
    if backend not in STAGE_BACKENDS and not backend.startswith("ort-"):
        raise ExportError(f"unknown backend {backend!r} for stage {name}; expected one of "
                          f"{', '.join(STAGE_BACKENDS)}, ort-<provider> or auto")
    # An ONNX file for ort-* and trt (engines are built from it).
    dynamic = options.dynamic or len(shapes) > 1
    path = root / "stages" / f"{name}.onnx"
    say(f"exporting {name} ({kind}{', dynamic shapes' if dynamic else ''}"
        f"{', fp16' if options.fp16 else ''}) ...")
    t0 = time.perf_counter()
    external = True if lora else None
    # NOTE: float16 storage is lossless (only weights float16 holds exactly), but runtime
    # LoRA overrides replace weights by name in the stored dtype, and int8 quantisation
    # reads float32 weights: those stages keep float32 files.
    compact = options.compact_weights and not lora and not options.gpu_fp16 and not (
        options.quantize and (kind in options.quantize_stages or name in options.quantize_stages))
    common = {"fp16": options.fp16, "compact": compact,
              "progress": lambda message: say(f"  {name}: {message}")}
    from .stage_exports import export_dit, export_flow_text_encoder, info_wants_flow_export

    caching = (kind == "unet" and (options.step_cache or 1) > 1
               and not info_wants_flow_export(kind, rec.info))
    if caching and lora:
        raise ExportError(f"stage {name}: step caching and runtime-mode LoRAs cannot be "
                          f"combined; fold the LoRA (constant strength) or drop --step-cache")
    try:
        if caching:
            from .step_cache import export_unet_step_cache

            (b, c, h, w), _, (_, t, _), *_extras = shapes[0]
            shallow = path.with_suffix(".shallow.onnx")
            facts = export_unet_step_cache(module, path, shallow, skip=options.step_cache_skip,
                                           batch=b, height=h, width=w, context_len=t,
                                           dynamic=dynamic, **common)
            entry.variants["step_cache_shallow"] = f"stages/{shallow.name}"
            entry.info["step_cache"] = {"interval": int(options.step_cache or 1),
                                        "skip": options.step_cache_skip, "approximate": True}
        elif kind == "upscale":
            from .stage_exports import export_upscale

            facts = export_upscale(module, path, rec.info)
        elif kind in ("controlnet", "t2i_adapter") or (
                kind == "unet" and any(n.startswith("control_") for ns in rec.names
                                       for n in ns)):
            # ControlNets, T2I-Adapters and UNets taking their residuals (stage_exports).
            from .stage_exports import export_control_stage

            facts = export_control_stage(kind, module, path, rec, dynamic=dynamic,
                                         external_data=external, **common)
            if facts.get("control_inputs"):
                entry.info["control_inputs"] = facts["control_inputs"]
        elif info_wants_flow_export(kind, rec.info):
            # SD3 / Flux transformers and their text encoders (compiler/lowering/stage_exports).
            if kind == "unet":
                facts = export_dit(module, path, shape=shapes[0], dynamic=dynamic,
                                   extra_inputs=list(rec.info.get("extra_inputs") or ()),
                                   external_data=external, **common)
            else:
                facts = export_flow_text_encoder(
                    module, path, layer=layer if layer else -1,
                    layer_norm=bool(rec.info.get("layer_norm", True)),
                    projected=bool(rec.info.get("projected", True)),
                    t5=rec.info.get("tokenizer") == "t5", external_data=external, **common)
        elif kind == "unet":
            (b, c, h, w), _, (_, t, _), *_extras = shapes[0]
            # NOTE: prompts of any number of 77-token chunks (issue #19 item 2); TensorRT
            # engines keep the traced shapes (their profiles would need ranges).
            facts = onnx_export.export_unet(
                module, path, batch=b, height=h, width=w, context_len=t, dynamic=dynamic,
                external_data=external, free_prompt_axes=backend not in ("trt", "ort-trt"),
                **common)
        elif kind == "text_encoder":
            facts = onnx_export.export_text_encoder(module, path, layer=layer if layer else -1,
                                                    layer_norm=bool(rec.info.get("layer_norm",
                                                                                 True)),
                                                    external_data=external, **common)
        elif kind == "vae_decoder":
            (b, _, h, w), = shapes[0]
            facts = onnx_export.export_vae_decoder(module, path, batch=b, height=h, width=w,
                                                   dynamic=dynamic, **common)
        else:
            (b, _, h, w), = shapes[0]
            facts = onnx_export.export_vae_encoder(module, path, batch=b, height=h, width=w,
                                                   dynamic=dynamic, **common)
    except Exception as exc:  # noqa: BLE001 - any exporter failure falls back to PyTorch
        # NOTE: a stage without a working ONNX lowering runs on PyTorch; the manifest records
        # why, and running it without torch says what to install.
        reason = f"{type(exc).__name__}: {exc}"
        say(f"warning: {name} could not be exported to ONNX ({reason}); storing it for the "
            f"torch backend instead")
        onnx_export.remove_model(path)
        entry = _export_one(onnx_export, rec, name, kind, module, root, "torch", options, say,
                            layer=layer, lora=lora)
        entry.fallback = reason
        return entry
    entry.file = f"stages/{name}.onnx"
    entry.export_s = round(time.perf_counter() - t0, 3)
    entry.facts = _jsonable(_relative_paths(facts, root))
    entry.dynamic = dynamic
    if options.quantize and not lora and not caching and (kind in options.quantize_stages
                                          or name in options.quantize_stages):
        from .precision import quantize_int8

        quantize_int8(path, path)
        entry.precision = "int8"
        say(f"quantized {name} to int8")
    if options.store_torch or options.backend == "auto":
        from .torch_weights import save_torch_stage

        if save_torch_stage(module, kind, root / "torch" / name):
            entry.torch = (Path("torch") / name).as_posix()
    if lora or caching:
        # Offline optimisation folds and renames weights: overrides would no longer apply,
        # and the shallow graph of step caching reads the full graph's weight file.
        entry.optimized = False
    elif backend in ("trt", "ort-trt"):
        # onnxruntime's offline fusions (com.microsoft ops) would stop TensorRT's parser.
        entry.optimized = False
    elif facts.get("data_path") and not options.optimize_large:
        # See CompileOptions.optimize_large: large stages stay portable and compact.
        entry.optimized = False
    elif options.optimize and hasattr(onnx_export, "optimize_offline"):
        optimized = path.with_suffix(".opt.onnx")
        try:
            helped = onnx_export.optimize_offline(path, optimized, level="extended")
        except Exception:  # noqa: BLE001 - optimisation is best effort
            helped = False
        if helped:
            # The optimised graph names its own data file: it replaces the stage's file
            # and data together, so that no unread weights stay behind.
            onnx_export.replace_model(optimized, path)
            entry.optimized = "extended"
        else:
            onnx_export.remove_model(optimized)
            entry.optimized = False
    if kind == "unet" and not (lora or caching):
        _add_step_graph(onnx_export, entry, path, name, backend, options, say, step_graph_used)
    if options.gpu_fp16 and not options.fp16 and entry.precision != "int8":
        from .precision import to_fp16

        variant = path.with_suffix(".fp16.onnx")
        to_fp16(path, variant)
        entry.variants = {"fp16": f"stages/{variant.name}"}
    return entry


def _add_step_graph(onnx_export: Any, entry: StageEntry, path: Path, name: str, backend: str,
                    options: CompileOptions, say: Callable[[str], None],
                    used: bool = True) -> None:
    """Write the UNet's sampler-step graph (``NAME.step.onnx``) when ``options.step_graph``
    asks for it and the stage can have one (an onnxruntime UNet with the plain inputs).
    ``used`` False: no sampler of the workflow would step through it, so ``auto`` writes none
    (a program would hold the weights in two sessions for nothing)."""
    from .step_graph import STEP_GRAPH_MAX_BYTES, STEP_GRAPH_VERSION, write_step_graph

    if options.step_graph not in ("auto", "on", "off"):
        raise ExportError(f"step_graph must be auto, on or off, got {options.step_graph!r}")
    if options.step_graph == "off" or not (backend.startswith("ort") or backend == "auto"):
        return
    if backend == "ort-trt":
        return  # TensorRT engines are built from the plain graph.
    size = onnx_export.model_bytes(path)
    if options.step_graph == "auto" and size > STEP_GRAPH_MAX_BYTES:
        return
    if options.step_graph == "auto" and not used:
        say(f"  {name}: no sampler-step graph (no sampler of the workflow steps through one)")
        return
    prediction = str(entry.info.get("prediction_type") or "eps")
    try:
        step = write_step_graph(path, prediction)
    except ExportError as exc:
        if options.step_graph == "on":
            raise
        say(f"  {name}: no sampler-step graph ({exc})")
        return
    entry.variants["step"] = f"stages/{step.name}"
    entry.info["step_graph"] = STEP_GRAPH_VERSION
    say(f"  {name}: wrote its sampler-step graph ({step.name})")


def _relative_paths(facts: dict[str, Any], root: Path) -> dict[str, Any]:
    """The export facts with their file paths relative to the artifact (``stages/…``).

    NOTE: the exporters report where they wrote, which is inside the temporary folder the
    artifact is built in; the manifest must not keep that name (issue #18).
    """
    out = dict(facts)
    for key in ("path", "data_path"):
        value = out.get(key)
        if isinstance(value, str):
            try:
                out[key] = Path(value).resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                del out[key]  # written elsewhere: no place in the artifact's record
    return out


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        return str(value)
