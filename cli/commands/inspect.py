"""Show what the compiler does to a workflow, or what an artifact contains.

For a workflow: the IR after each pass (as DSL; --after PASS shows one), then a summary —
nodes removed and folded, runtime params, the stages the program calls (with the shapes
seen while probing) and where each will run. For an artifact: its manifest in brief.
--json prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from comfyc.compiler.errors import WorkflowError

from .common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNREADABLE,
    add_catalog_arguments,
    catalog_from_args,
    exit_code_for,
    print_error,
    require_extra,
    source_texts,
)

__all__ = ["add_arguments", "run", "inspect_workflow", "inspect_artifact"]

#: Shown at the end of ``comfyc inspect --help``.
EXAMPLES = """\
examples:
  comfyc inspect examples/txt2img.cfy                  # the IR after every pass
  comfyc inspect examples/hires_lora.cfy --after lora-merge
  comfyc inspect txt2img.comfyc --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc inspect``."""
    from comfyc.compiler.pipeline import PASS_NAMES

    parser.add_argument("file", metavar="WORKFLOW|ARTIFACT")
    parser.add_argument("--after", metavar="PASS", choices=PASS_NAMES,
                        help=f"print the IR only after this pass ({', '.join(PASS_NAMES)})")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--backend", default="ort-cpu", help="backend plan to report")
    parser.add_argument("--models-dir", metavar="DIR", help="models folder (ComfyUI layout)")
    parser.add_argument("--input-dir", default="input", metavar="DIR",
                        help="LoadImage's folder for probing shapes")
    parser.add_argument("--param", action="append", default=[], metavar="NODE.INPUT=NAME",
                        help="make an input a runtime param, as comfyc compile does")
    add_catalog_arguments(parser)


def inspect_artifact(path: Path) -> dict[str, Any]:
    """A summary of an artifact's manifest."""
    from comfyc.runtime.artifact import read_manifest

    manifest = read_manifest(path, verify=False)
    stages = {}
    for name, entry in manifest.stage_entries().items():
        stages[name] = {"kind": entry.kind, "backend": entry.backend, "shapes": entry.shapes,
                        "file": entry.file}
        if "layer" in entry.info:
            stages[name]["layer"] = entry.info["layer"]
    return {
        "artifact": str(path), "comfyc_version": manifest.comfyc_version,
        "source": manifest.source.file, "params": manifest.params,
        "stages": stages, "plan": manifest.plan, "stats": manifest.stats,
        "changes": manifest.changes, "ops": [op["op"] for op in manifest.ops],
    }


def inspect_workflow(args: argparse.Namespace, out: Any = sys.stdout) -> dict[str, Any]:
    """Run the pipeline, printing the IR after each pass; returns the summary."""
    from comfyc.compiler.lowering.artifact import _probe, _RecordingLayers, parse_backend_map
    from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
    from comfyc.compiler.passes.base import PassContext, PassOptions
    from comfyc.compiler.pipeline import run_pipeline
    from comfyc.frontends.load import load_workflow

    catalog = catalog_from_args(args)
    graph = load_workflow(args.file, catalog)
    cache = TorchModelCache(args.models_dir)
    context = PassContext(catalog, PassOptions(param_bindings=list(args.param),
                                               models_dir=args.models_dir), models=cache)
    before = len(graph.nodes)

    def show(step: Any, result: Any) -> None:
        if args.json or (args.after and step.name != args.after):
            return
        print(f"# ---- after {step.name}{' (changed)' if result.modified else ''}", file=out)
        print(str(graph), file=out)

    run_pipeline(graph, context, after_each=show)
    program = lower_to_program(graph, catalog, cache=cache,
                               merged_into=context.changes.merged_into())
    recorders = _probe(program, args.input_dir)
    plan = parse_backend_map(args.backend)
    stages: dict[str, Any] = {}
    for name, rec in recorders.items():
        if isinstance(rec, _RecordingLayers):
            for layer, sub in rec.used.items():
                stages[f"{name}_L{-layer}"] = {"kind": "text_encoder", "layer": layer,
                                              "calls": len(sub.shapes)}
        elif rec.shapes:
            stages[name] = {"kind": rec.kind, "calls": len(rec.shapes),
                            "shapes": sorted({str(s) for s in rec.shapes})}
    for name, entry in stages.items():
        entry["backend"] = plan if isinstance(plan, str) else plan.get(
            name, plan.get(entry["kind"], "ort-cpu"))
    return {
        "file": args.file, "nodes_before": before, "nodes_after": len(graph.nodes),
        **context.changes.summary(),
        "changes": context.changes.to_json(),
        "params": {p.name: p.type for p in graph.params.values()},
        "stages": stages,
    }


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc inspect``."""
    from comfyc.runtime.artifact import ArtifactError
    from comfyc.runtime.errors import Error as RuntimeFailure

    path = Path(args.file)
    if not path.is_dir():
        require_extra("compiler")  # A workflow runs through the passes and the lowering.
    try:
        summary = (inspect_artifact(path) if path.is_dir() else inspect_workflow(args))
    except WorkflowError as exc:
        print_error(exc, source_texts(args.file))
        return exit_code_for(exc)
    except ArtifactError as exc:  # Not an artifact, or a damaged one.
        print(f"comfyc inspect: error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except (RuntimeFailure, ValueError) as exc:  # A bad --backend map, an unusable image ...
        print(f"comfyc inspect: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return EXIT_OK
    from comfyc.compiler.passes.base import describe_summary

    print("# ---- summary")
    counts = summary.get("stats") if "nodes_before" not in summary else summary
    if isinstance(counts, dict):
        print(describe_summary(counts))
    params = summary.get("params") or {}
    if isinstance(params, dict):
        text = ", ".join(f"{k}: {v}" for k, v in params.items())
    else:
        text = ", ".join(f"{p['name']}: {p['type']}" for p in params)
    print(f"params: {text or 'none'}")
    print("stages:")
    for name, entry in summary["stages"].items():
        shapes = f" shapes {entry.get('shapes')}" if entry.get("shapes") else ""
        print(f"  {name}: {entry['kind']} on {entry.get('backend')}{shapes}")
    return EXIT_OK
