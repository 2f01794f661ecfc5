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


def test_each_digit_carries_its_workflow(demo: tuple[Path, str]) -> None:
    """digit_N.png holds the txt2img prompt with its own text and the demo's seed, and
    `comfyc check` reads it as a workflow."""
    import json

    from PIL import Image

    from comfyc.cli.commands.check import check_file
    from comfyc.cli.commands.demo import DIGITS
    from comfyc.compiler.catalog import default_catalog

    out, _ = demo
    for index, word in enumerate(DIGITS):
        path = out / f"digit_{index}.png"
        prompt = json.loads(Image.open(path).text["prompt"])
        texts = {v["inputs"]["text"] for v in prompt.values()
                 if v["class_type"] == "CLIPTextEncode"}
        assert f"a handwritten digit {word}" in texts
        [sampler] = [v for v in prompt.values() if v["class_type"] == "KSampler"]
        assert sampler["inputs"]["seed"] == 42
    assert check_file(str(out / "digit_3.png"), default_catalog())[0] == 0
