"""The IR: a graph of ComfyUI nodes with typed values, runtime params and source locations.

Shaped like onnx_ir: nodes own their output :class:`Value` objects, every value knows its
producer, its output index and its uses (``Usage(node, input_name)``), and inputs are keyed by
ComfyUI input name. All mutation goes through :class:`Graph` methods so use lists stay right;
identity equality everywhere (no hash-consing: ids and titles must survive optimisation).

An input of a node is one of:

* a literal (a JSON value: int, float, str, bool, list, dict or None),
* a :class:`Value` (a link to another node's output),
* a :class:`Param` (a runtime input of the compiled program).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from comfyc.runtime.nodes.schema import MISSING

__all__ = [
    "GraphSource",
    "NodeFacts",
    "SourceLoc",
    "Usage",
    "Value",
    "Param",
    "Node",
    "Graph",
    "Input",
    "MISSING",
    "CycleError",
]




@dataclass(frozen=True, slots=True)
class SourceLoc:
    """Where something came from: a DSL span, or a JSON node (and input) in a file.

    Attributes:
        file: Path of the source file as given by the user (``<stdin>`` for standard input).
        line: 1-based line (DSL, or JSON syntax errors).
        col: 1-based column.
        end_line: Last line of the span, inclusive.
        end_col: Column one past the span's end.
        node_id: ComfyUI node id for JSON sources.
        title: The node's title for JSON sources, when it has one.
        input_name: The input the location points at, for JSON sources.
    """

    file: str | None = None
    line: int | None = None
    col: int | None = None
    end_line: int | None = None
    end_col: int | None = None
    node_id: str | None = None
    title: str | None = None
    input_name: str | None = None

    def with_input(self, input_name: str | None) -> SourceLoc:
        """Return the same node location narrowed to one input."""
        return SourceLoc(
            self.file, self.line, self.col, self.end_line, self.end_col,
            self.node_id, self.title, input_name,
        )

    def __str__(self) -> str:
        parts = [self.file or "<input>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
            return ":".join(parts)
        text = parts[0]
        if self.node_id is not None:
            text += f": node #{self.node_id}"
            if self.title:
                text += f" '{self.title}'"
        if self.input_name is not None:
            text += f", input '{self.input_name}'"
        return text


class Usage(NamedTuple):
    """One use of a value or param: ``node.inputs[input_name]``."""

    node: Node
    input_name: str


class _Usable:
    """Shared use-list bookkeeping of :class:`Value` and :class:`Param`."""

    __slots__ = ("_uses",)

    def __init__(self) -> None:
        self._uses: list[Usage] = []

    def uses(self) -> list[Usage]:
        """Return the uses in a deterministic order (insertion order)."""
        return list(self._uses)

    def _add_use(self, node: Node, name: str) -> None:
        self._uses.append(Usage(node, name))

    def _remove_use(self, node: Node, name: str) -> None:
        for i, use in enumerate(self._uses):
            if use.node is node and use.input_name == name:
                del self._uses[i]
                return
        raise AssertionError(f"use list out of sync: {node!r}.{name} not a use")


class Value(_Usable):
    """An output of a node.

    Attributes:
        producer: The node that produces this value.
        index: The output index in ComfyUI's ``RETURN_TYPES`` order.
        type: The ComfyUI type (``MODEL``, ``LATENT`` …).
        name: The output's name (``MODEL``, ``positive`` …), as the catalogue gives it.
    """

    __slots__ = ("producer", "index", "type", "name")

    def __init__(self, producer: Node, index: int, type: str, name: str) -> None:
        super().__init__()
        self.producer = producer
        self.index = index
        self.type = type
        self.name = name

    def __repr__(self) -> str:
        return f"Value(#{self.producer.id}[{self.index}] {self.name}: {self.type})"


class Param(_Usable):
    """A runtime input of the program: its value is given when the program runs.

    Attributes:
        name: The param's name (an identifier).
        type: ``INT``, ``FLOAT``, ``STRING``, ``BOOLEAN``, ``COMBO`` or a link type such as
            ``IMAGE`` for an input image.
        default: The default value, or :data:`MISSING`.
        min: Lower bound for numbers, or None.
        max: Upper bound for numbers, or None.
        choices: Allowed values for combos, or None.
        doc: A one-line description.
        loc: Where the param was declared.
    """

    __slots__ = ("name", "type", "default", "min", "max", "choices", "doc", "loc")

    def __init__(
        self,
        name: str,
        type: str,
        default: Any = MISSING,
        *,
        min: float | None = None,
        max: float | None = None,
        choices: list[Any] | None = None,
        doc: str | None = None,
        loc: SourceLoc | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.type = type
        self.default = default
        self.min = min
        self.max = max
        self.choices = choices
        self.doc = doc
        self.loc = loc

    def __repr__(self) -> str:
        return f"Param({self.name}: {self.type} = {self.default!r})"


Input = Value | Param | Any


@dataclass(slots=True)
class NodeFacts:
    """Typed facts passes record on a node for later passes and the lowering.

    Attributes:
        lora_mode: For LoRA loaders: ``"merged"`` (folded into the weights at compile time)
            or ``"runtime"`` (factors stored; merged when a session is made), or None.
        folded_from: For a node constant folding made: the class it replaced.
        sigmas: The key in :attr:`Graph.constants` of a sampler's precomputed schedule.
    """

    lora_mode: str | None = None
    folded_from: str | None = None
    sigmas: str | None = None


@dataclass(slots=True)
class GraphSource:
    """Where a workflow came from, as a frontend read it.

    Attributes:
        file: The path as given (``<stdin>`` for standard input), or None.
        kind: The input form: ``"api"``, ``"ui"``, ``"png"`` or ``"dsl"``.
        format: The form the graph was built from (``"api"`` for a UI workflow converted to
            an API prompt, ``"dsl"``), or None.
        text: The decoded source text (JSON or DSL), for error snippets and ``viz``.
        workflow: The UI workflow the input carried (UI file, PNG ``workflow`` chunk, a
            POST /prompt body's ``extra_pnginfo``), or None.
        prompt: The API prompt ComfyUI would run for this workflow (what images embed as
            their ``prompt`` chunk), or None when the frontend did not make one.
    """

    file: str | None = None
    kind: str | None = None
    format: str | None = None
    text: str | None = None
    workflow: dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None


class Node:
    """A node: one ComfyUI node instance.

    Attributes:
        id: The ComfyUI node id (a string; ``"12:3"`` for flattened subgraphs).
        class_type: The node class (``KSampler`` …).
        outputs: The node's output values, in ``RETURN_TYPES`` order.
        title: A user-given title, or None.
        loc: Where the node came from.
        input_locs: Where each input came from (DSL spans), by input name.
        facts: Typed facts the compiler's passes record (:class:`NodeFacts`).
        meta: The frontends' round-trip trivia (DSL binding names and id spelling, API
            ``_meta`` extras, undeclared inputs); the compiler never reads it.
        graph: The owning graph, or None while detached.
    """

    __slots__ = (
        "id", "class_type", "_inputs", "outputs", "title", "loc", "input_locs", "facts", "meta",
        "graph",
    )

    def __init__(
        self,
        id: str,
        class_type: str,
        output_types: list[tuple[str, str]] | None = None,
        *,
        title: str | None = None,
        loc: SourceLoc | None = None,
    ) -> None:
        self.id = id
        self.class_type = class_type
        self._inputs: dict[str, Input] = {}
        self.outputs: list[Value] = [
            Value(self, i, t, n) for i, (n, t) in enumerate(output_types or [])
        ]
        self.title = title
        self.loc = loc or SourceLoc(node_id=id, title=title)
        self.input_locs: dict[str, SourceLoc] = {}
        self.facts = NodeFacts()
        self.meta: dict[str, Any] = {}
        self.graph: Graph | None = None

    @property
    def inputs(self) -> Mapping[str, Input]:
        """Read-only view of the inputs; change them with :meth:`Graph.set_input`."""
        return _ReadOnly(self._inputs)

    def output(self, key: int | str) -> Value:
        """Return an output by index or by name.

        Raises:
            KeyError: No output has that name or index.
        """
        if isinstance(key, int):
            if 0 <= key < len(self.outputs):
                return self.outputs[key]
            raise KeyError(key)
        for value in self.outputs:
            if value.name == key:
                return value
        raise KeyError(key)

    def input_loc(self, name: str) -> SourceLoc:
        """Location of one input (falls back to the node's location)."""
        return self.input_locs.get(name) or self.loc.with_input(name)

    def display(self) -> str:
        """``#3 'My sampler' (KSampler)`` — how messages name a node."""
        title = f" '{self.title}'" if self.title and self.title != self.class_type else ""
        return f"#{self.id}{title} ({self.class_type})"

    def __repr__(self) -> str:
        return f"Node({self.display()})"


class _ReadOnly(Mapping[str, Input]):
    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Input]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Input:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class CycleError(Exception):
    """The graph has a cycle; ``nodes`` lists the nodes on it."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        path = " -> ".join(n.display() for n in nodes)
        super().__init__(f"the graph has a cycle: {path}")


@dataclass(slots=True)
class Graph:
    """A workflow: nodes in topological order, runtime params and declared outputs.

    Attributes:
        nodes: The nodes; in topological order after :meth:`sort` (frontends call it).
        params: Runtime params by name, in declaration order.
        outputs: Declared outputs (DSL ``output`` statements) by name.
        source: Where the workflow came from (:class:`GraphSource`).
        constants: Values computed at compile time (folded prompt encodings, schedules) by
            key; the artifact stores them and the program reads them as ``$const``.
        warnings: Frontend warnings (e.g. unused DSL params), for the CLI to print.
    """

    nodes: list[Node] = field(default_factory=list)
    params: dict[str, Param] = field(default_factory=dict)
    outputs: dict[str, Value] = field(default_factory=dict)
    source: GraphSource = field(default_factory=GraphSource)
    constants: dict[str, Any] = field(default_factory=dict)
    warnings: list[Any] = field(default_factory=list)
    _index: dict[str, Node] = field(default_factory=dict, repr=False, compare=False)

    # ---------------------------------------------------------------- lookup
    def __post_init__(self) -> None:
        # An id index keeps lookups (and add's duplicate check) linear over a whole build.
        self._index = {n.id: n for n in self.nodes}

    def node(self, node_id: str) -> Node:
        """Return the node with that ComfyUI id.

        Raises:
            KeyError: No such node.
        """
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def find(self, node_id: str) -> Node | None:
        """Return the node with that id, or None."""
        node = self._index.get(node_id)
        if node is not None and node.graph is self and node.id == node_id:
            return node
        if len(self._index) == len(self.nodes):
            return None  # The index is complete: no such node.
        for node in self.nodes:
            if node.id == node_id:
                return node
        return None

    def new_id(self) -> str:
        """Allocate a fresh node id deterministically (one past the largest numeric id)."""
        highest = 0
        for node in self.nodes:
            head = node.id.split(":")[0]
            if head.isdigit():
                highest = max(highest, int(head))
        return str(highest + 1)

    # -------------------------------------------------------------- mutation
    def add(self, node: Node, *, index: int | None = None) -> Node:
        """Insert a detached node (at the end, or at ``index``)."""
        if node.graph is not None:
            raise ValueError(f"{node!r} already belongs to a graph")
        if self.find(node.id) is not None:
            raise ValueError(f"duplicate node id {node.id!r}")
        node.graph = self
        if index is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(index, node)
        self._index[node.id] = node
        return node

    def add_node(
        self,
        class_type: str,
        output_types: list[tuple[str, str]] | None = None,
        *,
        id: str | None = None,
        inputs: Mapping[str, Input] | None = None,
        title: str | None = None,
        loc: SourceLoc | None = None,
        index: int | None = None,
    ) -> Node:
        """Create a node, wire its inputs and insert it.

        Args:
            class_type: The node class.
            output_types: ``(name, type)`` for each output, in order.
            id: The node id; a fresh one when None.
            inputs: Initial inputs.
            title: The node title.
            loc: Where the node came from.
            index: Insert position; the end when None.
        """
        node = Node(id or self.new_id(), class_type, output_types, title=title, loc=loc)
        self.add(node, index=index)
        for name, value in (inputs or {}).items():
            self.set_input(node, name, value)
        return node

    def set_input(self, node: Node, name: str, value: Input) -> None:
        """Set (or replace) one input of ``node``, keeping use lists right."""
        old = node._inputs.get(name, MISSING)
        if isinstance(old, _Usable):
            old._remove_use(node, name)
        node._inputs[name] = value
        if isinstance(value, _Usable):
            value._add_use(node, name)

    def remove_input(self, node: Node, name: str) -> None:
        """Delete one input of ``node`` (no-op if absent)."""
        if name not in node._inputs:
            return
        old = node._inputs.pop(name)
        if isinstance(old, _Usable):
            old._remove_use(node, name)

    def replace_all_uses_with(self, old: Value | Param, new: Input) -> None:
        """Point every use of ``old`` at ``new`` (a value, a param or a literal)."""
        for use in old.uses():
            self.set_input(use.node, use.input_name, new)
        for name, value in list(self.outputs.items()):
            if value is old:
                if not isinstance(new, Value):
                    raise ValueError(f"output {name!r} must stay a value, got {new!r}")
                self.outputs[name] = new

    def remove(self, node: Node) -> None:
        """Remove ``node``; its outputs must be unused.

        Raises:
            ValueError: An output of the node is still used.
        """
        for value in node.outputs:
            if value.uses() or any(v is value for v in self.outputs.values()):
                users = ", ".join(u.node.display() for u in value.uses()) or "a graph output"
                raise ValueError(f"cannot remove {node.display()}: its {value.name} feeds {users}")
        for name in list(node._inputs):
            self.remove_input(node, name)
        self.nodes.remove(node)
        self._index.pop(node.id, None)
        node.graph = None

    def add_param(self, param: Param) -> Param:
        """Declare a runtime param.

        Raises:
            ValueError: A param with that name exists.
        """
        if param.name in self.params:
            raise ValueError(f"param {param.name!r} is declared twice")
        self.params[param.name] = param
        return param

    def remove_param(self, name: str) -> None:
        """Delete an unused param."""
        param = self.params[name]
        if param.uses():
            raise ValueError(f"param {name!r} is still used")
        del self.params[name]

    # ----------------------------------------------------------------- order
    def sort(self) -> None:
        """Put the nodes in a stable topological order.

        Ties keep the current order, so a graph that is already sorted does not change and
        the order is deterministic for any input.

        Raises:
            CycleError: The graph has a cycle.
        """
        position = {id(n): i for i, n in enumerate(self.nodes)}
        indegree: dict[int, int] = {}
        for node in self.nodes:
            producers = {
                id(v.producer) for v in node._inputs.values()
                if isinstance(v, Value) and v.producer.graph is self
            }
            indegree[id(node)] = len(producers)
        import heapq

        ready = [(position[id(n)], n) for n in self.nodes if indegree[id(n)] == 0]
        heapq.heapify(ready)
        order: list[Node] = []
        while ready:
            _, node = heapq.heappop(ready)
            order.append(node)
            seen: set[int] = set()
            for value in node.outputs:
                for use in value._uses:
                    key = id(use.node)
                    if key in seen:
                        continue
                    seen.add(key)
                    indegree[key] -= 1
                    if indegree[key] == 0:
                        heapq.heappush(ready, (position[key], use.node))
        if len(order) != len(self.nodes):
            raise CycleError(self._find_cycle({id(n) for n in order}))
        self.nodes = order

    def _find_cycle(self, done: set[int]) -> list[Node]:
        remaining = [n for n in self.nodes if id(n) not in done]
        state: dict[int, int] = {}
        stack: list[Node] = []

        def visit(node: Node) -> list[Node] | None:
            state[id(node)] = 1
            stack.append(node)
            for value in node._inputs.values():
                if not isinstance(value, Value) or id(value.producer) in done:
                    continue
                producer = value.producer
                if state.get(id(producer)) == 1:
                    return stack[stack.index(producer):] + [producer]
                if id(producer) not in state:
                    found = visit(producer)
                    if found:
                        return found
            stack.pop()
            state[id(node)] = 2
            return None

        for node in remaining:
            if id(node) not in state:
                found = visit(node)
                if found:
                    # Report producers before consumers: reverse the consumer->producer walk.
                    return list(reversed(found))
        return remaining

    def __str__(self) -> str:
        from .printer import print_graph

        return print_graph(self)

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes))

    def __len__(self) -> int:
        return len(self.nodes)
