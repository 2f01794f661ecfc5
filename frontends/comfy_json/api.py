"""ComfyUI's API ("prompt") format ↔ IR.

The API format is what ComfyUI's server executes::

    {"3": {"class_type": "KSampler", "inputs": {"seed": 42, "model": ["4", 0], ...},
           "_meta": {"title": "KSampler"}}, ...}

A two-element array is a link ``[source_id, output_index]``; ``{"__value__": [...]}`` wraps a
list literal. This module builds a :class:`Graph` from it, reporting every structural problem
(unknown classes, dangling links, bad output indices, cycles) at once, and writes a graph back.

DSL-only facts ride in one namespaced ``_meta.dsl`` object per node (ComfyUI reads only
``_meta.title`` and ignores other ``_meta`` keys; top-level keys would be taken for nodes)::

    "_meta": {"title": "KSampler", "dsl": {
        "bind": "sampler",                 # the binding name(s): a str, or a list when unpacked
        "auto_id": true,                   # the id was not written in the DSL
        "params": {"seed": {"param": "seed", "type": "INT", "order": 0, "min": 0}},
        "outputs": {"latent": {"index": 0, "order": 0}},
        "synthetic": true}}                # a SaveImage added for an `output` (dropped on import)

so DSL → JSON → DSL keeps params (the input holds the default), declared outputs and names.
"""

from __future__ import annotations

import copy
from typing import Any

from comfyc.compiler.catalog import Catalog, default_catalog
from comfyc.compiler.errors import ExportError, SchemaError, WorkflowError, WorkflowErrors
from comfyc.compiler.ir import (
    MISSING,
    CycleError,
    Graph,
    GraphSource,
    Node,
    Param,
    SourceLoc,
    Value,
)
from comfyc.compiler.ir.printer import default_title

__all__ = ["graph_from_api", "graph_to_api", "unknown_node_error"]


def unknown_node_error(class_types: dict[str, list[str]], catalog: Catalog,
                       file: str | None, first_loc: SourceLoc | None = None) -> SchemaError:
    """One error naming every unknown node class, with close names and the fix.

    Args:
        class_types: Unknown class type -> the node ids that use it.
        catalog: The catalogue searched.
        file: The workflow file.
        first_loc: Location of the first offending node.
    """
    notes = []
    for class_type, ids in class_types.items():
        where = ", ".join(f"#{i}" for i in ids)
        close = catalog.close_names(class_type)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        notes.append(f"{class_type!r} used by node {where}{hint}")
    names = ", ".join(repr(c) for c in class_types)
    plural = "types" if len(class_types) > 1 else "type"
    return SchemaError(
        f"unknown node {plural} {names}: comfyc's catalogue has no definition for "
        f"{'them' if len(class_types) > 1 else 'it'}",
        first_loc or SourceLoc(file=file),
        kind="invalid_prompt",
        notes=notes,
        help=(
            "these nodes come from custom node packs or newer ComfyUI versions; dump their "
            "definitions from a ComfyUI server (GET /object_info) and pass the file with "
            "--object-info FILE to check and convert the workflow"
        ),
        details=f"Cannot execute because node {next(iter(class_types))} does not exist.",
    )


def _is_link(value: Any) -> bool:
    return isinstance(value, list)


