"""Build TensorRT engines for a compiled artifact's ONNX stages (NVIDIA GPUs).

One engine per stage goes into ARTIFACT/engines/, keyed by GPU, compute capability,
TensorRT version, ONNX hash, precision and shape profile; an engine with the same key is
reused, and a rebuild says why (another GPU, another TensorRT, a recompiled stage). Run the
artifact on them with `comfyc run ARTIFACT --backend trt`.

--check only checks the ONNX stages the way TensorRT's parser would (opset, operators, string
tensors, ONNX checker) and prints the shape profiles; it needs neither TensorRT nor a GPU.

Examples:
  comfyc build-engines txt2img.comfyc
  comfyc build-engines txt2img.comfyc --refittable          # LoRA changes refit, not rebuild
  comfyc build-engines sd.comfyc --profile batch=1:1:4,height=512:768:1024,width=512:768:1024
  comfyc build-engines txt2img.comfyc --check
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import EXIT_INVALID, EXIT_OK, EXIT_UNREADABLE

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc build-engines``."""
    parser.add_argument("artifact", metavar="ARTIFACT", help="a compiled artifact directory")
    parser.add_argument("--stage", action="append", default=[], metavar="NAME|KIND",
                        help="only this stage (name or kind: unet, vae_decoder, ...); "
                             "repeatable")
    parser.add_argument("--profile", metavar="SPEC",
                        help="ranges for stages compiled with --dynamic: "
                             "batch=MIN:OPT:MAX,height=...,width=...,context=... "
                             "(image pixels and tokens)")
    parser.add_argument("--no-fp16", dest="fp16", action="store_false",
                        help="build FP32-only engines (FP16 kernels are allowed by default)")
    parser.add_argument("--refittable", action="store_true",
                        help="build refittable engines: LoRA changes refit the weights "
                             "instead of rebuilding")
    parser.add_argument("--workspace-gb", type=float, default=4.0, metavar="GB",
                        help="builder workspace limit (default 4)")
    parser.add_argument("--opt-level", type=int, default=3, choices=range(6), metavar="0-5",
                        help="TensorRT builder optimisation level (default 3)")
    parser.add_argument("--force", action="store_true", help="rebuild even cached engines")
    parser.add_argument("--check", action="store_true",
                        help="only check the ONNX stages and print the profiles (no GPU)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _check(root: Path, profile_text: str | None, as_json: bool, wanted: list[str]) -> int:
    from comfyc.compiler.lowering.tensorrt import (
        ProfileSpec,
        check_onnx,
        onnx_stages,
        stage_profile,
    )
    from comfyc.runtime.artifact import read_manifest

    manifest = read_manifest(root)
    spec = ProfileSpec.parse(profile_text)
    report = {}
    failed = False
    for name, entry in onnx_stages(manifest).items():
        if wanted and name not in wanted and entry.get("kind") not in wanted:
            continue
        problems = check_onnx(root / entry["file"])
        profile = {k: v.as_lists() for k, v in stage_profile(entry, spec).items()}
        report[name] = {"file": entry["file"], "problems": problems, "profile": profile}
        failed |= bool(problems)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        for name, item in report.items():
            status = "ok" if not item["problems"] else f"{len(item['problems'])} problems"
            print(f"{name}: {status} ({item['file']})")
            for problem in item["problems"]:
                print(f"  problem: {problem}")
            for tensor, (lo, mid, hi) in item["profile"].items():
                print(f"  {tensor}: min {lo} opt {mid} max {hi}")
    return EXIT_INVALID if failed else EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc build-engines``."""
    from comfyc.compiler.lowering.tensorrt import (
        BuildOptions,
        ProfileSpec,
        TensorRTError,
        build_engines,
    )
    from comfyc.runtime.artifact import ArtifactError
    from comfyc.runtime.backends.base import BackendError

    root = Path(args.artifact)
    try:
        if args.check:
            return _check(root, args.profile, args.json, args.stage)
        options = BuildOptions(fp16=args.fp16, refittable=args.refittable,
                               workspace_bytes=int(args.workspace_gb * (1 << 30)),
                               profile=ProfileSpec.parse(args.profile), stages=args.stage,
                               force=args.force, optimization_level=args.opt_level)
        results = build_engines(root, options,
                                progress=lambda m: print(m, file=sys.stderr, flush=True))
    except TensorRTError as exc:
        print(f"comfyc build-engines: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except BackendError as exc:  # No TensorRT or no GPU here: as in `run` and `compile`.
        print(f"comfyc build-engines: error: {exc}", file=sys.stderr)
        print("help: build the engines on the machine with the NVIDIA GPU that will run "
              "them; here the artifact runs with `comfyc run ARTIFACT --backend ort-cpu`",
              file=sys.stderr)
        return EXIT_UNREADABLE
    except ArtifactError as exc:
        print(f"comfyc build-engines: error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, item in results.items():
            print(f"{name}: {item['status']} {item['file']} ({item['seconds']:.1f} s)")
    return EXIT_OK
