"""The node registry: everything comfyc knows about one ComfyUI node class, in one entry.

A :class:`NodeDef` keeps together what ComfyUI keeps in one class (``INPUT_TYPES``,
``RETURN_TYPES``, ``FUNCTION``): the schema, the purity (in the schema), the runtime op, and
the facts passes, the lowering and the visualiser need — which model stages the node calls,
which MODEL/CLIP output carries an input's weights unchanged, which input is its seed, whether
it may be evaluated at compile time. Entries are written in one module per family
(:mod:`.loaders`, :mod:`.conditioning`, :mod:`.sampling`, :mod:`.latent`, :mod:`.image`,
:mod:`.mask`, :mod:`.primitives`, :mod:`.internal`), as ComfyUI groups them in ``nodes.py`` and
``comfy_extras/nodes_*.py``.

The compile-time half of an entry (how a model loader becomes stages, how a prompt encoding is
folded) lives in :mod:`comfyc.compiler.nodes`, keyed by the same class name. This half imports
neither the compiler nor numpy nor torch at module level: the lean runtime runs programs with
it and ``comfyc check`` reads the schemas from it.

A class comfyc catalogues but cannot execute is *check-only*: it has no op and says why
(:attr:`NodeDef.check_only`), and that reason is what users see when a workflow needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .schema import NodeSchema

__all__ = ["NodeDef", "StageCall", "NodeRegistry", "OpFn", "lazy_op"]

#: A runtime op: ``fn(ctx, **inputs) -> tuple of outputs`` (ComfyUI's input names and output
#: order; ``ctx`` is the :class:`~comfyc.runtime.program.RunContext`, None when folding).
OpFn = Callable[..., tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class StageCall:
    """A model stage a node calls.

    Attributes:
        kind: The stage kind (``unet``, ``text_encoder``, ``vae_decoder``, ``vae_encoder`` …).
        via: The input whose MODEL / CLIP / VAE value holds that stage.
    """

    kind: str
    via: str


@dataclass(frozen=True, slots=True)
class NodeDef:
    """One node class: its schema, its runtime op and its facts.

    Exactly one of ``run``, ``lowered_to`` and ``check_only`` is set.

    Attributes:
        schema: Inputs (ComfyUI's definition order), outputs, purity, UI facts.
        run: The runtime op, for nodes that become one program op of their own class.
        lowered_to: For nodes the compiler turns into other ops (model loaders become
            ``LoadCheckpoint`` over stages): the op name it is lowered to, for readers.
        check_only: Why comfyc cannot run this class (shown to users); checking and
            converting workflows with it still work.
        calls: The model stages the node calls.
        weights_from: ``(output name, input name)`` pairs: that output carries the weights of
            that input unchanged (``ModelSamplingDiscrete`` passes its MODEL's UNet through).
        seed_input: The input that is the node's random seed; it becomes a runtime param by
            default, so a new seed never needs a recompile.
        fold: The node may be evaluated at compile time with :attr:`run` when all its inputs
            are constants (conditioning ops, schedules); its result is stored in the artifact.
        binding: The name the DSL printer prefers for the node's single output.
        shape_inputs: Widget inputs that set the size or batch of what the node outputs
            (``EmptyLatentImage``'s width, height and batch size, an input image's name): a
            runtime param there makes the compiler export shape-dynamic stages.
    """

    schema: NodeSchema
    run: OpFn | None = None
    lowered_to: str | None = None
    check_only: str | None = None
    calls: tuple[StageCall, ...] = ()
    weights_from: tuple[tuple[str, str], ...] = ()
    seed_input: str | None = None
    fold: bool = False
    binding: str | None = None
    shape_inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        given = [x for x in (self.run, self.lowered_to, self.check_only) if x is not None]
        if len(given) != 1:
            raise ValueError(f"{self.schema.class_type}: a NodeDef needs exactly one of run, "
                             f"lowered_to and check_only")
        if self.fold and self.run is None:
            raise ValueError(f"{self.schema.class_type}: fold=True needs a run op")
        unknown = [n for n in self.shape_inputs if self.schema.input(n) is None]
        if unknown:
            raise ValueError(f"{self.schema.class_type}: shape_inputs {unknown} are not inputs")

    @property
    def class_type(self) -> str:
        """The class name (API ``class_type``)."""
        return self.schema.class_type

    @property
    def runnable(self) -> bool:
        """True when comfyc can execute the class (an op, or a lowering to ops)."""
        return self.check_only is None

    def weights_input(self, output_name: str) -> str | None:
        """The input whose weights ``output_name`` carries unchanged, or None."""
        for output, input_name in self.weights_from:
            if output == output_name:
                return input_name
        return None


def lazy_op(module: str, function: str, outputs: int = 1) -> OpFn:
    """An op that calls ``comfyc.runtime.ops.<module>.<function>(**inputs)``.

    The ops modules import numpy; importing them on first use keeps the registry (and so
    ``comfyc check``) cheap to load.

    Args:
        module: The module under :mod:`comfyc.runtime.ops`.
        function: The function's name.
        outputs: How many outputs it returns (a tuple when more than one).
    """
    cached: list[Callable[..., Any]] = []

    def op(ctx: Any, **inputs: Any) -> tuple[Any, ...]:
        if not cached:
            import importlib

            cached.append(getattr(importlib.import_module(f"comfyc.runtime.ops.{module}"),
                                  function))
        result = cached[0](**inputs)
        return tuple(result) if outputs > 1 else (result,)

    op.__name__ = f"{module}.{function}"
    op.__qualname__ = op.__name__
    return op


@dataclass
class NodeRegistry:
    """Node definitions by class name, plus the program-only ops of the lowering.

    Attributes:
        defs: Node classes in catalogue order.
        program_ops: Ops that exist only in compiled programs (``LoadCheckpoint``,
            ``ApplyLoRA``, ``Output`` …), by op name.
    """

    defs: dict[str, NodeDef] = field(default_factory=dict)
    program_ops: dict[str, OpFn] = field(default_factory=dict)

    @classmethod
    def build(cls, families: Iterable[Iterable[NodeDef]],
              program_ops: dict[str, OpFn]) -> NodeRegistry:
        """A registry from family lists; a class defined twice is an error."""
        registry = cls(program_ops=dict(program_ops))
        for family in families:
            for node in family:
                if node.class_type in registry.defs:
                    raise ValueError(f"node class {node.class_type} is defined twice")
                if node.class_type in registry.program_ops:
                    raise ValueError(f"{node.class_type} is both a node class and a program op")
                registry.defs[node.class_type] = node
        return registry

    def get(self, class_type: str) -> NodeDef | None:
        """The definition of ``class_type``, or None."""
        return self.defs.get(class_type)

    def __contains__(self, class_type: object) -> bool:
        return class_type in self.defs

    def __iter__(self) -> Iterator[NodeDef]:
        return iter(self.defs.values())

    def __len__(self) -> int:
        return len(self.defs)

    def schemas(self) -> list[NodeSchema]:
        """Every class's schema, in catalogue order."""
        return [node.schema for node in self.defs.values()]

    def op(self, name: str) -> OpFn | None:
        """The function that runs program op ``name`` (a node class or a program op)."""
        node = self.defs.get(name)
        if node is not None:
            return node.run
        return self.program_ops.get(name)

    def op_table(self) -> dict[str, OpFn]:
        """Every runnable op by name (node classes with an op, and the program ops)."""
        table = {name: node.run for name, node in self.defs.items() if node.run is not None}
        table.update(self.program_ops)
        return table
