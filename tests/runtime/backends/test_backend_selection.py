"""Choosing backends per stage: maps, clear errors for what is missing, ORT tuning options."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from comfyc.runtime import artifact
from comfyc.runtime.artifact import (
    _check_backend_keys,
    _parse_backend,
    _stage_file,
    _tensorrt_ep,
    backend_unavailable_reason,
    make_stage,
    parse_backend_spec,
)
from comfyc.runtime.backends import ort as ort_backend
from comfyc.runtime.backends.base import BackendError
from comfyc.runtime.backends.ort import OrtSession
from comfyc.runtime.manifest import Manifest, StageEntry

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()

def _entry(data: dict) -> StageEntry:  # type: ignore[type-arg]
    return StageEntry.from_json(data, "test")


MANIFEST = Manifest("test", stages={name: _entry(data) for name, data in {
    "unet_ab": {"kind": "unet", "file": "stages/unet_ab.onnx"},
    "text_encoder_ab": {"kind": "text_encoder_layers",
                        "layers": {"-1": {"kind": "text_encoder", "name": "text_encoder_ab_L1"}}},
    "vae_encoder_ab": {"kind": "vae_encoder", "unused": True},
    "vae_decoder_ab": {"kind": "vae_decoder", "file": "stages/vae_decoder_ab.onnx"},
}.items()})


def test_backend_spec_one_name_or_a_map() -> None:
    """One name applies everywhere; a map picks by stage name, then kind, then *, then plan."""
    assert parse_backend_spec("ort-cpu") == "ort-cpu"
    spec = "unet=ort-cuda, vae_decoder=torch,*=ort-cpu"
    assert parse_backend_spec(spec) == {"unet": "ort-cuda", "vae_decoder": "torch",
                                        "*": "ort-cpu"}
    assert _parse_backend(spec, "unet_ab", "unet", "x") == "ort-cuda"
    assert _parse_backend("unet_ab=trt,unet=torch", "unet_ab", "unet", "x") == "trt"
    assert _parse_backend(spec, "text_encoder_ab_L1", "text_encoder", "x") == "ort-cpu"
    assert _parse_backend("unet=torch", "vae_decoder_ab", "vae_decoder", "plan") == "plan"
    assert _parse_backend(None, "unet_ab", "unet", "plan") == "plan"
    with pytest.raises(BackendError, match="STAGE=BACKEND"):
        parse_backend_spec("unet=ort-cpu,vae_decoder")


def test_map_keys_must_name_stages_or_kinds() -> None:
    """A typo in a map key is an error listing the kinds and this artifact's stage names."""
    _check_backend_keys("unet=ort-cpu,text_encoder_ab_L1=torch,vae_encoder=torch,*=torch",
                        MANIFEST)
    with pytest.raises(BackendError) as info:
        _check_backend_keys("unt=ort-cpu,vae_encoder_ab=torch", MANIFEST)
    message = str(info.value)
    assert "'unt'" in message and "'vae_encoder_ab'" in message  # an unused stage: no target
    assert "unet, text_encoder, vae_decoder, vae_encoder" in message
    assert "unet_ab, text_encoder_ab_L1, vae_decoder_ab" in message


def test_unavailable_backends_name_what_is_missing() -> None:
    """Asking for a GPU backend here says which package/provider/device is missing."""
    assert backend_unavailable_reason("ort-cpu") is None
    assert backend_unavailable_reason("torch") is None
    if not HAS_CUDA:
        why = backend_unavailable_reason("ort-cuda")
        assert why and "CUDAExecutionProvider" in why and "onnxruntime-gpu" in why
        why = backend_unavailable_reason("ort-trt")
        assert why and "TensorrtExecutionProvider" in why
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt" in (backend_unavailable_reason("trt") or "")
    assert "unknown backend 'fast'" in (backend_unavailable_reason("fast") or "")
    assert "unknown onnxruntime backend" in (backend_unavailable_reason("ort-bogus") or "")


def test_trt_without_tensorrt_is_a_clear_error(tmp_path: Path) -> None:
    """make_stage(trt) without a TensorRT runtime names the extra to install."""
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(BackendError, match=r"comfyc\[tensorrt\]"):
        make_stage(tmp_path, "unet_ab", _entry({"kind": "unet", "file": "stages/u.onnx"}),
                   "trt")


def test_torch_cuda_without_gpu_is_a_clear_error() -> None:
    """torch-cuda on a machine without CUDA says torch sees no device."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    why = backend_unavailable_reason("torch-cuda")
    assert why and "torch.cuda.is_available() is False" in why


def test_fp16_variant_is_the_default_on_gpu_providers_only() -> None:
    """An entry's fp16 variant runs on GPU providers; the CPU keeps fp32 unless asked."""
    entry = _entry({"kind": "unet", "file": "stages/u.onnx",
                    "variants": {"fp16": "stages/u.fp16.onnx"}})
    assert _stage_file(entry, "ort-cpu", None) == "stages/u.onnx"
    assert _stage_file(entry, "ort-cuda", None) == "stages/u.fp16.onnx"
    assert _stage_file(entry, "ort-cuda", "fp32") == "stages/u.onnx"
    assert _stage_file(entry, "ort-cpu", "fp16") == "stages/u.fp16.onnx"
    with pytest.raises(BackendError, match="--gpu-fp16"):
        _stage_file(_entry({"kind": "unet", "file": "stages/u.onnx"}), "ort-cuda", "fp16")


def test_ort_trt_engine_cache_lives_in_the_artifact(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The TensorRT EP gets engine and timing caches under ARTIFACT/cache/ort-trt."""
    monkeypatch.setattr(ort_backend, "available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                 "CPUExecutionProvider"])
    providers = _tensorrt_ep(tmp_path, ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
                             _entry({"kind": "unet", "facts": {"weights_dtype": "float16"}}))
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider" and providers[1] == "CUDAExecutionProvider"
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache" / "ort-trt")
    assert options["trt_engine_cache_enable"] == "True" and options["trt_fp16_enable"] == "True"
    assert (tmp_path / "cache" / "ort-trt").is_dir()


def test_io_binding_gives_the_same_outputs(tmp_path: Path) -> None:
    """IO binding (the CUDA default) is exercised on the CPU: same results as session.run."""
    from tests.runtime.backends.test_ort import matmul_model

    path = tmp_path / "m.onnx"
    weight = matmul_model(path)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    bound = OrtSession(path, io_binding=True, intra_op_threads=1, inter_op_threads=1,
                       optimization_level="basic")
    plain = OrtSession(path)
    assert bound.io_binding and not plain.io_binding
    np.testing.assert_allclose(bound.run({"x": x})[0], plain.run({"x": x})[0], rtol=1e-6)
    np.testing.assert_allclose(bound.run({"x": x})[0], x @ weight, rtol=1e-5)


@pytest.mark.gpu
def test_ort_cuda_is_really_active(tmp_path: Path) -> None:
    """On a GPU with onnxruntime-gpu: the CUDA provider is active and IO binding is on."""
    from tests.runtime.backends.test_ort import matmul_model

    path = tmp_path / "m.onnx"
    matmul_model(path)
    session = OrtSession(path, providers=ort_backend.providers_for_backend("ort-cuda"))
    assert session.active_providers[0] == "CUDAExecutionProvider" and session.io_binding


def test_artifact_module_exports() -> None:
    """The public helpers the compiler and commands use are exported."""
    for name in ("make_stage", "write_manifest", "manifest_hash", "stage_entries",
                 "backend_unavailable_reason", "BACKENDS"):
        assert name in artifact.__all__
