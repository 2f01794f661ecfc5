"""Format comfyc DSL (.cfy) files canonically, keeping every comment.

Rewrites each FILE in place to the layout `comfyc convert --to dsl` prints (one statement per
node, calls wrapped at 100 columns with one argument per line, JSON literals, single blank
lines), keeping the statement order, every comment and the blank lines between statements.
Files are written atomically and only when they change. With --check nothing is written: the
files that would change are listed and the exit status is 1. `-` formats standard input to
standard output.

Exit status: 0 when every file is (or now is) formatted, 1 when --check finds a file to
reformat or a file is not valid DSL, 2 when a file cannot be read.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
from pathlib import Path

from comfyc.compiler.errors import InputFileError, WorkflowError
from comfyc.compiler.ir import SourceLoc

from .common import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_UNREADABLE,
    add_catalog_arguments,
    catalog_from_args,
    exit_code_for,
    print_error,
    source_texts,
    write_output,
)

__all__ = ["add_arguments", "run", "format_file", "write_in_place"]

#: Shown at the end of ``comfyc fmt --help``.
EXAMPLES = """\
examples:
  comfyc fmt examples/*.cfy            # rewrite in place
  comfyc fmt workflow.cfy --check      # exit 1 when a file would change (for CI)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``comfyc fmt``."""
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="DSL files to format ('-' = stdin to stdout)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file would be reformatted")
    add_catalog_arguments(parser)


def format_file(path: str, catalog: object) -> tuple[str, str]:
    """Read a DSL file and format it; returns ``(original, formatted)``.

    Raises:
        InputFileError: The file cannot be read, or it is JSON/PNG rather than DSL.
        WorkflowErrors: The DSL does not parse or a name does not resolve.
    """
    from comfyc.frontends.dsl.format import format_source
    from comfyc.frontends.load import read_source

    source = read_source(path)
    if source.kind != "dsl":
        raise InputFileError(
            f"is a ComfyUI {source.kind.upper()} workflow, not comfyc DSL; fmt formats .cfy "
            f"files only", SourceLoc(file=path),
            help=f"convert it first: comfyc convert {path} --to dsl -o FILE.cfy")
    text = source.text or ""
    return text, format_source(text, source.path, catalog)  # type: ignore[arg-type]


def write_in_place(path: str, text: str) -> None:
    """Replace a file's text atomically, keeping its permissions.

    The new text goes to a temporary file beside it, which is renamed over the original, so
    an interrupted run leaves either the old file or the new one, never half of each.
    """
    target = Path(path)
    mode = stat.S_IMODE(target.stat().st_mode)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    """Run ``comfyc fmt``."""
    try:
        catalog = catalog_from_args(args)
    except WorkflowError as exc:
        print_error(exc)
        return EXIT_UNREADABLE
    worst = EXIT_OK
    for path in args.files:
        try:
            original, formatted = format_file(path, catalog)
        except WorkflowError as exc:
            print_error(exc, source_texts(path))
            worst = max(worst, exit_code_for(exc))
            continue
        changed = formatted != original.replace("\r\n", "\n")
        if path == "-":
            if args.check:
                if changed:
                    print("<stdin>: would reformat", file=sys.stderr)
                    worst = max(worst, EXIT_INVALID)
            else:
                write_output(formatted, None)
            continue
        if not changed:
            continue
        if args.check:
            print(f"{path}: would reformat", file=sys.stderr)
            worst = max(worst, EXIT_INVALID)
            continue
        try:
            write_in_place(path, formatted)
        except OSError as exc:
            print_error(InputFileError(f"cannot write the file: {exc.strerror}",
                                       SourceLoc(file=path)))
            worst = max(worst, EXIT_UNREADABLE)
            continue
        print(f"{path}: reformatted", file=sys.stderr)
    return worst
