"""Build a :class:`~comfyc.compiler.viz.model.GraphView` from a workflow graph or an artifact.

For a workflow, the compile pipeline (:func:`comfyc.compiler.pipeline.build_passes`) runs on a
copy of the graph and its change log (:class:`~comfyc.compiler.passes.base.ChangeLog`) says
what happened to every node: removed by dead-node elimination (eliminated), merged into an
identical node (merged), replaced by a value computed at compile time (folded), removed
because only folded nodes needed it, an identity LoRA, a LoRA merged into the weights. Prompt
encodings fold with a placeholder tensor instead of running the text encoder, so drawing a
workflow never loads model weights or imports torch, and works when the checkpoint is not on
this machine. An artifact keeps the compile's own change log in its manifest (``changes``),
and the optimised graph as DSL (``optimized``).

Stages come from the node registry: a node calls the stages its entry names
(:attr:`~comfyc.runtime.nodes.NodeDef.calls`) through the MODEL / CLIP / VAE input it names,
and the weights behind that input (:func:`~comfyc.compiler.nodes.trace_weights`: a loader, the
LoRAs on the way, the CLIP layer) tell which calls share one stage. For an artifact the stage of
each node is read from the program in ``manifest.json`` (the ``$stage`` arguments of the
loader ops), with the backend from the manifest's ``plan`` and, when the autotuner measured
it, the chosen backend's median time from ``autotune["stages"][STAGE]``.

Loading files is the command line's job (:mod:`comfyc.cli.commands.viz`): this module gets
graphs, so the compiler never imports a frontend.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from comfyc.runtime.manifest import Manifest, StageEntry
from comfyc.runtime.nodes import registry
from comfyc.runtime.nodes.internal import is_folded_class

from ..catalog import Catalog, default_catalog
from ..ir.core import MISSING, Graph, Node, Param, Value
from ..nodes import compile_rule, trace_weights
from ..passes.base import ChangeLog, PassContext, PassOptions
from .model import AFTER, BEFORE, BOTH, GraphView, VizEdge, VizNode, VizRow, VizStage

__all__ = ["view_of_artifact", "view_of_graph", "placeholder_clip"]

#: The program input a stage's handle travels through, by stage kind (loader ops and
#: ApplyLoRA take ``model`` / ``clip``; VAE nodes ``vae``).
_HANDLE_INPUT = {"unet": "model", "text_encoder": "clip"}

_MAX_ROW_CHARS = 34
_MAX_WIDGET_ROWS = 7


def _placeholder_stage(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (np.zeros((ids.shape[0], ids.shape[1], 1), dtype=np.float32),
            np.zeros((ids.shape[0], 1), dtype=np.float32))


def placeholder_clip(clip: Any) -> Any:
    """A stand-in CLIP whose encodings are zeros (one feature per token): folding decides as
    it would for real, without model weights."""
    from comfyc.runtime.values import ClipRef, TextEncoderRef

    layer = clip.get("layer") if isinstance(clip, Mapping) else None
    layer = -1 if layer is None else layer
    stages = {layer: _placeholder_stage}
    return ClipRef((TextEncoderRef("clip_l", stages, 49407, layer, True),), layer)


# ------------------------------------------------------------------------------ the fates
@dataclass
class _Fate:
    """What the compiler did to one node id, as the page shows it."""

    status: str = "kept"
    note: str = ""
    tags: list[str] = field(default_factory=list)


def _fates(changes: ChangeLog) -> dict[str, _Fate]:
    """Each node's fate, read from the change log."""
    fates: dict[str, _Fate] = {}
    folded_class: dict[str, str] = {}
    for change in changes:
        fate = fates.setdefault(change.node_id, _Fate())
        if change.action == "eliminated":
            fate.status, fate.note = "eliminated", change.detail or "no output depends on it"
        elif change.action == "lora_identity":
            fate.status, fate.note = "eliminated", "LoRA at strength 0 is an identity"
        elif change.action == "merged":
            fate.status = "merged"
            fate.note = (f"merged into #{change.into} (identical)" if change.into
                         else "merged with an identical node")
        elif change.action == "folded":
            folded_class[change.node_id] = change.class_type
            fate.status, fate.note = "folded", f"{change.class_type} → constant conditioning"
        elif change.action == "folded_away":
            if change.node_id in folded_class:
                fate.status = "folded"
                fate.note = (f"{folded_class[change.node_id]} → folded into "
                             f"#{change.into}'s constant")
            else:
                fate.status, fate.note = "eliminated", "only folded nodes needed it"
        elif change.action == "lora_merged":
            fate.status, fate.note = "folded", "LoRA merged into the weights at compile time"
        elif change.action == "lora_runtime":
            fate.tags.append("runtime LoRA: strength set when the program runs")
        elif change.action == "schedule":
            fate.tags.append("sigma schedule precomputed")
    return fates


