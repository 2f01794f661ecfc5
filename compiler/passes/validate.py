"""ValidatePass: ComfyUI's validation, every problem at once, in ComfyUI's vocabulary.

Contract: reads the graph, changes nothing; raises :class:`WorkflowErrors` listing every
problem (``required_input_missing``, ``return_type_mismatch``, ``invalid_input_type``,
``value_smaller_than_min``, ``value_bigger_than_max``, ``value_not_in_list``,
``prompt_no_outputs``), each with the node, its title, the input and a fix.

Like ComfyUI's ``validate_prompt`` it checks what the outputs need: the nodes that reach an
output node or a declared output. DSL programs validate every node (``all_nodes=True``), since
a user who wrote a node wants to hear about it.

Before (DSL)::

    latent = EmptyLatentImage(width=64, height=64, batch_size=0)

After: unchanged, and an error::

    t.cfy:1:49: error[value_smaller_than_min]: batch_size 0 is smaller than the minimum 1
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from ..catalog import InputSpec, NodeSchema
from ..errors import SchemaError, TypeMismatchError, WorkflowError, WorkflowErrors
from ..ir.core import MISSING, Graph, Node, Param, SourceLoc, Value
from ..ir.types import COMBO, WIDGET_TYPES, is_compatible, python_type_name
from .base import InPlacePass, PassResult

__all__ = ["ValidatePass", "validate_graph", "coerce_literal", "reachable_nodes"]


def reachable_nodes(graph: Graph, catalog: Any) -> list[Node]:
    """Nodes that an output node or a declared output depends on, in graph order."""
    roots = [n for n in graph.nodes if (s := catalog.get(n.class_type)) and s.output_node]
    roots += [v.producer for v in graph.outputs.values()]
    keep: set[int] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if id(node) in keep:
            continue
        keep.add(id(node))
        stack.extend(v.producer for v in node.inputs.values() if isinstance(v, Value))
    return [n for n in graph.nodes if id(n) in keep]


def coerce_literal(spec: InputSpec, value: Any) -> Any:
    """Convert a literal the way ComfyUI's validation does (``int(v)``, ``float(v)`` …).

    Raises:
        ValueError: The value does not convert.
    """
    if spec.type == "INT":
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("not a finite number")
        if isinstance(value, str):
            return int(value.strip())
        if isinstance(value, (int, float)):
            return int(value)
        raise ValueError(f"a {python_type_name(value)} is not a number")
    if spec.type == "FLOAT":
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, bool):
            return float(value)
        raise ValueError(f"a {python_type_name(value)} is not a number")
    if spec.type == "STRING":
        if isinstance(value, (dict, list)):
            raise ValueError(f"a {python_type_name(value)} is not text")
        return value if isinstance(value, str) else str(value)
    if spec.type == "BOOLEAN":
        if isinstance(value, (bool, int, float, str)):
            return bool(value)
        raise ValueError(f"a {python_type_name(value)} is not a boolean")
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(value)
    return repr(value) if isinstance(value, str) else str(value)


class _Validator:
    def __init__(self, graph: Graph, catalog: Any, all_nodes: bool) -> None:
        self.graph = graph
        self.catalog = catalog
        self.all_nodes = all_nodes
        self.errors: list[WorkflowError] = []
        self.warnings: list[WorkflowError] = []

    def error(self, cls: type[WorkflowError], node: Node, name: str | None, message: str,
              kind: str, **kw: Any) -> None:
        loc = node.input_loc(name) if name else node.loc
        self.errors.append(cls(message, loc, kind=kind, class_type=node.class_type, **kw))

    def run(self) -> list[WorkflowError]:
        nodes = self.graph.nodes if self.all_nodes else reachable_nodes(self.graph, self.catalog)
        has_output = any(
            (s := self.catalog.get(n.class_type)) is not None and s.output_node
            for n in self.graph.nodes
        ) or bool(self.graph.outputs)
        if not has_output:
            self.errors.append(SchemaError(
                "the workflow has no outputs: nothing would be computed",
                SourceLoc(file=self.graph.source.file), kind="prompt_no_outputs",
                help="add an output node such as SaveImage or PreviewImage (or an `output` "
                "declaration in the DSL)", details="Prompt has no outputs"))
        for node in nodes:
            schema = self.catalog.get(node.class_type)
            if schema is None:
                self.error(SchemaError, node, None,
                           f"unknown node type {node.class_type!r}", "invalid_prompt")
                continue
            self.check_node(node, schema)
        for param in self.graph.params.values():
            self.check_param(param)
        return self.errors

    def check_node(self, node: Node, schema: NodeSchema) -> None:
        for spec in schema.inputs:
            value = node.inputs.get(spec.name, MISSING)
            if value is MISSING:
                if not spec.required:
                    continue
                default = spec.effective_default()
                if spec.is_widget and default is not MISSING:
                    # NOTE: deliberate deviation from ComfyUI's server, which rejects this:
                    # workflows saved by older ComfyUI versions lack widgets that newer node
                    # versions added (VAEEncodeForInpaint.grow_mask_by …). The frontend fills
                    # them with defaults when it loads such a file; so do we, with a warning.
                    self.warnings.append(SchemaError(
                        f"input '{spec.name}' of {node.display()} is missing; using its "
                        f"default {_fmt(default)}", node.input_loc(spec.name),
                        kind="default_filled", class_type=node.class_type))
                    continue
                self.missing(node, spec)
            elif isinstance(value, Value):
                self.check_link(node, spec, value)
            elif isinstance(value, Param):
                if not is_compatible(value.type, spec.type) and not (
                    spec.type == COMBO and value.type in ("STRING", COMBO)
                ):
                    self.error(TypeMismatchError, node, spec.name,
                               f"input '{spec.name}' expects {spec.type}, but param "
                               f"'{value.name}' is {value.type}", "return_type_mismatch",
                               notes=[f"param '{value.name}' is declared at {value.loc}"]
                               if value.loc else [])
            else:
                self.check_literal(node, spec, value)

    def missing(self, node: Node, spec: InputSpec) -> None:
        if spec.is_widget:
            default = spec.effective_default()
            fix = (f"set {spec.name}={_fmt(default)} (the default)" if default is not MISSING
                   else f"give {spec.name} a {spec.type} value")
        else:
            fix = f"connect a {spec.type} output to '{spec.name}'"
        self.error(SchemaError, node, spec.name,
                   f"required input '{spec.name}' ({spec.type}) of {node.display()} is missing",
                   "required_input_missing", help=fix, details=spec.name,
                   extra={"input_name": spec.name})

    def check_link(self, node: Node, spec: InputSpec, value: Value) -> None:
        if is_compatible(value.type, spec.type):
            return
        src = value.producer
        candidates = [
            f"output {v.index} ({v.name})" for v in src.outputs if is_compatible(v.type, spec.type)
        ]
        hint = (f"{src.display()} has a matching {' and '.join(candidates)}" if candidates
                else f"connect a {spec.type} output instead")
        self.error(TypeMismatchError, node, spec.name,
                   f"input '{spec.name}' expects {spec.type}, but is linked to output "
                   f"{value.index} ({value.type}) of {src.display()}",
                   "return_type_mismatch", help=hint,
                   details=f"{spec.name}, received_type({value.type}) mismatch "
                           f"input_type({spec.type})",
                   extra={"input_name": spec.name, "received_type": value.type,
                          "linked_node": [src.id, value.index]})

    def check_literal(self, node: Node, spec: InputSpec, value: Any) -> None:
        name = spec.name
        if spec.type not in WIDGET_TYPES:
            self.error(SchemaError, node, name,
                       f"input '{name}' needs a link to a {spec.type} output; found the literal "
                       f"{_fmt(value)}", "bad_linked_input",
                       help=f"connect a node that produces {spec.type}")
            return
        if spec.type == COMBO:
            self.check_combo(node, spec, value)
            return
        try:
            converted = coerce_literal(spec, value)
        except (TypeError, ValueError) as exc:
            self.error(SchemaError, node, name,
                       f"input '{name}' expects {spec.type}, found {python_type_name(value)} "
                       f"{_fmt(value)} ({exc})", "invalid_input_type",
                       details=f"{name}, {value!r}",
                       help=f"write a {spec.type} value, e.g. {name}="
                            f"{_fmt(spec.effective_default())}",
                       extra={"input_name": name, "received_value": value})
            return
        if spec.type in ("INT", "FLOAT"):
            if spec.min is not None and converted < spec.min:
                self.error(SchemaError, node, name,
                           f"{name} {_fmt(value)} is smaller than the minimum {_fmt(spec.min)}",
                           "value_smaller_than_min",
                           details=f"{name}, {value} < {spec.min}",
                           help=f"use a value between {_fmt(spec.min)} and {_fmt(spec.max)}",
                           extra={"input_name": name, "received_value": value})
            elif spec.max is not None and converted > spec.max:
                self.error(SchemaError, node, name,
                           f"{name} {_fmt(value)} is bigger than the maximum {_fmt(spec.max)}",
                           "value_bigger_than_max",
                           details=f"{name}, {value} > {spec.max}",
                           help=f"use a value between {_fmt(spec.min)} and {_fmt(spec.max)}",
                           extra={"input_name": name, "received_value": value})

    def check_combo(self, node: Node, spec: InputSpec, value: Any) -> None:
        name = spec.name
        if not isinstance(value, (str, int, float)) or isinstance(value, bool) and not any(
            isinstance(c, bool) for c in spec.choices or []
        ):
            self.error(SchemaError, node, name,
                       f"input '{name}' expects one of its choices (a string); found "
                       f"{python_type_name(value)} {_fmt(value)}", "invalid_input_type",
                       extra={"input_name": name, "received_value": value})
            return
        if spec.files:
            return  # File names are checked when the model folder is resolved.
        choices = spec.choices or []
        if value in choices:
            return
        shown = choices if len(choices) <= 20 else f"(list of length {len(choices)})"
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3, cutoff=0.5)
        self.error(SchemaError, node, name,
                   f"{name} {_fmt(value)} is not one of the allowed values", "value_not_in_list",
                   details=f"{name}: {value!r} not in {shown}",
                   notes=[f"allowed: {', '.join(map(str, choices[:12]))}"
                          f"{' …' if len(choices) > 12 else ''}"],
                   help=(f"did you mean {', '.join(repr(c) for c in close)}?" if close
                         else "pick one of the allowed values"),
                   extra={"input_name": name, "received_value": value})

    def check_param(self, param: Param) -> None:
        if param.default is MISSING:
            return
        spec = InputSpec(param.name, param.type, min=param.min, max=param.max,
                         choices=param.choices)
        if param.type in ("INT", "FLOAT"):
            try:
                value = coerce_literal(spec, param.default)
            except (TypeError, ValueError):
                self.errors.append(SchemaError(
                    f"param '{param.name}' is {param.type}, but its default "
                    f"{_fmt(param.default)} is not", param.loc, kind="invalid_input_type"))
                return
            if param.min is not None and value < param.min:
                self.errors.append(SchemaError(
                    f"param '{param.name}' default {_fmt(value)} is below its min "
                    f"{_fmt(param.min)}", param.loc, kind="value_smaller_than_min"))
            if param.max is not None and value > param.max:
                self.errors.append(SchemaError(
                    f"param '{param.name}' default {_fmt(value)} is above its max "
                    f"{_fmt(param.max)}", param.loc, kind="value_bigger_than_max"))


def validate_graph(graph: Graph, catalog: Any, *, all_nodes: bool = False
                   ) -> list[WorkflowError]:
    """Validate a graph; raise :class:`WorkflowErrors` with every problem found.

    Returns:
        Warnings (inputs filled with defaults), when there is no error.
    """
    validator = _Validator(graph, catalog, all_nodes)
    errors = validator.run()
    if errors:
        raise WorkflowErrors(errors)
    return validator.warnings


class ValidatePass(InPlacePass):
    """Checks required inputs, link types, literal types, ranges and combos."""

    name = "validate"

    def call(self, graph: Graph) -> PassResult:
        all_nodes = graph.source.kind == "dsl" or graph.source.format == "dsl"
        validate_graph(graph, self.context.catalog, all_nodes=all_nodes)
        return PassResult(graph, False)
