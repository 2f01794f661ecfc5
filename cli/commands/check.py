"""Validate workflows and report every problem with its location.

Accepts ComfyUI UI workflows, API prompts, PNGs with embedded workflows and comfyc DSL,
recognised by content, and compiled artifacts (their manifest and every file's hash). Finds
at once what ComfyUI's validation would reject and what `comfyc run` would refuse: a node
comfyc cannot run, a model name that leaves its folder, a model file that is not in the models
folder (when one is known: --models-dir or $COMFYC_MODELS), an input key the node does not
have. --comfyui checks as ComfyUI's server would instead. Exit status: 0 when every file is
valid, 1 when a workflow is invalid, 2 when a file cannot be read (missing, not UTF-8,
malformed JSON, a PNG without a workflow, too large). Never imports torch.
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
  comfyc check workflow.json --models-dir ~/ComfyUI/models   # are the model files there?
  comfyc check custom.json --object-info object_info.json --comfyui
  comfyc check txt2img.comfyc                      # an artifact: manifest and file hashes
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc check``."""
    parser.add_argument("files", nargs="+", metavar="FILE", help="workflow files ('-' = stdin)")
    add_catalog_arguments(parser)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON report (ComfyUI's node_errors shape) per file")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    parser.add_argument("--models-dir", metavar="DIR",
                        help="models folder in ComfyUI's layout, to check that the model files "
                             "are there (default: $COMFYC_MODELS; without one, only the names "
                             "are checked)")
    parser.add_argument("--comfyui", action="store_true",
                        help="check as ComfyUI's server would: nodes comfyc cannot run and "
                             "input keys no node declares are not errors")


def check_file(path: str, catalog: object, *, models_dir: str | None = None,
               comfyui: bool = False) -> tuple[int, dict[str, object]]:
    """Check one file; returns the exit code and a JSON-able report.

    Args:
        path: A workflow file ('-' for standard input) or an artifact directory.
        catalog: The node schemas.
        models_dir: The models folder (None: ``$COMFYC_MODELS``); model files are looked for
            only when one is known.
        comfyui: Check as ComfyUI's server would (see ``--comfyui``).
    """
    from dataclasses import replace
    from pathlib import Path

    from comfyc.compiler.errors import node_errors
    from comfyc.compiler.passes.validate import ValidateOptions, validate_graph, validate_partial
    from comfyc.frontends.load import load_workflow
    from comfyc.runtime.model_paths import get_models_dir

    if path != "-" and Path(path).is_dir():
        return _check_folder(Path(path))
    graph = None
    options = ValidateOptions(runnable=not comfyui, strict_inputs=not comfyui,
                              check_models=get_models_dir(models_dir) is not None,
                              models_dir=models_dir)
    try:
        try:
            graph = load_workflow(path, catalog)  # type: ignore[arg-type]
        except WorkflowErrors as exc:
            # A DSL file that lowered in part: validate the rest too (every problem at once).
            raise validate_partial(exc, catalog, replace(options, all_nodes=True)) from None
        options = replace(options, all_nodes=graph.source.kind == "dsl")
        warnings = [*_filled_widgets(graph, catalog, path),
                    *validate_graph(graph, catalog, options)]
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
        "warnings": [w.render(severity="warning") for w in warnings],
    }


def _filled_widgets(graph: object, catalog: object, path: str) -> list[WorkflowError]:
    """The widgets a UI workflow lacks that were given defaults (ComfyUI's frontend rule)."""
    from comfyc.frontends.comfy_json.ui import ui_defaults_filled
    from comfyc.frontends.load import read_source

    source = graph.source  # type: ignore[attr-defined]
    if source.workflow is None or source.kind not in ("ui", "png"):
        return []
    if source.kind == "png" and read_source(path).prompt is not None:
        return []  # The PNG's prompt chunk (an API prompt) is what runs, as it is.
    return ui_defaults_filled(source.workflow, catalog, source.file)  # type: ignore[arg-type]


def _check_folder(root: object) -> tuple[int, dict[str, object]]:
    """A folder: a compiled artifact is verified (manifest, format, every file's hash);
    any other folder is not a workflow."""
    from pathlib import Path

    from comfyc.compiler.errors import InputFileError
    from comfyc.compiler.ir import SourceLoc
    from comfyc.runtime.artifact import ArtifactError, read_manifest

    folder = Path(str(root))
    if not (folder / "manifest.json").is_file():
        workflows = sorted(p.name for p in folder.iterdir()
                           if p.suffix in (".cfy", ".json", ".png"))
        shown = ", ".join(workflows[:3]) + (" …" if len(workflows) > 3 else "")
        error = InputFileError(
            "is a folder, not a workflow file" + (f"; it holds {shown}" if workflows else ""),
            SourceLoc(file=str(folder)),
            help=(f"check the files in it: comfyc check {folder}/*" if workflows else
                  "name workflow files (UI/API JSON, PNG, .cfy) or a compiled NAME.comfyc"))
        return EXIT_UNREADABLE, _failed(str(folder), error, EXIT_UNREADABLE)
    try:
        manifest = read_manifest(folder)
    except ArtifactError as exc:
        error = InputFileError(str(exc), SourceLoc(file=str(folder)),
                               help="compile the workflow again")
        return EXIT_UNREADABLE, _failed(str(folder), error, EXIT_UNREADABLE)
    return EXIT_OK, {
        "file": str(folder), "valid": True, "exit_code": 0, "kind": "artifact",
        "nodes": len(manifest.ops), "outputs": len(manifest.outputs),
        "params": [p["name"] for p in manifest.params], "warnings": [],
    }


def _failed(path: str, error: WorkflowError, code: int) -> dict[str, object]:
    return {"file": path, "valid": False, "exit_code": code, "exception": error,
            "sources": {}, "errors": [error.to_comfy()], "node_errors": {}}


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc check``."""
    try:
        catalog = catalog_from_args(args)
    except WorkflowError as exc:
        print_error(exc)
        return EXIT_UNREADABLE
    worst = EXIT_OK
    for path in args.files:
        code, report = check_file(path, catalog, models_dir=args.models_dir,
                                  comfyui=args.comfyui)
        worst = max(worst, code)
        if args.json:
            report = {k: v for k, v in report.items() if k not in ("exception", "sources")}
            print(json.dumps(report, ensure_ascii=False))
        elif code == EXIT_OK:
            for warning in report["warnings"]:  # type: ignore[union-attr]
                print(warning, file=sys.stderr)
            if not args.quiet:
                what = "ops" if report["kind"] == "artifact" else "nodes"
                print(f"{path}: ok ({report['kind']}, {report['nodes']} {what}, "
                      f"{report['outputs']} output{'s' if report['outputs'] != 1 else ''})")
        else:
            print_error(report["exception"], report["sources"])  # type: ignore[arg-type]
    if worst == EXIT_INVALID and len(args.files) > 1 and not args.json:
        print(f"{sum(1 for _ in args.files)} files checked", file=sys.stderr)
    return worst
