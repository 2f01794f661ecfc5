"""Every file of an artifact is read by some stage, and each weight is stored once (issue #22).

An artifact once kept the exported ``NAME.onnx.data`` beside the offline-optimised model that
replaced ``NAME.onnx`` and read ``NAME.opt.onnx.data``: half of an SD1.5-size artifact was
never read, yet listed and hashed. Files count as read when the manifest names them
(``referenced_paths``), when a named ONNX model keeps external data in them, or when they are
the tokenizer and PyTorch weights the runtime reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering import onnx_export
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.frontends.dsl import parse_dsl
from comfyc.runtime.artifact import load, read_manifest

REPO = Path(__file__).resolve().parents[3]


def workflow(steps: int = 2) -> str:
    """examples/txt2img.cfy (the tiny model, prompt a param) with ``steps`` steps."""
    text = (REPO / "examples" / "txt2img.cfy").read_text()
    return re.sub(r"steps=\d+", f"steps={steps}", text)


def compile_tiny(out: Path, **options: object) -> Path:
    compile_graph(parse_dsl(workflow(), "txt2img.cfy", default_catalog()), out,
                  CompileOptions(**options))  # type: ignore[arg-type]
    return out


def read_files(root: Path) -> set[str]:
    """The files some stage or the program reads (see the module docstring)."""
    manifest = read_manifest(root)
    read = set(manifest.referenced_paths())
    for rel in list(read):
        if rel.endswith(".onnx"):
            model = onnx.load(str(root / rel), load_external_data=False)
            for tensor in model.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        read.add((Path(rel).parent / entry.value).as_posix())
    for extra in ("tokenizer", "torch"):
        read |= {p.relative_to(root).as_posix() for p in (root / extra).rglob("*")
                 if p.is_file()}
    return read


def all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and p.name != "manifest.json"}


@pytest.mark.parametrize("options", [
    {}, {"optimize_large": True}, {"compact_weights": False}, {"step_cache": 3}],
    ids=["default", "optimize-large", "float32-files", "step-cache"])
def test_every_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            options: dict[str, object]) -> None:
    """No file is left that no stage reads, and every file is listed and hashed."""
    # NOTE: a threshold below the tiny stages' sizes makes them "large" (external data).
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1000)
    root = compile_tiny(tmp_path / "a.comfyc", **options)
    files = all_files(root)
    assert files == read_files(root)
    assert files == set(read_manifest(root).files)
    assert not [f for f in files if ".opt." in f]  # an optimised model took the stage's name


def test_optimised_stage_replaces_its_data(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """With offline optimisation of large stages, the optimised weights replace the exported
    ones (one data file per stage), and the artifact still runs."""
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1000)
    root = compile_tiny(tmp_path / "a.comfyc", optimize_large=True)
    manifest = read_manifest(root)
    optimised = [e for e in manifest.stage_entries().values() if e.optimized]
    assert optimised, "no stage was optimised offline"
    for entry in optimised:
        data = root / (str(entry.file) + ".data")
        assert data.is_file() and str(entry.file) + ".data" in manifest.files
    image = next(iter(load(root).run({"seed": 3}, save=False).images.values()))
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_compile_float32_weights_flag(tmp_path: Path) -> None:
    """`comfyc compile --float32-weights` stores the float16-exact weights as float32 (for
    ov-cpu, which reads float16-stored ONNX weights with a far slower first call)."""
    from comfyc.cli.main import main

    source = tmp_path / "t.cfy"
    source.write_text(workflow())
    stored = {}
    for name, flags in (("compact", []), ("full", ["--float32-weights"])):
        out = tmp_path / f"{name}.comfyc"
        assert main(["compile", str(source), "-o", str(out), "-q", "--no-ort-optimize",
                     *flags]) == 0
        entry = next(e for e in read_manifest(out).stage_entries().values()
                     if e.kind == "unet")
        model = onnx.load(str(out / str(entry.file)), load_external_data=False)
        stored[name] = (entry.facts.get("stored_float16", 0),
                        sum(t.data_type == onnx.TensorProto.FLOAT16
                            for t in model.graph.initializer))
    assert stored["compact"][0] > 0 and stored["compact"][1] > 0
    assert stored["full"] == (0, 0)


def test_compact_weights_are_lossless_and_smaller(tmp_path: Path) -> None:
    """float16 storage of the (float16) tiny checkpoint: the same image, fewer bytes.

    (Without offline optimisation, which folds the casts of small stages back to float32.)
    """
    compact = compile_tiny(tmp_path / "c.comfyc", optimize=False)
    plain = compile_tiny(tmp_path / "p.comfyc", compact_weights=False, optimize=False)
    size = {root: sum(p.stat().st_size for p in (root / "stages").iterdir())
            for root in (compact, plain)}
    assert size[compact] < 0.6 * size[plain]
    entry = next(e for e in read_manifest(compact).stage_entries().values()
                 if e.kind == "unet")
    assert entry.facts["stored_float16"] > 0 and entry.facts["weights_dtype"] == "float32"
    images = [next(iter(load(root).run({"seed": 5}, save=False).images.values()))
              for root in (compact, plain)]
    assert np.array_equal(images[0], images[1])
