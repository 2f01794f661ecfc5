"""Issue 22: the runtime's own time per sampling step against the floor of any Python loop.

On the tiny model one UNet call takes a few milliseconds and streams the model's weights
(22 MB) through the CPU's caches; the Python and numpy work between two calls then runs with
cold caches. This benchmark measures, side by side in one run on the same compiled artifact
(64x64, Euler/normal, 20 steps, cfg 5, the tiny digits checkpoint):

* ``comfyc``: the artifact's run: per-image total, time inside stage calls, the rest
  (the runtime's overhead), and its per-step part (KSampler's time outside the UNet / steps,
  which includes KSampler's fixed work: the seed's noise, the schedule, the conditioning);
  the UNet's sampler-step graph does each step's CFG mix and Euler update inside the
  onnxruntime call (``compiler/lowering/step_graph.py``);
* ``numpy_steps``: the same artifact loaded with ``step_graph=False``: the same bits, with
  the input scaling, CFG mix and Euler update in numpy between the UNet calls;
* ``floor``: the least Python a CFG Euler loop can do around the same onnxruntime session
  (one input buffer, one ``session.run``, the scale, the x0, the CFG mix and the Euler update:
  eight numpy calls a step), timed outside ``session.run`` the same way;
* ``floor_warm``: the same loop with the UNet call replaced by returning a ready array
  (nothing evicts the caches): what those eight calls cost when warm;
* ``save``: SaveImage's share (PNG encode, atomic publish);
* ``alone``: comfyc's run again, ``--runs`` times back to back after the interleaved runs:
  the program on its own, as a server running one workflow sees it (interleaved, each of
  its runs follows the other rows' sessions, which leave its code and data colder);
* ``native`` (Euler only): the strict reference. The same model work as one onnxruntime call
  of one graph (``bench/native_graph.py``: the step graph unrolled over the 20 steps, each
  pruned to Euler's head, then the VAE decoder and VAEDecode's clamp), fed what the program
  fed its stage calls; comfyc's time above it is all the runtime adds, counted strictly (the
  heads the sampler does not read and the per-call bindings included, which the stage-call
  split counts as model time).

All sessions use the program's intra-op threads (``--threads``; default: the runtime's choice,
the free cores).

    OMP_NUM_THREADS=1 python bench/bench_overhead_floor.py [--runs 30] [--sampler euler]
        [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import REPO, TXT2IMG, save

sys.path.insert(0, str(REPO))


def _floor_loop(session, context, sigmas, cfg, warm: bool):  # type: ignore[no-untyped-def]
    """Seconds outside session.run for one 20-step CFG Euler loop (minimal Python)."""
    import numpy as np

    rows = np.empty((2, 4, 8, 8), np.float32)
    timestep = np.full((2,), 500.0, np.float32)
    feeds = {"sample": rows, "timestep": timestep, "encoder_hidden_states": context}
    ready = np.zeros((2, 4, 8, 8), np.float32)
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    inside = 0.0
    start = time.perf_counter()
    for i in range(len(sigmas) - 1):
        s = sigmas[i]
        np.divide(x, np.sqrt(s * s + np.float32(1.0)), out=rows[:1])
        rows[1:] = rows[:1]
        t0 = time.perf_counter()
        out = ready if warm else session.run(None, feeds)[0]
        inside += time.perf_counter() - t0
        den = x - out * s
        mixed = den[:1] + (den[1:] - den[:1]) * cfg
        x = x + (x - mixed) / s * (sigmas[i + 1] - s)
    return time.perf_counter() - start - inside


def _native(program, unet, work: Path):  # type: ignore[no-untyped-def]
    """(session, feeds, image max diff) of ``native_graph.build`` for ``program``, fed
    what one run of the program fed its step graph (recorded)."""
    import numpy as np
    from native_graph import build

    import comfyc.runtime.nodes.latent as latent_nodes
    import comfyc.runtime.samplers as samplers
    from comfyc.runtime.backends.ort import OrtSession

    record: dict[str, object] = {"feeds": []}
    step, process_out, decode = unet.step, samplers._process_out, latent_nodes.vae_decode

    def recording_step(feeds, checked=False):  # type: ignore[no-untyped-def]
        record["feeds"].append({k: np.array(v) for k, v in feeds.items()})  # type: ignore
        return step(feeds, checked)

    def recording_process_out(latent, scale, shift):  # type: ignore[no-untyped-def]
        record["latent"] = (scale, shift)
        return process_out(latent, scale, shift)

    def recording_decode(vae, samples):  # type: ignore[no-untyped-def]
        record["image"] = decode(vae, samples)
        record["vae"] = vae.decoder
        return record["image"]

    unet.step = recording_step
    samplers._process_out = recording_process_out
    latent_nodes.vae_decode = recording_decode
    try:
        program.run({"seed": 42}, save=False)
    finally:
        del unet.step
        samplers._process_out = process_out
        latent_nodes.vae_decode = decode
    feeds = record["feeds"]
    scale, shift = record["latent"]  # type: ignore[misc]
    path = work / "native.onnx"
    build(unet.step_session.path, record["vae"].session.path, len(feeds), scale,  # type: ignore
          shift, path)
    session = OrtSession(path, intra_op_threads=unet.step_session.threads).session
    inputs = {"x_in": feeds[0]["step_x"], "context": feeds[0]["encoder_hidden_states"],
              "coefs": np.stack([f["step_coefs"] for f in feeds]),
              "timesteps": np.stack([f["timestep"] for f in feeds])}
    image = session.run(None, inputs)[0]
    diff = float(np.abs(image - record["image"]).max())
    if diff > 1e-3:
        raise SystemExit(f"the native graph's image is {diff} away from the program's: it does "
                         "not do the same work")
    return session, inputs, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--name", default="overhead-floor")
    parser.add_argument("--sampler", default="euler",
                        help="KSampler's sampler (the floor loop stays Euler)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads of every session (default: the runtime's choice)")
    args = parser.parse_args()

    import numpy as np

    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.frontends.dsl import parse_dsl
    from comfyc.runtime import load

    work = Path(tempfile.mkdtemp(prefix="comfyc-floor-"))
    text = textwrap.dedent(TXT2IMG.format(ckpt="tiny-digits.safetensors",
                                          prompt="a handwritten digit seven", size=64, steps=20,
                                          cfg=5.0)).replace('"euler"', f'"{args.sampler}"')
    artifact = work / "bench.comfyc"
    compile_graph(parse_dsl(text, "bench.cfy", default_catalog()), artifact, CompileOptions())
    options = {} if args.threads is None else {"intra_op_threads": args.threads}
    program = load(artifact, **options)
    program.run({"seed": 42}, save=False)
    numpy_steps = load(artifact, step_graph=False, **options)
    numpy_steps.run({"seed": 42}, save=False)

    def unets(value):  # type: ignore[no-untyped-def]
        if getattr(value, "kind", None) == "unet":
            return [value]
        if isinstance(value, dict):
            return [u for v in value.values() for u in unets(v)]
        return []

    (unet,) = [u for v in program.stages.values() for u in unets(v)]
    (plain,) = [u for v in numpy_steps.stages.values() for u in unets(v)]
    # NOTE: the floor loop gets a session of its own: had it used one of the programs', that
    # program's weights would be warm in the caches when it ran next, and the others' cold.
    from comfyc.runtime.backends.ort import OrtSession

    session = OrtSession(plain.session.path, intra_op_threads=plain.session.threads).session
    inputs = {i.name: i for i in session.get_inputs()}
    tokens = 77
    width = inputs["encoder_hidden_states"].shape[2]
    context = np.random.default_rng(1).standard_normal((2, tokens, width)).astype(np.float32)
    sigmas = [np.float32(s) for s in np.linspace(14.6, 0.03, 20)] + [np.float32(0.0)]
    cfg = np.float32(5.0)

    native = _native(program, unet, work) if args.sampler == "euler" else None

    rows: dict[str, list[float]] = {k: [] for k in (
        "total_s", "stage_s", "overhead_s", "step_overhead_s", "save_s", "floor_step_s",
        "floor_warm_step_s", "unet_call_s", "numpy_steps_total_s", "numpy_steps_overhead_s",
        "numpy_steps_step_overhead_s", "native_s")}
    out = work / "out"
    for _ in range(3):
        program.run({"seed": 42}, output_dir=out)
        numpy_steps.run({"seed": 42}, output_dir=out)
        _floor_loop(session, context, sigmas, cfg, warm=False)
        if native is not None:
            native[0].run(None, native[1])
    for _ in range(args.runs):
        # NOTE: interleaved, so that all see the same machine state.
        t = numpy_steps.run({"seed": 42}, output_dir=out).timings
        rows["numpy_steps_total_s"].append(t["total_s"])
        rows["numpy_steps_overhead_s"].append(t["overhead_s"])
        rows["numpy_steps_step_overhead_s"].append(
            (t["ops"]["KSampler"] - t["stages"][plain.name]["total_s"]) / 20)
        t = program.run({"seed": 42}, output_dir=out).timings
        unet_s = t["stages"][unet.name]["total_s"]
        rows["total_s"].append(t["total_s"])
        rows["stage_s"].append(t["stage_total_s"])
        rows["overhead_s"].append(t["overhead_s"])
        rows["step_overhead_s"].append((t["ops"]["KSampler"] - unet_s) / 20)
        rows["save_s"].append(t["ops"].get("SaveImage", 0.0))
        rows["unet_call_s"].append(unet_s / 20)
        rows["floor_step_s"].append(_floor_loop(session, context, sigmas, cfg, False) / 20)
        rows["floor_warm_step_s"].append(_floor_loop(session, context, sigmas, cfg, True) / 20)
        if native is not None:
            start = time.perf_counter()
            native[0].run(None, native[1])
            rows["native_s"].append(time.perf_counter() - start)
    # NOTE: the program alone, run after run: what a server running one workflow (or
    # `comfyc bench`'s row) sees. Interleaved above, each of its runs follows the other
    # rows' sessions, which leave its code and data colder.
    alone: dict[str, list[float]] = {"alone_total_s": [], "alone_overhead_s": [],
                                      "alone_save_s": []}
    for _ in range(args.runs):
        t = program.run({"seed": 42}, output_dir=out).timings
        alone["alone_total_s"].append(t["total_s"])
        alone["alone_overhead_s"].append(t["overhead_s"])
        alone["alone_save_s"].append(t["ops"].get("SaveImage", 0.0))
    rows.update(alone)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    med["alone_overhead_share"] = med["alone_overhead_s"] / med["alone_total_s"]
    med["overhead_share"] = med["overhead_s"] / med["total_s"]
    med["floor_share"] = (20 * med["floor_step_s"] + med["save_s"]) / med["total_s"]
    med["numpy_steps_overhead_share"] = (med["numpy_steps_overhead_s"]
                                         / med["numpy_steps_total_s"])
    print(f"per image {med['total_s'] * 1e3:.1f} ms, in stages {med['stage_s'] * 1e3:.1f} ms, "
          f"overhead {med['overhead_s'] * 1e3:.2f} ms ({med['overhead_share'] * 100:.1f}%)")
    print(f"with numpy steps (step_graph=False): per image "
          f"{med['numpy_steps_total_s'] * 1e3:.1f} ms, overhead "
          f"{med['numpy_steps_overhead_s'] * 1e3:.2f} ms "
          f"({med['numpy_steps_overhead_share'] * 100:.1f}%), "
          f"{med['numpy_steps_step_overhead_s'] * 1e6:.0f} us per step outside the UNet")
    print(f"per step outside the UNet: comfyc {med['step_overhead_s'] * 1e6:.0f} us, minimal "
          f"loop {med['floor_step_s'] * 1e6:.0f} us (warm caches: "
          f"{med['floor_warm_step_s'] * 1e6:.0f} us); UNet call {med['unet_call_s'] * 1e3:.2f} ms")
    print(f"SaveImage {med['save_s'] * 1e3:.2f} ms; the floor (minimal loop x 20 + SaveImage) "
          f"is {med['floor_share'] * 100:.1f}% of comfyc's image")
    print(f"back to back (the program alone, run after run): per image "
          f"{med['alone_total_s'] * 1e3:.1f} ms, overhead "
          f"{med['alone_overhead_s'] * 1e3:.2f} ms ({med['alone_overhead_share'] * 100:.1f}%), "
          f"SaveImage {med['alone_save_s'] * 1e3:.2f} ms")
    if native is not None:
        med["native_overhead_share"] = (med["total_s"] - med["native_s"]) / med["total_s"]
        print(f"native (all model work in one onnxruntime call): {med['native_s'] * 1e3:.1f} "
              f"ms; comfyc's image {(med['total_s'] - med['native_s']) * 1e3:.2f} ms above "
              f"it ({med['native_overhead_share'] * 100:.1f}%); its image within "
              f"{native[2] * 255:.5f} of a level of comfyc's")
    threads = unet.step_session.threads
    print(f"intra-op threads {threads}; load average {os.getloadavg()[0]:.2f}")
    data = {"median": med, "runs": args.runs, "sampler": args.sampler, "threads": threads,
            "native_image_max_diff": None if native is None else native[2]}
    print(f"results: {save(args.name, data)}")


if __name__ == "__main__":
    main()
