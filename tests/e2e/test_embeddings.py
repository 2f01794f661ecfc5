"""Textual-inversion embeddings (``embedding:NAME``) in compile, run and serve (issue #19 item 3).

The oracle is the model's own token embeddings: an embedding file whose vectors are the
token-embedding rows of a word puts exactly what that word would put in front of the text
encoder, so ``"a handwritten digit embedding:seven_ti"`` must give the picture of ``"a
handwritten digit seven"`` — bit for bit on the torch path, where the same numbers go through
the same code — and a different picture from the prompt without it. The digit classifier
then reads the digit the embedding asked for. A file of another width is dropped with the
end of the sequence padded, and a missing one ignored, as ComfyUI does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import save_file  # noqa: E402

from comfyc.compiler.catalog import default_catalog  # noqa: E402
from comfyc.compiler.lowering.artifact import CompileOptions, compile_graph  # noqa: E402
from comfyc.compiler.lowering.program import TorchModelCache, lower_to_program  # noqa: E402
from comfyc.compiler.passes.base import PassContext, PassOptions  # noqa: E402
from comfyc.compiler.pipeline import run_pipeline  # noqa: E402
from comfyc.frontends.dsl import parse_dsl  # noqa: E402
from comfyc.runtime.artifact import load, read_manifest  # noqa: E402
from comfyc.runtime.tokenizer import ClipTokenizer  # noqa: E402
from tests.conftest import REPO, SDXL_BASE  # noqa: E402

TINY = "tiny-digits.safetensors"
WORKFLOW = """
param prompt: STRING = "a handwritten digit seven"
ckpt = CheckpointLoaderSimple(ckpt_name="{ckpt}")
pos = CLIPTextEncode(text=prompt, clip=ckpt.CLIP)
neg = CLIPTextEncode(text="{negative}", clip=ckpt.CLIP)
latent = EmptyLatentImage(width={size}, height={size}, batch_size=1)
s = KSampler(model=ckpt.MODEL, seed=3, steps={steps}, cfg=5.0, sampler_name="euler",
             scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
image = VAEDecode(samples=s, vae=ckpt.VAE)
SaveImage(images=image, filename_prefix="ti")
"""


def _source(ckpt: str = TINY, negative: str = "", size: int = 64, steps: int = 8) -> str:
    return textwrap.dedent(WORKFLOW.format(ckpt=ckpt, negative=negative, size=size,
                                           steps=steps))


def _graph(source: str):  # type: ignore[no-untyped-def]
    return parse_dsl(source, "ti.cfy", default_catalog())


def _rows(models: Path, ckpt: str, attribute: str, words: str) -> torch.Tensor:
    """The token-embedding rows of ``words`` in a checkpoint's text encoder."""
    cache = TorchModelCache(str(models))
    module = cache.component_with_loras(ckpt, attribute, [])
    ids = ClipTokenizer().encode(words)
    return module.get_input_embeddings().weight.detach()[ids].clone().contiguous()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder whose embeddings are the tiny model's own words: ``seven_ti`` (one
    vector, A1111 safetensors), ``digit_seven`` (two vectors, A1111 .pt), ``three_ti`` in a
    subfolder, and ``wide`` (width 768: an SD1.5 embedding the tiny model cannot take)."""
    root = tmp_path_factory.mktemp("ti-models")
    folder = root / "embeddings"
    (folder / "sub").mkdir(parents=True)
    save_file({"emb_params": _rows(root, TINY, "text_encoder", "seven")},
              folder / "seven_ti.safetensors")
    torch.save({"string_to_param": {"*": _rows(root, TINY, "text_encoder", "digit seven")},
                "name": "digit_seven", "step": 100}, folder / "digit_seven.pt")
    save_file({"emb_params": _rows(root, TINY, "text_encoder", "three")},
              folder / "sub" / "three_ti.safetensors")
    save_file({"emb_params": torch.randn(2, 768, generator=torch.Generator().manual_seed(0))},
              folder / "wide.safetensors")
    return root


@pytest.fixture(scope="module")
def torch_program(models: Path):  # type: ignore[no-untyped-def]
    graph = _graph(_source())
    cache = TorchModelCache(str(models))
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    return lower_to_program(graph, cache=cache)


def _image(program, prompt: str, **kw) -> np.ndarray:  # type: ignore[no-untyped-def]
    (image,) = program.run({"prompt": prompt}, save=False, **kw).images.values()
    return np.asarray(image, dtype=np.float64)


def _worst(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


@pytest.mark.parametrize(("with_embedding", "as_text"), [
    ("a handwritten digit embedding:seven_ti", "a handwritten digit seven"),
    ("a handwritten embedding:digit_seven", "a handwritten digit seven"),  # two vectors, .pt
    ("a handwritten digit embedding:three_ti.safetensors", "a handwritten digit three"),
    ("a handwritten digit (embedding:seven_ti:1.3)", "a handwritten digit (seven:1.3)"),
    ("a handwritten digit embedding:wide", "a handwritten digit"),  # wrong width: dropped
    ("a handwritten digit embedding:nosuch", "a handwritten digit"),  # missing: ignored
])
def test_torch_path_applies_embeddings(torch_program, with_embedding: str,  # type: ignore[no-untyped-def]
                                       as_text: str) -> None:
    """The embedding's vectors stand where the word's token embeddings would: the same
    picture, bit for bit (subfolders, extensions, weights and multi-vector files included)."""
    assert _worst(_image(torch_program, with_embedding), _image(torch_program, as_text)) == 0.0


def test_embedding_changes_the_picture_and_the_digit(torch_program, classifier) -> None:  # type: ignore[no-untyped-def]
    """Without the embedding the picture is another; the classifier (trained on scikit-learn's
    digits, not on our images) reads the digit the embedding names."""
    seven = _image(torch_program, "a handwritten digit embedding:seven_ti")
    three = _image(torch_program, "a handwritten digit embedding:three_ti")
    bare = _image(torch_program, "a handwritten digit")
    assert _worst(seven, bare) > 0.3 and _worst(three, seven) > 0.3
    digits = [int(classifier.classify(image.astype(np.float32))[0]) for image in (seven, three)]
    assert digits == [7, 3]


def test_artifact_prompt_param_applies_embeddings(models: Path, torch_program,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    """A compiled artifact whose prompt is a runtime param looks ``embedding:NAME`` up in the
    models folder it runs with; its text-encoder stage takes the vectors (``embeds``)."""
    out = tmp_path / "ti.comfyc"
    compile_graph(_graph(_source()), out, CompileOptions(models_dir=str(models)))
    manifest = read_manifest(out, verify=False)
    encoders = [layer for e in manifest.stages.values() if e.kind == "text_encoder_layers"
                for layer in e.layers.values()]
    assert encoders and all(any(i["name"] == "embeds" for i in e.facts["inputs"])
                            for e in encoders)
    program = load(out)
    want = _image(torch_program, "a handwritten digit seven")
    got = _image(program, "a handwritten digit embedding:seven_ti", models_dir=str(models))
    assert _worst(got, want) <= 2 / 255
    # Another models folder without the file: ignored, as ComfyUI ignores a missing one.
    bare = _image(program, "a handwritten digit embedding:seven_ti", models_dir=str(tmp_path))
    assert _worst(bare, _image(program, "a handwritten digit")) == 0.0


def test_constant_prompt_with_embedding_is_folded(models: Path, torch_program,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    """A constant prompt with an embedding is encoded while compiling (the artifact ships no
    text encoder) and gives the torch path's picture."""
    source = _source(negative="embedding:three_ti")
    source = source.replace('param prompt: STRING = "a handwritten digit seven"\n', "").replace(
        "text=prompt", 'text="a handwritten digit embedding:seven_ti"')
    out = tmp_path / "folded.comfyc"
    compile_graph(_graph(source), out, CompileOptions(models_dir=str(models)))
    manifest = read_manifest(out, verify=False)
    assert not [e for e in manifest.stages.values()
                if e.kind == "text_encoder_layers" and e.layers]
    (got,) = load(out).run({}, save=False).images.values()
    graph = _graph(_source(negative="three"))
    cache = TorchModelCache(str(models))
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    want = _image(lower_to_program(graph, cache=cache), "a handwritten digit seven")
    assert _worst(np.asarray(got, np.float64), want) <= 2 / 255


