"""Compile a workflow into a deployable artifact (NAME.comfyc/).

Runs the optimisation passes (validation, dead-node elimination, common subexpressions,
runtime params, LoRA merge, constant folding of prompts and schedules), exports the model
stages to ONNX (or stores them for PyTorch, per --backend), and writes the artifact
atomically: an interrupted compile leaves nothing at the target path. Run the result with
`comfyc run NAME.comfyc` or `comfyc.runtime.load(path).run(...)`.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import WorkflowError
from .common import (
    EXIT_INVALID, EXIT_OK, add_catalog_arguments, catalog_from_args, exit_code_for, print_error, source_texts,
)

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc compile``."""
    parser.add_argument("file", metavar="WORKFLOW", help="UI/API JSON, PNG or .cfy")
    parser.add_argument("-o", "--output", metavar="NAME.comfyc",
                        help="artifact directory (default: the workflow's name + .comfyc)")
    parser.add_argument("--backend", default="ort-cpu",
                        help="stage backend: one of ort-cpu, ort-cuda, ort-trt, torch, trt, or "
                             "a per-stage map such as unet=ort-cpu,vae_decoder=torch")
    parser.add_argument("--fp16", action="store_true", help="export float16 stages")
    parser.add_argument("--dynamic", action="store_true",
                        help="dynamic batch/height/width instead of the workflow's shapes")
    parser.add_argument("--lora-runtime", action="store_true",
                        help="keep LoRA factors so strengths can change without a recompile")
    parser.add_argument("--param", action="append", default=[], metavar="NODE.INPUT=NAME",
                        help="make a literal input a runtime param (repeatable), "
                             "e.g. --param 6.text=prompt")
    parser.add_argument("--models-dir", metavar="DIR", help="models folder (ComfyUI layout)")
    parser.add_argument("--input-dir", default="input", metavar="DIR",
                        help="LoadImage's folder while compiling (default: ./input)")
    parser.add_argument("--no-fold", action="store_true", help="skip constant folding")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_catalog_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc compile``."""
    from pathlib import Path

    from comfyc.frontends.load import load_workflow

    from ..lowering.artifact import CompileOptions, compile_graph, parse_backend_map

    def say(message: str) -> None:
        if not args.quiet:
            print(f"[compile] {message}", file=sys.stderr, flush=True)

    try:
        backend = parse_backend_map(args.backend)
    except ValueError as exc:
        print(f"comfyc compile: {exc}", file=sys.stderr)
        return 2
    output = args.output or (Path(args.file).stem.split(".")[0] + ".comfyc")
    options = CompileOptions(backend=backend, fp16=args.fp16, dynamic=args.dynamic,
                             lora_runtime=args.lora_runtime, param_bindings=args.param,
                             models_dir=args.models_dir, input_dir=args.input_dir,
                             fold=not args.no_fold)
    try:
        catalog = catalog_from_args(args)
        graph = load_workflow(args.file, catalog)
        say(f"loaded {args.file} ({graph.meta.get('input_kind')}, {len(graph.nodes)} nodes)")
        report = compile_graph(graph, output, options, catalog=catalog, progress=say)
    except WorkflowError as exc:
        print_error(exc, source_texts(args.file))
        return exit_code_for(exc)
    except Exception as exc:  # noqa: BLE001
        from comfyc.runtime.backends.base import BackendError

        if isinstance(exc, BackendError):
            print(f"comfyc compile: error: {exc}", file=sys.stderr)
            return EXIT_INVALID
        raise
    stats = report.stats
    print(f"{report.path}: {len(report.stages)} stage entries, "
          f"{stats.get('nodes_removed', 0)} nodes removed, "
          f"{stats.get('nodes_folded', 0)} folded, {report.size_bytes / 1e6:.2f} MB, "
          f"{report.seconds:.1f} s")
    return EXIT_OK
