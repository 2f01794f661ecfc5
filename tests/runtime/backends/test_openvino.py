"""The ov-cpu backend: OpenVINO runs the artifact's ONNX stages and agrees with onnxruntime.

``make`` installs the ``openvino`` extra, so these run on every CI run; where openvino is not
installed they are skipped, and the unavailability reason is tested either way. (Until
2026-12-04 the extra that the messages named did not exist and ``make`` did not install
OpenVINO: every test here but the first was skipped in CI.)
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from comfyc.runtime.artifact import BACKENDS, backend_unavailable_reason

REPO = Path(__file__).resolve().parents[3]
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


def test_ov_cpu_is_a_backend_name() -> None:
    """ov-cpu is listed, and its unavailability says what to install."""
    assert "ov-cpu" in BACKENDS
    reason = backend_unavailable_reason("ov-cpu")
    assert (reason is None) == HAS_OPENVINO
    if reason is not None:
        assert "pip install" in reason
    assert "unknown OpenVINO backend" in str(backend_unavailable_reason("ov-gpu")) or \
        not HAS_OPENVINO


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from comfyc.compiler.catalog import default_catalog
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
    from comfyc.frontends.dsl import parse_dsl

    text = re.sub(r"steps=\d+", "steps=3", (REPO / "examples" / "txt2img.cfy").read_text())
    root = tmp_path_factory.mktemp("ov") / "a.comfyc"
    compile_graph(parse_dsl(text, "t.cfy", default_catalog()), root, CompileOptions())
    return root


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
def test_ov_cpu_agrees_with_ort_cpu(artifact: Path) -> None:
    """The same image within the fp32 bench tolerance (2 levels of 255); bf16 runs too."""
    from comfyc.runtime.artifact import load

    images = {}
    for backend, options in (("ort-cpu", {}), ("ov-cpu", {}), ("ov-bf16", {"precision": "bf16"})):
        program = load(artifact, backend=backend.replace("-bf16", "-cpu"), **options)
        stages = [s for s in program.stages.values() if hasattr(s, "backend")]
        assert {s.backend for s in stages} == {backend.replace("-bf16", "-cpu")}
        images[backend] = next(iter(program.run({"seed": 4}, save=False).images.values()))
    assert np.abs(images["ov-cpu"] - images["ort-cpu"]).max() * 255 < 2.0
    assert np.isfinite(images["ov-bf16"]).all()


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
def test_ov_session_interface_and_threads(artifact: Path) -> None:
    """OvSession names its graph's inputs and outputs, takes a thread count, and fails
    clearly on a bad precision."""
    from comfyc.runtime.backends.base import BackendError
    from comfyc.runtime.backends.openvino import OvSession

    path = next((artifact / "stages").glob("vae_decoder_*.onnx"))
    session = OvSession(path, intra_op_threads=1)
    assert list(session.inputs) == ["latent"] and session.output_names == ["image"]
    assert session.threads == 1 and session.precision == "f32"
    (image,) = session.run({"latent": np.zeros((1, 4, 8, 8), np.float32)})
    assert image.dtype == np.float32 and image.shape == (1, 3, 64, 64)
    with pytest.raises(BackendError, match="precision"):
        OvSession(path, precision="int4")


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
def test_ov_cpu_in_a_per_stage_map(artifact: Path) -> None:
    """A backend map puts the UNet on OpenVINO and the rest on onnxruntime; the image agrees
    with all-onnxruntime within the fp32 tolerance."""
    from comfyc.runtime.artifact import load
    from comfyc.runtime.backends.openvino import OvSession

    mixed = load(artifact, backend="unet=ov-cpu,*=ort-cpu")
    by_kind = {name.split("_")[0]: stage.backend for name, stage in mixed.stages.items()
               if hasattr(stage, "backend")}
    assert by_kind["unet"] == "ov-cpu" and by_kind["vae"] == "ort-cpu"
    unet = next(s for n, s in mixed.stages.items() if n.startswith("unet"))
    assert isinstance(unet.session, OvSession)
    image = next(iter(mixed.run({"seed": 4}, save=False).images.values()))
    plain = next(iter(load(artifact, backend="ort-cpu").run({"seed": 4},
                                                           save=False).images.values()))
    assert np.abs(image - plain).max() * 255 < 2.0


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
def test_autotuner_measures_ov_cpu(artifact: Path) -> None:
    """The autotuner times ov-cpu beside ort-cpu for every ONNX stage, checks its output
    against the first backend's, and may choose it."""
    from comfyc.compiler.lowering.autotune import autotune, candidate_backends
    from comfyc.runtime.artifact import read_manifest

    manifest = read_manifest(artifact)
    assert all("ov-cpu" in candidate_backends(entry)
               for entry in manifest.stage_entries().values() if entry.file)
    tuned = autotune(artifact, manifest, backends=["ort-cpu", "ov-cpu"], calls=2, warmup=1,
                     threads=[1])
    for row in tuned.autotune["stages"].values():
        assert set(row["measurements"]) == {"ort-cpu", "ov-cpu"}
        measured = row["measurements"]["ov-cpu"]
        assert measured["median_ms"] > 0 and measured["threads"] == 1
        assert measured["max_abs_diff"] < 1e-3
        assert row["choice"] in ("ort-cpu", "ov-cpu")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
def test_comfyc_bench_compares_ov_cpu(tmp_path: Path) -> None:
    """`comfyc bench --backends ort-cpu,ov-cpu,torch` on a workflow: a row per backend (each
    in its own process), ov-cpu's image compared with the torch row's like every other row."""
    import json
    import subprocess
    import sys

    pytest.importorskip("torch")
    workflow = tmp_path / "t.cfy"
    workflow.write_text(re.sub(r"steps=\d+", "steps=3",
                               (REPO / "examples" / "txt2img.cfy").read_text()))
    out = tmp_path / "bench"
    done = subprocess.run(
        [sys.executable, "-m", "comfyc.cli.main", "bench", str(workflow), "--backends",
         "ort-cpu,ov-cpu,torch", "--runs", "1", "--warmup", "0", "--threads", "1", "-q",
         "-o", str(out)], capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["label"]: row for row in json.loads((out / "bench.json").read_text())["rows"]}
    assert set(rows) == {"ort-cpu", "ov-cpu", "torch"}
    ov = rows["ov-cpu"]
    assert ov["per_image"]["median_ms"] > 0
    assert all(value.startswith("ov-cpu") for value in ov["stage_backends"].values())
    assert ov["agreement"]["within_tolerance"] and ov["agreement"]["max_pixel_diff"] < 2.0
