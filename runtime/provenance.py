"""What an image says about how it was made: the workflow chunks of the PNGs a program saves.

ComfyUI's SaveImage stores the API prompt it executed (``prompt``) and the UI workflow the
user queued (``workflow``, from ``extra_pnginfo``). A compiled program saves the same two
things about the *user's* workflow — never the compiled program (folded constants, stage ops,
``_meta.dsl``) — with the runtime params' actual values put back where they came from::

    program.run({"seed": 7})
    # prompt chunk:   {"3": {"class_type": "KSampler", "inputs": {"seed": 7, ...}}, ...}
    # workflow chunk: the KSampler node's widgets_values [7, "randomize", 20, ...] (or the
    #                 PrimitiveNode that drives its seed), as ComfyUI's frontend would load it

so that ComfyUI and ``comfyc run IMAGE.png`` both reproduce the image. A param's places in the
prompt are the manifest's ``param_uses`` (``[[node id, input name], …]``); the same place in a
UI workflow is found the way ComfyUI's frontend maps widgets: the node's ``widgets_values`` in
its class's widget layout, or the PrimitiveNode (through Reroutes) linked to the input, or —
inside a subgraph (ids ``"outer:inner"``) — the inner node, following a promoted input out to
the instance that feeds it. A place that cannot be found is left as it was.

Imports nothing from the compiler (the lean runtime writes these chunks).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .nodes.schema import MISSING

__all__ = ["Executed", "ProvenancePlan", "executed_prompt", "executed_workflow", "json_text"]

#: ``_meta`` keys that only comfyc reads (the DSL's params, bindings and outputs).
_PRIVATE_META = ("dsl",)
_SUBGRAPH_INPUT = -10
_WIDGET_SOCKET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def executed_prompt(prompt: Mapping[str, Any], uses: Mapping[str, Iterable[Any]],
                    params: Mapping[str, Any]) -> dict[str, Any]:
    """The API prompt with the params' values at their uses and without comfyc's own facts.

    Args:
        prompt: The user's workflow as an API prompt (params at their defaults).
        uses: Per param, its ``[node id, input name]`` places in ``prompt``.
        params: The values this run used, by param name.

    Returns:
        A new prompt; ``prompt`` is not changed.
    """
    out = copy.deepcopy(dict(prompt))
    for entry in out.values():
        meta = entry.get("_meta") if isinstance(entry, dict) else None
        if isinstance(meta, dict):
            for key in _PRIVATE_META:
                meta.pop(key, None)
    for name, places in uses.items():
        if name not in params:
            continue
        for node_id, input_name in places:
            entry = out.get(node_id)
            if isinstance(entry, dict) and isinstance(entry.get("inputs"), dict):
                entry["inputs"][input_name] = params[name]
    return out


def executed_workflow(workflow: Mapping[str, Any], uses: Mapping[str, Iterable[Any]],
                      params: Mapping[str, Any]) -> dict[str, Any]:
    """The UI workflow with the params' values in the widgets they came from.

    Args:
        workflow: The UI workflow the user's file carried.
        uses: Per param, its ``[node id, input name]`` places (API prompt ids).
        params: The values this run used, by param name.

    Returns:
        A new workflow; ``workflow`` is not changed.
    """
    out = copy.deepcopy(dict(workflow))
    for name, places in uses.items():
        if name not in params:
            continue
        for node_id, input_name in places:
            _set_widget(out, str(node_id).split(":"), str(input_name), params[name])
    return out


class _Mark:
    """Stands in for a param's value while a :class:`ProvenancePlan` finds its places."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def _marks(value: Any, path: tuple[Any, ...], found: list[tuple[tuple[Any, ...], str]],
           seen: set[int]) -> None:
    """The paths (keys and indices from the root) at which ``value`` holds a :class:`_Mark`."""
    if isinstance(value, _Mark):
        found.append((path, value.name))
    elif isinstance(value, (dict, list)) and id(value) not in seen:
        seen.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            _marks(item, (*path, key), found, seen)


class Executed(dict):  # type: ignore[type-arg]
    """A prompt or workflow a :class:`ProvenancePlan` filled in, which also knows its JSON
    text (``json.dumps`` of it, made from the plan's text without walking the whole
    structure). Read it, do not change it: the text would not follow."""

    __slots__ = ("_pieces", "_values")

    def __init__(self, data: dict[str, Any], pieces: list[str] | None,
                 values: list[Any]) -> None:
        super().__init__(data)
        self._pieces = pieces
        self._values = values

    def json_text(self) -> str:
        """``json.dumps(self)``."""
        pieces = self._pieces
        if pieces is None:
            return json.dumps(self)
        parts = [pieces[0]]
        for value, piece in zip(self._values, pieces[1:]):
            parts.append(json.dumps(value))
            parts.append(piece)
        return "".join(parts)


def json_text(value: Any) -> str:
    """``json.dumps(value)``, from an :class:`Executed` value's own text where it has one."""
    return value.json_text() if type(value) is Executed else json.dumps(value)


