"""Syntax tree → IR graph: name resolution, ids, and the checks only the DSL can make.

Contract: takes a parsed :class:`~.ast.Module` and the node catalogue, returns a
:class:`~comfyc.compiler.ir.core.Graph` whose every node, input and param carries its exact DSL
span (so the foundation's validator reports its findings at DSL positions), or raises
:class:`~comfyc.compiler.errors.WorkflowErrors` with every problem found.

Semantics (see ``reference/dsl-proposal.md`` §A.3):

* statements run in order; a name must be bound before use; rebinding a name is allowed,
  rebinding or shadowing a param is not;
* one name bound to a multi-output node is a *handle* (``ckpt.CLIP``, ``ckpt[1]``); several
  names unpack the outputs one to one (``_`` discards);
* inputs are passed by name only; literals are JSON values; links may not appear inside list
  or object literals; nested calls are rejected (one statement is one node and one id);
* ``@3``/``@"42:0"`` pin ComfyUI ids; nodes without one get ``max(numeric ids) + 1, +2, …`` in
  statement order; ``@title("...")`` sets ``_meta.title``; ``@extra({...})`` keeps inputs the
  node does not declare (ComfyUI ignores them) and ``@meta({...})`` other ``_meta`` keys, so a
  JSON workflow survives the trip through the DSL unchanged.

Checks made here, each with a fix: unknown node types and inputs (with close names),
positional arguments, unpacking counts, undefined or mis-selected names, link types (naming
where the linked name was bound), params feeding link inputs, duplicate ids and inputs. Ranges,
combos and missing inputs are the validator's job (``passes/validate.py``).

Before (DSL)::

    param seed: INT = 42
    model, clip, vae = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
    latent = KSampler(model=model, seed=seed, ...)

After (IR): a ``CheckpointLoaderSimple`` node ``"1"`` whose three output values feed node
``"2"`` (``KSampler``), whose ``seed`` input is the param ``seed``.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from comfyc.compiler.catalog import Catalog, NodeSchema
from comfyc.compiler.errors import SchemaError, TypeMismatchError, WorkflowError, WorkflowErrors
from comfyc.compiler.ir import (
    MISSING,
    Graph,
    GraphSource,
    Node,
    Param,
    SourceLoc,
    Value,
    is_compatible,
)
from comfyc.compiler.ir.types import LINK_TYPES, WIDGET_TYPES, python_type_name

from . import ast

__all__ = ["lower_module", "Lowering", "PARAM_TYPES", "DECORATORS", "StmtKey"]

#: Types a ``param`` may have (version 1: widget values only).
PARAM_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")

#: Decorators a node statement accepts, and what each takes.
DECORATORS = {
    "id": "the ComfyUI node id: @3 or @\"42:0\" (also @id(3))",
    "title": "the node title shown in ComfyUI (_meta.title): @title(\"Hires pass\")",
    "extra": "inputs the node does not declare, kept for ComfyUI: @extra({\"key\": value})",
    "meta": "other _meta keys kept for ComfyUI: @meta({\"key\": value})",
}

_PARAM_ATTRS = ("min", "max", "choices", "doc")

#: ``("param", name)``, ``("node", node_id)`` or ``("output", name)``: a statement's identity.
StmtKey = tuple[str, str]


class _Poison:
    """Stands for a value whose definition already failed (no cascade of errors)."""

    __slots__ = ()


_POISON = _Poison()


@dataclass(slots=True)
class _Binding:
    """What a name means at one point of the file."""

    kind: str  # "param", "value", "node" (a multi-output handle) or "poison"
    target: Any
    span: ast.Span
    via: str = ""  # for values: how it was bound ("unpacked", "single")


def _close(word: str, options: list[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    lowered = {o.lower(): o for o in options}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=cutoff)
    return [lowered[h] for h in hits]


def _did_you_mean(names: list[str]) -> str | None:
    if not names:
        return None
    return "did you mean " + " or ".join(f"'{n}'" for n in names) + "?"


def _outputs_text(node: Node) -> str:
    return ", ".join(v.name for v in node.outputs) or "none"


class Lowering:
    """Lowers one module; holds the graph, the statement keys and the errors.

    Args:
        module: The parsed file.
        catalog: Node schemas.
        file: The path for locations.
        check_types: Check link types here (with binding notes). The formatter turns this off:
            it only needs names to resolve.
    """

    def __init__(self, module: ast.Module, catalog: Catalog, file: str | None, *,
                 check_types: bool = True) -> None:
        self.module = module
        self.catalog = catalog
        self.file = file
        self.check_types = check_types
        self.graph = Graph(source=GraphSource(file=file, format="dsl"))
        self.errors: list[WorkflowError] = []
        #: Nodes lowered without some of their inputs because of an error (theirs or one
        #: they depend on): node id -> those inputs ("*": unknown or positional arguments,
        #: so any input may be the one meant); see :class:`WorkflowErrors`'s ``failed``.
        self._failed: dict[str, set[str]] = {}
        self._lost: set[str] = set()
        self.warnings: list[WorkflowError] = []
        self.env: dict[str, _Binding] = {}
        #: One key per statement, aligned with ``module.statements``.
        self.keys: list[StmtKey] = []
        self._bound_later: dict[str, ast.Span] = {}
        self._ids: dict[str, ast.Span] = {}
        self._next_id = 1

    # ------------------------------------------------------------------ helpers
    def loc(self, span: ast.Span, **kw: Any) -> SourceLoc:
        """A SourceLoc for a span of this file."""
        return SourceLoc(self.file, span.line, span.col, span.end_line, span.end_col, **kw)

    def where(self, span: ast.Span) -> str:
        """``file:line:col`` for notes."""
        return f"{self.file or '<input>'}:{span.line}:{span.col}"

    def error(self, cls: type[WorkflowError], message: str, span: ast.Span, **kw: Any
              ) -> None:
        """Record an error at a span."""
        self.errors.append(cls(message, self.loc(span), **kw))

    def source_text(self, span: ast.Span) -> str:
        """The source text of a span on one line (for fix-its)."""
        lines = self.module.source.split("\n")
        if span.line != span.end_line or span.line > len(lines):
            return "..."
        return lines[span.line - 1][span.col - 1:span.end_col - 1]

    # -------------------------------------------------------------------- driver
    def run(self) -> Graph:
        """Lower every statement; raise WorkflowErrors if anything was wrong."""
        self._prescan()
        for stmt in self.module.statements:
            if isinstance(stmt, ast.ParamDecl):
                self.keys.append(("param", stmt.name.text))
                self.param(stmt)
            elif isinstance(stmt, ast.OutputDecl):
                self.keys.append(("output", stmt.name.text))
                self.output(stmt)
            else:
                self.keys.append(("node", self.node(stmt)))
        for param in self.graph.params.values():
            if not param.uses():
                self.warnings.append(SchemaError(
                    f"param '{param.name}' is declared but never used; it will not survive "
                    f"export to ComfyUI JSON", param.loc, kind="unused_param",
                    help=f"use it as an input value (e.g. seed={param.name}) or remove it"))
        if self.errors:
            self.errors.sort(key=lambda e: (e.loc.line or 0, e.loc.col or 0) if e.loc else (0, 0))
            # The graph of the statements that did lower rides along: `comfyc check`
            # validates it too, so a file's every problem is reported at once.
            raise WorkflowErrors(self.errors, partial=self.graph, failed={
                node_id: frozenset(names) for node_id, names in self._failed.items()})
        self.graph.warnings = self.warnings
        return self.graph

    def _prescan(self) -> None:
        """Collect explicit ids (fresh ids start above them) and where names are bound."""
        highest = 0
        for stmt in self.module.statements:
            if isinstance(stmt, ast.NodeStmt):
                for name in stmt.targets or []:
                    self._bound_later.setdefault(name.text, name.span)
                for deco in stmt.decorators:
                    node_id = self._decorator_id(deco)
                    if node_id is None:
                        continue
                    head = node_id.split(":")[0]
                    if head.isdigit():
                        highest = max(highest, int(head))
            elif isinstance(stmt, ast.ParamDecl):
                self._bound_later.setdefault(stmt.name.text, stmt.name.span)
        self._next_id = highest + 1

    @staticmethod
    def _decorator_id(deco: ast.Decorator) -> str | None:
        if deco.name is not None and deco.name.text != "id":
            return None
        if len(deco.args) != 1 or not isinstance(deco.args[0], ast.Literal):
            return None
        value = deco.args[0].value
        if isinstance(value, bool):
            return None
        if isinstance(value, int) and value >= 0:
            return str(value)
        if isinstance(value, str) and value:
            return value
        return None

    # -------------------------------------------------------------------- params
    def param(self, stmt: ast.ParamDecl) -> None:
        """Declare a param after checking its name, type, default and attributes."""
        name = stmt.name.text
        ok = True
        if name == "_":
            self.error(WorkflowError, "'_' cannot be a param name", stmt.name.span,
                       help="give the param a name, e.g. param seed: INT = 42")
            ok = False
        elif name in self.env:
            old = self.env[name]
            what = "declared as a param" if old.kind == "param" else "already bound"
            self.error(WorkflowError,
                       f"param '{name}' is declared twice" if old.kind == "param" else
                       f"param '{name}' would shadow the name bound at {old.span}",
                       stmt.name.span, notes=[f"'{name}' is {what} at {self.where(old.span)}"],
                       help="params can be neither rebound nor shadowed; pick another name")
            ok = False
        type_name = stmt.type.text
        if type_name not in PARAM_TYPES:
            ok = False
            if type_name in LINK_TYPES or type_name == "COMBO":
                help_text = ("params feed widget inputs only; for an input image declare "
                             "`param image: STRING = \"file.png\"` and pass it to "
                             "LoadImage(image=image)" if type_name == "IMAGE" else
                             f"param types are {', '.join(PARAM_TYPES)}")
                self.error(SchemaError, f"a param cannot have the type {type_name}",
                           stmt.type.span, help=help_text)
            else:
                close = _close(type_name, list(PARAM_TYPES), cutoff=0.5)
                self.error(SchemaError, f"unknown param type '{type_name}'", stmt.type.span,
                           help=(_did_you_mean(close) or "") + (" " if close else "") +
                           f"(param types: {', '.join(PARAM_TYPES)})")
        default: Any = MISSING
        if stmt.default is not None:
            default = self.literal(stmt.default, "a param default")
            if default is _POISON:
                ok = False
            elif type_name in PARAM_TYPES and not _fits(type_name, default):
                self.error(SchemaError,
                           f"param '{name}' is {type_name}, but its default "
                           f"{_show(default)} is {_kind(default)}", _span_of(stmt.default),
                           help=f"write {_kind_name(type_name)} default, e.g. "
                                f"{_example(type_name)}")
                ok = False
        attrs: dict[str, Any] = {}
        for key, expr in stmt.attrs:
            value = self.literal(expr, "a param attribute")
            if key.text not in _PARAM_ATTRS:
                close = _close(key.text, list(_PARAM_ATTRS))
                self.error(SchemaError, f"unknown param attribute '{key.text}'", key.span,
                           help=(_did_you_mean(close) + " " if close else "")
                           + f"(attributes: {', '.join(_PARAM_ATTRS)})")
                ok = False
                continue
            if key.text in attrs:
                self.error(SchemaError, f"attribute '{key.text}' is given twice", key.span)
                ok = False
                continue
            if value is _POISON:
                ok = False
                continue
            problem = _attr_problem(key.text, value, type_name)
            if problem:
                self.error(SchemaError, problem, _span_of(expr))
                ok = False
                continue
            attrs[key.text] = value
        if not ok:
            if name != "_" and name not in self.env:
                self.env[name] = _Binding("poison", None, stmt.name.span)
            return
        param = Param(name, type_name, default, min=attrs.get("min"), max=attrs.get("max"),
                      choices=attrs.get("choices"), doc=attrs.get("doc"),
                      loc=self.loc(stmt.name.span))
        self.graph.add_param(param)
        self.env[name] = _Binding("param", param, stmt.name.span)

    # ------------------------------------------------------------------- outputs
    def output(self, stmt: ast.OutputDecl) -> None:
        """Declare a graph output (``output image`` is ``output image = image``)."""
        name = stmt.name.text
        if name in self.graph.outputs or name == "_":
            self.error(WorkflowError, f"output '{name}' is declared twice" if name != "_" else
                       "'_' cannot be an output name", stmt.name.span,
                       help="give each output its own name")
            return
        ref = stmt.ref if stmt.ref is not None else ast.NameRef(name, stmt.name.span)
        value = self.value_ref(ref, "an output")
        if value is _POISON:
            return
        if not isinstance(value, Value):
            self.error(WorkflowError,
                       f"output '{name}' must be the output of a node, but '{ref_text(ref)}' is "
                       f"param '{value.name}'", _span_of(ref),
                       help="declare outputs from node results, e.g. `output image = decoded`")
            return
        if stmt.type is not None and not is_compatible(value.type, stmt.type.text):
            self.error(TypeMismatchError,
                       f"output '{name}' is declared {stmt.type.text}, but "
                       f"'{ref_text(ref)}' is {value.type}", stmt.type.span,
                       notes=self._bound_note(ref),
                       help=f"write `output {name}: {value.type}` or select another value")
            return
        self.graph.outputs[name] = value

    # --------------------------------------------------------------------- nodes
    def node(self, stmt: ast.NodeStmt) -> str:
        """Lower one node statement; returns its id (also when it failed, for the key)."""
        node_id, title, extra, api_meta = self.decorators(stmt)
        auto = node_id is None
        if node_id is None:
            node_id = str(self._next_id)
            self._next_id += 1
        class_type = stmt.callee.text
        schema = self.catalog.get(class_type)
        self._lost = set()
        if schema is None:
            close = self.catalog.close_names(class_type)
            if not close:
                close = _close(class_type, self.catalog.names(), cutoff=0.6)
            self.error(SchemaError, f"unknown node type '{class_type}'", stmt.callee.span,
                       help=_did_you_mean(close) or (
                           "comfyc's catalogue has no such node; if it comes from a custom "
                           "node pack, pass its definition with --object-info FILE (a dump of "
                           "ComfyUI's GET /object_info)"))
            for arg in stmt.args:  # Still report undefined names inside the call.
                self.input_value(arg.value, None, None)
            self._bind_poison(stmt.targets)
            return node_id
        inputs = self.arguments(stmt, schema)
        loc = self.loc(stmt.callee.span, node_id=node_id, title=title)
        if node_id in self._ids:
            # Reported by decorators(); keep going with a unique id so later checks still run.
            node_id = f"{node_id}#dup{len(self._ids)}"
        self._ids[node_id] = stmt.callee.span
        node = self.graph.add_node(class_type, schema.output_types(), id=node_id, title=title,
                                   loc=loc)
        for name, (value, span) in inputs.items():
            node.input_locs[name] = self.loc(span, node_id=node_id, title=title,
                                             input_name=name)
            self.graph.set_input(node, name, value)
        dsl: dict[str, Any] = {}
        if auto:
            dsl["auto_id"] = True
        bind = self.bind_targets(stmt, node)
        if bind is not None:
            dsl["bind"] = bind
        node.meta["dsl"] = dsl
        if extra:
            node.meta["extra_inputs"] = extra
        if api_meta:
            node.meta["api_meta"] = api_meta
        if self._lost:
            self._failed[node_id] = self._lost
        return node_id

    def decorators(self, stmt: ast.NodeStmt
                   ) -> tuple[str | None, str | None, dict[str, Any], dict[str, Any]]:
        """Read ``@id``/``@title``/``@extra``/``@meta``; returns (id, title, extra, meta)."""
        node_id: str | None = None
        title: str | None = None
        extra: dict[str, Any] = {}
        api_meta: dict[str, Any] = {}
        seen: dict[str, ast.Span] = {}
        for deco in stmt.decorators:
            kind = "id" if deco.name is None else deco.name.text
            if kind not in DECORATORS:
                close = _close(kind, list(DECORATORS))
                self.error(WorkflowError, f"unknown decorator '@{kind}'",
                           deco.name.span if deco.name else deco.span,
                           help=(_did_you_mean(close) + " " if close else "") +
                           "decorators: " + "; ".join(f"@{k}: {v}" for k, v in DECORATORS.items()))
                continue
            if kind in seen:
                self.error(WorkflowError, f"@{kind} is given twice for one node", deco.span,
                           notes=[f"first given at {self.where(seen[kind])}"])
                continue
            seen[kind] = deco.span
            if len(deco.args) != 1:
                self.error(WorkflowError, f"@{kind} takes one value, found {len(deco.args)}",
                           deco.span, help=f"@{kind}: {DECORATORS[kind]}")
                continue
            value = self.literal(deco.args[0], f"@{kind}")
            if value is _POISON:
                continue
            if kind == "id":
                node_id = self._decorator_id(deco)
                if node_id is None:
                    self.error(WorkflowError, f"a node id is a non-empty string or a "
                               f"non-negative integer, found {_show(value)}", deco.span)
                elif node_id in self._ids:
                    self.error(WorkflowError, f"node id {_show_id(node_id)} is already used",
                               deco.span, notes=[f"the node at {self.where(self._ids[node_id])} "
                                                 f"has this id"],
                               help="every node needs its own id; remove this @id to get a "
                                    "fresh one")
            elif kind == "title":
                if not isinstance(value, str):
                    self.error(WorkflowError, f"@title takes a string, found {_show(value)}",
                               _span_of(deco.args[0]))
                else:
                    title = value
            elif not isinstance(value, dict):
                self.error(WorkflowError, f"@{kind} takes an object {{\"key\": value}}, found "
                           f"{_show(value)}", _span_of(deco.args[0]))
            elif kind == "extra":
                extra = value
            else:
                api_meta = value
        return node_id, title, extra, api_meta

    def arguments(self, stmt: ast.NodeStmt, schema: NodeSchema
                  ) -> dict[str, tuple[Any, ast.Span]]:
        """Resolve ``key=value`` arguments against the schema, in source order."""
        given: dict[str, ast.Span] = {}
        for arg in stmt.args:
            if arg.key is not None:
                given.setdefault(arg.key.text, arg.key.span)
        free = [s.name for s in schema.inputs if s.name not in given]
        inputs: dict[str, tuple[Any, ast.Span]] = {}
        positional = 0
        for arg in stmt.args:
            if arg.key is None:
                guess = free[positional] if positional < len(free) else None
                positional += 1
                text = self.source_text(arg.value.span)
                self._lost.add("*")
                self.error(WorkflowError, "positional argument not allowed: inputs are passed "
                           "by name", arg.value.span,
                           help=f"write {guess}={text}" if guess else
                           f"write NAME={text}; {schema.class_type} takes "
                           f"{', '.join(schema.input_names()) or 'no inputs'}")
                self.input_value(arg.value, None, None)
                continue
            name = arg.key.text
            spec = schema.input(name)
            if spec is None:
                self._lost.add("*")
                close = _close(name, schema.input_names())
                self.error(SchemaError, f"unknown input '{name}' for {schema.class_type}",
                           arg.key.span, help=_did_you_mean(close) or
                           f"{schema.class_type} takes "
                           f"{', '.join(schema.input_names()) or 'no inputs'}")
                self.input_value(arg.value, None, None)
                continue
            if name in inputs:
                self.error(WorkflowError, f"input '{name}' is given twice", arg.key.span,
                           notes=[f"first given at {self.where(given[name])}"],
                           help="remove one of them")
                continue
            value = self.input_value(arg.value, schema, name)
            if value is not _POISON:
                inputs[name] = (value, arg.value.span)
            else:
                self._lost.add(name)
        return inputs

    def input_value(self, expr: ast.Expr, schema: NodeSchema | None, name: str | None) -> Any:
        """Resolve one argument value: a literal, a param or a node output."""
        if isinstance(expr, (ast.NameRef, ast.OutputRef)):
            value = self.value_ref(expr, "an input")
            if value is _POISON or schema is None or name is None:
                return value
            spec = schema.input(name)
            if spec is None:
                return value
            if isinstance(value, Param):
                if spec.type not in WIDGET_TYPES:
                    self.error(TypeMismatchError,
                               f"param '{value.name}' ({value.type}) cannot feed input '{name}' "
                               f"of {schema.class_type}, which takes a {spec.type} link",
                               expr.span, notes=self._bound_note(expr),
                               help="params feed widget inputs only (INT, FLOAT, STRING, "
                                    "BOOLEAN and combos); connect a node output here")
                    return _POISON
                return value
            if self.check_types and not is_compatible(value.type, spec.type):
                self.type_mismatch(expr, value, schema, name, spec.type)
                return _POISON
            return value
        if isinstance(expr, ast.CallExpr):
            self.nested_call(expr)
            return _POISON
        return self.literal(expr, "an input")

    def type_mismatch(self, expr: ast.NameRef | ast.OutputRef, value: Value,
                      schema: NodeSchema, name: str, expected: str) -> None:
        """Report a link of the wrong type, naming where the value was bound."""
        src = value.producer
        compatible = [v for v in src.outputs if is_compatible(v.type, expected)]
        help_text = f"connect a {expected} output to '{name}'"
        binding = self.env.get(expr.base.text if isinstance(expr, ast.OutputRef) else expr.name)
        if compatible and binding is not None:
            pick = compatible[0]
            if binding.kind == "node":
                base = expr.base.text if isinstance(expr, ast.OutputRef) else expr.name
                help_text = f"did you mean {base}.{pick.name}?" if pick.name.isidentifier() \
                    else f"did you mean {base}[{pick.index}]?"
            else:
                help_text = (f"{src.class_type} also has output {pick.index} ({pick.name}: "
                             f"{pick.type}); select that one")
        self.error(TypeMismatchError,
                   f"input '{name}' of {schema.class_type} expects {expected}, got {value.type}",
                   expr.span, notes=self._bound_note(expr), help=help_text)

    def _bound_note(self, expr: ast.Expr) -> list[str]:
        if isinstance(expr, ast.NameRef):
            base = expr.name
        elif isinstance(expr, ast.OutputRef):
            base = expr.base.text
        else:
            return []
        binding = self.env.get(base)
        if binding is None:
            return []
        if binding.kind == "param":
            return [f"'{base}' is declared as a param at {self.where(binding.span)}"]
        if binding.kind == "value":
            value: Value = binding.target
            return [f"'{base}' is bound at {self.where(binding.span)} to output {value.index} "
                    f"({value.name}: {value.type}) of {value.producer.class_type}"]
        if binding.kind == "node":
            node: Node = binding.target
            return [f"'{base}' is bound at {self.where(binding.span)} to {node.class_type} "
                    f"(outputs: {_outputs_text(node)})"]
        return []

    def nested_call(self, expr: ast.CallExpr) -> None:
        """Reject ``Foo(x=Bar(...))``: one statement is one node."""
        self.error(WorkflowError, "nested node calls are not allowed: one statement is one node",
                   expr.span, help=f"bind it first: `x = {expr.callee.text}(...)`, then pass x")

    # ---------------------------------------------------------------- references
    def lookup(self, name: str, span: ast.Span) -> _Binding | None:
        """The binding of a name here, or None after reporting it undefined."""
        binding = self.env.get(name)
        if binding is not None:
            return binding
        notes = []
        later = self._bound_later.get(name)
        if later is not None and (later.line, later.col) > (span.line, span.col):
            notes.append(f"'{name}' is bound later, at {self.where(later)}; a name must be "
                         f"bound before it is used")
        help_text = _did_you_mean(_close(name, list(self.env)))
        if name in ("NaN", "Infinity", "inf", "nan"):
            help_text = "JSON has no NaN or Infinity; use a finite number"
        elif name in self.catalog and help_text is None:
            help_text = f"'{name}' is a node type; bind a node first (`x = {name}(...)`) and " \
                        f"pass x"
        elif name in ("True", "False", "None"):
            help_text = f"write {name.lower() if name != 'None' else 'null'} (JSON literals)"
        self.error(WorkflowError, f"undefined name '{name}'", span, notes=notes, help=help_text)
        return None

    def value_ref(self, expr: ast.NameRef | ast.OutputRef, what: str) -> Any:
        """Resolve a reference to a Value or Param (or _POISON after an error)."""
        if isinstance(expr, ast.NameRef):
            binding = self.lookup(expr.name, expr.span)
            if binding is None or binding.kind == "poison":
                return _POISON
            if binding.kind == "node":
                node: Node = binding.target
                choices = [f"{expr.name}.{v.name}" if v.name.isidentifier() else
                           f"{expr.name}[{v.index}]" for v in node.outputs]
                self.error(WorkflowError,
                           f"'{expr.name}' is a {node.class_type} node with {len(node.outputs)} "
                           f"outputs ({_outputs_text(node)}); {what} takes one of them",
                           expr.span, notes=self._bound_note(expr),
                           help="select one: " + ", ".join(choices))
                return _POISON
            return binding.target
        base = expr.base.text
        binding = self.lookup(base, expr.base.span)
        if binding is None or binding.kind == "poison":
            return _POISON
        if binding.kind == "param":
            self.error(WorkflowError, f"'{base}' is a param, which has no outputs to select",
                       expr.span, help=f"use the param itself: {base}")
            return _POISON
        if binding.kind == "value":
            value: Value = binding.target
            if len(value.producer.outputs) > 1:
                self.error(WorkflowError,
                           f"'{base}' is already one output ({value.name}) of "
                           f"{value.producer.class_type}; there is nothing to select",
                           expr.span, notes=self._bound_note(ast.NameRef(base, expr.base.span)),
                           help=f"use {base} directly")
                return _POISON
            node = value.producer
        else:
            node = binding.target
        if expr.by_index:
            index = int(expr.key)
            if not 0 <= index < len(node.outputs):
                self.error(WorkflowError,
                           f"output index {index} is out of range: {node.class_type} has "
                           f"{len(node.outputs)} output{'s' if len(node.outputs) != 1 else ''}"
                           f" (0..{len(node.outputs) - 1}: {_outputs_text(node)})",
                           expr.key_span)
                return _POISON
            return node.outputs[index]
        matches = [v for v in node.outputs if v.name == expr.key]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            close = _close(str(expr.key), [v.name for v in node.outputs])
            self.error(WorkflowError,
                       f"{node.class_type} has no output '{expr.key}'; its outputs are "
                       f"{_outputs_text(node)}", expr.key_span,
                       help=_did_you_mean(close) or f"select by index: {base}[0] … "
                       f"{base}[{len(node.outputs) - 1}]")
            return _POISON
        indices = [v.index for v in matches]
        self.error(WorkflowError,
                   f"output name '{expr.key}' is ambiguous: outputs "
                   f"{', '.join(map(str, indices))} of {node.class_type} are all called "
                   f"'{expr.key}'", expr.key_span,
                   help="select by index: " + " or ".join(f"{base}[{i}]" for i in indices))
        return _POISON

    # ------------------------------------------------------------------ literals
    def literal(self, expr: ast.Expr, what: str, container: str | None = None) -> Any:
        """Evaluate a literal expression to its JSON value (refs are errors here)."""
        if isinstance(expr, ast.Literal):
            return expr.value
        if isinstance(expr, ast.ListExpr):
            items = [self.literal(item, what, "list") for item in expr.items]
            return _POISON if any(i is _POISON for i in items) else items
        if isinstance(expr, ast.ObjectExpr):
            out: dict[str, Any] = {}
            bad = False
            for key, item in expr.pairs:
                if key.text in out:
                    self.error(WorkflowError, f"key \"{key.text}\" is given twice in an object",
                               key.span)
                    bad = True
                value = self.literal(item, what, "object")
                bad = bad or value is _POISON
                out[key.text] = value
            return _POISON if bad else out
        if isinstance(expr, ast.CallExpr):
            self.nested_call(expr)
            return _POISON
        if container is not None:
            kind = "list" if container == "list" else "object"
            article = "an" if kind == "object" else "a"
            self.error(WorkflowError, f"a link cannot appear inside {article} {kind} literal",
                       expr.span,
                       help=f"{kind} values hold literals only (a ComfyUI link is a whole "
                            f"input); pass '{ref_text(expr)}' to an input of its own")
            return _POISON
        self.error(WorkflowError, f"{what} must be a literal value, found the name "
                   f"'{ref_text(expr)}'", expr.span,
                   help="write a string, number, true/false/null, list or object")
        return _POISON

    # ------------------------------------------------------------------ bindings
    def _bind_poison(self, targets: list[ast.Name] | None) -> None:
        for target in targets or []:
            if target.text != "_" and self.env.get(target.text, _Binding("", None, target.span)
                                                   ).kind != "param":
                self.env[target.text] = _Binding("poison", None, target.span)

    def bind_targets(self, stmt: ast.NodeStmt, node: Node) -> str | list[str] | None:
        """Bind the statement's names; returns the binding to record in ``meta["dsl"]``."""
        targets = stmt.targets
        if not targets:
            return None
        outputs = node.outputs
        span = targets[0].span.to(targets[-1].span)
        names = [t.text for t in targets]
        if not outputs:
            if names != ["_"]:
                self.error(WorkflowError,
                           f"{node.class_type} has no outputs, so nothing can be bound to "
                           f"{', '.join(repr(n) for n in names)}", span,
                           help=f"remove `{', '.join(names)} =`")
            return None
        if len(targets) > 1 and len(targets) != len(outputs):
            fix = names[:len(outputs)] + ["_"] * (len(outputs) - len(names))
            help_text = (f"write `{', '.join(fix)} = ...` to ignore an output"
                         if len(names) < len(outputs) else
                         f"write `{', '.join(fix)} = ...`, or bind one name and select "
                         f"outputs with name.OUTPUT")
            self.error(WorkflowError,
                       f"{node.class_type} has {len(outputs)} output"
                       f"{'s' if len(outputs) != 1 else ''} ({_outputs_text(node)}) but "
                       f"{len(names)} names are bound", span, help=help_text)
            self._bind_poison(targets)
            return None
        seen: dict[str, ast.Span] = {}
        ok = True
        for target in targets:
            if target.text == "_":
                continue
            old = self.env.get(target.text)
            if old is not None and old.kind == "param":
                self.error(WorkflowError, f"cannot rebind param '{target.text}'", target.span,
                           notes=[f"'{target.text}' is declared as a param at "
                                  f"{self.where(old.span)}"],
                           help="params can be neither rebound nor shadowed; pick another name "
                                "for this output")
                ok = False
            if target.text in seen:
                self.error(WorkflowError, f"'{target.text}' is bound twice in one statement",
                           target.span, help="use `_` for outputs you do not need")
                ok = False
            seen[target.text] = target.span
        if not ok:
            self._bind_poison(targets)
            return None
        if len(targets) == 1:
            target = targets[0]
            if target.text == "_":
                return None
            if len(outputs) == 1:
                self.env[target.text] = _Binding("value", outputs[0], target.span, "single")
            else:
                self.env[target.text] = _Binding("node", node, target.span)
            return target.text
        for target, value in zip(targets, outputs, strict=True):
            if target.text != "_":
                self.env[target.text] = _Binding("value", value, target.span, "unpacked")
        return names


