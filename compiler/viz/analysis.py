"""Build a :class:`~comfyc.compiler.viz.model.GraphView` from a workflow file or an artifact.

For a workflow, the pass pipeline (:func:`comfyc.compiler.pipeline.build_passes`) runs one
pass at a time on a copy of the graph and the fate of every node id is recorded: removed by
dead-node elimination (eliminated), by common-subexpression elimination (merged into the node
that replaces it), by the LoRA pass (an identity LoRA), turned into a ``FoldedConditioning``
by constant folding (folded), or removed afterwards because only folded nodes needed it.

Constant folding runs as :class:`PreviewFoldingPass`: the pass's own decisions (which
prompt encodings and conditioning ops have constant inputs) with a placeholder tensor instead
of running the text encoder, so drawing a workflow never loads model weights or imports
torch, and works when the checkpoint is not on this machine.

Stages follow the lowering (:func:`comfyc.compiler.lowering.program.lower_to_program`): a
sampler calls the UNet of its MODEL, an unfolded ``CLIPTextEncode`` the text encoder of its
CLIP, ``VAEDecode``/``VAEEncode`` the VAE's decoder/encoder; a MODEL or CLIP changed by a
LoRA with a non-zero strength is a new stage (new weights), ``ModelSamplingDiscrete`` and
``CLIPSetLastLayer`` pass weights through (the CLIP layer picks a text-encoder stage). For an
artifact the stage of each node is read from the program in ``manifest.json`` (the ``$stage``
arguments of ``LoadCheckpoint`` / ``LoadVAE`` / ``ApplyLoRA``), with the backend from
``manifest["plan"]`` and, when the autotuner measured it, the chosen backend's median time
from ``manifest["autotune"]["stages"][STAGE]``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import Catalog, default_catalog
from ..errors import InputFileError, WorkflowError
from ..ir.core import MISSING, Graph, Node, Param, SourceLoc, Value
from ..passes.constant_folding import ConstantFoldingPass
from .model import AFTER, BEFORE, BOTH, GraphView, VizEdge, VizNode, VizRow, VizStage

__all__ = [
    "STAGE_CALLERS",
    "PreviewFoldingPass",
    "build_view",
    "view_of_artifact",
    "view_of_graph",
    "view_of_workflow",
]

#: Node classes that call a model stage: class → (stage kind, the input naming the model).
STAGE_CALLERS: dict[str, tuple[str, str]] = {
    "KSampler": ("unet", "model"),
    "KSamplerAdvanced": ("unet", "model"),
    "CLIPTextEncode": ("text_encoder", "clip"),
    "VAEDecode": ("vae_decoder", "vae"),
    "VAEDecodeTiled": ("vae_decoder", "vae"),
    "VAEEncode": ("vae_encoder", "vae"),
    "VAEEncodeTiled": ("vae_encoder", "vae"),
    "VAEEncodeForInpaint": ("vae_encoder", "vae"),
}

#: Nodes a MODEL / CLIP passes through with unchanged weights: class → input followed.
_PASS_THROUGH = {"ModelSamplingDiscrete": "model", "CLIPSetLastLayer": "clip"}

#: The program argument of a loader op that names each kind's stage.
_STAGE_ARG = {"unet": "unet", "text_encoder": "text_encoders", "vae_decoder": "vae_decoder",
              "vae_encoder": "vae_encoder"}

_MAX_ROW_CHARS = 34
_MAX_WIDGET_ROWS = 7


class PreviewFoldingPass(ConstantFoldingPass):
    """Constant folding that decides like the real pass but computes no tensors.

    A prompt encoding becomes a placeholder conditioning (one zero token), so conditioning
    ops fold on placeholders too; sigma schedules are computed as usual (numpy only).
    """

    def _encode(self, clip: dict[str, Any], text: str) -> list[dict[str, Any]]:
        # NOTE: a tiny placeholder keeps every conditioning op's shape checks happy.
        return [{"cond": np.zeros((1, 1, 1), dtype=np.float32),
                 "pooled_output": np.zeros((1, 1), dtype=np.float32)}]


# ------------------------------------------------------------------------------ the trace
@dataclass
class _Fate:
    """What the pipeline did to one node id."""

    status: str = "kept"
    note: str = ""
    tags: list[str] = field(default_factory=list)


def _trace_pipeline(graph: Graph, catalog: Catalog, options: Mapping[str, Any]
                    ) -> dict[str, _Fate]:
    """Run the pipeline on ``graph`` in place, one pass at a time; the fate of every id."""
    from ..passes.base import PassContext, PassManager
    from ..pipeline import build_passes

    context = PassContext(catalog, options=dict(options))
    passes = [PreviewFoldingPass(context) if isinstance(p, ConstantFoldingPass) else p
              for p in build_passes(context, fold=True)]
    fates: dict[str, _Fate] = {n.id: _Fate() for n in graph.nodes}
    folded_yet = False
    fold_uses: dict[str, list[tuple[str, str]]] = {}
    for step in passes:
        order = [n.id for n in graph.nodes]
        classes = {n.id: n.class_type for n in graph.nodes}
        uses = {n.id: [(u.node.id, u.input_name) for v in n.outputs for u in v.uses()]
                for n in graph.nodes}
        outputs = {name: v.producer.id for name, v in graph.outputs.items()}
        PassManager([step])(graph)
        alive = {n.id for n in graph.nodes}
        removed = [i for i in order if i not in alive]
        if step.name == "common-subexpression-elimination":
            _record_merges(graph, removed, uses, outputs, fates)
        elif step.name == "lora-merge":
            for node_id in removed:
                fates[node_id] = _Fate("eliminated", "LoRA at strength 0 is an identity")
        elif step.name == "constant-folding":
            folded_yet, fold_uses = True, uses
            for node in graph.nodes:
                old = classes.get(node.id)
                if node.class_type == "FoldedConditioning" and old not in (
                        None, "FoldedConditioning"):
                    fates[node.id] = _Fate("folded", f"{old} → constant conditioning")
        elif step.name == "dead-node-elimination":
            for node_id in removed:
                if not folded_yet:
                    fates[node_id] = _Fate("eliminated", "no output depends on it")
                elif fates[node_id].status == "folded":
                    into = next((c for c, _ in fold_uses.get(node_id, [])
                                 if fates.get(c, _Fate()).status == "folded"), None)
                    fates[node_id].note = (f"{fates[node_id].note.split(' → ')[0]} → folded "
                                           f"into #{into}'s constant" if into else
                                           fates[node_id].note)
                else:
                    fates[node_id] = _Fate("eliminated", "only folded nodes needed it")
    for node in graph.nodes:
        fate = fates.setdefault(node.id, _Fate())
        _annotate(node, fate)
    return fates


def _annotate(node: Node, fate: _Fate) -> None:
    """Facts about a surviving node: folded LoRAs, precomputed schedules."""
    if node.class_type in ("LoraLoader", "LoraLoaderModelOnly"):
        if node.meta.get("lora_mode") == "merged":
            fate.status, fate.note = "folded", "LoRA merged into the weights at compile time"
        elif node.meta.get("lora_mode") == "runtime":
            fate.tags.append("runtime LoRA: strength set when the program runs")
    if node.meta.get("sigmas"):
        fate.tags.append("sigma schedule precomputed")


def _record_merges(graph: Graph, removed: list[str], uses: dict[str, list[tuple[str, str]]],
                   outputs: dict[str, str], fates: dict[str, _Fate]) -> None:
    """Name the node each CSE-removed node was merged into.

    A removed node's consumers now read the kept node; a consumer that was merged too is
    looked up through its own replacement, so ids are resolved consumers first.
    """
    target: dict[str, str] = {}
    for node_id in reversed(removed):
        found = None
        for consumer, input_name in uses.get(node_id, []):
            holder = graph.find(target.get(consumer, consumer))
            value = holder.inputs.get(input_name) if holder is not None else None
            if isinstance(value, Value):
                found = value.producer.id
                break
        if found is None:
            for name, producer in outputs.items():
                if producer == node_id and name in graph.outputs:
                    found = graph.outputs[name].producer.id
        if found is not None:
            target[node_id] = found
        fates[node_id] = _Fate("merged", f"merged into #{found} (identical)" if found
                               else "merged with an identical node")


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


def _finish(view: GraphView, after: Graph) -> None:
    """Statistics and params of a filled view."""
    statuses = [n.status for n in view.nodes.values() if n.in_before]
    view.stats = {
        "nodes_before": sum(1 for n in view.nodes.values() if n.in_before),
        "nodes_after": len(after.nodes),
        "eliminated": statuses.count("eliminated"),
        "merged": statuses.count("merged"),
        "folded": statuses.count("folded"),
    }
    for param in after.params.values():
        default = "" if param.default is MISSING else f" = {_short(param.default)}"
        view.params.append(f"{param.name}: {param.type}{default}")


# ------------------------------------------------------------------------------- stages
def _plan_backend(plan: str | Mapping[str, str], name: str, kind: str) -> str:
    if isinstance(plan, str):
        return "ort-cpu" if plan == "auto" else plan
    return plan.get(name) or plan.get(kind) or "ort-cpu"


def _workflow_stages(after: Graph, view: GraphView, plan: str | Mapping[str, str]) -> None:
    """Group the optimised graph's stage callers by the weights they use (workflow input)."""
    found: dict[str, tuple[str, str]] = {}
    for node in after.nodes:
        caller = STAGE_CALLERS.get(node.class_type)
        if caller is None or node.id not in view.nodes:
            continue
        kind, input_name = caller
        key, weights = _weights_of(node.inputs.get(input_name), kind)
        stage_key = f"{kind}:{key}"
        found.setdefault(stage_key, (kind, weights))
        stage = view.stages.get(stage_key)
        if stage is None:
            stage = view.stages[stage_key] = VizStage(stage_key, kind, kind, "", detail=weights)
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


