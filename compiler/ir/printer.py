"""The canonical DSL printer: ``str(graph)`` for every graph, log line and error.

Contract: :func:`print_graph` is deterministic (the same graph always prints the same text) and
idempotent through the parser (``print(parse(print(g))) == print(g)``), and what it prints parses
back to the same graph: ids, titles, params, outputs and input order are kept, so
JSON → DSL → JSON is lossless.

Layout (``comfyc fmt`` applies the same rules and keeps comments, see ``frontends/dsl/format.py``):

* params first, then the nodes in graph order (topological), then ``output`` declarations,
  separated by one blank line;
* ``@id`` only where the id was written (or read from JSON), ``@title(...)`` only when it differs
  from what an export would write anyway (the class's display name);
* a call fits on one line of at most 100 characters, else one argument per line with a trailing
  comma; inputs keep their order;
* literals are JSON: floats print with ``repr`` (``0.7000000000000001`` survives), ints stay ints,
  strings use JSON escapes, and multi-line strings print raw (``\"\"\"...\"\"\"``) when they can.

Binding names, first rule that applies:

1. the name written in the DSL (kept in ``node.meta["dsl"]["bind"]``, also through JSON's
   ``_meta.dsl``), when it is still a valid, unshadowed name at that point;
2. a name from the node class (``ckpt``, ``sampler``, ``latent``, ``image`` …);
3. for conditioning, the input it feeds (``positive``, ``negative``);
4. the lowercased output name (``model``, ``mask``).

A multi-output node without written names binds one handle (``ckpt``) and is read through
``ckpt.MODEL``. Clashes get ``_<id>`` (``sampler_12``): suffixes from ids stay stable when other
nodes are added, counters would not. Generated names are never rebound.

Example (the canonical form of ComfyUI's default workflow)::

    @4 ckpt = CheckpointLoaderSimple(ckpt_name="v1-5-pruned-emaonly.safetensors")
    @5 latent = EmptyLatentImage(width=512, height=512, batch_size=1)
    @6 positive = CLIPTextEncode(text="a cat", clip=ckpt.CLIP)
    ...
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .core import MISSING, Graph, Node, Param, Value

__all__ = [
    "print_graph", "default_title", "format_literal", "format_string", "is_identifier",
    "RESERVED_NAMES", "StmtTrivia", "ArgTrivia", "StmtKey", "MAX_WIDTH",
]

#: Line width the printer aims for.
MAX_WIDTH = 100

#: Names that can never be binding names (keywords and the discard name).
RESERVED_NAMES = frozenset({"param", "output", "true", "false", "null", "_"})

#: ``("param", name)``, ``("node", node_id)`` or ``("output", name)``.
StmtKey = tuple[str, str]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CANONICAL_INT = re.compile(r"(0|[1-9][0-9]*)\Z")
_SURROGATE = re.compile("[\ud800-\udfff]")
_RAW_FORBIDDEN = re.compile(r'"""|[\x00-\x08\x0b-\x1f\x7f\u2028\u2029\ud800-\udfff]')

def _class_binding(class_type: str) -> str | None:
    """The binding name the node registry prefers for a class (rule 2), if any."""
    from comfyc.runtime.nodes import registry

    node = registry().get(class_type)
    return node.binding if node is not None else None


@dataclass(slots=True)
class ArgTrivia:
    """Comments around one argument of a call (the formatter fills these).

    Attributes:
        leading: Comment lines above the argument (``""`` for a blank line).
        trailing: A comment at the end of the argument's line.
    """

    leading: list[str] = field(default_factory=list)
    trailing: str | None = None


@dataclass(slots=True)
class StmtTrivia:
    """Comments and blank lines around one statement.

    Attributes:
        leading: Lines above the statement: comments, or ``""`` for a blank line.
        trailing: A comment at the end of the statement's last line.
        args: Comments inside a call, by input name.
        closing: Comments inside a call after its last argument.
    """

    leading: list[str] = field(default_factory=list)
    trailing: str | None = None
    args: dict[str, ArgTrivia] = field(default_factory=dict)
    closing: list[str] = field(default_factory=list)


