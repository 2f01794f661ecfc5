"""Validate workflows and report every problem with its location.

Accepts ComfyUI UI workflows, API prompts, PNGs with embedded workflows and comfyc DSL,
recognised by content. Exit status: 0 when every file is valid, 1 when a workflow is
invalid, 2 when a file cannot be read (missing, not UTF-8, malformed JSON, a PNG without a
workflow, too large). Never imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys

from comfyc.compiler.errors import WorkflowError, WorkflowErrors

from .common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNREADABLE,
    add_catalog_arguments,
    catalog_from_args,
    exit_code_for,
    print_error,
    source_texts,
)

__all__ = ["add_arguments", "run", "check_file"]

#: Shown at the end of ``comfyc check --help``.
EXAMPLES = """\
examples:
  comfyc check examples/txt2img.cfy
  comfyc check workflow.json image.png --json      # several files; a JSON report
  comfyc check custom.json --object-info object_info.json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc check``."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="workflow files ('-' = stdin)")
    add_catalog_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON report (ComfyUI's node_errors shape) per file")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only problems")


def check_file(path: str, catalog: object) -> tuple[int, dict[str, object]]:
    """Check one file; returns the exit code and a JSON-able report."""
    from comfyc.compiler.errors import node_errors
    from comfyc.compiler.passes.validate import validate_graph
    from comfyc.frontends.load import load_workflow

    graph = None
    try:
        graph = load_workflow(path, catalog)  # type: ignore[arg-type]
        warnings = validate_graph(graph, catalog,
                                  all_nodes=graph.source.kind == "dsl")
    except WorkflowError as exc:
        errors = exc.errors if isinstance(exc, WorkflowErrors) else [exc]
        code = exit_code_for(exc)
        text = graph.source.text if graph is not None else None
        sources = {path: text} if text else source_texts(path)
        return code, {
            "file": path, "valid": False, "exit_code": code, "exception": exc,
            "sources": sources,
            "errors": [e.to_comfy() for e in errors], "node_errors": node_errors(errors),
        }
    outputs = sum(1 for n in graph.nodes if (s := catalog.get(n.class_type)) and s.output_node)  # type: ignore[attr-defined]
    return EXIT_OK, {
        "file": path, "valid": True, "exit_code": 0, "kind": graph.source.kind,
        "nodes": len(graph.nodes), "outputs": outputs + len(graph.outputs),
        "params": list(graph.params),
        "warnings": [w.render() for w in warnings],
    }


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc check``."""
    try:
        catalog = catalog_from_args(args)
    except WorkflowError as exc:
        print_error(exc)
        return EXIT_UNREADABLE
    worst = EXIT_OK
    for path in args.files:
        code, report = check_file(path, catalog)
        worst = max(worst, code)
        if args.json:
            report = {k: v for k, v in report.items() if k not in ("exception", "sources")}
            print(json.dumps(report, ensure_ascii=False))
        elif code == EXIT_OK:
            for warning in report["warnings"]:  # type: ignore[union-attr]
                print(warning.replace(": error[", ": warning[", 1), file=sys.stderr)
            if not args.quiet:
                print(f"{path}: ok ({report['kind']}, {report['nodes']} nodes, "
                      f"{report['outputs']} output{'s' if report['outputs'] != 1 else ''})")
        else:
            print_error(report["exception"], report["sources"])  # type: ignore[arg-type]
    if worst == EXIT_INVALID and len(args.files) > 1 and not args.json:
        print(f"{sum(1 for _ in args.files)} files checked", file=sys.stderr)
    return worst
