"""ComfyUI's UI ("workflow") format → the API prompt the frontend would queue.

Implements the frontend's ``graphToPrompt`` rules (../shared/reference/comfyui-format.md §2.4):
virtual nodes (Reroute, PrimitiveNode, Note, MarkdownNote) are skipped, primitives are inlined,
muted nodes (mode 2) are dropped with their links, bypassed nodes (mode 4) are wired through,
subgraphs are flattened to ``outer:inner`` ids, widget values are mapped positionally over the
catalogue's widget layout (with the synthetic seed-control and upload slots), missing trailing
widgets take their defaults, and links are resolved by link id, never by ``target_slot``.
Both link encodings are accepted: 0.4 arrays and 1.0 objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfyc.compiler.catalog import Catalog, default_catalog
from comfyc.compiler.errors import SchemaError, WorkflowError, WorkflowErrors
from comfyc.compiler.ir import MISSING, SourceLoc, is_compatible

from .api import unknown_node_error

__all__ = ["ui_to_api", "is_ui_workflow"]

_VIRTUAL = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}
_MUTED, _BYPASSED = 2, 4
_SUBGRAPH_INPUT, _SUBGRAPH_OUTPUT = -10, -20


def is_ui_workflow(data: Any) -> bool:
    """True when ``data`` looks like a UI workflow (``nodes`` and ``links`` lists)."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and (
        "links" in data or "version" in data or "last_node_id" in data
    )


@dataclass
class _Link:
    id: Any
    origin_id: Any
    origin_slot: int
    target_id: Any
    target_slot: int
    type: Any


@dataclass
class _Context:
    """One graph level: the root workflow, or a subgraph instance's definition."""

    nodes: dict[Any, dict[str, Any]]
    links: dict[Any, _Link]
    prefix: str = ""
    parent: _Context | None = None
    instance: dict[str, Any] | None = None  # the instance node in the parent context
    definition: dict[str, Any] | None = None
    promoted: dict[tuple[str, str], Any] = field(default_factory=dict)


# Results of resolving a link.
@dataclass
class _LinkTo:
    node_id: str
    slot: int


@dataclass
class _Literal:
    value: Any


_KEEP_WIDGET = object()  # An unlinked subgraph input: the inner node keeps its widget value.


def _read_links(raw: Any, where: str, errors: list[WorkflowError], file: str | None
                ) -> dict[Any, _Link]:
    links: dict[Any, _Link] = {}
    for item in raw or []:
        if isinstance(item, list) and len(item) >= 5:
            link = _Link(item[0], item[1], item[2], item[3], item[4],
                         item[5] if len(item) > 5 else None)
        elif isinstance(item, dict) and "id" in item:
            link = _Link(item["id"], item.get("origin_id"), item.get("origin_slot", 0),
                         item.get("target_id"), item.get("target_slot", 0), item.get("type"))
        else:
            errors.append(SchemaError(
                f"{where}: malformed link {item!r}; expected [id, origin_id, origin_slot, "
                f"target_id, target_slot, type] or a link object", SourceLoc(file=file),
                kind="invalid_workflow"))
            continue
        links[link.id] = link
    return links


def _node_map(nodes: Any) -> dict[Any, dict[str, Any]]:
    return {n.get("id"): n for n in nodes if isinstance(n, dict)}


def _mode(node: dict[str, Any]) -> int:
    mode = node.get("mode", 0)
    return mode if isinstance(mode, int) else 0