def is_identifier(name: str) -> bool:
    """True when ``name`` can be written bare in the DSL (ASCII identifier, not a keyword)."""
    return bool(_IDENT.match(name)) and name not in RESERVED_NAMES


def default_title(class_type: str) -> str:
    """The title an export writes for a node without one: the class's display name."""
    from ..catalog import default_catalog  # Lazy: the catalogue imports the IR.

    schema = default_catalog().get(class_type)
    return schema.display_name if schema is not None else class_type


def format_string(text: str, *, allow_raw: bool = False) -> str:
    """A string literal: JSON escapes, or raw ``\"\"\"...\"\"\"`` for multi-line text.

    The raw form is used only for text with a newline inside, none at either end (those
    read better escaped), no ``\"\"\"`` and no control characters other than tab; the parser
    strips exactly the one newline the printer adds after the opening and before the closing
    delimiter, so the text comes back unchanged.
    """
    if (allow_raw and "\n" in text and not text.startswith("\n") and not text.endswith("\n")
            and not _RAW_FORBIDDEN.search(text)):
        return f'"""\n{text}\n"""'
    out = json.dumps(text, ensure_ascii=False)
    if _SURROGATE.search(out):
        # NOTE: lone surrogates (from \ud800 escapes in JSON) cannot be written as UTF-8.
        out = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)
    return out


def format_literal(value: Any, *, allow_raw: bool = False) -> str:
    """A JSON value as DSL text (floats with ``repr``, ints exact, bools as true/false)."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return format_string(value, allow_raw=allow_raw)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{format_string(str(k))}: {format_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return format_string(str(value))


def _format_name(name: str) -> str:
    """A class or input name: bare when it is an identifier, else quoted."""
    return name if is_identifier(name) else format_string(name)


def _format_id(node_id: str) -> str:
    return f"@{node_id}" if _CANONICAL_INT.match(node_id) else f"@{format_string(node_id)}"


def _sanitize(text: str) -> str:
    """Turn any text into a lowercase identifier (``Upscale Image`` → ``upscale_image``)."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)
    text = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").lower()
    text = re.sub(r"_+", "_", text)
    if not text:
        return "value"
    if text[0].isdigit():
        text = "v_" + text
    return text


