"""Convert a workflow between forms.

``--to api`` writes the API prompt ComfyUI would queue: a UI workflow is converted with the
frontend's rules, a PNG gives back the prompt that made it, DSL is lowered through the IR.
``--to dsl`` writes comfyc's text DSL (ids and titles kept, so DSL → API is lossless).
Output goes to standard output unless ``-o FILE`` is given (written atomically).
"""

from __future__ import annotations

import argparse

from comfyc.compiler.errors import WorkflowError

from .common import (
    EXIT_OK,
    add_catalog_arguments,
    catalog_from_args,
    dump_json,
    exit_code_for,
    print_error,
    source_texts,
    write_output,
)

__all__ = ["add_arguments", "run"]

#: Shown at the end of ``comfyc convert --help``.
EXAMPLES = """\
examples:
  comfyc convert workflow.json --to api -o prompt.json   # UI workflow -> API prompt
  comfyc convert image.png --to dsl                      # the workflow a PNG carries
  comfyc convert examples/txt2img.cfy --to api
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc convert``."""
    parser.add_argument("file", metavar="FILE", help="a workflow: UI/API JSON, PNG or .cfy")
    parser.add_argument("--to", choices=["api", "dsl"], required=True, help="the output form")
    parser.add_argument("-o", "--output", metavar="OUT", help="output file (default: stdout)")
    add_catalog_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc convert``."""
    from comfyc.frontends.load import load_api_prompt, load_workflow

    sources: dict[str, str] = {}
    try:
        catalog = catalog_from_args(args)
        if args.to == "api":
            text = dump_json(load_api_prompt(args.file, catalog))
        else:
            graph = load_workflow(args.file, catalog)
            sources = {args.file: graph.source.text or ""}
            text = str(graph)
    except WorkflowError as exc:
        print_error(exc, sources or source_texts(args.file))
        return exit_code_for(exc)
    write_output(text, args.output)
    return EXIT_OK
