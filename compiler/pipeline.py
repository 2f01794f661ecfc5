"""The compile pipeline: an explicit list of passes, in order.

validate → dead-node elimination → common-subexpression elimination → runtime params →
LoRA merge → constant folding → dead-node elimination (again: folding frees producers).
The backend plan is made by the lowering, which knows the stages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .ir.core import Graph
from .passes.base import InPlacePass, PassContext, PassManager, PassResult
from .passes.common_subexpression_elimination import CommonSubexpressionEliminationPass
from .passes.dead_node_elimination import DeadNodeEliminationPass
from .passes.lora_merge import LoraMergePass
from .passes.runtime_params import RuntimeParamsPass
from .passes.validate import ValidatePass

__all__ = ["build_passes", "run_pipeline", "PASS_NAMES"]


def build_passes(context: PassContext, *, fold: bool = True) -> list[InPlacePass]:
    """The passes in pipeline order."""
    passes: list[InPlacePass] = [
        ValidatePass(context),
        DeadNodeEliminationPass(context),
        CommonSubexpressionEliminationPass(context),
        RuntimeParamsPass(context),
        LoraMergePass(context),
    ]
    if fold:
        from .passes.constant_folding import ConstantFoldingPass

        passes.append(ConstantFoldingPass(context))
        passes.append(DeadNodeEliminationPass(context))
    return passes


PASS_NAMES = ["validate", "dead-node-elimination", "common-subexpression-elimination",
              "runtime-params", "lora-merge", "constant-folding"]


def run_pipeline(graph: Graph, context: PassContext, *, fold: bool = True,
                 verify: bool | None = None,
                 after_each: Callable[[InPlacePass, PassResult], None] | None = None) -> Any:
    """Run the compile passes on ``graph`` in place; returns the PassResult."""
    manager = PassManager(build_passes(context, fold=fold), verify=verify, after_each=after_each)
    return manager(graph)