# ------------------------------------------------------------------ name choice
class _Namer:
    """Chooses binding names in statement order (see the module docstring)."""

    def __init__(self, graph: Graph, items: list[tuple[str, Any]]) -> None:
        self.graph = graph
        self.reserved = set(RESERVED_NAMES) | set(graph.params)
        self.position: dict[int, int] = {}
        for i, (kind, obj) in enumerate(items):
            if kind == "node":
                self.position[id(obj)] = i
        self.output_pos: dict[int, int] = {}
        for i, (kind, obj) in enumerate(items):
            if kind == "output":
                value = graph.outputs.get(obj)
                if value is not None:
                    key = id(value)
                    self.output_pos[key] = max(self.output_pos.get(key, -1), i)
        self.live: dict[str, int] = {}  # name -> last position its current holder is used
        self.ever: set[str] = set()
        self.ref: dict[int, str] = {}  # id(value) -> how to refer to it
        self.binding: dict[int, str] = {}  # id(node) -> "targets = " text

    def last_use(self, value: Value) -> int:
        last = self.output_pos.get(id(value), -1)
        for use in value._uses:
            last = max(last, self.position.get(id(use.node), -1))
        return last

    def used(self, value: Value) -> bool:
        return bool(value._uses) or id(value) in self.output_pos

    def can_claim(self, name: str, here: int, written: bool) -> bool:
        if not is_identifier(name) or name in self.reserved:
            return False
        if written:
            # A name written by the user may be rebound once its previous holder is dead.
            return self.live.get(name, -1) <= here
        return name not in self.ever

    def claim(self, name: str, last: int) -> str:
        self.live[name] = last
        self.ever.add(name)
        return name

    def fresh(self, base: str, node: Node, here: int) -> str:
        base = _sanitize(base)
        if self.can_claim(base, here, False):
            return base
        stem = f"{base}_{re.sub(r'[^A-Za-z0-9_]+', '_', node.id).strip('_') or 'n'}"
        if self.can_claim(stem, here, False):
            return stem
        n = 2
        while not self.can_claim(f"{stem}_{n}", here, False):
            n += 1
        return f"{stem}_{n}"

    def base_name(self, value: Value) -> str:
        node = value.producer
        if len(node.outputs) == 1 and (preferred := _class_binding(node.class_type)):
            return preferred
        if value.type == "CONDITIONING" and value._uses:
            names = {use.input_name for use in value._uses}
            if len(names) == 1:
                only = next(iter(names))
                if _IDENT.match(only):
                    return only
        return value.name.lower() if value.name else value.type.lower()

    def name_node(self, node: Node, here: int) -> None:
        outputs = node.outputs
        if not outputs:
            return
        bind = node.meta.get("dsl", {}).get("bind") if isinstance(node.meta.get("dsl"), dict) \
            else None
        # Written unpacking: keep it, fixing names that became invalid.
        if isinstance(bind, list) and len(bind) == len(outputs) and len(outputs) > 1:
            names: list[str] = []
            for value, name in zip(outputs, bind, strict=True):
                last = self.last_use(value)
                if (isinstance(name, str) and name != "_" and name not in names
                        and self.can_claim(name, here, True)):
                    names.append(self.claim(name, last))
                elif self.used(value):
                    names.append(self.claim(self.fresh(self.base_name(value), node, here), last))
                else:
                    names.append("_")
            for value, name in zip(outputs, names, strict=True):
                if name != "_":
                    self.ref[id(value)] = name
            self.binding[id(node)] = ", ".join(names) + " = "
            return
        if len(outputs) == 1:
            value = outputs[0]
            last = self.last_use(value)
            if isinstance(bind, str) and self.can_claim(bind, here, True):
                name = self.claim(bind, last)
            elif self.used(value):
                name = self.claim(self.fresh(self.base_name(value), node, here), last)
            else:
                return
            self.ref[id(value)] = name
            self.binding[id(node)] = f"{name} = "
            return
        # A handle for a multi-output node: refer to outputs as handle.NAME.
        last = max(self.last_use(v) for v in outputs)
        if isinstance(bind, str) and self.can_claim(bind, here, True):
            handle = self.claim(bind, last)
        elif any(self.used(v) for v in outputs):
            base = _class_binding(node.class_type) or _sanitize(node.class_type)
            handle = self.claim(self.fresh(base, node, here), last)
        else:
            return
        self.binding[id(node)] = f"{handle} = "
        counts: dict[str, int] = {}
        for value in outputs:
            counts[value.name] = counts.get(value.name, 0) + 1
        for value in outputs:
            if counts[value.name] == 1 and _IDENT.match(value.name):
                self.ref[id(value)] = f"{handle}.{value.name}"
            elif counts[value.name] == 1:
                self.ref[id(value)] = f"{handle}[{format_string(value.name)}]"
            else:
                self.ref[id(value)] = f"{handle}[{value.index}]"

    def value_text(self, value: Value) -> str:
        text = self.ref.get(id(value))
        if text is not None:
            return text
        # NOTE: only reached for a value whose producer is not printed (a broken graph);
        # print something that reads clearly rather than crash inside a debug dump.
        return f"<missing #{value.producer.id}[{value.index}]>"


