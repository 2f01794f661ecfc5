"""Pass infrastructure: ``InPlacePass``, ``PassResult`` and the ``PassManager``.

A pass is a class with ``call(graph) -> PassResult``. The manager runs an explicit list of
passes (``compiler/pipeline.py``), runs the verifier after each one when asked (always in
tests, ``COMFYC_VERIFY=1`` in the CLI), and wraps a failure with the pass name and the passes
that ran before it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..catalog import Catalog, default_catalog
from ..errors import PassError, WorkflowError
from ..ir.core import Graph

__all__ = ["InPlacePass", "PassResult", "PassManager", "PassContext", "verify_enabled"]


def verify_enabled() -> bool:
    """True when ``COMFYC_VERIFY=1`` asks for the verifier after every pass."""
    return os.environ.get("COMFYC_VERIFY", "") not in ("", "0")


@dataclass
class PassContext:
    """What passes share: the catalogue and free-form options (models dir, params …)."""

    catalog: Catalog = field(default_factory=default_catalog)
    options: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassResult:
    """What a pass returns: the graph and whether it changed."""

    graph: Graph
    modified: bool


class InPlacePass:
    """Base class of passes that change the graph in place.

    Subclasses set ``name`` and implement :meth:`call`.
    """

    name = "pass"

    def __init__(self, context: PassContext | None = None) -> None:
        self.context = context or PassContext()

    def call(self, graph: Graph) -> PassResult:
        """Run the pass on ``graph``."""
        raise NotImplementedError

    def __call__(self, graph: Graph) -> PassResult:
        return self.call(graph)


class PassManager:
    """Runs passes in order.

    Args:
        steps: The passes.
        verify: Run the IR verifier after every pass (None: from COMFYC_VERIFY).
        after_each: Called with ``(pass, result)`` after every pass (for --dump-after and
            progress).
    """

    def __init__(self, steps: Sequence[InPlacePass], *, verify: bool | None = None,
                 after_each: Callable[[InPlacePass, PassResult], None] | None = None) -> None:
        self.steps = list(steps)
        self.verify = verify_enabled() if verify is None else verify
        self.after_each = after_each

    def __call__(self, graph: Graph) -> PassResult:
        from ..ir.verify import verify_graph

        modified = False
        done: list[str] = []
        for step in self.steps:
            try:
                result = step.call(graph)
            except WorkflowError:
                raise
            except Exception as exc:  # Wrap internal failures with where they happened.
                before = ", ".join(done) or "none"
                raise PassError(
                    f"pass '{step.name}' failed: {type(exc).__name__}: {exc}",
                    notes=[f"passes that ran before it: {before}"],
                    help="this is a bug in comfyc; please report it with the workflow",
                ) from exc
            graph = result.graph
            modified = modified or result.modified
            done.append(step.name)
            if self.verify:
                verify_graph(graph, step.context.catalog, after=step.name)
            if self.after_each is not None:
                self.after_each(step, result)
        return PassResult(graph, modified)
