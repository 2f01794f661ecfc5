"""`comfyc serve` applies ``embedding:NAME`` from its models folder (issue #19 item 3) and
lets a server or a prompt choose whose sampler noise to reproduce (issue #21 item 2).

One server with ``--models-dir`` holding an embedding made of the tiny model's own token
embedding of "seven": the prompt "a handwritten digit embedding:seven_ti" must draw the
picture of "a handwritten digit seven" (whichever tier runs it). Noise modes: an
``euler_ancestral`` prompt with ``extra_data.comfyc.noise_mode`` gives ``comfyc run
--noise-mode``'s picture and records the mode in the PNG; an unknown mode is a 400.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import REPO

from .conftest import Server, start_server, stop_server, workflow

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    from comfyc.compiler.lowering.program import TorchModelCache
    from comfyc.runtime.tokenizer import ClipTokenizer

    root = tmp_path_factory.mktemp("serve-ti-models")
    (root / "embeddings").mkdir()
    cache = TorchModelCache(str(root))
    module = cache.component_with_loras("tiny-digits.safetensors", "text_encoder", [])
    rows = module.get_input_embeddings().weight.detach()[ClipTokenizer().encode("seven")]
    save_file({"emb_params": rows.clone()}, root / "embeddings" / "seven_ti.safetensors")
    return root


@pytest.fixture(scope="module")
def ti_server(tmp_path_factory: pytest.TempPathFactory, serve_cache: Path,
              models: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("serve-ti"), serve_cache, "--models-dir",
                       str(models))
    try:
        yield srv
    finally:
        stop_server(srv)


def _picture(server: Server, prompt: dict[str, Any], extra: dict[str, Any] | None = None
             ) -> tuple[np.ndarray, dict[str, str]]:
    """Queue a prompt; its PNG's pixels and text chunks."""
    from PIL import Image

    body: dict[str, Any] = {"prompt": prompt}
    if extra is not None:
        body["extra_data"] = extra
    status, answer = server.request("POST", "/prompt", body)
    assert status == 200, answer
    entry = server.wait_history(answer["prompt_id"], timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (image,) = entry["outputs"]["7"]["images"]
    data = (server.output_dir / image["subfolder"] / image["filename"]).read_bytes()
    png = Image.open(io.BytesIO(data))
    return np.asarray(png.convert("RGB"), dtype=np.float64) / 255, dict(png.text)


def test_embedding_in_a_served_prompt(ti_server: Server) -> None:
    with_embedding, _ = _picture(ti_server, workflow(seed=11,
                                                     text="a handwritten digit embedding:seven_ti"))
    as_text, _ = _picture(ti_server, workflow(seed=11, text="a handwritten digit seven"))
    bare, _ = _picture(ti_server, workflow(seed=11, text="a handwritten digit"))
    assert np.abs(with_embedding - as_text).max() <= 2 / 255
    assert np.abs(bare - as_text).max() > 0.2


def _ancestral(seed: int) -> dict[str, Any]:
    prompt = workflow(seed=seed, steps=6)
    prompt["5"]["inputs"]["sampler_name"] = "euler_ancestral"
    return prompt


def test_prompt_chooses_its_noise_mode(ti_server: Server, tmp_path: Path) -> None:
    """``extra_data.comfyc.noise_mode`` reaches the sampler (the pictures differ by mode, and
    ``cpu-legacy`` is ``comfyc run --noise-mode cpu-legacy``'s) and the PNG records it."""
    legacy, chunks = _picture(ti_server, _ancestral(5), {"comfyc": {"noise_mode": "cpu-legacy"}})
    assert json.loads(chunks["comfyc"]) == {"noise_mode": "cpu-legacy"}
    current, chunks = _picture(ti_server, _ancestral(5), {"comfyc": {"noise_mode": "cpu"}})
    assert json.loads(chunks["comfyc"]) == {"noise_mode": "cpu"}
    assert np.abs(legacy - current).max() > 0.1
    workflow_file = tmp_path / "ancestral.json"
    workflow_file.write_text(json.dumps(_ancestral(5)))
    done = subprocess.run(
        [sys.executable, "-m", "comfyc.cli.main", "run", str(workflow_file), "--noise-mode",
         "cpu-legacy", "-o", str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    from PIL import Image

    (png,) = (tmp_path / "out").glob("*.png")
    want = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64) / 255
    assert np.abs(legacy - want).max() <= 2 / 255


def test_unknown_noise_mode_is_a_400(ti_server: Server) -> None:
    for extra in ({"comfyc": {"noise_mode": "gpu"}}, {"comfyc": "cuda"}):
        status, body = ti_server.request("POST", "/prompt",
                                         {"prompt": _ancestral(1), "extra_data": extra})
        assert status == 400, body
        assert "noise_mode" in body["error"]["message"] or "comfyc" in body["error"]["message"]


def test_server_noise_mode_option(tmp_path: Path, serve_cache: Path) -> None:
    """``comfyc serve --noise-mode cpu-legacy`` is the default of prompts that do not choose."""
    server = start_server(tmp_path, serve_cache, "--noise-mode", "cpu-legacy")
    try:
        _, chunks = _picture(server, _ancestral(5))
        assert json.loads(chunks["comfyc"]) == {"noise_mode": "cpu-legacy"}
    finally:
        stop_server(server)
