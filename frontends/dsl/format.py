"""``comfyc fmt``'s engine: canonical layout from the printer, with every comment kept.

Contract: :func:`format_source` returns the canonical text of a DSL file (what
:func:`~comfyc.compiler.ir.printer.print_graph` prints for its graph) with the user's statement
order, every comment and single blank lines between statements kept; formatting its output
again changes nothing. It needs the file to parse and its names to resolve (link types are not
checked: a formatter should work on a file that ``comfyc check`` still complains about).

Where each comment goes:

* on lines between statements: above the next statement (blank lines kept, at most one);
* after the end of a statement on its last line: at the end of that statement;
* inside a call, on the line where an argument ends: after that argument;
* inside a call, on a line of its own: above the next argument (or before ``)``);
* anywhere else inside a statement (between decorators, inside a param's attributes or a
  multi-line list): above the statement;
* after the last statement: at the end of the file.

Before::

    latent = KSampler(model=model,   # pass 1
      seed=seed, steps=20)

After::

    latent = KSampler(
        model=model,  # pass 1
        seed=seed,
        steps=20,
    )
"""

from __future__ import annotations

from collections.abc import Callable

from comfyc.compiler.catalog import Catalog, default_catalog
from comfyc.compiler.ir import Graph
from comfyc.compiler.ir.printer import ArgTrivia, StmtKey, StmtTrivia, print_graph

from . import ast
from .lower import Lowering
from .parse import parse_module

__all__ = ["format_source", "rewrite_source", "attach_comments"]


def attach_comments(module: ast.Module, keys: list[StmtKey]
                    ) -> tuple[dict[StmtKey, StmtTrivia], list[str]]:
    """Assign every comment (and blank-line gaps) to a statement.

    Args:
        module: A module parsed with ``with_comments=True``.
        keys: One key per statement (from :class:`~.lower.Lowering`).

    Returns:
        The trivia per statement key, and the lines after the last statement (the footer).
    """
    statements = module.statements
    by_line: dict[int, ast.Comment] = {c.line: c for c in module.comments}
    owner: dict[int, int] = {}  # line -> index of the (last) statement covering it
    for index, stmt in enumerate(statements):
        for line in range(stmt.span.line, stmt.span.end_line + 1):
            owner[line] = index
    trivia: dict[StmtKey, StmtTrivia] = {}

    def slot(index: int) -> StmtTrivia:
        return trivia.setdefault(keys[index], StmtTrivia())

    # Gaps between statements: comments and blank lines become leading lines.
    lines = module.source.split("\n")
    previous_end = 0
    for index, stmt in enumerate(statements):
        gap = []
        for line in range(previous_end + 1, stmt.span.line):
            comment = by_line.get(line)
            if comment is not None and line not in owner:
                gap.append(comment.text)
            elif line <= len(lines) and not lines[line - 1].strip():
                gap.append("")
        if gap:
            slot(index).leading.extend(gap)
        previous_end = max(previous_end, stmt.span.end_line)
    footer = []
    for line in range(previous_end + 1, len(lines) + 1):
        comment = by_line.get(line)
        if comment is not None:
            footer.append(comment.text)
        elif not lines[line - 1].strip():
            footer.append("")

    # Comments on lines that statements cover.
    for comment in module.comments:
        index = owner.get(comment.line)
        if index is None:
            continue
        stmt = statements[index]
        target = slot(index)
        if comment.line == stmt.span.end_line:
            target.trailing = _join(target.trailing, comment.text)
        elif isinstance(stmt, ast.NodeStmt) and comment.line >= stmt.lpar.line:
            _attach_inside_call(stmt, comment, target)
        else:
            target.leading.append(comment.text)
    return trivia, footer


def _join(first: str | None, second: str) -> str:
    return second if not first else f"{first} {second.lstrip('#').strip()}"


def _attach_inside_call(stmt: ast.NodeStmt, comment: ast.Comment, target: StmtTrivia) -> None:
    ending = [a for a in stmt.args if a.key is not None and a.span.end_line == comment.line]
    if ending:
        arg = target.args.setdefault(ending[-1].key.text, ArgTrivia())  # type: ignore[union-attr]
        arg.trailing = _join(arg.trailing, comment.text)
        return
    inside = [a for a in stmt.args if a.key is not None
              and a.span.line <= comment.line <= a.span.end_line]
    if inside:
        # Inside a multi-line value (a list spread over lines): keep it above the argument.
        name = inside[0].key.text  # type: ignore[union-attr]
        target.args.setdefault(name, ArgTrivia()).leading.append(comment.text)
        return
    following = [a for a in stmt.args if a.key is not None and a.span.line > comment.line]
    if following:
        name = following[0].key.text  # type: ignore[union-attr]
        target.args.setdefault(name, ArgTrivia()).leading.append(comment.text)
        return
    target.closing.append(comment.text)


def rewrite_source(text: str, edit: Callable[[Graph], None], file: str | None = None,
                   catalog: Catalog | None = None) -> str:
    """Change a DSL file through the IR and print it back canonically, comments kept.

    Args:
        text: The source.
        edit: Changes the graph in place (through :class:`Graph` methods); the statements'
            order, names and comments stay as written.
        file: The path, for error locations.
        catalog: Node schemas; the built-in catalogue when None.

    Raises:
        WorkflowErrors: The file does not parse, or a name does not resolve.
    """
    module = parse_module(text, file, with_comments=True)
    lowering = Lowering(module, catalog or default_catalog(), file, check_types=False)
    graph = lowering.run()
    edit(graph)
    trivia, footer = attach_comments(module, lowering.keys)
    return print_graph(graph, order=lowering.keys, comments=trivia, footer=footer)


def format_source(text: str, file: str | None = None, catalog: Catalog | None = None) -> str:
    """The canonical layout of a DSL file, comments kept.

    Args:
        text: The source.
        file: The path, for error locations.
        catalog: Node schemas; the built-in catalogue when None.

    Raises:
        WorkflowErrors: The file does not parse, or a name does not resolve.
    """
    return rewrite_source(text, lambda graph: None, file, catalog)
