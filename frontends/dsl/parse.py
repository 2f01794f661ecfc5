"""DSL text → syntax tree (:mod:`.ast`), with positioned, readable syntax errors.

The grammar lives in ``grammar.lark`` (LALR(1), contextual lexer). The AST is built by Lark's
inline callbacks, so no parse tree is materialised: parsing is one linear pass over the tokens.

Syntax errors are rewritten into the house format (``FILE:LINE:COL: error: ...``):

* Lark's terminal names become words (``RPAR`` → ``')'``, ``NAME`` → ``a name``);
* a missing ``)``/``]``/``}`` is reported where it belongs — right after the last token of the
  unclosed call — with a note naming the opening bracket, not at the next statement's first
  token (where an LALR parser notices it, since newlines are insignificant);
* end-of-file positions are computed here (Lark reports the last token's position or -1);
* an unterminated ``"...`` or ``\"\"\"...`` string and bad JSON escapes get their own messages.

Token-level problems (bad escapes, numbers out of range) are collected, so several are reported
at once; a grammar error stops the parse.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.lexer import Lexer

from comfyc.compiler.errors import DslSyntaxError, WorkflowError, WorkflowErrors
from comfyc.compiler.ir import SourceLoc

from . import ast, fast

__all__ = ["parse_module", "scan_tokens", "ScanToken", "KEYWORDS"]

#: Words that are keywords somewhere in the grammar; never usable as binding names.
KEYWORDS = frozenset({"param", "output", "true", "false", "null"})

_GRAMMAR = Path(__file__).with_name("grammar.lark")

# Thread-local sink for token-level errors found while the (shared) parser runs.
_state = threading.local()


def _span(tok: Token) -> ast.Span:
    return ast.Span(tok.line, tok.column, tok.end_line, tok.end_column)  # type: ignore[arg-type]


def _loc(file: str | None, span: ast.Span) -> SourceLoc:
    return SourceLoc(file, span.line, span.col, span.end_line, span.end_col)


def _token_error(message: str, span: ast.Span, *, help: str | None = None,
                 notes: list[str] | None = None) -> None:
    """Record a token-level error; the parse goes on so every such problem is reported."""
    _state.errors.append(DslSyntaxError(message, _loc(_state.file, span), help=help,
                                        notes=notes or []))


_JSON_ESCAPES = '\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX'


def decode_string(tok: Token) -> str:
    """Decode a ``"..."`` token with JSON's escape rules; record an error for a bad escape."""
    return decode_string_at(str(tok), _span(tok))


def decode_string_at(text: str, span: ast.Span) -> str:
    """:func:`decode_string` of the token ``text`` found at ``span``."""
    if "\\" not in text:
        return text[1:-1]
    try:
        return str(json.loads(text, strict=False))
    except json.JSONDecodeError as exc:
        # NOTE: exc.pos indexes the token text; point at the offending escape itself.
        pos = text.rfind("\\", 0, exc.pos + 1) if text[exc.pos:exc.pos + 1] != "\\" else exc.pos
        escape = text[pos:pos + 2]
        if escape == "\\u":
            escape = text[pos:pos + 6].split('"')[0]
            message = f"invalid escape '{escape}' in \"...\" string: \\u needs 4 hex digits"
        else:
            message = (f"invalid escape '{escape}' in \"...\" string "
                       f"(JSON escapes only: {_JSON_ESCAPES})")
        col = span.col + pos
        _token_error(message, ast.Span(span.line, col, span.line, col + len(escape)),
                     help=f"write '\\{escape}' for a literal backslash, or use a "
                          f"\"\"\"raw string\"\"\" (no escapes)")
        return text[1:-1]


def decode_long_string(text: str) -> str:
    """Decode a raw ``\"\"\"...\"\"\"`` token: strip one newline after/before the delimiters."""
    body = text[3:-3]
    body = body.removeprefix("\n")
    body = body.removesuffix("\n")
    return body


