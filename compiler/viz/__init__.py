"""Graph pages: draw a workflow or an artifact as a left-to-right node graph.

``render(view_of_graph(graph), "html")`` gives one self-contained HTML page (``svg`` and
``dot`` too). :mod:`.analysis` works out what the compiler does to each node (from the change
log of the passes), :mod:`.layout` places the nodes, :mod:`.svg`, :mod:`.html` and :mod:`.dot`
draw them. Nothing here loads model weights or imports torch, and nothing reads files: the
command line (:func:`comfyc.cli.commands.viz.build_view`) loads workflows and artifacts.
"""

from __future__ import annotations

from .analysis import placeholder_clip, view_of_artifact, view_of_graph
from .model import GraphView

__all__ = [
    "FORMATS",
    "GraphView",
    "placeholder_clip",
    "render",
    "view_of_artifact",
    "view_of_graph",
]

FORMATS = ("html", "svg", "dot")


def render(view: GraphView, fmt: str = "html", *, mode: str = "after") -> str:
    """The text of ``view`` as ``html``, ``svg`` or ``dot``.

    Args:
        view: What to draw.
        fmt: One of :data:`FORMATS`.
        mode: For svg and dot, which view: ``after`` (the compiler's) or ``before``; the HTML
            page has both and a toggle.

    Raises:
        ValueError: An unknown format or mode.
    """
    if fmt == "dot":
        from .dot import render_dot

        return render_dot(view, mode=mode)
    from .layout import layout_view

    layout = layout_view(view)
    if fmt == "html":
        from .html import render_html

        return render_html(view, layout)
    if fmt == "svg":
        if mode not in ("after", "before"):
            raise ValueError(f"mode must be 'after' or 'before', got {mode!r}")
        from .svg import render_svg

        return render_svg(view, layout, mode=mode)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
