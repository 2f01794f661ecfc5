"""The IR verifier: internal invariants that every pass must keep.

Checks topological order, use-list consistency, one producer per value, type compatibility
of links against the catalogue, and that every param used is declared (no param is folded
away while still referenced). It raises ``AssertionError``-like :class:`VerifyError` — these
are comfyc bugs, never user errors (validation reports those).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .core import Graph, Param, Value
from .types import is_compatible

if TYPE_CHECKING:
    from ..catalog import Catalog

__all__ = ["VerifyError", "verify_graph"]


class VerifyError(AssertionError):
    """An IR invariant is broken (a comfyc bug)."""


def verify_graph(graph: Graph, catalog: Catalog | None = None, *, after: str = "") -> None:
    """Check the graph's invariants.

    Args:
        graph: The graph.
        catalog: When given, link types are checked against input specs.
        after: The pass that just ran, for the message.

    Raises:
        VerifyError: An invariant does not hold.
    """
    where = f" after pass '{after}'" if after else ""
    seen: set[int] = set()
    ids: set[str] = set()
    for node in graph.nodes:
        if node.graph is not graph:
            raise VerifyError(f"{node!r} is listed but not owned by the graph{where}")
        if node.id in ids:
            raise VerifyError(f"duplicate node id {node.id!r}{where}")
        ids.add(node.id)
        for index, value in enumerate(node.outputs):
            if value.producer is not node or value.index != index:
                raise VerifyError(f"{value!r} has the wrong producer or index{where}")
            for use in value.uses():
                if use.node.inputs.get(use.input_name) is not value:
                    raise VerifyError(f"stale use {use} of {value!r}{where}")
                if use.node.graph is not graph:
                    raise VerifyError(f"{value!r} is used by a detached node{where}")
        schema = catalog.get(node.class_type) if catalog is not None else None
        for name, value in node.inputs.items():
            if isinstance(value, Value):
                if id(value.producer) not in seen:
                    raise VerifyError(
                        f"{node.display()} input '{name}' uses {value!r} before it is produced "
                        f"(not topological){where}")
                if not any(u.node is node and u.input_name == name for u in value.uses()):
                    raise VerifyError(f"{node.display()}.{name} missing from the use list{where}")
                spec = schema.input(name) if schema else None
                if spec is not None and not is_compatible(value.type, spec.type):
                    raise VerifyError(
                        f"{node.display()} input '{name}' ({spec.type}) is fed {value.type}"
                        f"{where}")
            elif isinstance(value, Param):
                if graph.params.get(value.name) is not value:
                    raise VerifyError(f"param '{value.name}' is used but not declared{where}")
                if not any(u.node is node and u.input_name == name for u in value.uses()):
                    raise VerifyError(f"{node.display()}.{name} missing from the param's uses"
                                      f"{where}")
        seen.add(id(node))
    for name, value in graph.outputs.items():
        if id(value.producer) not in seen:
            raise VerifyError(f"graph output '{name}' comes from a removed node{where}")
