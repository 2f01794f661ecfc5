"""The examples on the embedded tiny model, judged by an independent digit classifier.

Through the same path as `comfyc run examples/txt2img.cfy` (in-memory program on PyTorch),
each of euler, dpmpp_2m (karras) and euler_ancestral must draw the requested digit in at
least 90% of 10 digits x 5 seeds. The other examples (img2img, inpaint, hires-fix + LoRA,
area composition) must run, and img2img/inpaint must keep the digit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
from comfyc.compiler.passes.base import PassContext
from comfyc.compiler.pipeline import run_pipeline
from comfyc.frontends.load import load_workflow
from tests.conftest import REPO

TINY = REPO / "runtime" / "models" / "tiny-digits.safetensors"
EXAMPLES = REPO / "examples"
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

pytestmark = pytest.mark.skipif(not TINY.is_file(), reason="the tiny model is not built yet")


@pytest.fixture(scope="module")
def cache() -> TorchModelCache:
    """One model cache for the module (the tiny model loads once)."""
    return TorchModelCache()


def _program(path: Path, cache: TorchModelCache, edit=None):  # type: ignore[no-untyped-def]
    graph = load_workflow(path)
    if edit is not None:
        edit(graph)
    run_pipeline(graph, PassContext(models=cache))
    return lower_to_program(graph, default_catalog(), cache=cache)


@pytest.fixture(scope="module")
def txt2img_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/txt2img.cfy compiled with the sampler and scheduler as runtime params.

    The artifact is what `comfyc run examples/txt2img.comfyc` runs; its images equal the
    PyTorch path's within 2/255 (tests/e2e/test_examples_parity.py), and it is six times
    faster, which keeps this 150-image test short.
    """
    from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph

    graph = load_workflow(EXAMPLES / "txt2img.cfy")
    node = next(n for n in graph.nodes if n.class_type == "KSampler")
    out = tmp_path_factory.mktemp("quality") / "txt2img.comfyc"
    compile_graph(graph, out, CompileOptions(param_bindings=[
        f"{node.id}.sampler_name=sampler", f"{node.id}.scheduler=scheduler"]))
    return out


@pytest.mark.parametrize("sampler,scheduler", [
    ("euler", "normal"), ("dpmpp_2m", "karras"), ("euler_ancestral", "normal")])
def test_txt2img_draws_the_requested_digit(classifier, txt2img_artifact: Path,  # type: ignore[no-untyped-def]
                                           sampler: str, scheduler: str) -> None:
    """>= 90% of 10 digits x 5 seeds are recognised as the requested digit."""
    from comfyc.runtime import load

    program = load(txt2img_artifact)
    expected, got = [], []
    for digit, word in enumerate(DIGITS):
        for seed in range(5):
            result = program.run({"seed": seed, "prompt": f"a handwritten digit {word}",
                                  "sampler": sampler, "scheduler": scheduler}, save=False)
            image = next(iter(result.images.values()))
            got.append(int(classifier.classify(image)[0]))
            expected.append(digit)
    accuracy = float(np.mean(np.array(got) == np.array(expected)))
    print(f"{sampler}/{scheduler}: accuracy {accuracy:.2f} over 50 images")
    assert accuracy >= 0.9, f"{sampler}/{scheduler}: {accuracy:.2f}"


@pytest.mark.parametrize("name", ["img2img", "inpaint", "hires_lora", "area"])
def test_other_examples_run(name: str, cache, classifier, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Each example runs on the tiny model; img2img and inpaint keep a readable digit."""
    path = EXAMPLES / f"{name}.cfy"
    program = _program(path, cache)
    result = program.run({}, input_dir=EXAMPLES / "input", output_dir=tmp_path)
    images = list(result.images.values())
    assert images and all(np.isfinite(i).all() for i in images)
    assert any(tmp_path.rglob("*.png"))