def graph_from_api(data: Any, catalog: Catalog | None = None, file: str | None = None,
                   ) -> Graph:
    """Build a graph from an API prompt.

    Args:
        data: The parsed JSON object.
        catalog: Node schemas; the built-in catalogue when None.
        file: The source path, for locations.

    Returns:
        The graph in topological order. Literal values are kept as written (validation
        checks and converts them; see :mod:`comfyc.compiler.passes.validate`).

    Raises:
        WorkflowErrors: Every structural problem found.
    """
    catalog = catalog or default_catalog()
    if not isinstance(data, dict):
        raise WorkflowErrors([SchemaError(
            f"an API prompt is a JSON object of nodes keyed by id; found a "
            f"{type(data).__name__}", SourceLoc(file=file), kind="invalid_prompt")])
    errors: list[WorkflowError] = []
    graph = Graph(source=GraphSource(file=file, format="api", prompt=copy.deepcopy(data)))
    unknown: dict[str, list[str]] = {}
    first_unknown: SourceLoc | None = None
    entries: list[tuple[str, dict[str, Any]]] = []
    dsl_entries: list[tuple[Node, dict[str, Any]]] = []
    for node_id, entry in data.items():
        node_id = str(node_id)
        loc = SourceLoc(file=file, node_id=node_id)
        if not isinstance(entry, dict):
            errors.append(SchemaError(
                f"node entry must be an object with class_type and inputs; found "
                f"{type(entry).__name__}", loc, kind="invalid_prompt"))
            continue
        if not node_id:
            # NOTE: an empty id would be replaced by a fresh one in the graph, and the links
            # that name it could never be resolved.
            errors.append(SchemaError(
                "node id is empty; ComfyUI node ids are non-empty strings such as \"3\"",
                loc, kind="invalid_prompt", help="give the node an id such as \"1\""))
            continue
        meta = entry.get("_meta") if isinstance(entry.get("_meta"), dict) else {}
        title = meta.get("title") if isinstance(meta.get("title"), str) else None
        loc = SourceLoc(file=file, node_id=node_id, title=title)
        class_type = entry.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            errors.append(SchemaError(
                "node is missing the class_type property", loc, kind="invalid_prompt",
                help='add "class_type": "<NodeClass>" to the node',
                details=f"Node ID '#{node_id}'"))
            continue
        schema = catalog.get(class_type)
        if schema is None:
            unknown.setdefault(class_type, []).append(node_id)
            first_unknown = first_unknown or loc
            continue
        inputs = entry.get("inputs", {})
        if not isinstance(inputs, dict):
            errors.append(SchemaError(
                f"'inputs' must be an object; found {type(inputs).__name__}", loc,
                kind="invalid_prompt"))
            inputs = {}
        node = graph.add_node(class_type, schema.output_types(), id=node_id, title=title,
                              loc=loc)
        if isinstance(entry.get("_meta"), dict):
            extra_meta = {k: v for k, v in entry["_meta"].items() if k not in ("title", "dsl")}
            if extra_meta:
                node.meta["api_meta"] = extra_meta
            if isinstance(entry["_meta"].get("dsl"), dict):
                dsl_entries.append((node, entry["_meta"]["dsl"]))
        entries.append((node_id, inputs))
    if unknown:
        errors.insert(0, unknown_node_error(unknown, catalog, file, first_unknown))

    for node_id, inputs in entries:
        node = graph.node(node_id)
        schema = catalog.get(node.class_type)
        assert schema is not None
        extra: dict[str, Any] = {}
        for name, value in inputs.items():
            loc = node.loc.with_input(name)
            if schema.input(name) is None:
                # ComfyUI ignores undeclared inputs; keep them for a lossless round trip.
                extra[name] = value
                continue
            if isinstance(value, dict) and set(value) == {"__value__"}:
                graph.set_input(node, name, value["__value__"])
                continue
            if not _is_link(value):
                graph.set_input(node, name, value)
                continue
            link = _resolve_link(graph, value, loc, unknown)
            if isinstance(link, WorkflowError):
                errors.append(link)
            elif link is not None:
                graph.set_input(node, name, link)
        if extra:
            node.meta["extra_inputs"] = extra

    if errors:
        raise WorkflowErrors(errors)
    if dsl_entries:
        _restore_dsl_facts(graph, dsl_entries)
    try:
        graph.sort()
    except CycleError as exc:
        first = exc.nodes[0]
        raise WorkflowErrors([SchemaError(
            f"the workflow has a cycle: {' -> '.join(n.display() for n in exc.nodes)}",
            first.loc, kind="dependency_cycle",
            help="a node cannot depend on its own output; remove one of these links")]) from None
    return graph


def _resolve_link(graph: Graph, value: list[Any], loc: SourceLoc,
                  unknown: dict[str, list[str]]) -> Value | WorkflowError | None:
    """Turn ``[source_id, index]`` into a value, or explain what is wrong with it."""
    if len(value) != 2:
        return SchemaError(
            f"a link is [source_node_id, output_index]; found an array of {len(value)} "
            f"items", loc, kind="bad_linked_input",
            help='wrap a list literal as {"__value__": [...]}')
    source_id, index = value
    if isinstance(source_id, int) and not isinstance(source_id, bool):
        return SchemaError(
            f"link source id {source_id} is a number; ComfyUI node ids in links are strings",
            loc, kind="bad_linked_input", help=f'write the link as ["{source_id}", {index}]')
    if not isinstance(source_id, str):
        return SchemaError(f"link source id must be a string, found {source_id!r}", loc,
                           kind="bad_linked_input")
    if not isinstance(index, int) or isinstance(index, bool):
        return SchemaError(f"link output index must be an integer, found {index!r}", loc,
                           kind="bad_linked_input")
    source = graph.find(source_id)
    if source is None:
        if any(source_id in ids for ids in unknown.values()):
            return None  # Already reported as an unknown node.
        return SchemaError(
            f"links to node #{source_id}, which is not in the workflow", loc,
            kind="bad_linked_input",
            help="remove the link or add the missing node")
    if not 0 <= index < len(source.outputs):
        outs = ", ".join(f"{i}: {v.type}" for i, v in enumerate(source.outputs)) or "none"
        return SchemaError(
            f"links to output {index} of {source.display()}, which has "
            f"{len(source.outputs)} output{'s' if len(source.outputs) != 1 else ''} ({outs})",
            loc, kind="bad_linked_input",
            help="pick one of the listed output indices")
    return source.outputs[index]


