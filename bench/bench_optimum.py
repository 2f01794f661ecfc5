"""Issue 7 peers on the same weights: optimum-onnx's ORTStableDiffusionPipeline (onnxruntime),
diffusers' StableDiffusionPipeline (torch) and the comfyc artifact (onnxruntime-CPU).

optimum-onnx pins ``transformers<4.58`` while comfyc's venv has transformers 5, so optimum
lives in its own venv (../shared/reference/spikes.md §1), created here on first use:

    python -m venv /tmp/comfyc-optimum-venv
    /tmp/comfyc-optimum-venv/bin/pip install torch==2.13.0
    /tmp/comfyc-optimum-venv/bin/pip install "optimum-onnx[onnxruntime]" diffusers

Settings (as bench/bench_pipeline.py): the tiny model, 64x64, Euler with linspace spacing, 20
steps, cfg 5, prompt "a handwritten digit seven", empty negative, the same initial latents
(comfyc's seed-42 noise) for every pipeline, one warm-up, median of --runs. The tiny model
goes to a local diffusers folder (comfyc's converter), which optimum-cli exports offline.

    python bench/bench_optimum.py [--runs 5] [--venv /tmp/comfyc-optimum-venv]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import REPO, TXT2IMG, save, timed

sys.path.insert(0, str(REPO))

PROMPT = "a handwritten digit seven"
STEPS, CFG, SIZE = 20, 5.0, 64

#: Runs inside the optimum venv: export, load, time, save the image.
OPTIMUM_SCRIPT = """
import json, subprocess, sys, time, statistics
from pathlib import Path
import numpy as np, torch
work = Path(sys.argv[1]); runs = int(sys.argv[2])
out = {}
start = time.perf_counter()
subprocess.run(["optimum-cli", "export", "onnx", "-m", str(work / "diffusers-t4"), "--task",
                "text-to-image", str(work / "optimum-onnx")], check=True,
               capture_output=True, text=True)
out["export_s"] = time.perf_counter() - start
from optimum.onnxruntime import ORTStableDiffusionPipeline
from diffusers import EulerDiscreteScheduler
start = time.perf_counter()
pipe = ORTStableDiffusionPipeline.from_pretrained(str(work / "optimum-onnx"),
                                                  provider="CPUExecutionProvider")
out["load_s"] = time.perf_counter() - start
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                    timestep_spacing="linspace")
pipe.set_progress_bar_config(disable=True)
noise = torch.from_numpy(np.load(work / "noise.npy"))
sigma_max = float(pipe.scheduler.sigmas.max())
latents = noise * ((1 + sigma_max**2) ** 0.5 / sigma_max)
def once():
    return pipe(PROMPT, negative_prompt="", num_inference_steps=STEPS, guidance_scale=CFG,
                height=SIZE, width=SIZE, latents=latents, output_type="np").images
once()
times = []
for _ in range(runs):
    start = time.perf_counter(); image = once(); times.append(time.perf_counter() - start)
np.save(work / "optimum.npy", np.asarray(image, dtype=np.float32))
times.sort()
out.update(median_s=statistics.median(times), p90_s=times[int(0.9 * (len(times) - 1))],
           min_s=times[0], runs=runs)
import importlib.metadata as md
out["versions"] = {p: md.version(p) for p in ("optimum-onnx", "optimum", "transformers",
                   "diffusers", "onnxruntime", "torch", "huggingface-hub")}
