"""The DSL's syntax tree: what a ``.cfy`` file says, with the exact span of every piece.

The parser (:mod:`.parse`) builds these objects straight from Lark's LALR callbacks; the lowering
(:mod:`.lower`) turns them into an IR :class:`~comfyc.compiler.ir.core.Graph`, and the formatter
(:mod:`.format`) reads their spans to put comments back next to the statements they belong to.

Every node carries a :class:`Span` (1-based line and column, ``end_col`` one past the last
character, as Lark counts them). Nothing here knows about the node catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "Span", "Name", "Literal", "ListExpr", "ObjectExpr", "NameRef", "OutputRef", "CallExpr",
    "Expr", "Arg", "Decorator", "ParamDecl", "OutputDecl", "NodeStmt", "Stmt", "Comment",
    "Module",
]


class Span(NamedTuple):
    """A source range: ``line:col`` up to ``end_line:end_col`` (exclusive end).

    A named tuple rather than a frozen dataclass: a large file creates one per token, and a
    tuple is several times cheaper to build.
    """

    line: int
    col: int
    end_line: int
    end_col: int

    def to(self, other: Span) -> Span:
        """The span from the start of this one to the end of ``other``."""
        return Span(self.line, self.col, other.end_line, other.end_col)

    def __str__(self) -> str:
        return f"{self.line}:{self.col}"


@dataclass(slots=True)
class Name:
    """A name as written: an identifier, or a quoted string for non-identifier names.

    Attributes:
        text: The decoded name (``CR Load LoRA`` for ``"CR Load LoRA"``).
        span: Where it is.
        quoted: True when written as a ``"..."`` string.
    """

    text: str
    span: Span
    quoted: bool = False


@dataclass(slots=True)
class Literal:
    """A scalar JSON value: string, number, ``true``/``false``/``null``.

    Attributes:
        value: The Python value (``int`` stays ``int``, floats keep their ``repr``).
        span: Where it is.
        raw: True for a ``\"\"\"raw\"\"\"`` string.
    """

    value: Any
    span: Span
    raw: bool = False


@dataclass(slots=True)
class ListExpr:
    """A ``[...]`` list literal (items may only be literals; lowering rejects links)."""

    items: list[Expr]
    span: Span


@dataclass(slots=True)
class ObjectExpr:
    """A ``{"key": value}`` object literal."""

    pairs: list[tuple[Name, Expr]]
    span: Span


@dataclass(slots=True)
class NameRef:
    """A bare name: a binding or a param."""

    name: str
    span: Span


@dataclass(slots=True)
class OutputRef:
    """One output of a bound node: ``ckpt.CLIP``, ``ckpt[1]`` or ``up["upscaled image"]``.

    Attributes:
        base: The bound name.
        key: The output name (str) or index (int).
        by_index: True for ``base[INT]``.
        key_span: Where the selector is.
        span: The whole reference.
    """

    base: Name
    key: str | int
    by_index: bool
    key_span: Span
    span: Span


@dataclass(slots=True)
class CallExpr:
    """A node call used as a value; the grammar takes it only so lowering can reject it."""

    callee: Name
    span: Span


Expr = Literal | ListExpr | ObjectExpr | NameRef | OutputRef | CallExpr


@dataclass(slots=True)
class Arg:
    """One argument of a node call: ``key=value``, or a (rejected) positional ``value``."""

    key: Name | None
    value: Expr
    span: Span


@dataclass(slots=True)
class Decorator:
    """``@3`` / ``@"42:0"`` (``name`` is None, ``args`` holds the id) or ``@title("x")``."""

    name: Name | None
    args: list[Expr]
    span: Span


@dataclass(slots=True)
class ParamDecl:
    """``param NAME: TYPE [= default] [attr=value, ...]``."""

    name: Name
    type: Name
    default: Expr | None
    attrs: list[tuple[Name, Expr]]
    span: Span


@dataclass(slots=True)
class OutputDecl:
    """``output NAME [: TYPE] [= ref]``."""

    name: Name
    type: Name | None
    ref: Expr | None
    span: Span


@dataclass(slots=True)
class NodeStmt:
    """``@decorators targets = Callee(args)``: one ComfyUI node.

    Attributes:
        decorators: ``@id`` and ``@title(...)`` style decorators, in order.
        targets: The bound names (``_`` included), or None for a bare call.
        callee: The class type.
        args: The arguments, in source order.
        lpar: Span of ``(``.
        rpar: Span of ``)``.
        span: From the first decorator (or target, or callee) to ``)``.
    """

    decorators: list[Decorator]
    targets: list[Name] | None
    callee: Name
    args: list[Arg]
    lpar: Span
    rpar: Span
    span: Span


Stmt = ParamDecl | OutputDecl | NodeStmt


@dataclass(frozen=True, slots=True)
class Comment:
    """A ``# ...`` comment (the text includes the ``#``)."""

    text: str
    line: int
    col: int


@dataclass(slots=True)
class Module:
    """A parsed ``.cfy`` file.

    Attributes:
        statements: The statements in source order.
        comments: Every comment, in source order (filled only when asked for).
        source: The (newline-normalised) text.
    """

    statements: list[Stmt]
    comments: list[Comment] = field(default_factory=list)
    source: str = ""