def decode_number(tok: Token) -> int | float:
    """An ``int`` when written without ``.``/exponent (seeds stay exact), else a ``float``."""
    return decode_number_at(str(tok), _span(tok))


def decode_number_at(text: str, span: ast.Span) -> int | float:
    """:func:`decode_number` of the token ``text`` found at ``span``."""
    if "." in text or "e" in text or "E" in text:
        value = float(text)
        if not math.isfinite(value):
            _token_error(f"number {text} is out of range for a 64-bit float", span,
                         help="JSON numbers must be finite")
            return 0.0
        return value
    return int(text)


def _name(tok: Token) -> ast.Name:
    if tok.type == "STRING":
        return ast.Name(decode_string(tok), _span(tok), quoted=True)
    return ast.Name(str(tok), _span(tok))


_CONSTANTS = {"TRUE": True, "FALSE": False, "NULL": None}


def _expr(item: Any) -> ast.Expr:
    """An expression from a callback child: scalars and bare names arrive as tokens."""
    if not isinstance(item, Token):
        return item  # type: ignore[no-any-return]
    kind = item.type
    if kind == "NAME":
        return ast.NameRef(str(item), _span(item))
    if kind == "STRING":
        return ast.Literal(decode_string(item), _span(item))
    if kind == "NUMBER":
        return ast.Literal(decode_number(item), _span(item))
    if kind == "LONG_STRING":
        return ast.Literal(decode_long_string(str(item)), _span(item), raw=True)
    return ast.Literal(_CONSTANTS[kind], _span(item))


class _Attrs(list):  # type: ignore[type-arg]
    """Marks the ``[attr=...]`` list of a param (to tell it from the default)."""


class _Targets(list):  # type: ignore[type-arg]
    """Marks the bound names of a node statement."""


