"""Helpers shared by subcommands: catalogue options, loading, error printing, safe writes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from comfyc.compiler.catalog import Catalog, ObjectInfoError, default_catalog
from comfyc.compiler.errors import InputFileError, WorkflowError, WorkflowErrors, render_errors

__all__ = [
    "add_catalog_arguments", "catalog_from_args", "print_error", "write_output", "source_texts",
    "EXIT_OK", "EXIT_INVALID", "EXIT_UNREADABLE",
]

EXIT_OK, EXIT_INVALID, EXIT_UNREADABLE = 0, 1, 2


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--object-info FILE`` (repeatable)."""
    parser.add_argument(
        "--object-info", metavar="FILE", action="append", default=[],
        help="a ComfyUI /object_info JSON dump that defines more node types (repeatable)")


def catalog_from_args(args: argparse.Namespace) -> Catalog:
    """The built-in catalogue extended by every ``--object-info`` file.

    Raises:
        InputFileError: An object_info file cannot be read.
    """
    files = getattr(args, "object_info", None) or []
    if not files:
        return default_catalog()
    catalog = default_catalog().copy()
    for path in files:
        try:
            catalog.load_object_info(path)
        except ObjectInfoError as exc:
            raise InputFileError(str(exc)) from None
    return catalog


def source_texts(path: str) -> dict[str, str]:
    """``{path: text}`` for DSL error snippets (the caret line); empty when unreadable."""
    from comfyc.frontends.load import MAX_BYTES

    if path == "-":
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            # NOTE: bounded like the workflow read itself: /dev/zero or a huge file must not
            # be read whole just to print an error snippet.
            text = fh.read(MAX_BYTES + 1)
    except (OSError, UnicodeDecodeError):
        return {}
    return {} if len(text) > MAX_BYTES else {path: text}


def print_error(error: WorkflowError, sources: dict[str, str] | None = None) -> None:
    """Print an error (or several) to standard error."""
    if isinstance(error, WorkflowErrors):
        print(render_errors(error.errors, sources), file=sys.stderr)
    else:
        print(error.render(sources), file=sys.stderr)


def exit_code_for(error: WorkflowError) -> int:
    """2 for unreadable input, 1 for an invalid workflow."""
    return EXIT_UNREADABLE if isinstance(error, InputFileError) else EXIT_INVALID


def write_output(text: str | bytes, out: str | None) -> None:
    """Write to standard output, or atomically to a file (never half-written)."""
    if out is None or out == "-":
        if isinstance(text, bytes):
            sys.stdout.buffer.write(text)
        else:
            sys.stdout.write(text)
        return
    from comfyc.runtime.files import atomic_write

    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, text)


def dump_json(data: Any) -> str:
    """JSON as ComfyUI writes it (indent 2, UTF-8 kept), ending in a newline."""
    import json

    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
