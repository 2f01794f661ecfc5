"""Autotuning: measure every available backend for each stage and plan the fastest.

``comfyc compile --backend auto`` and ``comfyc tune ARTIFACT`` call :func:`autotune`. For each
stage of the artifact it makes the stage on every backend that can run here (the artifact
must hold the stage's ONNX file for ``ort-*``/``trt`` and its PyTorch weights for ``torch*``;
``--backend auto`` stores both), feeds it random inputs of the shapes the workflow calls it
with (recorded at compile time), and times ``calls`` calls after ``warmup`` calls. The
fastest median wins; the margin is the runner-up's median over the winner's.

The result goes into the manifest (the contract ``comfyc viz`` reads)::

    manifest.autotune = {
        "machine": {...},
        "stages": {STAGE: {"choice": BACKEND, "margin": RATIO_vs_second_best,
                           "measurements": {BACKEND: {"median_ms", "p90_ms", "calls", ...}},
                           "skipped": {BACKEND: "why"}}}}
    manifest.plan[STAGE] = BACKEND

A backend that cannot start (no GPU, no TensorRT, provider silently missing) is listed under
``skipped`` with the reason, never measured as if it ran. Measurements also record each
backend's load time (``load_s``: session creation, or ``torch.compile``'s first call) and its
largest difference from the first backend measured (``max_abs_diff``), so a fast but wrong
backend shows.

Thread counts are measured too (issue #22: on a shared 2-core box one thread beat the
default several times over): each backend runs with every count in ``threads`` (default 1
and the free cores, :func:`~comfyc.runtime.backends.threads.free_cores`); its row is the
best count's, with ``threads`` and the per-count figures under ``by_threads``. The chosen
count goes to the stage entry's ``info["threads"]``, which the runtime uses unless told a
count, never above the cores free when the stage is made.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comfyc.runtime.manifest import Manifest, StageEntry

__all__ = ["autotune", "candidate_backends", "machine_info", "measure_stage",
           "thread_candidates"]

#: onnxruntime providers worth measuring, by backend name (others are not compute devices).
def thread_candidates() -> list[int]:
    """The intra-op thread counts worth measuring here: 1 and the free cores."""
    from comfyc.runtime.backends.threads import free_cores

    return sorted({1, free_cores()})


_ORT_BACKENDS = {"CUDAExecutionProvider": "ort-cuda", "TensorrtExecutionProvider": "ort-trt",
                 "ROCMExecutionProvider": "ort-rocm",
                 "OpenVINOExecutionProvider": "ort-openvino",
                 "DmlExecutionProvider": "ort-dml", "CoreMLExecutionProvider": "ort-coreml"}


def _torch_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def machine_info() -> dict[str, Any]:
    """What the measurements were taken on (CPU, GPU, library versions)."""
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "processor": platform.processor() or platform.machine(),
                            "cpus": os.cpu_count(), "python": platform.python_version(),
                            "load_avg_1m": round(os.getloadavg()[0], 2),
                            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            **{k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")
                               if k in os.environ}}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
        info["providers"] = list(onnxruntime.get_available_providers())
    except ImportError:
        pass
    if importlib.util.find_spec("torch") is not None:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    return info


def candidate_backends(entry: StageEntry) -> list[str]:
    """The backends worth trying for a stage entry on this machine, CPU first."""
    out: list[str] = []
    if entry.file:
        out.append("ort-cpu")
        try:
            import onnxruntime

            available = onnxruntime.get_available_providers()
        except ImportError:
            available = []
        out += [name for provider, name in _ORT_BACKENDS.items() if provider in available]
        if importlib.util.find_spec("openvino") is not None:
            out.append("ov-cpu")
        if importlib.util.find_spec("tensorrt") is not None:
            out.append("trt")
    if entry.torch and importlib.util.find_spec("torch") is not None:
        out += ["torch", "torch-compile"]
        if _torch_cuda():
            out += ["torch-cuda", "torch-compile-cuda"]
    return out


def _inputs(entry: StageEntry, rng: np.random.Generator) -> list[np.ndarray]:
    """Random inputs of the first shape the workflow calls the stage with."""
    shapes = entry.shapes[0]
    kind = entry.kind
    if kind == "text_encoder":
        return [rng.integers(0, 49407, size=shapes[0]).astype(np.int64)]
    arrays = [rng.standard_normal(size=shape).astype(np.float32) for shape in shapes]
    if kind == "unet":
        arrays[1] = np.full(shapes[1], 500.0, dtype=np.float32)
    return arrays


def _first(output: Any) -> np.ndarray:
    return np.asarray(output[0] if isinstance(output, tuple) else output, dtype=np.float32)


def measure_stage(root: Path, name: str, entry: StageEntry, backend: str, *,
                  calls: int = 10, warmup: int = 2, inputs: Sequence[np.ndarray],
                  stage_options: Mapping[str, Any] | None = None
                  ) -> tuple[dict[str, Any], np.ndarray]:
    """Time one stage on one backend.

    Returns:
        ``({"median_ms", "p90_ms", "calls", "load_s", "first_call_ms"}, first output)``.

    Raises:
        BackendError: The backend cannot run this stage here.
    """
    from comfyc.runtime.artifact import make_stage

    start = time.perf_counter()
    stage = make_stage(root, name, entry, backend, **dict(stage_options or {}))
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    output = _first(stage(*inputs))
    first_ms = (time.perf_counter() - start) * 1000
    for _ in range(max(warmup - 1, 0)):
        stage(*inputs)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        stage(*inputs)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return ({"median_ms": round(statistics.median(times), 4),
             "p90_ms": round(times[min(len(times) - 1, round(0.9 * (len(times) - 1)))], 4),
             "calls": calls, "load_s": round(load_s, 3), "first_call_ms": round(first_ms, 3)},
            output)


def autotune(root: str | Path, manifest: Manifest, *,
             backends: Sequence[str] | None = None, calls: int = 10, warmup: int = 2,
             stage_options: Mapping[str, Any] | None = None, amortize: int = 1000,
             threads: Sequence[int] | None = None,
             progress: Callable[[str], None] | None = None) -> Manifest:
    """Measure the backends of every stage and plan the fastest; returns the new manifest.

    Args:
        root: The artifact folder (files are read, nothing is written).
        manifest: Its manifest (not modified; a changed copy is returned).
        backends: Only these backends (default: every candidate of each stage).
        calls: Timed calls per stage and backend.
        warmup: Untimed calls before them (the first one includes torch.compile).
        stage_options: onnxruntime options for the ORT stages (threads …).
        amortize: Calls over which each backend's start-up time is spread when scoring.
        threads: Thread counts to measure (default :func:`thread_candidates`; one count
            when ``stage_options`` fixes ``intra_op_threads``).
        progress: ``progress(message)`` after each measurement.

    Raises:
        BackendError: No backend could run some stage (the reasons are listed).
    """
    from comfyc.runtime.backends.base import BackendError

    say = progress or (lambda message: None)
    root = Path(root)
    manifest = copy.deepcopy(manifest)
    plan = dict(manifest.plan)
    fixed = (stage_options or {}).get("intra_op_threads")
    counts = [int(fixed)] if fixed else list(threads or thread_candidates())
    result: dict[str, Any] = {"machine": machine_info(), "calls": calls, "warmup": warmup,
                              "amortize": amortize, "stages": {}}
    rng = np.random.default_rng(0)
    for name, entry in manifest.stage_entries().items():
        if entry.lora:
            say(f"{name}: runtime-mode LoRA; kept on {plan.get(name)} (not measured)")
            continue
        wanted = candidate_backends(entry)
        if backends is not None:
            wanted = [b for b in backends if b in wanted or b.startswith("ort-")
                      and entry.file]
        if any(b.startswith("torch") for b in wanted):
            import torch  # noqa: F401 - imported once up front: not part of any load_s

        inputs = _inputs(entry, rng)
        measurements: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        reference: np.ndarray | None = None
        for backend in wanted:
            by_threads: dict[str, Any] = {}
            for count in counts:
                options = {**(stage_options or {}), "intra_op_threads": count}
                try:
                    row, output = measure_stage(root, name, entry, backend, calls=calls,
                                                warmup=warmup, inputs=inputs,
                                                stage_options=options)
                except BackendError as exc:
                    skipped[backend] = str(exc)
                    say(f"{name}: {backend} skipped: {exc}")
                    break
                if reference is None:
                    reference = output
                row["max_abs_diff"] = float(np.abs(output - reference).max())
                startup_ms = (row["load_s"] * 1000
                              + max(row["first_call_ms"] - row["median_ms"], 0))
                row["score_ms"] = round(row["median_ms"] + startup_ms / max(amortize, 1), 4)
                row["threads"] = count
                by_threads[str(count)] = row
                say(f"{name}: {backend} with {count} thread(s): median "
                    f"{row['median_ms']:.2f} ms, p90 {row['p90_ms']:.2f} ms (load "
                    f"{row['load_s']:.2f} s)")
            if not by_threads:
                continue
            best = min(by_threads.values(), key=lambda r: r["score_ms"])
            measurements[backend] = {**best, "by_threads": {
                n: {k: r[k] for k in ("median_ms", "p90_ms", "score_ms")}
                for n, r in by_threads.items()}}
            skipped.pop(backend, None)
        if not measurements:
            reasons = "; ".join(f"{b}: {why}" for b, why in skipped.items()) or "none asked"
            raise BackendError(f"no backend could run stage {name} here ({reasons})")
        ranked = sorted(measurements, key=lambda b: measurements[b]["score_ms"])
        choice = ranked[0]
        margin = (measurements[ranked[1]]["score_ms"] / measurements[choice]["score_ms"]
                  if len(ranked) > 1 and measurements[choice]["score_ms"] > 0 else None)
        result["stages"][name] = {"choice": choice,
                                  "margin": None if margin is None else round(margin, 3),
                                  "measurements": measurements, "skipped": skipped}
        plan[name] = choice
        result["stages"][name]["threads"] = measurements[choice]["threads"]
        entry.info["threads"] = measurements[choice]["threads"]
        say(f"{name}: chose {choice} with {measurements[choice]['threads']} thread(s)"
            + (f" ({margin:.2f}x faster than {ranked[1]})" if margin else ""))
    manifest.autotune = result
    manifest.plan = plan
    return manifest
