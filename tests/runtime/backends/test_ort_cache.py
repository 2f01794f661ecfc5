"""onnxruntime's optimised graph of a large model, kept for later loads (``--ort-cache``).

A real model over the 64 MB line (a float16 weight behind a ``Cast``, as comfyc exports
large stages) is loaded three ways: without a cache, with an empty cache (onnxruntime
optimises it and writes the optimised graph), and from the kept graph. All three must give
the same bits; a changed model file, a damaged entry and a folder that cannot be written
must each fall back to the model file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper

from comfyc.runtime.backends.ort import MEMORY_PATTERN_MAX_BYTES, OrtSession

SIZE = 6000  # 6000 x 6000 float16: 72 MB of external data


def _large_model(path: Path, seed: int = 0) -> None:
    """``y = relu(x @ cast(W16))`` with W stored as float16 external data."""
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((SIZE, SIZE)) / SIZE ** 0.5).astype(np.float16)
    init = numpy_helper.from_array(weight, "w16")
    nodes = [helper.make_node("Cast", ["w16"], ["w"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Relu", ["m"], ["y"])]
    graph = helper.make_graph(
        nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", SIZE])], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.add(key="comfyc.stage", value="unet")
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=0)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("large") / "big.onnx"
    _large_model(path)
    assert path.stat().st_size + Path(str(path) + ".data").stat().st_size \
        > MEMORY_PATTERN_MAX_BYTES
    return path


def _out(session: OrtSession) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((3, SIZE)).astype(np.float32)
    return session.run({"x": x})[0]


def test_a_kept_graph_loads_and_gives_the_same_bits(large: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    plain = OrtSession(large, intra_op_threads=1)
    assert plain.graph_source == "file"
    first = OrtSession(large, intra_op_threads=1, optimized_cache=cache)
    assert first.graph_source == "saved"
    (entry,) = [p for p in cache.iterdir()]
    assert entry.name.startswith("big-")
    assert {p.name for p in entry.iterdir()} == {"model.onnx", "model.onnx.data", "complete"}
    facts = json.loads((entry / "complete").read_text())
    assert set(facts["files"]) == {"big.onnx", "big.onnx.data"} and facts["onnxruntime"]
    # The optimised graph folded the cast: float32 weights in its external data.
    assert (entry / "model.onnx.data").stat().st_size >= SIZE * SIZE * 4
    second = OrtSession(large, intra_op_threads=1, optimized_cache=cache)
    assert second.graph_source == "cache"
    assert second.metadata.get("comfyc.stage") == "unet"
    assert second.inputs == plain.inputs and second.output_names == plain.output_names
    reference = _out(plain)
    np.testing.assert_array_equal(_out(first), reference)
    np.testing.assert_array_equal(_out(second), reference)


def test_a_changed_model_gets_a_new_entry(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    _large_model(path, seed=0)
    cache = tmp_path / "cache"
    assert OrtSession(path, intra_op_threads=1, optimized_cache=cache).graph_source == "saved"
    _large_model(path, seed=1)  # the same names, other weights (a recompiled artifact)
    again = OrtSession(path, intra_op_threads=1, optimized_cache=cache)
    assert again.graph_source == "saved"
    assert len(list(cache.iterdir())) == 2
    np.testing.assert_array_equal(_out(again), _out(OrtSession(path, intra_op_threads=1)))


def test_a_damaged_entry_is_made_again(large: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    OrtSession(large, intra_op_threads=1, optimized_cache=cache)
    (entry,) = list(cache.iterdir())
    (entry / "model.onnx.data").write_bytes(b"\0" * 16)  # truncated
    session = OrtSession(large, intra_op_threads=1, optimized_cache=cache)
    assert session.graph_source == "saved"
    assert (entry / "model.onnx.data").stat().st_size >= SIZE * SIZE * 4
    np.testing.assert_array_equal(_out(session), _out(OrtSession(large, intra_op_threads=1)))


def test_an_unwritable_folder_loads_the_model_file(large: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    session = OrtSession(large, intra_op_threads=1, optimized_cache=blocker / "cache")
    assert session.graph_source == "file"
    assert _out(session).shape == (3, SIZE)


def test_a_graph_that_cannot_be_written_loads_the_model_file(
        large: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime failing to write the optimised graph (a full disk) leaves no temporary
    folder, and the session is made from the model file with options that write nothing."""
    import onnxruntime as ort

    real = ort.InferenceSession

    def failing(path: str, options: object, **kwargs: object) -> object:
        if getattr(options, "optimized_model_filepath", ""):
            raise RuntimeError("No space left on device")
        return real(path, options, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", failing)
    cache = tmp_path / "cache"
    session = OrtSession(large, intra_op_threads=1, optimized_cache=cache)
    assert session.graph_source == "file"
    assert list(cache.iterdir()) == []
    assert _out(session).shape == (3, SIZE)


def test_small_models_and_overrides_do_not_use_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "small.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    cache = tmp_path / "cache"
    assert OrtSession(path, optimized_cache=cache).graph_source == "file"
    assert not cache.exists()


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/txt2img.cfy compiled at 2 steps (its prompt a param: a text encoder too)."""
    import re

    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.frontends.dsl import parse_dsl

    repo = Path(__file__).resolve().parents[3]
    text = re.sub(r"steps=\d+", "steps=2", (repo / "examples" / "txt2img.cfy").read_text())
    out = tmp_path_factory.mktemp("tiny") / "tiny.comfyc"
    compile_graph(parse_dsl(text, "txt2img.cfy", default_catalog()), out, CompileOptions())
    return out


def test_load_passes_the_artifact_cache_folder(tiny_artifact: Path) -> None:
    """``load(..., ort_cache=True)`` gives the ONNX stages ``ARTIFACT/cache/ort-cpu`` (the
    tiny model's stages are small, so nothing is written there)."""
    from comfyc.runtime.artifact import load

    program = load(tiny_artifact, ort_cache=True)
    sessions = [s.session for s in program.stages.values() if hasattr(s, "session")]
    assert sessions
    for session in sessions:
        assert getattr(session, "optimized_cache", None) == tiny_artifact / "cache" / "ort-cpu"
    assert not (tiny_artifact / "cache" / "ort-cpu").exists()
    program.run({}, save=False)


def test_the_cli_flag() -> None:
    import argparse

    from comfyc.cli.commands.tune import add_ort_arguments, ort_options_from_args

    parser = argparse.ArgumentParser()
    add_ort_arguments(parser)
    assert ort_options_from_args(parser.parse_args([])).get("ort_cache") is None
    assert ort_options_from_args(parser.parse_args(["--ort-cache"]))["ort_cache"] is True
    assert ort_options_from_args(parser.parse_args(["--ort-cache", "/x"]))["ort_cache"] == "/x"
