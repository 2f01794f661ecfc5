"""``bench/bench_scale.py`` end to end on the tiny SDXL checkpoint: the comfyc artifact row
and diffusers' own SDXL pipeline, side by side as in the real-size runs.

The peer script must pick ``StableDiffusionXLPipeline`` for an SDXL folder (the SD1.5
pipeline cannot load one) and feed it the same initial latents; the two images then agree
(comfyc's SDXL equals diffusers' within 1/255, ``tests/e2e/test_oracle_sdxl.py``). A row that
failed, timed the wrong calls or drew other noise would show here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SDXL_BASE

pytestmark = pytest.mark.slow


def test_sdxl_rows_run_side_by_side(sdxl_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_scale.py"), "--models-dir",
         str(sdxl_models), "--ckpt", SDXL_BASE, "--diffusers",
         str(sdxl_models / "diffusers" / "sdxl"), "--sizes", "64:3", "--rows",
         "comfyc-ort-t1,diffusers", "--work", str(tmp_path / "work"), "-o", str(out)],
        capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    entry = json.loads(out.read_text())["sizes"]["64"]
    assert entry["steps"] == 3
    assert "error" not in entry["compile"]["exact"], entry["compile"]
    rows = entry["rows"]
    for name in ("comfyc-ort-t1", "diffusers"):
        row = rows[name]
        assert "error" not in row, row
        assert row["image_s"] > 0 and row["load_s"] > 0 and row["peak_rss_mb"] > 100
        # One UNet call per step (CFG in one batch): the first and the median of the rest.
        assert row["first_call_s"] > 0 and row["per_step_s"] > 0
    assert rows["comfyc-ort-t1"]["threads"] == [1]
    # NOTE: the same weights, latents and schedule; 1/255 is 48 dB.
    assert rows["comfyc-ort-t1"]["psnr_vs_diffusers_db"] > 48, rows
