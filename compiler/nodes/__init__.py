"""The node registry's compile-time half: rules keyed by node class, one module per family.

The runtime half (schema, op, stage calls, purity) is :mod:`comfyc.runtime.nodes`. A class
needs a rule here only when the compiler must do more than the defaults (one op of its class;
runtime-op folding for ``fold=True`` classes): model loaders become stages, a prompt encoding
folds through the text encoder, a sampler's schedule is precomputed. See :mod:`.rules`.
"""

from __future__ import annotations

from . import conditioning, controlnet, internal, loaders, sampling
from .rules import CompileRule, LoraSide
from .weights import LoraUse, Weights, trace_weights

__all__ = ["compile_rule", "RULES", "CompileRule", "LoraSide", "LoraUse", "Weights",
           "trace_weights"]

#: Every compile rule by class name.
RULES: dict[str, CompileRule] = {
    **loaders.RULES, **conditioning.RULES, **controlnet.RULES, **sampling.RULES,
    **internal.RULES,
}

_DEFAULT = CompileRule()


def compile_rule(class_type: str) -> CompileRule:
    """The compile rule of ``class_type`` (the empty default rule when it needs none)."""
    return RULES.get(class_type, _DEFAULT)
