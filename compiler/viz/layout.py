"""A layered left-to-right layout of a :class:`~comfyc.compiler.viz.model.GraphView`.

The classic Sugiyama steps, kept small:

1. **Layers** by longest path from the sources over the edges of both views, then every node
   is moved right up to its first consumer (loaders and empty latents sit next to what they
   feed instead of all in the first column).
2. **Dummy points** on edges that span several layers, so those edges are routed between
   the nodes of the layers they cross.
3. **Order** within each layer by repeated barycentric sweeps (mean position of neighbours in
   the previous layer, then in the next one).
4. **Coordinates**: columns as wide as their widest node; in each column, boxes go as near as
   they can to the mean height of their neighbours without overlapping.

The same layout serves both views (before and after optimisation), so toggling them keeps
every node in place. Text widths are estimated from character counts (no font metrics are
available without a browser); boxes are sized generously.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

from .model import AFTER, BEFORE, GraphView, VizNode

__all__ = ["FRAME_SEP", "HEADER_H", "PORT_ROW_H", "ROW_H", "Box", "Layout", "layout_view"]

HEADER_H = 40  # Title line and the "#id class · binding" line.
PORT_ROW_H = 18
ROW_H = 16
PAD = 8
NOTE_H = 16
MIN_W = 170
MAX_W = 330
COL_GAP = 90
NODE_GAP = 46
#: Joins a stage key and a frame number when a stage is drawn as several frames.
FRAME_SEP = "@frame"
DUMMY_H = 8
MARGIN = 40
STAGE_PAD = 12
STAGE_LABEL_H = 22
_SWEEPS = 8


def _text_w(text: str, size: float = 12) -> float:
    """Estimated width in pixels of ``text`` in a sans-serif font of ``size`` px."""
    return len(text) * size * 0.6


@dataclass(slots=True)
class Box:
    """A placed node (or a dummy point of a long edge).

    Attributes:
        id: The node id (dummies: ``~edge index~layer``).
        x: Left.
        y: Top.
        w: Width.
        h: Height.
        layer: Its column.
        dummy: A dummy point, not a node.
    """

    id: str
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0
    layer: int = 0
    dummy: bool = False

    @property
    def cy(self) -> float:
        """Vertical centre."""
        return self.y + self.h / 2


@dataclass(slots=True)
class Layout:
    """Positions of everything drawn.

    Attributes:
        boxes: Node boxes by id.
        edges: Per edge of ``view.edges`` (same index), the points it passes through.
        stages: ``(x, y, w, h)`` of each stage frame, keyed by the stage key (further frames
            of a stage drawn one per node: ``KEY@frameN``).
        width: Canvas width.
        height: Canvas height.
    """

    boxes: dict[str, Box] = field(default_factory=dict)
    edges: list[list[tuple[float, float]]] = field(default_factory=list)
    stages: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    width: float = 0.0
    height: float = 0.0


def node_size(node: VizNode) -> tuple[float, float]:
    """Width and height of a node box."""
    texts = [(node.title, 13.5), (f"#{node.id} {node.class_type} · {node.binding}", 10.5)]
    texts += [(f"{r.name}: {r.text}", 11) for r in node.widgets]
    texts += [(f"{a.name}    {b.name}", 11) for a, b in zip(node.inputs, node.outputs)]
    texts += [(node.note, 10.5)] + [(t, 10.5) for t in node.tags]
    width = max(_text_w(t, s) for t, s in texts) + 2 * PAD + 12
    width = min(MAX_W, max(MIN_W, width))
    ports = max(len({r.name for r in node.inputs}), len(node.outputs))
    extra = (1 if node.note or node.status != "kept" else 0) + len(node.tags)
    height = (HEADER_H + ports * PORT_ROW_H + widget_slots(node) * ROW_H + extra * NOTE_H
              + PAD)
    return width, height


def widget_slots(node: VizNode) -> int:
    """Widget lines of a node box: a row that changed between the views (its ``after``
    version right after its ``before`` one) takes one line."""
    slots = 0
    for index, row in enumerate(node.widgets):
        previous = node.widgets[index - 1] if index else None
        if not (row.view == AFTER and previous is not None and previous.name == row.name
                and previous.view == BEFORE):
            slots += 1
    return slots


def input_row(node: VizNode, name: str) -> int:
    """The port row of a link input (rows with the same name share a port)."""
    names: list[str] = []
    for row in node.inputs:
        if row.name not in names:
            names.append(row.name)
    return names.index(name) if name in names else 0


def _layers(view: GraphView) -> dict[str, int]:
    order = list(view.nodes)
    index = {node_id: i for i, node_id in enumerate(order)}
    preds: dict[str, list[str]] = {n: [] for n in order}
    succs: dict[str, list[str]] = {n: [] for n in order}
    for edge in view.edges:
        if edge.src in index and edge.dst in index and index[edge.src] < index[edge.dst]:
            preds[edge.dst].append(edge.src)
            succs[edge.src].append(edge.dst)
    layer: dict[str, int] = {}
    for node_id in order:
        layer[node_id] = max((layer[p] + 1 for p in preds[node_id]), default=0)
    # NOTE: pulling nodes right towards their consumers keeps loaders and empty latents
    # beside what they feed; a node keeps at least its longest-path layer.
    for node_id in reversed(order):
        if succs[node_id]:
            layer[node_id] = max(layer[node_id], min(layer[s] for s in succs[node_id]) - 1)
    return layer


def layout_view(view: GraphView) -> Layout:
    """Place the nodes, route the edges and frame the stages of ``view``."""
    out = Layout()
    layer = _layers(view)
    for node_id, node in view.nodes.items():
        w, h = node_size(node)
        out.boxes[node_id] = Box(node_id, w=w, h=h, layer=layer[node_id])
    # Dummy points on long edges; an edge's chain is its list of box ids, ends included.
    chains: list[list[str]] = []
    for number, edge in enumerate(view.edges):
        if edge.src not in layer or edge.dst not in layer:
            chains.append([])
            continue
        chain = [edge.src]
        for step in range(layer[edge.src] + 1, layer[edge.dst]):
            dummy = f"~{number}~{step}"
            out.boxes[dummy] = Box(dummy, h=DUMMY_H, layer=step, dummy=True)
            chain.append(dummy)
        chain.append(edge.dst)
        chains.append(chain)
    columns = _order(out.boxes, chains)
    _place(out, columns, chains)
    _route(view, out, chains)
    _frame_stages(view, out)
    for x, _, w, _ in out.stages.values():
        out.width = max(out.width, x + w + MARGIN)
    return out


def _order(boxes: dict[str, Box], chains: list[list[str]]) -> list[list[str]]:
    """Layers as ordered lists of box ids (barycentric sweeps)."""
    count = max((b.layer for b in boxes.values()), default=0) + 1
    columns: list[list[str]] = [[] for _ in range(count)]
    for box_id, box in boxes.items():
        columns[box.layer].append(box_id)
    up: dict[str, list[str]] = {b: [] for b in boxes}
    down: dict[str, list[str]] = {b: [] for b in boxes}
    for chain in chains:
        for a, b in pairwise(chain):
            if boxes[b].layer == boxes[a].layer + 1:
                down[a].append(b)
                up[b].append(a)
    for sweep in range(_SWEEPS):
        forward = sweep % 2 == 0
        sequence = range(1, count) if forward else range(count - 2, -1, -1)
        for i in sequence:
            ref = columns[i - 1] if forward else columns[i + 1]
            pos = {b: k for k, b in enumerate(ref)}
            links = up if forward else down
            current = {b: k for k, b in enumerate(columns[i])}

            def key(box_id: str, pos: dict[str, int] = pos, links: dict[str, list[str]] = links,
                    current: dict[str, int] = current) -> tuple[float, int]:
                near = [pos[n] for n in links[box_id] if n in pos]
                return (sum(near) / len(near) if near else float(current[box_id]),
                        current[box_id])

            columns[i].sort(key=key)
    return columns


def _place(out: Layout, columns: list[list[str]], chains: list[list[str]]) -> None:
    """Give every box its coordinates."""
    boxes = out.boxes
    x = float(MARGIN)
    for column in columns:
        width = max((boxes[b].w for b in column if not boxes[b].dummy), default=0.0)
        for box_id in column:
            box = boxes[box_id]
            box.x = x
            if box.dummy:
                box.w = width  # A dummy spans its column: edges pass straight through.
        x += width + COL_GAP
    out.width = x - COL_GAP + MARGIN
    neighbours: dict[str, list[str]] = {b: [] for b in boxes}
    for chain in chains:
        for a, b in pairwise(chain):
            neighbours[a].append(b)
            neighbours[b].append(a)
    for column in columns:  # Start stacked.
        y = float(MARGIN + STAGE_LABEL_H)
        for box_id in column:
            boxes[box_id].y = y
            y += boxes[box_id].h + NODE_GAP
    for sweep in range(_SWEEPS):
        sequence = columns if sweep % 2 == 0 else list(reversed(columns))
        for column in sequence:
            desired = []
            for box_id in column:
                near = [boxes[n].cy for n in neighbours[box_id]]
                centre = sum(near) / len(near) if near else boxes[box_id].cy
                desired.append(centre - boxes[box_id].h / 2)
            _pack(column, desired, boxes)
    top = min((b.y for b in boxes.values()), default=0.0)
    shift = MARGIN + STAGE_LABEL_H + STAGE_PAD - top
    for box in boxes.values():
        box.y += shift
    out.height = max((b.y + b.h for b in boxes.values()), default=0.0) + MARGIN


def _pack(column: list[str], desired: list[float], boxes: dict[str, Box]) -> None:
    """Place a column's boxes in order, each as near its desired top as overlaps allow."""
    tops = list(desired)
    for i in range(1, len(column)):
        prev = boxes[column[i - 1]]
        tops[i] = max(tops[i], tops[i - 1] + prev.h + _gap(prev, boxes[column[i]]))
    # Shift the column up by the mean overshoot, then push down again where needed.
    if column:
        mean = sum(t - d for t, d in zip(tops, desired)) / len(column)
        tops = [t - mean for t in tops]
        for i in range(1, len(column)):
            prev = boxes[column[i - 1]]
            tops[i] = max(tops[i], tops[i - 1] + prev.h + _gap(prev, boxes[column[i]]))
    for box_id, top in zip(column, tops):
        boxes[box_id].y = top


