"""`comfyc demo`: ten digits, a contact sheet the classifier reads, a timing table and the
graph page, all in the output folder."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import numpy as np
import pytest

from comfyc.cli.main import main
from comfyc.runtime.model_paths import EMBEDDED_MODELS
from tests.conftest import REPO

TINY = EMBEDDED_MODELS["checkpoints"]["tiny-digits.safetensors"]
CLASSIFIER = REPO / "examples" / "tiny_model" / "classifier.py"

pytestmark = pytest.mark.skipif(not TINY.is_file(), reason="the tiny model is not built yet")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One `comfyc demo` run: its output folder and standard output."""
    out = tmp_path_factory.mktemp("demo")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--output", str(out)])
    assert code == 0
    return out, stdout.getvalue()


def test_contact_sheet_shows_the_ten_digits(demo: tuple[Path, str]) -> None:
    """The independent classifier reads at least 9 of the 10 tiles as the digit asked for."""
    from PIL import Image

    out, stdout = demo
    assert sorted(p.name for p in out.glob("digit_*.png")) == [f"digit_{i}.png"
                                                              for i in range(10)]
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"),
                       dtype=np.float32) / 255.0
    height, width, _ = sheet.shape
    assert width == 10 * height
    tiles = np.stack([sheet[:, i * height:(i + 1) * height] for i in range(10)])
    spec = importlib.util.spec_from_file_location("demo_test_classifier", CLASSIFIER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    predicted = [int(d) for d in module.train_classifier().classify(tiles)]
    right = sum(p == d for d, p in enumerate(predicted))
    assert right >= 9, f"the classifier read {predicted}"
    assert re.search(r"digit classifier .*: \d+/10 recognised", stdout)


def test_timing_table_and_graph_page(demo: tuple[Path, str]) -> None:
    """The table compares both paths; graph.html shows the stages with measured times."""
    out, stdout = demo
    assert re.search(r"compiled artifact \(onnxruntime\)\s+\d+ ms", stdout)
    assert re.search(r"in-memory program \(PyTorch\)\s+\d+ ms", stdout)
    assert f"graph page: {out / 'graph.html'}" in stdout
    page = (out / "graph.html").read_text(encoding="utf-8")
    for kind in ("unet", "text_encoder", "vae_decoder"):
        assert re.search(kind + r" · ort-cpu · \d+\.\d ms", page), kind
    assert "FOLDED" in page and "examples/txt2img.cfy" in page
    assert (out / "txt2img.comfyc" / "manifest.json").is_file()
