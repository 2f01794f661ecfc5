"""Issue 22: SD1.5/SDXL-size speed and memory, side by side in one run, against the peers.

Rows (each in its own process, one after the other, so each peak RSS is its own):

* ``comfyc-ort``, ``comfyc-ov``: the comfyc artifact (exact, float16-stored weights) on
  onnxruntime and OpenVINO (float32); ``comfyc-ov-bf16``: OpenVINO computing in bfloat16
  (approximate); ``comfyc-int8``: the int8 artifact on onnxruntime; ``comfyc-cacheN``: the
  step-caching artifact (approximate) on onnxruntime. A ``-tN`` suffix (``comfyc-ort-t2``)
  runs the row with N intra-op threads instead of comfyc's rule (``comfyc-torch-t2`` too).
* ``comfyc-torch``: the workflow on comfyc's PyTorch path (what ``comfyc run wf.cfy`` does).
* ``diffusers``: diffusers' ``StableDiffusionPipeline`` (float32, torch);
  ``StableDiffusionXLPipeline`` for an SDXL folder (its ``model_index.json`` says which).
* ``optimum-ort`` / ``optimum-ov``: optimum-onnx's ``ORT(StableDiffusion|StableDiffusionXL)
  Pipeline`` and optimum-intel's ``OV...Pipeline`` on ``optimum-cli`` exports of the same
  weights (their own venv: they pin transformers < 4.58; see ``--peers-venv``).

Every row: the same prompt, Euler, cfg 7, batch 1, one image after loading (no warm-up image:
a 512 px SD1.5 image takes minutes on a 2-core box); ``per_step_s`` is the median UNet call
(the first call excluded), ``image_s`` the whole run, ``image20_s`` the run scaled to 20
steps (``image_s + (20 - steps) * per_step_s``) when fewer steps were run; ``load_s``; peak
RSS (``VmHWM``); agreement (PSNR) of comfyc rows with ``comfyc-torch`` and of peers with
``diffusers``. Threads: comfyc rows use comfyc's rule (the free cores, no spinning); peers
run with their libraries' defaults, as a user would get them.

    python bench/bench_scale.py --models-dir M --ckpt sd15-full.safetensors \
        --sizes 512:4,256:20 --rows comfyc-ort,comfyc-ov,comfyc-torch,diffusers -o out.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from common import REPO, TXT2IMG, machine

sys.path.insert(0, str(REPO))

PROMPT = "a photo of a cat"
CFG = 7.0
ROWS = ("comfyc-ort", "comfyc-ov", "comfyc-ov-bf16", "comfyc-int8", "comfyc-cache3",
        "comfyc-torch", "diffusers", "optimum-ort", "optimum-ov")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_for_memory(gigabytes: float, say: Any, limit_s: float = 1800) -> None:
    """Wait (up to ``limit_s``) until MemAvailable is at least ``gigabytes``: on a shared
    box a row started into a full memory is OOM-killed, or gets someone else's job killed."""
    start = time.monotonic()
    while gigabytes > 0 and time.monotonic() - start < limit_s:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) / 2**20
                break
        else:
            return
        if free >= gigabytes:
            return
        say(f"waiting for {gigabytes:.0f} GB free ({free:.1f} GB now)")
        time.sleep(30)


def workflow(ckpt: str, size: int, steps: int) -> str:
    return textwrap.dedent(TXT2IMG.format(ckpt=ckpt, prompt=PROMPT, size=size, steps=steps,
                                          cfg=CFG))


# --------------------------------------------------------------------------- workers
def _comfyc_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from comfyc.runtime.artifact import load

    options: dict[str, Any] = {}
    if spec.get("precision"):
        options["precision"] = spec["precision"]
    if spec.get("threads"):
        options["intra_op_threads"] = spec["threads"]
    start = time.perf_counter()
    program = load(spec["artifact"], backend=spec["backend"], **options)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    run = program.run({"seed": 42}, save=False)
    image_s = time.perf_counter() - start
    calls = next(v for k, v in program.timer.calls.items() if k.startswith("unet"))
    stages = [s for s in program.stages.values() if s is not None and hasattr(s, "session")]
    threads = sorted({getattr(s.session, "threads", None) for s in stages} - {None})
    return {"load_s": load_s, "image_s": image_s, "unet_calls": calls,
            "timings": run.timings, "threads": threads,
            "image": next(iter(run.images.values())).tolist()}