class _Converter:
    def __init__(self, data: dict[str, Any], catalog: Catalog, file: str | None) -> None:
        self.catalog = catalog
        self.file = file
        self.errors: list[WorkflowError] = []
        self.unknown: dict[str, list[str]] = {}
        self.first_unknown: SourceLoc | None = None
        defs = (data.get("definitions") or {}).get("subgraphs") or []
        self.subgraphs = {d.get("id"): d for d in defs if isinstance(d, dict)}
        self.root = _Context(_node_map(data["nodes"]),
                             _read_links(data.get("links"), "links", self.errors, file))
        self.prompt: dict[str, Any] = {}
        # NOTE: files saved before the frontend split (no extra.frontendVersion) were queued
        # by the legacy litegraph frontend, which serialised the upload button as the input
        # "choose file to upload" and sent no widget values for a node saved without
        # widgets_values. The corpus' API prompts were made that way; we reproduce both.
        self.legacy = "frontendVersion" not in (data.get("extra") or {})

    # --------------------------------------------------------------- entry
    def run(self) -> dict[str, Any]:
        self._emit_context(self.root)
        if self.unknown:
            self.errors.insert(0, unknown_node_error(self.unknown, self.catalog, self.file,
                                                     self.first_unknown))
        return self.prompt

    def _loc(self, exec_id: str, node: dict[str, Any], input_name: str | None = None
             ) -> SourceLoc:
        title = node.get("title") if isinstance(node.get("title"), str) else None
        return SourceLoc(file=self.file, node_id=exec_id, title=title, input_name=input_name)

    # ---------------------------------------------------------- emission
    def _emit_context(self, ctx: _Context) -> None:
        for node_id, node in ctx.nodes.items():
            node_type = node.get("type")
            exec_id = f"{ctx.prefix}{node_id}"
            if node_type in _VIRTUAL or _mode(node) in (_MUTED, _BYPASSED):
                continue
            if node_type in self.subgraphs:
                self._emit_context(self._child(ctx, node))
                continue
            if not isinstance(node_type, str):
                self.errors.append(SchemaError("node has no type", self._loc(exec_id, node)))
                continue
            schema = self.catalog.get(node_type)
            if schema is None:
                self.unknown.setdefault(node_type, []).append(exec_id)
                self.first_unknown = self.first_unknown or self._loc(exec_id, node)
                continue
            inputs = self._widget_inputs(ctx, node, schema)
            for socket in node.get("inputs") or []:
                if not isinstance(socket, dict):
                    continue
                name = (socket.get("widget") or {}).get("name") or socket.get("name")
                link_id = socket.get("link")
                if link_id is None or not isinstance(name, str):
                    continue
                result = self._resolve(ctx, link_id, socket.get("type"),
                                       self._loc(exec_id, node, name))
                if result is _KEEP_WIDGET:
                    continue
                if isinstance(result, _LinkTo):
                    inputs[name] = [result.node_id, result.slot]
                elif isinstance(result, _Literal):
                    inputs[name] = result.value
                else:
                    inputs.pop(name, None)
            title = node.get("title") if isinstance(node.get("title"), str) else None
            self.prompt[exec_id] = {
                "inputs": inputs,
                "class_type": node_type,
                "_meta": {"title": title or schema.display_name},
            }

    def _widget_inputs(self, ctx: _Context, node: dict[str, Any], schema: Any
                       ) -> dict[str, Any]:
        values = node.get("widgets_values")
        inputs: dict[str, Any] = {}
        layout = schema.widget_layout()
        if isinstance(values, dict):  # Some packs save widgets by name.
            for slot in layout:
                if slot.kind == "value" and slot.input is not None:
                    value = values.get(slot.input.name, slot.input.effective_default())
                    if value is not MISSING:
                        inputs[slot.input.name] = value
            return inputs
        if values is None and self.legacy:
            return inputs
        values = values if isinstance(values, list) else []
        for index, slot in enumerate(layout):
            if slot.kind == "upload" and self.legacy and index < len(values):
                inputs["choose file to upload"] = values[index]
            if slot.kind != "value" or slot.input is None:
                continue
            name = slot.input.name
            promoted = ctx.promoted.get((str(node.get("id")), name), MISSING)
            if promoted is not MISSING:
                inputs[name] = promoted
            elif index < len(values):
                inputs[name] = values[index]
            else:
                default = slot.input.effective_default()
                if default is not MISSING:
                    inputs[name] = default
        return inputs

    # ------------------------------------------------------------ subgraphs
    def _child(self, ctx: _Context, instance: dict[str, Any]) -> _Context:
        definition = self.subgraphs[instance["type"]]
        child = _Context(
            _node_map(definition.get("nodes") or []),
            _read_links(definition.get("links"), f"subgraph {definition.get('name')!r} links",
                        self.errors, self.file),
            prefix=f"{ctx.prefix}{instance.get('id')}:", parent=ctx, instance=instance,
            definition=definition,
        )
        # Promoted widgets: newer files list [innerId, widget] in proxyWidgets and keep the
        # values on the inner nodes; older files store them in the instance's widgets_values
        # in the order of the definition's widget inputs.
        proxies = (instance.get("properties") or {}).get("proxyWidgets")
        values = instance.get("widgets_values")
        if not proxies and isinstance(values, list) and values:
            widget_inputs = [
                i for i in definition.get("inputs") or [] if i.get("type") in (
                    "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") or isinstance(i.get("type"), list)
            ]
            for spec, value in zip(widget_inputs, values):
                for link_id in spec.get("linkIds") or []:
                    link = child.links.get(link_id)
                    if link is None:
                        continue
                    target = child.nodes.get(link.target_id)
                    if target is None:
                        continue
                    sockets = target.get("inputs") or []
                    if 0 <= link.target_slot < len(sockets):
                        socket = sockets[link.target_slot]
                        name = (socket.get("widget") or {}).get("name") or socket.get("name")
                        child.promoted[(str(link.target_id), name)] = value
        return child

    # ------------------------------------------------------------ resolution
    def _resolve(self, ctx: _Context, link_id: Any, consumer_type: Any, loc: SourceLoc,
                 depth: int = 0) -> Any:
        if depth > 256:
            self.errors.append(SchemaError("link chain too deep (a reroute loop?)", loc,
                                           kind="bad_linked_input"))
            return None
        link = ctx.links.get(link_id)
        if link is None:
            self.errors.append(SchemaError(
                f"uses link {link_id}, which is not in the workflow's links table", loc,
                kind="bad_linked_input", help="re-save the workflow from ComfyUI"))
            return None
        if link.origin_id == _SUBGRAPH_INPUT:
            return self._resolve_subgraph_input(ctx, link.origin_slot, consumer_type, loc, depth)
        origin = ctx.nodes.get(link.origin_id)
        if origin is None:
            self.errors.append(SchemaError(
                f"link {link_id} comes from node #{ctx.prefix}{link.origin_id}, which is not "
                f"in the workflow", loc, kind="bad_linked_input",
                help="remove the link or add the missing node"))
            return None
        origin_type = origin.get("type")
        if origin_type == "Reroute":
            sockets = origin.get("inputs") or []
            upstream = sockets[0].get("link") if sockets and isinstance(sockets[0], dict) else None
            if upstream is None:
                return None
            return self._resolve(ctx, upstream, consumer_type, loc, depth + 1)
        if origin_type == "PrimitiveNode":
            values = origin.get("widgets_values")
            if isinstance(values, list) and values:
                return _Literal(values[0])
            return None
        mode = _mode(origin)
        if mode == _MUTED:
            return None
        if mode == _BYPASSED:
            upstream = self._bypass_input(origin, link.origin_slot, consumer_type)
            if upstream is None:
                return None
            return self._resolve(ctx, upstream, consumer_type, loc, depth + 1)
        if origin_type in self.subgraphs:
            child = self._child(ctx, origin)
            for inner in child.links.values():
                if inner.target_id == _SUBGRAPH_OUTPUT and inner.target_slot == link.origin_slot:
                    return self._resolve(child, inner.id, consumer_type, loc, depth + 1)
            return None
        if origin_type in ("Note", "MarkdownNote"):
            return None
        return _LinkTo(f"{ctx.prefix}{link.origin_id}", int(link.origin_slot))

    def _resolve_subgraph_input(self, ctx: _Context, slot: int, consumer_type: Any,
                                loc: SourceLoc, depth: int) -> Any:
        parent, instance = ctx.parent, ctx.instance
        if parent is None or instance is None:
            return None
        sockets = instance.get("inputs") or []
        if 0 <= slot < len(sockets) and isinstance(sockets[slot], dict):
            upstream = sockets[slot].get("link")
            if upstream is not None:
                return self._resolve(parent, upstream, consumer_type, loc, depth + 1)
        return _KEEP_WIDGET

    def _bypass_input(self, node: dict[str, Any], out_slot: int, consumer_type: Any) -> Any:
        """The input link a bypassed node passes through to an output (frontend's rule)."""
        sockets = [s for s in node.get("inputs") or [] if isinstance(s, dict)]
        outputs = node.get("outputs") or []
        out_type = outputs[out_slot].get("type") if 0 <= out_slot < len(outputs) else None

        def ok(a: Any, b: Any) -> bool:
            return isinstance(a, str) and isinstance(b, str) and is_compatible(a, b)

        if not consumer_type or consumer_type == "*" or not out_type or out_type == "*":
            order = [out_slot] if out_slot < len(sockets) else []
            order.append(0)
            for i in order:
                if i < len(sockets) and sockets[i].get("link") is not None:
                    return sockets[i]["link"]
            return None
        if out_slot < len(sockets):
            cand = sockets[out_slot]
            if ok(cand.get("type"), out_type) and ok(cand.get("type"), consumer_type):
                return cand.get("link")
        for cand in sockets:
            if cand.get("type") == consumer_type:
                return cand.get("link")
        for cand in sockets:
            if ok(cand.get("type"), consumer_type):
                return cand.get("link")
        return None


def ui_to_api(data: dict[str, Any], catalog: Catalog | None = None, file: str | None = None
              ) -> dict[str, Any]:
    """Convert a UI workflow into the API prompt ComfyUI's frontend would queue.

    Args:
        data: The parsed UI workflow.
        catalog: Node schemas (widget layouts); the built-in catalogue when None.
        file: The source path, for locations.

    Returns:
        The API prompt (node id → ``{inputs, class_type, _meta}``).

    Raises:
        WorkflowErrors: Unknown node types or broken links (all of them at once).
    """
    if not is_ui_workflow(data):
        raise WorkflowErrors([SchemaError(
            "not a UI workflow: expected an object with 'nodes' and 'links'",
            SourceLoc(file=file), kind="invalid_workflow")])
    converter = _Converter(data, catalog or default_catalog(), file)
    prompt = converter.run()
    if converter.errors:
        raise WorkflowErrors(converter.errors)
    return prompt
