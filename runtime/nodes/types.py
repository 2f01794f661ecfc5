"""ComfyUI's value types and the rule that says which output may feed which input.

Types are ComfyUI's own strings (``MODEL``, ``LATENT``, ``INT`` …). A combo (enumerated
string) input has the type ``COMBO`` in the catalogue; its choices live in the input spec.
"""

from __future__ import annotations

__all__ = [
    "WIDGET_TYPES",
    "LINK_TYPES",
    "KNOWN_TYPES",
    "COMBO",
    "ANY",
    "is_compatible",
    "python_type_name",
]

COMBO = "COMBO"
ANY = "*"

#: Types whose values are edited in widgets and written as literals.
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", COMBO})

#: Types that only travel along links.
LINK_TYPES = frozenset(
    {
        "MODEL",
        "CLIP",
        "VAE",
        "CONDITIONING",
        "LATENT",
        "IMAGE",
        "MASK",
        "CONTROL_NET",
        "UPSCALE_MODEL",
        "CLIP_VISION",
        "CLIP_VISION_OUTPUT",
        "STYLE_MODEL",
        "GLIGEN",
        "SAMPLER",
        "SIGMAS",
        "NOISE",
        "GUIDER",
    }
)

KNOWN_TYPES = WIDGET_TYPES | LINK_TYPES


def _parts(type_name: str) -> set[str]:
    return {part.strip() for part in type_name.split(",") if part.strip()}


def is_compatible(output_type: str, input_type: str) -> bool:
    """Tell whether a value of ``output_type`` may feed an input declared ``input_type``.

    Follows ``comfy_execution/validation.py``: equal names match, ``*`` matches anything,
    comma-separated unions match when they intersect, and a list-producing output (``COMBO``
    or a STRING) may feed a combo input.

    Args:
        output_type: The producer's declared output type.
        input_type: The consumer's declared input type.

    Returns:
        True when ComfyUI would accept the link.
    """
    if output_type == input_type:
        return True
    if ANY in (output_type, input_type):
        return True
    if input_type == COMBO and output_type in (COMBO, "STRING"):
        return True
    return bool(_parts(output_type) & _parts(input_type))


def python_type_name(value: object) -> str:
    """Name a literal's type the way a ComfyUI user reads it (INT, FLOAT, STRING …)."""
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "INT"
    if isinstance(value, float):
        return "FLOAT"
    if isinstance(value, str):
        return "STRING"
    if isinstance(value, list):
        return "LIST"
    if isinstance(value, dict):
        return "OBJECT"
    if value is None:
        return "null"
    return type(value).__name__