print(json.dumps(out))
"""


def make_transformers4_compatible(folder: Path) -> None:
    """Make a diffusers folder written under transformers 5 load right under transformers 4.

    Two differences, both found running optimum-onnx (transformers 4.57) on comfyc's folder:

    * transformers 5 saves CLIPTextModel weights without the ``text_model.`` prefix;
      transformers 4.57 then finds none of its keys and *silently* initialises the text
      encoder at random (a warning only): optimum's images came out unrelated to the prompt
      (max |diff| 0.79 against diffusers). The keys get the prefix back here.
    * only ``tokenizer.json`` is saved, while the export loads the slow ``CLIPTokenizer``,
      which needs ``vocab.json`` and ``merges.txt`` (``TypeError: expected str, bytes or
      os.PathLike object, not NoneType``); both come from tokenizer.json's BPE model.
    """
    from safetensors.numpy import load_file, save_file

    weights = folder / "text_encoder" / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({key if key.startswith("text_model.") else f"text_model.{key}": value
               for key, value in tensors.items()}, str(weights))
    tokenizer = folder / "tokenizer"
    if (tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file():
        return  # (written by bench/make_checkpoints.py --diffusers)
    model = json.loads((tokenizer / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    (tokenizer / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False),
                                          encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (tokenizer / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                          encoding="utf-8")


def ensure_venv(venv: Path) -> Path:
    """The optimum venv's python, creating the venv from PyPI when it is missing."""
    python = venv / "bin" / "python"
    if python.is_file() and subprocess.run([str(python), "-c", "import optimum.onnxruntime"],
                                           check=False, capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} (optimum-onnx pins transformers<4.58: it needs its own venv)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["optimum-onnx[onnxruntime]", "diffusers"], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--venv", default=os.environ.get("COMFYC_OPTIMUM_VENV",
                                                         "/tmp/comfyc-optimum-venv"))
    parser.add_argument("--ckpt", default="tiny-digits.safetensors")
    args = parser.parse_args()
    # NOTE: the project's box is 2 cores shared with other work; spinning OpenMP threads make
    # torch's times explode under contention (p90 6x the median), so threads wait passively
    # (as the tests do). Recorded in the results' machine description.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import numpy as np
    import torch

    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.compiler.models.diffusers_folder import write_diffusers_folder
    from comfyc.frontends.dsl import parse_dsl
    from comfyc.runtime import load
    from comfyc.runtime.model_paths import resolve
    from comfyc.runtime.noise import prepare_noise

    work = Path(tempfile.mkdtemp(prefix="comfyc-optimum-"))
    write_diffusers_folder(resolve("checkpoints", args.ckpt, None), work / "diffusers")
    # A copy for the optimum venv: the original stays as transformers 5 reads it.
    shutil.copytree(work / "diffusers", work / "diffusers-t4")
    make_transformers4_compatible(work / "diffusers-t4")
    noise = prepare_noise((1, 4, SIZE // 8, SIZE // 8), 42)
    np.save(work / "noise.npy", noise)
    results: dict = {"settings": {"size": SIZE, "steps": STEPS, "cfg": CFG, "prompt": PROMPT,
                                  "sampler": "euler/linspace", "ckpt": args.ckpt,
                                  "torch_threads": torch.get_num_threads()}}

    # --- optimum-onnx in its own venv --------------------------------------------------
    try:
        python = ensure_venv(Path(args.venv))
        script = f"PROMPT={PROMPT!r}; STEPS={STEPS}; CFG={CFG}; SIZE={SIZE}\n" + OPTIMUM_SCRIPT
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "PATH": f"{Path(args.venv) / 'bin'}:{os.environ.get('PATH', '')}"}
        env.pop("PYTHONPATH", None)
        done = subprocess.run([str(python), "-c", script, str(work), str(args.runs)],
                              check=False, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "?")
        results["optimum_ort"] = json.loads(done.stdout.strip().splitlines()[-1])
    except Exception as exc:  # noqa: BLE001 - the reason is the result
        results["optimum_ort"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"optimum-onnx could not run: {exc}")

    # --- diffusers (torch) -------------------------------------------------------------
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(work / "diffusers"), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                        timestep_spacing="linspace")
    pipe.set_progress_bar_config(disable=True)
    sigma_max = float(pipe.scheduler.sigmas.max())
    latents = torch.from_numpy(noise) * ((1 + sigma_max**2) ** 0.5 / sigma_max)
    images: dict[str, np.ndarray] = {}

    def diffusers_run() -> None:
        images["diffusers"] = pipe(PROMPT, negative_prompt="", num_inference_steps=STEPS,
                                   guidance_scale=CFG, height=SIZE, width=SIZE,
                                   latents=latents, output_type="np").images

    results["diffusers_torch"] = timed(diffusers_run, args.runs)

    # --- the comfyc artifact on onnxruntime-CPU ------------------------------------------
    text = textwrap.dedent(TXT2IMG.format(ckpt=args.ckpt, prompt=PROMPT, size=SIZE,
                                          steps=STEPS, cfg=CFG))
    start = time.perf_counter()
    compile_graph(parse_dsl(text, "bench.cfy", default_catalog()), work / "a.comfyc",
                  CompileOptions())
    compile_s = time.perf_counter() - start
    program = load(work / "a.comfyc")

    def comfyc_run() -> None:
        images["comfyc"] = next(iter(program.run({"seed": 42}, save=False).images.values()))

    results["comfyc_ort_cpu"] = {**timed(comfyc_run, args.runs), "compile_s": compile_s}

    # --- agreement ------------------------------------------------------------------------
    reference = np.asarray(images["diffusers"], np.float32)
    agree = {"comfyc_vs_diffusers_max_abs": float(np.abs(images["comfyc"] - reference).max())}
    if (work / "optimum.npy").is_file():
        optimum = np.load(work / "optimum.npy")
        agree["optimum_vs_diffusers_max_abs"] = float(np.abs(optimum - reference).max())
        agree["optimum_vs_comfyc_max_abs"] = float(np.abs(optimum - images["comfyc"]).max())
    results["agreement"] = agree
    for name in ("diffusers_torch", "optimum_ort", "comfyc_ort_cpu"):
        row = results[name]
        print(f"{name:<16} " + (f"median {row['median_s'] * 1000:7.1f} ms  p90 "
                                f"{row['p90_s'] * 1000:7.1f} ms" if "median_s" in row
                                else row.get("error", "")))
    print(json.dumps(agree, indent=1))
    print(f"results: {save('optimum', results)}")


if __name__ == "__main__":
    main()
