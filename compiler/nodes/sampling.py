"""Compile rules of the sampling family: sampler schedules precomputed.

A sampler whose schedule inputs (steps, scheduler, denoise or step window, sampler name) are
constants gets its sigmas computed while compiling; they are stored with the artifact and the
op reads them (``sigmas`` argument), so the runtime never rebuilds the schedule.
"""

from __future__ import annotations

from typing import Any

from ..ir.core import MISSING, Node, Param, Value
from .rules import CompileRule

__all__ = ["RULES"]


def _values(node: Node, names: list[str], folding: Any) -> dict[str, Any] | None:
    """The named inputs as constants (defaults filled), or None if one is not constant."""
    schema = folding.catalog.get(node.class_type)
    values = {}
    for name in names:
        value = node.inputs.get(name, MISSING)
        if value is MISSING and schema is not None:
            value = schema.input(name).effective_default()
        if isinstance(value, (Param, Value)) or value is MISSING:
            return None
        values[name] = value
    return values


def _fold_ksampler(node: Node, folding: Any) -> bool:
    from comfyc.runtime import schedules

    values = _values(node, ["steps", "scheduler", "denoise", "sampler_name"], folding)
    if values is None:
        return False
    try:
        sigmas = schedules.ksampler_sigmas(values["scheduler"], int(values["steps"]),
                                           values["sampler_name"], float(values["denoise"]))
    except (ValueError, KeyError):
        return False
    return folding.store_schedule(node, sigmas)


def _fold_ksampler_advanced(node: Node, folding: Any) -> bool:
    from comfyc.runtime.nodes import advanced_schedule

    values = _values(node, ["steps", "scheduler", "sampler_name", "start_at_step",
                            "end_at_step", "return_with_leftover_noise"], folding)
    if values is None:
        return False
    try:
        sigmas = advanced_schedule(values["scheduler"], int(values["steps"]),
                                   values["sampler_name"], int(values["start_at_step"]),
                                   int(values["end_at_step"]),
                                   values["return_with_leftover_noise"] == "enable")
    except (ValueError, KeyError):
        return False
    return folding.store_schedule(node, sigmas)


RULES: dict[str, CompileRule] = {
    "KSampler": CompileRule(fold=_fold_ksampler),
    "KSamplerAdvanced": CompileRule(fold=_fold_ksampler_advanced),
}
