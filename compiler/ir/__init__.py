"""The IR: typed, located graphs of ComfyUI nodes (see ARCHITECTURE.md, "The IR")."""

from __future__ import annotations

from .core import (
    MISSING,
    CycleError,
    Graph,
    GraphSource,
    Input,
    Node,
    NodeFacts,
    Param,
    SourceLoc,
    Usage,
    Value,
)
from .types import is_compatible

__all__ = [
    "MISSING", "CycleError", "Graph", "GraphSource", "Input", "Node", "NodeFacts", "Param",
    "SourceLoc", "Usage", "Value", "is_compatible",
]
