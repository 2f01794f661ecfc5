"""Draw a :class:`~comfyc.compiler.viz.model.GraphView` as SVG.

One drawing serves the HTML page and ``comfyc viz --format svg``. In ``both`` mode every
element of either view is present and carries ``only-before`` / ``only-after`` classes that
the page's stylesheet hides according to the root's ``view-before`` / ``view-after`` class;
a standalone SVG draws one view and leaves the other view's elements out, so it needs no
script and renders the same in any SVG viewer.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from .layout import FRAME_SEP, HEADER_H, NOTE_H, PAD, PORT_ROW_H, ROW_H, Layout, input_row
from .model import AFTER, BEFORE, BOTH, GraphView, VizNode

__all__ = [
    "FONT",
    "STAGE_COLOURS",
    "STATUS_TEXT",
    "SVG_STYLE",
    "TYPE_COLOURS",
    "render_svg",
    "type_colour",
]

#: Link colours by ComfyUI type (ComfyUI's default palette).
TYPE_COLOURS = {
    "MODEL": "#B39DDB", "CLIP": "#FFD500", "VAE": "#FF6E6E", "CONDITIONING": "#FFA931",
    "LATENT": "#FF9CF9", "IMAGE": "#64B5F6", "MASK": "#81C784", "CONTROL_NET": "#6EE7B7",
    "CLIP_VISION": "#A8DADC", "CLIP_VISION_OUTPUT": "#AD7452", "STYLE_MODEL": "#C2FFAE",
    "UPSCALE_MODEL": "#B0C4DE", "SIGMAS": "#CDFFCD", "SAMPLER": "#ECB4B4", "NOISE": "#B0B0B0",
    "GUIDER": "#66FFFF", "INT": "#9CCC65", "FLOAT": "#4DB6AC", "STRING": "#90A4AE",
    "BOOLEAN": "#A1887F",
}
#: Stage frame colours: the colour of the weights they run (MODEL, CLIP, VAE).
STAGE_COLOURS = {"unet": "#B39DDB", "text_encoder": "#FFD500", "vae_decoder": "#FF6E6E",
                 "vae_encoder": "#FF8A65"}
#: Badge text per status (after view).
STATUS_TEXT = {"folded": "FOLDED", "merged": "MERGED", "eliminated": "ELIMINATED"}
FONT = "DejaVu Sans, Liberation Sans, Helvetica, Arial, sans-serif"
_BG = "#1e1f22"

#: The stylesheet shared by the standalone SVG and the page.
SVG_STYLE = f"""
.comfyc-graph {{ background: {_BG}; }}
.comfyc-graph text {{ font-family: {FONT}; fill: #e6e6e6; }}
.comfyc-graph .node-body {{ fill: #2d2f33; stroke: #5b5f66; stroke-width: 1; }}
.comfyc-graph .node-head {{ fill: #3b3e44; }}
.comfyc-graph .title {{ font-size: 13.5px; font-weight: bold; }}
.comfyc-graph .sub {{ font-size: 10.5px; fill: #9aa0a6; }}
.comfyc-graph .row {{ font-size: 11px; fill: #c8c8c8; }}
.comfyc-graph .row .val {{ fill: #f0f0f0; }}
.comfyc-graph .param {{ fill: #8ab4f8; }}
.comfyc-graph .note {{ font-size: 10.5px; font-style: italic; fill: #ffcc80; }}
.comfyc-graph .tag {{ font-size: 10.5px; fill: #a5d6a7; }}
.comfyc-graph .badge text {{ font-size: 9.5px; font-weight: bold; fill: #1e1f22; }}
.comfyc-graph .edge {{ fill: none; stroke-width: 2.2; stroke-opacity: 0.9; }}
.comfyc-graph .stage-frame {{ stroke-width: 1.6; stroke-dasharray: 6 4; }}
.comfyc-graph .stage-label {{ font-size: 12.5px; font-weight: bold; }}
.comfyc-graph .stage-name {{ font-size: 10px; fill: #9aa0a6; }}
.comfyc-graph.view-before .only-after, .comfyc-graph.view-after .only-before {{ display: none; }}
.comfyc-graph.view-after .node.status-eliminated, .comfyc-graph.view-after .node.status-merged
  {{ opacity: 0.3; }}
.comfyc-graph.view-after .node.status-folded.gone {{ opacity: 0.5; }}
.comfyc-graph.view-after .node.status-folded .node-body {{ stroke: #ffb74d; stroke-width: 2;
  stroke-dasharray: 5 3; }}
.comfyc-graph.view-after .node.status-eliminated .node-body,
.comfyc-graph.view-after .node.status-merged .node-body {{ stroke-dasharray: 3 3; }}
"""

_BADGE_COLOURS = {"folded": "#ffb74d", "merged": "#90caf9", "eliminated": "#bdbdbd"}


def type_colour(type_: str) -> str:
    """The colour of a ComfyUI type (grey for types without one)."""
    return TYPE_COLOURS.get(type_.upper(), "#9e9e9e")


def _cls(view: str) -> str:
    return {BEFORE: " only-before", AFTER: " only-after"}.get(view, "")


def _keep(element_view: str, mode: str) -> bool:
    """Whether an element of ``element_view`` is drawn in ``mode``."""
    return mode == BOTH or element_view in (BOTH, mode)


def _path(points: list[tuple[float, float]]) -> str:
    """A smooth path through ``points`` with horizontal tangents at each point."""
    (x0, y0), rest = points[0], points[1:]
    parts = [f"M{x0:.1f},{y0:.1f}"]
    for x1, y1 in rest:
        if abs(x1 - x0) < 1e-6 or abs(y1 - y0) < 0.5:
            parts.append(f"L{x1:.1f},{y1:.1f}")
        else:
            dx = max(abs(x1 - x0) / 2, 20.0)
            parts.append(f"C{x0 + dx:.1f},{y0:.1f} {x1 - dx:.1f},{y1:.1f} {x1:.1f},{y1:.1f}")
        x0, y0 = x1, y1
    return " ".join(parts)


def render_svg(view: GraphView, layout: Layout, *, mode: str = AFTER, legend: bool = True,
               standalone: bool = True) -> str:
    """The SVG text of ``view``.

    Args:
        view: What to draw.
        layout: Where (from :func:`~comfyc.compiler.viz.layout.layout_view`).
        mode: ``after`` or ``before`` (one view, the other's elements left out) or ``both``
            (every element, classed for the page's toggle).
        legend: Draw a legend of edge types and stages below the graph.
        standalone: Add the XML declaration and the stylesheet (a file of its own).
    """
    legend_h = _legend_height(view) if legend else 0.0
    width = max(layout.width, 560.0, _legend_width(view) if legend else 0.0)
    height = layout.height + legend_h
    root_view = AFTER if mode == BOTH else mode
    out = []
    if standalone:
        out.append('<?xml version="1.0" encoding="UTF-8"?>')
    out.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="comfyc-graph view-{root_view}" '
        f'id="graph" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
        f'aria-label={quoteattr(f"workflow graph of {view.title}")}>')
    if standalone:
        out.append(f"<style>{SVG_STYLE}</style>")
    out.append(f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="{_BG}"/>')
    out.extend(_stages(view, layout, mode))
    out.append('<g class="edges">')
    for edge, points in zip(view.edges, layout.edges):
        if not points or not _keep(edge.view, mode):
            continue
        out.append(f'<path class="edge{_cls(edge.view) if mode == BOTH else ""}" '
                   f'data-type="{escape(edge.type)}" stroke="{type_colour(edge.type)}" '
                   f'd="{_path(points)}"><title>{escape(edge.type)}: #{escape(edge.src)} → '
                   f'#{escape(edge.dst)}.{escape(edge.dst_input)}</title></path>')
    out.append("</g>")
    out.append('<g class="nodes">')
    for node in view.nodes.values():
        if mode != BOTH and not (node.in_before if mode == BEFORE else True):
            continue
        out.extend(_node(node, layout, mode))
    out.append("</g>")
    if legend:
        out.extend(_legend(view, layout.height))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _stages(view: GraphView, layout: Layout, mode: str) -> list[str]:
    if mode == BEFORE:
        return []
    out = [f'<g class="stages{" only-after" if mode == BOTH else ""}">']
    for frame_key, (x, y, w, h) in layout.stages.items():
        key = frame_key if frame_key in view.stages else frame_key.rsplit(FRAME_SEP, 1)[0]
        stage = view.stages[key]
        colour = STAGE_COLOURS.get(stage.kind, "#9e9e9e")
        out.append(f'<g class="stage stage-{escape(stage.kind)}" data-stage={quoteattr(key)}>')
        out.append(f"<title>{escape(stage.name)}: {escape(stage.detail or stage.label)}</title>")
        out.append(f'<rect class="stage-frame" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" '
                   f'height="{h:.1f}" rx="10" fill="{colour}" fill-opacity="0.09" '
                   f'stroke="{colour}"/>')
        out.append(f'<text class="stage-label" x="{x + 10:.1f}" y="{y + 16:.1f}" '
                   f'fill="{colour}" style="fill:{colour}">{escape(stage.label)}</text>')
        out.append("</g>")
    out.append("</g>")
    return out


def _node(node: VizNode, layout: Layout, mode: str) -> list[str]:
    box = layout.boxes[node.id]
    x, y, w, h = box.x, box.y, box.w, box.h
    classes = f"node status-{node.status}"
    if not node.in_after:
        classes += " gone"
    if mode == BOTH and not node.in_before:
        classes += " only-after"
    tip = f"#{node.id} {node.class_type}"
    if node.note:
        tip += f" — {node.status}: {node.note}"
    out = [(f'<g class="{classes}" id={quoteattr("node-" + node.id)} '
            f'data-id={quoteattr(node.id)} data-status="{node.status}">'),
           f"<title>{escape(tip)}</title>",
           (f'<rect class="node-body" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" '
            f'height="{h:.1f}" rx="7"/>'),
           (f'<path class="node-head" d="M{x:.1f},{y + 7:.1f} a7,7 0 0 1 7,-7 h{w - 14:.1f} '
            f'a7,7 0 0 1 7,7 v{HEADER_H - 7:.1f} h{-w:.1f} z"/>'),
           f'<text class="title" x="{x + PAD:.1f}" y="{y + 17:.1f}">{escape(node.title)}</text>']
    sub = f"#{node.id} {node.class_type}" + (f" · {node.binding}" if node.binding else "")
    out.append(f'<text class="sub" x="{x + PAD:.1f}" y="{y + 33:.1f}">{escape(sub)}</text>')
    if node.status != "kept" and mode != BEFORE:
        out.extend(_badge(node, x + w, y, mode))
    seen: dict[str, int] = {}
    for row in node.inputs:
        if not _keep(row.view, mode) or row.name in seen:
            continue
        index = input_row(node, row.name)
        seen[row.name] = index
        cy = y + HEADER_H + index * PORT_ROW_H + PORT_ROW_H / 2
        out.append(f'<circle cx="{x:.1f}" cy="{cy:.1f}" r="4.5" '
                   f'fill="{type_colour(row.type)}"/>')
        out.append(f'<text class="row" x="{x + 10:.1f}" y="{cy + 4:.1f}">'
                   f"{escape(row.name)}</text>")
    for index, row in enumerate(node.outputs):
        cy = y + HEADER_H + index * PORT_ROW_H + PORT_ROW_H / 2
        out.append(f'<circle cx="{x + w:.1f}" cy="{cy:.1f}" r="4.5" '
                   f'fill="{type_colour(row.type)}"/>')
        out.append(f'<text class="row" x="{x + w - 10:.1f}" y="{cy + 4:.1f}" '
                   f'text-anchor="end">{escape(row.name)}</text>')
    ports = max(len({r.name for r in node.inputs}), len(node.outputs))
    cy = y + HEADER_H + ports * PORT_ROW_H
    # A row that changed (a literal that became a param) has a line per view, drawn in the
    # same place.
    previous = None
    for row in node.widgets:
        if not _keep(row.view, mode):
            continue
        if (mode == BOTH and row.view == AFTER and previous is not None
                and previous.name == row.name and previous.view == BEFORE):
            cy -= ROW_H  # The after version of a changed row replaces its before version.
        cls = "row" + (_cls(row.view) if mode == BOTH else "")
        value_cls = "val param" if row.kind == "param" else "val"
        label = f"{escape(row.name)}: " if row.name else ""
        out.append(f'<text class="{cls}" x="{x + PAD:.1f}" y="{cy + 12:.1f}">{label}'
                   f'<tspan class="{value_cls}">{escape(row.text)}</tspan></text>')
        cy += ROW_H
        previous = row
    if mode != BEFORE:
        extra = "" if mode != BOTH else " only-after"
        if node.note:
            out.append(f'<text class="note{extra}" x="{x + PAD:.1f}" y="{cy + 12:.1f}">'
                       f"{escape(_note_text(node))}</text>")
            cy += NOTE_H
        elif node.status != "kept":
            cy += NOTE_H
        for tag in node.tags:
            out.append(f'<text class="tag{extra}" x="{x + PAD:.1f}" y="{cy + 12:.1f}">'
                       f"• {escape(tag)}</text>")
            cy += NOTE_H
    out.append("</g>")
    return out


def _note_text(node: VizNode) -> str:
    prefix = {"folded": "folded: ", "merged": "", "eliminated": "eliminated: "}
    return prefix.get(node.status, "") + node.note


def _badge(node: VizNode, right: float, top: float, mode: str) -> list[str]:
    text = STATUS_TEXT.get(node.status, node.status.upper())
    width = len(text) * 6.6 + 10
    colour = _BADGE_COLOURS.get(node.status, "#bdbdbd")
    extra = " only-after" if mode == BOTH else ""
    return [f'<g class="badge{extra}">',
            (f'<rect x="{right - width - 6:.1f}" y="{top - 8:.1f}" width="{width:.1f}" '
             f'height="15" rx="7" fill="{colour}"/>'),
            (f'<text x="{right - width / 2 - 6:.1f}" y="{top + 3:.1f}" '
             f'text-anchor="middle">{escape(text)}</text>'), "</g>"]


def _legend_width(view: GraphView) -> float:
    types = sum(40 + len(t) * 7 for t in dict.fromkeys(e.type for e in view.edges))
    stages = sum(40 + len(s.label) * 6.6 for s in view.stages.values())
    return 90.0 + max(types, stages)


def _legend_height(view: GraphView) -> float:
    return 30.0 + 20.0 * (1 + (1 if view.stages else 0))


def _legend(view: GraphView, top: float) -> list[str]:
    """Edge types used, node statuses and stages, as rows of swatches."""
    out = ['<g class="legend">']
    y = top + 10
    types = list(dict.fromkeys(e.type for e in view.edges))
    x = 20.0
    out.append(f'<text class="row" x="{x:.1f}" y="{y + 4:.1f}">edges:</text>')
    x += 50
    for type_ in types:
        out.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 22:.1f}" y2="{y:.1f}" '
                   f'stroke="{type_colour(type_)}" stroke-width="3"/>')
        out.append(f'<text class="row" x="{x + 27:.1f}" y="{y + 4:.1f}">{escape(type_)}</text>')
        x += 40 + len(type_) * 7
    y += 22
    if view.stages:
        x = 20.0
        out.append(f'<text class="row" x="{x:.1f}" y="{y + 4:.1f}">stages:</text>')
        x += 50
        for stage in view.stages.values():
            colour = STAGE_COLOURS.get(stage.kind, "#9e9e9e")
            out.append(f'<rect x="{x:.1f}" y="{y - 6:.1f}" width="14" height="12" rx="3" '
                       f'fill="{colour}" fill-opacity="0.35" stroke="{colour}"/>')
            out.append(f'<text class="row" x="{x + 19:.1f}" y="{y + 4:.1f}">'
                       f"{escape(stage.label)}</text>")
            x += 40 + len(stage.label) * 6.6
        y += 22
    out.append("</g>")
    return out