def _weights_of(value: Any, kind: str) -> tuple[str, str]:
    """``(key, description)`` of the weights behind a MODEL / CLIP / VAE value."""
    layer = ""
    side = "model" if kind == "unet" else "clip"
    while isinstance(value, Value):
        node = value.producer
        if node.class_type == "CLIPSetLastLayer" and not layer:
            stop = node.inputs.get("stop_at_clip_layer")
            layer = f", CLIP layer {stop}" if not isinstance(stop, (Value, Param)) else ""
        if node.class_type in _PASS_THROUGH:
            value = node.inputs.get(_PASS_THROUGH[node.class_type])
            continue
        if node.class_type in ("LoraLoader", "LoraLoaderModelOnly") and kind in (
                "unet", "text_encoder"):
            strength = node.inputs.get(f"strength_{side}", 1.0)
            if not isinstance(strength, (Value, Param)) and strength is not MISSING and \
                    float(strength) == 0.0:
                value = node.inputs.get(side)
                continue
            inner_key, inner = _weights_of(node.inputs.get(side), kind)
            name = node.inputs.get("lora_name")
            return f"{inner_key}+{node.id}", f"{inner} + LoRA {name}"
        for input_name in ("ckpt_name", "vae_name"):
            name = node.inputs.get(input_name)
            if name is not None and name is not MISSING:
                return node.id + layer, f"weights: {name}{layer}"
        return node.id, f"weights from #{node.id} ({node.class_type})"
    return "?", "weights unknown"


