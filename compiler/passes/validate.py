"""ValidatePass: ComfyUI's validation, every problem at once, in ComfyUI's vocabulary.

Contract: reads the graph, changes nothing; raises :class:`WorkflowErrors` listing every
problem (``required_input_missing``, ``return_type_mismatch``, ``invalid_input_type``,
``value_smaller_than_min``, ``value_bigger_than_max``, ``value_not_in_list``,
``prompt_no_outputs``), each with the node, its title, the input and a fix.

Like ComfyUI's ``validate_prompt`` it checks what the outputs need: the nodes that reach an
output node or a declared output. DSL programs validate every node (``all_nodes=True``), since
a user who wrote a node wants to hear about it.

A required input missing from an API prompt is ``required_input_missing``, as ComfyUI's server
says. Only widgets ComfyUI's frontend would fill take their defaults (with a ``default_filled``
warning): the widgets of a DSL statement that leaves them out (the frontend gives a new node's
widgets their defaults) and of a UI workflow saved before its node had them (the converter
fills those; :func:`~comfyc.frontends.comfy_json.ui.ui_defaults_filled` names them).

Beyond ComfyUI's checks, what a run would refuse is found here too, before any work starts:

* a model name that leaves its folder (``../../x``, an absolute path) — always;
* a model file that is not there — when the models folder is known (``models`` checks);
* a node comfyc cannot run, with the registry's reason (``runnable``);
* an input key the node class does not have, a misspelling ComfyUI would ignore
  (``strict_inputs``, for ``comfyc check``).

The pass turns on the model and runnable checks when its context has a model store (it is
compiling); the server validates with a bare context and checks files its own way.

Before (DSL)::

    latent = EmptyLatentImage(width=64, height=64, batch_size=0)

After: unchanged, and an error::

    t.cfy:1:49: error[value_smaller_than_min]: batch_size 0 is smaller than the minimum 1
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from comfyc.runtime.model_paths import (
    EMBEDDED_MODELS,
    MODEL_KINDS,
    ModelPathError,
    get_models_dir,
    resolve,
)

from ..catalog import InputSpec, NodeSchema
from ..errors import SchemaError, TypeMismatchError, WorkflowError, WorkflowErrors
from ..ir.core import MISSING, Graph, Node, Param, SourceLoc, Value
from ..ir.types import COMBO, WIDGET_TYPES, is_compatible, python_type_name
from .base import InPlacePass, PassResult

__all__ = ["ValidatePass", "ValidateOptions", "validate_graph", "validate_partial",
           "coerce_literal", "reachable_nodes"]

#: Input keys ComfyUI's own frontends send that no node class declares (the legacy
#: frontend's upload button); never reported as unknown.
FRONTEND_EXTRA_INPUTS = frozenset({"choose file to upload", "upload"})


@dataclass(frozen=True, slots=True)
class ValidateOptions:
    """What to check beyond ComfyUI's own validation (see the module docstring).

    Attributes:
        all_nodes: Every node, not only those an output needs (DSL files).
        runnable: A node comfyc cannot run is an error (``unsupported_node``).
        check_models: Resolve model file names (a missing file is ``value_not_in_list``).
        models_dir: The models folder for those checks (None: ``$COMFYC_MODELS``, else only
            the models that ship with comfyc are found).
        strict_inputs: An input key the class does not declare is an error.
        incomplete: Nodes that lack inputs because of errors already reported (a DSL file
            that lowered in part): node id -> the inputs lost (``"*"``: any); those are not
            reported missing, and a graph with such nodes may lack its outputs too.
        fill_widgets: A missing widget that has a default takes it, with a ``default_filled``
            warning, instead of being ``required_input_missing``; None: for DSL and UI
            workflows (ComfyUI's frontend gives every widget of a node its default), not for
            API prompts (ComfyUI's server refuses them).
    """

    all_nodes: bool = False
    runnable: bool = False
    check_models: bool = False
    models_dir: str | None = None
    strict_inputs: bool = False
    incomplete: Mapping[str, frozenset[str]] = field(default_factory=dict)
    fill_widgets: bool | None = None


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
    def __init__(self, graph: Graph, catalog: Any, options: ValidateOptions) -> None:
        self.graph = graph
        self.catalog = catalog
        self.options = options
        self.errors: list[WorkflowError] = []
        self.warnings: list[WorkflowError] = []
        #: Model names not looked for (no models folder is known): kind -> names.
        self.unchecked: dict[str, list[str]] = {}

    def error(self, cls: type[WorkflowError], node: Node, name: str | None, message: str,
              kind: str, **kw: Any) -> None:
        loc = node.input_loc(name) if name else node.loc
        self.errors.append(cls(message, loc, kind=kind, class_type=node.class_type, **kw))

    def run(self) -> list[WorkflowError]:
        options = self.options
        needed = reachable_nodes(self.graph, self.catalog)
        nodes = self.graph.nodes if options.all_nodes else needed
        # NOTE: what only a run needs (the node can run, its model files are there) is asked
        # of the nodes an output needs: a DSL file's unused node is checked, not loaded.
        self.needed = {id(n) for n in needed}
        fill = options.fill_widgets
        self.fill = (self.graph.source.kind in ("dsl", "ui") or self.graph.source.format == "dsl"
                     ) if fill is None else fill
        has_output = any(
            (s := self.catalog.get(n.class_type)) is not None and s.output_node
            for n in self.graph.nodes
        ) or bool(self.graph.outputs)
        # NOTE: a graph that lost nodes to errors (``incomplete``) may have lost its outputs.
        if not has_output and not options.incomplete:
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
            if options.runnable and id(node) in self.needed:
                self.check_runnable(node)
            if options.strict_inputs:
                self.check_input_names(node, schema)
            self.check_node(node, schema)
        for param in self.graph.params.values():
            self.check_param(param)
        if self.unchecked:
            names = "; ".join(f"{kind}: {', '.join(map(repr, found))}"
                              for kind, found in self.unchecked.items())
            self.warnings.append(SchemaError(
                f"model files not looked for ({names}): no models folder is known",
                SourceLoc(file=self.graph.source.file), kind="models_not_checked",
                help="pass --models-dir MODELS (ComfyUI's layout) or set COMFYC_MODELS to "
                     "check that they are there"))
        return self.errors

    def check_runnable(self, node: Node) -> None:
        reason = self.catalog.unrunnable_reason(node.class_type)
        if reason is not None:
            self.error(SchemaError, node, None, f"{node.display()} cannot run: {reason}",
                       "unsupported_node",
                       help="remove the node, or run this workflow in ComfyUI (comfyc check "
                            "--comfyui checks it as ComfyUI would)")

    def check_input_names(self, node: Node, schema: NodeSchema) -> None:
        extra = node.meta.get("extra_inputs")
        if not isinstance(extra, dict):
            return
        names = schema.input_names()
        for name in extra:
            if name in FRONTEND_EXTRA_INPUTS:
                continue
            close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.6)
            self.error(SchemaError, node, str(name),
                       f"{node.display()} has no input {str(name)!r}; ComfyUI ignores it, so "
                       f"its value would be lost", "unknown_input",
                       help=(f"did you mean {' or '.join(repr(c) for c in close)}?" if close
                             else f"{schema.class_type} takes "
                                  f"{', '.join(names) or 'no inputs'}"),
                       extra={"input_name": str(name)})

    def check_model_file(self, node: Node, spec: InputSpec, value: str) -> None:
        """A model name stays inside its folder and, when the folder is known, is there."""
        from comfyc.runtime.files import UnsafeName, relative_name

        kind = spec.files or ""
        options = self.options
        try:
            relative_name(value)
        except UnsafeName:
            # The resolver's own words for the problem (absolute, '..', NUL, empty).
            self.model_error(node, spec, value, _resolve_message(kind, value))
            return
        if id(node) not in self.needed:
            return
        if options.check_models:
            try:
                resolve(kind, value, options.models_dir)
            except ModelPathError as exc:
                self.model_error(node, spec, value, str(exc))
        elif value not in EMBEDDED_MODELS.get(kind, {}) and \
                get_models_dir(options.models_dir) is None:
            self.unchecked.setdefault(kind, []).append(value)

    def model_error(self, node: Node, spec: InputSpec, value: str, message: str) -> None:
        self.error(SchemaError, node, spec.name, f"{spec.name} {value!r}: {message}",
                   "value_not_in_list",
                   details=f"{spec.name}: {value!r} not in the {spec.files} folder",
                   help=f"put the file in the models folder's {spec.files}/ (ComfyUI's "
                        f"layout; --models-dir or $COMFYC_MODELS) and use its name there",
                   extra={"input_name": spec.name, "received_value": value})

    def check_node(self, node: Node, schema: NodeSchema) -> None:
        lost = self.options.incomplete.get(node.id, frozenset())
        for spec in schema.inputs:
            value = node.inputs.get(spec.name, MISSING)
            if value is MISSING:
                if not spec.required or spec.name in lost or "*" in lost:
                    continue
                default = spec.effective_default()
                if self.fill and spec.is_widget and default is not MISSING:
                    # NOTE: ComfyUI's frontend gives every widget of a node its default (and
                    # the widgets an old UI file lacks); a DSL statement that leaves a widget
                    # out means the same. An API prompt goes to ComfyUI's server as it is,
                    # which refuses it: required_input_missing below.
                    self.warnings.append(SchemaError(
                        f"widget '{spec.name}' of {node.display()} is not set; it takes its "
                        f"default {_fmt(default)}, as in ComfyUI's frontend",
                        node.input_loc(spec.name), kind="default_filled",
                        class_type=node.class_type,
                        help=f"write {spec.name}={_fmt(default)} to say so; an API prompt "
                             f"without it is refused (required_input_missing)"))
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
            if spec.files in MODEL_KINDS and isinstance(value, str):
                self.check_model_file(node, spec, value)
            return  # Pictures (LoadImage) are looked for when the run reads them.
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


def _resolve_message(kind: str, name: str) -> str:
    """The resolver's message for an unsafe name (it refuses those before any file access)."""
    try:
        resolve(kind, name, None)
    except ModelPathError as exc:
        return str(exc)
    return f"{kind} name {name!r} is not allowed"  # pragma: no cover - resolve refused it


def validate_graph(graph: Graph, catalog: Any, options: ValidateOptions | None = None, *,
                   all_nodes: bool = False) -> list[WorkflowError]:
    """Validate a graph; raise :class:`WorkflowErrors` with every problem found.

    Args:
        graph: The graph (not changed).
        catalog: The node schemas.
        options: What to check beyond ComfyUI's validation (default: nothing more).
        all_nodes: Shorthand for ``ValidateOptions(all_nodes=True)`` when ``options`` is None.

    Returns:
        Warnings (model files not looked for), when there is no error.
    """
    options = options or ValidateOptions(all_nodes=all_nodes)
    validator = _Validator(graph, catalog, options)
    errors = validator.run()
    if errors:
        raise WorkflowErrors(errors)
    return validator.warnings


def validate_partial(failure: WorkflowErrors, catalog: Any,
                     options: ValidateOptions) -> WorkflowErrors:
    """Every problem of a file a frontend could not finish: its errors, and what validating
    the rest of it finds (the DSL lowers every statement it can; see ``WorkflowErrors``).

    Returns:
        ``failure`` itself when there is nothing more, else a new WorkflowErrors with all of
        the problems in file order.
    """
    if failure.partial is None:
        return failure
    options = replace(options, incomplete={**options.incomplete, **failure.failed})
    try:
        validate_graph(failure.partial, catalog, options)
    except WorkflowErrors as more:
        seen = {(str(e.loc), e.message) for e in failure.errors}
        extra = [e for e in more.errors if (str(e.loc), e.message) not in seen]
        if extra:
            return WorkflowErrors(_in_file_order([*failure.errors, *extra]))
    return failure


def _in_file_order(errors: Iterable[WorkflowError]) -> list[WorkflowError]:
    def key(error: WorkflowError) -> tuple[int, int]:
        loc = error.loc
        return (loc.line or 0, loc.col or 0) if loc is not None else (0, 0)

    return sorted(errors, key=key)


class ValidatePass(InPlacePass):
    """Checks required inputs, link types, literal types, ranges and combos — and, when the
    context has a model store (compiling), model files and that every node can run."""

    name = "validate"

    def call(self, graph: Graph) -> PassResult:
        context = self.context
        compiling = context.models is not None
        models_dir = context.options.models_dir or getattr(context.models, "models_dir", None)
        validate_graph(graph, context.catalog, ValidateOptions(
            all_nodes=graph.source.kind == "dsl" or graph.source.format == "dsl",
            runnable=compiling, check_models=compiling, models_dir=models_dir))
        return PassResult(graph, False)
