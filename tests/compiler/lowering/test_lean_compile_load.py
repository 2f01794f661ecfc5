"""Lean compile load (issue #22): a checkpoint whose UNet is float16 keeps it in float16 while
an ONNX-only, LoRA-free workflow compiles (the UNet never runs there), and the stage files are
byte-identical to those of the ordinary float32 load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering import artifact
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.frontends.dsl import parse_dsl

REPO = Path(__file__).resolve().parents[3]


def _graph() -> object:
    text = re.sub(r"steps=\d+", "steps=2", (REPO / "examples" / "txt2img.cfy").read_text())
    return parse_dsl(text, "t.cfy", default_catalog())


def test_lean_load_is_chosen_only_where_it_is_safe() -> None:
    graph = _graph()
    assert artifact._lean_load(graph, CompileOptions())
    for options in (CompileOptions(store_torch=True), CompileOptions(backend="torch"),
                    CompileOptions(compact_weights=False), CompileOptions(quantize="int8"),
                    CompileOptions(lora_runtime=True)):
        assert not artifact._lean_load(graph, options), options


def test_lean_load_keeps_the_unet_float16_and_writes_the_same_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from comfyc.runtime.model_paths import resolve

    path = Path(resolve("checkpoints", "tiny-digits.safetensors", None))
    assert artifact._unet_is_float16(path)
    loaded = artifact._LeanModelCache(None).checkpoint("tiny-digits.safetensors")
    assert {p.dtype for p in loaded.unet.parameters()} == {torch.float16}
    assert {p.dtype for p in loaded.vae.parameters()} == {torch.float32}
    assert {p.dtype for p in loaded.text_encoder.parameters()} == {torch.float32}

    used: list[bool] = []
    real = artifact._lean_load
    monkeypatch.setattr(artifact, "_lean_load",
                        lambda *a: used.append(real(*a)) or used[-1])
    lean = tmp_path / "lean.comfyc"
    compile_graph(_graph(), lean, CompileOptions(optimize=False))
    monkeypatch.setattr(artifact, "_lean_load", lambda *a: used.append(False) or False)
    plain = tmp_path / "plain.comfyc"
    compile_graph(_graph(), plain, CompileOptions(optimize=False))
    assert used == [True, False]
    files = sorted(p.relative_to(lean) for p in (lean / "stages").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(plain) for p in (plain / "stages").rglob("*")
                           if p.is_file())
    for rel in files:
        assert (lean / rel).read_bytes() == (plain / rel).read_bytes(), rel
