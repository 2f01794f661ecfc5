"""Run every benchmark script in bench/ (what `make bench` runs), one after another.

Each script writes its JSON under bench/results/; a script that fails is reported and the
rest still run. bench/gpu_check.sh is not run here: it needs an NVIDIA GPU.

    python bench/run_all.py [--only backends,pipeline]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=None, help="comma-separated names (bench_NAME.py)")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {f"bench_{name.strip()}.py" for name in args.only.split(",")}
        scripts = [s for s in scripts if s.name in wanted]
    failed = []
    for script in scripts:
        print(f"==> {script.name}", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(script)], check=False, cwd=HERE).returncode
        print(f"==> {script.name}: exit {code} in {time.perf_counter() - start:.0f} s",
              flush=True)
        if code:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
