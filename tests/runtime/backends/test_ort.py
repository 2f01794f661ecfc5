"""The onnxruntime backend: provider checks, dtype casting, shape errors, weight overrides.

The UNet used here is the tiny SD1.x-shaped one of the export tests, exported once per module.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from comfyc.runtime.backends.base import BackendError
from comfyc.runtime.backends.ort import (
    OrtSession,
    OrtUNet,
    OrtVaeDecoder,
    backend_name,
    providers_for_backend,
    resolve_providers,
)

TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


# --------------------------------------------------------------------------- small models
def matmul_model(path: Path, *, dtype: int = onnx.TensorProto.FLOAT, external: bool = False,
                 static_batch: bool = False) -> np.ndarray:
    """Write ``y = x @ w`` (w a 4x3 initializer named ``w``); return w as float32."""
    from onnx import helper, numpy_helper

    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    weight = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    batch: int | str = 2 if static_batch else "batch"
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", dtype, [batch, 4])],
        [helper.make_tensor_value_info("y", dtype, [batch, 3])],
        [numpy_helper.from_array(weight.astype(np_dtype), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save_model(model, str(path), save_as_external_data=external,
                    location=path.name + ".data", size_threshold=0)
    return weight


@pytest.fixture(scope="module")
def torch_unet() -> Any:
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32).eval()


@pytest.fixture(scope="module")
def unet_file(torch_unet: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A static 1x4x8x8 UNet export with its weights as external data (overridable)."""
    torch = pytest.importorskip("torch")
    from comfyc.compiler.lowering.onnx_export import export_unet

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # NOTE: tiny models trace fastest on one thread
    path = tmp_path_factory.mktemp("ort") / "unet.onnx"
    facts = export_unet(torch_unet, path, batch=1, height=8, width=8, external_data=True)
    torch.set_num_threads(threads)
    assert facts["data_path"] == str(path) + ".data"
    yield path