def _torch_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from comfyc.runtime.backends.threads import choose_threads, passive_openmp

    passive_openmp()
    import torch

    torch.set_num_threads(spec.get("threads") or choose_threads())
    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.program import lower_to_program
    from comfyc.compiler.passes.base import PassContext, PassManager
    from comfyc.compiler.passes.runtime_params import RuntimeParamsPass
    from comfyc.compiler.passes.validate import ValidatePass
    from comfyc.frontends.dsl import parse_dsl

    catalog = default_catalog()
    start = time.perf_counter()
    graph = parse_dsl(spec["workflow"], "bench.cfy", catalog)
    context = PassContext(catalog)
    PassManager([ValidatePass(context), RuntimeParamsPass(context)])(graph)
    program = lower_to_program(graph, catalog, models_dir=spec["models_dir"])
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    run = program.run({"seed": 42}, save=False)
    image_s = time.perf_counter() - start
    calls = next(v for k, v in program.timer.calls.items() if k.startswith("unet"))
    return {"load_s": load_s, "image_s": image_s, "unet_calls": calls,
            "threads": [torch.get_num_threads()], "timings": run.timings,
            "image": next(iter(run.images.values())).tolist()}


#: Runs in the diffusers (main venv) or peers venv: one pipeline, one image, UNet calls timed.
PEER_SCRIPT = r'''
import json, os, sys, time, statistics
import numpy as np, torch
spec = json.loads(open(sys.argv[1]).read())
kind = spec["kind"]
calls = []
def timed(fn):
    def wrapper(*a, **k):
        t = time.perf_counter(); out = fn(*a, **k); calls.append(time.perf_counter() - t)
        return out
    return wrapper
from diffusers import EulerDiscreteScheduler
index = json.loads(open(os.path.join(spec["folder"], "model_index.json")).read())
xl = "XL" in index.get("_class_name", "")
start = time.perf_counter()
if kind == "diffusers":
    if xl:
        from diffusers import StableDiffusionXLPipeline
        pipe = StableDiffusionXLPipeline.from_pretrained(spec["folder"],
                                                         torch_dtype=torch.float32)
    else:
        from diffusers import StableDiffusionPipeline
        pipe = StableDiffusionPipeline.from_pretrained(spec["folder"], torch_dtype=torch.float32,
            safety_checker=None, requires_safety_checker=False)
    pipe.unet.forward = timed(pipe.unet.forward)
elif kind == "optimum-ort":
    from optimum.onnxruntime import ORTStableDiffusionPipeline, ORTStableDiffusionXLPipeline
    pipe = (ORTStableDiffusionXLPipeline if xl else ORTStableDiffusionPipeline).from_pretrained(
        spec["folder"], provider="CPUExecutionProvider")
    pipe.unet.forward = timed(pipe.unet.forward)
else:
    from optimum.intel import OVStableDiffusionPipeline, OVStableDiffusionXLPipeline
    pipe = (OVStableDiffusionXLPipeline if xl else OVStableDiffusionPipeline).from_pretrained(
        spec["folder"], compile=False)
    pipe.reshape(batch_size=1, height=spec["size"], width=spec["size"], num_images_per_prompt=1)
    pipe.compile()
    pipe.unet.forward = timed(pipe.unet.forward)
pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                    timestep_spacing="linspace")
pipe.set_progress_bar_config(disable=True)
load_s = time.perf_counter() - start
noise = torch.from_numpy(np.load(spec["noise"]))
sigma_max = float(pipe.scheduler.sigmas.max())
latents = noise * ((1 + sigma_max**2) ** 0.5 / sigma_max)
start = time.perf_counter()
image = pipe(spec["prompt"], negative_prompt="", num_inference_steps=spec["steps"],
             guidance_scale=spec["cfg"], height=spec["size"], width=spec["size"],
             latents=latents, output_type="np").images
image_s = time.perf_counter() - start
import importlib.metadata as md
versions = {}
for p in ("diffusers", "transformers", "torch", "optimum", "optimum-onnx", "optimum-intel",
          "onnxruntime", "openvino"):
    try:
        versions[p] = md.version(p)
    except md.PackageNotFoundError:
        pass
print("RESULT " + json.dumps({"load_s": load_s, "image_s": image_s, "unet_calls": calls,
      "threads": [torch.get_num_threads()], "versions": versions,
      "image": np.asarray(image, np.float32).tolist()}))
'''


