"""Issues 5 and 6: one txt2img image on the tiny model, side by side in one run.

Measures, on the same weights and settings (64x64, Euler/normal, 20 steps, cfg 5):
  * diffusers' StableDiffusionPipeline (the peer),
  * `comfyc run WORKFLOW` (in-memory program on the PyTorch backend),
  * the compiled artifact on onnxruntime-CPU,
per-image wall time (median of --runs after a warm-up), the per-stage split, the runtime
overhead (end to end minus time inside stage calls), the artifact's compile time and size,
and the cold start of a fresh runtime-only process (torch import blocked) to its first PNG.

    python bench/bench_pipeline.py [--runs 5] [--ckpt tiny-digits.safetensors] [--models-dir D]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import REPO, TXT2IMG, save, timed

sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ckpt", default="tiny-digits.safetensors")
    parser.add_argument("--models-dir", default=None)
    parser.add_argument("--name", default="pipeline")
    args = parser.parse_args()

    import numpy as np
    import torch

    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
    from comfyc.compiler.models.diffusers_folder import write_diffusers_folder
    from comfyc.compiler.passes.base import PassContext
    from comfyc.compiler.pipeline import run_pipeline
    from comfyc.frontends.dsl import parse_dsl
    from comfyc.runtime import load
    from comfyc.runtime.model_paths import resolve
    from comfyc.runtime.noise import prepare_noise

    prompt = "a handwritten digit seven"
    text = textwrap.dedent(TXT2IMG.format(ckpt=args.ckpt, prompt=prompt, size=64,
                                          steps=args.steps, cfg=5.0))
    work = Path(tempfile.mkdtemp(prefix="comfyc-bench-"))
    results: dict = {"settings": {"size": 64, "steps": args.steps, "cfg": 5.0,
                                  "sampler": "euler/normal", "ckpt": args.ckpt,
                                  "torch_threads": torch.get_num_threads()}}

    # --- comfyc, PyTorch backend (in-memory program) -----------------------------------
    cache = TorchModelCache(args.models_dir)
    graph = parse_dsl(text, "bench.cfy", default_catalog())
    run_pipeline(graph, PassContext(models=cache))
    program = lower_to_program(graph, cache=cache)
    splits = []

    def torch_run() -> None:
        splits.append(program.run({"seed": 42}, save=False).timings)

    results["comfyc_torch"] = timed(torch_run, args.runs)
    results["comfyc_torch"]["stages"] = splits[-1]["stages"]

    # --- diffusers (peer) --------------------------------------------------------------
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    folder = work / "diffusers"
    write_diffusers_folder(resolve("checkpoints", args.ckpt, args.models_dir), folder)
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                        timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    sigma_max = float(pipe.scheduler.sigmas.max())
    latents = torch.from_numpy(prepare_noise((1, 4, 8, 8), 42)) * (
        (1 + sigma_max**2) ** 0.5 / sigma_max)

    def diffusers_run() -> None:
        pipe(prompt, negative_prompt="", num_inference_steps=args.steps, guidance_scale=5.0,
             height=64, width=64, latents=latents, output_type="np")

    results["diffusers"] = timed(diffusers_run, args.runs)

    # --- compiled artifact on onnxruntime-CPU --------------------------------------------
    artifact = work / "bench.comfyc"
    start = time.perf_counter()
    compile_graph(parse_dsl(text, "bench.cfy", default_catalog()), artifact,
                  CompileOptions(models_dir=args.models_dir))
    compile_s = time.perf_counter() - start
    size = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file())
    compiled = load(artifact)
    timings = []

    def ort_run() -> None:
        timings.append(compiled.run({"seed": 42}, output_dir=work / "out").timings)

    results["artifact_ort_cpu"] = timed(ort_run, args.runs)
    overhead = [t["overhead_s"] / t["total_s"] for t in timings]
    results["artifact_ort_cpu"].update({
        "stages": timings[-1]["stages"], "compile_s": compile_s, "size_bytes": size,
        "overhead_share_median": statistics.median(overhead),
        "overhead_s_median": statistics.median(t["overhead_s"] for t in timings),
    })
    (ours,) = compiled.run({"seed": 42}, save=False).images.values()
    (reference,) = program.run({"seed": 42}, save=False).images.values()
    results["artifact_vs_torch_max_abs"] = float(np.abs(ours - reference).max())

    # --- cold start: a fresh runtime-only process to its first PNG ----------------------
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "diffusers", "transformers"):
                    raise ImportError("runtime-only: " + name)
        sys.meta_path.insert(0, Block())
        import comfyc.runtime
        comfyc.runtime.load({str(artifact)!r}).run({{"seed": 1}}, output_dir={str(work / 'cold')!r})
    """)
    colds = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        colds.append(time.perf_counter() - start)
    results["cold_start_s"] = {"median_s": statistics.median(colds), "all_s": colds}

    d, t, o = (results[k]["median_s"] for k in ("diffusers", "comfyc_torch", "artifact_ort_cpu"))
    results["ratios"] = {"comfyc_torch_over_diffusers": t / d,
                         "diffusers_over_artifact": d / o, "torch_over_artifact": t / o}
    print(f"per image (median of {args.runs}): diffusers {d*1000:.1f} ms | comfyc torch "
          f"{t*1000:.1f} ms | artifact ort-cpu {o*1000:.1f} ms")
    print(f"comfyc torch / diffusers = {t/d:.2f}; artifact is {d/o:.2f}x faster than diffusers,"
          f" {t/o:.2f}x faster than comfyc torch")
    print(f"runtime overhead {results['artifact_ort_cpu']['overhead_share_median']*100:.1f}% "
          f"({results['artifact_ort_cpu']['overhead_s_median']*1000:.1f} ms); cold start "
          f"{results['cold_start_s']['median_s']:.2f} s; compile {compile_s:.1f} s; artifact "
          f"{size/1e6:.2f} MB; artifact vs torch max |diff| "
          f"{results['artifact_vs_torch_max_abs']:.2e}")
    for name in ("comfyc_torch", "artifact_ort_cpu"):
        for stage, row in results[name]["stages"].items():
            print(f"  {name:<18} {stage:<32} {row['calls']:>3} calls {row['total_s']*1000:8.1f} ms")
    print(f"results: {save(args.name, results)}")


if __name__ == "__main__":
    main()
