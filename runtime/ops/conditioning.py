"""CONDITIONING ops: ComfyUI's conditioning nodes as pure functions on lists of dicts.

comfyc's CONDITIONING is a list of entries, each a dict ``{"cond": float32 [1,T,D],
"pooled_output": float32 [1,D] or None, ...options}`` (ComfyUI's ``[cond, options]`` pairs with
the tensor moved into the dict under ``"cond"``). The options are ComfyUI's keys:
``area`` (``(h, w, y, x)`` in latent units, or ``("percentage", h, w, y, x)``), ``strength``,
``set_area_to_bounds``, ``mask`` (``[B,H,W]``), ``mask_strength``, ``start_percent``,
``end_percent``.

Every function returns a new list of new dicts; input lists, dicts and arrays are never
modified (arrays that do not change are shared, as in ComfyUI).

| Node | Function |
| --- | --- |
| ConditioningCombine | `conditioning_combine` |
| ConditioningConcat | `conditioning_concat` |
| ConditioningAverage | `conditioning_average` |
| ConditioningSetArea | `set_area` |
| ConditioningSetAreaPercentage | `set_area_percentage` |
| ConditioningSetAreaStrength | `set_area_strength` |
| ConditioningSetMask | `set_mask` |
| ConditioningZeroOut | `zero_out` |
| ConditioningSetTimestepRange | `set_timestep_range` |
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from comfyc.runtime.ops._common import OpError, as_mask, check_choice

__all__ = [
    "SET_COND_AREA_CHOICES",
    "Conditioning",
    "conditioning_average",
    "conditioning_combine",
    "conditioning_concat",
    "set_area",
    "set_area_percentage",
    "set_area_strength",
    "set_mask",
    "set_timestep_range",
    "zero_out",
]

_log = logging.getLogger(__name__)

#: A CONDITIONING value.
Conditioning = list[dict[str, Any]]
#: ``set_cond_area`` choices of ConditioningSetMask.
SET_COND_AREA_CHOICES = ("default", "mask bounds")


def _entries(conditioning: Any, what: str = "conditioning") -> list[Mapping[str, Any]]:
    """Checks that `conditioning` is a list of dicts with a 3-D ``cond``."""
    if not isinstance(conditioning, Sequence) or isinstance(conditioning, (str, bytes)):
        raise OpError(
            f"{what} is {type(conditioning).__name__}; expected a CONDITIONING list of dicts "
            "{'cond': array [1,T,D], 'pooled_output': ...}"
        )
    for i, entry in enumerate(conditioning):
        if not isinstance(entry, Mapping) or "cond" not in entry:
            raise OpError(
                f"{what}[{i}] is {type(entry).__name__}; expected a dict with a 'cond' array "
                "[1,T,D] (a ComfyUI [cond, options] pair must be converted to "
                "{'cond': cond, **options})"
            )
        if np.ndim(entry["cond"]) != 3:
            raise OpError(
                f"{what}[{i}]['cond'] has shape {np.shape(entry['cond'])}; expected [1,T,D]"
            )
    return list(conditioning)


def _set_values(conditioning: Any, values: Mapping[str, Any]) -> Conditioning:
    """Copies each entry and sets `values` (ComfyUI node_helpers.conditioning_set_values)."""
    return [{**entry, **values} for entry in _entries(conditioning)]


def conditioning_combine(conditioning_1: Any, conditioning_2: Any) -> Conditioning:
    """ConditioningCombine: the entries of both lists, first then second."""
    # NOTE: nodes.ConditioningCombine.combine: conditioning_1 + conditioning_2.
    first = _entries(conditioning_1, "conditioning_1")
    second = _entries(conditioning_2, "conditioning_2")
    return [dict(entry) for entry in first + second]


def _first_entry(conditioning_from: Any, node: str) -> Mapping[str, Any]:
    entries = _entries(conditioning_from, "conditioning_from")
    if not entries:
        raise OpError(f"{node}: conditioning_from is empty; expected at least one entry")
    if len(entries) > 1:
        # NOTE: ComfyUI logs the same warning and uses only the first entry.
        _log.warning(
            "%s: conditioning_from holds %d entries; only the first one is applied",
            node, len(entries),
        )
    return entries[0]


def conditioning_concat(conditioning_to: Any, conditioning_from: Any) -> Conditioning:
    """ConditioningConcat: append the first ``cond`` of `conditioning_from` along the tokens.

    Args:
        conditioning_to: Entries to extend; their options are kept.
        conditioning_from: Its first entry's ``cond`` ``[1,T2,D]`` is appended to every entry.

    Returns:
        Entries with ``cond`` of shape ``[1,T+T2,D]``.
    """
    source = np.asarray(_first_entry(conditioning_from, "ConditioningConcat")["cond"])
    out: Conditioning = []
    for entry in _entries(conditioning_to, "conditioning_to"):
        cond = np.asarray(entry["cond"])
        if cond.shape[0] != source.shape[0] or cond.shape[2] != source.shape[2]:
            raise OpError(
                f"ConditioningConcat: cond {cond.shape} and conditioning_from {source.shape} "
                "differ in batch or width; both must come from the same text encoder"
            )
        out.append({**entry, "cond": np.concatenate([cond, source], axis=1)})
    return out


def conditioning_average(
    conditioning_to: Any, conditioning_from: Any, conditioning_to_strength: float
) -> Conditioning:
    """ConditioningAverage: ``to * s + from * (1 - s)`` with the first entry of `from`.

    The ``from`` tokens are cut to the length of each ``to`` entry, or padded with zeros.
    Pooled outputs are mixed the same way when both exist; when only ``from`` has one, it is
    taken as it is.

    Args:
        conditioning_to: Entries to mix; their options are kept.
        conditioning_from: Its first entry is mixed into every entry.
        conditioning_to_strength: Weight ``s`` of `conditioning_to` (0 to 1).

    Returns:
        The mixed entries.
    """
    first = _first_entry(conditioning_from, "ConditioningAverage")
    source = np.asarray(first["cond"], dtype=np.float32)
    pooled_from = first.get("pooled_output", None)
    s = np.float32(conditioning_to_strength)
    rest = np.float32(1.0 - conditioning_to_strength)
    out: Conditioning = []
    for entry in _entries(conditioning_to, "conditioning_to"):
        cond = np.asarray(entry["cond"], dtype=np.float32)
        if source.shape[2] != cond.shape[2]:
            raise OpError(
                f"ConditioningAverage: cond width {cond.shape[2]} and conditioning_from width "
                f"{source.shape[2]} differ; both must come from the same text encoder"
            )
        # NOTE: nodes.ConditioningAverage.addWeighted: cut or zero-pad `from` to T tokens.
        t0 = source[:, : cond.shape[1]]
        if t0.shape[1] < cond.shape[1]:
            pad = np.zeros((1, cond.shape[1] - t0.shape[1], cond.shape[2]), dtype=np.float32)
            t0 = np.concatenate([t0, pad], axis=1)
        mixed = dict(entry)
        mixed["cond"] = (cond * s + t0 * rest).astype(np.float32)
        # NOTE: a missing pooled_output on `to` defaults to the one of `from`.
        pooled_to = entry.get("pooled_output", pooled_from)
        if pooled_from is not None and pooled_to is not None:
            mixed["pooled_output"] = (
                np.asarray(pooled_to, dtype=np.float32) * s
                + np.asarray(pooled_from, dtype=np.float32) * rest
            ).astype(np.float32)
        elif pooled_from is not None:
            mixed["pooled_output"] = pooled_from
        out.append(mixed)
    return out


def set_area(
    conditioning: Any, width: int, height: int, x: int, y: int, strength: float = 1.0
) -> Conditioning:
    """ConditioningSetArea: restrict to a rectangle given in pixels.

    Stores ``area = (height // 8, width // 8, y // 8, x // 8)`` (latent units), ``strength``
    and ``set_area_to_bounds = False``.
    """
    # NOTE: nodes.ConditioningSetArea.append.
    return _set_values(conditioning, {
        "area": (int(height) // 8, int(width) // 8, int(y) // 8, int(x) // 8),
        "strength": float(strength),
        "set_area_to_bounds": False,
    })


def set_area_percentage(
    conditioning: Any, width: float, height: float, x: float, y: float, strength: float = 1.0
) -> Conditioning:
    """ConditioningSetAreaPercentage: restrict to a rectangle given as fractions of the image.

    Stores ``area = ("percentage", height, width, y, x)`` (resolved against the latent size at
    sampling), ``strength`` and ``set_area_to_bounds = False``.
    """
    # NOTE: nodes.ConditioningSetAreaPercentage.append.
    return _set_values(conditioning, {
        "area": ("percentage", float(height), float(width), float(y), float(x)),
        "strength": float(strength),
        "set_area_to_bounds": False,
    })


def set_area_strength(conditioning: Any, strength: float) -> Conditioning:
    """ConditioningSetAreaStrength: set ``strength`` only."""
    return _set_values(conditioning, {"strength": float(strength)})


def set_mask(
    conditioning: Any, mask: Any, strength: float = 1.0, set_cond_area: str = "default"
) -> Conditioning:
    """ConditioningSetMask: restrict to a mask.

    Stores ``mask`` (``[B,H,W]``; a ``[H,W]`` mask gains a batch axis), ``mask_strength`` and
    ``set_area_to_bounds`` (True for ``"mask bounds"``: the sampler crops to the mask's box).

    Args:
        conditioning: The entries.
        mask: MASK ``[B,H,W]`` or ``[H,W]``.
        strength: Stored as ``mask_strength``.
        set_cond_area: ``"default"`` or ``"mask bounds"``.
    """
    check_choice(set_cond_area, SET_COND_AREA_CHOICES, "set_cond_area")
    # NOTE: nodes.ConditioningSetMask.append.
    return _set_values(conditioning, {
        "mask": as_mask(mask),
        "set_area_to_bounds": set_cond_area != "default",
        "mask_strength": float(strength),
    })


def zero_out(conditioning: Any) -> Conditioning:
    """ConditioningZeroOut: ``cond`` and (when present) ``pooled_output`` become zeros."""
    out: Conditioning = []
    for entry in _entries(conditioning):
        zeroed = dict(entry)
        zeroed["cond"] = np.zeros_like(np.asarray(entry["cond"], dtype=np.float32))
        pooled = entry.get("pooled_output", None)
        if pooled is not None:
            zeroed["pooled_output"] = np.zeros_like(np.asarray(pooled, dtype=np.float32))
        out.append(zeroed)
    return out


def set_timestep_range(conditioning: Any, start: float, end: float) -> Conditioning:
    """ConditioningSetTimestepRange: apply only between ``start`` and ``end`` (0 to 1).

    Stores ``start_percent = start`` and ``end_percent = end`` (fractions of the sampling
    schedule, 0 = first step).
    """
    # NOTE: nodes.ConditioningSetTimestepRange.set_range (ComfyUI stores them as given; very
    # old releases stored 1 - start).
    return _set_values(conditioning, {"start_percent": float(start), "end_percent": float(end)})


def flux_guidance(conditioning: Any, guidance: float) -> Conditioning:
    """FluxGuidance: the ``guidance`` Flux-dev's guidance embedding reads (default 3.5)."""
    return _set_values(conditioning, {"guidance": float(guidance)})


def flux_disable_guidance(conditioning: Any) -> Conditioning:
    """FluxDisableGuidance: ``guidance`` None, so the model gets no guidance input."""
    return _set_values(conditioning, {"guidance": None})
