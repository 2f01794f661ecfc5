"""What a graph page shows: the workflow before and after the passes, as plain data.

A :class:`GraphView` is built by :mod:`comfyc.compiler.viz.analysis` (from a workflow file or
an artifact) and drawn by :mod:`~comfyc.compiler.viz.svg`, :mod:`~comfyc.compiler.viz.html`
and :mod:`~comfyc.compiler.viz.dot`. It holds the union of both graphs: every node of the
workflow as written, with its fate under the compiler (kept, folded, merged, eliminated) and
the stage it lowered into, and the edges of each view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AFTER",
    "BEFORE",
    "BOTH",
    "STATUSES",
    "GraphView",
    "VizEdge",
    "VizNode",
    "VizRow",
    "VizStage",
]

#: A node's fate. ``kept``: runs as written; ``folded``: evaluated at compile time (or folded
#: into weights); ``merged``: an identical node replaces it (CSE); ``eliminated``: nothing that
#: is kept needs it (DCE, identity LoRA, a folded consumer).
STATUSES = ("kept", "folded", "merged", "eliminated")

#: Which view an element belongs to.
BEFORE, AFTER, BOTH = "before", "after", "both"


@dataclass(slots=True)
class VizRow:
    """One line in a node box.

    Attributes:
        name: The input or output name.
        kind: ``link`` (an input port), ``output`` (an output port), ``param`` or ``literal``.
        text: The value as shown (``literal``/``param`` rows).
        type: The ComfyUI type of a port.
        view: ``both``, ``before`` or ``after``: rows that change (a literal that became a
            param) appear once per view.
    """

    name: str
    kind: str
    text: str = ""
    type: str = ""
    view: str = BOTH


@dataclass(slots=True)
class VizNode:
    """One workflow node with the compiler's verdict.

    Attributes:
        id: The ComfyUI node id.
        class_type: The node class as written.
        title: The title shown (the node's title, else the class's display name).
        binding: The DSL binding name(s), if any.
        inputs: Link-input rows (ports on the left), in input order.
        outputs: Output rows (ports on the right).
        widgets: Literal and param rows (key inputs), already shortened.
        status: One of :data:`STATUSES`.
        note: What became of it (``CLIPTextEncode → constant conditioning``, ``merged into
            #3`` …); empty for kept nodes.
        tags: Small facts shown in the after view (``sigmas precomputed`` …).
        stage: The key of the :class:`VizStage` it calls, or None.
        in_before: Present in the workflow as written.
        in_after: Present in the optimised graph.
    """

    id: str
    class_type: str
    title: str
    binding: str = ""
    inputs: list[VizRow] = field(default_factory=list)
    outputs: list[VizRow] = field(default_factory=list)
    widgets: list[VizRow] = field(default_factory=list)
    status: str = "kept"
    note: str = ""
    tags: list[str] = field(default_factory=list)
    stage: str | None = None
    in_before: bool = True
    in_after: bool = True


@dataclass(slots=True)
class VizEdge:
    """A link from an output to an input.

    Attributes:
        src: Producer node id.
        src_index: Output index.
        dst: Consumer node id.
        dst_input: Input name on the consumer.
        type: The ComfyUI type (colours the edge).
        view: ``both``, ``before`` or ``after``.
    """

    src: str
    src_index: int
    dst: str
    dst_input: str
    type: str
    view: str = BOTH


@dataclass(slots=True)
class VizStage:
    """A model stage of the compiled program and the nodes that call it.

    Attributes:
        key: A unique key (the artifact's stage name, or ``kind:node`` for workflows).
        kind: ``unet``, ``text_encoder``, ``vae_decoder`` or ``vae_encoder``.
        name: The stage's name in the artifact, or a readable one for workflows.
        backend: Where it runs (``ort-cpu`` …).
        median_ms: The chosen backend's measured median time, when the artifact has one.
        detail: One line of extra facts (weights, measurements of other backends).
        members: Ids of the nodes that call this stage.
        ordinal: 1 for the first stage of its kind, 2 for the second … (the caption tells
            two UNets apart).
    """

    key: str
    kind: str
    name: str
    backend: str
    median_ms: float | None = None
    detail: str = ""
    members: list[str] = field(default_factory=list)
    ordinal: int = 1

    @property
    def label(self) -> str:
        """``unet · ort-cpu · 12.3 ms`` (``unet #2 · …`` for a second UNet) — the caption."""
        kind = self.kind if self.ordinal == 1 else f"{self.kind} #{self.ordinal}"
        text = f"{kind} · {self.backend}"
        if self.median_ms is not None:
            text += f" · {self.median_ms:.1f} ms"
        return text


@dataclass(slots=True)
class GraphView:
    """Everything a graph page shows.

    Attributes:
        title: The page title (the file name).
        source: The workflow or artifact path as given.
        kind: ``workflow`` or ``artifact``.
        nodes: Nodes by id, in topological order of the workflow as written.
        edges: Edges of both views.
        stages: Stages by key, in first-use order.
        stats: ``nodes_before``, ``nodes_after``, ``eliminated``, ``merged``, ``folded``.
        params: Runtime params of the optimised graph: ``name: TYPE = default``.
        notes: Facts about the view itself (e.g. an artifact that does not hold its source).
        extra: Free-form facts (machine of the measurements …).
    """

    title: str
    source: str
    kind: str
    nodes: dict[str, VizNode] = field(default_factory=dict)
    edges: list[VizEdge] = field(default_factory=list)
    stages: dict[str, VizStage] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    params: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def edges_in(self, view: str) -> list[VizEdge]:
        """The edges drawn in ``before`` or ``after``."""
        return [e for e in self.edges if e.view in (BOTH, view)]