def test_comfyc_run_cli_uses_the_models_folder(models: Path, tmp_path: Path) -> None:
    """``comfyc run WORKFLOW --models-dir`` applies the folder's embeddings."""
    workflow = tmp_path / "ti.cfy"
    workflow.write_text(_source(steps=4))
    pictures = {}
    for name, prompt in (("emb", "a handwritten digit embedding:seven_ti"),
                         ("text", "a handwritten digit seven")):
        done = subprocess.run(
            [sys.executable, "-m", "comfyc.cli.main", "run", str(workflow), "--models-dir",
             str(models), "--param", f"prompt={prompt}", "-o", str(tmp_path / name),
             "--backend", "torch", "--quiet"],
            capture_output=True, text=True, cwd=REPO, timeout=600)
        assert done.returncode == 0, done.stderr
        (png,) = (tmp_path / name).glob("*.png")
        pictures[name] = png
        if name == "emb":  # the PNG's prompt chunk keeps the text as written
            from comfyc.frontends.comfy_json.png import read_text_chunks

            prompt_chunk = json.loads(read_text_chunks(png.read_bytes())["prompt"])
            texts = [n["inputs"].get("text") for n in prompt_chunk.values()]
            assert "a handwritten digit embedding:seven_ti" in texts
    from PIL import Image

    a, b = (np.asarray(Image.open(pictures[k])) for k in ("emb", "text"))
    assert np.array_equal(a, b)


def test_sdxl_embedding_feeds_each_encoder_its_own_vectors(sdxl_models: Path,  # type: ignore[no-untyped-def]
                                                           tmp_path: Path) -> None:
    """An SDXL embedding file holds ``clip_l`` and ``clip_g`` vectors; each encoder takes its
    own (ComfyUI's ``embedding_key``), on the torch path and on the artifact."""
    models = tmp_path / "models"
    (models / "embeddings").mkdir(parents=True)
    (models / "checkpoints").symlink_to(sdxl_models / "checkpoints")
    rows = {key: _rows(sdxl_models, SDXL_BASE, attribute, "seven")
            for key, attribute in (("clip_l", "text_encoder"), ("clip_g", "text_encoder_2"))}
    assert rows["clip_l"].shape[-1] != rows["clip_g"].shape[-1]
    save_file(rows, models / "embeddings" / "sdxl_seven.safetensors")
    source = _source(ckpt=SDXL_BASE, size=64, steps=2)
    cache = TorchModelCache(str(models))
    graph = _graph(source)
    run_pipeline(graph, PassContext(options=PassOptions(models_dir=str(models)), models=cache))
    program = lower_to_program(graph, cache=cache)
    want = _image(program, "a photo of the digit seven")
    got = _image(program, "a photo of the digit embedding:sdxl_seven")
    assert _worst(got, want) == 0.0
    assert _worst(_image(program, "a photo of the digit"), want) > 1e-3
    out = tmp_path / "sdxl.comfyc"
    compile_graph(_graph(source), out, CompileOptions(models_dir=str(models)))
    artifact = _image(load(out), "a photo of the digit embedding:sdxl_seven",
                      models_dir=str(models))
    assert _worst(artifact, want) <= 2 / 255