class _BuildAst(Transformer):  # type: ignore[type-arg]
    """Lark inline callbacks: one method per grammar rule, children in, AST object out."""

    # ------------------------------------------------------------------ statements
    def start(self, children: list[Any]) -> list[ast.Stmt]:
        return children

    def param_decl(self, c: list[Any]) -> ast.ParamDecl:
        kw, name, type_ = c[0], c[1], c[2]
        default = None
        attrs: list[tuple[ast.Name, ast.Expr]] = []
        end = _span(type_)
        for item in c[3:]:
            if isinstance(item, _Attrs):
                attrs = list(item[1:-1])
                end = _span(item[-1])
            else:
                default = _expr(item)
                end = default.span
        return ast.ParamDecl(_name(name), _name(type_), default, attrs, _span(kw).to(end))

    def attrs(self, c: list[Any]) -> _Attrs:
        return _Attrs(c)

    def attr(self, c: list[Any]) -> tuple[ast.Name, ast.Expr]:
        return (_name(c[0]), _expr(c[1]))

    def output_decl(self, c: list[Any]) -> ast.OutputDecl:
        kw, name = c[0], c[1]
        type_ = None
        ref = None
        end = _span(name)
        for item in c[2:]:
            if isinstance(item, Token):
                type_ = _name(item)
                end = type_.span
            else:
                ref = item
                end = item.span
        return ast.OutputDecl(_name(name), type_, ref, _span(kw).to(end))

    def output_ref(self, c: list[Any]) -> ast.Expr:
        return _expr(c[0])

    def node_stmt(self, c: list[Any]) -> ast.NodeStmt:
        decorators: list[ast.Decorator] = []
        targets: list[ast.Name] | None = None
        i = 0
        while isinstance(c[i], ast.Decorator):
            decorators.append(c[i])
            i += 1
        if isinstance(c[i], _Targets):
            targets = list(c[i])
            i += 1
        callee: ast.Name = c[i]
        lpar, rpar = c[i + 1], c[-1]
        args: list[ast.Arg] = c[i + 2] if len(c) > i + 3 else []
        first = decorators[0].span if decorators else (targets[0].span if targets
                                                        else callee.span)
        return ast.NodeStmt(decorators, targets, callee, args, _span(lpar), _span(rpar),
                            first.to(_span(rpar)))

    def id_decorator(self, c: list[Any]) -> ast.Decorator:
        at, tok = c
        value: Any = decode_string(tok) if tok.type == "STRING" else str(tok)
        return ast.Decorator(None, [ast.Literal(value, _span(tok))], _span(at).to(_span(tok)))

    def attr_decorator(self, c: list[Any]) -> ast.Decorator:
        at, name = c[0], c[1]
        return ast.Decorator(_name(name), [_expr(a) for a in c[3:-1]], _span(at).to(_span(c[-1])))

    def targets(self, c: list[Token]) -> _Targets:
        return _Targets(_name(t) for t in c)

    def callee(self, c: list[Token]) -> ast.Name:
        return _name(c[0])

    def args(self, c: list[Any]) -> list[ast.Arg]:
        if len(c) == 1:
            return [c[0]]
        c[0].append(c[1])
        return c[0]  # type: ignore[no-any-return]

    def kwarg(self, c: list[Any]) -> ast.Arg:
        key = _name(c[0])
        value = _expr(c[1])
        return ast.Arg(key, value, key.span.to(value.span))

    def positional(self, c: list[Any]) -> ast.Arg:
        value = _expr(c[0])
        return ast.Arg(None, value, value.span)

    def call(self, c: list[Any]) -> ast.CallExpr:
        callee = c[0]
        return ast.CallExpr(callee, callee.span.to(_span(c[-1])))

    # ---------------------------------------------------------------- references
    def output_by_name(self, c: list[Token]) -> ast.OutputRef:
        base, key = c
        return ast.OutputRef(_name(base), str(key), False, _span(key),
                             _span(base).to(_span(key)))

    def output_by_key(self, c: list[Token]) -> ast.OutputRef:
        base, key, close = c
        if key.type == "STRING":
            value: str | int = decode_string(key)
            by_index = False
        else:
            value = int(key)
            by_index = True
        return ast.OutputRef(_name(base), value, by_index, _span(key),
                             _span(base).to(_span(close)))

    # ------------------------------------------------------------------ literals
    def list(self, c: list[Any]) -> ast.ListExpr:
        return ast.ListExpr([_expr(i) for i in c[1:-1]], _span(c[0]).to(_span(c[-1])))

    def object(self, c: list[Any]) -> ast.ObjectExpr:
        return ast.ObjectExpr(c[1:-1], _span(c[0]).to(_span(c[-1])))

    def pair(self, c: list[Any]) -> tuple[ast.Name, ast.Expr]:
        return (_name(c[0]), _expr(c[1]))


