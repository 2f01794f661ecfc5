"""The node registry's runtime half: one entry per ComfyUI node class, one module per family.

=======================  ====================================================================
family                   ComfyUI's counterpart
=======================  ====================================================================
:mod:`.loaders`          ``nodes.py`` loaders (checkpoints, VAEs, LoRAs, ControlNets …)
:mod:`.conditioning`     CLIP text encoding, CLIP skip, conditioning ops
:mod:`.controlnet`       ControlNet / T2I-Adapter loaders and apply nodes
:mod:`.latent`           empty latents, latent scaling and batches, VAE encode/decode
:mod:`.sampling`         KSampler, KSamplerAdvanced, model-sampling patches
:mod:`.custom_sampling`  ``nodes_custom_sampler.py``: samplers, schedules, noise, guiders
:mod:`.image`            image loading, saving, scaling, padding
:mod:`.mask`             ``nodes_mask.py``
:mod:`.compositing`      ``nodes_compositing.py``
:mod:`.canny`            ``nodes_canny.py``
:mod:`.primitives`       ``comfy_extras/nodes_primitive.py``
:mod:`.internal`         comfyc's own classes (folded constants) and program-only ops
=======================  ====================================================================

:func:`registry` builds the :class:`~.registry.NodeRegistry` once per process. The compiler's
half of each entry (fold and lowering rules) is :mod:`comfyc.compiler.nodes`. Adding a node
class means adding one :class:`~.registry.NodeDef` to its family's ``NODES`` list (and, only
when it needs the compiler's help — a model loader, a fold that runs a model — one rule there).
"""

from __future__ import annotations

from typing import Any

from . import (
    canny,
    compositing,
    conditioning,
    controlnet,
    custom_sampling,
    image,
    internal,
    latent,
    loaders,
    mask,
    primitives,
    sampling,
)
from .conditioning import encode_text
from .latent import vae_decode, vae_encode
from .registry import NodeDef, NodeRegistry, OpFn, StageCall, lazy_op
from .sampling import SAMPLER_NAMES, SCHEDULER_NAMES, advanced_schedule

__all__ = ["registry", "NodeDef", "NodeRegistry", "StageCall", "OpFn", "lazy_op",
           "encode_text", "vae_decode", "vae_encode", "advanced_schedule", "SAMPLER_NAMES",
           "SCHEDULER_NAMES", "FAMILIES"]

#: The family modules in catalogue order (the order ``/object_info`` lists classes in).
FAMILIES = (loaders, conditioning, controlnet, latent, sampling, custom_sampling, image, mask,
            compositing, canny, primitives, internal)

_REGISTRY: NodeRegistry | None = None


def registry() -> NodeRegistry:
    """The registry of every built-in node class (built on first use, then shared)."""
    global _REGISTRY
    if _REGISTRY is None:
        program_ops: dict[str, OpFn] = {}
        for family in FAMILIES:
            program_ops.update(getattr(family, "PROGRAM_OPS", {}))
        _REGISTRY = NodeRegistry.build([family.NODES for family in FAMILIES], program_ops)
    return _REGISTRY


def __getattr__(name: str) -> Any:
    # NOTE: ``OPS`` (the op table by name) is what programs look ops up in; it is built on
    # first use so importing a family module never builds the registry.
    if name == "OPS":
        return registry().op_table()
    raise AttributeError(f"module 'comfyc.runtime.nodes' has no attribute {name!r}")
