"""onnxruntime's optimisation level for stages optimised offline, side by side in one process.

The compiler saves small stages at onnxruntime's EXTENDED level (the highest portable one);
the runtime makes their CPU sessions at ALL, which adds this machine's layout transformations
(NCHWc convolutions on x86). This benchmark loads the same tiny-model artifact both ways and
runs them interleaved (64x64, Euler, 20 steps, cfg 5, no PNG written): load time, ms per
image, time outside stage calls, and how far the images are apart.

    OMP_NUM_THREADS=1 python bench/bench_ort_level.py [--runs 40] [--threads 1,2]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--threads", default="1,2", help="intra-op thread counts to try")
    parser.add_argument("--name", default="ort-level")
    args = parser.parse_args()

    import numpy as np

    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.frontends.dsl import parse_dsl
    from comfyc.runtime import load

    work = Path(tempfile.mkdtemp(prefix="comfyc-ort-level-"))
    text = textwrap.dedent(TXT2IMG.format(ckpt="tiny-digits.safetensors",
                                          prompt="a handwritten digit seven", size=64, steps=20,
                                          cfg=5.0))
    artifact = work / "bench.comfyc"
    compile_graph(parse_dsl(text, "bench.cfy", default_catalog()), artifact, CompileOptions())

    def image(program):  # type: ignore[no-untyped-def]
        return np.asarray(next(iter(program.run({"seed": 42}, save=False).images.values())))

    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        programs = {}
        load_s = {}
        for level in ("extended", "all"):
            start = time.perf_counter()
            programs[level] = load(artifact, intra_op_threads=threads, optimization_level=level)
            load_s[level] = time.perf_counter() - start
        for program in programs.values():
            for _ in range(3):
                program.run({"seed": 42}, save=False)
        diff = float(np.abs(image(programs["extended"]) - image(programs["all"])).max())
        times: dict[str, list[float]] = {level: [] for level in programs}
        outside: dict[str, list[float]] = {level: [] for level in programs}
        for _ in range(args.runs):
            # NOTE: interleaved, so that both see the same machine state.
            for level, program in programs.items():
                timings = program.run({"seed": 42}, save=False).timings
                times[level].append(timings["total_s"])
                outside[level].append(timings["overhead_s"])
        med = {level: statistics.median(v) for level, v in times.items()}
        row = {"threads": threads, "load_s": load_s, "per_image_s": med,
               "overhead_s": {level: statistics.median(v) for level, v in outside.items()},
               "faster": 1 - med["all"] / med["extended"], "max_image_diff": diff,
               "load_avg": os.getloadavg()[0]}
        rows.append(row)
        print(f"{threads} thread(s): EXTENDED {med['extended'] * 1e3:.1f} ms, ALL "
              f"{med['all'] * 1e3:.1f} ms an image ({row['faster'] * 100:.1f} % less); load "
              f"{load_s['extended'] * 1e3:.0f} / {load_s['all'] * 1e3:.0f} ms; outside stages "
              f"{row['overhead_s']['extended'] * 1e3:.2f} / {row['overhead_s']['all'] * 1e3:.2f}"
              f" ms; images apart by {diff * 255:.5f} levels; load average "
              f"{row['load_avg']:.2f}")
    print(f"results: {save(args.name, {'rows': rows, 'runs': args.runs})}")


if __name__ == "__main__":
    main()
