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
from typing import Any

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

__all__ = ["add_arguments", "format_for", "run", "build_view", "artifact_view"]

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


def build_view(path: str | Path, catalog: Any = None, **options: Any) -> Any:
    """The view of ``path``: an artifact directory or any workflow file (see
    :func:`comfyc.compiler.viz.view_of_graph` for the options).

    Raises:
        InputFileError: The file cannot be read.
        WorkflowErrors: The workflow is invalid.
    """
    from comfyc.compiler.viz import view_of_graph
    from comfyc.frontends.load import load_workflow

    if Path(path).is_dir():
        return artifact_view(path, catalog)
    return view_of_graph(load_workflow(path, catalog), catalog, **options)


def artifact_view(path: str | Path, catalog: Any = None, *, source: Any = None) -> Any:
    """The view of a compiled artifact directory.

    The optimised graph is the manifest's ``optimized`` DSL; the workflow as written comes
    from ``source`` when given, else from the manifest (``source.text`` or
    ``source.prompt``), else from the source file when it is still there unchanged (same
    SHA-256); otherwise the page shows the optimised graph only and says so.

    Raises:
        InputFileError: Not a readable artifact.
    """
    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.errors import InputFileError
    from comfyc.compiler.ir import SourceLoc
    from comfyc.compiler.viz import view_of_artifact
    from comfyc.frontends.dsl import parse_dsl
    from comfyc.runtime.artifact import ArtifactError, read_manifest

    catalog = catalog or default_catalog()
    where = str(Path(path) / "manifest.json")
    try:
        manifest = read_manifest(path, verify=False)
    except ArtifactError as exc:
        raise InputFileError(str(exc), SourceLoc(file=str(path))) from None
    optimized = manifest.optimized
    if not isinstance(optimized, str):
        raise InputFileError("manifest.json has no optimized graph; this artifact is from an "
                             "older comfyc — compile it again", SourceLoc(file=where))
    after = parse_dsl(optimized, f"{where} [optimized]", catalog)
    if source is not None:
        before, found_from = source, str(source.source.file or "given by the caller")
    else:
        before, found_from = _artifact_source(manifest, Path(path), catalog)
    return view_of_artifact(manifest, after, before, catalog, name=Path(path).name,
                            path=str(path), found_from=found_from)


def _artifact_source(manifest: Any, root: Path, catalog: Any) -> tuple[Any, str]:
    """The workflow an artifact was compiled from, and where it was found."""
    import hashlib

    from comfyc.compiler.errors import WorkflowError
    from comfyc.frontends.comfy_json.api import graph_from_api
    from comfyc.frontends.load import load_text, load_workflow

    source = manifest.source
    name = source.file or "source"
    try:
        if source.text and source.text.strip():
            return load_text(source.text, name, catalog), "stored in the manifest"
        if source.prompt is not None:
            return graph_from_api(source.prompt, catalog, name), "the manifest"
    except WorkflowError:
        pass
    if not source.file:
        return None, ""
    for candidate in (Path(name), root.parent / name):
        if not candidate.is_file():
            continue
        try:
            graph = load_workflow(candidate, catalog)
        except WorkflowError:
            continue
        text = graph.source.text or ""
        if hashlib.sha256(text.encode()).hexdigest() == source.sha256:
            return graph, str(candidate)
    return None, ""


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc viz``."""
    from comfyc.compiler.lowering.artifact import parse_backend_map
    from comfyc.compiler.viz import render

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
        from comfyc.compiler.passes.base import describe_summary

        print(f"wrote {args.output} ({fmt}): {describe_summary(stats)}; stages: "
              f"{', '.join(s.label for s in view.stages.values()) or 'none'}",
              file=sys.stderr)
    return EXIT_OK
