"""float16 and int8 copies of ONNX stages (compiler/lowering/precision.py), on tiny graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from comfyc.compiler.errors import ExportError
from comfyc.compiler.lowering.onnx_export import model_bytes
from comfyc.compiler.lowering.precision import quantize_int8, to_fp16


def conv_matmul_model(path: Path, dtype: int = onnx.TensorProto.FLOAT) -> None:
    """``y = (conv(x) reshaped) @ w``: a Conv and a MatMul with float weights."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    conv_w = rng.standard_normal((8, 4, 3, 3)).astype(np_dtype) * 0.2
    mat_w = rng.standard_normal((8 * 6 * 6, 64)).astype(np_dtype) * 0.05
    shape = np.array([1, 8 * 6 * 6], np.int64)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "cw"], ["c"]),
         helper.make_node("Reshape", ["c", "shape"], ["r"]),
         helper.make_node("MatMul", ["r", "mw"], ["y"])], "g",
        [helper.make_tensor_value_info("x", dtype, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", dtype, [1, 64])],
        [numpy_helper.from_array(conv_w, "cw"), numpy_helper.from_array(mat_w, "mw"),
         numpy_helper.from_array(shape, "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save_model(model, str(path))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    conv_matmul_model(path)
    return path


def test_to_fp16_halves_weights_and_keeps_float32_io(model: Path, tmp_path: Path) -> None:
    """Weights become float16, inputs/outputs stay float32, results agree to fp16 precision."""
    dst = tmp_path / "m.fp16.onnx"
    to_fp16(model, dst)
    converted = onnx.load(str(dst))
    floats = {t.name: t.data_type for t in converted.graph.initializer if t.name != "shape"}
    assert set(floats.values()) == {onnx.TensorProto.FLOAT16}
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert converted.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model_bytes(dst) < 0.6 * model_bytes(model)
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(dst, x), _run(model, x), atol=2e-2, rtol=2e-2)


def test_quantize_int8_stores_int8_weights(model: Path, tmp_path: Path) -> None:
    """MatMul weights become int8 (Conv only with conv=True); outputs stay close."""
    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    reference = _run(model, x)
    for conv in (False, True):
        dst = tmp_path / f"m.int8.{conv}.onnx"
        quantize_int8(model, dst, conv=conv)
        quantized = onnx.load(str(dst))
        int8 = [t.name for t in quantized.graph.initializer
                if t.data_type == onnx.TensorProto.INT8]
        assert any(name.startswith("mw") for name in int8)
        assert any(name.startswith("cw") for name in int8) == conv
        out = _run(dst, x)
        assert np.abs(out - reference).max() <= 0.05 * np.abs(reference).max()
    assert model_bytes(tmp_path / "m.int8.True.onnx") < 0.4 * model_bytes(model)
    quantize_int8(model, model)  # in place, as `comfyc compile --quantize int8` does
    stored = onnx.load(str(model)).graph.initializer
    assert any(t.data_type == onnx.TensorProto.INT8 for t in stored)


def test_precision_errors_say_what_to_do(model: Path, tmp_path: Path) -> None:
    """A missing source, an in-place fp16 conversion and int8 from fp16 are clear errors."""
    with pytest.raises(ExportError, match="does not exist"):
        to_fp16(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    with pytest.raises(ExportError, match="writes a copy"):
        to_fp16(model, model)
    half = tmp_path / "half.onnx"
    conv_matmul_model(half, onnx.TensorProto.FLOAT16)
    with pytest.raises(ExportError, match="starts from a float32 stage"):
        quantize_int8(half, tmp_path / "q.onnx")
