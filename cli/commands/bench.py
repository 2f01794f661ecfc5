"""Benchmark backends on one workflow or artifact and write a report people can read.

    comfyc bench examples/txt2img.cfy --backends ort-cpu,torch,torch-compile -o bench-out
    comfyc bench NAME.comfyc --backends ort-cpu,ort-cuda --runs 10 --precisions fp32,int8
    comfyc bench examples/txt2img.cfy --backends ort-cpu,ov-cpu,torch --step-cache 3 --quality 2

A workflow is compiled first (the compile time is reported), with PyTorch weights stored
beside the ONNX stages so that torch backends run the same weights; extra precisions
(``fp16``: float16 stages, ``int8``: dynamic int8 UNet and text encoder) and step caching
(``--step-cache N``: DeepCache, approximate) are compiled as further artifacts and run on the
``ort-*`` and ``ov-*`` backends. Each row (backend x precision) runs in
its own process, so its peak memory (RSS; GPU memory where there is a GPU) is its own and a
row that cannot start cannot disturb the others.

Per row: load time, first run (includes ``torch.compile``), per stage the median and p90 of
one call, end to end per image (median and p90 of ``--runs`` after ``--warmup``), peak
memory, and agreement with the ``torch`` row's image for the same seed (max pixel difference
on the 0..255 scale and PSNR). With ``--quality N`` each row also draws the ten digits with
N seeds each and reports the accuracy of the independent digit classifier
(``examples/tiny_model/classifier.py``; needs scikit-learn and a ``prompt`` param).

Writes into ``-o DIR``: ``bench.json``, ``bench.png`` (matplotlib chart), ``report.html``
(self-contained: chart and images embedded as data URIs), ``images/ROW.png`` and the
compiled artifacts under ``artifacts/``. Timings are for reading, never for asserting.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import EXIT_INVALID, EXIT_OK, EXIT_UNREADABLE

__all__ = ["TOLERANCE_PIXELS", "add_arguments", "agreement", "psnr", "render_table", "run"]

#: Shown at the end of ``comfyc bench --help``.
EXAMPLES = """\
examples:
  comfyc bench examples/txt2img.cfy --backends ort-cpu,ov-cpu,torch -o bench-out
  comfyc bench examples/txt2img.cfy --backends ort-cpu,ov-cpu --step-cache 3,5 --quality 3
  comfyc bench NAME.comfyc --backends ort-cpu --threads 1 --precisions fp32,int8