def graph_to_api(graph: Graph, *, with_meta: bool = True,
                 params: dict[str, Any] | None = None, dsl_meta: bool = True) -> dict[str, Any]:
    """Write a graph as an API prompt.

    Args:
        graph: The graph.
        with_meta: Write ``_meta.title`` (and other kept ``_meta`` facts) for each node.
        params: Values for runtime params; a param without a value here takes its default.
        dsl_meta: Also write DSL-only facts (params, declared outputs, binding names) in
            ``_meta.dsl`` so the DSL comes back unchanged (see the module docstring).

    Raises:
        ExportError: A param has no value and no default (the API format has no params).
    """
    prompt: dict[str, Any] = {}
    param_order = {name: i for i, name in enumerate(graph.params)}
    declared: dict[int, dict[str, Any]] = {}
    for order, (out_name, value) in enumerate(graph.outputs.items()):
        outs = declared.setdefault(id(value.producer), {})
        outs[out_name] = {"index": value.index, "order": order}
    for node in graph.nodes:
        inputs: dict[str, Any] = {}
        used_params: dict[str, Any] = {}
        for name, value in node.inputs.items():
            if isinstance(value, Value):
                inputs[name] = [value.producer.id, value.index]
            elif isinstance(value, Param):
                inputs[name] = _param_value(value, params, node, name)
                used_params[name] = _param_decl(value, param_order, inputs[name])
            elif isinstance(value, list):
                inputs[name] = {"__value__": value}
            else:
                inputs[name] = value
        inputs.update(node.meta.get("extra_inputs", {}))
        entry: dict[str, Any] = {"inputs": inputs, "class_type": node.class_type}
        if with_meta:
            meta = dict(node.meta.get("api_meta", {}))
            # NOTE: `is not None`, so an empty title survives the round trip too.
            meta["title"] = node.title if node.title is not None else _display_name(
                node.class_type)
            dsl = _dsl_facts(node, used_params, declared.get(id(node))) if dsl_meta else {}
            if dsl:
                meta["dsl"] = dsl
            entry["_meta"] = meta
        prompt[node.id] = entry
    _add_output_savers(graph, prompt, with_meta, with_meta and dsl_meta)
    return prompt


def _dsl_facts(node: Node, used_params: dict[str, Any], outputs: dict[str, Any] | None
               ) -> dict[str, Any]:
    """The ``_meta.dsl`` object of one node (empty when there is nothing DSL-only)."""
    dsl: dict[str, Any] = {}
    kept = node.meta.get("dsl")
    if isinstance(kept, dict):
        if kept.get("bind") is not None:
            bind = kept["bind"]
            dsl["bind"] = list(bind) if isinstance(bind, (list, tuple)) else bind
        if kept.get("auto_id"):
            dsl["auto_id"] = True
    if used_params:
        dsl["params"] = used_params
    if outputs:
        dsl["outputs"] = outputs
    return dsl


def _param_decl(param: Param, order: dict[str, int], written: Any) -> dict[str, Any]:
    """How a param use is recorded: the declaration minus the default (the input holds it)."""
    decl: dict[str, Any] = {"param": param.name, "type": param.type,
                            "order": order.get(param.name, 0)}
    for key in ("min", "max", "choices", "doc"):
        if getattr(param, key) is not None:
            decl[key] = getattr(param, key)
    if param.default is not MISSING and (param.default != written
                                         or type(param.default) is not type(written)):
        decl["default"] = param.default
    return decl


