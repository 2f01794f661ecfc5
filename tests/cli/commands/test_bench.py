"""`comfyc bench`: report files, cross-backend agreement, clear errors for missing GPUs.

One bench of a 2-step copy of examples/txt2img.cfy on ort-cpu, torch and torch-compile is
run once for the module (torch.compile with its ``eager`` backend: the dynamo capture and
the plumbing are tested, not minutes of inductor codegen). Timings are never asserted.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from comfyc.cli.commands.bench import TOLERANCE_PIXELS, agreement, psnr
from comfyc.cli.main import main
from comfyc.runtime.artifact import load
from comfyc.runtime.backends.base import BackendError

REPO = Path(__file__).resolve().parents[3]
BACKENDS = ("ort-cpu", "torch", "torch-compile")


def small_txt2img(folder: Path, steps: int = 2, ckpt: str = "random-sd1.safetensors") -> Path:
    """examples/txt2img.cfy with ``steps`` steps on ``ckpt`` (the random tiny SD1 by default:
    the smallest graphs, so export and torch.compile capture are quickest)."""
    text = (REPO / "examples" / "txt2img.cfy").read_text()
    text = re.sub(r"steps=\d+", f"steps={steps}", text).replace("tiny-digits.safetensors", ckpt)
    workflow = folder / "txt2img.cfy"
    workflow.write_text(text)
    return workflow


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, random_models: Path) -> dict[str, Any]:
    """Runs the bench once: ``{"out": DIR, "code": exit code, "report": bench.json}``.

    Under pytest-xdist the workers share one run (a lock and a folder in the session's
    temporary root, as xdist's docs show), so the bench is paid for once per session.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _run_bench(tmp_path_factory.mktemp("bench"), random_models)
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "comfyc-bench"
    with FileLock(str(root) + ".lock"):
        done = root / "done.json"
        if done.is_file():
            return {**json.loads(done.read_text()), "out": root / "report",
                    "report": json.loads((root / "report" / "bench.json").read_text())}
        root.mkdir(exist_ok=True)
        result = _run_bench(root, random_models)
        done.write_text(json.dumps({"code": result["code"]}))
        return result


def _run_bench(root: Path, random_models: Path) -> dict[str, Any]:
    workflow = small_txt2img(root)
    out = root / "report"
    saved = os.environ.get("COMFYC_TORCH_COMPILE_BACKEND")
    os.environ["COMFYC_TORCH_COMPILE_BACKEND"] = "eager"
    try:
        code = main(["bench", str(workflow), "--backends", ",".join(BACKENDS), "--runs", "1",
                     "--warmup", "0", "-o", str(out), "--quiet",
                     "--models-dir", str(random_models)])
    finally:
        if saved is None:
            os.environ.pop("COMFYC_TORCH_COMPILE_BACKEND", None)
        else:
            os.environ["COMFYC_TORCH_COMPILE_BACKEND"] = saved
    report = json.loads((out / "bench.json").read_text())
    return {"out": out, "code": code, "report": report}


def test_bench_writes_table_json_chart_and_html(bench: dict[str, Any],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Every backend gets a row with per-stage and per-image timings; all report files exist."""
    assert bench["code"] == 0
    report, out = bench["report"], bench["out"]
    assert [row["label"] for row in report["rows"]] == list(BACKENDS)
    for row in report["rows"]:
        assert "error" not in row, row.get("error")
        assert row["per_image"]["median_ms"] > 0 and row["per_image"]["p90_ms"] > 0
        kinds = {stage["kind"] for stage in row["stages"].values()}
        assert {"unet", "vae_decoder", "text_encoder"} <= kinds
        unet = next(s for s in row["stages"].values() if s["kind"] == "unet")
        assert unet["calls_per_run"] == 2 and unet["median_ms"] <= unet["p90_ms"]
        assert row["peak_rss_mb"] > 0 and row["load_s"] >= 0
        assert row["size_bytes"] > 0
    assert report["artifacts"]["fp32"]["compile_s"] > 0
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    # Self-contained: the chart and one image per backend are embedded, nothing is linked.
    assert page.count("data:image/png;base64,") == 1 + len(BACKENDS)
    assert 'src="http' not in page and "<link" not in page
    for backend in BACKENDS:
        assert backend in page
        assert (out / "images" / f"{backend}.png").is_file()


def test_backends_agree_with_torch_within_tolerance(bench: dict[str, Any]) -> None:
    """Each backend's image is within TOLERANCE_PIXELS levels of the torch row's image."""
    report = bench["report"]
    assert report["reference"] == "torch"
    for row in report["rows"]:
        agree = row["agreement"]
        assert agree["max_pixel_diff"] <= TOLERANCE_PIXELS, row["label"]
        assert agree["within_tolerance"] is True
        assert agree["psnr_db"] > 40


def test_bench_refuses_missing_gpu_backends(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """ort-cuda / trt / torch-cuda without a GPU fail before any work, naming what is missing."""
    import onnxruntime
    import torch

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() \
            or torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["bench", str(REPO / "examples" / "txt2img.cfy"), "--backends",
                 "ort-cpu,ort-cuda,trt,torch-cuda", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2  # what this machine lacks, as in compile and run
    assert "ort-cuda cannot run on this machine" in err and "CUDAExecutionProvider" in err
    assert "onnxruntime-gpu" in err
    assert "trt cannot run" in err and "tensorrt" in err.lower()
    assert "torch.cuda.is_available() is False" in err
    assert not (tmp_path / "out").exists()  # nothing was compiled


def test_artifact_backend_errors_name_what_is_missing(bench: dict[str, Any]) -> None:
    """Loading the bench's artifact on an absent provider or an unknown stage is an error."""
    import onnxruntime

    artifact = bench["out"] / "artifacts" / "fp32.comfyc"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendError, match="CUDAExecutionProvider was asked for"):
            load(artifact, backend="unet=ort-cuda,*=ort-cpu")
    with pytest.raises(BackendError, match="neither a stage kind"):
        load(artifact, backend="unt=ort-cpu")
    program = load(artifact, backend="unet=torch,vae_decoder=ort-cpu,text_encoder=ort-cpu")
    backends = {stage.kind: stage.backend for stage in program.stages.values()
                if hasattr(stage, "kind")}
    assert backends["unet"] == "torch" and backends["vae_decoder"] == "ort-cpu"


def test_agreement_metrics() -> None:
    """max pixel difference is on the 0..255 scale; PSNR is infinite for equal images."""
    a = np.zeros((1, 4, 4, 3), np.float32)
    b = a.copy()
    b[0, 0, 0, 0] = 1 / 255
    assert agreement(a, a) == {"max_pixel_diff": 0.0, "psnr_db": float("inf")}
    assert agreement(b, a)["max_pixel_diff"] == pytest.approx(1.0)
    assert psnr(b, a) == pytest.approx(10 * np.log10(48 * 255**2), rel=1e-6)


@pytest.mark.gpu
def test_bench_gpu_backends(tmp_path: Path) -> None:
    """On a GPU: torch-cuda and ort-cuda run and agree with torch (skipped without one)."""
    text = (REPO / "examples" / "txt2img.cfy").read_text()
    workflow = tmp_path / "txt2img.cfy"
    workflow.write_text(re.sub(r"steps=\d+", "steps=4", text))
    code = main(["bench", str(workflow), "--backends", "torch,torch-cuda,ort-cuda", "--runs",
                 "2", "-o", str(tmp_path / "out"), "--quiet", "--skip-unavailable"])
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert code == 0
    for row in report["rows"]:
        assert row["agreement"]["max_pixel_diff"] <= TOLERANCE_PIXELS, row["label"]


# --------------------------------------------------------------------------- comfyc tune
def test_tune_writes_plan_and_measurements(bench: dict[str, Any], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`comfyc tune` measures each stage, records choice/margin/measurements in the manifest
    (the contract `comfyc viz` reads), keeps the hashes valid, and `run` follows the plan."""
    import shutil

    from comfyc.runtime.artifact import read_manifest, stage_entries

    artifact = tmp_path / "t.comfyc"
    shutil.copytree(bench["out"] / "artifacts" / "fp32.comfyc", artifact)
    code = main(["tune", str(artifact), "--backends", "ort-cpu,torch,ort-cuda", "--calls", "2",
                 "--warmup", "1", "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "<- chosen" in out
    manifest = read_manifest(artifact)  # verifies every hash, the manifest's included
    tuned = manifest.autotune
    assert {"machine", "stages"} <= set(tuned) and tuned["machine"]["cpus"]
    assert set(tuned["stages"]) == set(stage_entries(manifest))
    for name, row in tuned["stages"].items():
        assert set(row["measurements"]) == {"ort-cpu", "torch"}
        for m in row["measurements"].values():
            assert {"median_ms", "p90_ms", "calls"} <= set(m) and m["calls"] == 2
            assert m["max_abs_diff"] < 1e-2  # torch and onnxruntime compute the same stage
        assert row["choice"] in row["measurements"] and row["margin"] >= 1.0
        assert manifest.plan[name] == row["choice"]
        # ort-cuda was asked for but cannot start here: skipped with the reason, not measured.
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            assert "CUDAExecutionProvider" in row["skipped"]["ort-cuda"]
    program = load(artifact)
    for name, stage in program.stages.items():
        if hasattr(stage, "backend") and name in manifest.plan:
            assert stage.backend == manifest.plan[name]
    # The plan is overridable per run.
    program = load(artifact, backend="ort-cpu")
    assert {getattr(s, "backend", "ort-cpu") for s in program.stages.values() if s} \
        <= {"ort-cpu"}


def test_compile_backend_auto_plans_the_fastest(tmp_path: Path, random_models: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`comfyc compile --backend auto` stores ONNX and PyTorch weights, measures both per
    stage, and writes a plan that `load` follows; the manifest hash stays valid."""
    from comfyc.runtime.artifact import read_manifest, stage_entries

    artifact = tmp_path / "auto.comfyc"
    code = main(["compile", str(small_txt2img(tmp_path)), "-o", str(artifact), "--backend",
                 "auto", "--tune-backends", "ort-cpu,torch", "--models-dir",
                 str(random_models), "-q"])
    assert code == 0 and "<- chosen" in capsys.readouterr().out
    manifest = read_manifest(artifact)
    assert manifest.options["store_torch"] is True
    for name, entry in stage_entries(manifest).items():
        assert entry.file and entry.torch
        row = manifest.autotune["stages"][name]
        assert set(row["measurements"]) == {"ort-cpu", "torch"}
        assert manifest.plan[name] == row["choice"]
    program = load(artifact)
    assert next(iter(program.run({"seed": 1}, save=False).images.values())).shape == (1, 64, 64, 3)


def test_bench_says_one_size_per_artifact(tmp_path: Path, random_models: Path) -> None:
    """As a user runs it (a subprocess): the compile message and the table give the same
    artifact size, the PyTorch weights stored for the torch row are counted apart, the first
    run shows its steps, and nothing is a traceback (issue #18 item 7)."""
    import subprocess
    import sys

    workflow = small_txt2img(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "comfyc.cli.main", "bench", str(workflow), "--backends",
         "ort-cpu", "--runs", "1", "--warmup", "0", "-o", str(tmp_path / "out"),
         "--models-dir", str(random_models)],
        capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    compiled = re.search(r"compiled fp32 in [\d.]+ s: ([\d.]+) MB \(\+ [\d.]+ MB of PyTorch "
                         r"weights stored for the torch rows only\)", result.stderr)
    assert compiled, result.stderr
    assert "compile fp32: wrote" not in result.stderr  # the writer's size, torch included
    assert re.search(r"ort-cpu: .*KSampler: step 1/2", result.stderr), result.stderr
    header, row = result.stdout.splitlines()[:2]
    column = header.index("size MB")  # columns are left-aligned under their headers
    assert row[column:].split()[0] == compiled.group(1), (header, row)
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert f"{report['rows'][0]['size_bytes'] / 1e6:.2f}" == compiled.group(1)


def test_bench_reads_input_images_from_input_dir(tmp_path: Path, random_models: Path) -> None:
    """A workflow with LoadImage: --input-dir is where its images are (compile and every row);
    without it, ./input is looked in and a missing image is a clear error, not a traceback."""
    import subprocess
    import sys

    text = (REPO / "examples" / "img2img.cfy").read_text()
    text = re.sub(r"steps=\d+", "steps=2", text).replace("tiny-digits.safetensors",
                                                          "random-sd1.safetensors")
    workflow = tmp_path / "img2img.cfy"
    workflow.write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "comfyc.cli.main", "bench", str(workflow), "--backends",
               "ort-cpu", "--runs", "1", "--warmup", "0", "--models-dir", str(random_models)]
    missing = subprocess.run([*command, "-o", str(tmp_path / "a")], capture_output=True,
                             text=True, timeout=600, env=env, cwd=tmp_path)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr, missing.stderr
    assert "digit.png" in missing.stderr and "input folder" in missing.stderr, missing.stderr
    found = subprocess.run([*command, "-o", str(tmp_path / "b"), "--input-dir",
                            str(REPO / "examples" / "input")], capture_output=True, text=True,
                           timeout=600, env=env, cwd=tmp_path)
    assert found.returncode == 0 and "Traceback" not in found.stderr, found.stderr
    report = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert all("error" not in row for row in report["rows"]), report["rows"]