def _gap(a: Box, b: Box) -> float:
    """Space between neighbours: edges may pass close to each other, nodes keep room for a
    stage frame's caption even with edges between them."""
    if a.dummy and b.dummy:
        return 6.0
    return NODE_GAP / 2 if a.dummy or b.dummy else float(NODE_GAP)


def port_y(box: Box, node: VizNode | None, row: int) -> float:
    """The height of port row ``row`` of a node box."""
    if node is None:
        return box.cy
    return box.y + HEADER_H + row * PORT_ROW_H + PORT_ROW_H / 2


def _route(view: GraphView, out: Layout, chains: list[list[str]]) -> None:
    boxes = out.boxes
    for edge, chain in zip(view.edges, chains):
        if not chain:
            out.edges.append([])
            continue
        src, dst = boxes[edge.src], boxes[edge.dst]
        points = [(src.x + src.w, port_y(src, view.nodes[edge.src], edge.src_index))]
        for dummy_id in chain[1:-1]:
            dummy = boxes[dummy_id]
            points += [(dummy.x, dummy.cy), (dummy.x + dummy.w, dummy.cy)]
        row = input_row(view.nodes[edge.dst], edge.dst_input)
        points.append((dst.x, port_y(dst, view.nodes[edge.dst], row)))
        out.edges.append(points)


