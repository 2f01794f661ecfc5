"""Writing artifacts: the optimised graph → ``NAME.comfyc/`` (see runtime/artifact.py).

Steps: run the pass pipeline; lower to a program on PyTorch stages; *probe* it once — run the
program with a UNet that records its input shapes and returns zeros (so probing costs no
UNet compute), while the text encoder and VAE stages run for real — to learn which stages the
workflow calls and with which shapes; export each called stage (ONNX, or PyTorch weights for
stages planned on ``torch``); write constants, the tokenizer when a prompt is a param, and
the manifest with content hashes. Everything is written into a temporary directory beside
the target and renamed into place at the end, so an interrupted compile leaves nothing at the
target path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import Catalog, default_catalog
from ..errors import ExportError
from ..ir.core import Graph

__all__ = ["CompileOptions", "CompileReport", "compile_graph", "parse_backend_map",
           "STAGE_BACKENDS"]

STAGE_BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "torch", "torch-compile", "trt")


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
        optimize: Save onnxruntime's offline-optimised model when it helps.
        fold: Run constant folding.
    """

    backend: str | dict[str, str] = "ort-cpu"
    fp16: bool = False
    dynamic: bool = False
    lora_runtime: bool = False
    param_bindings: list[str] = field(default_factory=list)
    models_dir: str | None = None
    input_dir: str = "input"
    optimize: bool = True
    fold: bool = True


@dataclass
class CompileReport:
    """What a compile did (printed by the CLI, recorded in the manifest)."""

    path: Path
    stats: dict[str, Any]
    stages: dict[str, Any]
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
        self.timer = None
        self.name = stage.name
        self.kind = stage.kind
        self.info = stage.info

    def __call__(self, *args: np.ndarray) -> Any:
        self.shapes.append(tuple(tuple(np.shape(a)) for a in args))
        if self.fake:
            sample = args[0]
            return np.zeros((sample.shape[0], 4, *sample.shape[2:]), dtype=np.float32)
        return self.stage(*args)


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


def _probe(program: Any, input_dir: str) -> dict[str, Any]:
    """Run the program once with recording stages; returns the recorders by stage name."""
    recorders: dict[str, Any] = {}
    for name, stage in list(program.stages.items()):
        if hasattr(stage, "made"):
            rec: Any = _RecordingLayers(stage)
        else:
            rec = _Recorder(stage, fake=stage.kind == "unet")
        recorders[name] = rec
        program.stages[name] = rec
    try:
        program.run({}, input_dir=input_dir, save=False)
    finally:
        for name, rec in recorders.items():
            program.stages[name] = rec.layers if isinstance(rec, _RecordingLayers) else rec.stage
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


