"""Draw a workflow or a compiled artifact as a graph page.

The page (one self-contained HTML file: no network, everything inline) lays the nodes out
left to right with their titles and key inputs and colours each link by its ComfyUI type.
On top of it is the compiler's view: eliminated and merged nodes dimmed, folded nodes marked
with what they became, the nodes that call a model stage framed together and labelled with
the stage's backend (and, for a tuned artifact, its measured time). Two buttons switch
between the workflow as written and the optimised one.

  comfyc viz examples/txt2img.cfy -o graph.html
  comfyc viz txt2img.comfyc -o graph.html          # an artifact: its stages and timings
  comfyc viz workflow.json --format svg -o graph.svg
  comfyc viz workflow.png --format dot | dot -Tpng > graph.png

Drawing a workflow runs the compiler's passes without loading any model weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from comfyc.compiler.errors import WorkflowError
from .common import (
    EXIT_OK,
    EXIT_UNREADABLE,
    add_catalog_arguments,
    catalog_from_args,
    exit_code_for,
    print_error,
    source_texts,
    write_output,
)

__all__ = ["add_arguments", "format_for", "run"]

_SUFFIX_FORMATS = {".html": "html", ".htm": "html", ".svg": "svg", ".dot": "dot", ".gv": "dot"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc viz``."""
    parser.add_argument("file", metavar="WORKFLOW|ARTIFACT",
                        help="a workflow (.cfy, API/UI JSON, PNG) or a NAME.comfyc artifact")
    parser.add_argument("-o", "--output", metavar="FILE", default=None,
                        help="where to write (default: standard output)")
    parser.add_argument("--format", choices=("html", "svg", "dot"), default=None,
                        help="html (default; a page with a before/after toggle), svg (one "
                             "view, standalone) or dot (Graphviz text); by default taken "
                             "from the output's extension")
    parser.add_argument("--view", choices=("after", "before"), default="after",
                        help="for svg and dot: the optimised graph (default) or the workflow "
                             "as written")
    parser.add_argument("--backend", default="ort-cpu",
                        help="for a workflow: the backend plan to label stages with, as "
                             "`comfyc compile --backend` takes it (default: ort-cpu)")
    parser.add_argument("--param", action="append", default=[], metavar="NODE.INPUT=NAME",
                        help="for a workflow: treat a literal input as a runtime param, as "
                             "`comfyc compile --param` does")
    parser.add_argument("--lora-runtime", action="store_true",
                        help="for a workflow: show LoRAs as runtime-mode (compile's "
                             "--lora-runtime)")
    add_catalog_arguments(parser)


def format_for(fmt: str | None, output: str | None) -> str:
    """The format asked for, else the one the output's extension names, else html."""
    if fmt:
        return fmt
    if output and output != "-":
        return _SUFFIX_FORMATS.get(Path(output).suffix.lower(), "html")
    return "html"


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc viz``."""
    from comfyc.compiler.lowering.artifact import parse_backend_map
    from comfyc.compiler.viz import build_view, render

    fmt = format_for(args.format, args.output)
    try:
        plan = parse_backend_map(args.backend)
    except ValueError as exc:
        print(f"comfyc viz: error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        catalog = catalog_from_args(args)
        view = build_view(args.file, catalog, backend=plan, param_bindings=args.param,
                          lora_runtime=args.lora_runtime)
        text = render(view, fmt, mode=args.view)
    except WorkflowError as exc:
        print_error(exc, source_texts(args.file))
        return exit_code_for(exc)
    try:
        write_output(text, args.output)
    except OSError as exc:
        print(f"comfyc viz: error: cannot write {args.output}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_UNREADABLE
    if args.output and args.output != "-":
        stats = view.stats
        print(f"wrote {args.output} ({fmt}): {stats['nodes_before']} nodes, "
              f"{stats['folded']} folded, {stats['merged']} merged, "
              f"{stats['eliminated']} eliminated; stages: "
              f"{', '.join(s.label for s in view.stages.values()) or 'none'}",
              file=sys.stderr)
    return EXIT_OK