def worker(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = (_torch_worker(spec) if spec["row"].startswith("comfyc-torch")
                  else _comfyc_worker(spec))
    except Exception as exc:  # noqa: BLE001 - the row reports its failure
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["peak_rss_mb"] = peak_rss_mb()
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- the parent
def _rss_of_child(cmd: list[str], env: dict[str, str] | None = None
                  ) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``cmd``; its peak RSS is sampled from /proc (a child that is not ours to
    instrument, such as the peers' venv)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    peak = 0.0
    import threading

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
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out, err = proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    thread.join(timeout=1)
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    # NOTE: CPU seconds (user + system) of the child: on a box shared with other work they
    # say what the wall time would be when the box is idle better than the wall time does.
    done.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)  # type: ignore[attr-defined]
    return done, peak


def compile_artifact(models: str, ckpt: str, size: int, steps: int, out: Path,
                     **options: Any) -> dict[str, Any]:
    """Compile in a child process; returns its time, peak RSS and artifact size."""
    code = textwrap.dedent(f"""
        import json, sys, time
        from comfyc.compiler.catalog import default_catalog
        from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
        from comfyc.frontends.dsl import parse_dsl
        start = time.perf_counter()
        phases = []
        def say(m):
            phases.append([round(time.perf_counter() - start, 2), m])
        compile_graph(parse_dsl({workflow(ckpt, size, steps)!r}, "bench.cfy",
                                default_catalog()), {str(out)!r},
                      CompileOptions(models_dir={models!r}, **{options!r}), progress=say)
        print("RESULT " + json.dumps({{"compile_s": time.perf_counter() - start,
                                       "phases": phases}}))
    """)
    done, peak = _rss_of_child([sys.executable, "-c", code])
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "?"}
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    files = [p for p in out.rglob("*") if p.is_file()]
    result.update(peak_rss_mb=peak, size_bytes=sum(p.stat().st_size for p in files),
                  load_avg=os.getloadavg(), cpu_s=getattr(done, "cpu_s", None))
    return result


