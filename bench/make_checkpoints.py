"""Write seeded random-weight checkpoints (nothing is downloaded): full or tiny, any family.

    python bench/make_checkpoints.py --list
    python bench/make_checkpoints.py sdxl --size full -o models/checkpoints/sdxl.safetensors
    python bench/make_checkpoints.py sd15 sdxl sdxl_refiner --size tiny -o /tmp/tiny/ --diffusers
    python bench/make_checkpoints.py all --size tiny -o models/checkpoints/ --dtype fp32

With one family, ``-o`` may name the ``.safetensors`` file; otherwise it is a folder and files are
named ``synthetic-<family>-<size>-s<seed>.safetensors``. ``--diffusers`` writes a diffusers
folder beside each file (same weights; ``<file stem>-diffusers/``). Each line of output gives the
write time and the size; ``--json`` prints them as JSON too. The weights are a pure function of
the seed (``comfyc.compiler.models.synthetic``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

_DTYPES = ("fp16", "fp32", "bf16")


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write seeded random-weight Stable Diffusion checkpoints.")
    parser.add_argument("families", nargs="*", help="family names, or 'all' (see --list)")
    parser.add_argument("--size", choices=("full", "tiny"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=_DTYPES, default="fp16",
                        help="floating dtype of the files (default fp16)")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="std of noise on norm weights and biases (default 0: 1 and 0)")
    parser.add_argument("-o", "--output", default=".",
                        help="output file (one family) or folder (default: .)")
    parser.add_argument("--diffusers", action="store_true",
                        help="also write a diffusers folder beside each file")
    parser.add_argument("--list", action="store_true", help="list the families and exit")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parse(argv)
    import torch

    from comfyc.compiler.models.synthetic import FAMILIES, family_names, write_checkpoint

    if args.list:
        for name, family in FAMILIES.items():
            print(f"{name:14} {family.description} (sizes: {', '.join(family.specs)})")
        return 0
    names = family_names() if args.families == ["all"] else args.families
    unknown = [n for n in names if n not in FAMILIES]
    if not names or unknown:
        print(f"error: unknown or missing family {unknown or names}; expected some of "
              f"{family_names()} or 'all'", file=sys.stderr)
        return 2
    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    output = Path(args.output)
    single = len(names) == 1 and output.suffix == ".safetensors"
    results: list[dict[str, Any]] = []
    for name in names:
        path = output if single else output / (
            f"synthetic-{name}-{args.size}-s{args.seed}.safetensors")
        folder = path.with_name(path.stem + "-diffusers") if args.diffusers else None
        start = time.perf_counter()
        write_checkpoint(path, name, args.size, seed=args.seed, dtype=dtype,
                         jitter=args.jitter, diffusers_dir=folder)
        seconds = time.perf_counter() - start
        result: dict[str, Any] = {"family": name, "size": args.size, "dtype": args.dtype,
                                  "seed": args.seed, "path": str(path), "seconds": seconds,
                                  "bytes": os.path.getsize(path)}
        line = f"{name:14} {args.size}: {path} {result['bytes'] / 1e9:.3f} GB"
        if folder is not None:
            result["diffusers"] = str(folder)
            result["diffusers_bytes"] = _folder_size(folder)
            line += f", diffusers folder {result['diffusers_bytes'] / 1e9:.3f} GB"
        print(f"{line} in {seconds:.1f} s", flush=True)
        results.append(result)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
