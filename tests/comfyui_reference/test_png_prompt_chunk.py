"""comfyc's ``prompt`` chunk of an image-loading workflow is the one ComfyUI stores.

ComfyUI's cache adds each LoadImage/LoadImageMask node's ``IS_CHANGED`` value - the hex SHA-256
of the file - to the node as ``"is_changed": [digest]`` in the prompt it embeds
(``execution.py`` ``IsChangedCache``); the img2img recording in ``recordings/current`` shows it
(``test_reference.py`` compares whole chunks on the SD1.5-size cases). This test holds the rule
on the tiny model, and that ``comfyc run PNG`` reads such a chunk back to the same pixels.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyc.cli.main import main
from tests.conftest import REPO

EXAMPLES = REPO / "examples"
TINY = REPO / "runtime" / "models" / "tiny-digits.safetensors"


@pytest.mark.skipif(not TINY.is_file(), reason="the tiny model is not built yet")
def test_img2img_png_prompt_has_comfyuis_is_changed(tmp_path: Path) -> None:
    """LoadImage's node carries is_changed = [sha256 of the file]; the PNG reruns exactly."""
    inputs = EXAMPLES / "input"
    assert main(["run", str(EXAMPLES / "img2img.cfy"), "-o", str(tmp_path / "a"),
                 "--input-dir", str(inputs), "-q"]) == 0
    [png] = sorted((tmp_path / "a").glob("*.png"))
    with Image.open(png) as image:
        prompt = json.loads(image.text["prompt"])
        pixels = np.asarray(image.convert("RGB"))
    [(node_id, node)] = [(k, v) for k, v in prompt.items() if v["class_type"] == "LoadImage"]
    digest = hashlib.sha256((inputs / node["inputs"]["image"]).read_bytes()).hexdigest()
    assert node["is_changed"] == [digest]
    assert all("is_changed" not in v for k, v in prompt.items() if k != node_id)
    assert main(["run", str(png), "-o", str(tmp_path / "b"), "--input-dir", str(inputs),
                 "-q"]) == 0
    [again] = sorted((tmp_path / "b").glob("*.png"))
    with Image.open(again) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), pixels)
        assert json.loads(image.text["prompt"]) == prompt
