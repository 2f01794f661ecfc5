"""The node catalogue: schemas of the nodes comfyc understands (see ARCHITECTURE.md)."""

from __future__ import annotations

from .catalog import Catalog, ObjectInfoError, default_catalog
from .core_nodes import MAX_RESOLUTION, SAMPLERS, SCHEDULERS
from .schema import InputSpec, NodeSchema, OutputSpec, WidgetSlot

__all__ = [
    "Catalog", "ObjectInfoError", "default_catalog", "MAX_RESOLUTION", "SAMPLERS", "SCHEDULERS",
    "InputSpec", "NodeSchema", "OutputSpec", "WidgetSlot",
]
