"""The node catalogue: the registry's schemas, extensible from a ComfyUI ``/object_info`` dump.

The built-in classes come from the node registry (:func:`comfyc.runtime.nodes.registry`);
classes added from an ``object_info.json`` have a schema only, so workflows with them can be
checked and converted but not compiled (:meth:`Catalog.node_def` says which is which).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from comfyc.runtime.nodes import NodeDef, registry
from comfyc.runtime.nodes.schema import (
    INTERNAL_CATEGORY,
    MISSING,
    InputSpec,
    NodeSchema,
    OutputSpec,
)
from comfyc.runtime.nodes.types import COMBO, WIDGET_TYPES

__all__ = ["Catalog", "ObjectInfoError", "default_catalog"]

# Options of an object_info input spec that map to InputSpec fields.
_NUMERIC_KEYS = ("min", "max", "step")


class ObjectInfoError(ValueError):
    """An object_info file could not be read; the message says where and why."""


class Catalog:
    """A set of node schemas keyed by class type.

    Args:
        schemas: Initial schemas; the built-in table when None.
    """

    def __init__(self, schemas: Iterable[NodeSchema] | None = None) -> None:
        self._schemas: dict[str, NodeSchema] = {}
        for schema in registry().schemas() if schemas is None else schemas:
            self._schemas[schema.class_type] = schema

    # ------------------------------------------------------------------ access
    def get(self, class_type: str) -> NodeSchema | None:
        """The schema of ``class_type``, or None when it is not catalogued."""
        return self._schemas.get(class_type)

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._schemas

    def __iter__(self) -> Iterator[NodeSchema]:
        return iter(self._schemas.values())

    def __len__(self) -> int:
        return len(self._schemas)

    def node_def(self, class_type: str) -> NodeDef | None:
        """The registry entry of a built-in class (None for unknown and object_info classes).

        A schema replaced from object_info (``replace=True``) has no entry either: comfyc's
        op would not match it.
        """
        node = registry().get(class_type)
        if node is None or self._schemas.get(class_type) is not node.schema:
            return None
        return node

    def unrunnable_reason(self, class_type: str) -> str | None:
        """Why a catalogued class cannot run in comfyc, or None when it can."""
        node = self.node_def(class_type)
        if node is not None:
            return node.check_only
        schema = self._schemas.get(class_type)
        where = f" (from {schema.source})" if schema is not None else ""
        return (f"comfyc has no implementation of {class_type}{where}; it can be checked and "
                f"converted, not compiled or run")

    def names(self) -> list[str]:
        """All class types, in catalogue order."""
        return list(self._schemas)

    def close_names(self, class_type: str, n: int = 3) -> list[str]:
        """Catalogued class types that look like ``class_type`` (for "did you mean")."""
        lowered = {name.lower(): name for name in self._schemas}
        hits = difflib.get_close_matches(class_type.lower(), list(lowered), n=n, cutoff=0.75)
        return [lowered[h] for h in hits]

    def add(self, schema: NodeSchema) -> None:
        """Add or replace one schema."""
        self._schemas[schema.class_type] = schema

    def copy(self) -> Catalog:
        """A shallow copy that can be extended without touching this one."""
        return Catalog(list(self._schemas.values()))

    # ------------------------------------------------------------- object_info
    def extend_from_object_info(self, data: dict[str, Any], source: str = "object_info",
                                *, replace: bool = False) -> list[str]:
        """Add the node classes of a ComfyUI ``/object_info`` response.

        Built-in schemas win unless ``replace`` is true, because ours carry purity flags and
        file-combo folders that object_info does not.

        Args:
            data: The parsed JSON (``{class_type: {input, input_order, output, ...}}``).
            source: A name for messages (usually the file path).
            replace: Let object_info entries override built-in ones.

        Returns:
            The class types that were added.

        Raises:
            ObjectInfoError: The data does not have object_info's shape.
        """
        if not isinstance(data, dict):
            raise ObjectInfoError(
                f"{source}: expected a JSON object mapping node class names to definitions, "
                f"found {type(data).__name__}"
            )
        added = []
        for class_type, entry in data.items():
            if class_type in self._schemas and not replace:
                continue
            self._schemas[class_type] = schema_from_object_info(class_type, entry, source)
            added.append(class_type)
        return added

    def load_object_info(self, path: str | Path) -> list[str]:
        """Read an object_info JSON file and add its classes (see extend_from_object_info)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ObjectInfoError(
                f"{path}: cannot read the object_info file: {exc.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ObjectInfoError(f"{path}: not a JSON object_info file: {exc}") from None
        return self.extend_from_object_info(data, str(path))

    def to_object_info(
        self, list_files: Callable[[str], list[str]] | None = None
    ) -> dict[str, Any]:
        """The catalogue in ``GET /object_info``'s shape.

        Args:
            list_files: Returns the file names of a models folder (``checkpoints`` …) for
                file combos; empty lists when None.
        """
        return {name: schema_to_object_info(s, list_files) for name, s in self._schemas.items()
                if s.category != INTERNAL_CATEGORY}


def _input_from_object_info(name: str, spec: Any, required: bool, where: str) -> InputSpec:
    if not isinstance(spec, list) or not spec:
        raise ObjectInfoError(f"{where}: input {name!r}: expected [TYPE, options], found {spec!r}")
    head = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(head, list):
        out = InputSpec(name, COMBO, required=required, choices=list(head))
    elif head == COMBO:
        out = InputSpec(name, COMBO, required=required, choices=list(options.get("options", [])))
    elif isinstance(head, str):
        out = InputSpec(name, head, required=required)
    else:
        raise ObjectInfoError(f"{where}: input {name!r}: type must be a string or a list")
    for key in _NUMERIC_KEYS:
        if isinstance(options.get(key), (int, float)) and not isinstance(options[key], bool):
            setattr(out, key, options[key])
    if "default" in options:
        out.default = options["default"]
    out.control_after_generate = bool(options.get("control_after_generate", False))
    out.image_upload = bool(options.get("image_upload", False))
    out.force_input = bool(options.get("forceInput", False))
    out.multiline = bool(options.get("multiline", False))
    out.dynamic_prompts = bool(options.get("dynamicPrompts", False))
    out.tooltip = options.get("tooltip")
    return out


def schema_from_object_info(class_type: str, entry: Any, source: str) -> NodeSchema:
    """Build a :class:`NodeSchema` from one object_info entry.

    Raises:
        ObjectInfoError: The entry is malformed.
    """
    where = f"{source}: {class_type}"
    if not isinstance(entry, dict):
        raise ObjectInfoError(f"{where}: expected an object, found {type(entry).__name__}")
    declared = entry.get("input") or {}
    order = entry.get("input_order") or {}
    inputs: list[InputSpec] = []
    for section, required in (("required", True), ("optional", False)):
        specs = declared.get(section) or {}
        if not isinstance(specs, dict):
            raise ObjectInfoError(f"{where}: input.{section} must be an object")
        names = order.get(section) or list(specs)
        for name in names:
            if name in specs:
                inputs.append(_input_from_object_info(name, specs[name], required, where))
    types = entry.get("output") or []
    names = entry.get("output_name") or types
    is_list = entry.get("output_is_list") or [False] * len(types)
    outputs = [
        OutputSpec(str(n), str(t) if not isinstance(t, list) else COMBO, bool(lst))
        for n, t, lst in zip(names, types, is_list)
    ]
    output_node = bool(entry.get("output_node", False))
    return NodeSchema(
        class_type, inputs, outputs,
        display_name=entry.get("display_name") or class_type,
        category=entry.get("category", ""),
        description=entry.get("description", ""),
        output_node=output_node,
        # NOTE: object_info says nothing of purity; output nodes are treated as effects.
        side_effect=output_node,
        deprecated=bool(entry.get("deprecated", False)),
        python_module=entry.get("python_module", "custom_nodes"),
        source=source,
    )


def _input_to_object_info(spec: InputSpec, list_files: Callable[[str], list[str]] | None
                          ) -> list[Any]:
    options: dict[str, Any] = {}
    if spec.default is not MISSING:
        options["default"] = spec.default
    for key in _NUMERIC_KEYS:
        if getattr(spec, key) is not None:
            options[key] = getattr(spec, key)
    if spec.control_after_generate:
        options["control_after_generate"] = True
    if spec.image_upload:
        options["image_upload"] = True
    if spec.force_input:
        options["forceInput"] = True
    if spec.multiline:
        options["multiline"] = True
    if spec.dynamic_prompts:
        options["dynamicPrompts"] = True
    if spec.tooltip:
        options["tooltip"] = spec.tooltip
    if spec.type == COMBO:
        choices = list(spec.choices or [])
        if spec.files and list_files is not None:
            choices = list_files(spec.files)
        return [choices, options]
    return [spec.type, options] if options or spec.type in WIDGET_TYPES else [spec.type]


def schema_to_object_info(schema: NodeSchema,
                          list_files: Callable[[str], list[str]] | None = None) -> dict[str, Any]:
    """One catalogue entry in ComfyUI's object_info shape."""
    required = {s.name: _input_to_object_info(s, list_files) for s in schema.inputs if s.required}
    optional = {
        s.name: _input_to_object_info(s, list_files) for s in schema.inputs if not s.required
    }
    inputs: dict[str, Any] = {"required": required}
    if optional:
        inputs["optional"] = optional
    if schema.hidden:
        inputs["hidden"] = dict(schema.hidden)
    order: dict[str, Any] = {"required": list(required)}
    if optional:
        order["optional"] = list(optional)
    return {
        "input": inputs,
        "input_order": order,
        "output": [o.type for o in schema.outputs],
        "output_is_list": [o.is_list for o in schema.outputs],
        "output_name": [o.name for o in schema.outputs],
        "name": schema.class_type,
        "display_name": schema.display_name,
        "description": schema.description,
        "python_module": schema.python_module,
        "category": schema.category,
        "output_node": schema.output_node,
        **({"deprecated": True} if schema.deprecated else {}),
    }


_DEFAULT: Catalog | None = None


def default_catalog() -> Catalog:
    """The built-in catalogue (shared; call ``.copy()`` before extending it)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Catalog()
    return _DEFAULT