def run_comfyc_row(row: str, spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    spec_path = tmp / f"{row}.json"
    spec = {**spec, "row": row, "out": str(tmp / f"{row}.result.json")}
    spec_path.write_text(json.dumps(spec))
    done, _ = _rss_of_child([sys.executable, __file__, "--worker", str(spec_path)])
    result_path = Path(spec["out"])
    if not result_path.is_file():
        return {"error": (done.stderr or "worker died").strip().splitlines()[-1]}
    return json.loads(result_path.read_text())


def run_peer_row(kind: str, python: str, folder: Path, size: int, steps: int, noise: Path,
                 tmp: Path) -> dict[str, Any]:
    spec = {"kind": kind, "folder": str(folder), "size": size, "steps": steps,
            "noise": str(noise), "prompt": PROMPT, "cfg": CFG}
    (tmp / f"{kind}.json").write_text(json.dumps(spec))
    script = tmp / "peer.py"
    script.write_text(PEER_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    done, peak = _rss_of_child([python, str(script), str(tmp / f"{kind}.json")], env)
    if done.returncode != 0 or "RESULT " not in done.stdout:
        lines = (done.stderr or "?").strip().splitlines()
        return {"error": lines[-1] if lines else "?"}
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    result["peak_rss_mb"] = peak
    return result


def export_peer(kind: str, python: str, folder: Path, out: Path) -> dict[str, Any]:
    """``optimum-cli export onnx|openvino`` of the diffusers folder (timed, peak RSS)."""
    if (out / ".complete").is_file():
        return {"cached": True}
    if out.is_dir():
        # NOTE: an export that died (a full disk) leaves a folder that looks usable.
        import shutil

        shutil.rmtree(out)
    cli = str(Path(python).parent / "optimum-cli")
    cmd = ([cli, "export", "onnx", "-m", str(folder), "--task", "text-to-image", str(out)]
           if kind == "optimum-ort" else
           [cli, "export", "openvino", "-m", str(folder), "--task", "text-to-image",
            "--weight-format", "fp32", str(out)])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    done, peak = _rss_of_child(cmd, env)
    if done.returncode != 0:
        lines = (done.stderr or "?").strip().splitlines()
        return {"error": lines[-1] if lines else "?"}
    (out / ".complete").write_text("")
    return {"export_s": time.perf_counter() - start, "peak_rss_mb": peak,
            "size_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}


def psnr(a: Any, b: Any) -> float | None:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return None
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def summarise(result: dict[str, Any], steps: int, interval: int = 1) -> dict[str, Any]:
    """Per-step and per-image figures; with step caching (``interval`` > 1) the full and
    shallow calls are told apart (full at steps 0, N, 2N …) and a 20-step image counts
    ceil(20 / N) full calls and the rest shallow."""
    calls = result.get("unet_calls") or []
    per_step = statistics.median(calls[1:] or calls) if calls else None
    out = {k: v for k, v in result.items() if k not in ("image", "unet_calls", "timings")}
    out["per_step_s"] = per_step
    out["first_call_s"] = calls[0] if calls else None
    if interval > 1 and calls:
        full = [c for i, c in enumerate(calls) if i % interval == 0 and i > 0] or calls[:1]
        shallow = [c for i, c in enumerate(calls) if i % interval]
        out["per_full_step_s"] = statistics.median(full)
        out["per_shallow_step_s"] = statistics.median(shallow) if shallow else None
        if shallow and "image_s" in result:
            fulls20 = -(-20 // interval)
            done_full = sum(1 for i in range(len(calls)) if i % interval == 0)
            out["image20_s"] = (result["image_s"]
                                + (fulls20 - done_full) * out["per_full_step_s"]
                                + (20 - fulls20 - (len(calls) - done_full))
                                * out["per_shallow_step_s"])
            out["per_step_s"] = (fulls20 * out["per_full_step_s"]
                                 + (20 - fulls20) * out["per_shallow_step_s"]) / 20
    elif per_step is not None and "image_s" in result:
        out["image20_s"] = result["image_s"] + (20 - steps) * per_step
    if "timings" in result:
        out["overhead_s"] = result["timings"].get("overhead_s")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", default="/work/scale/models")
    parser.add_argument("--ckpt", default="sd15-full.safetensors")
    parser.add_argument("--diffusers", default=None, help="the checkpoint's diffusers folder")
    parser.add_argument("--diffusers-t4", default=None,
                        help="the same folder as transformers 4 reads it (peers venv)")
    parser.add_argument("--peers-venv", default="/tmp/comfyc-peers-venv")
    parser.add_argument("--sizes", default="512:4,256:20", metavar="SIZE:STEPS,...")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--work", default="/work/scale/bench")
    parser.add_argument("-o", "--output", default=str(REPO / "bench" / "results" /
                                                      "scale.json"))
    parser.add_argument("--reuse", action="store_true",
                        help="use artifacts already compiled under --work (their compile "
                             "figures taken from --output when it has them) instead of "
                             "compiling again")
    parser.add_argument("--wait-free-gb", type=float, default=0,
                        help="before each row, wait until this much memory is available")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    import numpy as np

    from comfyc.runtime.noise import prepare_noise

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    peers_python = str(Path(args.peers_venv) / "bin" / "python")
    report: dict[str, Any] = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "ckpt": args.ckpt, "rows": rows, "sizes": {}}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    previous: dict[str, Any] = {}
    if args.reuse and output.is_file():
        previous = json.loads(output.read_text()).get("sizes", {})

    def save() -> None:
        output.write_text(json.dumps(report, indent=1))

    for part in args.sizes.split(","):
        size, steps = (int(v) for v in part.split(":"))
        say = lambda m, size=size: print(f"[{time.strftime('%H:%M:%S')} {size}px] {m}",  # noqa: E731
                                          flush=True)
        entry: dict[str, Any] = {"steps": steps, "compile": {}, "exports": {}, "rows": {}}
        before = previous.get(str(size), {})
        if before.get("steps") == steps:
            # NOTE: --reuse keeps the rows (and peer exports) of earlier runs that this run
            # does not repeat; each row says when it ran (``ran``).
            entry["rows"] = {r: v for r, v in before.get("rows", {}).items()
                             if r not in rows and "error" not in v}
            entry["exports"] = dict(before.get("exports", {}))
            entry["compile"] = dict(before.get("compile", {}))
        report["sizes"][str(size)] = entry
        noise_path = work / f"noise-{size}.npy"
        np.save(noise_path, prepare_noise((1, 4, size // 8, size // 8), 42))
        artifacts: dict[str, Path] = {}
        variants = {"exact": {}}
        if "comfyc-int8" in rows:
            variants["int8"] = {"quantize": "int8"}
        for row in rows:
            found = re.match(r"comfyc-cache(\d+)", row)
            if found:
                variants[f"cache{found[1]}"] = {"step_cache": int(found[1])}
        for name, options in variants.items():
            path = work / f"{Path(args.ckpt).stem}-{size}-{steps}-{name}.comfyc"
            if args.reuse and (path / "manifest.json").is_file():
                # NOTE: figures of the run that compiled it, when the output file kept them.
                old = previous.get(str(size), {}).get("compile", {}).get(name)
                entry["compile"][name] = {**(old or {}), "reused": True}
                say(f"reusing {path}")
                artifacts[name] = path
                continue
            say(f"compiling {name}")
            entry["compile"][name] = compile_artifact(args.models_dir, args.ckpt, size, steps,
                                                      path, **options)
            say(f"compiled {name}: {entry['compile'][name]}"[:300])
            artifacts[name] = path
            save()
        for row in rows:
            wait_for_memory(args.wait_free_gb, say)
            say(f"row {row} (load {os.getloadavg()[0]:.1f})")
            spec: dict[str, Any] = {"models_dir": args.models_dir,
                                    "workflow": workflow(args.ckpt, size, steps)}
            if row.startswith("comfyc-torch"):
                threads = re.search(r"-t(\d+)$", row)
                result = run_comfyc_row(row, {**spec, "threads": int(threads[1]) if threads
                                              else None}, work)
            elif row.startswith("comfyc-"):
                name = "int8" if row.startswith("comfyc-int8") else "exact"
                found = re.match(r"comfyc-(cache\d+)", row)
                name = found[1] if found else name
                backend = "ov-cpu" if row.startswith("comfyc-ov") else "ort-cpu"
                threads = re.search(r"-t(\d+)$", row)
                result = run_comfyc_row(row, {**spec, "artifact": str(artifacts[name]),
                                              "backend": backend,
                                              "precision": "bf16" if "bf16" in row
                                              else None,
                                              "threads": int(threads[1]) if threads
                                              else None}, work)
            elif row == "diffusers":
                result = run_peer_row("diffusers", sys.executable, Path(args.diffusers), size,
                                      steps, noise_path, work)
            else:
                folder = work / f"{row}-export"
                if row not in entry["exports"]:
                    say(f"exporting {row}")
                    entry["exports"][row] = export_peer(row, peers_python,
                                                        Path(args.diffusers_t4), folder)
                result = run_peer_row(row, peers_python, folder, size, steps, noise_path,
                                      work)
            result["load_avg_after"] = os.getloadavg()[0]
            result["ran"] = time.strftime("%Y-%m-%d %H:%M:%S")
            if "image" in result:
                np.save(work / f"image-{row}-{size}-{steps}.npy",
                        np.asarray(result["image"], np.float32))
            cached = re.match(r"comfyc-cache(\d+)", row)
            entry["rows"][row] = summarise(result, steps, int(cached[1]) if cached else 1)
            say(f"{row}: " + json.dumps(entry["rows"][row])[:400])
            save()
        images = {row: np.load(path) for row in entry["rows"]
                  if (path := work / f"image-{row}-{size}-{steps}.npy").is_file()}
        for row, image in images.items():
            reference = images.get("comfyc-torch" if row.startswith("comfyc") else "diffusers")
            if reference is not None:
                entry["rows"][row]["psnr_vs_reference_db"] = psnr(image, reference)
            if "diffusers" in images and row != "diffusers":
                entry["rows"][row]["psnr_vs_diffusers_db"] = psnr(image, images["diffusers"])
        save()
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