def _frame_stages(view: GraphView, out: Layout) -> None:
    """One frame around a stage's nodes; one per node when that frame would take in others."""
    for key, stage in view.stages.items():
        members = [out.boxes[m] for m in stage.members if m in out.boxes]
        if not members:
            continue
        label_w = _text_w(stage.label, 12.5) + 24
        frame = _frame(members, label_w)
        inside = [b for b in out.boxes.values() if not b.dummy and b.id not in stage.members
                  and _overlaps(frame, b)]
        if not inside:
            out.stages[key] = frame
            continue
        for number, box in enumerate(members):
            out.stages[key if number == 0 else f"{key}{FRAME_SEP}{number}"] = _frame([box],
                                                                                    label_w)


def _frame(members: list[Box], min_w: float) -> tuple[float, float, float, float]:
    left = min(b.x for b in members) - STAGE_PAD
    top = min(b.y for b in members) - STAGE_PAD - STAGE_LABEL_H
    right = max(max(b.x + b.w for b in members) + STAGE_PAD, left + min_w)
    bottom = max(b.y + b.h for b in members) + STAGE_PAD
    return (left, top, right - left, bottom - top)


def _overlaps(frame: tuple[float, float, float, float], box: Box) -> bool:
    x, y, w, h = frame
    return box.x < x + w and box.x + box.w > x and box.y < y + h and box.y + box.h > y
