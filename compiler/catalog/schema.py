"""Node schemas: what a node class takes and gives, in ComfyUI's order.

A :class:`NodeSchema` is the single source of truth for validation, UI→API conversion (the
widget layout), the DSL printer's output names and the lowering. Schemas come from the built-in
table (:mod:`comfyc.compiler.catalog.core_nodes`) or from a ComfyUI ``/object_info`` dump.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..ir.core import MISSING
from ..ir.types import COMBO, WIDGET_TYPES

__all__ = ["InputSpec", "OutputSpec", "NodeSchema", "WidgetSlot"]


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
        foldable: May be evaluated at compile time when all its inputs are constants.
        deprecated: ComfyUI marks the node deprecated.
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
    foldable: bool = True
    deprecated: bool = False
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
