"""A recursive-descent fast path for well-formed DSL text.

``grammar.lark`` is the language's definition and Lark's LALR parser (:mod:`.parse`) is the
reference: it gives every positioned syntax error. Most files that are parsed are well formed,
though, and for them Lark's table-driven parser spends most of its time in per-token Python
bookkeeping. This module parses the same language with one regular expression for the tokens
and a hand-written descent over them, and builds exactly the AST that :mod:`.parse`'s callbacks
build (tests compare the two on every example, the corpus and generated workflows).

It never reports an error itself: at the first thing it does not expect it raises
:class:`Fallback`, and :func:`.parse.parse_module` parses the text again with Lark, which
reports the error with its usual position and wording. Token-level problems (a bad escape, a
number out of range) are recorded by the shared decoders, as in the Lark path.

The keyword rules follow Lark's contextual lexing of ``grammar.lark``: ``param`` and ``output``
are keywords only at the start of a statement; ``true``, ``false`` and ``null`` only where a
value can start; everywhere else they are names. A number is a node id right after ``@`` and
inside ``name[...]``.
"""

from __future__ import annotations

import re
from typing import Any

from . import ast

__all__ = ["Fallback", "parse_statements"]


class Fallback(Exception):
    """The fast path met something it does not handle; the Lark parser takes over."""


# Whitespace and comments (skipped atomically), then one token. The alternatives are tried in
# the order Lark's lexer tries the grammar's terminals (a raw string before a plain one); the
# terminals that can start at the same character are only those two and the keyword/name pairs.
_TOKEN = re.compile(
    r'(?>[ \t\f\r\n]*(?:#[^\n]*+[ \t\f\r\n]*)*)'  # Atomic: never split a comment.
    r'(?:(?P<L>"""(?:(?!""")[\s\S])*""")'
    r'|(?P<S>"(?:[^"\\\n]|\\.)*")'
    r"|(?P<W>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<N>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<P>[()\[\]{},=:.@]))")
_TRAILING = re.compile(r"[ \t\f\r\n]*(?:#[^\n]*[ \t\f\r\n]*)*\Z")
_ID_INT = re.compile(r"0|[1-9][0-9]*")
_CONSTANTS = {"true": True, "false": False, "null": None}

#: Token kinds: "L" raw string, "S" string, "W" word, "N" number, or the punctuation itself.
_Tok = tuple[str, str, ast.Span]


def _tokens(text: str) -> list[_Tok]:
    """Every token of ``text`` with Lark's positions; :class:`Fallback` on a lexing error."""
    out: list[_Tok] = []
    append = out.append
    match = _TOKEN.match
    count = text.count
    rfind = text.rfind
    Span = ast.Span
    pos, end = 0, len(text)
    line, line_start = 1, 0
    while pos < end:
        found = match(text, pos)
        if found is None:
            if _TRAILING.match(text, pos):
                break
            raise Fallback
        kind = found.lastgroup
        start = found.start(kind)
        stop = found.end()
        newlines = count("\n", pos, start)
        if newlines:
            line += newlines
            line_start = rfind("\n", pos, start) + 1
        value = found.group(kind)
        if kind == "P":
            kind = value
        elif kind == "L" and "\n" in value:
            first_line, col = line, start - line_start + 1
            line += value.count("\n")
            line_start = value.rindex("\n") + start + 1
            append((kind, value, Span(first_line, col, line, stop - line_start + 1)))
            pos = stop
            continue
        append((kind, value, Span(line, start - line_start + 1, line, stop - line_start + 1)))
        pos = stop
    append(("$", "", Span(line, 1, line, 1)))
    return out


