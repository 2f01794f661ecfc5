"""Issue 16: a Flux-size (or SD3.5-large-size) diffusion model compiled and run on this machine.

The real Flux.1 transformer has 12 B parameters (48 GB in float32): it cannot be loaded on a
24 GB machine at all. The seeded ``large`` size keeps the published width (3072, 24 heads,
T5-XXL's 4096-wide context, CLIP-L) with 2 double and 4 single blocks instead of 19 and 38
(1.31 B parameters; compiler/models/flow_synthetic.py); per-block costs are the real ones,
so seconds per step scale by the block count (reported as ``per_step_full_est_s``, an
estimate). SD3.5 large: width 2432, 4 of 38 blocks (0.90 B).

Steps, one after the other in child processes (so each peak RSS is its own):

1. write the seeded model as separate files (bfloat16, as published) unless present;
2. ``compile``: the Flux-dev example workflow (UNETLoader, DualCLIPLoader, VAELoader, a
   constant prompt folded at compile time) at SIZE, compile time, peak RSS, artifact size;
3. ``comfyc-ort``: the artifact on onnxruntime (CPU), seconds per step (median transformer
   call, first excluded) and per image;
4. ``comfyc-torch``: the same workflow on comfyc's PyTorch path (``comfyc run wf.cfy``).

    python bench/bench_flow.py --family flux_dev --size 512 --steps 3 --work /work/flow-bench

Results go to bench/results/flow_<family>.json; the table in bench/RESULTS.md is written
from them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from common import REPO, machine

sys.path.insert(0, str(REPO))

PROMPT = "a red fox curled up in fresh snow at dawn, soft light, photograph"
#: Blocks of the published models and of the ``large`` size (for the full-size estimate).
BLOCKS = {"flux_dev": (19 + 38, 2 + 4), "sd35_large": (38, 4)}


def flux_workflow(size: int, steps: int) -> str:
    return textwrap.dedent(f"""
        model = UNETLoader(unet_name="flux-large.safetensors", weight_dtype="default")
        clip = DualCLIPLoader(clip_name1="flux-large-t5xxl.safetensors",
                              clip_name2="flux-large-clip_l.safetensors", type="flux")
        vae = VAELoader(vae_name="flux-large-vae.safetensors")
        shifted = ModelSamplingFlux(model=model, max_shift=1.15, base_shift=0.5, width={size},
                                    height={size})
        text = CLIPTextEncode(text="{PROMPT}", clip=clip)
        cond = FluxGuidance(conditioning=text, guidance=3.5)
        guider = BasicGuider(model=shifted, conditioning=cond)
        noise = RandomNoise(noise_seed=42)
        sampler = KSamplerSelect(sampler_name="euler")
        sigmas = BasicScheduler(model=shifted, scheduler="simple", steps={steps}, denoise=1.0)
        latent = EmptySD3LatentImage(width={size}, height={size}, batch_size=1)
        out, x0 = SamplerCustomAdvanced(noise=noise, guider=guider, sampler=sampler,
                                        sigmas=sigmas, latent_image=latent)
        image = VAEDecode(samples=out, vae=vae)
        output image
    """)


def sd3_workflow(size: int, steps: int) -> str:
    return textwrap.dedent(f"""
        model = UNETLoader(unet_name="sd35-large.safetensors", weight_dtype="default")
        clip = TripleCLIPLoader(clip_name1="sd35-large-clip_l.safetensors",
                                clip_name2="sd35-large-clip_g.safetensors",
                                clip_name3="sd35-large-t5xxl.safetensors")
        vae = VAELoader(vae_name="sd35-large-vae.safetensors")
        pos = CLIPTextEncode(text="{PROMPT}", clip=clip)
        neg = CLIPTextEncode(text="", clip=clip)
        latent = EmptySD3LatentImage(width={size}, height={size}, batch_size=1)
        s = KSampler(model=model, seed=42, steps={steps}, cfg=4.5, sampler_name="euler",
                     scheduler="simple", positive=pos, negative=neg, latent_image=latent,
                     denoise=1.0)
        image = VAEDecode(samples=s, vae=vae)
        output image
    """)


def _rss_of_child(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0

    def sample() -> None:
        nonlocal peak
        while proc.poll() is None:
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 1024)
            except OSError:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    thread.join(timeout=1)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), peak


def _child(code: str) -> dict[str, Any]:
    done, peak = _rss_of_child([sys.executable, "-c", textwrap.dedent(code)])
    if done.returncode != 0 or "RESULT " not in done.stdout:
        tail = (done.stderr or "?").strip().splitlines()[-3:]
        return {"error": " | ".join(tail), "peak_rss_mb": peak}
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    result["peak_rss_mb"] = round(peak, 1)
    result["load_avg"] = os.getloadavg()
    return result


def write_models(family: str, models: Path) -> dict[str, Any]:
    stem = "flux-large" if family == "flux_dev" else "sd35-large"
    if (models / "diffusion_models" / f"{stem}.safetensors").is_file():
        return {"written": False}
    return _child(f"""
        import json, time, torch
        torch.set_num_threads(2)
        from comfyc.compiler.models.synthetic import write_split_files
        start = time.perf_counter()
        written = write_split_files({str(models)!r}, {family!r}, "large", seed=0,
                                    dtype=torch.bfloat16, stem={stem!r})
        sizes = {{k: p.stat().st_size for k, p in written.items()}}
        print("RESULT " + json.dumps({{"write_s": time.perf_counter() - start,
                                       "bytes": sizes}}))
    """)


def compile_row(text: str, models: Path, artifact: Path) -> dict[str, Any]:
    result = _child(f"""
        import json, time
        from comfyc.compiler.catalog import default_catalog
        from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
        from comfyc.frontends.dsl import parse_dsl
        start = time.perf_counter()
        phases = []
        def say(m):
            phases.append([round(time.perf_counter() - start, 1), m])
        compile_graph(parse_dsl({text!r}, "flow.cfy", default_catalog()), {str(artifact)!r},
                      CompileOptions(models_dir={str(models)!r}), progress=say)
        print("RESULT " + json.dumps({{"compile_s": time.perf_counter() - start,
                                       "phases": phases[-12:]}}))
    """)
    if "error" not in result:
        files = [p for p in artifact.rglob("*") if p.is_file()]
        result["artifact_bytes"] = sum(p.stat().st_size for p in files)
    return result


def ort_row(artifact: Path) -> dict[str, Any]:
    return _child(f"""
        import json, statistics, time
        from comfyc.runtime.artifact import load
        start = time.perf_counter()
        program = load({str(artifact)!r})
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        run = program.run({{}}, save=False)
        image_s = time.perf_counter() - start
        calls = next(v for k, v in program.timer.calls.items() if k.startswith("unet"))
        print("RESULT " + json.dumps({{"load_s": load_s, "image_s": image_s,
                                       "unet_calls": calls}}))
    """)


def torch_row(text: str, models: Path) -> dict[str, Any]:
    return _child(f"""
        import json, time
        from comfyc.runtime.backends.threads import choose_threads, passive_openmp
        passive_openmp()
        import torch
        torch.set_num_threads(choose_threads())
        from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
        from comfyc.compiler.passes.base import PassContext, PassOptions
        from comfyc.compiler.pipeline import run_pipeline
        from comfyc.frontends.dsl import parse_dsl
        start = time.perf_counter()
        graph = parse_dsl({text!r}, "flow.cfy")
        cache = TorchModelCache({str(models)!r})
        run_pipeline(graph, PassContext(options=PassOptions(models_dir={str(models)!r}),
                                        models=cache))
        program = lower_to_program(graph, cache=cache)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        run = program.run({{}}, save=False)
        image_s = time.perf_counter() - start
        calls = next(v for k, v in program.timer.calls.items() if k.startswith("unet"))
        print("RESULT " + json.dumps({{"load_s": load_s, "image_s": image_s,
                                       "unet_calls": calls}}))
    """)


def per_step(row: dict[str, Any], family: str) -> None:
    calls = row.get("unet_calls") or []
    if not calls:
        return
    timed = sorted(calls[1:] or calls)
    row["per_step_s"] = round(timed[len(timed) // 2], 3)
    full, large = BLOCKS[family]
    row["per_step_full_est_s"] = round(row["per_step_s"] * full / large, 1)
    row.pop("unet_calls")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="flux_dev", choices=sorted(BLOCKS))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--work", default="/work/flow-bench")
    parser.add_argument("--rows", default="compile,comfyc-ort,comfyc-torch")
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args()
    work = Path(args.work)
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    text = (flux_workflow if args.family == "flux_dev" else sd3_workflow)(args.size, args.steps)
    result: dict[str, Any] = {"machine": machine(), "family": args.family, "size": args.size,
                              "steps": args.steps, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "write": write_models(args.family, models)}
    artifact = work / f"{args.family}-{args.size}.comfyc"
    rows = args.rows.split(",")
    if "compile" in rows:
        result["compile"] = compile_row(text, models, artifact)
        print("compile", result["compile"], flush=True)
    if "comfyc-ort" in rows:
        result["comfyc-ort"] = ort_row(artifact)
        per_step(result["comfyc-ort"], args.family)
        print("comfyc-ort", result["comfyc-ort"], flush=True)
    if "comfyc-torch" in rows:
        result["comfyc-torch"] = torch_row(text, models)
        per_step(result["comfyc-torch"], args.family)
        print("comfyc-torch", result["comfyc-torch"], flush=True)
    out = Path(args.output) if args.output else REPO / "bench" / "results" / \
        f"flow_{args.family}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
