"""The compiler writes a UNet's sampler-step graph beside it, over the same weights (issue #22).

What the step graph computes is checked against the numpy samplers in
``tests/runtime/backends/test_step_graph.py``; these tests check what the compiler writes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.errors import ExportError
from comfyc.compiler.lowering import step_graph
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.frontends.dsl import parse_dsl
from comfyc.runtime.artifact import read_manifest

REPO = Path(__file__).resolve().parents[3]


def compile_tiny(out: Path, **options: object) -> Path:
    text = re.sub(r"steps=\d+", "steps=2", (REPO / "examples" / "txt2img.cfy").read_text())
    compile_graph(parse_dsl(text, "txt2img.cfy", default_catalog()), out,
                  CompileOptions(**options))  # type: ignore[arg-type]
    return out


def unet_entry(root: Path) -> object:
    return next(e for e in read_manifest(root).stages.values() if e.kind == "unet")


def float_initializers(path: Path) -> tuple[list[str], list[str]]:
    """(inline, external) floating-point initializer names of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    inline, external = [], []
    for tensor in model.graph.initializer:
        if tensor.data_type in floats:
            (external if tensor.data_location == TensorProto.EXTERNAL else inline).append(
                tensor.name)
    return inline, external


def test_step_graph_shares_the_unets_weights(tmp_path: Path) -> None:
    """The default compile writes ``NAME.step.onnx``: the UNet's graph and the step heads,
    every weight read from the UNet's own data file, no weight stored twice."""
    root = compile_tiny(tmp_path / "a.comfyc")
    entry = unet_entry(root)
    step = root / entry.variants["step"]
    plain = root / str(entry.file)
    inline, external = float_initializers(step)
    assert not inline and external
    assert float_initializers(plain) == ([], external)
    data = {e.value for t in onnx.load(str(step), load_external_data=False).graph.initializer
            for e in t.external_data if e.key == "location"}
    assert data == {plain.name + ".data"}
    model = onnx.load(str(step), load_external_data=False)
    assert [v.name for v in model.graph.output] == list(step_graph.OUTPUTS)
    assert {"step_x", "step_coefs", "step_old"} <= {v.name for v in model.graph.input}
    assert "sample" not in {v.name for v in model.graph.input}
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["comfyc.step_prediction"] == "eps" and meta["comfyc.stage"] == "unet"
    # A step graph is a few hundred KB of graph; the weights are megabytes.
    assert step.stat().st_size < (plain.parent / (plain.name + ".data")).stat().st_size / 4


def test_off_and_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``step_graph="off"`` writes none (and leaves the weights inside the small UNet file);
    ``auto`` skips a UNet over ``STEP_GRAPH_MAX_BYTES``, which ``on`` does not."""
    off = compile_tiny(tmp_path / "off.comfyc", step_graph="off")
    assert "step" not in unet_entry(off).variants
    assert not list((off / "stages").glob("*.step.onnx"))
    monkeypatch.setattr(step_graph, "STEP_GRAPH_MAX_BYTES", 1000)
    assert "step" not in unet_entry(compile_tiny(tmp_path / "auto.comfyc")).variants
    assert "step" in unet_entry(compile_tiny(tmp_path / "on.comfyc", step_graph="on")).variants
    with pytest.raises(ExportError, match="auto, on or off"):
        compile_tiny(tmp_path / "bad.comfyc", step_graph="yes")


def tiny_graph(path: Path, inputs: list[str], opset: int = 18) -> Path:
    """A stand-in UNet ``out_sample = sample * 2`` (plus unused extra inputs)."""
    f32 = TensorProto.FLOAT
    values = [helper.make_tensor_value_info(name, f32, None) for name in inputs]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["sample", "two"], ["out_sample"])], "unet", values,
        [helper.make_tensor_value_info("out_sample", f32, None)],
        [helper.make_tensor("two", f32, [], [2.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save_model(model, str(path))
    return path


def test_refuses_what_it_cannot_wrap(tmp_path: Path) -> None:
    """ControlNet inputs, other outputs, an old opset or an unknown prediction: a clear
    ExportError (``auto`` then compiles without a step graph)."""
    base = ["sample", "timestep", "encoder_hidden_states"]
    with pytest.raises(ExportError, match="control_0"):
        step_graph.write_step_graph(tiny_graph(tmp_path / "c.onnx", [*base, "control_0"]), "eps")
    with pytest.raises(ExportError, match="opset 18"):
        step_graph.write_step_graph(tiny_graph(tmp_path / "o.onnx", base, opset=17), "eps")
    with pytest.raises(ExportError, match="prediction type 'x0'"):
        step_graph.write_step_graph(tiny_graph(tmp_path / "p.onnx", base), "x0")
    step = step_graph.write_step_graph(tiny_graph(tmp_path / "ok.onnx", base), "v_prediction")
    assert step.name == "ok.step.onnx"
    # The stand-in's inline weight moved to its data file.
    assert float_initializers(tmp_path / "ok.onnx") == ([], ["two"])