def _stage_backend(plan: str | dict[str, str], name: str, kind: str) -> str:
    if isinstance(plan, str):
        return "ort-cpu" if plan == "auto" else plan
    return plan.get(name) or plan.get(kind) or "ort-cpu"


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
    from comfyc.frontends.comfy_json.api import graph_to_api

    from ..passes.base import PassContext
    from ..pipeline import run_pipeline
    from .program import TorchModelCache, lower_to_program

    options = options or CompileOptions()
    catalog = catalog or default_catalog()
    say = progress or (lambda message: None)
    started = time.perf_counter()
    output = Path(output)
    source_prompt = graph_to_api(graph) if not graph.params else None
    cache = TorchModelCache(options.models_dir)
    context = PassContext(catalog, options={
        "param_bindings": options.param_bindings, "lora_runtime": options.lora_runtime,
        "model_cache": cache, "models_dir": options.models_dir,
    })
    nodes_before = len(graph.nodes)

    def after_pass(step: Any, result: Any) -> None:
        say(f"pass {step.name}: {len(graph.nodes)} nodes"
            f"{' (changed)' if result.modified else ''}")

    run_pipeline(graph, context, fold=options.fold, after_each=after_pass)
    say("lowering to a program")
    program = lower_to_program(graph, catalog, cache=cache)
    say("probing stage shapes")
    recorders = _probe(program, options.input_dir)

    parent = output.parent if str(output.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{output.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "stages").mkdir(parents=True)
    try:
        stages_manifest, plan = _export_stages(program, recorders, tmp, options, say)
        tensors, entries = _encode_constants(program.constants)
        if tensors:
            from safetensors.numpy import save_file

            save_file(tensors, str(tmp / "constants.safetensors"))
        needs_tokenizer = any(e.get("kind") == "text_encoder_layers" and e.get("layers")
                              for e in stages_manifest.values())
        if needs_tokenizer:
            from comfyc.runtime.tokenizer import DEFAULT_VOCAB_PATH

            (tmp / "tokenizer").mkdir()
            shutil.copyfile(DEFAULT_VOCAB_PATH, tmp / "tokenizer" / DEFAULT_VOCAB_PATH.name)
        stats = dict(context.stats)
        stats["nodes_before"] = nodes_before
        stats["nodes_after"] = len(graph.nodes)
        manifest: dict[str, Any] = {
            "format": "comfyc-artifact",
            "format_version": 1,
            "comfyc_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": {
                "file": str(graph.meta.get("file", "")),
                "kind": graph.meta.get("input_kind"),
                "sha256": hashlib.sha256(
                    str(graph.meta.get("source_text", "")).encode()).hexdigest(),
                "prompt": source_prompt,
            },
            "params": [p.to_json() for p in program.params.values()],
            "outputs": [op.id for op in program.ops if op.op in ("SaveImage", "PreviewImage")],
            "program": {"ops": [op.to_json() for op in program.ops]},
            "stages": stages_manifest,
            "plan": plan,
            "constants": {"file": "constants.safetensors", "entries": entries},
            "run_meta": {k: v for k, v in program.meta.items()
                         if k in ("prompt", "param_uses", "extra_pnginfo")},
            "stats": stats,
            "options": {"fp16": options.fp16, "dynamic": options.dynamic,
                        "lora_runtime": options.lora_runtime},
        }
        manifest["files"] = {
            str(p.relative_to(tmp)): _sha(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        body = json.dumps(manifest, sort_keys=True).encode()
        manifest["manifest_hash"] = hashlib.sha256(body).hexdigest()
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _replace_dir(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in output.rglob("*") if p.is_file())
    seconds = time.perf_counter() - started
    say(f"wrote {output} ({size / 1e6:.1f} MB) in {seconds:.1f} s")
    return CompileReport(output, stats, stages_manifest, seconds, size)


def _sha(path: Path) -> str:
    from comfyc.runtime.artifact import file_sha256

    return file_sha256(path)


def _replace_dir(tmp: Path, output: Path) -> None:
    """Move ``tmp`` to ``output``, replacing an existing artifact without a gap of garbage."""
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
        os.replace(tmp, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, output)


def _export_stages(program: Any, recorders: dict[str, Any], root: Path,
                   options: CompileOptions, say: Callable[[str], None]
                   ) -> tuple[dict[str, Any], dict[str, str]]:
    from . import onnx_export

    plan_option = options.backend
    manifest: dict[str, Any] = {}
    plan: dict[str, str] = {}
    for name, rec in recorders.items():
        if isinstance(rec, _RecordingLayers):
            layers = {}
            for layer, layer_rec in rec.used.items():
                sub_name = f"{name}_L{-layer}"
                backend = _stage_backend(plan_option, sub_name, "text_encoder")
                entry = _export_one(onnx_export, layer_rec, sub_name, "text_encoder",
                                    layer_rec.stage.module, root, backend, options, say,
                                    layer=layer)
                entry["name"] = sub_name
                layers[str(layer)] = entry
                plan[sub_name] = entry["backend"]
            manifest[name] = {"kind": "text_encoder_layers", "layers": layers}
            continue
        if not rec.shapes:
            manifest[name] = {"kind": rec.kind, "unused": True}
            continue
        backend = _stage_backend(plan_option, name, rec.kind)
        manifest[name] = _export_one(onnx_export, rec, name, rec.kind, rec.stage.module, root,
                                     backend, options, say)
        plan[name] = manifest[name]["backend"]
    return manifest, plan


def _export_one(onnx_export: Any, rec: Any, name: str, kind: str, module: Any, root: Path,
                backend: str, options: CompileOptions, say: Callable[[str], None],
                layer: int | None = None) -> dict[str, Any]:
    shapes = sorted(set(rec.shapes))
    entry: dict[str, Any] = {"kind": kind, "backend": backend, "info": dict(rec.info),
                             "shapes": [list(map(list, s)) for s in shapes]}
    if layer is not None:
        entry["info"]["layer"] = layer
    if backend in ("torch", "torch-compile"):
        from .torch_weights import save_torch_stage

        folder = Path("torch") / name
        save_torch_stage(module, kind, root / folder)
        entry["torch"] = str(folder)
        say(f"stored {name} for the torch backend")
        return entry
    # An ONNX file for ort-* and trt (engines are built from it).
    dynamic = options.dynamic or len(shapes) > 1
    path = root / "stages" / f"{name}.onnx"
    say(f"exporting {name} ({kind}{', dynamic shapes' if dynamic else ''}"
        f"{', fp16' if options.fp16 else ''}) ...")
    t0 = time.perf_counter()
    try:
        if kind == "unet":
            (b, c, h, w), _, (_, t, _) = shapes[0]
            facts = onnx_export.export_unet(module, path, batch=b, height=h, width=w,
                                            context_len=t, fp16=options.fp16, dynamic=dynamic)
        elif kind == "text_encoder":
            facts = onnx_export.export_text_encoder(module, path, layer=layer if layer else -1,
                                                    fp16=options.fp16)
        elif kind == "vae_decoder":
            (b, _, h, w), = shapes[0]
            facts = onnx_export.export_vae_decoder(module, path, batch=b, height=h, width=w,
                                                   fp16=options.fp16, dynamic=dynamic)
        else:
            (b, _, h, w), = shapes[0]
            facts = onnx_export.export_vae_encoder(module, path, batch=b, height=h, width=w,
                                                   fp16=options.fp16, dynamic=dynamic)
    except Exception as exc:  # noqa: BLE001 - any exporter failure falls back to PyTorch
        # NOTE: a stage without a working ONNX lowering runs on PyTorch; the manifest records
        # why, and running it without torch says what to install.
        reason = f"{type(exc).__name__}: {exc}"
        say(f"warning: {name} could not be exported to ONNX ({reason}); storing it for the "
            f"torch backend instead")
        path.unlink(missing_ok=True)
        entry = _export_one(onnx_export, rec, name, kind, module, root, "torch", options, say,
                            layer=layer)
        entry["fallback"] = reason
        return entry
    entry["file"] = f"stages/{name}.onnx"
    entry["export_s"] = round(time.perf_counter() - t0, 3)
    entry["facts"] = _jsonable(facts)
    entry["dynamic"] = dynamic
    if options.optimize and hasattr(onnx_export, "optimize_offline"):
        optimized = path.with_suffix(".opt.onnx")
        try:
            helped = onnx_export.optimize_offline(path, optimized, level="extended")
        except Exception:  # noqa: BLE001 - optimisation is best effort
            helped = False
        if helped:
            os.replace(optimized, path)
            entry["optimized"] = "extended"
        else:
            optimized.unlink(missing_ok=True)
            entry["optimized"] = False
    return entry


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
