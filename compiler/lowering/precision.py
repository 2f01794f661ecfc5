"""Lower-precision copies of exported ONNX stages: float16 and int8.

* :func:`to_fp16` converts a float32 ONNX file to float16 weights and compute with
  onnxruntime's own converter (``onnxruntime.transformers.float16``), keeping float32 inputs
  and outputs by default so callers feed the same arrays. Ops that lose too much in float16
  (``Resize``, range reductions; the converter's default block list) stay float32. For GPU
  providers and TensorRT; on the CPU onnxruntime has few float16 kernels and inserts casts.
* :func:`quantize_int8` is onnxruntime's dynamic quantisation (``quantize_dynamic``): weights
  of MatMul/Gemm (and optionally Conv) become int8 with a per-tensor or per-channel scale,
  activations are quantised on the fly. It needs no calibration data, which is why it is the
  default here; it pays where MatMuls dominate (attention, the text encoder) and costs where
  convolutions do (ConvInteger is slower than onnxruntime's float Conv on most CPUs; measured
  in bench/results/backends-section.md).

Both write ``dst`` (and ``dst.data`` for external weights when the model is large) and leave
``src`` untouched. They need ``onnx`` and ``onnxruntime`` (both in the compiler extra).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ExportError
from .onnx_export import model_bytes

__all__ = ["INT8_DEFAULT_OPS", "quantize_int8", "to_fp16"]

#: Op types quantised by default (Conv only on request: see the module docstring; Gather is
#: the text encoder's token embedding, most of its bytes).
INT8_DEFAULT_OPS = ("MatMul", "Gemm", "Attention", "Gather")

#: Above this many bytes of weights a model is saved with external data (protobuf's 2 GB cap).
_EXTERNAL_ABOVE = 1 << 30


def _load(src: Path) -> Any:
    import onnx

    if not src.is_file():
        raise ExportError(f"{src} does not exist; expected an exported .onnx stage")
    return onnx.load(str(src), load_external_data=True)


def _save(model: Any, dst: Path) -> None:
    import onnx

    dst.parent.mkdir(parents=True, exist_ok=True)
    Path(str(dst) + ".data").unlink(missing_ok=True)
    external = model.ByteSize() > _EXTERNAL_ABOVE
    onnx.save_model(model, str(dst), save_as_external_data=external,
                    all_tensors_to_one_file=True, location=dst.name + ".data",
                    size_threshold=1024)


def to_fp16(src: Path, dst: Path, *, keep_io_types: bool = True,
            op_block_list: Sequence[str] | None = None) -> None:
    """Write a float16 copy of a float32 ONNX model.

    Args:
        src: The float32 ``.onnx`` file (external data beside it is read too).
        dst: Where to write the float16 model (may equal ``src``'s folder, not ``src``).
        keep_io_types: Keep float32 graph inputs and outputs (casts inside the graph), so the
            runtime feeds and reads the same arrays as for float32 stages.
        op_block_list: Op types to keep in float32; None: the converter's default list.

    Raises:
        ExportError: ``src`` is missing, or the converter failed.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ExportError(f"to_fp16 writes a copy; {dst} is its own source")
    model = _load(src)
    kwargs: dict[str, Any] = {"keep_io_types": keep_io_types,
                              "disable_shape_infer": model.ByteSize() > _EXTERNAL_ABOVE}
    if op_block_list is not None:
        kwargs["op_block_list"] = list(op_block_list)
    try:
        converted = convert_float_to_float16(model, **kwargs)
    except Exception as exc:
        raise ExportError(f"float16 conversion of {src.name} failed: {exc}") from exc
    _save(converted, dst)


def quantize_int8(src: Path, dst: Path, *, op_types: Sequence[str] = INT8_DEFAULT_OPS,
                  per_channel: bool = False, conv: bool = False) -> None:
    """Write a dynamically int8-quantised copy of a float32 ONNX model.

    Args:
        src: The float32 ``.onnx`` file.
        dst: Where to write the quantised model (may be ``src``: it is replaced).
        op_types: Op types whose weights are quantised.
        per_channel: One scale per output channel (more accurate, a little slower).
        conv: Quantise ``Conv`` too (smaller files; slower on most CPUs).

    Raises:
        ExportError: ``src`` is missing, is float16, or quantisation failed.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    model = _load(src)
    if any(init.data_type == 10 for init in model.graph.initializer):  # FLOAT16
        raise ExportError(f"{src.name} has float16 weights; int8 quantisation starts from a "
                          f"float32 stage (compile without --fp16)")
    ops = list(op_types) + (["Conv"] if conv and "Conv" not in op_types else [])
    dst.parent.mkdir(parents=True, exist_ok=True)
    # NOTE: quantize_dynamic runs shape inference on a copy it writes next to its input; give
    # it a private folder so a failed run leaves no files beside the artifact's stages.
    with tempfile.TemporaryDirectory(prefix="comfyc-int8-") as tmp:
        staged = Path(tmp) / src.name
        _save(model, staged)
        out = Path(tmp) / ("q-" + src.name)
        # NOTE: the quantiser logs an advisory warning on the root logger for every model.
        root_logger = logging.getLogger()
        level = root_logger.level
        root_logger.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(staged), str(out), op_types_to_quantize=ops,
                             per_channel=per_channel, weight_type=QuantType.QInt8,
                             use_external_data_format=model_bytes(staged) > _EXTERNAL_ABOVE,
                             # NOTE: offline-optimised stages hold com.microsoft fused ops that
                             # shape inference cannot type; their outputs are float32.
                             extra_options={"DefaultTensorType": 1})
        except Exception as exc:
            raise ExportError(f"int8 quantisation of {src.name} failed: {exc}") from exc
        finally:
            root_logger.setLevel(level)
        # NOTE: re-saved rather than moved: external data records its file name inside the
        # model, so it must be written under dst's name (dst may also be src itself).
        _save(_load(out), dst)
