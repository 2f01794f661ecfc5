"""Runtime-mode LoRA: low-rank factors merged into a stage's weights when its session is made.

A LoRA whose strength is a runtime param (or every LoRA, compiled with ``--lora-runtime``) is
not folded into the weights at compile time. The artifact keeps the stage's *base* weights
(the checkpoint plus any LoRAs that were folded) as ONNX external data, and the LoRA's
factors in ``lora/<stage>.safetensors``; the manifest's stage entry indexes them::

    "lora": {
      "file": "lora/unet_ab12.safetensors",          # "<slot>:<weight>:up" / ":down" tensors
      "slots": [{"name": "style.safetensors",         # one slot per runtime-mode LoRA, in
                 "targets": {"<weight>": 0.5, ...}}], # order; per target weight: alpha/rank
      "weights": {"<weight>": {"shape": [...], "dtype": "float32",
                               "offset": 0, "length": 4096}},   # where the base values are
      "source": {"onnx_data": "stages/unet_ab12.onnx.data"}     # or {"torch": ".../x.safetensors"}
    }

For strengths ``s_1 … s_n`` (one per slot) each target weight becomes
``W + Σ s_i · scale_i · (up_i @ down_i)`` (reshaped to the weight's shape: convolutions too),
computed in float32 in slot order and cast to the stored dtype, exactly as the compiler's
``merge_lora`` folds it; onnxruntime takes the merged weights as initializer overrides
(:class:`~comfyc.runtime.backends.ort.OrtSession`). So a new strength, or another LoRA with the
same targets, costs a session reload instead of a compile. Sessions are cached per tuple of
strengths (the last :data:`SESSION_CACHE_SIZE`); all-zero strengths give the base stage.

numpy only: the lean runtime reads the base values straight from the external-data file at
the offsets the compiler recorded (no ``onnx`` package needed).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends.base import BackendError, Stage

__all__ = [
    "SESSION_CACHE_SIZE",
    "LoraSlot",
    "LoraTarget",
    "LoraVariants",
    "RuntimeLoraStage",
    "merge_weights",
    "read_lora_index",
    "with_strengths",
]

#: Sessions kept per runtime-LoRA stage (each holds a full copy of the stage's weights).
SESSION_CACHE_SIZE = 2


@dataclass(frozen=True)
class LoraTarget:
    """The low-rank update of one weight.

    Attributes:
        up: ``[out, rank]`` (convolution factors flattened to 2-D).
        down: ``[rank, in · kh · kw]``.
        scale: ``alpha / rank`` (1.0 without alpha).
    """

    up: np.ndarray
    down: np.ndarray
    scale: float

    def delta(self, shape: Sequence[int], strength: float) -> np.ndarray:
        """``strength · scale · up @ down`` in float32, reshaped to ``shape``.

        Raises:
            BackendError: The product does not have as many elements as the weight.
        """
        product = self.up.astype(np.float32, copy=False) @ self.down.astype(np.float32,
                                                                            copy=False)
        if product.size != math.prod(shape):
            raise BackendError(
                f"a LoRA factor pair gives a {list(product.shape)} update for a weight of shape "
                f"{list(shape)}; the artifact's lora file does not belong to this stage — "
                f"compile the workflow again")
        return np.float32(strength * self.scale) * product.reshape(tuple(shape))


@dataclass(frozen=True)
class LoraSlot:
    """One runtime-mode LoRA of a stage: its file name and its factors per target weight."""

    name: str
    targets: Mapping[str, LoraTarget]


def merge_weights(slots: Sequence[LoraSlot], strengths: Sequence[float],
                  base_weight: Callable[[str], np.ndarray],
                  round_to: Any = None) -> dict[str, np.ndarray]:
    """The merged values of every weight some slot with a non-zero strength targets.

    Args:
        slots: The stage's LoRA slots.
        strengths: One strength per slot.
        base_weight: Reads a weight's base value by name.
        round_to: A dtype whose precision the sums are rounded to (text encoders: float16,
            the precision ComfyUI keeps them in, as the compiler's ``merge_lora`` does).

    Returns:
        Weight name → merged value, in the base weight's dtype.
    """
    names: dict[str, None] = {}
    for slot, strength in zip(slots, strengths, strict=True):
        if strength != 0:
            names.update(dict.fromkeys(slot.targets))
    merged: dict[str, np.ndarray] = {}
    for name in names:
        base = base_weight(name)
        value = base.astype(np.float32)  # a copy: the sum never touches the file's buffer
        for slot, strength in zip(slots, strengths, strict=True):
            target = slot.targets.get(name)
            if strength != 0 and target is not None:
                value = value + target.delta(base.shape, strength)
        if round_to is not None:
            value = value.astype(round_to).astype(np.float32)
        merged[name] = value.astype(base.dtype, copy=False)
    return merged


class LoraVariants:
    """Something made per tuple of LoRA strengths (a stage, or a CLIP's layers), cached.

    The ``ApplyLoRA`` op calls :meth:`with_strengths` with one strength per slot; the result
    is made by ``make(strengths)`` the first time and kept in a small LRU cache.

    Args:
        name: The stage name in the program.
        kind: ``unet`` or ``text_encoder``.
        slot_names: The runtime-mode LoRAs, in merge order.
        make: Builds the variant for a tuple of strengths.
        info: Facts about the stage (as :class:`~comfyc.runtime.backends.base.Stage`'s).
        cache_size: Variants kept.
    """

    backend = "lora"

    def __init__(self, name: str, kind: str, slot_names: Sequence[str],
                 make: Callable[[tuple[float, ...]], Any], info: dict[str, Any] | None = None,
                 cache_size: int = SESSION_CACHE_SIZE) -> None:
        self.name = name
        self.kind = kind
        self.slot_names = list(slot_names)
        self.info = dict(info or {})
        self.make = make
        self.cache_size = max(1, int(cache_size))
        self.timer: Any = None
        self._made: OrderedDict[tuple[float, ...], Any] = OrderedDict()

    def with_strengths(self, strengths: Sequence[float]) -> Any:
        """The variant for these strengths (one per slot), made once and cached.

        Raises:
            BackendError: Not one strength per slot, or a strength that is not finite.
        """
        key = tuple(float(s) + 0.0 for s in strengths)  # + 0.0 turns -0.0 into 0.0
        if len(key) != len(self.slot_names):
            raise BackendError(
                f"stage {self.name!r} has {len(self.slot_names)} runtime LoRA(s) "
                f"({', '.join(self.slot_names)}), but {len(key)} strength(s) were given; the "
                f"program does not match its stages — compile the workflow again")
        if not all(math.isfinite(s) for s in key):
            raise BackendError(f"LoRA strengths for stage {self.name!r} must be finite numbers, "
                               f"got {list(key)}")
        made = self._made.get(key)
        if made is None:
            made = self.make(key)
            self._made[key] = made
            while len(self._made) > self.cache_size:
                self._made.popitem(last=False)
        else:
            self._made.move_to_end(key)
        if hasattr(made, "timer"):
            made.timer = self.timer
        return made

    def cached(self) -> list[tuple[float, ...]]:
        """The strength tuples whose variants are cached, oldest first."""
        return list(self._made)

    def __call__(self, *args: np.ndarray, **extras: np.ndarray) -> Any:
        raise BackendError(f"stage {self.name!r} has runtime-mode LoRAs and runs only through "
                           f"ApplyLoRA, which chooses their strengths")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, {self.kind}, "
                f"loras={self.slot_names})")


class RuntimeLoraStage(LoraVariants):
    """A stage whose runtime-mode LoRAs are merged into its weights when a session is made.

    Args:
        name: The stage name in the program.
        kind: ``unet`` or ``text_encoder``.
        slots: The LoRAs, in merge order.
        base_weight: Reads a weight's base value by name.
        create: Makes the stage with weights replaced (``{}``: the base stage), e.g. an
            ``OrtUNet`` with ``initializer_overrides``.
        info: Facts about the stage.
        cache_size: Sessions kept.
    """

    def __init__(self, name: str, kind: str, slots: Sequence[LoraSlot],
                 base_weight: Callable[[str], np.ndarray],
                 create: Callable[[dict[str, np.ndarray]], Stage],
                 info: dict[str, Any] | None = None,
                 cache_size: int = SESSION_CACHE_SIZE) -> None:
        super().__init__(name, kind, [slot.name for slot in slots], self._create, info,
                         cache_size)
        self.slots = list(slots)
        self.base_weight = base_weight
        self.create = create

    def merged_weights(self, strengths: Sequence[float]) -> dict[str, np.ndarray]:
        """The initializer overrides for these strengths (empty when all are 0)."""
        return merge_weights(self.slots, strengths, self.base_weight,
                             np.float16 if self.kind == "text_encoder" else None)

    def _create(self, strengths: tuple[float, ...]) -> Stage:
        return self.create(self.merged_weights(strengths))

    @classmethod
    def from_index(cls, root: str | Path, name: str, kind: str, index: Mapping[str, Any],
                   create: Callable[[dict[str, np.ndarray]], Stage], *, source: str = "onnx",
                   info: dict[str, Any] | None = None) -> RuntimeLoraStage:
        """Build the stage from a manifest's ``lora`` index (see the module docstring).

        Args:
            root: The artifact directory.
            name: The stage name.
            kind: The stage kind.
            index: The stage entry's ``lora`` object.
            create: See the class.
            source: Where the base weights are read: ``onnx`` (the external-data file) or
                ``torch`` (the stored PyTorch weights).
            info: Facts about the stage.

        Raises:
            BackendError: The index lacks the base weights for ``source``.
        """
        slots, base_weight = read_lora_index(root, name, index, source)
        return cls(name, kind, slots, base_weight, create, info)


def read_lora_index(root: str | Path, name: str, index: Mapping[str, Any], source: str = "onnx"
                    ) -> tuple[list[LoraSlot], Callable[[str], np.ndarray]]:
    """The slots of a ``lora`` index and a reader of the base weights.

    Raises:
        BackendError: The index has no base weights for ``source``.
    """
    from safetensors.numpy import load_file

    root = Path(root)
    tensors = load_file(str(root / index["file"]))
    slots = []
    for number, slot in enumerate(index.get("slots") or []):
        targets = {
            weight: LoraTarget(tensors[f"{number}:{weight}:up"],
                               tensors[f"{number}:{weight}:down"], float(scale))
            for weight, scale in (slot.get("targets") or {}).items()
        }
        slots.append(LoraSlot(str(slot.get("name", f"lora {number}")), targets))
    where = index.get("source") or {}
    weights = index.get("weights") or {}
    if source == "onnx" and where.get("onnx_data"):
        return slots, _external_reader(root / where["onnx_data"], weights)
    if source == "torch" and where.get("torch"):
        return slots, _safetensors_reader(root / where["torch"])
    raise BackendError(
        f"stage {name} has runtime-mode LoRAs, but its base weights were stored for "
        f"{'the torch backend' if where.get('torch') else 'onnxruntime'}, not for "
        f"{'torch' if source == 'torch' else 'onnxruntime'}; run it on the backend it was "
        f"compiled for, or compile again with --backend {name}=...")


def _external_reader(path: Path, weights: Mapping[str, Mapping[str, Any]]
                     ) -> Callable[[str], np.ndarray]:
    """Reads weights from an ONNX external-data file at the recorded offsets."""

    def read(name: str) -> np.ndarray:
        spec = weights.get(name)
        if spec is None:
            raise BackendError(f"{path.name}: no offset is recorded for weight {name!r}; the "
                               f"manifest's lora index is incomplete — compile again")
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(d) for d in spec["shape"])
        count = math.prod(shape)
        if int(spec["length"]) != count * dtype.itemsize:
            raise BackendError(
                f"{path.name}: weight {name!r} is recorded as {spec['length']} bytes, but "
                f"shape {list(shape)} of {dtype} needs {count * dtype.itemsize}; compile again")
        value = np.fromfile(path, dtype=dtype, count=count, offset=int(spec["offset"]))
        if value.size != count:
            raise BackendError(f"{path.name} ends before weight {name!r}; the file is "
                               f"truncated — compile again")
        return value.reshape(shape)

    return read


def _safetensors_reader(path: Path) -> Callable[[str], np.ndarray]:
    """Reads weights from a safetensors file (stages stored for PyTorch)."""
    from safetensors import safe_open

    def read(name: str) -> np.ndarray:
        with safe_open(str(path), framework="numpy") as handle:
            return handle.get_tensor(name)

    return read


def with_strengths(stages: Any, strengths: Sequence[float]) -> Any:
    """Apply strengths to a LoRA stage, or to each stage of a CLIP's layer mapping.

    Args:
        stages: A :class:`LoraVariants` (or anything with ``with_strengths``), or a mapping
            of CLIP layers to such stages.
        strengths: One per runtime-mode LoRA.

    Returns:
        The stage, or ``{layer: stage}``.

    Raises:
        BackendError: ``stages`` has no runtime-mode LoRA.
    """
    if hasattr(stages, "with_strengths"):
        return stages.with_strengths(strengths)
    if isinstance(stages, Mapping):
        return {int(layer): with_strengths(stage, strengths) if stage is not None else None
                for layer, stage in stages.items()}
    raise BackendError(f"LoRA strengths were given for {stages!r}, which has no runtime-mode "
                       f"LoRA; compile the workflow again")
