"""Shared helpers for the benchmarks: timing, medians, the tiny-model txt2img workflow."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

TXT2IMG = """
param seed: INT = 42 [min=0, max=18446744073709551615]
ckpt = CheckpointLoaderSimple(ckpt_name="{ckpt}")
pos = CLIPTextEncode(text="{prompt}", clip=ckpt.CLIP)
neg = CLIPTextEncode(text="", clip=ckpt.CLIP)
latent = EmptyLatentImage(width={size}, height={size}, batch_size=1)
s = KSampler(model=ckpt.MODEL, seed=seed, steps={steps}, cfg={cfg}, sampler_name="euler",
             scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
image = VAEDecode(samples=s, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="bench")
"""


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "load_avg_1m": os.getloadavg()[0],
            **{k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")
               if k in os.environ}}


def timed(fn: Callable[[], Any], runs: int, warmup: int = 1) -> dict[str, float]:
    """Median, p90 and min of ``runs`` calls after ``warmup`` calls, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"median_s": statistics.median(times), "p90_s": times[int(0.9 * (len(times) - 1))],
            "min_s": times[0], "runs": runs}


def save(name: str, data: dict[str, Any]) -> Path:
    """Write results JSON under bench/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S"), **data}
    path.write_text(json.dumps(data, indent=2))
    return path


def python() -> str:
    """The interpreter to run subprocesses with."""
    return sys.executable


def run_quiet(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command, raising with its stderr on failure."""
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr}")
    return result