"""

#: fp32 rows must agree with the torch row within this many levels of 255 (max |diff|);
#: float rounding between onnxruntime and PyTorch kernels moves pixels by < 1 level.
TOLERANCE_PIXELS = 2.0

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


# --------------------------------------------------------------------------- arguments
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc bench``."""
    from .tune import add_ort_arguments

    parser.add_argument("file", metavar="FILE|ARTIFACT",
                        help="a workflow (UI/API JSON, PNG, .cfy) or a compiled NAME.comfyc")
    parser.add_argument("--backends", default="ort-cpu,torch", metavar="LIST",
                        help="comma-separated backends to compare (default: ort-cpu,torch); "
                             "ort-cpu, ort-cuda, ort-trt, ort-<provider>, ov-cpu (OpenVINO), "
                             "torch, torch-compile, torch-cuda, trt")
    parser.add_argument("--precisions", default="fp32", metavar="LIST",
                        help="fp32, fp16, int8 (comma-separated): extra artifacts for the ort "
                             "and ov backends, with their size, speed and quality cost")
    parser.add_argument("--step-cache", default="", metavar="LIST",
                        help="also bench step caching (DeepCache; approximate): an artifact "
                             "per entry, N (refresh every N steps) or N:SKIP (shallow depth, "
                             "default 1), e.g. 3,5:2; run on the ort/ov backends, with their "
                             "PSNR against the exact torch row (and digits with --quality)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per row (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--quality", type=int, default=0, metavar="N",
                        help="draw digits 0-9 with N seeds each and classify them (tiny model)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="runtime param for every run (repeatable), e.g. --param seed=7")
    parser.add_argument("-o", "--output", default="bench-out", metavar="DIR",
                        help="report folder (default: ./bench-out)")
    parser.add_argument("--models-dir", metavar="DIR", help="models folder (ComfyUI layout)")
    parser.add_argument("--input-dir", default="input", metavar="DIR",
                        help="where LoadImage finds its files (default: ./input)")
    parser.add_argument("--skip-unavailable", action="store_true",
                        help="leave out backends that cannot run here instead of failing")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    add_ort_arguments(parser)


# --------------------------------------------------------------------------- metrics
def psnr(a: Any, b: Any) -> float:
    """PSNR in dB of two float images in [0, 1] (inf when equal)."""
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def agreement(image: Any, reference: Any) -> dict[str, float]:
    """Max pixel difference (0..255 scale) and PSNR of ``image`` against ``reference``."""
    import numpy as np

    diff = float(np.abs(np.asarray(image, np.float64) - np.asarray(reference, np.float64)).max())
    return {"max_pixel_diff": round(diff * 255, 4), "psnr_db": round(psnr(image, reference), 2)}


# --------------------------------------------------------------------------- the worker
def _worker(spec_path: str) -> int:
    """One row in its own process: load, warm up, time, save images; write JSON."""
    import numpy as np

    from comfyc.runtime.artifact import load, read_manifest, stage_entries

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    result: dict[str, Any] = {"label": spec["label"]}
    try:
        start = time.perf_counter()
        program = load(spec["artifact"], backend=spec["backend"], **spec["stage_options"])
        result["load_s"] = time.perf_counter() - start
        result["stage_backends"] = {}
        for stage in program.stages.values():
            for member in (stage.values() if isinstance(stage, dict) else [stage]):
                if member is not None and hasattr(member, "backend"):
                    session = getattr(member, "session", None)
                    result["stage_backends"][member.name] = member.backend + (
                        f" ({Path(session.path).name})" if hasattr(session, "path") else "")
        params = dict(spec["params"])
        totals, per_stage, first = [], {}, None
        total_runs = spec["warmup"] + spec["runs"]
        for index in range(total_runs):
            if index == 0:
                # NOTE: the first run can take minutes (torch.compile compiles every stage on
                # its first call): say so before it starts, and show its sampling steps.
                slow = " (torch.compile compiles each stage first: minutes on a CPU)" \
                    if "compile" in spec["backend"] else ""
                _progress(spec, f"run 1/{total_runs}"
                                f"{' (warm-up)' if spec['warmup'] else ''} started{slow}")
            start = time.perf_counter()
            run = program.run(params, save=False, input_dir=spec.get("input_dir", "input"),
                              progress=_step_progress(spec) if index == 0 else None)
            elapsed = time.perf_counter() - start
            images = _first_images(run)
            if first is None:
                first = elapsed
            if index >= spec["warmup"]:
                totals.append(elapsed / max(len(images), 1))
                for name, calls in program.timer.calls.items():
                    per_stage.setdefault(name, []).append(list(calls))
            _progress(spec, f"run {index + 1}/{spec['warmup'] + spec['runs']}"
                      f"{' (warm-up)' if index < spec['warmup'] else ''}: {elapsed * 1000:.0f} ms")
        kinds = {name: entry.kind for name, entry in
                 stage_entries(read_manifest(spec["artifact"], verify=False)).items()}
        result["first_run_s"] = first
        result["per_image"] = _stats([t * 1000 for t in totals])
        result["stages"] = {}
        for name, runs in per_stage.items():
            calls = [c * 1000 for run_calls in runs for c in run_calls]
            result["stages"][name] = {"kind": kinds.get(name, name), **_stats(calls),
                                      "calls_per_run": len(runs[0])}
        np.save(out / "image.npy", images)
        if spec["quality"]:
            drawn = []
            for digit in range(10):
                for seed in range(spec["quality"]):
                    run = program.run({**params, "prompt": f"a handwritten digit "
                                       f"{DIGIT_WORDS[digit]}", "seed": seed}, save=False,
                                      input_dir=spec.get("input_dir", "input"))
                    drawn.append(_first_images(run)[:1])
                _progress(spec, f"quality: digit {digit} drawn")
            np.save(out / "quality.npy", np.concatenate(drawn))
    except Exception as exc:  # noqa: BLE001 - the parent reports any failure of a row
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["peak_rss_mb"] = _peak_rss_mb()
    result["gpu_mem_mb"] = _gpu_memory_mb()
    (out / "result.json").write_text(json.dumps(result))
    return 0


def _first_images(run: Any) -> Any:
    """The images of the program's first output (a declared output and the SaveImage that
    writes it are the same images; counting both would halve the per-image time)."""
    import numpy as np

    if not run.images:
        raise RuntimeError("the program produced no images; bench needs an image output")
    return np.asarray(next(iter(run.images.values())))


def _stats(values: list[float]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {"median_ms": float("nan"), "p90_ms": float("nan"), "n": 0}
    return {"median_ms": float(np.median(values)), "p90_ms": float(np.percentile(values, 90)),
            "n": len(values)}


def _progress(spec: dict[str, Any], message: str) -> None:
    if spec.get("progress"):
        print(f"[bench] {spec['label']}: {message}", file=sys.stderr, flush=True)


def _step_progress(spec: dict[str, Any]) -> Any:
    """A ``progress(label, step, total)`` for a run's sampling steps: a line at most every
    5 s (the first step, and the steps of a slow warm-up), so a long first run shows life."""
    last = [time.perf_counter()]

    def progress(label: str, step: int, total: int) -> None:
        now = time.perf_counter()
        if step == 1 or now - last[0] >= 5.0:
            last[0] = now
            _progress(spec, f"{label}: step {step}/{total}")

    return progress


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: ``VmHWM``, which starts afresh at exec
    (``ru_maxrss`` would report the parent's peak: it survives fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _gpu_memory_mb() -> float | None:
    """Peak GPU memory of this process: torch's allocator, else nvidia-smi's view of it."""
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.cuda.max_memory_allocated() / 2**20
    try:
        text = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                               "--format=csv,noheader,nounits"], check=False,
                              capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in text.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return float(used)
    return None


# --------------------------------------------------------------------------- the parent
def _artifact_bytes(path: Path) -> dict[str, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    onnx = sum(p.stat().st_size for p in files if p.parts[len(path.parts)] == "stages")
    torch = sum(p.stat().st_size for p in files if p.parts[len(path.parts)] == "torch")
    return {"size_bytes": sum(p.stat().st_size for p in files) - torch,
            "onnx_bytes": onnx, "torch_bytes": torch}


def _step_caches(text: str) -> dict[str, tuple[int, int]]:
    """``3,5:2`` → ``{"cache3": (3, 1), "cache5s2": (5, 2)}``.

    Raises:
        ValueError: An entry is not N or N:SKIP with N >= 2, SKIP >= 1.
    """
    out: dict[str, tuple[int, int]] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        interval, _, skip = part.partition(":")
        try:
            pair = (int(interval), int(skip or 1))
        except ValueError:
            raise ValueError(f"--step-cache entries are N or N:SKIP, got {part!r}") from None
        if pair[0] < 2 or pair[1] < 1:
            raise ValueError(f"--step-cache {part!r}: N must be >= 2 and SKIP >= 1")
        out[f"cache{pair[0]}" + (f"s{pair[1]}" if pair[1] != 1 else "")] = pair
    return out


def _compile(args: argparse.Namespace, source: str, out: Path, precision: str,
             store_torch: bool, say: Any) -> dict[str, Any]:
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.frontends.load import load_workflow

    from .common import catalog_from_args

    cache = _step_caches(args.step_cache).get(precision)
    options = CompileOptions(models_dir=args.models_dir, input_dir=args.input_dir,
                             store_torch=store_torch,
                             fp16=precision == "fp16",
                             quantize="int8" if precision == "int8" else None,
                             step_cache=cache[0] if cache else None,
                             step_cache_skip=cache[1] if cache else 1)
    start = time.perf_counter()
    graph = load_workflow(source, catalog_from_args(args))
    # NOTE: the writer's own "wrote … (N MB)" counts the PyTorch weights stored for the torch
    # rows too; the size reported (the artifact a deployment ships) is said once, below.
    compile_graph(graph, out, options,
                  progress=lambda m: say(f"compile {precision}: {m}")
                  if not m.startswith(("pass ", "wrote ")) else None)
    return {"path": str(out), "compile_s": time.perf_counter() - start, **_artifact_bytes(out)}


def _rows(backends: list[str], precisions: list[str]) -> list[dict[str, str]]:
    rows = []
    for backend in backends:
        for precision in precisions:
            if precision != "fp32" and not backend.startswith(("ort", "ov-")):
                continue  # torch and trt rows run the fp32 weights (trt builds its own fp16)
            label = backend if precision == "fp32" else f"{backend}+{precision}"
            rows.append({"label": label, "backend": backend, "precision": precision})
    return rows


def _classify(images: Any, seeds: int) -> dict[str, Any] | None:
    """Digit classifier accuracy, or None when the classifier cannot be loaded."""
    import importlib.util

    import numpy as np

    path = Path(__file__).resolve().parents[2] / "examples" / "tiny_model" / "classifier.py"
    if not path.is_file() or importlib.util.find_spec("sklearn") is None:
        return None
    spec = importlib.util.spec_from_file_location("comfyc_bench_classifier", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classifier = getattr(_classify, "cached", None) or module.train_classifier()
    _classify.cached = classifier  # type: ignore[attr-defined]
    labels = np.repeat(np.arange(10), seeds)
    predicted = classifier.classify(images)
    return {"accuracy": float((predicted == labels).mean()), "images": len(labels)}


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc bench``."""
    if args.worker:
        return _worker(args.worker)
    import numpy as np

    from comfyc.compiler.errors import WorkflowError
    from comfyc.compiler.lowering.autotune import machine_info
    from comfyc.runtime.artifact import (
        ArtifactError,
        backend_unavailable_reason,
        read_manifest,
    )
    from comfyc.runtime.errors import Error as RuntimeFailure

    from .common import backend_help, exit_code_for_runtime, print_error, source_texts
    from .run import parse_params
    from .tune import ort_options_from_args

    def say(message: str) -> None:
        if not args.quiet:
            print(f"[bench] {message}", file=sys.stderr, flush=True)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in precisions if p not in ("fp32", "fp16", "int8")]
    try:
        # NOTE: a step-caching artifact is one more "precision": compiled, then run on the
        # ort/ov backends and compared with the exact reference like fp16 and int8 are.
        precisions += list(_step_caches(args.step_cache))
    except ValueError as exc:
        print(f"comfyc bench: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if bad or not backends:
        print(f"comfyc bench: --precisions takes fp32, fp16, int8 (got {bad}); --backends "
              f"needs at least one backend", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        params = parse_params(args.param)
    except ValueError as exc:
        print(f"comfyc bench: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    # Fail before any work when a backend cannot run here, naming what is missing.
    missing = {b: why for b in backends if (why := backend_unavailable_reason(b))}
    for backend, why in missing.items():
        print(f"comfyc bench: {'warning' if args.skip_unavailable else 'error'}: backend "
              f"{backend} cannot run on this machine: {why}", file=sys.stderr)
    # NOTE: exit 2, as compile and run do for a backend this machine lacks (README: exit codes).
    if missing and not args.skip_unavailable:
        print("comfyc bench: leave those backends out, or pass --skip-unavailable",
              file=sys.stderr)
        return EXIT_UNREADABLE
    backends = [b for b in backends if b not in missing]
    if not backends:
        return EXIT_UNREADABLE

    out = Path(args.output)
    (out / "images").mkdir(parents=True, exist_ok=True)
    source = Path(args.file)
    needs_torch = any(b.startswith("torch") for b in backends) or "torch" not in backends
    artifacts: dict[str, dict[str, Any]] = {}
    try:
        if source.is_dir():
            manifest = read_manifest(source)
            torch_rows = [b for b in backends if b.startswith("torch")]
            if torch_rows and not (source / "torch").is_dir():
                raise ArtifactError(
                    f"{source} holds no PyTorch weights, so {', '.join(torch_rows)} cannot run "
                    f"it; compile with --store-torch (or --backend auto), or bench the "
                    f"workflow file, which stores them")
            artifacts["fp32"] = {"path": str(source), "compile_s": None,
                                 **_artifact_bytes(source)}
            origin = manifest.source.file
            for precision in precisions:
                if precision == "fp32":
                    continue
                if not origin or not Path(origin).is_file():
                    raise ArtifactError(f"--precisions {precision} recompiles the workflow, but "
                                        f"{source} names no readable source ({origin!r}); "
                                        f"bench the workflow file instead")
                artifacts[precision] = _compile(args, origin, out / "artifacts" /
                                                f"{precision}.comfyc", precision, False, say)
        else:
            for precision in ["fp32"] + [p for p in precisions if p != "fp32"]:
                say(f"compiling {source} ({precision})")
                artifacts[precision] = _compile(args, str(source), out / "artifacts" /
                                                f"{precision}.comfyc", precision,
                                                precision == "fp32" and needs_torch, say)
                sizes = artifacts[precision]
                extra = (f" (+ {sizes['torch_bytes'] / 1e6:.2f} MB of PyTorch weights stored "
                         f"for the torch rows only)" if sizes["torch_bytes"] else "")
                say(f"compiled {precision} in {sizes['compile_s']:.1f} s: "
                    f"{sizes['size_bytes'] / 1e6:.2f} MB{extra}")
    except WorkflowError as exc:
        print_error(exc, source_texts(args.file))
        return EXIT_INVALID
    except ArtifactError as exc:
        print(f"comfyc bench: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except RuntimeFailure as exc:  # An input image, a param, a backend while compiling ...
        print(f"comfyc bench: error: {exc}", file=sys.stderr)
        if (hint := backend_help(exc)) is not None:
            print(hint, file=sys.stderr)
        return exit_code_for_runtime(exc)

    rows = _rows(backends, precisions)
    # The reference: the torch row, measured anyway (1 run) when not asked for, if it can run.
    reference_label = "torch"
    extra_reference = "torch" not in backends and backend_unavailable_reason("torch") is None \
        and Path(artifacts["fp32"]["path"], "torch").is_dir()
    if extra_reference:
        rows.append({"label": "torch", "backend": "torch", "precision": "fp32",
                     "reference_only": "1"})
    stage_options = ort_options_from_args(args)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="comfyc-bench-") as tmp:
        for number, row in enumerate(rows, 1):
            folder = Path(tmp) / f"row{number}"
            folder.mkdir()
            only_ref = bool(row.get("reference_only"))
            spec = {"artifact": artifacts[row["precision"]]["path"], "backend": row["backend"],
                    "label": row["label"], "out": str(folder), "params": params,
                    "runs": 1 if only_ref else args.runs,
                    "warmup": 0 if only_ref else args.warmup,
                    "quality": args.quality, "stage_options": stage_options,
                    "input_dir": str(Path(args.input_dir).resolve()),
                    "progress": not args.quiet}
            (folder / "spec.json").write_text(json.dumps(spec))
            say(f"[{number}/{len(rows)}] {row['label']}"
                f"{' (reference images only)' if only_ref else ''}")
            subprocess.run([sys.executable, "-m", "comfyc.cli.commands.bench",
                            str(folder / "spec.json")], check=False)
            result_path = folder / "result.json"
            result = (json.loads(result_path.read_text()) if result_path.is_file()
                      else {"error": "the worker process died (see its output above)"})
            result.update(row)
            result["artifact"] = row["precision"]
            if (folder / "image.npy").is_file():
                result["_image"] = np.load(folder / "image.npy")
            if (folder / "quality.npy").is_file():
                result["_quality"] = np.load(folder / "quality.npy")
            if "error" in result:
                say(f"{row['label']} failed: {result['error']}")
            results.append(result)
    report = _assemble(args, source, artifacts, results, reference_label, machine_info())
    _write_reports(out, report, results)
    print(render_table(report))
    print(f"\nwrote {out / 'bench.json'}, {out / 'bench.png'}, {out / 'report.html'}")
    failed = [r["label"] for r in report["rows"] if r.get("error")]
    return EXIT_INVALID if failed else EXIT_OK


def _assemble(args: argparse.Namespace, source: Path, artifacts: dict[str, Any],
              results: list[dict[str, Any]], reference_label: str,
              machine: dict[str, Any]) -> dict[str, Any]:
    reference = next((r for r in results if r["label"] == reference_label and "_image" in r),
                     None)
    rows = []
    for result in results:
        row = {k: v for k, v in result.items() if not k.startswith("_")}
        row["size_bytes"] = artifacts[result["artifact"]]["size_bytes"]
        if "_image" in result and reference is not None:
            row["agreement"] = agreement(result["_image"], reference["_image"])
            if result["precision"] == "fp32":
                row["agreement"]["within_tolerance"] = (
                    row["agreement"]["max_pixel_diff"] <= TOLERANCE_PIXELS)
        if "_quality" in result:
            row["quality"] = _classify(result["_quality"], args.quality)
        rows.append(row)
    return {"tool": "comfyc bench", "source": str(source), "machine": machine,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings": {"runs": args.runs, "warmup": args.warmup, "quality": args.quality,
                         "params": args.param, "backends": args.backends,
                         "precisions": args.precisions},
            "reference": reference_label if reference is not None else None,
            "tolerance": {"max_pixel_diff": TOLERANCE_PIXELS,
                          "meaning": "fp32 rows vs the torch row, levels of 255"},
            "artifacts": artifacts, "rows": rows}


# --------------------------------------------------------------------------- reports
def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def _stage_columns(report: dict[str, Any]) -> list[str]:
    kinds: list[str] = []
    for row in report["rows"]:
        for stage in (row.get("stages") or {}).values():
            if stage["kind"] not in kinds:
                kinds.append(stage["kind"])
    return kinds


def _kind_stat(row: dict[str, Any], kind: str, key: str) -> float | None:
    values = [s[key] for s in (row.get("stages") or {}).values() if s["kind"] == kind]
    return max(values) if values else None


def render_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table (what the command prints)."""
    kinds = _stage_columns(report)
    head = ["backend", "image ms", "p90", *[f"{k} ms" for k in kinds], "load s", "1st run s",
            "RSS MB", "GPU MB", "size MB", "max dpx", "PSNR", "digits"]
    lines = []
    for row in report["rows"]:
        if row.get("error"):
            lines.append([row["label"], "failed: " + row["error"][:80]])
            continue
        per = row.get("per_image") or {}
        agree = row.get("agreement") or {}
        quality = row.get("quality") or {}
        lines.append([
            row["label"] + (" (ref)" if row.get("reference_only") else ""),
            _fmt(per.get("median_ms")), _fmt(per.get("p90_ms")),
            *[f"{_fmt(_kind_stat(row, k, 'median_ms'), '.2f')}/"
              f"{_fmt(_kind_stat(row, k, 'p90_ms'), '.2f')}" for k in kinds],
            _fmt(row.get("load_s"), ".2f"), _fmt(row.get("first_run_s"), ".2f"),
            _fmt(row.get("peak_rss_mb"), ".0f"), _fmt(row.get("gpu_mem_mb"), ".0f"),
            _fmt(row["size_bytes"] / 1e6, ".2f"), _fmt(agree.get("max_pixel_diff"), ".2f"),
            _fmt(agree.get("psnr_db"), ".1f"),
            _fmt(quality.get("accuracy"), ".0%") if quality else "-"])
    widths = [max(len(str(r[i])) for r in [head, *lines] if i < len(r))
              for i in range(len(head))]
    text = ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(head))]
    text += ["  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)) for r in lines]
    compile_s = ", ".join(f"{p} {_fmt(a.get('compile_s'), '.1f')} s"
                          for p, a in report["artifacts"].items())
    text.append(f"stage columns: median/p90 ms per call; image ms: end to end per image "
                f"(median, p90 of {report['settings']['runs']}); max dpx / PSNR: vs the "
                f"{report['reference']} row (fp32 tolerance {TOLERANCE_PIXELS} levels); "
                f"compile: {compile_s}")
    return "\n".join(text)


def _chart(report: dict[str, Any], path: Path) -> bool:
    """Draw the chart; False (and no file) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if not r.get("error") and r.get("per_image")]
    kinds = _stage_columns(report)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.5 * len(rows) + 2.2))
    labels = [r["label"] for r in rows]
    medians = [r["per_image"]["median_ms"] for r in rows]
    p90 = [max(r["per_image"]["p90_ms"] - r["per_image"]["median_ms"], 0) for r in rows]
    left.barh(labels, medians, xerr=[[0] * len(rows), p90], color="#4c72b0")
    left.invert_yaxis()
    left.set_xlabel("ms per image (median; whisker: p90)")
    left.set_title("end to end")
    height = 0.8 / max(len(kinds), 1)
    for index, kind in enumerate(kinds):
        values = [_kind_stat(r, kind, "median_ms") or 0.0 for r in rows]
        right.barh([i + index * height for i in range(len(rows))], values, height=height,
                   label=kind)
    right.set_yticks([i + 0.4 - height / 2 for i in range(len(rows))], labels)
    right.invert_yaxis()
    right.set_xscale("log")
    right.set_xlabel("ms per call (median, log scale)")
    right.set_title("per stage")
    right.legend(fontsize="small")
    fig.suptitle(f"comfyc bench: {Path(report['source']).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _png_bytes(image: Any) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    array = np.clip(np.asarray(image)[0] * 255 + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_reports(out: Path, report: dict[str, Any], results: list[dict[str, Any]]) -> None:
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    if not _chart(report, out / "bench.png"):
        print("comfyc bench: warning: matplotlib is not installed, so there is no chart; "
              "pip install 'comfyc[bench]'", file=sys.stderr)
    figures = []
    for result in results:
        if "_image" not in result:
            continue
        data = _png_bytes(result["_image"])
        (out / "images" / f"{result['label']}.png").write_bytes(data)
        row = next(r for r in report["rows"] if r["label"] == result["label"])
        agree = row.get("agreement") or {}
        caption = (f"{html.escape(row['label'])}<br>max Δ "
                   f"{_fmt(agree.get('max_pixel_diff'), '.2f')}/255, PSNR "
                   f"{_fmt(agree.get('psnr_db'), '.1f')} dB")
        figures.append(f'<figure><img src="data:image/png;base64,'
                       f'{base64.b64encode(data).decode()}" alt="{html.escape(row["label"])}">'
                       f"<figcaption>{caption}</figcaption></figure>")
    chart = (base64.b64encode((out / "bench.png").read_bytes()).decode()
             if (out / "bench.png").is_file() else "")
    table = html.escape(render_table(report))
    machine = html.escape(json.dumps(report["machine"], indent=1))
    title = f"comfyc bench: {html.escape(report['source'])}"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }}
.images {{ display: flex; flex-wrap: wrap; gap: 1.5em; }}
figure {{ margin: 0; text-align: center; font-size: 13px; }}
figure img {{ width: 192px; height: 192px; image-rendering: pixelated; border: 1px solid #ccc; }}
</style></head><body>
<h1>comfyc bench</h1>
<p>Source <code>{html.escape(report['source'])}</code>, {report['when']},
{report['settings']['runs']} timed runs after {report['settings']['warmup']} warm-up per row.
Agreement is measured against the <b>{html.escape(str(report['reference']))}</b> row
(fp32 tolerance: {TOLERANCE_PIXELS} levels of 255).</p>
<h2>Timings</h2>
<img src="data:image/png;base64,{chart}" alt="chart" style="max-width:100%">
<pre>{table}</pre>
<h2>Images</h2>
<div class="images">{''.join(figures)}</div>
<h2>Machine</h2>
<pre>{machine}</pre>
</body></html>
"""
    (out / "report.html").write_text(page, encoding="utf-8")


if __name__ == "__main__":  # a bench worker: python -m comfyc.cli.commands.bench SPEC
    sys.exit(_worker(sys.argv[1]))
