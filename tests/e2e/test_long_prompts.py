"""Prompts longer than 75 tokens on a compiled artifact (issue #19 item 2).

ComfyUI splits a prompt into 77-token chunks and concatenates their encodings; the compiled
UNet was pinned to the context length it was traced with (one chunk: ``input
encoder_hidden_states has shape [2, 231, 64], but the model was exported for [2, 77, 64]``).
Its context axis is free now, and so is its batch: ComfyUI pads cond and uncond to a common
length when it is at most 4 times the shorter and runs them apart (batch 1 each) otherwise. One
artifact takes prompts of any chunk count — the same pictures as the torch path.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from comfyc.compiler.catalog import default_catalog
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph
from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program
from comfyc.compiler.passes.base import PassContext
from comfyc.compiler.pipeline import run_pipeline
from comfyc.frontends.dsl import parse_dsl
from comfyc.runtime.artifact import load, read_manifest
from comfyc.runtime.tokenizer import ClipTokenizer

WORKFLOW = """
param prompt: STRING = "a handwritten digit seven"
ckpt = CheckpointLoaderSimple(ckpt_name="tiny-digits.safetensors")
pos = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)
neg = CLIPTextEncode(text="", clip=ckpt.CLIP)
latent = EmptyLatentImage(width=64, height=64, batch_size=1)
s = KSampler(model=ckpt.MODEL, seed=3, steps=4, cfg=5.0, sampler_name="euler",
             scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
image = VAEDecode(samples=s, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="t")
"""


def _graph():  # type: ignore[no-untyped-def]
    return parse_dsl(textwrap.dedent(WORKFLOW), "long.cfy", default_catalog())


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workflow compiled with its one-chunk default prompt."""
    out = tmp_path_factory.mktemp("long") / "long.comfyc"
    compile_graph(_graph(), out, CompileOptions())
    return out


def test_unet_prompt_axes_are_free(artifact: Path) -> None:
    """The UNet stage's context length and batch are named free dimensions; the latent size
    stays fixed."""
    manifest = read_manifest(artifact, verify=False)
    (unet,) = [e for e in manifest.stages.values() if e.kind == "unet"]
    shapes = {i["name"]: i["shape"] for i in unet.facts["inputs"]}
    assert shapes["encoder_hidden_states"] == ["batch", "context_len", 64]
    assert shapes["sample"] == ["batch", 4, 8, 8]
    assert shapes["timestep"] == ["batch"]


@pytest.mark.parametrize("chunks", [2, 4, 5])
def test_long_prompts_run_on_the_artifact_as_on_torch(artifact: Path, chunks: int) -> None:
    """A prompt of 2 or 4 chunks (batched with the negative prompt) or 5 (run apart from it)
    runs on the one-chunk artifact and equals the torch path."""
    text = ", ".join(["a handwritten digit seven drawn in black ink"] * (8 * chunks - 2))
    assert len(ClipTokenizer().tokenize_weighted(text)) == chunks
    (got,) = load(artifact).run({"prompt": text}, save=False).images.values()
    graph = _graph()
    cache = TorchModelCache(None)
    run_pipeline(graph, PassContext(models=cache), verify=True)
    (want,) = lower_to_program(graph, cache=cache).run({"prompt": text},
                                                       save=False).images.values()
    worst = float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max())
    assert worst <= 2 / 255, worst