# ---------------------------------------------------------------------------- node rows
def _title(node: Node, catalog: Catalog) -> str:
    if node.title:
        return node.title
    schema = catalog.get(node.class_type)
    return schema.display_name if schema is not None else node.class_type


def _binding(node: Node) -> str:
    bind = (node.meta.get("dsl") or {}).get("bind")
    if isinstance(bind, list):
        return ", ".join(str(b) for b in bind)
    return str(bind) if bind else ""


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) else repr(value)
    return text if len(text) <= _MAX_ROW_CHARS else text[:_MAX_ROW_CHARS - 1] + "…"


def _node_rows(node: Node) -> tuple[list[VizRow], list[VizRow]]:
    """Link-input rows and widget rows of one node."""
    links: list[VizRow] = []
    widgets: list[VizRow] = []
    for name, value in node.inputs.items():
        if isinstance(value, Value):
            links.append(VizRow(name, "link", type=value.type))
        elif isinstance(value, Param):
            default = "" if value.default is MISSING else f" = {_short(value.default)}"
            widgets.append(VizRow(name, "param", f"param {value.name}{default}"))
        elif value is not MISSING:
            widgets.append(VizRow(name, "literal", _short(value)))
    return links, widgets


def _merge_rows(before: list[VizRow], after: list[VizRow]) -> list[VizRow]:
    """Rows of both views: an unchanged row once; a changed one as its ``before`` version
    followed by its ``after`` version (drawn in the same place); new rows last."""
    out: list[VizRow] = []
    after_keys = {(r.name, r.kind, r.text) for r in after}
    after_by_name = {r.name: r for r in after}
    placed: set[int] = set()
    for row in before:
        if (row.name, row.kind, row.text) in after_keys:
            out.append(VizRow(row.name, row.kind, row.text, row.type, BOTH))
            placed.update(id(r) for r in after if (r.name, r.kind, r.text) ==
                          (row.name, row.kind, row.text))
            continue
        out.append(VizRow(row.name, row.kind, row.text, row.type, BEFORE))
        twin = after_by_name.get(row.name)
        if twin is not None and id(twin) not in placed:
            out.append(VizRow(twin.name, twin.kind, twin.text, twin.type, AFTER))
            placed.add(id(twin))
    for row in after:
        if id(row) not in placed:
            out.append(VizRow(row.name, row.kind, row.text, row.type, AFTER))
    return out


def _edges(graph: Graph) -> dict[tuple[str, int, str, str], str]:
    return {(v.producer.id, v.index, n.id, name): v.type
            for n in graph.nodes for name, v in n.inputs.items() if isinstance(v, Value)}


