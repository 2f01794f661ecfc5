"""ControlNet in an artifact: one fused ONNX graph (ControlNet + UNet) or two stages?

comfyc compiles a ControlNet as its own stage beside the UNet (the UNet stage takes the
residuals as ``control_*`` inputs). This script measures the alternative side by side in one
process, on the embedded tiny model (64x64, CFG batch 2) and a seeded ControlNet of its
architecture:

* ``separate``: ControlNet session, then UNet session fed with its residuals (comfyc's way);
* ``fused``: one ONNX graph computing both (what an engine-per-workflow tool would build);
* ``unet``: the UNet alone (steps outside the ControlNet's window, or strength 0);

and the per-image time of ``examples/controlnet.cfy`` on the artifact (ort-cpu) against the
torch path (20 steps). Both graphs are checked to give the same UNet output. It also reports
the bytes of residuals that cross between the two stages per step at SD1.5's 512x512 size.

    python bench/bench_controlnet.py --threads 1 --calls 50

Writes ``bench/results/controlnet.json``; timings are for reading, never for asserting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _median_ms(fn: Any, calls: int, warmup: int = 3) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _graphs(work: Path) -> dict[str, Any]:
    """Exports the three graphs; returns their paths and an example input."""
    import torch

    from comfyc.compiler.models.controlnet import load_controlnet
    from comfyc.compiler.models.controlnet_synthetic import write_controlnet
    from comfyc.compiler.models.single_file import load_checkpoint

    unet = load_checkpoint(REPO / "runtime" / "models" / "tiny-digits.safetensors").unet.eval()
    path = write_controlnet(work / "cn.safetensors", "sd1", "tiny", seed=6, layout="comfy",
                            dtype=torch.float32, jitter=0.02)
    control = load_controlnet(path).stage().eval()
    names = control.output_names()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    hint = torch.rand(2, 3, 64, 64, generator=generator)
    timestep = torch.full((2,), 500.0)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        residuals = control(sample, hint, timestep, context)

    class UNetWithResiduals(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample: Any, timestep: Any, context: Any, *res: Any) -> Any:
            return self.unet(sample, timestep, encoder_hidden_states=context,
                             down_block_additional_residuals=tuple(res[:-1]),
                             mid_block_additional_residual=res[-1], return_dict=False)[0]

    class Fused(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.control, self.inner = control, UNetWithResiduals()

        def forward(self, sample: Any, hint: Any, timestep: Any, context: Any) -> Any:
            return self.inner(sample, timestep, context,
                              *self.control(sample, hint, timestep, context))

    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample: Any, timestep: Any, context: Any) -> Any:
            return self.unet(sample, timestep, encoder_hidden_states=context,
                             return_dict=False)[0]

    def export(module: Any, args: tuple[Any, ...], inputs: list[str], outputs: list[str],
               name: str) -> Path:
        target = work / f"{name}.onnx"
        with torch.no_grad():
            torch.onnx.export(module, args, str(target), input_names=inputs,
                              output_names=outputs, opset_version=18, dynamo=False)
        return target

    base = ["sample", "timestep", "encoder_hidden_states"]
    paths = {
        "controlnet": export(control, (sample, hint, timestep, context),
                             ["sample", "hint", "timestep", "encoder_hidden_states"], names,
                             "controlnet"),
        "unet_control": export(UNetWithResiduals(), (sample, timestep, context, *residuals),
                               base + names, ["out"], "unet_control"),
        "fused": export(Fused(), (sample, hint, timestep, context),
                        ["sample", "hint", "timestep", "encoder_hidden_states"], ["out"],
                        "fused"),
        "unet": export(Plain(), (sample, timestep, context), base, ["out"], "unet"),
    }
    feeds = {"sample": sample.numpy(), "hint": hint.numpy(), "timestep": timestep.numpy(),
             "encoder_hidden_states": context.numpy()}
    return {"paths": paths, "feeds": feeds, "names": names}


def _stage_rows(work: Path, threads: int, calls: int) -> dict[str, Any]:
    graphs = _graphs(work)
    feeds, names, paths = graphs["feeds"], graphs["names"], graphs["paths"]
    cn, unet_c, fused, unet = (_session(paths[k], threads)
                               for k in ("controlnet", "unet_control", "fused", "unet"))
    base = {k: feeds[k] for k in ("sample", "timestep", "encoder_hidden_states")}

    def separate() -> np.ndarray:
        residuals = cn.run(names, feeds)
        return unet_c.run(["out"], {**base, **dict(zip(names, residuals))})[0]

    def fused_call() -> np.ndarray:
        return fused.run(["out"], feeds)[0]

    difference = float(np.abs(separate() - fused_call()).max())
    rows: dict[str, Any] = {}
    # Interleaved rounds so that a change in the box's load hits every row alike.
    samples: dict[str, list[float]] = {"separate": [], "fused": [], "unet": [],
                                       "controlnet": []}
    calls_of = {"separate": separate, "fused": fused_call,
                "unet": lambda: unet.run(["out"], base),
                "controlnet": lambda: cn.run(names, feeds)}
    for _ in range(5):
        for name, fn in calls_of.items():
            samples[name].append(_median_ms(fn, max(1, calls // 5))[0])
    for name, values in samples.items():
        rows[name] = {"median_ms": round(statistics.median(values), 3),
                      "rounds_ms": [round(v, 3) for v in values]}
    sizes = {k: os.path.getsize(p) for k, p in paths.items()}
    return {"rows": rows, "max_abs_difference_fused_vs_separate": difference,
            "onnx_bytes": sizes}


def _residual_bytes_sd15() -> dict[str, Any]:
    """The residual tensors an SD1.5 ControlNet hands the UNet per step at 512x512, CFG
    batch 2, fp32 (channels and halvings of SD1.5's UNet: 12 down + 1 mid)."""
    latent = 64
    layout = [(320, 0)] * 3 + [(320, 1), (640, 1), (640, 1), (640, 2), (1280, 2), (1280, 2),
                               (1280, 3), (1280, 3), (1280, 3), (1280, 3)]
    total = sum(2 * c * (latent >> h) ** 2 * 4 for c, h in layout)
    arrays = [np.ones((2, c, latent >> h, latent >> h), np.float32) for c, h in layout]
    copy_ms = _median_ms(lambda: [a.copy() for a in arrays], 20)[0]
    return {"bytes_per_step": total, "copy_all_once_ms": round(copy_ms, 3)}


def _example_rows(work: Path, runs: int) -> dict[str, Any]:
    """examples/controlnet.cfy per image: compiled artifact (ort-cpu) vs the torch path."""
    import torch

    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
    from comfyc.compiler.models.controlnet_synthetic import write_controlnet
    from comfyc.compiler.passes.base import PassContext, PassOptions
    from comfyc.compiler.pipeline import run_pipeline
    from comfyc.frontends.load import load_workflow
    from comfyc.runtime import load

    models = work / "models"
    (models / "controlnet").mkdir(parents=True, exist_ok=True)
    write_controlnet(models / "controlnet" / "control_digits_canny.safetensors", "sd1",
                     "tiny", seed=6, layout="comfy", dtype=torch.float32, jitter=0.02)
    example = REPO / "examples" / "controlnet.cfy"
    inputs = REPO / "examples" / "input"
    started = time.perf_counter()
    compile_graph(load_workflow(example), work / "cn.comfyc",
                  CompileOptions(models_dir=str(models), input_dir=str(inputs)))
    compile_s = time.perf_counter() - started
    artifact = load(work / "cn.comfyc")
    cache = TorchModelCache(str(models))
    graph = load_workflow(example)
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    torch_program = lower_to_program(graph, cache=cache)
    timings: dict[str, list[float]] = {"artifact ort-cpu": [], "torch path": []}
    programs = {"artifact ort-cpu": artifact, "torch path": torch_program}
    for program in programs.values():
        program.run({"seed": 1}, input_dir=inputs, save=False)  # warm-up
    for seed in range(runs):
        for name, program in programs.items():
            started = time.perf_counter()
            program.run({"seed": seed}, input_dir=inputs, save=False)
            timings[name].append(time.perf_counter() - started)
    return {"compile_s": round(compile_s, 2),
            "per_image_s": {k: round(statistics.median(v), 4) for k, v in timings.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--calls", type=int, default=50, help="timed calls per graph")
    parser.add_argument("--runs", type=int, default=5, help="timed images per path")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" /
                        "controlnet.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="comfyc-bench-cn-") as tmp:
        work = Path(tmp)
        print("exporting the fused and separate graphs ...", flush=True)
        stages = _stage_rows(work, args.threads, args.calls)
        print(json.dumps(stages["rows"], indent=1), flush=True)
        print("compiling and running examples/controlnet.cfy ...", flush=True)
        example = _example_rows(work, args.runs)
        print(json.dumps(example, indent=1), flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "threads": args.threads, "stages": stages, "example": example,
              "sd15_512_residuals": _residual_bytes_sd15()}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
