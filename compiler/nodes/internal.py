"""Compile rules of comfyc's own node classes: folded values become constant reads."""

from __future__ import annotations

from typing import Any

from ..ir.core import Node
from .rules import CompileRule

__all__ = ["RULES"]


def _lower_folded(node: Node, lowering: Any) -> list[Any]:
    """``FoldedConditioning`` → a ``ConditioningConstant`` op reading the stored value."""
    from comfyc.runtime.program import Op

    return [Op(node.id, "ConditioningConstant", {"entries": {"$const": node.inputs["key"]}},
               node.title)]


def _lower_folded_sigmas(node: Node, lowering: Any) -> list[Any]:
    """``FoldedSigmas`` → a ``Constant`` op reading the stored schedule."""
    from comfyc.runtime.program import Op

    return [Op(node.id, "Constant", {"value": {"$const": node.inputs["key"]}}, node.title)]


RULES: dict[str, CompileRule] = {
    "FoldedConditioning": CompileRule(lower=_lower_folded),
    "FoldedSigmas": CompileRule(lower=_lower_folded_sigmas),
}
