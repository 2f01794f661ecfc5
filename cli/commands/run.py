"""Run a workflow (or a compiled artifact) and write its images.

A workflow file (UI/API JSON, PNG, .cfy) is compiled in memory for the PyTorch backend and
run; sampler seeds and DSL params can be set with --param NAME=VALUE. Images go to --output
(ComfyUI's file names, with the workflow embedded in each PNG). A progress bar follows the
sampling steps, and a per-stage timing summary is printed at the end (--json: a
machine-readable summary on standard output).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from comfyc.compiler.errors import WorkflowError

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

__all__ = ["add_arguments", "run", "parse_params", "Progress"]

#: Shown at the end of ``comfyc run --help``.
EXAMPLES = """\
examples:
  comfyc run examples/txt2img.cfy --param seed=7 -o out
  comfyc run txt2img.comfyc --param prompt="a handwritten digit three" -o out
  comfyc run txt2img.comfyc --backend unet=torch,vae_decoder=ort-cpu --threads 1
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc run``."""
    parser.add_argument("file", metavar="WORKFLOW|ARTIFACT",
                        help="a workflow file, or a compiled NAME.comfyc artifact")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="set a runtime param (repeatable), e.g. --param seed=7")
    parser.add_argument("-o", "--output", default="output", metavar="DIR",
                        help="where images are written (default: ./output)")
    parser.add_argument("--input-dir", default="input", metavar="DIR",
                        help="where LoadImage finds its files (default: ./input)")
    parser.add_argument("--models-dir", metavar="DIR",
                        help="models folder in ComfyUI's layout (default: $COMFYC_MODELS)")
    parser.add_argument("--backend", default=None,
                        help="stage backend: torch or torch-compile for workflows; for an "
                             "artifact one backend (ort-cpu, ort-cuda, ort-trt, torch, trt …) "
                             "or a per-stage map (unet=ort-cuda,vae_decoder=ort-cpu); default: "
                             "the artifact's plan (autotuned or chosen at compile time)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON summary (outputs, timings) on standard output")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--noise-mode", choices=("cpu", "cpu-legacy", "cuda"), default=None,
                        help="whose per-step noise ancestral/SDE samplers reproduce: ComfyUI on "
                             "a CPU (cpu, the default), on a CPU before its #11528 "
                             "(cpu-legacy), or on an NVIDIA GPU (cuda); default: the one a "
                             "PNG input records, else cpu")
    add_catalog_arguments(parser)
    from .tune import add_ort_arguments

    add_ort_arguments(parser)


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["seed=7", "prompt=a cat"]`` → ``{"seed": "7", "prompt": "a cat"}``.

    Values stay strings; the program converts them by each param's type.

    Raises:
        ValueError: An item has no ``=``.
    """
    out: dict[str, Any] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise ValueError(f"--param expects NAME=VALUE, got {item!r}")
        out[name.strip()] = value
    return out


class Progress:
    """A one-line progress bar on standard error (silent when not a terminal and quiet)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = ""

    def __call__(self, label: str, step: int, total: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * step / max(total, 1))
        line = f"{label}: [{'#' * filled}{'.' * (width - filled)}] {step}/{total}"
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if step >= total else ""))
        elif step >= total or step == 1:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        """Print a status line."""
        if self.enabled:
            print(text, file=sys.stderr)


def print_timings(timings: dict[str, Any], out: Any = None) -> None:
    """The per-stage timing table."""
    out = out or sys.stderr  # Looked up per call: callers may swap sys.stderr.
    print(f"{'stage':<32} {'calls':>6} {'total s':>9} {'median ms':>10}", file=out)
    for name, row in sorted(timings["stages"].items()):
        print(f"{name:<32} {row['calls']:>6} {row['total_s']:>9.3f} "
              f"{row['median_s'] * 1000:>10.2f}", file=out)
    print(f"{'(runtime outside stages)':<32} {'':>6} {timings['overhead_s']:>9.3f}", file=out)
    print(f"{'total':<32} {'':>6} {timings['total_s']:>9.3f}", file=out)


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc run``."""
    from pathlib import Path

    from comfyc.runtime.artifact import ArtifactError
    from comfyc.runtime.errors import Error as RuntimeFailure

    progress = Progress(not args.quiet)
    try:
        params = parse_params(args.param)
    except ValueError as exc:
        print(f"comfyc run: error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    started = time.perf_counter()
    try:
        if Path(args.file).is_dir():
            from comfyc.runtime.artifact import load as load_artifact

            from .tune import ort_options_from_args

            program = load_artifact(args.file, backend=args.backend,
                                    **ort_options_from_args(args))
        else:
            program = _compile_in_memory(args, progress)
        build_s = time.perf_counter() - started
        result = program.run(params, output_dir=args.output, input_dir=args.input_dir,
                             progress=progress, noise_mode=noise_mode_of(args),
                             models_dir=args.models_dir)
    except WorkflowError as exc:
        print_error(exc, source_texts(args.file))
        return exit_code_for(exc)
    except ArtifactError as exc:  # Not an artifact, or a damaged one: unreadable input.
        print(f"comfyc run: error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except RuntimeFailure as exc:  # A bad param, a failed op, a backend that cannot run here.
        print(f"comfyc run: error: {exc}", file=sys.stderr)
        if (hint := backend_help(exc)) is not None:
            print(hint, file=sys.stderr)
        return exit_code_for_runtime(exc)
    files = [f for entries in result.files.values() for f in entries]
    summary = {
        "outputs": {k: [str(Path(args.output) / ("temp" if f.get("type") == "temp" else "")
                            / f["subfolder"] / f["filename"]) for f in v]
                    for k, v in result.files.items()},
        "timings": {**result.timings, "load_s": build_s},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for path in (p for v in summary["outputs"].values() for p in v):
            print(path)
        print_timings(result.timings)
        print(f"{'(load / compile)':<32} {'':>6} {build_s:>9.3f}", file=sys.stderr)
    return EXIT_OK if files or result.images else EXIT_INVALID


def _compile_in_memory(args: argparse.Namespace, progress: Progress) -> Any:
    """Load, validate and lower a workflow for the torch backend."""
    from comfyc.compiler.lowering.program import lower_to_program
    from comfyc.compiler.passes.base import PassContext, PassManager
    from comfyc.compiler.passes.runtime_params import RuntimeParamsPass
    from comfyc.compiler.passes.validate import ValidatePass
    from comfyc.frontends.load import load_workflow

    require_extra("compiler")
    if args.backend not in (None, "torch", "torch-compile"):
        raise WorkflowError(f"a workflow runs on the torch backend; --backend {args.backend} "
                            f"needs a compiled artifact (comfyc compile)")
    catalog = catalog_from_args(args)
    graph = load_workflow(args.file, catalog)
    context = PassContext(catalog)
    PassManager([ValidatePass(context), RuntimeParamsPass(context)])(graph)
    progress.message(f"loading models for {args.file} (torch backend)")
    return lower_to_program(graph, catalog, models_dir=args.models_dir,
                            compile_stages=args.backend == "torch-compile")
