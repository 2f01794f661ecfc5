"""Weights read on demand: names, shapes and dtypes first, each tensor only when it is used.

A Flux transformer is 24 GB in bf16 and T5-XXL 9.5 GB; reading a whole file into memory and then
converting it to float32 would need both copies at once. `WeightSource` reads the safetensors
header (names, shapes, dtypes) up front and each tensor when asked, so a loader that converts
tensor by tensor holds the finished module plus one tensor. It is a read-only ``Mapping`` (so
functions written for plain state dicts accept it), with cheap views (`WeightSource.view`: a
prefix removed) and a shape table of meta tensors for shape-only detection.

It also dequantizes ComfyUI's fp8 formats as tensors are read (`dequantize`):

* plain fp8 files (``F8_E4M3`` / ``F8_E5M2``): read as ``float8_e4m3fn`` / ``float8_e5m2`` and
  upcast by the loader (exact: every fp8 value is a float32 value);
* "scaled fp8" files (a ``scaled_fp8`` marker tensor; per layer ``<layer>.scale_weight``, and
  ``<layer>.scale_input`` which only matters for fp8 matmuls and is dropped): the weight is
  ``fp8 value x scale_weight`` (ComfyUI's ``convert_old_quants``);
* the newer ``_quantization_metadata`` format with per-tensor ``float8_e4m3fn`` layers
  (``<layer>.weight_scale``, ``<layer>.input_scale``); other formats (block-scaled fp8, fp4) are
  refused with their name.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch

from comfyc.compiler.models.errors import ModelFormatError

__all__ = ["FP8_DTYPES", "WeightSource", "is_fp8"]

#: The fp8 dtypes that files hold and ComfyUI's weight_dtype options name.
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def is_fp8(tensor: torch.Tensor) -> bool:
    """True for fp8 tensors (which need an upcast before most CPU ops)."""
    return tensor.dtype in FP8_DTYPES


class WeightSource(Mapping[str, torch.Tensor]):
    """Named tensors read on demand (see the module docstring).

    Args:
        getter: Returns the tensor of a name.
        shapes: Name -> shape, in file order.
        dtypes: Name -> dtype.
        metadata: The file's string metadata.
        source: The file, for messages.
    """

    def __init__(
        self,
        getter: Callable[[str], torch.Tensor],
        shapes: Mapping[str, tuple[int, ...]],
        dtypes: Mapping[str, torch.dtype],
        metadata: Mapping[str, str] | None = None,
        source: Path | None = None,
    ) -> None:
        self._get = getter
        self.shapes = dict(shapes)
        self.dtypes = dict(dtypes)
        self.metadata = dict(metadata or {})
        self.source = source

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
        source: Path | None = None,
    ) -> WeightSource:
        """Wraps tensors already in memory (or meta tensors)."""
        tensors = dict(state)
        return cls(tensors.__getitem__, {k: tuple(v.shape) for k, v in tensors.items()},
                   {k: v.dtype for k, v in tensors.items()}, metadata, source)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> WeightSource:
        """Opens a weights file: safetensors lazily, pickles (weights only) eagerly.

        Raises:
            ModelFormatError: A missing, unreadable or unsupported file.
        """
        from comfyc.compiler.models.single_file import SAFETENSORS_SUFFIXES, read_state_dict

        file = Path(path)
        if file.suffix.lower() not in SAFETENSORS_SUFFIXES or not file.is_file():
            state, metadata = read_state_dict(file)  # NOTE: its errors name the problem
            return cls.from_dict(state, metadata, file)
        from safetensors import SafetensorError, safe_open

        try:
            handle = safe_open(str(file), framework="pt")
            metadata = dict(handle.metadata() or {})
            shapes: dict[str, tuple[int, ...]] = {}
            dtypes: dict[str, torch.dtype] = {}
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                view = handle.get_slice(key)
                shapes[key] = tuple(int(d) for d in view.get_shape())
                dtypes[key] = _SAFETENSORS_DTYPES.get(view.get_dtype(), torch.float32)
        except (SafetensorError, OSError) as exc:
            raise ModelFormatError(
                f"cannot read {str(file)!r} as safetensors: {exc}; the file may be truncated "
                "(re-download it)"
            ) from exc
        return cls(handle.get_tensor, shapes, dtypes, metadata, file)

    # -- Mapping ---------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.shapes:
            raise KeyError(key)
        return self._get(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __contains__(self, key: object) -> bool:
        return key in self.shapes

    # -- views -----------------------------------------------------------------------------------

    def shape_table(self) -> dict[str, torch.Tensor]:
        """Name -> meta tensor of the right shape and dtype (for shape-only detection)."""
        return {k: torch.empty(s, dtype=self.dtypes[k], device="meta")
                for k, s in self.shapes.items()}

    def renamed(self, names: Mapping[str, str]) -> WeightSource:
        """A view holding ``new name -> tensor of old name`` for each ``names`` entry."""
        get = self._get
        return WeightSource(lambda key: get(names[key]),
                            {new: self.shapes[old] for new, old in names.items()},
                            {new: self.dtypes[old] for new, old in names.items()},
                            self.metadata, self.source)

    def view(self, prefix: str) -> WeightSource:
        """The entries under `prefix`, with it removed."""
        return self.renamed({k[len(prefix):]: k for k in self.shapes if k.startswith(prefix)})

    def has_prefix(self, prefix: str) -> bool:
        """True when some entry starts with `prefix`."""
        return any(k.startswith(prefix) for k in self.shapes)

    def floating_dtypes(self) -> frozenset[str]:
        """The floating dtypes stored (``"bfloat16"``, ``"float8_e4m3fn"``, ...)."""
        return frozenset(str(d).replace("torch.", "") for d in self.dtypes.values()
                         if d.is_floating_point)

    # -- fp8 ---------------------------------------------------------------------------------

    def dequantize(self) -> WeightSource:
        """A view with ComfyUI's scaled-fp8 formats dequantized (see the module docstring).

        Plain fp8 tensors are returned as they are (the loader upcasts them). Scale tensors are
        consumed and disappear from the view.

        Raises:
            ModelFormatError: A quantization format comfyc cannot dequantize.
        """
        scales = _scale_names(self)
        if scales is None:
            return self
        weight_scales, dropped = scales
        get = self._get
        kept = {k: k for k in self.shapes if k not in dropped}

        def read(key: str) -> torch.Tensor:
            tensor = get(key)
            scale_key = weight_scales.get(key)
            if scale_key is None:
                return tensor
            return tensor.float() * get(scale_key).float()

        return WeightSource(read, {k: self.shapes[k] for k in kept},
                            {k: torch.float32 if k in weight_scales else self.dtypes[k]
                             for k in kept}, self.metadata, self.source)


def _scale_names(weights: WeightSource) -> tuple[dict[str, str], set[str]] | None:
    """(weight name -> its scale's name, names to drop) of a scaled-fp8 file, or None."""
    names = weights.shapes
    if "_quantization_metadata" in weights.metadata:
        try:
            layers = json.loads(weights.metadata["_quantization_metadata"])["layers"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelFormatError(f"unreadable _quantization_metadata: {exc}") from exc
        scales: dict[str, str] = {}
        dropped: set[str] = set()
        for layer, conf in layers.items():
            kind = conf.get("format") if isinstance(conf, dict) else None
            if kind != "float8_e4m3fn":
                raise ModelFormatError(
                    f"layer {layer!r} is quantized as {kind!r}; comfyc dequantizes per-tensor "
                    "float8_e4m3fn only (use an fp16/bf16 or plain fp8 file)"
                )
            scale = f"{layer}.weight_scale"
            if scale in names:
                scales[f"{layer}.weight"] = scale
                dropped.add(scale)
            dropped.add(f"{layer}.input_scale")
        dropped |= {k for k in names if k.endswith(".comfy_quant")}
        return scales, dropped
    markers = [k for k in names if k == "scaled_fp8" or k.endswith(".scaled_fp8")]
    if not markers:
        return None
    scales = {}
    dropped = set(markers)
    for key in names:
        if key.endswith(".scale_weight"):
            layer = key[: -len(".scale_weight")]
            scales[f"{layer}.weight"] = key
            dropped.add(key)
        elif key.endswith(".scale_input"):
            dropped.add(key)
    return scales, dropped

