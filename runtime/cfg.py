"""The model wrapper and classifier-free guidance, in numpy (ComfyUI's ``sampling_function``).

:func:`make_denoiser` turns a UNet stage into the ``denoiser(x, sigma) -> x0`` that
:mod:`comfyc.runtime.samplers` drives. What it reproduces (ComfyUI 0.8):

* Model call (``comfy/model_base.py`` ``BaseModel._apply_model``, ``comfy/model_sampling.py``):
  input ``x / sqrt(sigma**2 + 1)`` (plus ``c_concat`` channels for inpainting UNets), timestep
  ``argmin |log sigma - log sigma_t|`` as float, then x0 = ``x - sigma * eps`` (``epsilon``) or
  ``x / (sigma**2 + 1) - v * sigma / sqrt(sigma**2 + 1)`` (``v_prediction``).
* CFG on x0 (``cfg_function``): ``x0_uncond + (x0_cond - x0_uncond) * cfg``; when
  ``math.isclose(cfg, 1.0)`` the negative is not evaluated at all (its prediction counts as 0).
* Conditioning entries (``calc_cond_batch``, ``get_area_and_mult``): each entry runs on its area
  (``(h, w, y, x)`` in latent units, or ``("percentage", h, w, y, x)``) and is accumulated with
  weight ``strength x mask x mask_strength``; areas without a mask get feathered edges (a linear
  ramp over ``min(8, size // 4)`` pixels on sides that do not touch the latent border); the sum is
  divided by the summed weights (floor 1e-37). ``start_percent``/``end_percent`` switch an entry
  on only while ``sigma`` is inside ``[percent_to_sigma(end), percent_to_sigma(start)]``.
  Masks are resized bilinearly to the latent; ``set_area_to_bounds`` replaces the area by the
  mask's bounding box (at least 8x8). For every area entry of one side an entry with the same area
  is synthesised on the other side from its smallest enclosing entry
  (``create_cond_with_same_area_if_none``), so CFG pairs up per region.
* Batching: entries whose inputs have the same shape are run in one UNet call (uncond and cond
  together); contexts of different token lengths are repeated to their least common multiple
  when that is at most 4x the shorter one (``comfy/conds.py`` ``CONDCrossAttn``), otherwise they
  run in separate calls. ``max_batch_size`` caps the rows of one call (ComfyUI picks the largest
  of n, n/2, n/3, ... entries that fits; rows beyond the cap are split further).

Not supported (a clear error names them): ControlNet (``control``), GLIGEN (``gligen``), hooks,
``default`` conds and model-option CFG hooks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import Error
from .samplers import _repeat_to_batch, _resize_bilinear
from .schedules import SD1_SCHEDULE, DiscreteSchedule

__all__ = [
    "PREDICTION_TYPES",
    "CFGDenoiser",
    "ConditioningError",
    "UNetFn",
    "apply_model",
    "make_denoiser",
]

#: ``unet(x_in [B,C,h,w], timestep [B], context [B,T,D], **extras) -> [B,C,h,w]`` (float32).
UNetFn = Callable[..., np.ndarray]

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")

_UNSUPPORTED_KEYS = {
    "gligen": "GLIGEN",
    "hooks": "hook keyframes",
    "default": "default conds",
}


class ConditioningError(Error, ValueError):
    """A conditioning entry or CFG setting that cannot be evaluated."""


def _f32(value: float) -> float:
    return float(np.float32(value))


def apply_model(
    unet: UNetFn,
    x: np.ndarray,
    sigma: float,
    context: np.ndarray,
    prediction_type: str = "epsilon",
    schedule: DiscreteSchedule | None = None,
    concat: np.ndarray | None = None,
    *,
    model_sampling: Any = None,
    extras: Mapping[str, np.ndarray] | None = None,
    control: Callable[..., Mapping[str, np.ndarray]] | None = None,
) -> np.ndarray:
    """One model evaluation: x0 prediction for noisy ``x`` at ``sigma`` (no CFG).

    Args:
        unet: The UNet stage.
        x: Noisy latent ``[B, C, h, w]`` (k-diffusion convention).
        sigma: Noise level.
        context: ``[B, T, D]`` cross-attention context.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` (when ``model_sampling`` is None).
        schedule: Model schedule for the timestep (when ``model_sampling`` is None); defaults
            to SD1/SD2.
        concat: Optional ``c_concat`` channels ``[B, Cc, h, w]`` (inpainting UNets), appended after
            the input scaling.
        model_sampling: The model's :class:`~comfyc.runtime.model_sampling.ModelSampling`
            (input scaling, timestep, x0 from the output).
        extras: Further model inputs by name (SDXL's ``y``), one row per latent row.
        control: ``control(x_in, timestep, context, extras) -> inputs``: the rows'
            ControlNet / T2I-Adapter inputs (:func:`comfyc.runtime.control.control_inputs`),
            computed from the UNet's own input (the latent channels only).

    Returns:
        float32 x0 ``[B, C, h, w]``.
    """
    ms = model_sampling if model_sampling is not None else _sampling_of(prediction_type,
                                                                        schedule)
    x = np.asarray(x, dtype=np.float32)
    x_in = ms.calculate_input(sigma, x)
    timestep = np.full((x.shape[0],), ms.timestep(float(np.float32(sigma))), dtype=np.float32)
    inputs = dict(extras or {})
    if control is not None:
        inputs.update(control(np.ascontiguousarray(x_in), timestep, context, inputs))
    if concat is not None:
        x_in = np.concatenate([x_in, np.asarray(concat, dtype=np.float32)], axis=1)
    out = unet(np.ascontiguousarray(x_in), timestep, context, **inputs)
    out = np.asarray(out, dtype=np.float32)
    if out.shape != x.shape:
        raise ConditioningError(
            f"the UNet returned shape {out.shape} for a latent of shape {x.shape}; the UNet stage "
            "must return one prediction per input latent with the latent's channels"
        )
    return ms.calculate_denoised(sigma, out, x)


def _sampling_of(prediction_type: str, schedule: DiscreteSchedule | None) -> Any:
    """The model sampling of a discrete schedule and a prediction type (older callers)."""
    from .model_sampling import DiscreteModelSampling

    if prediction_type not in PREDICTION_TYPES:
        raise ConditioningError(
            f"prediction_type {prediction_type!r} is not supported; expected one of "
            f"{', '.join(PREDICTION_TYPES)}"
        )
    return DiscreteModelSampling(schedule or SD1_SCHEDULE,
                                 "eps" if prediction_type == "epsilon" else "v_prediction")


def _lcm(a: int, b: int) -> int:
    return abs(a * b) // math.gcd(a, b)


class _Entry:
    """One resolved conditioning entry (ComfyUI's cond dict after ``process_conds``)."""

    __slots__ = (
        "area",
        "cond",
        "control",
        "extras",
        "mask",
        "mask_strength",
        "strength",
        "timestep_end",
        "timestep_start",
    )

    def __init__(self) -> None:
        self.cond: np.ndarray = np.zeros((1, 0, 0), np.float32)
        self.extras: dict[str, np.ndarray] = {}
        self.area: tuple[int, int, int, int] | None = None
        self.strength = 1.0
        self.mask: np.ndarray | None = None
        self.mask_strength = 1.0
        self.timestep_start: float | None = None
        self.timestep_end: float | None = None
        self.control: Any = None

    def copy(self) -> _Entry:
        out = _Entry()
        for name in self.__slots__:
            setattr(out, name, getattr(self, name))
        return out


def _as_dict(entry: Any, side: str, index: int) -> Mapping[str, Any]:
    """Accept ``{"cond": ..., ...}`` or ComfyUI's ``[cond, {options}]``."""
    if isinstance(entry, Mapping):
        return entry
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], Mapping):
        return {**entry[1], "cond": entry[0]}
    raise ConditioningError(
        f"{side} conditioning entry {index} is a {type(entry).__name__}; expected a dict with a "
        "'cond' array (and optional area/strength/mask/...) or a ComfyUI [cond, options] pair"
    )


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``set_area_to_bounds``: the mask's bounding box as an area (at least 8x8)."""
    bounds = np.max(np.abs(mask), axis=0)
    ys, xs = np.nonzero(bounds)
    if ys.size == 0:
        return (8, 8, 0, 0)
    height = max(8, int(ys.max() - ys.min() + 1))
    width = max(8, int(xs.max() - xs.min() + 1))
    return (height, width, int(ys.min()), int(xs.min()))


def _resolve(
    entries: Sequence[Any], side: str, h: int, w: int, schedule: Any,
    model_conds: Callable[..., dict[str, np.ndarray]] | None = None,
    latent_shape: Sequence[int] = (),
) -> list[_Entry]:
    """``resolve_areas_and_cond_masks_multidim`` + ``calculate_start_end_timesteps`` +
    ``encode_model_conds`` (the family's extra model inputs, from the entry's options)."""
    out: list[_Entry] = []
    for index, raw in enumerate(entries):
        d = _as_dict(raw, side, index)
        for key, what in _UNSUPPORTED_KEYS.items():
            if d.get(key) is not None:
                raise ConditioningError(
                    f"{side} conditioning entry {index} uses {what} ({key!r}), which comfyc's "
                    "runtime does not support yet; remove that node from the workflow"
                )
        if "cond" not in d:
            raise ConditioningError(f"{side} conditioning entry {index} has no 'cond' array")
        e = _Entry()
        cond = np.asarray(d["cond"], dtype=np.float32)
        if cond.ndim == 2:
            cond = cond[None]
        if cond.ndim != 3:
            raise ConditioningError(
                f"{side} conditioning entry {index}: 'cond' has shape {cond.shape}; expected "
                "[1, tokens, dim]"
            )
        e.cond = cond
        if model_conds is not None:
            e.extras = {k: np.asarray(v, dtype=np.float32)
                        for k, v in model_conds(d, side, latent_shape).items()}
        e.control = d.get("control")
        if e.control is not None and not hasattr(e.control, "links"):
            raise ConditioningError(
                f"{side} conditioning entry {index}: 'control' holds a "
                f"{type(e.control).__name__}, not a ControlNet applied by ControlNetApply / "
                f"ControlNetApplyAdvanced")
        e.strength = float(d.get("strength", 1.0))
        e.mask_strength = float(d.get("mask_strength", 1.0))
        area = d.get("area")
        if area is not None:
            if len(area) == 5 and area[0] == "percentage":
                area = (
                    max(1, round(area[1] * h)),
                    max(1, round(area[2] * w)),
                    round(area[3] * h),
                    round(area[4] * w),
                )
            if len(area) != 4:
                raise ConditioningError(
                    f"{side} conditioning entry {index}: area {area!r} must be (height, width, "
                    "y, x) in latent units"
                )
            e.area = tuple(int(v) for v in area)  # type: ignore[assignment]
        if d.get("mask") is not None:
            mask = np.asarray(d["mask"], dtype=np.float32)
            if mask.ndim == 2:
                mask = mask[None]
            if mask.shape[1:] != (h, w):
                mask = _resize_bilinear(mask[:, None], h, w)[:, 0]
            if d.get("set_area_to_bounds", False):
                e.area = _bounds(mask)
            e.mask = mask
        if d.get("start_percent") is not None:
            e.timestep_start = schedule.percent_to_sigma(float(d["start_percent"]))
        if d.get("end_percent") is not None:
            e.timestep_end = schedule.percent_to_sigma(float(d["end_percent"]))
        out.append(e)
    return out


def _area_inside(inner: tuple[int, ...], outer: tuple[int, ...]) -> bool:
    for i in range(2):
        if inner[2 + i] < outer[2 + i]:
            return False
        if inner[i] + inner[2 + i] > outer[i] + outer[2 + i]:
            return False
    return True


def _add_same_area(others: list[_Entry], c: _Entry) -> None:
    """``create_cond_with_same_area_if_none``: give ``others`` an entry with ``c``'s area."""
    if c.area is None:
        return
    smallest: _Entry | None = None
    for x in others:
        if x.area is None:
            # NOTE: an entry without area encloses everything but loses to any enclosing area.
            if smallest is None:
                smallest = x
            continue
        if not _area_inside(c.area, x.area):
            continue
        if (
            smallest is None
            or smallest.area is None
            or smallest.area[0] * smallest.area[1] > x.area[0] * x.area[1]
        ):
            smallest = x
    if smallest is None:
        return
    if smallest.area is not None and smallest.area == c.area:
        return
    # NOTE: ComfyUI copies the whole entry (area, strength, mask, percent range) and only takes
    # the model conds (the context) from the enclosing entry of the other side.
    out = c.copy()
    out.cond = smallest.cond
    out.extras = smallest.extras
    others.append(out)


class _Prepared:
    """One entry evaluated for one step (``get_area_and_mult``'s cond_obj)."""

    __slots__ = ("area", "cond", "control", "extras", "input_x", "mult", "side")

    def __init__(
        self,
        input_x: np.ndarray,
        mult: np.ndarray,
        cond: np.ndarray,
        area: tuple[int, int, int, int] | None,
        side: int,
        extras: dict[str, np.ndarray],
        control: Any = None,
    ) -> None:
        self.input_x: np.ndarray = input_x
        self.mult: np.ndarray = mult
        self.cond: np.ndarray = cond
        self.area: tuple[int, int, int, int] | None = area
        self.side: int = side
        self.extras = extras
        self.control = control


def _area_and_mult(e: _Entry, x: np.ndarray, sigma: float, side: int) -> _Prepared | None:
    if e.timestep_start is not None and sigma > e.timestep_start:
        return None
    if e.timestep_end is not None and sigma < e.timestep_end:
        return None
    dims = x.shape[2:]
    area = None
    input_x = x
    if e.area is not None:
        ah, aw, ay, ax = e.area
        ah = min(dims[0] - ay, ah)
        aw = min(dims[1] - ax, aw)
        area = (ah, aw, ay, ax)
        input_x = x[:, :, ay : ay + ah, ax : ax + aw]
    batch, channels = input_x.shape[:2]
    if e.mask is not None:
        mask = e.mask[:batch]
        if area is not None:
            mask = mask[:, area[2] : area[2] + area[0], area[3] : area[3] + area[1]]
        mask = mask * np.float32(e.mask_strength)
        mask = np.tile(mask[:, None], (batch // mask.shape[0], channels, 1, 1))
    else:
        mask = np.ones_like(input_x)
    mult = (mask * np.float32(e.strength)).astype(np.float32)
    if e.mask is None and area is not None:
        # NOTE: the feathering of get_area_and_mult (fuzz 8, ramp on sides off the border).
        for i in range(2):
            rr = min(8, mult.shape[2 + i] // 4)
            size, offset = area[i], area[2 + i]
            for t in range(rr):
                factor = np.float32((1.0 / rr) * (t + 1))
                if offset != 0:
                    _axis_slice(mult, i, t)[...] *= factor
            if size + offset < dims[i]:
                for t in range(rr):
                    factor = np.float32((1.0 / rr) * (t + 1))
                    _axis_slice(mult, i, size - 1 - t)[...] *= factor
    # NOTE: CONDCrossAttn.process_cond: repeat_to_batch_size(cond, batch); CONDRegular too.
    extras = {k: _repeat_to_batch(v, batch) for k, v in e.extras.items()}
    return _Prepared(input_x, mult, _repeat_to_batch(e.cond, batch), area, side, extras,
                     e.control)


def _axis_slice(array: np.ndarray, spatial_axis: int, index: int) -> np.ndarray:
    if spatial_axis == 0:
        return array[:, :, index : index + 1, :]
    return array[:, :, :, index : index + 1]


def _can_concat(a: _Prepared, b: _Prepared) -> bool:
    if a.input_x.shape != b.input_x.shape:
        return False
    if a.control is not b.control:  # ComfyUI's can_concat: the same control object only.
        return False
    # NOTE: CONDRegular.can_concat: the extra inputs (SDXL's y) must have the same shapes.
    if a.extras.keys() != b.extras.keys() or any(
            a.extras[k].shape != b.extras[k].shape for k in a.extras):
        return False
    s1, s2 = a.cond.shape, b.cond.shape
    if s1 != s2:
        if s1[0] != s2[0] or s1[2] != s2[2]:
            return False
        if _lcm(s1[1], s2[1]) // min(s1[1], s2[1]) > 4:
            return False
    return True


class CFGDenoiser:
    """``denoiser(x, sigma) -> x0`` with conditioning and CFG (see the module docstring).

    Build it with :func:`make_denoiser`. Attributes ``unet_calls`` and ``unet_rows`` count the
    UNet invocations and the rows they processed (handy for tests and progress estimates).
    """

    __slots__ = (
        "_fast",
        "_rows",
        "cfg",
        "concat",
        "max_batch_size",
        "negative",
        "model_sampling",
        "positive",
        "unet",
        "unet_calls",
        "unet_rows",
    )

    def __init__(
        self,
        unet: UNetFn,
        positive: list[_Entry],
        negative: list[_Entry],
        cfg: float,
        model_sampling: Any,
        max_batch_size: int | None,
        concat: np.ndarray | None,
    ) -> None:
        self.unet = unet
        self.positive = positive
        self.negative = negative
        self.cfg = float(cfg)
        self.model_sampling = model_sampling
        self.max_batch_size = max_batch_size
        self.concat = concat
        self.unet_calls = 0
        self.unet_rows = 0
        # NOTE: the fast path's constant inputs (built on first use) and its input buffer.
        self._fast: dict[bool, Any] = {}
        self._rows: np.ndarray | None = None

    def _run_unet(
        self, x_rows: np.ndarray, sigma: float, context: np.ndarray, concat: np.ndarray | None,
        extras: Mapping[str, np.ndarray], control: Any = None, chunks: int = 1,
    ) -> np.ndarray:
        """apply_model over rows, split to at most ``max_batch_size`` rows per call."""
        limit = self.max_batch_size or x_rows.shape[0]
        hook = None
        if control is not None:
            from .control import control_inputs

            def hook(x_in: np.ndarray, timestep: np.ndarray, ctx: np.ndarray,
                     inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
                return control_inputs(control, x_in, timestep, ctx, inputs, sigma, chunks,
                                      self.model_sampling)

        outs = []
        for start in range(0, x_rows.shape[0], limit):
            stop = start + limit
            self.unet_calls += 1
            self.unet_rows += min(stop, x_rows.shape[0]) - start
            outs.append(
                apply_model(
                    self.unet,
                    x_rows[start:stop],
                    sigma,
                    context[start:stop],
                    concat=None if concat is None else concat[start:stop],
                    model_sampling=self.model_sampling,
                    extras={k: v[start:stop] for k, v in extras.items()},
                    control=hook,
                )
            )
        return np.concatenate(outs, axis=0) if len(outs) > 1 else outs[0]

    def _calc_cond_batch(
        self, sides: list[list[_Entry] | None], x: np.ndarray, sigma: float
    ) -> list[np.ndarray]:
        out_conds = [np.zeros_like(x) for _ in sides]
        out_counts = [np.full_like(x, np.float32(1e-37)) for _ in sides]
        to_run: list[_Prepared] = []
        for side, entries in enumerate(sides):
            if entries is None:
                continue
            for e in entries:
                p = _area_and_mult(e, x, sigma, side)
                if p is not None:
                    to_run.append(p)
        while to_run:
            first = to_run[0]
            candidates = [i for i in range(len(to_run)) if _can_concat(to_run[i], first)]
            candidates.reverse()
            chosen = candidates[:1]
            rows = first.input_x.shape[0]
            for i in range(1, len(candidates) + 1):
                amount = candidates[: len(candidates) // i]
                if self.max_batch_size is None or len(amount) * rows <= self.max_batch_size:
                    chosen = amount
                    break
            batch = [to_run.pop(i) for i in chosen]
            input_x = np.concatenate([p.input_x for p in batch], axis=0)
            tokens = batch[0].cond.shape[1]
            for p in batch[1:]:
                tokens = _lcm(tokens, p.cond.shape[1])
            # NOTE: CONDCrossAttn.concat repeats shorter contexts to the common multiple.
            context = np.concatenate(
                [np.tile(p.cond, (1, tokens // p.cond.shape[1], 1)) for p in batch], axis=0
            )
            concat = None
            if self.concat is not None:
                parts = []
                for p in batch:
                    c = self.concat
                    if p.area is not None:
                        ah, aw, ay, ax = p.area
                        c = c[:, :, ay : ay + ah, ax : ax + aw]
                    parts.append(c)
                concat = np.concatenate(parts, axis=0)
            extras = {k: np.concatenate([p.extras[k] for p in batch], axis=0)
                      for k in batch[0].extras}
            output = self._run_unet(input_x, sigma, context, concat, extras, batch[0].control,
                                    len(batch))
            for k, p in enumerate(batch):
                o = output[k * rows : (k + 1) * rows]
                if p.area is None:
                    out_conds[p.side] += o * p.mult
                    out_counts[p.side] += p.mult
                else:
                    ah, aw, ay, ax = p.area
                    region = (slice(None), slice(None), slice(ay, ay + ah), slice(ax, ax + aw))
                    out_conds[p.side][region] += o * p.mult
                    out_counts[p.side][region] += p.mult
        return [c / n for c, n in zip(out_conds, out_counts, strict=True)]

    def __call__(self, x: np.ndarray, sigma: float) -> np.ndarray:
        """The CFG x0 prediction for ``x`` at ``sigma``.

        Args:
            x: Noisy model-space latent ``[B, C, h, w]``.
            sigma: Noise level.

        Returns:
            float32 x0.
        """
        x = np.asarray(x, dtype=np.float32)
        uncond = None if math.isclose(self.cfg, 1.0) else self.negative
        fast = self._fast_batch(x, uncond is not None)
        if fast is not None:
            cond_pred, uncond_pred = self._run_fast(fast, x, float(sigma))
            if uncond_pred is None:
                # cfg ~ 1: ComfyUI's negative prediction is 0, and 0 + (c - 0) * cfg = c * cfg.
                cfg = np.float32(self.cfg)
                return cond_pred if cfg == np.float32(1.0) else cond_pred * cfg
        else:
            cond_pred, uncond_pred = self._calc_cond_batch([self.positive, uncond], x,
                                                           float(sigma))
        return uncond_pred + (cond_pred - uncond_pred) * np.float32(self.cfg)

    # -- the common case, without the general machinery ------------------------------------
    def _fast_batch(self, x: np.ndarray, with_negative: bool) -> Any:
        """The fixed inputs of the common case, or None when the general path is needed.

        The common case: one entry per side covering the whole latent (no area, mask,
        percent range, inpainting concat or batch cap), both in one UNet call. It computes
        bit for bit what :meth:`_calc_cond_batch` computes — the same rows in the same order
        (negative first, as ComfyUI batches them), the same float32 products and sums — but
        builds the context once per sampling run instead of once per step, and reuses one
        input buffer (on the tiny model the per-step arrays were most of the runtime's
        overhead).
        """
        key = with_negative
        if key in self._fast:
            found = self._fast[key]
            return None if found is None or found[0] != x.shape else found
        sides = [self.positive] + ([self.negative] if with_negative else [])
        simple = (self.concat is None and self.max_batch_size is None
                  and all(len(side) == 1 for side in sides)
                  and all(e.area is None and e.mask is None and e.timestep_start is None
                          and e.timestep_end is None and e.control is None
                          for side in sides for e in side))
        found = None
        if simple:
            batch = x.shape[0]
            # Rows in ComfyUI's order: the batching loop takes the last candidate first.
            entries = [side[0] for side in reversed(sides)]
            prepared = [_Prepared(x, np.float32(e.strength), _repeat_to_batch(e.cond, batch),
                                  None, 0, {k: _repeat_to_batch(v, batch)
                                            for k, v in e.extras.items()}) for e in entries]
            if all(_can_concat(p, prepared[0]) for p in prepared):
                tokens = prepared[0].cond.shape[1]
                for p in prepared[1:]:
                    tokens = _lcm(tokens, p.cond.shape[1])
                context = np.concatenate(
                    [p.cond if p.cond.shape[1] == tokens
                     else np.tile(p.cond, (1, tokens // p.cond.shape[1], 1)) for p in prepared],
                    axis=0)
                extras = {k: np.concatenate([p.extras[k] for p in prepared], axis=0)
                          for k in prepared[0].extras}
                strengths = [np.float32(e.strength) for e in reversed(entries)]
                found = (x.shape, context, extras, strengths)
        self._fast[key] = found
        return found

    def _run_fast(self, fast: Any, x: np.ndarray, sigma: float
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        """One UNet call for the common case: ``(cond x0, uncond x0 or None)``."""
        shape, context, extras, strengths = fast
        rows = len(strengths)
        batch = shape[0]
        if rows == 1:
            input_x = x
        else:
            if self._rows is None or self._rows.shape[0] != rows * batch \
                    or self._rows.shape[1:] != shape[1:]:
                self._rows = np.empty((rows * batch, *shape[1:]), dtype=np.float32)
            for k in range(rows):
                self._rows[k * batch:(k + 1) * batch] = x
            input_x = self._rows
        self.unet_calls += 1
        self.unet_rows += rows * batch
        output = apply_model(self.unet, input_x, sigma, context,
                             model_sampling=self.model_sampling, extras=extras)
        # NOTE: ComfyUI's sums, term for term: (0 + o*m) / (1e-37 + m); m = 1 is o itself.
        preds: list[np.ndarray] = []
        for k, strength in enumerate(strengths):
            o = output[(rows - 1 - k) * batch:(rows - k) * batch]
            if strength != np.float32(1.0):
                o = (o * strength) / (np.float32(1e-37) + strength)
            preds.append(o)
        return preds[0], (preds[1] if rows > 1 else None)

    def stepper(self, x: np.ndarray) -> _Stepper | None:
        """Whole sampling steps in one UNet-stage call, or None where that does not apply.

        It applies when the UNet stage has a sampler-step graph for this model sampling's
        prediction (:class:`~comfyc.runtime.backends.step_graph.StepGraphUNet`) and the run is
        the common case of :meth:`_fast_batch` with both CFG rows at strength 1 (cfg not 1).
        The step graph computes what :meth:`_run_fast`, the CFG mix and the sampler's numpy
        update compute, operation for operation, so the bits are the same.

        Args:
            x: A latent of the run's shape.
        """
        serves = getattr(self.unet, "serves", None)
        ms = self.model_sampling
        if (serves is None or math.isclose(self.cfg, 1.0)
                or not serves(getattr(ms, "prediction", "eps"))):
            return None
        fast = self._fast_batch(np.asarray(x, dtype=np.float32), True)
        if fast is None:
            return None
        _, context, extras, strengths = fast
        if len(strengths) != 2 or any(m != np.float32(1.0) for m in strengths):
            return None
        return _Stepper(self, context, extras)

    def denoise_with_uncond(self, x: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """The CFG x0 and the negative prompt's own x0, for the CFG++ samplers.

        ComfyUI's CFG++ samplers read the unconditional prediction through a post-CFG hook and
        set ``disable_cfg1_optimization``, so the negative prompt is evaluated even at cfg 1.

        Args:
            x: Noisy model-space latent ``[B, C, h, w]``.
            sigma: Noise level.

        Returns:
            float32 ``(x0, uncond_x0)``.
        """
        x = np.asarray(x, dtype=np.float32)
        sides = [self.positive, self.negative]
        cond_pred, uncond_pred = self._calc_cond_batch(sides, x, float(sigma))
        return uncond_pred + (cond_pred - uncond_pred) * np.float32(self.cfg), uncond_pred


class _Stepper:
    """Sampling loops through a UNet stage's step graph (see :meth:`CFGDenoiser.stepper`).

    Each loop returns the final latent after calling ``report(i, denoised, x)`` per step (when
    given), as the numpy samplers do, with the same float32 bits. The per-step inputs are
    built before the loop, so that between two graph calls the runtime does little more than
    one dict update.
    """

    __slots__ = ("_context", "_denoiser", "_extras")

    def __init__(self, denoiser: CFGDenoiser, context: np.ndarray,
                 extras: Mapping[str, np.ndarray]) -> None:
        self._denoiser = denoiser
        self._context = context
        self._extras = extras

    def has(self, head: str) -> bool:
        """Whether the step graph has the output ``head`` (``STEP_OUTPUTS``; a version 2
        graph lacks DPM++ 2M SDE's)."""
        return head in getattr(self._denoiser.unet, "heads", ())

    def _coefs(self, sigmas: Sequence[float], columns: Mapping[int, np.ndarray]
               ) -> np.ndarray:
        """``step_coefs`` per step ``[n, 17]`` (float32; ``compiler.lowering.step_graph.COEFS``):
        the scalars as calculate_input, calculate_denoised and the samplers form them, with
        ``columns`` filled in."""
        d = self._denoiser
        one = np.float32(1.0)
        s = np.asarray(sigmas[:-1], dtype=np.float32)
        v_denom = s * s + one
        coefs = np.zeros((len(s), 17), dtype=np.float32)
        coefs[:, 0] = one if d.model_sampling.is_const else np.sqrt(v_denom)
        coefs[:, 1] = s
        coefs[:, 2] = np.float32(d.cfg)
        coefs[:, 8] = v_denom
        coefs[:, 9] = np.sqrt(v_denom)
        for column, values in columns.items():
            coefs[:, column] = values
        return coefs

    def _loop(self, x: np.ndarray, sigmas: Sequence[float], coefs: np.ndarray,
              report: Callable[[int, np.ndarray, np.ndarray], None] | None,
              pick: Callable[[int], int],
              noise: Callable[[int], np.ndarray | None] | None = None) -> np.ndarray:
        """Run the steps; step ``i`` takes output ``pick(i)`` as the next latent and, when
        ``noise`` is given, ``noise(i)`` as its ``step_noise`` (None: no draw that step)."""
        d = self._denoiser
        ms = d.model_sampling
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows = 2 * x.shape[0]
        # NOTE: timestep() on the float32 sigmas as an array computes what it computes for
        # each of them alone (one code path); row i is step i's ``[2b]`` input.
        steps = np.asarray(ms.timestep(np.asarray(sigmas[:-1], dtype=np.float32)),
                           dtype=np.float32).reshape(-1, 1)
        count = getattr(d.unet, "coef_count", coefs.shape[1])
        if count != coefs.shape[1]:  # an older step graph takes the first coefficients
            coefs = np.ascontiguousarray(coefs[:, :count])
        timesteps = np.repeat(steps, rows, axis=1)
        feeds = {"step_x": x, "step_old": x, "step_noise": x,
                 "encoder_hidden_states": self._context, **self._extras}
        step = d.unet.step
        picks = [pick(i) for i in range(len(timesteps))]
        # NOTE: the rows as arrays of their own, made before the loop: between two UNet calls
        # the caches are cold, and a numpy view made there cost 2-5 us (37 us an image).
        coef_rows = list(coefs)
        timestep_rows = list(timesteps)
        for i in range(len(timesteps)):
            feeds["step_coefs"] = coef_rows[i]
            feeds["timestep"] = timestep_rows[i]
            if noise is not None:
                drawn = noise(i)
                if drawn is not None:
                    feeds["step_noise"] = drawn
            out = step(feeds, i > 0)
            if report is not None:
                report(i, out[0], x)
            x = out[picks[i]]
            feeds["step_x"] = x
            feeds["step_old"] = out[0]
        d.unet_calls += len(timesteps)
        d.unet_rows += rows * len(timesteps)
        return x

    def euler(self, x: np.ndarray, sigmas: Sequence[float],
              report: Callable[[int, np.ndarray, np.ndarray], None] | None) -> np.ndarray:
        """Euler steps over ``sigmas`` (``x + ((x - x0) / sigma) * (sigma_next - sigma)``)."""
        dt = np.diff(np.asarray(sigmas, dtype=np.float64)).astype(np.float32)
        return self._loop(x, sigmas, self._coefs(sigmas, {3: dt}), report, lambda i: 1)

    def dpmpp_2m(self, x: np.ndarray, sigmas: Sequence[float], ratio: Sequence[float],
                 coeff: Sequence[float], a: Sequence[float], b: Sequence[float],
                 first: Sequence[bool],
                 report: Callable[[int, np.ndarray, np.ndarray], None] | None) -> np.ndarray:
        """DPM-Solver++(2M) steps with the per-step weights the sampler computed: step ``i``
        is first-order where ``first[i]``, else second-order on the previous x0."""
        coefs = self._coefs(sigmas, {4: np.asarray(ratio, dtype=np.float32),
                                     5: np.asarray(coeff, dtype=np.float32),
                                     6: np.asarray(a, dtype=np.float32),
                                     7: np.asarray(b, dtype=np.float32)})
        return self._loop(x, sigmas, coefs, report, lambda i: 2 if first[i] else 3)

    def euler_ancestral(self, x: np.ndarray, sigmas: Sequence[float],
                        down: Sequence[float], up: Sequence[float], s_noise: float,
                        draw: Callable[[float, float], np.ndarray],
                        report: Callable[[int, np.ndarray, np.ndarray], None] | None
                        ) -> np.ndarray:
        """Ancestral Euler steps (eps / v models) with the sampler's ``(sigma_down,
        sigma_up)`` per step: ``x0`` where sigma_down is 0, else ``x + d * (sigma_down -
        sigma) + (noise * s_noise) * sigma_up`` with ``noise = draw(sigma, sigma_next)``,
        drawn in the numpy sampler's order."""
        s64 = np.asarray(sigmas, dtype=np.float64)
        coefs = self._coefs(sigmas, {
            3: (np.asarray(down, dtype=np.float64) - s64[:-1]).astype(np.float32),
            10: np.float32(s_noise), 11: np.asarray(up, dtype=np.float32)})

        def noise(i: int) -> np.ndarray | None:
            return None if down[i] == 0 else draw(sigmas[i], sigmas[i + 1])

        return self._loop(x, sigmas, coefs, report, lambda i: 0 if down[i] == 0 else 4, noise)

    def dpmpp_2m_sde(self, x: np.ndarray, sigmas: Sequence[float], a: Sequence[float],
                     b: Sequence[float], c: Sequence[float | None], scale: Sequence[float],
                     s_noise: float, noisy: bool, draw: Callable[[float, float], np.ndarray],
                     report: Callable[[int, np.ndarray, np.ndarray], None] | None
                     ) -> np.ndarray:
        """DPM++ 2M SDE steps with the sampler's per-step weights: ``x0`` where the next
        sigma is 0, else ``a * x + b * x0``, ``+ c * (x0 - old)`` where ``c`` is given, and
        ``+ ((noise * sigma_next) * scale) * s_noise`` when ``noisy``, the noise drawn as
        the numpy sampler draws it."""
        last = [sigmas[i + 1] == 0 for i in range(len(sigmas) - 1)]
        coefs = self._coefs(sigmas, {
            12: np.asarray(a, dtype=np.float32), 13: np.asarray(b, dtype=np.float32),
            14: np.asarray([0.0 if v is None else v for v in c], dtype=np.float32),
            15: np.asarray(sigmas[1:], dtype=np.float32), 16: np.asarray(scale, np.float32),
            10: np.float32(s_noise)})

        def pick(i: int) -> int:
            if last[i]:
                return 0
            return (6 if c[i] is not None else 5) + (2 if noisy else 0)

        def noise(i: int) -> np.ndarray | None:
            return None if last[i] or not noisy else draw(sigmas[i], sigmas[i + 1])

        return self._loop(x, sigmas, coefs, report, pick, noise)


def _controls_to_uncond(positive: Sequence[Any], negative: Sequence[Any]) -> list[Any]:
    """ComfyUI's ``apply_empty_x_to_equal_area`` for the deprecated ``ControlNetApply``: the
    controls of positive entries marked ``control_apply_to_uncond`` (and without an area) are
    put on negative entries without an area and without a control, cycling over them; nothing
    changes when a negative entry already has a control."""
    marked = [_as_dict(e, "positive", i) for i, e in enumerate(positive)]
    controls = [d["control"] for d in marked if d.get("control_apply_to_uncond")
                and d.get("area") is None and d.get("control") is not None]
    out = [e for e in negative]
    if not controls:
        return out
    plain: list[tuple[Mapping[str, Any], int]] = []
    for index, entry in enumerate(negative):
        d = _as_dict(entry, "negative", index)
        if d.get("area") is not None:
            continue
        if d.get("control") is not None:
            return out
        plain.append((d, index))
    if not plain:
        return out
    for i, control in enumerate(controls):
        original, index = plain[i % len(plain)]
        out[index] = {**original, "control": control}
    return out


def make_denoiser(
    unet: UNetFn,
    positive: Sequence[Any],
    negative: Sequence[Any] | None,
    cfg: float,
    latent_shape: Sequence[int],
    *,
    prediction_type: str = "epsilon",
    schedule: DiscreteSchedule | None = None,
    max_batch_size: int | None = None,
    concat: np.ndarray | None = None,
    model_sampling: Any = None,
    model_conds: Callable[..., dict[str, np.ndarray]] | None = None,
) -> CFGDenoiser:
    """Build the CFG denoiser for one sampler run (``CFGGuider`` + ``process_conds``).

    Args:
        unet: ``unet(x_in, timestep, context, **extras) -> eps, v or flow``, float32 arrays.
        positive: Positive CONDITIONING: entries ``{"cond": [1, T, D], "pooled_output",
            "area", "strength", "mask", "mask_strength", "set_area_to_bounds",
            "start_percent", "end_percent", and the family's size options}`` or ComfyUI
            ``[cond, options]`` pairs.
        negative: Negative CONDITIONING (same form); may be empty or None only when cfg is 1.
        cfg: Guidance scale.
        latent_shape: ``[B, C, h, w]`` of the latent that will be sampled.
        prediction_type: ``"epsilon"`` (SD1, SD2-512, inpainting) or ``"v_prediction"``
            (SD2 768-v), when ``model_sampling`` is None.
        schedule: Model schedule (when ``model_sampling`` is None); defaults to SD1/SD2.
        max_batch_size: At most this many rows per UNet call (None = no limit).
        concat: ``c_concat`` for inpainting UNets ``[B, Cc, h, w]`` (mask + masked latent).
        model_sampling: The model's :class:`~comfyc.runtime.model_sampling.ModelSampling`.
        model_conds: The family's extra model inputs per entry
            (:func:`comfyc.runtime.families.model_conds`), e.g. SDXL's ``y``.

    Returns:
        The denoiser, a callable ``(x, sigma) -> x0``.

    Raises:
        ConditioningError: for malformed or unsupported entries.
    """
    ms = model_sampling if model_sampling is not None else _sampling_of(prediction_type,
                                                                        schedule)
    if max_batch_size is not None and max_batch_size < 1:
        raise ConditioningError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
    if not positive:
        raise ConditioningError("the positive conditioning is empty; connect a text encoding")
    h, w = int(latent_shape[2]), int(latent_shape[3])
    negative = _controls_to_uncond(positive, negative or [])
    pos = _resolve(positive, "positive", h, w, ms, model_conds, latent_shape)
    neg = _resolve(negative, "negative", h, w, ms, model_conds, latent_shape)
    if not neg and not math.isclose(cfg, 1.0):
        raise ConditioningError(
            f"cfg is {cfg} but the negative conditioning is empty; connect a negative prompt or "
            "set cfg to 1.0"
        )
    # NOTE: process_conds: every area entry of one side gets a same-area twin on the other side;
    # the loop sees entries appended while it runs, as ComfyUI's does.
    sides = [pos, neg]
    for k in range(2):
        for c in sides[k]:
            _add_same_area(sides[1 - k], c)
    if concat is not None:
        concat = np.asarray(concat, dtype=np.float32)
    return CFGDenoiser(unet, pos, neg, cfg, ms, max_batch_size, concat)
