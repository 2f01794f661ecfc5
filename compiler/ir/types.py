"""ComfyUI's value types, as the IR uses them.

The types belong to the node registry (:mod:`comfyc.runtime.nodes.types`), whose schemas
declare them; the IR re-exports them so compiler code keeps one import.
"""

from __future__ import annotations

from comfyc.runtime.nodes.types import (
    ANY,
    COMBO,
    KNOWN_TYPES,
    LINK_TYPES,
    WIDGET_TYPES,
    is_compatible,
    python_type_name,
)

__all__ = [
    "WIDGET_TYPES", "LINK_TYPES", "KNOWN_TYPES", "COMBO", "ANY", "is_compatible",
    "python_type_name",
]