# --------------------------------------------------------------------- printing
def _items(graph: Graph, order: Sequence[StmtKey] | None) -> list[tuple[str, Any]]:
    """The statements to print, as ``(kind, param | node | output name)``."""
    if order is None:
        return ([("param", p) for p in graph.params.values()]
                + [("node", n) for n in graph.nodes]
                + [("output", name) for name in graph.outputs])
    nodes = {n.id: n for n in graph.nodes}
    items: list[tuple[str, Any]] = []
    seen: set[StmtKey] = set()
    for kind, key in order:
        if (kind, key) in seen:
            continue
        seen.add((kind, key))
        if kind == "param" and key in graph.params:
            items.append(("param", graph.params[key]))
        elif kind == "node" and key in nodes:
            items.append(("node", nodes[key]))
        elif kind == "output" and key in graph.outputs:
            items.append(("output", key))
    # Anything the order does not mention goes where the default layout puts it.
    missing_params = [("param", p) for p in graph.params.values() if ("param", p.name) not in seen]
    missing_rest = [("node", n) for n in graph.nodes if ("node", n.id) not in seen] + [
        ("output", name) for name in graph.outputs if ("output", name) not in seen]
    return missing_params + items + missing_rest


def _ids_to_print(nodes: list[Node]) -> set[int]:
    """Nodes whose ``@id`` must be printed.

    A node whose id was not written in the DSL (``meta["dsl"]["auto_id"]``) prints without
    one only if the parser would give it the same id back; otherwise every id is printed.
    """
    explicit = [n for n in nodes if not _auto_id(n)]
    highest = 0
    for node in explicit:
        head = node.id.split(":")[0]
        if head.isdigit():
            highest = max(highest, int(head))
    expected = highest + 1
    for node in nodes:
        if not _auto_id(node):
            continue
        if node.id != str(expected):
            return {id(n) for n in nodes}
        expected += 1
    return {id(n) for n in explicit}


def _auto_id(node: Node) -> bool:
    dsl = node.meta.get("dsl")
    return isinstance(dsl, dict) and bool(dsl.get("auto_id"))


def _key(kind: str, obj: Any) -> StmtKey:
    """The statement key of a param, node or output name."""
    if kind == "param":
        return ("param", obj.name)
    if kind == "node":
        return ("node", obj.id)
    return ("output", obj)


def _comment_lines(lines: Sequence[str], indent: str) -> list[str]:
    return [f"{indent}{line}" if line else "" for line in lines]


def _with_trailing(line: str, comment: str | None) -> str:
    return f"{line}  {comment}" if comment else line