class _ContextualLexer(Lexer):
    """Lark's contextual lexing, in one regex pass over the text.

    The terminals and their precedence come from grammar.lark, as in Lark's own lexers; the
    context rule is the same as Lark's ``contextual`` lexer: a keyword (``param``, ``output``,
    ``true`` …) is a keyword only where the parser can accept it and a name elsewhere, and a
    number is a node id (``ID_INT``) where the parser wants one. Lark's version runs one
    scanner per parser state; this one scans once and retypes the few ambiguous tokens, which
    makes large files lex about twice as fast.
    """

    __future_interface__ = 2

    def __init__(self, conf: Any) -> None:
        terminals = sorted(conf.terminals, key=lambda t: (
            -t.priority, -t.pattern.max_width, -len(t.pattern.value), t.name))
        regexes = [t for t in terminals if t.pattern.type == "re"]
        #: String terminals that a regex terminal also matches: keywords, applied by value.
        self.keywords: dict[str, str] = {}
        union = []
        for term in terminals:
            value = term.pattern.value
            if term.pattern.type == "str" and any(
                    re.fullmatch(r.pattern.to_regexp(), value) for r in regexes):
                self.keywords[value] = term.name
                continue
            union.append(term)
        self.regexes = [(t.name, re.compile(t.pattern.to_regexp())) for t in regexes]
        self.pattern = re.compile("|".join(
            f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in union))
        self.ignore = frozenset(conf.ignore)
        self.terminals_by_name = conf.terminals_by_name

    def _retype(self, type_: str, value: str, accepts: Any) -> str:
        keyword = self.keywords.get(value)
        if keyword is not None and keyword in accepts:
            return keyword
        if type_ in accepts:
            return type_
        for name, regex in self.regexes:
            if name in accepts and regex.fullmatch(value):
                return name
        return type_

    def lex(self, lexer_state: Any, parser_state: Any) -> Iterator[Token]:
        text: str = lexer_state.text.text
        pos: int = lexer_state.text.start
        end: int = lexer_state.text.end
        states = parser_state.parse_conf.states
        match = self.pattern.match
        ignore = self.ignore
        line, line_start = 1, 0
        while pos < end:
            found = match(text, pos)
            if found is None:
                accepts = states[parser_state.position]
                raise UnexpectedCharacters(
                    text, pos, line, pos - line_start + 1,
                    allowed={t for t in accepts if t in self.terminals_by_name},
                    state=parser_state, terminals_by_name=self.terminals_by_name)
            type_ = found.lastgroup or ""
            value = found.group()
            stop = found.end()
            newlines = value.count("\n")
            if type_ in ignore:
                if newlines:
                    line += newlines
                    line_start = value.rindex("\n") + pos + 1
                pos = stop
                continue
            accepts = states[parser_state.position]
            if type_ not in accepts or type_ == "NAME":
                type_ = self._retype(type_, value, accepts)
            column = pos - line_start + 1
            if newlines:
                end_line = line + newlines
                line_start = value.rindex("\n") + pos + 1
                line = end_line
            else:
                end_line = line
            yield Token(type_, value, pos, end_line - newlines, column, end_line,
                        stop - line_start + 1, stop)
            pos = stop


_PARSER: Lark | None = None
_PARSER_LOCK = threading.Lock()


def _parser() -> Lark:
    """The LALR parser, built once (grammar analysis takes ~0.1 s)."""
    global _PARSER
    with _PARSER_LOCK:
        if _PARSER is None:
            _PARSER = Lark(_GRAMMAR.read_text(encoding="utf-8"), parser="lalr",
                           lexer=_ContextualLexer, transformer=_BuildAst(),
                           maybe_placeholders=False)
        return _PARSER


# ----------------------------------------------------------------------- scanning
class ScanToken:
    """A token of the light scanner used for comments and error recovery.

    Attributes:
        kind: ``comment``, ``string``, ``word`` (names, numbers) or ``punct``.
        text: The token text.
        start: Offset of the first character.
        end: Offset one past the last character.
    """

    __slots__ = ("kind", "text", "start", "end")

    def __init__(self, kind: str, text: str, start: int, end: int) -> None:
        self.kind = kind
        self.text = text
        self.start = start
        self.end = end

    def __repr__(self) -> str:
        return f"ScanToken({self.kind}, {self.text!r}, {self.start})"


_SCAN = re.compile(
    r'(?P<string>"""(?:(?!""")[\s\S])*"""|"(?:[^"\\\n]|\\.)*")'
    r"|(?P<comment>#[^\n]*)"
    r"|(?P<word>-?[A-Za-z0-9_.+-]+)"
    r"|(?P<space>\s+)"
    r"|(?P<punct>.)",
)


