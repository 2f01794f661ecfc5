"""ComfyUI's JSON formats (API prompt, UI workflow) and PNG text chunks."""

from __future__ import annotations

from .api import graph_from_api, graph_to_api
from .png import read_text_chunks
from .ui import is_ui_workflow, ui_to_api

__all__ = ["graph_from_api", "graph_to_api", "read_text_chunks", "is_ui_workflow", "ui_to_api"]