_TOKEN = "\0comfyc-param\0"


def _template(base: dict[str, Any]) -> tuple[list[str], list[str]] | None:
    """``json.dumps(base)`` cut at its markers, and the markers' param names in text order;
    None where that text cannot be cut safely (the token also occurs in the workflow)."""
    names: list[str] = []

    def default(value: Any) -> Any:
        if isinstance(value, _Mark):
            names.append(value.name)
            return _TOKEN
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    try:
        text = json.dumps(base, default=default)
    except (TypeError, ValueError):
        return None
    quoted = json.dumps(_TOKEN)
    pieces = text.split(quoted)
    if len(pieces) != len(names) + 1:
        return None
    return pieces, names


def _filled(base: dict[str, Any], places: list[tuple[tuple[Any, ...], str]],
            params: Mapping[str, Any],
            template: tuple[list[str], list[str]] | None) -> Executed:
    """``base`` with each place set to its param's value: the containers on the way to a
    place are copied (once each), everything else is shared with ``base``."""
    root = dict(base)
    copies: dict[tuple[Any, ...], Any] = {(): root}
    for path, name in places:
        node: Any = root
        for depth in range(len(path) - 1):
            prefix = path[:depth + 1]
            inner = copies.get(prefix)
            if inner is None:
                inner = node[path[depth]]
                inner = dict(inner) if isinstance(inner, dict) else list(inner)
                node[path[depth]] = inner
                copies[prefix] = inner
            node = inner
        node[path[-1]] = params[name]
    if template is None:
        return Executed(root, None, [])
    pieces, names = template
    return Executed(root, pieces, [params[name] for name in names])