class _Parser:
    """Descent over the token list; every method mirrors one rule of ``grammar.lark``."""

    __slots__ = ("toks", "i", "decode_string", "decode_number", "decode_long_string")

    def __init__(self, toks: list[_Tok], decoders: tuple[Any, Any, Any]) -> None:
        self.toks = toks
        self.i = 0
        self.decode_string, self.decode_number, self.decode_long_string = decoders

    # ------------------------------------------------------------------ helpers
    def expect(self, kind: str) -> ast.Span:
        kind_, _, span = self.toks[self.i]
        if kind_ != kind:
            raise Fallback
        self.i += 1
        return span

    def name(self, tok: _Tok) -> ast.Name:
        """``NAME`` or ``STRING`` as a name (what :func:`.parse._name` gives)."""
        kind, value, span = tok
        if kind == "W":
            return ast.Name(value, span)
        if kind == "S":
            return ast.Name(self.decode_string(value, span), span, quoted=True)
        raise Fallback

    def scalar(self, tok: _Tok) -> ast.Expr:
        """A scalar literal token in value position."""
        kind, value, span = tok
        if kind == "S":
            return ast.Literal(self.decode_string(value, span), span)
        if kind == "N":
            return ast.Literal(self.decode_number(value, span), span)
        if kind == "L":
            return ast.Literal(self.decode_long_string(value), span, raw=True)
        if kind == "W" and value in _CONSTANTS:
            return ast.Literal(_CONSTANTS[value], span)
        raise Fallback

    # --------------------------------------------------------------- statements
    def module(self) -> list[ast.Stmt]:
        toks = self.toks
        out: list[ast.Stmt] = []
        while True:
            kind, value, span = toks[self.i]
            if kind == "$":
                return out
            if kind == "W" and value == "param":
                self.i += 1
                out.append(self.param_decl(span))
            elif kind == "W" and value == "output":
                self.i += 1
                out.append(self.output_decl(span))
            else:
                out.append(self.node_stmt())

    def param_decl(self, kw: ast.Span) -> ast.ParamDecl:
        toks = self.toks
        name_tok = toks[self.i]
        if name_tok[0] != "W":
            raise Fallback
        self.i += 1
        self.expect(":")
        type_tok = toks[self.i]
        if type_tok[0] != "W":
            raise Fallback
        self.i += 1
        end = type_tok[2]
        default = None
        attrs: list[tuple[ast.Name, ast.Expr]] = []
        if toks[self.i][0] == "=":
            self.i += 1
            default = self.literal()
            end = default.span
        if toks[self.i][0] == "[":
            self.i += 1
            while toks[self.i][0] != "]":
                key_tok = toks[self.i]
                if key_tok[0] != "W":
                    raise Fallback
                self.i += 1
                self.expect("=")
                attrs.append((ast.Name(key_tok[1], key_tok[2]), self.literal()))
                if toks[self.i][0] == ",":
                    self.i += 1
                elif toks[self.i][0] != "]":
                    raise Fallback
            end = self.expect("]")
        return ast.ParamDecl(ast.Name(name_tok[1], name_tok[2]),
                             ast.Name(type_tok[1], type_tok[2]), default, attrs, kw.to(end))

    def output_decl(self, kw: ast.Span) -> ast.OutputDecl:
        toks = self.toks
        name_tok = toks[self.i]
        if name_tok[0] != "W":
            raise Fallback
        self.i += 1
        name = ast.Name(name_tok[1], name_tok[2])
        end = name.span
        type_ = None
        ref = None
        if toks[self.i][0] == ":":
            self.i += 1
            type_tok = toks[self.i]
            if type_tok[0] != "W":
                raise Fallback
            self.i += 1
            type_ = ast.Name(type_tok[1], type_tok[2])
            end = type_.span
        if toks[self.i][0] == "=":
            self.i += 1
            base = toks[self.i]
            if base[0] != "W":
                raise Fallback
            self.i += 1
            ref = self.ref(base)
            if isinstance(ref, ast.CallExpr):
                raise Fallback
            end = ref.span
        return ast.OutputDecl(name, type_, ref, kw.to(end))

    def node_stmt(self) -> ast.NodeStmt:
        toks = self.toks
        decorators: list[ast.Decorator] = []
        while toks[self.i][0] == "@":
            decorators.append(self.decorator())
        targets: list[ast.Name] | None = None
        kind, value, span = toks[self.i]
        if kind == "W" and toks[self.i + 1][0] in (",", "="):
            targets = [ast.Name(value, span)]
            self.i += 1
            while toks[self.i][0] == ",":
                self.i += 1
                tok = toks[self.i]
                if tok[0] != "W":
                    raise Fallback
                targets.append(ast.Name(tok[1], tok[2]))
                self.i += 1
            self.expect("=")
        callee_tok = toks[self.i]
        if callee_tok[0] not in ("W", "S"):
            raise Fallback
        self.i += 1
        callee = self.name(callee_tok)
        lpar = self.expect("(")
        args, rpar = self.arguments()
        first = decorators[0].span if decorators else (targets[0].span if targets
                                                        else callee.span)
        return ast.NodeStmt(decorators, targets, callee, args, lpar, rpar, first.to(rpar))

    def decorator(self) -> ast.Decorator:
        toks = self.toks
        at = toks[self.i][2]
        kind, value, span = toks[self.i + 1]
        self.i += 2
        if kind == "N":
            if not _ID_INT.fullmatch(value):
                raise Fallback
            return ast.Decorator(None, [ast.Literal(value, span)], at.to(span))
        if kind == "S":
            return ast.Decorator(None, [ast.Literal(self.decode_string(value, span), span)],
                                 at.to(span))
        if kind != "W":
            raise Fallback
        self.expect("(")
        items: list[ast.Expr] = []
        while toks[self.i][0] != ")":
            items.append(self.literal())
            if toks[self.i][0] == ",":
                self.i += 1
            elif toks[self.i][0] != ")":
                raise Fallback
        rpar = self.expect(")")
        return ast.Decorator(ast.Name(value, span), items, at.to(rpar))

    def arguments(self) -> tuple[list[ast.Arg], ast.Span]:
        """``[args [","]] RPAR`` after a call's ``(``: the arguments and the ``)`` span."""
        toks = self.toks
        args: list[ast.Arg] = []
        while True:
            tok = toks[self.i]
            kind = tok[0]
            if kind == ")":
                self.i += 1
                return args, tok[2]
            if kind in ("W", "S") and toks[self.i + 1][0] == "=":
                if kind == "W" and tok[1] in _CONSTANTS:
                    raise Fallback  # `true=` : a keyword where Lark wants a value.
                self.i += 2
                key = self.name(tok)
                value = self.value()
                args.append(ast.Arg(key, value, key.span.to(value.span)))
            else:
                value = self.value()
                args.append(ast.Arg(None, value, value.span))
            kind = toks[self.i][0]
            if kind == ",":
                self.i += 1
            elif kind != ")":
                raise Fallback

    # -------------------------------------------------------------- expressions
    def value(self) -> ast.Expr:
        """``?value: literal | ref | call``."""
        toks = self.toks
        tok = toks[self.i]
        kind = tok[0]
        self.i += 1
        if kind == "W":
            if tok[1] in _CONSTANTS:
                return ast.Literal(_CONSTANTS[tok[1]], tok[2])
            return self.ref(tok)
        if kind == "S" and toks[self.i][0] == "(":
            return self.call(tok)
        if kind == "[":
            return self.list_expr(tok[2])
        if kind == "{":
            return self.object_expr(tok[2])
        return self.scalar(tok)

    def literal(self) -> ast.Expr:
        """``?literal``: scalars, lists (whose items are values) and objects."""
        tok = self.toks[self.i]
        self.i += 1
        kind = tok[0]
        if kind == "[":
            return self.list_expr(tok[2])
        if kind == "{":
            return self.object_expr(tok[2])
        return self.scalar(tok)

    def ref(self, base: _Tok) -> ast.Expr:
        """A bare name, ``name.OUT``, ``name[INDEX]`` / ``name["OUT"]`` or a nested call."""
        toks = self.toks
        kind = toks[self.i][0]
        if kind == ".":
            key_tok = toks[self.i + 1]
            if key_tok[0] != "W":
                raise Fallback
            self.i += 2
            return ast.OutputRef(ast.Name(base[1], base[2]), key_tok[1], False, key_tok[2],
                                 base[2].to(key_tok[2]))
        if kind == "[":
            key_kind, key_value, key_span = toks[self.i + 1]
            self.i += 2
            close = self.expect("]")
            if key_kind == "N":
                if not _ID_INT.fullmatch(key_value):
                    raise Fallback
                key: str | int = int(key_value)
                by_index = True
            elif key_kind == "S":
                key = self.decode_string(key_value, key_span)
                by_index = False
            else:
                raise Fallback
            return ast.OutputRef(ast.Name(base[1], base[2]), key, by_index, key_span,
                                 base[2].to(close))
        if kind == "(":
            return self.call(base)
        return ast.NameRef(base[1], base[2])

    def call(self, callee_tok: _Tok) -> ast.CallExpr:
        callee = self.name(callee_tok)
        self.expect("(")
        _, rpar = self.arguments()
        return ast.CallExpr(callee, callee.span.to(rpar))

    def list_expr(self, open_span: ast.Span) -> ast.ListExpr:
        toks = self.toks
        items: list[ast.Expr] = []
        while toks[self.i][0] != "]":
            items.append(self.value())
            if toks[self.i][0] == ",":
                self.i += 1
            elif toks[self.i][0] != "]":
                raise Fallback
        close = self.expect("]")
        return ast.ListExpr(items, open_span.to(close))

    def object_expr(self, open_span: ast.Span) -> ast.ObjectExpr:
        toks = self.toks
        pairs: list[tuple[ast.Name, ast.Expr]] = []
        while toks[self.i][0] != "}":
            key_tok = toks[self.i]
            if key_tok[0] != "S":
                raise Fallback
            self.i += 1
            self.expect(":")
            pairs.append((self.name(key_tok), self.value()))
            if toks[self.i][0] == ",":
                self.i += 1
            elif toks[self.i][0] != "}":
                raise Fallback
        close = self.expect("}")
        return ast.ObjectExpr(pairs, open_span.to(close))


def parse_statements(text: str, decoders: tuple[Any, Any, Any]) -> list[ast.Stmt]:
    """The statements of well-formed ``text``; :class:`Fallback` when anything is off.

    ``decoders`` are ``(decode_string(text, span), decode_number(text, span),
    decode_long_string(text))``: the Lark path's token decoders, so that both paths decode and
    record token-level errors the same way.
    """
    return _Parser(_tokens(text), decoders).module()
