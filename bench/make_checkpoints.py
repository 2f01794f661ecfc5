"""Write seeded random-weight checkpoints (nothing is downloaded): full, large or tiny.

    python bench/make_checkpoints.py --list
    python bench/make_checkpoints.py sdxl --size full -o models/checkpoints/sdxl.safetensors
    python bench/make_checkpoints.py sd15 sdxl sdxl_refiner --size tiny -o /tmp/tiny/ --diffusers
    python bench/make_checkpoints.py all --size tiny -o models/checkpoints/ --dtype fp32
    python bench/make_checkpoints.py flux_dev --size large --dtype bf16 -o models/ --split

With one family, ``-o`` may name the ``.safetensors`` file; otherwise it is a folder and files are
named ``synthetic-<family>-<size>-s<seed>.safetensors``. ``--diffusers`` writes a diffusers
folder beside each file (same weights; ``<file stem>-diffusers/``). ``--split`` (SD3/Flux) writes
the separate files users keep instead of one checkpoint, into ComfyUI's ``models/`` layout under
``-o``: ``diffusion_models/``, ``text_encoders/``, ``vae/``. ``large`` (SD3.5 large, Flux) is the
published width with fewer blocks. ``--control controlnet|t2i|t2i-light`` writes ControlNets or
T2I-Adapters instead, for the families ``sd1`` and ``sdxl`` (``tiny`` ones fit the tiny checkpoints;
``--layout comfy|diffusers|folder``; ``comfyc.compiler.models.controlnet_synthetic``):

    python bench/make_checkpoints.py sd1 sdxl --control controlnet --size tiny -o models/controlnet/

Each line of output gives the parameter count, the write time
and the size; ``--json`` prints them as JSON too. The weights are a pure function of the seed
(``comfyc.compiler.models.synthetic``).
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

_DTYPES = ("fp16", "fp32", "bf16", "fp8_e4m3fn", "fp8_e5m2")


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _parameters(family: str, size: str) -> int:
    """Parameters of a family at a size (meta modules; SD3's position table included)."""
    from comfyc.compiler.models.synthetic import FAMILIES, model_spec

    modules = FAMILIES[family].build(model_spec(family, size))
    total = 0
    for module in modules.values():
        total += sum(p.numel() for p in module.parameters())
        total += sum(b.numel() for n, b in module.named_buffers() if n.endswith("pos_embed"))
    return total


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write seeded random-weight Stable Diffusion, SD3 and Flux checkpoints.")
    parser.add_argument("families", nargs="*", help="family names, or 'all' (see --list)")
    parser.add_argument("--size", choices=("full", "large", "tiny"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=_DTYPES, default="fp16",
                        help="floating dtype of the files (default fp16)")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="std of noise on norm weights and biases (default 0: 1 and 0)")
    parser.add_argument("-o", "--output", default=".",
                        help="output file (one family) or folder (default: .)")
    parser.add_argument("--diffusers", action="store_true",
                        help="also write a diffusers folder beside each file")
    parser.add_argument("--split", action="store_true",
                        help="SD3/Flux: write the diffusion model, text encoders and VAE as "
                             "separate files in a models/ folder layout under -o")
    parser.add_argument("--control", choices=("controlnet", "t2i", "t2i-light"),
                        help="write ControlNets / T2I-Adapters for the families sd1, sdxl")
    parser.add_argument("--layout", choices=("comfy", "diffusers", "folder"), default="comfy",
                        help="--control files: ComfyUI names, diffusers names, or a folder")
    parser.add_argument("--list", action="store_true", help="list the families and exit")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    return parser.parse_args(argv)


def dtype_of(torch: Any, name: str) -> Any:
    """The torch dtype of a --dtype choice."""
    return {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16,
            "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[name]


def _write_controls(args: argparse.Namespace, dtype: Any) -> int:
    """--control: seeded ControlNets / T2I-Adapters (one file or folder per family)."""
    from comfyc.compiler.models.controlnet_synthetic import (
        CONTROL_FAMILIES,
        write_controlnet,
        write_t2i_adapter,
    )

    names = list(CONTROL_FAMILIES) if args.families == ["all"] else args.families
    if not names or any(n not in CONTROL_FAMILIES for n in names) or args.size == "large":
        print(f"error: --control takes the families {list(CONTROL_FAMILIES)} (or 'all') and "
              f"the sizes tiny, full; got {names} {args.size}", file=sys.stderr)
        return 2
    output = Path(args.output)
    single = len(names) == 1 and (output.suffix == ".safetensors" or args.layout == "folder"
                                  and not output.is_dir())
    results: list[dict[str, Any]] = []
    for name in names:
        stem = f"synthetic-{args.control}-{name}-{args.size}-s{args.seed}"
        path = output if single else output / (
            stem if args.layout == "folder" else stem + ".safetensors")
        start = time.perf_counter()
        if args.control == "controlnet":
            written = write_controlnet(path, name, args.size, seed=args.seed, dtype=dtype,
                                       jitter=args.jitter, layout=args.layout)
        else:
            written = write_t2i_adapter(path, name, args.size, seed=args.seed, dtype=dtype,
                                        jitter=args.jitter, layout=args.layout,
                                        kind="light" if args.control == "t2i-light" else "full")
        seconds = time.perf_counter() - start
        size = _folder_size(written) if written.is_dir() else os.path.getsize(written)
        results.append({"family": name, "control": args.control, "size": args.size,
                        "layout": args.layout, "path": str(written), "bytes": size,
                        "seconds": seconds})
        print(f"{name:14} {args.control} {args.size}: {written} {size / 1e6:.1f} MB in "
              f"{seconds:.1f} s", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parse(argv)
    import torch

    from comfyc.compiler.models.synthetic import (
        FAMILIES,
        family_names,
        write_checkpoint,
        write_split_files,
    )

    if args.control and not args.list:
        return _write_controls(args, dtype_of(torch, args.dtype))
    if args.list:
        for name, family in FAMILIES.items():
            print(f"{name:14} {family.description} (sizes: {', '.join(family.specs)})")
        return 0
    names = family_names() if args.families == ["all"] else args.families
    if args.families == ["all"]:
        names = [n for n in names if args.size in FAMILIES[n].specs]
    unknown = [n for n in names if n not in FAMILIES]
    if not names or unknown:
        print(f"error: unknown or missing family {unknown or names}; expected some of "
              f"{family_names()} or 'all'", file=sys.stderr)
        return 2
    dtype = dtype_of(torch, args.dtype)
    missing = [n for n in names if args.size not in FAMILIES[n].specs]
    if missing:
        print(f"error: {missing} have no size {args.size!r}", file=sys.stderr)
        return 2
    output = Path(args.output)
    single = len(names) == 1 and output.suffix == ".safetensors"
    results: list[dict[str, Any]] = []
    for name in names:
        if args.split:
            start = time.perf_counter()
            files = write_split_files(output, name, args.size, seed=args.seed, dtype=dtype,
                                      jitter=args.jitter,
                                      stem=f"synthetic-{name}-{args.size}-s{args.seed}")
            seconds = time.perf_counter() - start
            sizes = {role: os.path.getsize(p) for role, p in files.items()}
            result: dict[str, Any] = {
                      "family": name, "size": args.size, "dtype": args.dtype, "seed": args.seed,
                      "files": {role: str(p) for role, p in files.items()},
                      "bytes": sum(sizes.values()), "seconds": seconds,
                      "parameters": _parameters(name, args.size)}
            print(f"{name:14} {args.size}: {len(files)} files under {output} "
                  f"{result['parameters'] / 1e9:.3f} B params {result['bytes'] / 1e9:.3f} GB "
                  f"in {seconds:.1f} s", flush=True)
            results.append(result)
            continue
        path = output if single else output / (
            f"synthetic-{name}-{args.size}-s{args.seed}.safetensors")
        folder = path.with_name(path.stem + "-diffusers") if args.diffusers else None
        start = time.perf_counter()
        write_checkpoint(path, name, args.size, seed=args.seed, dtype=dtype,
                         jitter=args.jitter, diffusers_dir=folder)
        seconds = time.perf_counter() - start
        result = {"family": name, "size": args.size, "dtype": args.dtype,
                                  "seed": args.seed, "path": str(path), "seconds": seconds,
                                  "bytes": os.path.getsize(path),
                                  "parameters": _parameters(name, args.size)}
        line = (f"{name:14} {args.size}: {path} {result['parameters'] / 1e9:.3f} B params "
                f"{result['bytes'] / 1e9:.3f} GB")
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