class ProvenancePlan:
    """:func:`executed_prompt` and :func:`executed_workflow` for one program, worked out once.

    Where a param's value goes depends only on the workflow's structure, never on the value,
    so the plan runs both functions once with a marker per param, remembers where the markers
    ended up, and per run copies only the containers on the way to those places (a deep copy
    of a UI workflow took 0.1-0.4 ms per saved image). Its results share everything else with
    the plan: read them, do not change them.

    Args:
        prompt: The user's workflow as an API prompt, or None.
        workflow: The UI workflow, or None.
        uses: Per param, its ``[node id, input name]`` places in ``prompt``.
    """

    def __init__(self, prompt: Mapping[str, Any] | None, workflow: Mapping[str, Any] | None,
                 uses: Mapping[str, Iterable[Any]]) -> None:
        self._uses = {name: [list(place) for place in places] for name, places in uses.items()}
        marks = {name: _Mark(name) for name in self._uses}
        # Per chunk: (its source, the direct function, the marked copy or None, the marks'
        # places in it, its JSON text cut at the marks).
        self._chunks: list[tuple[Any, Any, Any, list[tuple[tuple[Any, ...], str]], Any]] = []
        for source, direct in ((prompt, executed_prompt), (workflow, executed_workflow)):
            base = None if source is None else direct(source, self._uses, marks)
            found: list[tuple[tuple[Any, ...], str]] = []
            if base is not None:
                _marks(base, (), found, set())
            self._chunks.append((source, direct, base, found,
                                 None if base is None else _template(base)))

    def _chunk(self, index: int, params: Mapping[str, Any]) -> dict[str, Any] | None:
        source, direct, base, places, template = self._chunks[index]
        if base is None:
            return None
        if not all(name in params for name in self._uses):
            return direct(source, self._uses, params)  # type: ignore[no-any-return]
        return _filled(base, places, params, template)

    def prompt(self, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """:func:`executed_prompt` of the planned prompt with ``params`` (None: no prompt)."""
        return self._chunk(0, params)

    def workflow(self, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """:func:`executed_workflow` of the planned UI workflow with ``params`` (None: none)."""
        return self._chunk(1, params)


# ------------------------------------------------------------------------------ UI graphs
class _Level:
    """One graph level of a UI workflow: the root, or a subgraph definition seen through one
    of its instances (``parent`` and ``instance`` lead back out)."""

    def __init__(self, graph: Mapping[str, Any], parent: _Level | None = None,
                 instance: dict[str, Any] | None = None,
                 definition: dict[str, Any] | None = None) -> None:
        self.nodes = {str(n.get("id")): n for n in _list(graph.get("nodes"))
                      if isinstance(n, dict)}
        self.links: dict[str, tuple[Any, int]] = {}  # link id -> (origin id, origin slot)
        for link in _list(graph.get("links")):
            if isinstance(link, list) and len(link) >= 5:
                self.links[str(link[0])] = (link[1], link[2])
            elif isinstance(link, dict) and "id" in link:
                self.links[str(link["id"])] = (link.get("origin_id"), link.get("origin_slot"))
        self.parent = parent
        self.instance = instance
        self.definition = definition


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _definitions(workflow: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    definitions = workflow.get("definitions")
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, dict) else None
    return {d["id"]: d for d in _list(subgraphs) if isinstance(d, dict) and "id" in d}


def _set_widget(workflow: dict[str, Any], path: list[str], name: str, value: Any) -> None:
    """Put ``value`` where node ``path`` (an API id split at ``:``) takes input ``name``."""
    definitions = _definitions(workflow)
    level = _Level(workflow)
    for outer in path[:-1]:
        instance = level.nodes.get(outer)
        definition = definitions.get(instance.get("type")) if instance else None
        if instance is None or definition is None:
            return
        level = _Level(definition, level, instance, definition)
    node = level.nodes.get(path[-1])
    if node is not None:
        _set_input(level, node, name, value, depth=0)


def _socket(node: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    """The node's input socket for ``name`` (a converted widget's socket names its widget)."""
    for socket in _list(node.get("inputs")):
        if not isinstance(socket, dict):
            continue
        widget = socket.get("widget")
        widget_name = widget.get("name") if isinstance(widget, dict) else None
        if (widget_name or socket.get("name")) == name:
            return socket
    return None


def _set_input(level: _Level, node: dict[str, Any], name: str, value: Any, depth: int) -> None:
    if depth > 64:  # A reroute loop or absurd nesting: leave the workflow as it is.
        return
    _set_own_widget(node, name, value)
    socket = _socket(node, name)
    link = socket.get("link") if socket is not None else None
    if link is not None:
        _set_link_source(level, link, value, depth + 1)


def _set_own_widget(node: dict[str, Any], name: str, value: Any) -> None:
    """Set the node's own widget slot for ``name`` (the frontend keeps it in step with a
    linked primitive; for an unlinked widget it is the value)."""
    values = node.get("widgets_values")
    if isinstance(values, dict):
        if name in values:
            values[name] = value
        return
    if not isinstance(values, list):
        return
    from .nodes import registry

    entry = registry().get(str(node.get("type")))
    if entry is None:
        return
    layout = entry.schema.widget_layout()
    for index, slot in enumerate(layout):
        if slot.kind == "value" and slot.input is not None and slot.input.name == name:
            # A file saved before the node had this widget: fill the slots up to it the way
            # the frontend does when it loads the file (defaults), then set it.
            while len(values) < index:
                values.append(_slot_default(layout[len(values)]))
            if index < len(values):
                values[index] = value
            else:
                values.append(value)
            return


def _slot_default(slot: Any) -> Any:
    """What the frontend puts in a widget slot it adds: the input's default, "fixed" for a
    seed's control, "image" for an upload button."""
    if slot.kind == "control":
        return "fixed"
    if slot.kind == "upload":
        return "image"
    default = slot.input.effective_default() if slot.input is not None else None
    return None if default is MISSING else default


def _set_link_source(level: _Level, link_id: Any, value: Any, depth: int) -> None:
    """Set the widget that feeds link ``link_id``: a PrimitiveNode's value (through Reroutes),
    or, for a subgraph's input, whatever feeds that input on the instance."""
    origin = level.links.get(str(link_id))
    if origin is None or depth > 64:
        return
    origin_id, origin_slot = origin
    if origin_id == _SUBGRAPH_INPUT:
        _set_subgraph_input(level, origin_slot, value, depth + 1)
        return
    source = level.nodes.get(str(origin_id))
    if source is None:
        return
    kind = source.get("type")
    if kind == "Reroute":
        sockets = _list(source.get("inputs"))
        upstream = sockets[0].get("link") if sockets and isinstance(sockets[0], dict) else None
        if upstream is not None:
            _set_link_source(level, upstream, value, depth + 1)
    elif kind == "PrimitiveNode":
        values = source.get("widgets_values")
        if isinstance(values, list) and values:
            values[0] = value


def _set_subgraph_input(level: _Level, slot: Any, value: Any, depth: int) -> None:
    """A subgraph input fed by the instance: its link in the parent, or (older files) the
    instance's own widgets_values in the order of the definition's widget inputs."""
    parent, instance, definition = level.parent, level.instance, level.definition
    if parent is None or instance is None or definition is None or not isinstance(slot, int):
        return
    sockets = _list(instance.get("inputs"))
    if 0 <= slot < len(sockets) and isinstance(sockets[slot], dict):
        upstream = sockets[slot].get("link")
        if upstream is not None:
            _set_link_source(parent, upstream, value, depth + 1)
            return
    values = instance.get("widgets_values")
    properties = instance.get("properties")
    proxies = properties.get("proxyWidgets") if isinstance(properties, dict) else None
    if proxies or not isinstance(values, list):
        return  # Newer files keep promoted values on the inner node (already set).
    inputs = [i for i in _list(definition.get("inputs")) if isinstance(i, dict)]
    if not 0 <= slot < len(inputs):
        return
    widgets = [i for i in inputs
               if i.get("type") in _WIDGET_SOCKET_TYPES or isinstance(i.get("type"), list)]
    if inputs[slot] in widgets:
        index = widgets.index(inputs[slot])
        if index < len(values):
            values[index] = value