# ---------------------------------------------------------------------- helpers
def _span_of(expr: ast.Expr) -> ast.Span:
    return expr.span


def ref_text(expr: ast.Expr) -> str:
    """How a reference reads in the source (``ckpt.CLIP``)."""
    if isinstance(expr, ast.NameRef):
        return expr.name
    if isinstance(expr, ast.OutputRef):
        if expr.by_index:
            return f"{expr.base.text}[{expr.key}]"
        key = str(expr.key)
        return f"{expr.base.text}.{key}" if key.isidentifier() else f"{expr.base.text}[\"{key}\"]"
    return "..."


def _fits(type_name: str, value: Any) -> bool:
    if type_name == "INT":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "FLOAT":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_name == "STRING":
        return isinstance(value, str)
    if type_name == "BOOLEAN":
        return isinstance(value, bool)
    return True


def _kind(value: Any) -> str:
    name = python_type_name(value)
    return "null" if name == "null" else f"a{'n' if name[0] in 'AEIOU' else ''} {name}"


def _kind_name(type_name: str) -> str:
    return f"a{'n' if type_name[0] in 'AEIOU' else ''} {type_name}"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _show_id(node_id: str) -> str:
    return node_id if node_id.isdigit() else f'"{node_id}"'


def _example(type_name: str) -> str:
    return {"INT": "42", "FLOAT": "1.0", "STRING": '"text"', "BOOLEAN": "true"}[type_name]


def _attr_problem(name: str, value: Any, type_name: str) -> str | None:
    if name in ("min", "max"):
        if type_name not in ("INT", "FLOAT"):
            return f"'{name}' applies to INT and FLOAT params, not {type_name}"
        if not _fits(type_name if type_name == "FLOAT" else "INT", value):
            return f"'{name}' of a {type_name} param must be {type_name}, found {_show(value)}"
    elif name == "choices":
        if not isinstance(value, list) or not value:
            return f"'choices' is a non-empty list of allowed values, found {_show(value)}"
    elif name == "doc" and not isinstance(value, str):
        return f"'doc' is a string, found {_show(value)}"
    return None


def lower_module(module: ast.Module, catalog: Catalog, file: str | None = None, *,
                 check_types: bool = True) -> Graph:
    """Lower a parsed module to an IR graph.

    Args:
        module: The parsed file.
        catalog: Node schemas.
        file: The path for locations.
        check_types: Check link types (with notes on where names were bound).

    Returns:
        The graph, nodes in statement order (which is topological: names are bound before
        use). ``graph.warnings`` lists unused params.

    Raises:
        WorkflowErrors: Every problem found.
    """
    return Lowering(module, catalog, file, check_types=check_types).run()
