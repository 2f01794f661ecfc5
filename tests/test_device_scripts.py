"""The device scripts (``bench/device_check.sh`` and the ``bench/gpu_check.sh`` it calls) run
end to end without a GPU.

They run on the device machine only when a task is lent one, for minutes that cannot be
repeated; a broken import shim or a misread setting there costs the whole session's device
time (both happened). Here they run on the CPU with the torch row alone, so their plumbing is
checked on every CI run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _device_check(tmp_path: Path, **settings: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "WORK": str(tmp_path / "work"),
           "WHEELS": str(wheels), "SD15": "0", "STEPS": "2", "RUNS": "1", "BACKENDS": "torch",
           "PRECISIONS": "fp32", "TUNE": "0", "BUDGET_S": "240", "OMP_NUM_THREADS": "1",
           **settings}
    done = subprocess.run(["bash", str(REPO / "bench" / "device_check.sh")], env=env,
                          capture_output=True, text=True, timeout=400, check=False)
    return done, out


def test_device_check_benches_the_tiny_model_on_a_machine_without_a_gpu(tmp_path: Path) -> None:
    """One size: gpu_check.sh compiles and benches it, device_check.sh copies the report and
    summarises it; the GPU parts say why they did not run."""
    done, out = _device_check(tmp_path, SIZES="32")
    log = (out / "log.txt").read_text()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gpu_check.sh 32px: exit 0" in log, log[-3000:]
    assert "SD1.5: skipped (SD15=0" in log
    report = json.loads((out / "bench-32.json").read_text())
    (row,) = report["rows"]
    assert row["label"] == "torch" and row["per_image"]["median_ms"] > 0
    summary = (out / "summary.txt").read_text()
    assert "bench-32.json" in summary and "torch" in summary and "sd15.json: none" in summary
    # NOTE: only the few report files come back from the device machine; the artifacts stay.
    assert sorted(p.name for p in out.iterdir()) == ["bench-32.json", "log.txt", "summary.txt"]


def test_device_check_with_no_sizes_skips_the_tiny_model(tmp_path: Path) -> None:
    """``SIZES=""`` means no tiny-model size (it was once read as unset: the default sizes ran
    and left no device time for the rest)."""
    done, out = _device_check(tmp_path, SIZES="")
    log = (out / "log.txt").read_text()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SIZES=''" in log
    assert "tiny model" not in log and "gpu_check.sh" not in log
    assert "== done" in log
