"""ComfyUI's UI ("workflow") format → the API prompt the frontend would queue.

Implements the frontend's ``graphToPrompt`` rules (../shared/reference/comfyui-format.md §2.4):
virtual nodes (Reroute, PrimitiveNode, Note, MarkdownNote) are skipped, primitives are inlined,
muted nodes (mode 2) are dropped with their links, bypassed nodes (mode 4) are wired through,
subgraphs are flattened to ``outer:inner`` ids, widget values are mapped positionally over the
catalogue's widget layout (with the synthetic seed-control and upload slots), missing trailing
widgets take their defaults, and links are resolved by link id, never by ``target_slot``.
Both link encodings are accepted: 0.4 arrays and 1.0 objects.

Files come from anywhere (a download, a PNG, a client's POST), so every field is checked for
its shape before it is used: a node id or link id that is not a number or a string, a link
that is not ``[id, origin, slot, target, slot, type]`` with integer slots, ``links`` that is
not a list — each becomes a :class:`~comfyc.compiler.errors.SchemaError` naming the node or
link, never a ``TypeError`` from deep inside the converter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfyc.compiler.catalog import Catalog, default_catalog
from comfyc.compiler.errors import SchemaError, WorkflowError, WorkflowErrors
from comfyc.compiler.ir import MISSING, SourceLoc, is_compatible

from .api import unknown_node_error

__all__ = ["is_ui_workflow", "ui_defaults_filled", "ui_to_api"]

_VIRTUAL = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}
_MUTED, _BYPASSED = 2, 4
_SUBGRAPH_INPUT, _SUBGRAPH_OUTPUT = -10, -20
#: Subgraphs inside subgraphs deeper than this are refused (a definition that contains an
#: instance of itself would otherwise recurse until Python's stack runs out).
_MAX_NESTING = 32


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


def _is_id(value: Any) -> bool:
    """Whether ``value`` can be a node or link id (a number or a string; never a bool, a list
    or an object, which could not key a table)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _is_slot(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_list(value: Any) -> list[Any]:
    """``value`` when it is a list, else an empty list (a field of the wrong shape is treated
    as absent; the node or link that needs it reports the problem)."""
    return value if isinstance(value, list) else []


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _short(value: Any) -> str:
    """A value for an error message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _read_links(raw: Any, where: str, errors: list[WorkflowError], file: str | None
                ) -> dict[Any, _Link]:
    links: dict[Any, _Link] = {}
    if raw is not None and not isinstance(raw, list):
        errors.append(SchemaError(
            f"{where} is a {type(raw).__name__}; expected a list of links", SourceLoc(file=file),
            kind="invalid_workflow", help="re-save the workflow from ComfyUI"))
        return links
    for item in raw or []:
        link: _Link | None = None
        if isinstance(item, list) and len(item) >= 5:
            link = _Link(item[0], item[1], item[2], item[3], item[4],
                         item[5] if len(item) > 5 else None)
        elif isinstance(item, dict) and "id" in item:
            link = _Link(item["id"], item.get("origin_id"), item.get("origin_slot", 0),
                         item.get("target_id"), item.get("target_slot", 0), item.get("type"))
        if link is None or not (_is_id(link.id) and _is_id(link.origin_id)
                                and _is_id(link.target_id) and _is_slot(link.origin_slot)
                                and _is_slot(link.target_slot)):
            errors.append(SchemaError(
                f"{where}: malformed link {_short(item)}; expected [id, origin_id, origin_slot, "
                f"target_id, target_slot, type] (ids numbers or strings, slots integers) or a "
                f"link object", SourceLoc(file=file), kind="invalid_workflow"))
            continue
        links[link.id] = link
    return links


def _node_map(nodes: Any, where: str, errors: list[WorkflowError], file: str | None
              ) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for node in _as_list(nodes):
        if not isinstance(node, dict):
            errors.append(SchemaError(
                f"{where}: a node is a {type(node).__name__} ({_short(node)}); expected an "
                f"object with id and type", SourceLoc(file=file), kind="invalid_workflow"))
            continue
        if not _is_id(node.get("id")):
            errors.append(SchemaError(
                f"{where}: node id {_short(node.get('id'))} (type {node.get('type')!r}) is not "
                f"a number or a string", SourceLoc(file=file), kind="invalid_workflow",
                help="re-save the workflow from ComfyUI"))
            continue
        out[node["id"]] = node
    return out


def _socket_name(socket: dict[str, Any]) -> Any:
    """The input name of a node's input socket (its widget name for a converted widget)."""
    widget = socket.get("widget")
    name = widget.get("name") if isinstance(widget, dict) else None
    return name or socket.get("name")


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
        defs = _as_list(_as_dict(data.get("definitions")).get("subgraphs"))
        self.subgraphs = {d["id"]: d for d in defs
                          if isinstance(d, dict) and isinstance(d.get("id"), str)}
        self.root = _Context(_node_map(data["nodes"], "nodes", self.errors, file),
                             _read_links(data.get("links"), "links", self.errors, file))
        self.prompt: dict[str, Any] = {}
        #: Widgets the file lacks that were given their defaults, as ComfyUI's frontend fills
        #: them when it loads a workflow saved before a node gained those widgets.
        self.filled: list[WorkflowError] = []
        # NOTE: files saved before the frontend split (no extra.frontendVersion) were queued
        # by the legacy litegraph frontend, which serialised the upload button as the input
        # "choose file to upload" and sent no widget values for a node saved without
        # widgets_values. The corpus' API prompts were made that way; we reproduce both.
        self.legacy = "frontendVersion" not in _as_dict(data.get("extra"))

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
            if not isinstance(node_type, str):
                self.errors.append(SchemaError(
                    f"node has no type (found {_short(node_type)})", self._loc(exec_id, node),
                    kind="invalid_workflow"))
                continue
            if node_type in _VIRTUAL or _mode(node) in (_MUTED, _BYPASSED):
                continue
            if node_type in self.subgraphs:
                if ctx.prefix.count(":") >= _MAX_NESTING:
                    self.errors.append(SchemaError(
                        f"subgraphs nest more than {_MAX_NESTING} levels deep (a subgraph "
                        f"that contains itself?)", self._loc(exec_id, node),
                        kind="invalid_workflow"))
                    continue
                self._emit_context(self._child(ctx, node))
                continue
            schema = self.catalog.get(node_type)
            if schema is None:
                self.unknown.setdefault(node_type, []).append(exec_id)
                self.first_unknown = self.first_unknown or self._loc(exec_id, node)
                continue
            inputs = self._widget_inputs(ctx, node, schema, exec_id)
            for socket in _as_list(node.get("inputs")):
                if not isinstance(socket, dict):
                    continue
                name = _socket_name(socket)
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

    def _widget_inputs(self, ctx: _Context, node: dict[str, Any], schema: Any, exec_id: str
                       ) -> dict[str, Any]:
        values = node.get("widgets_values")
        inputs: dict[str, Any] = {}
        layout = schema.widget_layout()
        if isinstance(values, dict):  # Some packs save widgets by name.
            for slot in layout:
                if slot.kind == "value" and slot.input is not None:
                    name = slot.input.name
                    if name in values:
                        inputs[name] = values[name]
                    else:
                        self._fill(inputs, exec_id, node, schema, slot.input)
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
                self._fill(inputs, exec_id, node, schema, slot.input)
        return inputs

    def _fill(self, inputs: dict[str, Any], exec_id: str, node: dict[str, Any], schema: Any,
              spec: Any) -> None:
        """Give a widget the file lacks its default (the frontend's rule), and note it."""
        default = spec.effective_default()
        if default is MISSING:
            return
        inputs[spec.name] = default
        self.filled.append(SchemaError(
            f"widget '{spec.name}' of #{exec_id} ({schema.class_type}) is missing from the "
            f"saved workflow; it takes its default {default!r}, as ComfyUI's frontend fills it "
            f"when it loads a workflow saved before the node had this widget",
            self._loc(exec_id, node, spec.name), kind="default_filled",
            class_type=schema.class_type))

    # ------------------------------------------------------------ subgraphs
    def _child(self, ctx: _Context, instance: dict[str, Any]) -> _Context:
        definition = self.subgraphs[instance["type"]]
        name = definition.get("name")
        child = _Context(
            _node_map(definition.get("nodes"), f"subgraph {_short(name)} nodes", self.errors,
                      self.file),
            _read_links(definition.get("links"), f"subgraph {_short(name)} links",
                        self.errors, self.file),
            prefix=f"{ctx.prefix}{instance.get('id')}:", parent=ctx, instance=instance,
            definition=definition,
        )
        # Promoted widgets: newer files list [innerId, widget] in proxyWidgets and keep the
        # values on the inner nodes; older files store them in the instance's widgets_values
        # in the order of the definition's widget inputs.
        proxies = _as_dict(instance.get("properties")).get("proxyWidgets")
        values = instance.get("widgets_values")
        if not proxies and isinstance(values, list) and values:
            widget_inputs = [
                i for i in _as_list(definition.get("inputs")) if isinstance(i, dict) and (
                    i.get("type") in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
                    or isinstance(i.get("type"), list))
            ]
            for spec, value in zip(widget_inputs, values):
                for link_id in _as_list(spec.get("linkIds")):
                    link = child.links.get(link_id) if _is_id(link_id) else None
                    if link is None:
                        continue
                    target = child.nodes.get(link.target_id)
                    if target is None:
                        continue
                    sockets = _as_list(target.get("inputs"))
                    if 0 <= link.target_slot < len(sockets) and isinstance(
                            sockets[link.target_slot], dict):
                        socket_name = _socket_name(sockets[link.target_slot])
                        if isinstance(socket_name, str):
                            child.promoted[(str(link.target_id), socket_name)] = value
        return child

    # ------------------------------------------------------------ resolution
    def _resolve(self, ctx: _Context, link_id: Any, consumer_type: Any, loc: SourceLoc,
                 depth: int = 0) -> Any:
        if depth > 256:
            self.errors.append(SchemaError("link chain too deep (a reroute loop?)", loc,
                                           kind="bad_linked_input"))
            return None
        link = ctx.links.get(link_id) if _is_id(link_id) else None
        if link is None:
            self.errors.append(SchemaError(
                f"uses link {_short(link_id)}, which is not in the workflow's links table", loc,
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
            sockets = _as_list(origin.get("inputs"))
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
        if isinstance(origin_type, str) and origin_type in self.subgraphs:
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
        sockets = _as_list(instance.get("inputs"))
        if 0 <= slot < len(sockets) and isinstance(sockets[slot], dict):
            upstream = sockets[slot].get("link")
            if upstream is not None:
                return self._resolve(parent, upstream, consumer_type, loc, depth + 1)
        return _KEEP_WIDGET

    def _bypass_input(self, node: dict[str, Any], out_slot: int, consumer_type: Any) -> Any:
        """The input link a bypassed node passes through to an output (frontend's rule)."""
        sockets = [s for s in _as_list(node.get("inputs")) if isinstance(s, dict)]
        outputs = _as_list(node.get("outputs"))
        out_type = (outputs[out_slot].get("type")
                    if 0 <= out_slot < len(outputs) and isinstance(outputs[out_slot], dict)
                    else None)

        def ok(a: Any, b: Any) -> bool:
            return isinstance(a, str) and isinstance(b, str) and is_compatible(a, b)

        if not consumer_type or consumer_type == "*" or not out_type or out_type == "*":
            order = [out_slot] if 0 <= out_slot < len(sockets) else []
            order.append(0)
            for i in order:
                if i < len(sockets) and sockets[i].get("link") is not None:
                    return sockets[i]["link"]
            return None
        if 0 <= out_slot < len(sockets):
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


def ui_defaults_filled(data: dict[str, Any], catalog: Catalog | None = None,
                       file: str | None = None) -> list[WorkflowError]:
    """The widgets :func:`ui_to_api` gave their defaults because the file lacks them, one
    ``default_filled`` note each (``comfyc check`` shows them as warnings); empty for a file
    that does not convert."""
    if not is_ui_workflow(data):
        return []
    converter = _Converter(data, catalog or default_catalog(), file)
    converter.run()
    return [] if converter.errors else converter.filled


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
