"""Pass infrastructure: ``InPlacePass``, ``PassResult``, the ``PassManager`` and the change log.

A pass is a class with ``call(graph) -> PassResult``. The manager runs an explicit list of
passes (``compiler/pipeline.py``), runs the verifier after each one when asked (always in
tests, ``COMFYC_VERIFY=1`` in the CLI), and wraps a failure with the pass name and the passes
that ran before it.

Passes share a :class:`PassContext`: the catalogue, typed :class:`PassOptions`, the model store
constant folding evaluates prompts with, and the :class:`ChangeLog` every pass records its
changes in (as onnx_ir's pass lineage does). ``comfyc compile``'s summary, ``comfyc inspect``
and ``comfyc viz`` all count from that one log.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..catalog import Catalog, default_catalog
from ..errors import PassError, WorkflowError
from ..ir.core import Graph, Node

__all__ = ["InPlacePass", "PassResult", "PassManager", "PassContext", "PassOptions", "Change",
           "ChangeLog", "CHANGE_ACTIONS", "verify_enabled", "describe_summary"]


def verify_enabled() -> bool:
    """True when ``COMFYC_VERIFY=1`` asks for the verifier after every pass."""
    return os.environ.get("COMFYC_VERIFY", "") not in ("", "0")


@dataclass
class PassOptions:
    """What the user asked of the passes (``comfyc compile`` flags).

    Attributes:
        param_bindings: ``NODE.INPUT=NAME`` inputs to make runtime params (``--param``).
        seed_params: Make every sampler seed a runtime param.
        lora_runtime: Keep every LoRA runtime-mode (``--lora-runtime``).
        fold_prompts: Fold constant prompt encodings into stored tensors.
        models_dir: The models folder (ComfyUI layout), for the model store.
    """

    param_bindings: list[str] = field(default_factory=list)
    seed_params: bool = True
    lora_runtime: bool = False
    fold_prompts: bool = True
    models_dir: str | None = None


#: What a change can be, with the word summaries use.
CHANGE_ACTIONS = {
    "eliminated": "eliminated",   # removed: no output depends on it
    "merged": "merged",           # removed: identical to the node in ``into``
    "folded": "folded",           # replaced by a value computed at compile time
    "folded_away": "eliminated",  # removed: only folded nodes needed it
    "lora_identity": "eliminated",  # a LoRA at strength 0, removed
    "lora_merged": "lora merged",  # a LoRA folded into the weights
    "lora_runtime": "runtime lora",  # a LoRA whose factors the artifact keeps
    "param": "param",             # an input became a runtime param
    "schedule": "schedule",       # a sampler's sigmas were precomputed
}


@dataclass(frozen=True, slots=True)
class Change:
    """One thing a pass did to one node.

    Attributes:
        pass_name: The pass (``dead-node-elimination`` …).
        action: One of :data:`CHANGE_ACTIONS`.
        node_id: The node it happened to.
        class_type: The node's class at that time.
        into: For ``merged``: the node kept instead; for ``folded``: the constant key; for
            ``folded_away``: the folded node that needed it; for ``param``: the param name.
        detail: A few words for people (``CLIPTextEncode → constant conditioning``).
    """

    pass_name: str
    action: str
    node_id: str
    class_type: str
    into: str | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        """The change as JSON (the manifest keeps the compile's log)."""
        out = {"pass": self.pass_name, "action": self.action, "node": self.node_id,
               "class_type": self.class_type}
        if self.into is not None:
            out["into"] = self.into
        if self.detail:
            out["detail"] = self.detail
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Change:
        """Read a change written by :meth:`to_json`."""
        return cls(str(data["pass"]), str(data["action"]), str(data["node"]),
                   str(data["class_type"]), data.get("into"), str(data.get("detail", "")))


@dataclass
class ChangeLog:
    """Every change of a compile, in order; what every summary counts from."""

    entries: list[Change] = field(default_factory=list)

    def record(self, pass_name: str, action: str, node: Node | str, class_type: str = "", *,
               into: str | None = None, detail: str = "") -> Change:
        """Append one change (``node`` is a node or its id)."""
        if action not in CHANGE_ACTIONS:
            raise ValueError(f"unknown change action {action!r}")
        if isinstance(node, Node):
            class_type = class_type or node.class_type
            node = node.id
        change = Change(pass_name, action, node, class_type, into, detail)
        self.entries.append(change)
        return change

    def __iter__(self) -> Iterator[Change]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def of(self, action: str) -> list[Change]:
        """The changes with one action, in order."""
        return [c for c in self.entries if c.action == action]

    def summary(self) -> dict[str, int]:
        """Counts of nodes by what happened to them, the numbers every command prints.

        ``eliminated`` counts nodes removed as dead (including those only folded nodes
        needed and identity LoRAs), ``merged`` nodes merged into an identical one,
        ``folded`` nodes replaced by a stored value, ``lora_merged`` / ``lora_runtime``
        LoRA loaders by mode, ``new_params`` inputs made runtime params, ``schedules`` sampler
        schedules precomputed. A node is counted once, by its last change.
        """
        last: dict[str, Change] = {}
        for change in self.entries:
            last[change.node_id] = change
        counts = {"eliminated": 0, "merged": 0, "folded": 0, "lora_merged": 0,
                  "lora_runtime": 0, "new_params": 0, "schedules": 0}
        for change in last.values():
            word = CHANGE_ACTIONS[change.action]
            if word in ("eliminated", "merged", "folded"):
                counts[word] += 1
            elif change.action == "lora_merged":
                counts["lora_merged"] += 1
            elif change.action == "lora_runtime":
                counts["lora_runtime"] += 1
        counts["new_params"] = len(self.of("param"))
        counts["schedules"] = len({c.node_id for c in self.of("schedule")})
        return counts

    def fate(self, node_id: str) -> Change | None:
        """What last happened to a node that did not survive or was replaced, else its last
        change; None when no pass touched it."""
        found = None
        for change in self.entries:
            if change.node_id == node_id:
                found = change
        return found

    def merged_into(self) -> dict[str, str]:
        """For every merged node, the node that finally stands for it."""
        target = {c.node_id: c.into for c in self.of("merged") if c.into}
        out = {}
        for node_id in target:
            seen = {node_id}
            final = target[node_id]
            while final in target and final not in seen:
                seen.add(final)
                final = target[final]
            out[node_id] = final
        return out

    def to_json(self) -> list[dict[str, Any]]:
        """The log as JSON."""
        return [c.to_json() for c in self.entries]

    @classmethod
    def from_json(cls, data: Any) -> ChangeLog:
        """Read a log written by :meth:`to_json` (an empty log for anything else)."""
        if not isinstance(data, list):
            return cls()
        return cls([Change.from_json(c) for c in data if isinstance(c, Mapping)])


def describe_summary(summary: Mapping[str, Any]) -> str:
    """One line from :meth:`ChangeLog.summary` plus ``nodes_before`` / ``nodes_after`` —
    the words ``compile``, ``inspect`` and ``viz`` all print.

    Example: ``12 nodes → 9: 1 folded, 0 merged, 2 eliminated; 1 LoRA merged, 1 new param``.
    """
    text = (f"{summary.get('nodes_before', '?')} nodes → {summary.get('nodes_after', '?')}: "
            f"{summary.get('folded', 0)} folded, {summary.get('merged', 0)} merged, "
            f"{summary.get('eliminated', 0)} eliminated")
    extra = []
    for key, one, many in (("lora_merged", "LoRA merged", "LoRAs merged"),
                           ("lora_runtime", "runtime LoRA", "runtime LoRAs"),
                           ("schedules", "schedule precomputed", "schedules precomputed"),
                           ("new_params", "new param", "new params")):
        count = int(summary.get(key, 0) or 0)
        if count:
            extra.append(f"{count} {one if count == 1 else many}")
    return text + ("; " + ", ".join(extra) if extra else "")


#: ``clip(constant CLIP description) -> runtime CLIP``: what constant folding encodes
#: prompts with.
FoldingClip = Callable[[Any], Any]


@dataclass
class PassContext:
    """What passes share.

    Attributes:
        catalog: The node schemas.
        options: What the user asked for.
        models: The model store constant folding loads text encoders from (a
            :class:`~comfyc.compiler.lowering.program.TorchModelCache`); made from
            ``options.models_dir`` on first use when None.
        folding_clip: Overrides the CLIP prompt encodings are folded with (``comfyc viz``
            folds with placeholder stages instead of running a text encoder).
        changes: The change log every pass records into.
    """

    catalog: Catalog = field(default_factory=default_catalog)
    options: PassOptions = field(default_factory=PassOptions)
    models: Any = None
    folding_clip: FoldingClip | None = None
    changes: ChangeLog = field(default_factory=ChangeLog)

    def model_store(self) -> Any:
        """The model store, made on first use."""
        if self.models is None:
            from ..lowering.program import TorchModelCache

            self.models = TorchModelCache(self.options.models_dir)
        return self.models


@dataclass
class PassResult:
    """What a pass returns: the graph and whether it changed."""

    graph: Graph
    modified: bool


class InPlacePass:
    """Base class of passes that change the graph in place.

    Subclasses set ``name`` and implement :meth:`call`.
    """

    name = "pass"

    def __init__(self, context: PassContext | None = None) -> None:
        self.context = context or PassContext()

    def call(self, graph: Graph) -> PassResult:
        """Run the pass on ``graph``."""
        raise NotImplementedError

    def record(self, action: str, node: Node | str, class_type: str = "", *,
               into: str | None = None, detail: str = "") -> None:
        """Record one change in the context's log, under this pass's name."""
        self.context.changes.record(self.name, action, node, class_type, into=into,
                                    detail=detail)

    def __call__(self, graph: Graph) -> PassResult:
        return self.call(graph)


class PassManager:
    """Runs passes in order.

    Args:
        steps: The passes.
        verify: Run the IR verifier after every pass (None: from COMFYC_VERIFY).
        after_each: Called with ``(pass, result)`` after every pass (for --dump-after and
            progress).
    """

    def __init__(self, steps: Sequence[InPlacePass], *, verify: bool | None = None,
                 after_each: Callable[[InPlacePass, PassResult], None] | None = None) -> None:
        self.steps = list(steps)
        self.verify = verify_enabled() if verify is None else verify
        self.after_each = after_each

    def __call__(self, graph: Graph) -> PassResult:
        from ..ir.verify import verify_graph

        modified = False
        done: list[str] = []
        for step in self.steps:
            try:
                result = step.call(graph)
            except WorkflowError:
                raise
            except Exception as exc:  # Wrap internal failures with where they happened.
                before = ", ".join(done) or "none"
                raise PassError(
                    f"pass '{step.name}' failed: {type(exc).__name__}: {exc}",
                    notes=[f"passes that ran before it: {before}"],
                    help="this is a bug in comfyc; please report it with the workflow",
                ) from exc
            graph = result.graph
            modified = modified or result.modified
            done.append(step.name)
            if self.verify:
                verify_graph(graph, step.context.catalog, after=step.name)
            if self.after_each is not None:
                self.after_each(step, result)
        return PassResult(graph, modified)
