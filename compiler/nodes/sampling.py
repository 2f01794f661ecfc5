"""Compile rules of the sampling families: schedules precomputed.

A sampler whose schedule inputs (steps, scheduler, denoise or step window, sampler name) are
constants gets its sigmas computed while compiling; they are stored with the artifact and the
op reads them (``sigmas`` argument), so the runtime never rebuilds the schedule. The custom
sampling schedulers that read the MODEL (``BasicScheduler``, ``SDTurboScheduler``,
``BetaSamplingScheduler``) fold to a ``FoldedSigmas`` node the same way.

A schedule depends on the MODEL's sampling (SD1's discrete table, a zero-terminal-SNR table,
SD3's and Flux's shifted flow); :func:`model_sampling_at_compile` follows the MODEL input back
through model-sampling patches and LoRAs to its loader and folds only when it finds it.
"""

from __future__ import annotations

from typing import Any

from ..ir.core import MISSING, Node, Param, Value
from .rules import CompileRule

__all__ = ["RULES", "model_sampling_at_compile"]


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


#: The description of an unpatched SD1/SD2/SDXL MODEL's sampling (its schedule's table).
_DEFAULT_SPEC: dict[str, Any] = {"kind": "discrete", "prediction": "eps"}


def model_sampling_at_compile(value: Any, folding: Any, depth: int = 0) -> Any:
    """The model sampling a MODEL input will have at run time, or None when unknown.

    Follows model-sampling patch nodes (constant widgets), LoRA loaders and the classes whose
    MODEL output carries an input's weights back to a loader; a loader's sampling comes from
    the model store (the checkpoint's own), or SD1's when folding runs without models
    (``comfyc viz``'s placeholders).

    Returns:
        A :class:`~comfyc.runtime.model_sampling.ModelSampling`, or None.
    """
    from comfyc.runtime.nodes import registry
    from comfyc.runtime.nodes.sampling import MODEL_SAMPLING_SPECS
    from comfyc.runtime.values import model_sampling_from_json

    from . import compile_rule

    if not isinstance(value, Value) or depth > 200:
        return None
    node = value.producer
    spec_of = MODEL_SAMPLING_SPECS.get(node.class_type)
    if spec_of is not None:
        schema = folding.catalog.get(node.class_type)
        names = [i.name for i in schema.inputs if i.name != "model"] if schema else []
        widgets = _values(node, names, folding)
        if widgets is None:
            return None
        try:
            return model_sampling_from_json(spec_of(**widgets))
        except (ValueError, TypeError):
            return None
    rule = compile_rule(node.class_type)
    if rule.origin is not None:
        origin = rule.origin(node, value.name)
        if origin is None:
            return None
        return _loader_sampling(origin, folding)
    for side in rule.lora_sides:
        if side.output == value.name:
            return model_sampling_at_compile(node.inputs.get(side.input), folding, depth + 1)
    definition = registry().get(node.class_type)
    through = definition.weights_input(value.name) if definition is not None else None
    if through is not None:
        return model_sampling_at_compile(node.inputs.get(through), folding, depth + 1)
    return None


def _loader_sampling(origin: tuple[str, ...], folding: Any) -> Any:
    from comfyc.runtime.values import model_sampling_from_json

    from ..lowering.program import model_sampling_spec

    if folding.context.folding_clip is not None:
        return model_sampling_from_json(_DEFAULT_SPEC)
    try:
        store = folding.context.model_store()
        loaded = store.checkpoint(origin[1]) if origin[0] == "checkpoint" else None
    except Exception:  # noqa: BLE001 - a model that cannot load is reported by lowering
        return None
    if loaded is None:
        return None
    return model_sampling_from_json(model_sampling_spec(loaded))


def _fold_ksampler(node: Node, folding: Any) -> bool:
    from comfyc.runtime import schedules

    values = _values(node, ["steps", "scheduler", "denoise", "sampler_name"], folding)
    if values is None:
        return False
    sampling = model_sampling_at_compile(node.inputs.get("model"), folding)
    if sampling is None:
        return False
    try:
        sigmas = schedules.ksampler_sigmas(values["scheduler"], int(values["steps"]),
                                           values["sampler_name"], float(values["denoise"]),
                                           schedule=sampling)
    except (ValueError, KeyError):
        return False
    return folding.store_schedule(node, sigmas)


def _fold_ksampler_advanced(node: Node, folding: Any) -> bool:
    from comfyc.runtime.nodes import advanced_schedule

    values = _values(node, ["steps", "scheduler", "sampler_name", "start_at_step",
                            "end_at_step", "return_with_leftover_noise"], folding)
    if values is None:
        return False
    sampling = model_sampling_at_compile(node.inputs.get("model"), folding)
    if sampling is None:
        return False
    try:
        sigmas = advanced_schedule(values["scheduler"], int(values["steps"]),
                                   values["sampler_name"], int(values["start_at_step"]),
                                   int(values["end_at_step"]),
                                   values["return_with_leftover_noise"] == "enable", sampling)
    except (ValueError, KeyError):
        return False
    return folding.store_schedule(node, sigmas)


def _fold_model_schedule(node: Node, folding: Any) -> bool:
    """A custom-sampling scheduler reading the MODEL → ``FoldedSigmas`` when all is known."""
    from comfyc.runtime.errors import ProgramError
    from comfyc.runtime.nodes import registry

    definition = registry().get(node.class_type)
    schema = folding.catalog.get(node.class_type)
    if definition is None or schema is None:
        return False
    names = [i.name for i in schema.inputs if i.name != "model"]
    values = _values(node, names, folding)
    if values is None:
        return False
    sampling = model_sampling_at_compile(node.inputs.get("model"), folding)
    if sampling is None:
        return False

    class _Model:  # The op reads ``model.sampling`` only.
        pass

    model = _Model()
    model.sampling = sampling  # type: ignore[attr-defined]
    try:
        (sigmas,) = definition.run(None, model=model, **values)
    except (ValueError, ProgramError):
        return False
    return folding.replace_with_constant(node, sigmas, f"{node.class_type} on constants")


RULES: dict[str, CompileRule] = {
    "KSampler": CompileRule(fold=_fold_ksampler),
    "KSamplerAdvanced": CompileRule(fold=_fold_ksampler_advanced),
    "BasicScheduler": CompileRule(fold=_fold_model_schedule),
    "SDTurboScheduler": CompileRule(fold=_fold_model_schedule),
    "BetaSamplingScheduler": CompileRule(fold=_fold_model_schedule),
}
