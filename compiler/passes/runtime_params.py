"""RuntimeParamsPass: decide which inputs stay runtime inputs of the compiled program.

Contract: DSL ``param`` declarations are kept as they are. Inputs named on the command line
(``--param NODE.INPUT=NAME``) become params with their current literal as the default. Every
sampler seed (KSampler ``seed``, KSamplerAdvanced ``noise_seed``) that is still a literal
becomes a param by default — named ``seed`` when there is one sampler, ``seed_<id>`` otherwise
— so a new seed never needs a recompile.

Before (DSL)::

    s = KSampler(model=m, seed=42, steps=20, ...)

After::

    param seed: INT = 42 [min=0, max=18446744073709551615]
    s = KSampler(model=m, seed=seed, steps=20, ...)
"""

from __future__ import annotations

import re

from comfyc.runtime.nodes import registry

from ..errors import SchemaError, WorkflowErrors
from ..ir.core import MISSING, Graph, Param, Value
from .base import InPlacePass, PassContext, PassResult

__all__ = ["RuntimeParamsPass", "parse_param_binding"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_param_binding(text: str) -> tuple[str, str, str]:
    """Parse ``NODE.INPUT=NAME`` (or ``NODE.INPUT``, naming the param after the input).

    Raises:
        ValueError: The text does not have that shape.
    """
    target, _, name = text.partition("=")
    node_id, dot, input_name = target.rpartition(".")
    if not dot or not node_id or not input_name:
        raise ValueError(f"expected NODE.INPUT=NAME (e.g. 6.text=prompt), got {text!r}")
    name = name or input_name
    if not _NAME.match(name):
        raise ValueError(f"param name {name!r} is not an identifier")
    return node_id, input_name, name


class RuntimeParamsPass(InPlacePass):
    """Turns sampler seeds and requested inputs into runtime params.

    Options read from the context: ``param_bindings`` (a list of ``NODE.INPUT=NAME``),
    ``seed_params``. Which input is a node's seed comes from the registry (``seed_input``).
    """

    name = "runtime-params"

    def __init__(self, context: PassContext | None = None) -> None:
        super().__init__(context)

    def call(self, graph: Graph) -> PassResult:
        modified = False
        errors = []
        for text in self.context.options.param_bindings:
            try:
                node_id, input_name, name = parse_param_binding(text)
            except ValueError as exc:
                errors.append(SchemaError(str(exc), kind="bad_param"))
                continue
            node = graph.find(node_id)
            if node is None:
                errors.append(SchemaError(f"--param {text}: there is no node #{node_id}",
                                          kind="bad_param"))
                continue
            schema = self.context.catalog.get(node.class_type)
            spec = schema.input(input_name) if schema else None
            if spec is None or not spec.is_widget:
                errors.append(SchemaError(
                    f"--param {text}: {node.display()} has no widget input '{input_name}'",
                    node.loc, kind="bad_param"))
                continue
            modified |= self._bind(graph, node, input_name, name, spec)
        if errors:
            raise WorkflowErrors(errors)
        if self.context.options.seed_params:
            samplers = []
            for node in graph.nodes:
                definition = registry().get(node.class_type)
                if definition is not None and definition.seed_input is not None:
                    samplers.append((node, definition.seed_input))
            for node, input_name in samplers:
                value = node.inputs.get(input_name, MISSING)
                if isinstance(value, (Value, Param)) or value is MISSING:
                    continue
                name = "seed" if len(samplers) == 1 else f"seed_{_ident(node.id)}"
                schema = self.context.catalog.get(node.class_type)
                modified |= self._bind(graph, node, input_name, name,
                                       schema.input(input_name))  # type: ignore[union-attr]
        return PassResult(graph, modified)

    def _bind(self, graph: Graph, node, input_name: str, name: str, spec) -> bool:  # type: ignore[no-untyped-def]
        value = node.inputs.get(input_name, MISSING)
        if isinstance(value, Param):
            return False
        if isinstance(value, Value):
            raise WorkflowErrors([SchemaError(
                f"{node.display()} input '{input_name}' is linked; only literal inputs can "
                f"become params", node.input_loc(input_name), kind="bad_param")])
        default = value if value is not MISSING else spec.effective_default()
        param = graph.params.get(name)
        if param is None:
            kind = "STRING" if spec.type == "COMBO" else spec.type
            param = graph.add_param(Param(
                name, kind, default, min=spec.min, max=spec.max,
                choices=list(spec.choices) if spec.type == "COMBO" and spec.choices else None,
                loc=node.input_loc(input_name)))
        graph.set_input(node, input_name, param)
        self.record("param", node, into=name, detail=f"{input_name} → param {name}")
        return True


def _ident(node_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", node_id)