def _union(before: Graph, after: Graph, catalog: Catalog, fates: Mapping[str, _Fate],
           view: GraphView) -> None:
    """Fill ``view.nodes`` and ``view.edges`` from both graphs."""
    after_nodes = {n.id: n for n in after.nodes}
    order = [n.id for n in before.nodes] + [n.id for n in after.nodes
                                            if before.find(n.id) is None]
    for node_id in order:
        old = before.find(node_id)
        new = after_nodes.get(node_id)
        base = old if old is not None else new
        assert base is not None
        links, widgets = _node_rows(base)
        if old is not None and new is not None and new.class_type == old.class_type:
            new_links, new_widgets = _node_rows(new)
            links = _merge_rows(links, new_links)
            widgets = _merge_rows(widgets, new_widgets)
        if len(widgets) > _MAX_WIDGET_ROWS:
            hidden = len(widgets) - _MAX_WIDGET_ROWS + 1
            widgets = widgets[:_MAX_WIDGET_ROWS - 1] + [VizRow("", "literal",
                                                                f"… {hidden} more")]
        fate = fates.get(node_id, _Fate())
        node = VizNode(
            node_id, base.class_type, _title(base, catalog), _binding(base), links,
            [VizRow(v.name, "output", type=v.type) for v in base.outputs], widgets,
            fate.status, fate.note, list(fate.tags), None, old is not None, new is not None)
        if new is None and node.status == "kept":
            node.status, node.note = "eliminated", "removed by the compiler"
        view.nodes[node_id] = node
    old_edges, new_edges = _edges(before), _edges(after)
    for key, type_ in old_edges.items():
        view.edges.append(VizEdge(*key, type_, BOTH if key in new_edges else BEFORE))
    for key, type_ in new_edges.items():
        if key not in old_edges:
            view.edges.append(VizEdge(*key, type_, AFTER))


def _finish(view: GraphView, nodes_before: int, after: Graph, changes: ChangeLog) -> None:
    """Statistics (the change log's, as ``compile`` and ``inspect`` print them) and params."""
    view.stats = {"nodes_before": nodes_before, "nodes_after": len(after.nodes),
                  **changes.summary()}
    for param in after.params.values():
        default = "" if param.default is MISSING else f" = {_short(param.default)}"
        view.params.append(f"{param.name}: {param.type}{default}")


def _plan_backend(plan: str | Mapping[str, str], name: str, kind: str) -> str:
    if isinstance(plan, str):
        return "ort-cpu" if plan == "auto" else plan
    return plan.get(name) or plan.get(kind) or plan.get("*") or "ort-cpu"


def _describe_weights(node: Node, via: str) -> tuple[str, str]:
    """``(key, description)`` of the weights behind a node's MODEL / CLIP / VAE input."""
    weights = trace_weights(node.inputs.get(via))
    if weights is None:
        value = node.inputs.get(via)
        if isinstance(value, Value):
            source = value.producer
            return source.id, f"weights from #{source.id} ({source.class_type})"
        return "?", "weights unknown"
    layer = ""
    if weights.layer is not None and not isinstance(weights.layer, (Value, Param)):
        layer = f", CLIP layer {weights.layer}"
    text = f"weights: {weights.origin[1]}{layer}"
    for lora in weights.loras:
        text += f" + LoRA {lora.name}"
    return weights.key() + layer, text


def _workflow_stages(after: Graph, view: GraphView, plan: str | Mapping[str, str]) -> None:
    """Group the optimised graph's stage callers by the weights they use."""
    for node in after.nodes:
        definition = registry().get(node.class_type)
        if definition is None or node.id not in view.nodes:
            continue
        for call in definition.calls:
            key, weights = _describe_weights(node, call.via)
            stage_key = f"{call.kind}:{key}"
            stage = view.stages.get(stage_key)
            if stage is None:
                stage = view.stages[stage_key] = VizStage(stage_key, call.kind, call.kind, "",
                                                          detail=weights)
            stage.members.append(node.id)
            view.nodes[node.id].stage = stage_key
    _number_stages(view)
    for stage in view.stages.values():
        if stage.ordinal > 1:
            stage.name = f"{stage.kind} #{stage.ordinal}"
        stage.backend = _plan_backend(plan, stage.name, stage.kind)


def _number_stages(view: GraphView) -> None:
    """Number the stages of each kind in first-use order."""
    counts: dict[str, int] = {}
    for stage in view.stages.values():
        counts[stage.kind] = stage.ordinal = counts.get(stage.kind, 0) + 1