def scan_tokens(text: str, end: int | None = None) -> Iterator[ScanToken]:
    """Split text into strings, comments, words and punctuation (whitespace dropped).

    This is not the grammar's lexer: it only needs to agree with it on where strings and
    comments are, which is what comment placement and bracket matching rely on.
    """
    stop = len(text) if end is None else end
    for match in _SCAN.finditer(text, 0, stop):
        kind = match.lastgroup or "punct"
        if kind == "space":
            continue
        yield ScanToken(kind, match.group(), match.start(), match.end())


class _Positions:
    """Offset ↔ 1-based line/column conversion for one text."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def line_col(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, offset) - 1
        return line + 1, offset - self.starts[line] + 1

    def offset(self, line: int, col: int) -> int:
        return self.starts[line - 1] + col - 1


# ------------------------------------------------------------------ syntax errors
_PUNCT_WORDS = {
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'",
    "RBRACE": "'}'", "COMMA": "','", "EQUAL": "'='", "COLON": "':'", "DOT": "'.'",
    "AT": "'@'", "PARAM": "'param'", "OUTPUT": "'output'", "TRUE": "'true'",
    "FALSE": "'false'", "NULL": "'null'",
}
_TERMINAL_WORDS = {
    "NAME": "a name", "STRING": "a string", "LONG_STRING": 'a """raw string"""',
    "NUMBER": "a number", "ID_INT": "a node id", "$END": "the end of the file",
}
_VALUE_STARTS = {"STRING", "LONG_STRING", "NUMBER", "TRUE", "FALSE", "NULL", "LSQB", "LBRACE"}
_ORDER = ["COMMA", "RPAR", "RSQB", "RBRACE", "EQUAL", "COLON", "LPAR", "LSQB", "LBRACE",
          "DOT", "AT", "PARAM", "OUTPUT"]
_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_CLOSER_TERMINALS = {")": "RPAR", "]": "RSQB", "}": "RBRACE"}
_BRACKET_NAMES = {"(": "call", "[": "list", "{": "object"}


def _describe_expected(expected: set[str]) -> str:
    items: list[str] = []
    rest = set(expected)
    if {"STRING", "NUMBER", "LSQB", "LBRACE"} <= rest:
        rest -= _VALUE_STARTS
        items.append("a value")
        if "NAME" in rest:
            rest.discard("NAME")
            items[-1] = "a value or a name"
    for term in _ORDER:
        if term in rest:
            items.append(_PUNCT_WORDS.get(term, term))
            rest.discard(term)
    for term in sorted(rest):
        items.append(_TERMINAL_WORDS.get(term) or _PUNCT_WORDS.get(term) or term)
    if not items:
        return "something else"
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " or " + items[-1]


def _describe_token(tok: Token) -> str:
    kind = tok.type
    if kind == "$END":
        return "the end of the file"
    text = str(tok)
    if kind == "NAME":
        return f"name '{text}'"
    if kind in ("STRING", "LONG_STRING"):
        short = text if len(text) <= 30 else text[:27] + "..."
        return f"string {short}"
    if kind in ("NUMBER", "ID_INT"):
        return f"number {text}"
    if kind in _PUNCT_WORDS:
        return _PUNCT_WORDS[kind]
    return f"'{text}'"


def _open_brackets(text: str, end: int) -> list[ScanToken]:
    """The brackets still open at offset ``end`` (innermost last)."""
    stack: list[ScanToken] = []
    for tok in scan_tokens(text, end):
        if tok.kind != "punct":
            continue
        if tok.text in _CLOSERS:
            stack.append(tok)
        elif tok.text in (")", "]", "}") and stack and _CLOSERS[stack[-1].text] == tok.text:
            stack.pop()
    return stack


def _last_token(text: str, end: int) -> ScanToken | None:
    """The last string/word/punctuation token that ends at or before ``end``."""
    last = None
    for tok in scan_tokens(text, end):
        if tok.kind != "comment" and tok.end <= end:
            last = tok
    return last


def _unexpected_token(exc: UnexpectedToken, text: str, file: str | None,
                      pos: _Positions) -> DslSyntaxError:
    tok: Token = exc.token
    expected = set(exc.accepts or exc.expected)
    at_end = tok.type == "$END"
    start = len(text) if at_end else int(tok.start_pos or 0)
    prev = _last_token(text, start)
    found = _describe_token(tok)

    # A missing closing bracket: the parser only notices at the next token, often on the
    # next line; report it right after the last token of the unclosed construct instead.
    opened = _open_brackets(text, start)
    if opened:
        inner = opened[-1]
        closer = _CLOSERS[inner.text]
        prev_line = pos.line_col(prev.end - 1)[0] if prev else 0
        tok_line = pos.line_col(start)[0]
        if _CLOSER_TERMINALS[closer] in expected and prev is not None and (
            at_end or tok_line > prev_line
        ):
            line, col = pos.line_col(prev.end)
            oline, ocol = pos.line_col(inner.start)
            what = _BRACKET_NAMES[inner.text]
            where = ("the file ends here" if at_end else
                     f"the next token is {found} at {tok_line}:{tok.column}")
            return DslSyntaxError(
                f"missing '{closer}': the {what} opened at {oline}:{ocol} is not closed",
                SourceLoc(file, line, col, line, col + 1),
                notes=[f"'{closer}' belongs here; {where}"],
                help=f"add '{closer}' after the last "
                     f"{'argument' if inner.text == '(' else 'item'}")

    if at_end:
        end_off = prev.end if prev else len(text)
        line, col = pos.line_col(end_off)
        span = (line, col, line, col + 1)
    else:
        span = (tok.line, tok.column, tok.end_line, tok.end_column)
    loc = SourceLoc(file, *span)  # type: ignore[arg-type]
    help_text = None
    notes: list[str] = []
    shown = expected
    separators = expected & {"COMMA", "RPAR", "RSQB", "RBRACE"}
    if "COMMA" in separators and len(separators) > 1:
        # After a name, '(' '[' '.' would also continue it; they are noise in the message.
        shown = separators
    message = f"expected {_describe_expected(shown)}, found {found}"
    if (opened and _CLOSER_TERMINALS[_CLOSERS[opened[-1].text]] in expected
            and tok.type not in ("NAME", "STRING", "NUMBER")):  # Those want a ',' instead.
        oline, ocol = pos.line_col(opened[-1].start)
        notes.append(f"the {_BRACKET_NAMES[opened[-1].text]} opened at {oline}:{ocol} is not "
                     f"closed yet")

    if prev is not None and prev.text in ("param", "output") and tok.type in (
        "EQUAL", "COMMA"
    ):
        line, col = pos.line_col(prev.start)
        return DslSyntaxError(
            f"'{prev.text}' is a keyword at the start of a statement and cannot be a binding "
            f"name", SourceLoc(file, line, col, line, col + len(prev.text)),
            help=f"pick another name, e.g. {prev.text}_"
                 f"{'image' if prev.text == 'output' else 'value'}")
    if expected <= {"NAME", "STRING"} and prev is not None and prev.text == "=" and not opened:
        message = f"expected a node call after '=', found {found}"
        help_text = ("a statement binds the outputs of one node: `name = NodeClass(input=...)`; "
                     "to name a constant, declare `param NAME: TYPE = VALUE`")
    elif tok.type == "NAME" and str(tok) in ("NaN", "Infinity", "inf", "nan"):
        help_text = "JSON has no NaN or Infinity; use a finite number"
    elif "COMMA" in expected and tok.type in ("NAME", "STRING", "NUMBER") and opened:
        help_text = "separate arguments and items with ','"
    elif expected & _VALUE_STARTS and tok.type == "NAME" and "NAME" not in expected:
        help_text = "a param default is a literal (string, number, true/false/null, list)"
    return DslSyntaxError(message, loc, help=help_text, notes=notes)


def _unexpected_char(exc: UnexpectedCharacters, text: str, file: str | None,
                     pos: _Positions) -> DslSyntaxError:
    offset = exc.pos_in_stream
    line, col = exc.line, exc.column
    char = text[offset] if offset < len(text) else ""
    if char == '"' and text.startswith('""', max(0, offset - 2)) and offset >= 2:
        # The lexer took the first two quotes of `"""` for an empty string.
        offset -= 2
        col -= 2
    if text.startswith('"""', offset):
        return DslSyntaxError(
            'unterminated """raw string""": no closing """ before the end of the file',
            SourceLoc(file, line, col, line, col + 3),
            help='close it with """ (a raw string cannot contain """)')
    if char == '"':
        eol = text.find("\n", offset)
        eol = len(text) if eol < 0 else eol
        return DslSyntaxError(
            'unterminated string; "..." cannot span lines (use """...""" for multi-line '
            "prompts)", SourceLoc(file, line, col, line, col + max(1, eol - offset)),
            help='close the string with " on the same line, or write \\n for a line break')
    help_text = None
    if char == "'":
        help_text = "strings use double quotes: \"...\""
    elif char == "+":
        help_text = "JSON numbers have no leading '+'"
    elif char == ".":
        help_text = "write numbers with a leading digit (0.5, not .5)"
    elif char == "$":
        help_text = "params are referenced by their bare name (no '$')"
    allowed = set(exc.allowed or ())
    expected = f"; expected {_describe_expected(allowed)}" if allowed else ""
    return DslSyntaxError(f"unexpected character {json.dumps(char)}{expected}",
                          SourceLoc(file, line, col, line, col + 1), help=help_text)


def parse_module(text: str, file: str | None = None, *, with_comments: bool = False
                 ) -> ast.Module:
    """Parse DSL text into an :class:`~.ast.Module`.

    Args:
        text: The source. CRLF line ends are normalised to LF first (raw strings would
            otherwise pick up ``\\r``).
        file: The path for locations.
        with_comments: Collect comments too (the formatter needs them).

    Raises:
        WorkflowErrors: Syntax errors (each a :class:`DslSyntaxError`).
    """
    text = text.replace("\r\n", "\n")
    _state.errors = []
    _state.file = file
    try:
        statements = fast.parse_statements(text, _DECODERS)
    except fast.Fallback:
        # Not well formed (or a construct the fast path leaves to Lark): the reference
        # parser reads it again and reports every error where it is.
        _state.errors = []
        statements = _lark_statements(text, file)
    errors: list[WorkflowError] = list(_state.errors)
    _state.errors = []
    if errors:
        raise WorkflowErrors(errors)
    module = ast.Module(statements, source=text)
    if with_comments:
        module.comments = _comments(text)
    return module


_DECODERS = (decode_string_at, decode_number_at, decode_long_string)


def _lark_statements(text: str, file: str | None) -> list[ast.Stmt]:
    """Parse with Lark (the reference); syntax errors go to the thread's error list."""
    syntax: WorkflowError | None = None
    statements: list[ast.Stmt] = []
    try:
        statements = _parser().parse(text)
    except UnexpectedInput as exc:
        pos = _Positions(text)
        if isinstance(exc, UnexpectedToken):
            syntax = _unexpected_token(exc, text, file, pos)
        elif isinstance(exc, UnexpectedCharacters):
            syntax = _unexpected_char(exc, text, file, pos)
        else:  # pragma: no cover - UnexpectedEOF is not raised by the LALR parser.
            syntax = DslSyntaxError(f"unexpected end of input: {exc}", SourceLoc(file))
    if syntax is not None:
        _state.errors.append(syntax)
    return statements


def _comments(text: str) -> list[ast.Comment]:
    pos = _Positions(text)
    out = []
    for tok in scan_tokens(text):
        if tok.kind == "comment":
            line, col = pos.line_col(tok.start)
            out.append(ast.Comment(tok.text.rstrip(), line, col))
    return out