def _artifact_stages(manifest: Mapping[str, Any], view: GraphView) -> None:
    """Group stage callers by the ``$stage`` arguments of the artifact's program."""
    ops = {op["id"]: op for op in manifest.get("program", {}).get("ops", [])}
    stages_manifest = manifest.get("stages", {})
    plan = manifest.get("plan") or {}
    tuned = (manifest.get("autotune") or {}).get("stages") or {}
    for op in ops.values():
        caller = STAGE_CALLERS.get(op.get("op", ""))
        if caller is None or op["id"] not in view.nodes:
            continue
        kind, input_name = caller
        name = _stage_of(ops, op.get("args", {}).get(input_name), kind, stages_manifest)
        if name is None:
            continue
        stage = view.stages.get(name)
        if stage is None:
            entry = _stage_entry(stages_manifest, name)
            backend = plan.get(name) or entry.get("backend") or "?"
            stage = view.stages[name] = VizStage(name, kind, name, backend)
            _add_measurements(stage, tuned.get(name) or tuned.get(kind))
            if entry.get("fallback"):
                stage.detail = (stage.detail + "; " if stage.detail else "") + \
                    f"ONNX export failed: {entry['fallback']}"
        stage.members.append(op["id"])
        view.nodes[op["id"]].stage = name
    _number_stages(view)


