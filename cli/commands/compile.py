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

from comfyc.compiler.errors import WorkflowError
from comfyc.runtime.errors import Error as RuntimeFailure
from comfyc.runtime.files import make_tree_readable

from .common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNREADABLE,
    add_catalog_arguments,
    backend_help,
    catalog_from_args,
    exit_code_for,
    exit_code_for_runtime,
    noise_mode_of,
    print_error,
    require_extra,
    source_texts,
)

__all__ = ["add_arguments", "run"]

#: Shown at the end of ``comfyc compile --help``.
EXAMPLES = """\
examples:
  comfyc compile examples/txt2img.cfy -o txt2img.comfyc
  comfyc compile workflow.json -o wf.comfyc --models-dir ~/ComfyUI/models --param 6.text=prompt
  comfyc compile examples/txt2img.cfy -o fast.comfyc --backend auto   # measure, plan fastest
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc compile``."""
    parser.add_argument("file", metavar="WORKFLOW", help="UI/API JSON, PNG or .cfy")
    parser.add_argument("-o", "--output", metavar="NAME.comfyc",
                        help="artifact directory (default: the workflow's name + .comfyc)")
    parser.add_argument("--backend", default="ort-cpu",
                        help="stage backend: ort-cpu, ort-cuda, ort-trt, ort-<provider>, torch, "
                             "torch-compile, torch-cuda, trt; a per-stage map such as "
                             "unet=ort-cuda,vae_decoder=ort-cpu; or auto (store ONNX and "
                             "PyTorch weights, measure every backend here, plan the fastest)")
    parser.add_argument("--fp16", action="store_true", help="export float16 stages")
    parser.add_argument("--gpu-fp16", action="store_true",
                        help="also write float16 variants of the ONNX stages, which GPU "
                             "providers run by default")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="dynamic int8 quantisation of ONNX stages (smaller, see bench)")
    parser.add_argument("--quantize-stages", default="unet,text_encoder", metavar="LIST",
                        help="stage kinds or names to quantise (default: unet,text_encoder)")
    parser.add_argument("--float32-weights", action="store_true",
                        help="store float32 weights as float32 even where float16 holds them "
                             "exactly (the default stores those as float16, cast inside the "
                             "graph: the same bits at half the size). About twice the "
                             "artifact, for ov-cpu: OpenVINO reads float16-stored ONNX weights "
                             "with a far slower first call (SD1.5 size, bf16: 3.4 s against "
                             "11.5 s)")
    parser.add_argument("--store-torch", action="store_true",
                        help="also store PyTorch weights of ONNX stages (to run or tune on "
                             "torch later)")
    parser.add_argument("--tune-backends", default=None, metavar="LIST",
                        help="with --backend auto: the candidates (default: all available)")
    parser.add_argument("--no-ort-optimize", dest="ort_optimize", action="store_false",
                        help="store the plain ONNX export instead of onnxruntime's offline-"
                             "optimised model (whose fused com.microsoft operators only "
                             "onnxruntime runs); trt stages always get plain ONNX")
    parser.add_argument("--no-engines", action="store_true",
                        help="with a trt backend: compile here without building TensorRT "
                             "engines (build them on the GPU machine: comfyc build-engines)")
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
    parser.add_argument("--noise-mode", choices=("cpu", "cpu-legacy", "cuda"), default=None,
                        help="whose per-step noise ancestral/SDE samplers reproduce by default "
                             "(comfyc run --noise-mode overrides): ComfyUI on a CPU (cpu), on a "
                             "CPU before its #11528 (cpu-legacy), on an NVIDIA GPU (cuda); "
                             "default: the runtime's (cpu)")
    parser.add_argument("--step-graph", choices=("auto", "on", "off"), default="auto",
                        help="also write the UNet's sampler-step graph (the CFG mix and the "
                             "Euler, ancestral Euler or DPM++ 2M update inside the onnxruntime "
                             "call, one call a step, the same bits; over the UNet's own weight "
                             "file): auto (UNets up to 512 MB, where the per-step numpy work "
                             "is measurable), on, off")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_catalog_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc compile``."""
    from pathlib import Path

    require_extra("compiler")
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph, parse_backend_map
    from comfyc.frontends.load import load_workflow

    def say(message: str) -> None:
        if not args.quiet:
            print(f"[compile] {message}", file=sys.stderr, flush=True)

    try:
        backend = parse_backend_map(args.backend)
    except ValueError as exc:
        print(f"comfyc compile: error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    output = args.output or (Path(args.file).stem.split(".")[0] + ".comfyc")
    trt_stages = _trt_stages(backend)
    if trt_stages is not None and not args.no_engines:
        # Fail before any work when engines cannot be built here.
        from comfyc.runtime.backends.base import BackendError
        from comfyc.runtime.backends.trt import gpu_identity, require_tensorrt

        try:
            require_tensorrt()
            gpu_identity()
        except BackendError as exc:
            print(f"comfyc compile: error: {exc}", file=sys.stderr)
            print("help: to compile here and build the engines on the GPU machine, add "
                  "--no-engines, then run `comfyc build-engines ARTIFACT` there; to run on "
                  "this machine's CPU, compile with --backend ort-cpu", file=sys.stderr)
            return EXIT_UNREADABLE  # As in run and build-engines: this machine lacks it.
    tune: dict[str, object] = {}
    if args.tune_backends:
        tune["backends"] = [b.strip() for b in args.tune_backends.split(",") if b.strip()]
    options = CompileOptions(backend=backend, fp16=args.fp16, dynamic=args.dynamic,
                             lora_runtime=args.lora_runtime, param_bindings=args.param,
                             models_dir=args.models_dir, input_dir=args.input_dir,
                             fold=not args.no_fold, quantize=args.quantize,
                             quantize_stages=tuple(s.strip() for s in
                                                   args.quantize_stages.split(",")),
                             gpu_fp16=args.gpu_fp16, store_torch=args.store_torch,
                             compact_weights=not args.float32_weights,
                             optimize=args.ort_optimize,
                             autotune=tune, noise_mode=noise_mode_of(args),
                             step_graph=args.step_graph)
    try:
        catalog = catalog_from_args(args)
        graph = load_workflow(args.file, catalog)
        say(f"loaded {args.file} ({graph.source.kind}, {len(graph.nodes)} nodes)")
        report = compile_graph(graph, output, options, catalog=catalog, progress=say)
        # Every file gets the mode any file made here gets (the umask's): some writers make
        # owner-only files, which a service account running the artifact could not read.
        # TODO(compiler/lowering): done by the writer before its rename, this is a no-op.
        make_tree_readable(report.path)
    except WorkflowError as exc:
        print_error(exc, source_texts(args.file))
        return exit_code_for(exc)
    except RuntimeFailure as exc:  # A backend that cannot run here, an image, a param ...
        print(f"comfyc compile: error: {exc}", file=sys.stderr)
        if (hint := backend_help(exc)) is not None:
            print(hint, file=sys.stderr)
        return exit_code_for_runtime(exc)
    if trt_stages is not None and not args.no_engines:
        from comfyc.compiler.lowering.tensorrt import BuildOptions, TensorRTError, build_engines

        try:
            build_engines(report.path, BuildOptions(stages=trt_stages), progress=say)
        except TensorRTError as exc:
            print(f"comfyc compile: error: {exc} (the artifact is complete; rerun "
                  f"`comfyc build-engines {report.path}` after fixing this)", file=sys.stderr)
            return EXIT_INVALID
    from comfyc.compiler.passes.base import describe_summary
    from comfyc.runtime.manifest import Manifest

    stages = Manifest("", stages=report.stages).stage_entries()
    print(f"{report.path}: {describe_summary(report.stats)}; {len(stages)} "
          f"stage{'s' if len(stages) != 1 else ''} ({', '.join(stages) or 'none'}), "
          f"{report.size_bytes / 1e6:.2f} MB, {report.seconds:.1f} s")
    if backend == "auto":
        from comfyc.runtime.artifact import read_manifest

        from .tune import print_autotune

        print_autotune(read_manifest(report.path, verify=False).autotune or {})
    return EXIT_OK


def _trt_stages(backend: object) -> list[str] | None:
    """Stages planned on the native TensorRT backend: None when none; [] means all."""
    if backend == "trt":
        return []
    if isinstance(backend, dict):
        keys = [key for key, value in backend.items() if value == "trt"]
        if keys:
            return [] if "*" in keys else keys
    return None
