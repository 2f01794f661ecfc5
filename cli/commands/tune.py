"""Autotune a compiled artifact: time every available backend per stage, plan the fastest.

`comfyc tune NAME.comfyc` measures each stage on every backend that can run here (see
comfyc.compiler.lowering.autotune) and rewrites the artifact's manifest atomically with the
choices and measurements (`manifest["autotune"]`, `manifest["plan"]`); `comfyc run` then uses
the plan. Override it per run with `comfyc run NAME.comfyc --backend unet=ort-cpu`, or retune
with `--backends` to restrict the candidates. The artifact must hold the files of the
backends to try: ONNX for ort-*/trt, PyTorch weights for torch* (compile with
`--backend auto` or `--store-torch`).
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import EXIT_INVALID, EXIT_OK

__all__ = ["add_arguments", "add_ort_arguments", "describe_candidates", "ort_options_from_args",
           "run"]

#: Shown at the end of ``comfyc tune --help``.
EXAMPLES = """\
examples:
  comfyc tune txt2img.comfyc
  comfyc tune txt2img.comfyc --backends ort-cpu,torch --threads 1 --dry-run
  comfyc tune txt2img.comfyc --backends ort-cpu,ov-cpu --thread-counts 1,2
"""


def _thread_count(text: str) -> int:
    """``--threads``: a whole number, 1 or more; 0 leaves the choice to comfyc."""
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a thread count: give a whole number, 1 or more (0 or leaving "
            f"--threads out lets comfyc choose)")
    return count


def add_ort_arguments(parser: argparse.ArgumentParser) -> None:
    """onnxruntime tuning options shared by run, tune and bench."""
    group = parser.add_argument_group("threads and onnxruntime tuning")
    group.add_argument("--threads", type=_thread_count, default=None, metavar="N",
                       help="intra-op threads of every stage (onnxruntime, OpenVINO, torch); "
                       "default (or 0): the autotuned count if any, else the cores the 1-minute "
                       "load average leaves free (at least 1), never more than the cores. "
                       "Idle threads sleep instead of spinning (onnxruntime allow_spinning=0, "
                       "OMP_WAIT_POLICY=PASSIVE for torch): on a busy machine more threads "
                       "than free cores make every call slower")
    group.add_argument("--ort-opt-level", choices=("disable", "basic", "extended", "all"),
                       default=None, help="graph optimization level (default: all; extended on "
                       "GPU providers for stages optimised at compile time)")
    group.add_argument("--ort-cache", nargs="?", const=True, default=None, metavar="DIR",
                       help="keep onnxruntime's optimised CPU graphs of large stages (SD-size "
                       "UNets and VAEs) in ARTIFACT/cache/ort-cpu (or DIR) so that later loads "
                       "skip the graph optimisation (SD1.5 artifact: 11.6 s to 3.2 s here); "
                       "the kept graphs hold float32 weights (3.6 GB for SD1.5) and fit only this "
                       "onnxruntime and CPU; at SDXL size they cut the load's peak memory (19.3 "
                       "to 11.8 GB) but load slower from a slow disk")
    group.add_argument("--io-binding", choices=("auto", "on", "off"), default="auto",
                       help="onnxruntime IO binding (auto: on for CUDA/TensorRT)")
    group.add_argument("--precision", choices=("auto", "fp16", "fp32", "bf16"), default="auto",
                       help="ONNX stage variant: auto runs fp16 variants (compile --gpu-fp16) "
                       "on GPU providers, fp32 on the CPU; for ov-cpu, the compute precision "
                       "(auto/fp32: float32, exact; bf16 or fp16: faster, approximate)")


def ort_options_from_args(args: argparse.Namespace) -> dict[str, object]:
    """Stage options for :func:`comfyc.runtime.artifact.load` from the tuning flags."""
    options: dict[str, object] = {}
    if getattr(args, "threads", None) is not None:
        options["intra_op_threads"] = args.threads
    if getattr(args, "ort_opt_level", None):
        options["optimization_level"] = args.ort_opt_level
    if getattr(args, "ort_cache", None):
        options["ort_cache"] = args.ort_cache
    binding = getattr(args, "io_binding", "auto")
    if binding != "auto":
        options["io_binding"] = binding == "on"
    precision = getattr(args, "precision", "auto")
    if precision != "auto":
        options["precision"] = precision
    return options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc tune``."""
    parser.add_argument("artifact", metavar="ARTIFACT", help="a compiled NAME.comfyc folder")
    parser.add_argument("--backends", default=None, metavar="LIST",
                        help="comma-separated candidates (default: every backend available "
                             "here for each stage)")
    parser.add_argument("--calls", type=int, default=10, help="timed calls per stage/backend")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before them")
    parser.add_argument("--amortize", type=int, default=1000, metavar="CALLS",
                        help="spread each backend's start-up time (load, torch.compile) over "
                             "this many calls when choosing (default 1000)")
    parser.add_argument("--thread-counts", default=None, metavar="LIST",
                        help="intra-op thread counts to measure for each backend (default: 1 "
                             "and the free cores); the fastest is recorded with the plan")
    parser.add_argument("--dry-run", action="store_true",
                        help="measure and print, but leave the manifest unchanged")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    add_ort_arguments(parser)