def _artifact_stages(manifest: Manifest, view: GraphView) -> None:
    """Group stage callers by the ``$stage`` arguments of the artifact's program."""
    ops = {op["id"]: op for op in manifest.ops}
    stages_manifest = manifest.stages
    plan = manifest.plan
    tuned = (manifest.autotune or {}).get("stages") or {}
    flat = manifest.stage_entries()
    for op in ops.values():
        definition = registry().get(op.get("op", ""))
        if definition is None or op["id"] not in view.nodes:
            continue
        for call in definition.calls:
            name = _stage_of(ops, op.get("args", {}).get(call.via), call.kind, stages_manifest)
            if name is None:
                continue
            stage = view.stages.get(name)
            if stage is None:
                entry = flat.get(name)
                backend = plan.get(name) or (entry.backend if entry else "?")
                stage = view.stages[name] = VizStage(name, call.kind, name, backend)
                _add_measurements(stage, tuned.get(name) or tuned.get(call.kind))
                if entry is not None and entry.fallback:
                    stage.detail = (stage.detail + "; " if stage.detail else "") + \
                        f"ONNX export failed: {entry.fallback}"
            stage.members.append(op["id"])
            view.nodes[op["id"]].stage = name
    _number_stages(view)


def _add_measurements(stage: VizStage, tuned: Any) -> None:
    """The autotuner's record: ``{"choice", "margin", "measurements": {B: {median_ms …}}}``."""
    if not isinstance(tuned, Mapping):
        return
    measurements = tuned.get("measurements") or {}
    chosen = stage.backend if stage.backend in measurements else tuned.get("choice")
    row = measurements.get(chosen) if isinstance(measurements, Mapping) else None
    if isinstance(row, Mapping) and isinstance(row.get("median_ms"), (int, float)):
        stage.median_ms = float(row["median_ms"])
    parts = []
    for backend, values in measurements.items():
        if isinstance(values, Mapping) and isinstance(values.get("median_ms"), (int, float)):
            parts.append(f"{backend} {float(values['median_ms']):.1f} ms")
    if parts:
        stage.detail = "measured median: " + ", ".join(parts)


def _stage_holder(args: Mapping[str, Any], kind: str) -> str | None:
    """The stage an op's arguments name for ``kind``: ``unet`` / ``vae_*`` hold a
    ``$stage``; a CLIP's first encoder's stages sit under ``clip.encoders`` (LoadCheckpoint)
    or ``clip_stages`` (ApplyLoRA)."""
    if kind != "text_encoder":
        holder = args.get(kind)
        return str(holder["$stage"]) if isinstance(holder, Mapping) and "$stage" in holder \
            else None
    clip = args.get("clip")
    encoders = clip.get("encoders") if isinstance(clip, Mapping) else None
    if not isinstance(encoders, Mapping):
        encoders = {name: {"stages": value}
                    for name, value in (args.get("clip_stages") or {}).items()}
    for spec in encoders.values():
        holder = spec.get("stages") if isinstance(spec, Mapping) else None
        if isinstance(holder, Mapping) and "$stage" in holder:
            return str(holder["$stage"])
    return None


def _stage_of(ops: Mapping[str, Any], arg: Any, kind: str, stages: Mapping[str, StageEntry]
              ) -> str | None:
    """Follow a ``$ref`` back to the op that holds this kind's ``$stage``."""
    layer = None
    seen: set[str] = set()
    while isinstance(arg, Mapping) and "$ref" in arg:
        op = ops.get(str(arg["$ref"][0]))
        if op is None or op["id"] in seen:
            return None
        seen.add(op["id"])
        args = op.get("args", {})
        layer_input = compile_rule(op.get("op", "")).clip_layer_input
        if layer_input is not None and layer is None:
            stop = args.get(layer_input)
            layer = stop if isinstance(stop, int) else None
        name = _stage_holder(args, kind)
        if name is not None:
            if kind == "text_encoder":
                clip = args.get("clip") if isinstance(args.get("clip"), Mapping) else {}
                first = next(iter((clip.get("encoders") or {}).values()), {})
                return _text_layer_stage(stages, name, layer, first.get("default_layer"))
            return name
        definition = registry().get(op.get("op", ""))
        follow = None
        if definition is not None and definition.weights_from:
            follow = definition.weights_from[0][1]
        arg = args.get(follow or _HANDLE_INPUT.get(kind, "vae"))
    return None