def _add_output_savers(graph: Graph, prompt: dict[str, Any], with_meta: bool, mark: bool
                       ) -> None:
    """Give each declared IMAGE output that no output node saves a SaveImage of its own.

    ComfyUI runs only what reaches an output node ("Prompt has no outputs" otherwise), so the
    exported prompt saves such images with the output's name as the file prefix. Marked
    ``_meta.dsl.synthetic``, the node is dropped again when the JSON is read back.
    """
    catalog = default_catalog()
    saved: set[int] = set()
    for node in graph.nodes:
        schema = catalog.get(node.class_type)
        if schema is None or not schema.output_node:
            continue
        for value in node.inputs.values():
            if isinstance(value, Value):
                saved.add(id(value))
    next_id = 0
    for node_id in prompt:
        head = node_id.split(":")[0]
        if head.isdigit():
            next_id = max(next_id, int(head))
    for name, value in graph.outputs.items():
        if value.type != "IMAGE" or id(value) in saved:
            continue
        saved.add(id(value))
        next_id += 1
        entry: dict[str, Any] = {
            "inputs": {"filename_prefix": name, "images": [value.producer.id, value.index]},
            "class_type": "SaveImage",
        }
        if with_meta:
            entry["_meta"] = {"title": _display_name("SaveImage")}
        if mark:
            entry["_meta"]["dsl"] = {"synthetic": True}
        prompt[str(next_id)] = entry


def _restore_dsl_facts(graph: Graph, entries: list[tuple[Node, dict[str, Any]]]) -> None:
    """Apply ``_meta.dsl`` facts written by :func:`graph_to_api` (malformed ones are ignored:
    the file is still a valid ComfyUI prompt without them)."""
    params: list[tuple[int, int, Param]] = []
    by_name: dict[str, Param] = {}
    uses: list[tuple[Node, str, str]] = []
    outputs: list[tuple[int, int, str, Value]] = []
    synthetic: list[Node] = []
    for position, (node, dsl) in enumerate(entries):
        facts: dict[str, Any] = {}
        bind = dsl.get("bind")
        if isinstance(bind, str) or (isinstance(bind, list)
                                     and all(isinstance(b, str) for b in bind)):
            facts["bind"] = bind
        if dsl.get("auto_id") is True:
            facts["auto_id"] = True
        if facts:
            node.meta["dsl"] = facts
        if dsl.get("synthetic") is True:
            synthetic.append(node)
        for input_name, decl in (dsl.get("params") or {}).items():
            if not isinstance(decl, dict) or input_name not in node.inputs:
                continue
            name, type_ = decl.get("param"), decl.get("type")
            written = node.inputs[input_name]
            if not isinstance(name, str) or not isinstance(type_, str) or isinstance(
                    written, (Value, Param)):
                continue
            if name not in by_name:
                param = Param(name, type_, decl.get("default", written),
                              min=decl.get("min"), max=decl.get("max"),
                              choices=decl.get("choices"), doc=decl.get("doc"),
                              loc=node.loc.with_input(input_name))
                by_name[name] = param
                order = decl.get("order")
                params.append((order if isinstance(order, int) else 1 << 30, position, param))
            uses.append((node, input_name, name))
        for out_name, spec in (dsl.get("outputs") or {}).items():
            index = spec.get("index") if isinstance(spec, dict) else None
            if isinstance(index, int) and 0 <= index < len(node.outputs):
                order = spec.get("order")
                outputs.append((order if isinstance(order, int) else 1 << 30, position,
                                out_name, node.outputs[index]))
    for _, _, param in sorted(params, key=lambda t: (t[0], t[1])):
        graph.add_param(param)
    for node, input_name, name in uses:
        graph.set_input(node, input_name, by_name[name])
    for _, _, name, value in sorted(outputs, key=lambda t: (t[0], t[1])):
        graph.outputs.setdefault(name, value)
    for node in synthetic:
        if not any(v.uses() for v in node.outputs):
            graph.remove(node)


def _display_name(class_type: str) -> str:
    # One rule with the DSL printer, which omits @title exactly when it equals this.
    return default_title(class_type)


def _param_value(param: Param, params: dict[str, Any] | None, node: Any, name: str) -> Any:
    if params and param.name in params:
        return params[param.name]
    if param.default is not MISSING:
        return param.default
    raise ExportError(
        f"param '{param.name}' has no default, so it has no value in ComfyUI's API format",
        param.loc or node.input_loc(name),
        notes=[f"it feeds input '{name}' of {node.display()}"],
        help=f"give it a default (`param {param.name}: {param.type} = ...`) or pass a value "
             f"for it")
