"""Cold starts with and without ``--ort-cache`` (onnxruntime's optimised CPU graphs kept).

Each row is a fresh process that loads an artifact on ``ort-cpu`` and makes one image:
``none`` (the model files, as without the option), ``save`` (an empty cache: onnxruntime
optimises the large stages and the runtime keeps the optimised graphs) and ``warm`` (the
kept graphs). The rows run in the order given by ``--rounds`` (``none,save,warm`` first,
then ``none,warm`` pairs), so each ``warm`` row follows a ``none`` row. Reported per row:
the load, the image, the UNet calls, the peak RSS, the system CPU seconds (page faults) and
which file each stage came from; the images must be bit for bit the same.

    python bench/bench_ort_cache.py ARTIFACT [--rounds 2] [--threads 2] [--name ort-cache]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, save

sys.path.insert(0, str(REPO))

WORKER = r'''
import json, resource, sys, time
import numpy as np
from comfyc.runtime.artifact import load
artifact, cache, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
options = {"intra_op_threads": threads, **({"ort_cache": cache} if cache else {})}
start = time.perf_counter()
program = load(artifact, backend="ort-cpu", **options)
load_s = time.perf_counter() - start
sources = {name: getattr(getattr(stage, "session", None), "graph_source", None)
           for name, stage in program.stages.items()}
start = time.perf_counter()
run = program.run({}, save=False)
image_s = time.perf_counter() - start
calls = next(v for k, v in program.timer.calls.items() if k.startswith("unet"))
usage = resource.getrusage(resource.RUSAGE_SELF)
np.save(out, next(iter(run.images.values())))
print("RESULT " + json.dumps({"load_s": load_s, "image_s": image_s, "unet_calls": calls,
      "sources": {k: v for k, v in sources.items() if v}, "peak_rss_mb": usage.ru_maxrss / 1024,
      "sys_s": usage.ru_stime}))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("artifact")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=None,
                        help="the cache folder (default: a temporary one, removed after)")
    parser.add_argument("--name", default="ort-cache")
    args = parser.parse_args()

    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="comfyc-ort-cache-"))
    cache = Path(args.cache) if args.cache else work / "cache"
    if cache.exists():
        shutil.rmtree(cache)
    order = ["none", "save", "warm"] + ["none", "warm"] * max(0, args.rounds - 1)
    rows: list[dict[str, object]] = []
    images: dict[str, object] = {}
    try:
        for index, mode in enumerate(order):
            out = work / f"{index}-{mode}.npy"
            done = subprocess.run(
                [sys.executable, "-c", WORKER, args.artifact,
                 "" if mode == "none" else str(cache), str(args.threads), str(out)],
                capture_output=True, text=True, check=False)
            if done.returncode != 0 or "RESULT " not in done.stdout:
                raise SystemExit(f"{mode} row failed: {(done.stderr or '?').strip()[-2000:]}")
            row = {"mode": mode, **json.loads(done.stdout.split("RESULT ", 1)[1])}
            images[f"{index}-{mode}"] = np.load(out)
            print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v)
                              for k, v in row.items() if k != "unet_calls"}), flush=True)
            rows.append(row)
        cache_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = next(iter(images.values()))
    max_diff = max(float(np.abs(np.asarray(i) - np.asarray(first)).max())
                   for i in images.values())
    print(f"cache {cache_bytes / 1e9:.2f} GB; images differ by at most {max_diff}")
    path = save(args.name, {"artifact": args.artifact, "threads": args.threads, "rows": rows,
                            "cache_bytes": cache_bytes, "image_max_diff": max_diff})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
