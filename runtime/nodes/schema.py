"""Node schemas: what a node class takes and gives, in ComfyUI's order.

A :class:`NodeSchema` is the single source of truth for validation, UI→API conversion (the
widget layout), the DSL printer's output names and the lowering. Built-in schemas are part of
the node registry (:mod:`comfyc.runtime.nodes`, one module per family); others come from a
ComfyUI ``/object_info`` dump (:mod:`comfyc.compiler.catalog`).

This module is the runtime's: it imports nothing from the compiler, numpy or torch, so the lean
runtime and ``comfyc check`` load it cheaply. The small builders at the end (:func:`link`,
:func:`int_input` …) keep the family modules close to ComfyUI's ``INPUT_TYPES`` tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .types import COMBO, WIDGET_TYPES

__all__ = [
    "MISSING", "InputSpec", "OutputSpec", "NodeSchema", "WidgetSlot", "MAX_RESOLUTION",
    "MAX_SEED", "INTERNAL_CATEGORY", "link", "optional_link", "int_input", "float_input",
    "string_input", "bool_input", "combo", "files", "outputs", "schema",
]

#: ComfyUI's ``nodes.MAX_RESOLUTION``.
MAX_RESOLUTION = 16384
#: ComfyUI's largest seed (``0xffffffffffffffff``).
MAX_SEED = 0xFFFFFFFFFFFFFFFF
#: The category of comfyc's own IR node classes (folded constants); never in /object_info.
INTERNAL_CATEGORY = "comfyc/internal"


class _Missing:
    """Marker for "no default" (distinct from a JSON ``null``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "MISSING"  # Pickling and deepcopy keep the one instance.


MISSING: Any = _Missing()


@dataclass(slots=True)
class InputSpec:
    """One input of a node class.

    Attributes:
        name: The input name (the key in API ``inputs``).
        type: A ComfyUI type; ``COMBO`` for enumerated strings.
        required: False for ComfyUI's ``optional`` inputs.
        default: The widget default, or MISSING.
        min: Lower bound (numbers), or None.
        max: Upper bound (numbers), or None.
        step: Widget step (numbers), or None.
        choices: Allowed values (combos). For file combos this is empty and ``files`` names
            the model folder; the value is then checked when the model is resolved.
        files: The models folder a file combo lists (``checkpoints`` …), or None.
        control_after_generate: The UI adds a seed-control widget slot after this one.
        image_upload: The UI adds an upload-button widget slot after this one.
        force_input: The value can only come from a link (no widget).
        multiline: A multi-line text widget.
        dynamic_prompts: The UI rewrites ``{a|b}`` and comments in this text before queueing.
        tooltip: Help text.
    """

    name: str
    type: str
    required: bool = True
    default: Any = MISSING
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: list[Any] | None = None
    files: str | None = None
    control_after_generate: bool = False
    image_upload: bool = False
    force_input: bool = False
    multiline: bool = False
    dynamic_prompts: bool = False
    tooltip: str | None = None

    @property
    def is_widget(self) -> bool:
        """True when the UI shows this input as a widget (it takes a widgets_values slot)."""
        return self.type in WIDGET_TYPES and not self.force_input

    def effective_default(self) -> Any:
        """The value a missing widget takes: the default, else a combo's first choice."""
        if self.default is not MISSING:
            return self.default
        if self.type == COMBO and self.choices:
            return self.choices[0]
        return MISSING


@dataclass(slots=True)
class OutputSpec:
    """One output of a node class (ComfyUI's ``RETURN_TYPES`` / ``RETURN_NAMES`` entry)."""

    name: str
    type: str
    is_list: bool = False


@dataclass(slots=True)
class WidgetSlot:
    """One slot of a UI node's ``widgets_values`` array.

    Attributes:
        input: The input the slot holds, or None for a synthetic widget.
        kind: ``"value"``, ``"control"`` (control_after_generate) or ``"upload"``.
    """

    input: InputSpec | None
    kind: str


@dataclass(slots=True)
class NodeSchema:
    """The definition of a node class.

    Attributes:
        class_type: The class name used in API prompts.
        inputs: Required inputs then optional ones, in ComfyUI's definition order.
        outputs: Outputs in ``RETURN_TYPES`` order.
        display_name: The name the UI shows.
        category: The UI menu category.
        description: One-paragraph description.
        output_node: ComfyUI's ``OUTPUT_NODE`` (an execution root).
        side_effect: Writes files or other state; never removed, merged or folded.
        nondeterministic: Gives a different result each run; never merged or folded.
        deprecated: ComfyUI marks the node deprecated.
        hidden: ComfyUI's ``hidden`` inputs (``{"prompt": "PROMPT", …}``), for /object_info.
        python_module: Where ComfyUI defines it (for /object_info).
        source: ``"builtin"`` or the object_info file it came from.
    """

    class_type: str
    inputs: list[InputSpec]
    outputs: list[OutputSpec]
    display_name: str = ""
    category: str = ""
    description: str = ""
    output_node: bool = False
    side_effect: bool = False
    nondeterministic: bool = False
    deprecated: bool = False
    hidden: dict[str, str] = field(default_factory=dict)
    python_module: str = "nodes"
    source: str = "builtin"
    _by_name: dict[str, InputSpec] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {spec.name: spec for spec in self.inputs}
        if not self.display_name:
            self.display_name = self.class_type

    @property
    def pure(self) -> bool:
        """True when two identical instances may be merged and constants folded."""
        return not (self.side_effect or self.nondeterministic or self.output_node)

    def input(self, name: str) -> InputSpec | None:
        """The input spec called ``name``, or None."""
        return self._by_name.get(name)

    def input_names(self) -> list[str]:
        """Input names in definition order."""
        return [spec.name for spec in self.inputs]

    def output_types(self) -> list[tuple[str, str]]:
        """``(name, type)`` per output, as :class:`~comfyc.compiler.ir.core.Node` takes."""
        return [(out.name, out.type) for out in self.outputs]

    def widget_layout(self) -> list[WidgetSlot]:
        """The positional layout of ``widgets_values`` in UI workflows.

        Every widget input takes a slot whether or not it is linked; a seed-like INT adds a
        control slot after it and an image-upload combo adds an upload slot
        (``useIntWidget.ts`` / ``useImageUploadWidget.ts`` in ComfyUI's frontend).
        """
        slots: list[WidgetSlot] = []
        for spec in self.inputs:
            if not spec.is_widget:
                continue
            slots.append(WidgetSlot(spec, "value"))
            if spec.control_after_generate or (
                spec.type == "INT" and spec.name in ("seed", "noise_seed")
            ):
                slots.append(WidgetSlot(None, "control"))
            if spec.image_upload:
                slots.append(WidgetSlot(None, "upload"))
        return slots


# ------------------------------------------------------------------------------ builders
# Short builders in ComfyUI's vocabulary, so a family module reads like ComfyUI's own
# INPUT_TYPES / RETURN_TYPES tables.


def link(name: str, type: str, *, required: bool = True, tooltip: str | None = None
         ) -> InputSpec:
    """An input that only takes a link (``("MODEL",)`` in ComfyUI)."""
    return InputSpec(name, type, required=required, tooltip=tooltip)


def optional_link(name: str, type: str) -> InputSpec:
    """An optional link input (ComfyUI's ``optional`` section)."""
    return InputSpec(name, type, required=False)


def int_input(name: str, default: int, min: int, max: int, step: int = 1, **kw: Any
              ) -> InputSpec:
    """An INT widget."""
    return InputSpec(name, "INT", default=default, min=min, max=max, step=step, **kw)


def float_input(name: str, default: float, min: float, max: float, step: float = 0.01,
                **kw: Any) -> InputSpec:
    """A FLOAT widget."""
    return InputSpec(name, "FLOAT", default=default, min=min, max=max, step=step, **kw)


def string_input(name: str, default: Any = MISSING, **kw: Any) -> InputSpec:
    """A STRING widget (``multiline=True``, ``dynamic_prompts=True`` as ComfyUI's options)."""
    return InputSpec(name, "STRING", default=default, **kw)


def bool_input(name: str, default: bool, **kw: Any) -> InputSpec:
    """A BOOLEAN widget."""
    return InputSpec(name, "BOOLEAN", default=default, **kw)


def combo(name: str, choices: list[Any] | tuple[Any, ...], default: Any = MISSING, **kw: Any
          ) -> InputSpec:
    """A combo (enumerated STRING) widget; without a default the first choice is used."""
    return InputSpec(name, COMBO, default=default, choices=list(choices), **kw)


def files(name: str, folder: str, **kw: Any) -> InputSpec:
    """A combo listing a models folder (``checkpoints``, ``loras`` …) or ``input``."""
    return InputSpec(name, COMBO, choices=[], files=folder, **kw)


def outputs(*pairs: str) -> list[OutputSpec]:
    """``outputs("MODEL", "CLIP")`` or ``outputs("positive:CONDITIONING")``."""
    out = []
    for pair in pairs:
        name, _, type = pair.partition(":")
        out.append(OutputSpec(name, type or name))
    return out


def schema(class_type: str, inputs: list[InputSpec], outs: list[OutputSpec],
           display: str = "", category: str = "", **kw: Any) -> NodeSchema:
    """A :class:`NodeSchema` (``display`` is ComfyUI's display name)."""
    return NodeSchema(class_type, inputs, outs, display_name=display, category=category, **kw)