def unet_args(batch: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return (rng.standard_normal((batch, 4, 8, 8), dtype=np.float32),
            np.full((batch,), 321.0, dtype=np.float32),
            rng.standard_normal((batch, 77, 32), dtype=np.float32))


# --------------------------------------------------------------------------- providers
def test_import_needs_neither_onnxruntime_nor_torch() -> None:
    """Importing the backend is free; creating a session without onnxruntime says what to do."""
    code = textwrap.dedent("""
        import sys
        sys.modules["onnxruntime"] = None
        sys.modules["torch"] = None
        from comfyc.runtime.backends import ort
        from comfyc.runtime.backends.base import BackendError
        assert ort.backend_name("cuda") == "ort-cuda"
        try:
            ort.OrtSession("missing.onnx")
        except BackendError as error:
            print(error)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "onnxruntime is not installed" in result.stdout
    assert "comfyc[cpu]" in result.stdout


def test_backend_names_and_aliases() -> None:
    """Aliases expand to provider names; the backend is named after the first provider."""
    assert resolve_providers("cuda") == ["CUDAExecutionProvider"]
    assert resolve_providers([("TensorRT", {"trt_fp16_enable": "1"}), "cpu"]) == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": "1"}), "CPUExecutionProvider"]
    assert backend_name(["CPUExecutionProvider"]) == "ort-cpu"
    assert backend_name(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "ort-cuda"
    assert backend_name("tensorrt") == "ort-tensorrt"
    assert backend_name(["FooExecutionProvider"]) == "ort-foo"
    with pytest.raises(BackendError, match="no execution provider"):
        resolve_providers([])


def test_providers_for_backend_names() -> None:
    """Backend names map to providers, and back; unknown names list the known ones."""
    assert providers_for_backend("ort") == ["CPUExecutionProvider"]
    assert providers_for_backend("ort-cpu") == ["CPUExecutionProvider"]
    assert providers_for_backend("ort-cuda") == ["CUDAExecutionProvider"]
    assert providers_for_backend("ort-tensorrt") == ["TensorrtExecutionProvider",
                                                     "CUDAExecutionProvider"]
    for name in ("ort-cpu", "ort-cuda", "ort-tensorrt", "ort-openvino"):
        assert backend_name(providers_for_backend(name)) == name
    with pytest.raises(BackendError, match="unknown onnxruntime backend 'ort-foo'.*ort-cuda"):
        providers_for_backend("ort-foo")
    with pytest.raises(BackendError, match="'torch' is not an onnxruntime backend"):
        providers_for_backend("torch")


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime build has CUDA")
def test_missing_cuda_provider_is_an_error(tmp_path: Path) -> None:
    """Asking for CUDA on a CPU-only onnxruntime raises instead of running on the CPU."""
    matmul_model(tmp_path / "m.onnx")
    with pytest.raises(BackendError) as caught:
        OrtSession(tmp_path / "m.onnx", providers=["CUDAExecutionProvider"])
    message = str(caught.value)
    assert "CUDAExecutionProvider was asked for" in message
    assert "CPUExecutionProvider" in message  # what is available
    assert "comfyc[gpu]" in message and "onnxruntime-gpu" in message


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime build has CUDA")
def test_silent_fallback_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A provider that the build lists but that does not start is caught after creation."""
    matmul_model(tmp_path / "m.onnx")
    listed = [*ort.get_available_providers(), "CUDAExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    with pytest.warns(UserWarning), pytest.raises(
            BackendError, match="session for m.onnx runs on CPUExecutionProvider"):
        OrtSession(tmp_path / "m.onnx", providers=["cuda"])


def test_cpu_session(tmp_path: Path) -> None:
    """The CPU session is active, runs, and names its backend ort-cpu."""
    weight = matmul_model(tmp_path / "m.onnx")
    session = OrtSession(tmp_path / "m.onnx", providers="cpu", intra_op_threads=1)
    assert session.active_providers == ["CPUExecutionProvider"]
    assert session.backend == "ort-cpu"
    x = np.ones((3, 4), dtype=np.float64)  # cast to the declared float32
    (y,) = session.run({"x": x})
    assert y.dtype == np.float32 and np.allclose(y, x @ weight)


# --------------------------------------------------------------------------- dtypes, shapes
def test_float16_model_takes_and_returns_float32(tmp_path: Path) -> None:
    """Inputs are cast to a float16 model's dtype and outputs come back as float32."""
    weight = matmul_model(tmp_path / "h.onnx", dtype=onnx.TensorProto.FLOAT16)
    session = OrtSession(tmp_path / "h.onnx", intra_op_threads=1)
    assert session.inputs["x"][0] is np.float16
    x = np.full((2, 4), 0.5, dtype=np.float32)
    (y,) = session.run({"x": x})
    assert y.dtype == np.float32 and np.allclose(y, x @ weight, atol=1e-2)


def test_static_shape_mismatch_says_how_to_fix(tmp_path: Path) -> None:
    """Feeding a static model another shape names both shapes and the fix."""
    matmul_model(tmp_path / "s.onnx", static_batch=True)
    session = OrtSession(tmp_path / "s.onnx")
    with pytest.raises(BackendError,
                       match=r"shape \[3, 4\].*exported for \[2, 4\].*compile --dynamic"):
        session.run({"x": np.zeros((3, 4), np.float32)})
    with pytest.raises(BackendError, match=r"needs inputs \['x'\]"):
        session.run({"y": np.zeros((2, 4), np.float32)})


def test_missing_file_and_bad_level(tmp_path: Path) -> None:
    """A missing file and an unknown optimization level are reported plainly."""
    with pytest.raises(BackendError, match="does not exist"):
        OrtSession(tmp_path / "nope.onnx")
    matmul_model(tmp_path / "m.onnx")
    with pytest.raises(BackendError, match="expected one of disable, basic, extended, all"):
        OrtSession(tmp_path / "m.onnx", optimization_level="max")


# --------------------------------------------------------------------------- overrides
def test_override_external_weight(tmp_path: Path) -> None:
    """An external initializer is replaced before optimization, at the default level."""
    matmul_model(tmp_path / "e.onnx", external=True)
    new = np.ones((4, 3), dtype=np.float32)
    session = OrtSession(tmp_path / "e.onnx", initializer_overrides={"w": new})
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert np.allclose(session.run({"x": x})[0], x @ new)


def test_override_float32_weights_into_float16_model(tmp_path: Path) -> None:
    """float32 overrides fit a float16 model: by weights_dtype, or by the automatic retry."""
    matmul_model(tmp_path / "h.onnx", dtype=onnx.TensorProto.FLOAT16, external=True)
    new = np.full((4, 3), 0.25, dtype=np.float32)
    x = np.ones((1, 4), dtype=np.float32)
    for dtype in ("float16", None):
        session = OrtSession(tmp_path / "h.onnx", initializer_overrides={"w": new},
                             weights_dtype=dtype)
        assert np.allclose(session.run({"x": x})[0], 1.0)


def test_override_errors(tmp_path: Path) -> None:
    """Inline weights, unknown names and wrong shapes each get an explanation and a fix."""
    matmul_model(tmp_path / "inline.onnx")
    with pytest.raises(BackendError, match="re-export the stage with external_data=True"):
        OrtSession(tmp_path / "inline.onnx", initializer_overrides={"w": np.ones((4, 3))})
    matmul_model(tmp_path / "e.onnx", external=True)
    with pytest.raises(BackendError, match="'to_q.weight' names no weight of e.onnx"):
        OrtSession(tmp_path / "e.onnx",
                   initializer_overrides={"to_q.weight": np.ones((4, 3), np.float32)})
    with pytest.raises(BackendError, match=r"does not fit e.onnx.*w \[3, 4\] float32"):
        OrtSession(tmp_path / "e.onnx", initializer_overrides={"w": np.ones((3, 4), np.float32)})


def test_unet_to_q_override_changes_output_like_torch(torch_unet: Any, unet_file: Path) -> None:
    """Overriding a UNet's to_q.weight by its torch name gives the torch output for that weight."""
    import copy

    import torch

    from comfyc.runtime.backends.torch import TorchUNet

    args = unet_args()
    base = OrtUNet("unet", unet_file, intra_op_threads=1)
    assert base.backend == "ort-cpu" and base.info["stage"] == "unet"
    before = base(*args)
    original = torch_unet.get_parameter(TO_Q).detach().numpy()
    new = (original * 3.0 + 0.1).astype(np.float32)
    changed = OrtUNet("unet", unet_file, intra_op_threads=1,
                      initializer_overrides={TO_Q: new})
    after = changed(*args)
    edited = copy.deepcopy(torch_unet)
    with torch.no_grad():
        edited.get_parameter(TO_Q).copy_(torch.from_numpy(new))
    want = TorchUNet("unet", edited)(*args)
    assert np.abs(after - before).max() > 1e-2
    assert np.abs(after - want).max() < 1e-4
    assert np.abs(before - TorchUNet("unet", torch_unet)(*args)).max() < 1e-4


# --------------------------------------------------------------------------- stages
def test_unet_stage_timesteps_and_shapes(unet_file: Path) -> None:
    """One timestep is broadcast over the batch; a static stage rejects other sizes."""
    session = OrtSession(unet_file, intra_op_threads=1)
    stage = OrtUNet("unet", session)
    sample, steps, context = unet_args()
    assert np.array_equal(stage(sample, steps, context), stage(sample, steps[0], context))
    assert np.array_equal(stage(sample, steps, context), stage(sample, steps[:1], context))
    with pytest.raises(BackendError, match="got 2 timesteps for a batch of 1"):
        stage(sample, np.array([1.0, 2.0], np.float32), context)
    with pytest.raises(BackendError, match=r"input sample has shape \[1, 4, 9, 9\]"):
        stage(np.zeros((1, 4, 9, 9), np.float32), steps, context)


def test_stage_backend_names(unet_file: Path) -> None:
    """Stages take a backend name (as the artifact reader passes it) or explicit providers."""
    assert OrtUNet("unet", unet_file, backend="ort-cpu").backend == "ort-cpu"
    assert OrtUNet("unet", unet_file).session.providers == ["CPUExecutionProvider"]
    if not HAS_CUDA:
        with pytest.raises(BackendError, match="CUDAExecutionProvider was asked for"):
            OrtUNet("unet", unet_file, backend="ort-cuda")


def test_stage_kind_is_checked(unet_file: Path, tmp_path: Path) -> None:
    """A file exported for one stage kind cannot be loaded as another."""
    with pytest.raises(BackendError, match="exported as a unet stage.*vae_decoder stage 'vd'"):
        OrtVaeDecoder("vd", unet_file)
    matmul_model(tmp_path / "m.onnx")
    with pytest.raises(BackendError, match=r"a vae_decoder stage needs inputs \['latent'\]"):
        OrtVaeDecoder("vd", tmp_path / "m.onnx")