def print_autotune(result: dict[str, object], out: object = None) -> None:
    """The per-stage table of an autotune result (on standard output by default)."""
    out = out or sys.stdout
    stages = result.get("stages") or {}
    print(f"{'stage':<32} {'backend':<20} {'threads':>7} {'median ms':>10} {'p90 ms':>9} "
          f"{'load s':>7} {'1st call s':>10} {'score ms':>9}", file=out)  # type: ignore[arg-type]
    for name, row in stages.items():  # type: ignore[union-attr]
        for backend, m in row["measurements"].items():
            mark = " <- chosen" if backend == row["choice"] else ""
            others = ", ".join(f"{n}: {r['median_ms']:.3f}" for n, r in
                               (m.get("by_threads") or {}).items() if int(n) != m.get("threads"))
            print(f"{name:<32} {backend:<20} {m.get('threads') or '-':>7} "
                  f"{m['median_ms']:>10.3f} {m['p90_ms']:>9.3f} "
                  f"{m['load_s']:>7.2f} {m['first_call_ms'] / 1000:>10.2f} "
                  f"{m['score_ms']:>9.3f}{mark}"
                  + (f" (other thread counts, median ms: {others})" if others else ""),
                  file=out)  # type: ignore[arg-type]
        for backend, why in (row.get("skipped") or {}).items():
            print(f"{name:<32} {backend:<20} skipped: {why.split(';')[0]}",
                  file=out)  # type: ignore[arg-type]
        if row.get("margin"):
            print(f"{'':<32} margin {row['margin']:.2f}x over the runner-up (by score)",
                  file=out)  # type: ignore[arg-type]


def describe_candidates(manifest: object, backends: list[str] | None) -> list[str]:
    """What tune will try for each stage, and why the other backends are not tried."""
    import importlib.util

    from comfyc.compiler.lowering.autotune import candidate_backends

    entries = manifest.stage_entries()  # type: ignore[attr-defined]
    lines = []
    for name, entry in entries.items():
        if entry.lora:
            continue
        tried = candidate_backends(entry)
        if backends is not None:
            tried = [b for b in backends if b in tried or b.startswith("ort-") and entry.file]
        lines.append(f"{name}: trying {', '.join(tried) or 'nothing'}")
    reasons = []
    if not any(entry.torch for entry in entries.values()):
        reasons.append("torch and torch-compile: the artifact stores no PyTorch weights "
                       "(compile with --store-torch or --backend auto to try them)")
    elif importlib.util.find_spec("torch") is None:
        reasons.append("torch and torch-compile: PyTorch is not installed here")
    if importlib.util.find_spec("tensorrt") is None:
        reasons.append("trt: TensorRT is not installed here")
    try:
        import onnxruntime

        gpu = [p for p in onnxruntime.get_available_providers()
               if p not in ("CPUExecutionProvider", "AzureExecutionProvider")]
    except ImportError:
        gpu = []
    if not gpu:
        reasons.append("ort-cuda, ort-trt: this onnxruntime has no GPU provider")
    lines += [f"not tried: {why}" for why in reasons]
    return lines


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc tune``."""
    from comfyc.compiler.lowering.autotune import autotune
    from comfyc.runtime.artifact import ArtifactError, read_manifest, write_manifest
    from comfyc.runtime.backends.base import BackendError

    def say(message: str) -> None:
        if not args.quiet:
            print(f"[tune] {message}", file=sys.stderr, flush=True)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()] if args.backends \
        else None
    try:
        manifest = read_manifest(args.artifact)
        for line in describe_candidates(manifest, backends):
            say(line)
        counts = ([int(n) for n in args.thread_counts.split(",") if n.strip()]
                  if args.thread_counts else None)
        tuned = autotune(args.artifact, manifest, backends=backends, calls=args.calls,
                         warmup=args.warmup, stage_options=ort_options_from_args(args),
                         amortize=args.amortize, threads=counts, progress=say)
        if not args.dry_run:
            write_manifest(args.artifact, tuned)
    except (ArtifactError, BackendError) as exc:
        print(f"comfyc tune: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps(tuned.autotune, indent=2))
    else:
        print_autotune(tuned.autotune or {})
        if not args.dry_run:
            print(f"plan written to {args.artifact}/manifest.json: "
                  + ", ".join(f"{k}={v}" for k, v in tuned.plan.items()))
    return EXIT_OK