def _text_layer_stage(stages: Mapping[str, StageEntry], name: str, layer: Any, default: Any
                      ) -> str:
    """A text encoder's per-layer stage name (``text_encoder_X_L1``)."""
    holder = stages.get(name)
    layers = holder.layers if holder is not None else {}
    if len(layers) == 1:
        return next(iter(layers.values())).name or name
    wanted = layer if isinstance(layer, int) else default
    entry = layers.get(str(wanted)) if wanted is not None else None
    return (entry.name or name) if entry else name


def _op_tags(op: Mapping[str, Any] | None) -> list[str]:
    """What a program op shows of the compiler's work (a precomputed schedule, a runtime
    LoRA), for artifacts whose manifest has no change log entry for it."""
    args = (op or {}).get("args") or {}
    tags = []
    if "sigmas" in args:
        tags.append("sigma schedule precomputed")
    if "unet_strengths" in args or "text_strengths" in args:
        tags.append("runtime LoRA: strength set when the program runs")
    return tags


# ---------------------------------------------------------------------------- builders
def view_of_graph(graph: Graph, catalog: Catalog | None = None, *,
                  backend: str | Mapping[str, str] = "ort-cpu",
                  param_bindings: list[str] | None = None, lora_runtime: bool = False,
                  title: str | None = None) -> GraphView:
    """The view of a loaded (not yet optimised) workflow graph.

    Args:
        graph: The workflow as loaded; it is not changed.
        catalog: Node schemas.
        backend: The backend plan stages are labelled with (one name or a per-stage map,
            as ``comfyc compile --backend`` takes).
        param_bindings: ``NODE.INPUT=NAME`` inputs to treat as runtime params.
        lora_runtime: Treat every LoRA as runtime-mode (``--lora-runtime``).
        title: The page title.

    Raises:
        WorkflowErrors: The workflow is invalid.
    """
    from ..pipeline import run_pipeline

    catalog = catalog or default_catalog()
    source = str(graph.source.file or "")
    view = GraphView(title or Path(source).name or "workflow", source, "workflow")
    after = copy.deepcopy(graph)
    context = PassContext(catalog, PassOptions(param_bindings=list(param_bindings or []),
                                               lora_runtime=lora_runtime),
                          folding_clip=placeholder_clip)
    run_pipeline(after, context, fold=True)
    _union(graph, after, catalog, _fates(context.changes), view)
    _workflow_stages(after, view, backend)
    _finish(view, len(graph.nodes), after, context.changes)
    return view


def view_of_artifact(manifest: Manifest, after: Graph, before: Graph | None,
                     catalog: Catalog | None = None, *, name: str = "artifact",
                     path: str = "", found_from: str = "") -> GraphView:
    """The view of a compiled artifact.

    Args:
        manifest: The artifact's manifest (``comfyc.runtime.artifact.read_manifest``).
        after: The optimised graph (the manifest's ``optimized`` DSL, parsed).
        before: The workflow as written, or None when it is not available.
        catalog: Node schemas.
        name: The page title.
        path: The artifact's path, for the page.
        found_from: Where ``before`` came from, for the page's note.
    """
    catalog = catalog or default_catalog()
    view = GraphView(name, path, "artifact")
    if before is None:
        before = after
        view.notes.append("the artifact does not hold its source workflow and the source file "
                          "is gone or changed: both views show the optimised graph")
    else:
        view.notes.append(f"source workflow: {found_from}")
    changes = ChangeLog.from_json(manifest.changes)
    fates = _fates(changes) if before is not after else {}
    ops = {op["id"]: op for op in manifest.ops}
    for node in after.nodes:  # What the optimised graph and its program say.
        fate = fates.setdefault(node.id, _Fate())
        if fate.status == "kept" and is_folded_class(node.class_type):
            fate.status, fate.note = "folded", "constant conditioning"
        for tag in _op_tags(ops.get(node.id)):
            if tag not in fate.tags:
                fate.tags.append(tag)
    _union(before, after, catalog, fates, view)
    _artifact_stages(manifest, view)
    _finish(view, len(before.nodes), after, changes)
    machine = (manifest.autotune or {}).get("machine")
    if isinstance(machine, Mapping) and machine:
        view.extra["machine"] = ", ".join(f"{k}: {v}" for k, v in machine.items())
    return view
