"""Write a :class:`~comfyc.compiler.viz.model.GraphView` as Graphviz DOT text.

No Graphviz is needed to write it (``dot -Tsvg graph.dot > graph.svg`` draws it where
Graphviz is installed). One view per file: ``after`` puts the nodes that call a model stage in
a cluster labelled like the page (``unet · ort-cpu · 12.3 ms``), draws eliminated and merged
nodes grey and dashed and folded nodes dashed orange with what they became; ``before`` is the
workflow as written.
"""

from __future__ import annotations

from .model import AFTER, BEFORE, GraphView, VizNode
from .svg import STAGE_COLOURS, type_colour

__all__ = ["render_dot"]


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _label(node: VizNode, view: str) -> str:
    lines = [node.title, f"#{node.id} {node.class_type}"]
    for row in node.widgets:
        if row.view in ("both", view):
            lines.append(f"{row.name}: {row.text}" if row.name else row.text)
    if view == AFTER and node.note:
        lines.append(f"[{node.status}] {node.note}")
    if view == AFTER:
        lines += [f"• {tag}" for tag in node.tags]
    # NOTE: "\l" ends a left-justified line in Graphviz; the title line ("\n") is centred.
    escaped = [line.replace("\\", "\\\\").replace('"', '\\"') for line in lines]
    return '"' + escaped[0] + "\\n" + "\\l".join(escaped[1:]) + '\\l"'


def _attrs(node: VizNode, view: str) -> str:
    style = ["rounded", "filled"]
    colour, fill, font = "#5b5f66", "#f4f4f4", "#202124"
    if view == AFTER and node.status in ("eliminated", "merged"):
        style.append("dashed")
        colour, fill, font = "#9e9e9e", "#eeeeee", "#9e9e9e"
    elif view == AFTER and node.status == "folded":
        style.append("dashed")
        colour, fill = "#ef8f00", "#fff3e0"
    return (f"shape=box, style={_q(','.join(style))}, color={_q(colour)}, "
            f"fillcolor={_q(fill)}, fontcolor={_q(font)}")


def render_dot(view: GraphView, *, mode: str = AFTER) -> str:
    """DOT text of ``view`` in ``mode`` (``after`` or ``before``)."""
    if mode not in (AFTER, BEFORE):
        raise ValueError(f"mode must be 'after' or 'before', got {mode!r}")
    lines = [f"// comfyc viz: {view.title} ({mode} optimization)",
             f"digraph {_q(view.title)} {{",
             "  rankdir=LR;",
             f"  label={_q(f'{view.title} — {mode} optimization')}; labelloc=t; fontsize=16;",
             '  node [fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=9, penwidth=2];']
    shown = [n for n in view.nodes.values() if (n.in_before if mode == BEFORE else True)]
    clustered: set[str] = set()
    if mode == AFTER:
        for number, stage in enumerate(view.stages.values()):
            colour = STAGE_COLOURS.get(stage.kind, "#9e9e9e")
            lines.append(f"  subgraph cluster_{number} {{")
            caption = stage.label if stage.name == stage.kind else f"{stage.label}\n{stage.name}"
            lines.append(f"    label={_q(caption)};")
            lines.append(f"    style=\"rounded,dashed\"; color={_q(colour)}; penwidth=2;")
            for member in stage.members:
                if member in view.nodes:
                    node = view.nodes[member]
                    lines.append(f"    {_q(node.id)} [label={_label(node, mode)}, "
                                 f"{_attrs(node, mode)}];")
                    clustered.add(member)
            lines.append("  }")
    for node in shown:
        if node.id not in clustered:
            lines.append(f"  {_q(node.id)} [label={_label(node, mode)}, {_attrs(node, mode)}];")
    for edge in view.edges_in(mode):
        if mode == BEFORE and not view.nodes.get(edge.src, VizNode("", "", "")).in_before:
            continue
        lines.append(f"  {_q(edge.src)} -> {_q(edge.dst)} [color={_q(type_colour(edge.type))}, "
                     f"tooltip={_q(edge.type)}, headlabel={_q(edge.dst_input)}, "
                     f"labelfontcolor=\"#777777\"];")
    lines.append("}")
    return "\n".join(lines) + "\n"