def _stage_entry(stages: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    if name in stages:
        return stages[name]
    for entry in stages.values():
        for sub in (entry.get("layers") or {}).values():
            if sub.get("name") == name:
                return sub
    return {}


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


def _stage_of(ops: Mapping[str, Any], arg: Any, kind: str, stages: Mapping[str, Any]
              ) -> str | None:
    """Follow a ``$ref`` to the op that holds this kind's ``$stage``."""
    layer = None
    seen: set[str] = set()
    while isinstance(arg, Mapping) and "$ref" in arg:
        op = ops.get(str(arg["$ref"][0]))
        if op is None or op["id"] in seen:
            return None
        seen.add(op["id"])
        args = op.get("args", {})
        if op.get("op") == "CLIPSetLastLayer" and layer is None:
            stop = args.get("stop_at_clip_layer")
            layer = stop if isinstance(stop, int) else None
        holder = args.get(_STAGE_ARG[kind])
        if isinstance(holder, Mapping) and "$stage" in holder:
            name = str(holder["$stage"])
            if kind == "text_encoder":
                return _text_layer_stage(stages, name, layer, args.get("default_layer"))
            return name
        follow = {"unet": "model", "text_encoder": "clip"}.get(kind, "vae")
        arg = args.get(follow)
    return None


def _text_layer_stage(stages: Mapping[str, Any], name: str, layer: Any, default: Any) -> str:
    """A text encoder's per-layer stage name (``text_encoder_X_L1``)."""
    layers = (stages.get(name) or {}).get("layers") or {}
    if len(layers) == 1:
        return str(next(iter(layers.values())).get("name", name))
    wanted = layer if isinstance(layer, int) else default
    entry = layers.get(str(wanted)) if wanted is not None else None
    return str(entry.get("name", name)) if entry else name


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
    catalog = catalog or default_catalog()
    source = str(graph.meta.get("file", ""))
    view = GraphView(title or Path(source).name or "workflow", source, "workflow")
    after = _copy_graph(graph, catalog)
    fates = _trace_pipeline(after, catalog, {"param_bindings": list(param_bindings or []),
                                             "lora_runtime": lora_runtime})
    _union(graph, after, catalog, fates, view)
    _workflow_stages(after, view, backend)
    _finish(view, after)
    return view


def view_of_workflow(path: str | Path, catalog: Catalog | None = None, **options: Any
                     ) -> GraphView:
    """The view of a workflow file (DSL, API JSON, UI JSON or PNG); see
    :func:`view_of_graph` for the options.

    Raises:
        InputFileError: The file cannot be read.
        WorkflowErrors: The workflow is invalid.
    """
    from comfyc.frontends.load import load_workflow

    catalog = catalog or default_catalog()
    return view_of_graph(load_workflow(path, catalog), catalog, **options)


def view_of_artifact(path: str | Path, catalog: Catalog | None = None, *,
                     source: Graph | None = None) -> GraphView:
    """The view of a compiled artifact directory.

    The optimised graph is the one the artifact was compiled from (``run_meta.prompt``), the
    stages and backends are the program's. The workflow as written comes from the manifest's
    source when it holds one (``source.text`` or ``source.prompt``) or from the source file
    when it is still there unchanged (same SHA-256); otherwise the page shows the optimised
    graph only and says so.

    Args:
        path: The artifact directory.
        catalog: Node schemas.
        source: The workflow it was compiled from, when the caller has it (not changed).

    Raises:
        InputFileError: Not a readable artifact.
    """
    from comfyc.frontends.comfy_json.api import graph_from_api
    from comfyc.runtime.artifact import ArtifactError, read_manifest

    catalog = catalog or default_catalog()
    try:
        manifest = read_manifest(path, verify=False)
    except ArtifactError as exc:
        raise InputFileError(str(exc), SourceLoc(file=str(path))) from None
    prompt = (manifest.get("run_meta") or {}).get("prompt")
    if not isinstance(prompt, dict):
        raise InputFileError("manifest.json has no run_meta.prompt (the optimised workflow); "
                             "this artifact is from an older comfyc — compile it again",
                             SourceLoc(file=str(Path(path) / "manifest.json")))
    where = str(Path(path) / "manifest.json")
    after = graph_from_api(prompt, catalog, where)
    view = GraphView(Path(path).name, str(path), "artifact")
    if source is not None:
        before, found_from = source, str(source.meta.get("file") or "given by the caller")
    else:
        before, found_from = _artifact_source(manifest, Path(path), catalog)
    if before is None:
        before = graph_from_api(prompt, catalog, where)
        view.notes.append("the artifact does not hold its source workflow and the source file "
                          "is gone or changed: both views show the optimised graph")
    else:
        view.notes.append(f"source workflow: {found_from}")
    fates = _artifact_fates(before, after, manifest, catalog)
    _union(before, after, catalog, fates, view)
    _artifact_stages(manifest, view)
    _finish(view, after)
    machine = (manifest.get("autotune") or {}).get("machine")
    if isinstance(machine, Mapping) and machine:
        view.extra["machine"] = ", ".join(f"{k}: {v}" for k, v in machine.items())
    return view


def build_view(path: str | Path, catalog: Catalog | None = None, **options: Any) -> GraphView:
    """The view of ``path``: an artifact directory or any workflow file."""
    if Path(path).is_dir():
        return view_of_artifact(path, catalog)
    return view_of_workflow(path, catalog, **options)


# -------------------------------------------------------------------- artifact helpers
def _copy_graph(graph: Graph, catalog: Catalog) -> Graph:
    """A deep copy the passes may change (ids, titles, params, outputs, DSL facts kept)."""
    import copy

    return copy.deepcopy(graph)


def _artifact_source(manifest: Mapping[str, Any], root: Path, catalog: Catalog
                     ) -> tuple[Graph | None, str]:
    """The workflow an artifact was compiled from, and where it was found."""
    from comfyc.frontends.comfy_json.api import graph_from_api

    source = manifest.get("source") or {}
    try:
        if isinstance(source.get("text"), str) and source["text"].strip():
            return _graph_from_text(source["text"], str(source.get("file") or "source"),
                                    catalog), "stored in the manifest"
        if isinstance(source.get("prompt"), dict):
            return graph_from_api(source["prompt"], catalog, str(source.get("file") or
                                                                "source")), "the manifest"
    except WorkflowError:
        pass
    name = source.get("file")
    if not name:
        return None, ""
    for candidate in (Path(name), root.parent / name):
        if not candidate.is_file():
            continue
        try:
            from comfyc.frontends.load import load_workflow

            graph = load_workflow(candidate, catalog)
        except WorkflowError:
            continue
        text = str(graph.meta.get("source_text", ""))
        if hashlib.sha256(text.encode()).hexdigest() == source.get("sha256"):
            return graph, str(candidate)
    return None, ""


def _graph_from_text(text: str, name: str, catalog: Catalog) -> Graph:
    stripped = text.lstrip()
    if stripped.startswith("{"):
        from comfyc.frontends.comfy_json.api import graph_from_api
        from comfyc.frontends.comfy_json.ui import is_ui_workflow, ui_to_api

        data = json.loads(text)
        if is_ui_workflow(data):
            data = ui_to_api(data, catalog, name)
        return graph_from_api(data.get("prompt", data) if "prompt" in data and isinstance(
            data.get("prompt"), dict) else data, catalog, name)
    from comfyc.frontends.dsl import parse_dsl

    return parse_dsl(text, name, catalog)


def _artifact_fates(before: Graph, after: Graph, manifest: Mapping[str, Any],
                    catalog: Catalog) -> dict[str, _Fate]:
    """Each node's fate: what the artifact kept, explained by a trace of the pipeline."""
    bindings = []
    for param in after.params.values():
        for use in param.uses():
            old = before.find(use.node.id)
            if old is not None and not isinstance(old.inputs.get(use.input_name),
                                                  (Param, Value)):
                bindings.append(f"{use.node.id}.{use.input_name}={param.name}")
    options = manifest.get("options") or {}
    try:
        traced = _trace_pipeline(_copy_graph(before, catalog), catalog, {
            "param_bindings": bindings, "lora_runtime": bool(options.get("lora_runtime"))})
    except WorkflowError:
        traced = {}
    ops = {op["id"]: op for op in manifest.get("program", {}).get("ops", [])}
    fates: dict[str, _Fate] = {}
    for node in before.nodes:
        new = after.find(node.id)
        trace = traced.get(node.id, _Fate())
        if new is None:
            fates[node.id] = (trace if trace.status != "kept"
                              else _Fate("eliminated", "removed by the compiler"))
        elif new.class_type == "FoldedConditioning" and node.class_type != new.class_type:
            fates[node.id] = _Fate("folded", f"{node.class_type} → constant conditioning")
        else:
            fates[node.id] = _op_fate(ops.get(node.id), new)
    for node in after.nodes:
        if before.find(node.id) is None:
            fates[node.id] = _op_fate(ops.get(node.id), node)
    return fates


def _op_fate(op: Mapping[str, Any] | None, node: Node) -> _Fate:
    """A surviving node's fate from its program op (folded LoRA, precomputed sigmas)."""
    fate = _Fate()
    if node.class_type == "FoldedConditioning":
        fate.status, fate.note = "folded", "constant conditioning"
    args = (op or {}).get("args") or {}
    if op is not None and op.get("op") == "ApplyLoRA":
        if "unet_strengths" in args or "text_strengths" in args:
            fate.tags.append("runtime LoRA: strength set when the program runs")
        else:
            fate.status, fate.note = "folded", "LoRA merged into the weights at compile time"
    if "sigmas" in args:
        fate.tags.append("sigma schedule precomputed")
    return fate

