"""Issue 2: `comfyc check` over the whole corpus (process wall time) and frontend import time.

    python bench/bench_check.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from common import REPO, save

CORPUS = REPO.parent / "shared" / "corpus" / "comfyui-examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    files = sorted(str(p) for p in CORPUS.glob("*.json"))
    walls = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "comfyc.cli.main", "check", "-q", *files],
                       capture_output=True)
        walls.append(time.perf_counter() - start)
    imports = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c",
                              "import time; t=time.perf_counter(); import comfyc.frontends.load;"
                              "print(time.perf_counter()-t)"], capture_output=True, text=True)
        imports.append(float(out.stdout))
    result = {"files": len(files), "check_wall_median_s": statistics.median(walls),
              "check_wall_all_s": walls, "import_frontends_median_s": statistics.median(imports)}
    print(f"comfyc check over {len(files)} corpus files: median "
          f"{result['check_wall_median_s']:.3f} s wall (process); import comfyc.frontends.load: "
          f"{result['import_frontends_median_s'] * 1000:.0f} ms")
    save("check", result)


if __name__ == "__main__":
    main()
