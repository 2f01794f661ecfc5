"""The node catalogue: schemas of the nodes comfyc understands (see ARCHITECTURE.md).

The schemas themselves are part of the node registry (:mod:`comfyc.runtime.nodes`); the
catalogue adds classes read from a ComfyUI ``/object_info`` dump.
"""

from __future__ import annotations

from comfyc.runtime.nodes import SAMPLER_NAMES, SCHEDULER_NAMES
from comfyc.runtime.nodes.schema import (
    MAX_RESOLUTION,
    InputSpec,
    NodeSchema,
    OutputSpec,
    WidgetSlot,
)

from .catalog import Catalog, ObjectInfoError, default_catalog

#: ``KSampler.SAMPLERS`` / ``SCHEDULER_HANDLERS`` in ComfyUI's combo order.
SAMPLERS = list(SAMPLER_NAMES)
SCHEDULERS = list(SCHEDULER_NAMES)

__all__ = [
    "Catalog", "ObjectInfoError", "default_catalog", "MAX_RESOLUTION", "SAMPLERS", "SCHEDULERS",
    "InputSpec", "NodeSchema", "OutputSpec", "WidgetSlot",
]
