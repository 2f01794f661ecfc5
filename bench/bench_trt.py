"""Issue 8 on a GPU: build the tiny model's TensorRT engines, run txt2img on them, compare the
images with the PyTorch path and time TensorRT against PyTorch on CUDA.

    python bench/bench_trt.py [--size 256] [--steps 20] [--runs 5] [--out DIR]

Needs an NVIDIA GPU, PyTorch with CUDA and the ``tensorrt`` package; on a machine without them
it says what is missing and exits 2 (nothing is measured). Writes bench/results/trt.json (or
DIR/trt.json) with the GPU, the versions, engine build times and sizes, per-image medians
(TensorRT fp16/fp32, torch CUDA eager, onnxruntime CUDA where installed) and the max pixel
difference and PSNR of each against the torch CUDA images of the same seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import REPO, TXT2IMG, machine, timed

sys.path.insert(0, str(REPO))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    from comfyc.runtime.backends.base import BackendError
    from comfyc.runtime.backends.trt import gpu_identity, require_tensorrt

    try:
        trt = require_tensorrt()
        gpu = gpu_identity()
    except BackendError as exc:
        print(f"bench_trt: cannot run here: {exc}", file=sys.stderr)
        return 2
    import torch

    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.compiler.lowering.tensorrt import BuildOptions, build_engines
    from comfyc.frontends.dsl import parse_dsl
    from comfyc.runtime import load

    text = TXT2IMG.format(ckpt="tiny-digits.safetensors", prompt="a handwritten digit seven",
                          size=args.size, steps=args.steps, cfg=5.0)
    result: dict[str, Any] = {
        "gpu": gpu.name, "compute_capability": gpu.compute_capability,
        "tensorrt": trt.__version__, "torch": torch.__version__,
        "cuda": torch.version.cuda, "size": args.size, "steps": args.steps,
        "machine": machine(), "engines": {}, "per_image_s": {}, "agreement": {}}
    seeds = [1, 2, 3]
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "t2i.comfyc"
        start = time.perf_counter()
        compile_graph(parse_dsl(text, "bench.cfy", default_catalog()), artifact,
                      CompileOptions(optimize=False, store_torch=True))
        result["compile_s"] = time.perf_counter() - start

        programs: dict[str, Any] = {"torch-cuda": load(artifact, backend="torch-cuda")}
        for fp16 in (False, True):
            label = "trt-fp16" if fp16 else "trt-fp32"
            built = build_engines(artifact, BuildOptions(fp16=fp16, force=True),
                                  progress=lambda m: print(m, file=sys.stderr))
            result["engines"][label] = built
            programs[label] = load(artifact, backend="trt")  # Newest engines: this build.
        try:
            programs["ort-cuda"] = load(artifact, backend="ort-cuda")
        except BackendError as exc:
            result["ort_cuda"] = f"not run: {exc}"

        images: dict[str, list[np.ndarray]] = {}
        for label, program in programs.items():
            images[label] = [next(iter(program.run({"seed": s}, save=False).images.values()))
                             for s in seeds]
            stats = timed(lambda p=program: p.run({"seed": 7}, save=False), args.runs, 2)
            result["per_image_s"][label] = stats
            print(f"{label}: {stats['median_s'] * 1000:.1f} ms per image", file=sys.stderr)
        reference = images["torch-cuda"]
        for label, imgs in images.items():
            diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)).max()
                     for a, b in zip(imgs, reference, strict=True)]
            psnr = [_psnr(a, b) for a, b in zip(imgs, reference, strict=True)]
            result["agreement"][label] = {"max_pixel_diff": int(max(diffs)),
                                          "min_psnr_db": float(min(psnr))}
    base = result["per_image_s"]["torch-cuda"]["median_s"]
    result["speedup_vs_torch_cuda"] = {k: base / v["median_s"]
                                       for k, v in result["per_image_s"].items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "trt.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result["speedup_vs_torch_cuda"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