class _Printer:
    def __init__(self, graph: Graph, order: Sequence[StmtKey] | None,
                 comments: Mapping[StmtKey, StmtTrivia] | None, width: int) -> None:
        self.graph = graph
        self.items = _items(graph, order)
        self.comments = comments or {}
        self.width = width
        self.namer = _Namer(graph, self.items)
        self.show_id = _ids_to_print([obj for kind, obj in self.items if kind == "node"])

    def run(self, sections: bool, header: Sequence[str], footer: Sequence[str]) -> str:
        out: list[str] = list(_comment_lines(header, ""))
        previous = None
        for here, (kind, obj) in enumerate(self.items):
            if kind == "node":
                self.namer.name_node(obj, here)
            trivia = self.comments.get(_key(kind, obj))
            if sections and previous is not None and previous != kind:
                out.append("")
            previous = kind
            if trivia is not None:
                out.extend(_comment_lines(trivia.leading, ""))
            if kind == "param":
                lines = [self.param(obj)]
            elif kind == "node":
                lines = self.node(obj, trivia)
            else:
                lines = [self.output(obj)]
            if trivia is not None and trivia.trailing:
                lines[-1] = _with_trailing(lines[-1], trivia.trailing)
            out.extend(lines)
        out.extend(_comment_lines(footer, ""))
        # Blank lines: none at the start or end, never two in a row.
        cleaned: list[str] = []
        for line in out:
            if line == "" and (not cleaned or cleaned[-1] == ""):
                continue
            cleaned.append(line)
        while cleaned and cleaned[-1] == "":
            cleaned.pop()
        return "\n".join(cleaned) + "\n" if cleaned else ""

    def param(self, param: Param) -> str:
        text = f"param {param.name}: {param.type}"
        if param.default is not MISSING:
            text += f" = {format_literal(param.default, allow_raw=True)}"
        attrs = []
        if param.min is not None:
            attrs.append(f"min={format_literal(param.min)}")
        if param.max is not None:
            attrs.append(f"max={format_literal(param.max)}")
        if param.choices is not None:
            attrs.append(f"choices={format_literal(list(param.choices))}")
        if param.doc is not None:
            attrs.append(f"doc={format_literal(param.doc)}")
        if attrs:
            text += f" [{', '.join(attrs)}]"
        return text

    def output(self, name: str) -> str:
        ref = self.namer.value_text(self.graph.outputs[name])
        return f"output {name}" if ref == name else f"output {name} = {ref}"

    def input_text(self, value: Any) -> str:
        if isinstance(value, Value):
            return self.namer.value_text(value)
        if isinstance(value, Param):
            return value.name
        return format_literal(value, allow_raw=True)

    def node(self, node: Node, trivia: StmtTrivia | None) -> list[str]:
        decorators = []
        if id(node) in self.show_id:
            decorators.append(_format_id(node.id))
        if node.title is not None and node.title != default_title(node.class_type):
            decorators.append(f"@title({format_string(node.title)})")
        extra = node.meta.get("extra_inputs")
        if extra:
            decorators.append(f"@extra({format_literal(extra)})")
        api_meta = node.meta.get("api_meta")
        if api_meta:
            decorators.append(f"@meta({format_literal(api_meta)})")
        head = " ".join(decorators + [""]) + self.namer.binding.get(id(node), "")
        head += _format_name(node.class_type) + "("
        args = [(name, f"{_format_name(name)}={self.input_text(value)}")
                for name, value in node.inputs.items()]
        inner = bool(trivia and (trivia.closing or any(
            t.leading or t.trailing for t in trivia.args.values())))
        one_line = head + ", ".join(text for _, text in args) + ")"
        if not inner and "\n" not in one_line and len(one_line) <= self.width:
            return [one_line]
        if not args and not inner:
            return [one_line]
        lines = [head]
        for name, text in args:
            arg_trivia = trivia.args.get(name) if trivia else None
            if arg_trivia is not None:
                lines.extend(_comment_lines(arg_trivia.leading, "    "))
            line = f"    {text},"
            lines.append(_with_trailing(line, arg_trivia.trailing if arg_trivia else None))
        if trivia is not None:
            lines.extend(_comment_lines(trivia.closing, "    "))
        lines.append(")")
        # Multi-line raw strings sit inside one "line"; split so the list is real lines.
        return [part for line in lines for part in line.split("\n")]


def print_graph(graph: Graph, *, order: Sequence[StmtKey] | None = None,
                comments: Mapping[StmtKey, StmtTrivia] | None = None,
                header: Sequence[str] = (), footer: Sequence[str] = (),
                width: int = MAX_WIDTH) -> str:
    """Render the graph as canonical DSL text.

    Args:
        graph: The graph.
        order: Statement order as ``(kind, key)`` pairs (the formatter passes the source
            order); None for the canonical order: params, nodes, outputs, separated by a
            blank line.
        comments: Comments and blank lines to put around statements (the formatter's).
        header: Comment lines at the top of the file.
        footer: Comment lines at the end of the file.
        width: The line width calls are wrapped at.

    Returns:
        The text, ending in a newline (empty for an empty graph).
    """
    printer = _Printer(graph, order, comments, width)
    return printer.run(order is None, header, footer)
