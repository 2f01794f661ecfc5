"""Threads chosen deliberately: never more than the free cores by default, no spinning."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from comfyc.runtime.backends import threads


@pytest.mark.parametrize("load,cores,free", [(0.0, 2, 2), (0.9, 2, 1), (1.4, 2, 1),
                                             (9.0, 2, 1), (2.6, 8, 5), (0.2, 1, 1)])
def test_free_cores_leave_the_busy_ones(monkeypatch: pytest.MonkeyPatch, load: float,
                                        cores: int, free: int) -> None:
    """cores - round(load), at least 1."""
    monkeypatch.setattr(threads, "cores", lambda: cores)
    assert threads.free_cores(load) == free


def test_choose_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit count is honoured up to the cores; none means the free cores."""
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 0.0, 0.0))
    assert threads.choose_threads() == 1 and threads.choose_threads(0) == 1
    assert threads.choose_threads(2) == 2 and threads.choose_threads(16) == 4


def test_passive_openmp_keeps_an_explicit_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    threads.passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    threads.passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def _relu_models(monkeypatch: pytest.MonkeyPatch, *paths: Path) -> list[object]:
    """Writes a one-Relu ONNX model to each of ``paths``; returns the list that collects the
    SessionOptions of every InferenceSession made from then on (a spy)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    for path in paths:
        onnx.save(model, str(path))
    seen: list[object] = []
    real = ort.InferenceSession

    def spy(model_path: str, options: object, **kwargs: object) -> object:
        seen.append(options)
        return real(model_path, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    return seen


def test_ort_session_threads_and_no_spinning(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """OrtSession takes the chosen count and turns spinning off (its session options)."""
    ort = pytest.importorskip("onnxruntime")
    from comfyc.runtime.backends import ort as ort_backend

    path = tmp_path / "relu.onnx"
    seen = _relu_models(monkeypatch, path)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 0.0, 0.0))
    session = ort_backend.OrtSession(path)
    assert session.threads == 1 and seen[-1].intra_op_num_threads == 1
    config = seen[-1].get_session_config_entry("session.intra_op.allow_spinning")
    assert config == "0"
    # The CPU memory arena, shared by the process's sessions; memory patterns for a small
    # model (the tiny model's fastest).
    assert seen[-1].enable_cpu_mem_arena is True
    assert seen[-1].enable_mem_pattern is True
    assert ort_backend.shared_cpu_arena(ort) is True
    assert seen[-1].get_session_config_entry("session.use_env_allocators") == "1"
    assert ort_backend.OrtSession(path, intra_op_threads=2).threads == 2


def test_large_models_run_without_memory_patterns(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose file and external data pass MEMORY_PATTERN_MAX_BYTES gets the CPU arena
    without memory patterns (the SD1.5-size UNet: a 31 s second call and 2.2 GB more peak
    with them); its data files are found by the model's name, a step graph's included."""
    from comfyc.runtime.backends import ort as ort_backend

    small, step = tmp_path / "unet_1.onnx", tmp_path / "unet_1.step.onnx"
    seen = _relu_models(monkeypatch, small, step, tmp_path / "other.onnx")
    ort_backend.OrtSession(small)
    assert seen[-1].enable_mem_pattern is True
    limit = ort_backend.MEMORY_PATTERN_MAX_BYTES
    with open(tmp_path / "unet_1.onnx.data", "wb") as data:
        data.truncate(limit + 1)  # sparse: no disk used
    assert ort_backend.model_bytes(small) == small.stat().st_size + limit + 1
    assert ort_backend.model_bytes(step) == step.stat().st_size + limit + 1
    assert ort_backend.model_bytes(tmp_path / "other.onnx") < limit
    for path in (small, step):
        session = ort_backend.OrtSession(path)
        assert seen[-1].enable_cpu_mem_arena is True
        assert seen[-1].enable_mem_pattern is False
        x = np.array([-1.0, 2.0], np.float32)
        assert session.run({"x": x})[0].tolist() == [0.0, 2.0]
    ort_backend.OrtSession(tmp_path / "other.onnx")
    assert seen[-1].enable_mem_pattern is True
